//! The shard's I/O primitives on its thread's io_uring — the ring libublk owns for the ublk
//! queue — so that one `io_uring_enter` serves both the kernel's block requests and the
//! sheep sockets (measured: 56–60k IOPS this way vs 16–17k bridged into glommio).
//!
//! Contract:
//! - [`submit`] pushes one SQE on the thread's ring and resolves to its CQE result. The
//!   memory an SQE points to must stay valid until that future resolves; callers own such
//!   memory for at least that long and never drop these futures early (shard tasks run to
//!   completion; see `conn.rs`).
//! - [`init_thread_ring`] creates the ring for a thread that has no ublk queue (tests and
//!   the no-kernel benchmark); [`run_local`] drives such a thread's tasks to completion with
//!   the same reaping code the ublk queue loop uses, counting the task runs it makes
//!   ([`tasks_run`]).
//! - [`entered`] resolves once the loop has entered the ring after the call: every SQE
//!   pushed before it has then been handed to the kernel (and one the kernel serves inline,
//!   as the ublk driver does a queue command, has been served). The loop's enter returns
//!   with the next CQE of any kind, so on an idle ring that is when the next one comes.
//! - [`submit_chain`] pushes several SQEs as one linked chain, in one go, and resolves when
//!   all have completed (a zero-copy batch of a sheep connection: SENDMSG and SEND_ZC in
//!   order). A SEND_ZC's second CQE (IORING_CQE_F_NOTIF: the kernel let go of the pages)
//!   is dropped by the loop, never matched to a future. [`register_buffer_table`] gives the
//!   ring the empty buffer table zero-copy queues register request pages in.
//! - [`loop_counts`]: the loop's enters and reaped CQEs so far on this thread.
//! - [`now`] is the thread's loop clock: the time the loop last woke from the ring
//!   ([`run_ready`], which both loops call after each wake-up), so every event reaped
//!   in one wake-up has one time stamp and a request reads no clock. It lags the real
//!   clock by the time the loop has spent on its tasks since (microseconds under load);
//!   request latencies and deadlines use it, the failure paths the real clock.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue, types, IoUring};
use libublk::uring_async::{
    ublk_reap_events_with_handler, ublk_submit_sqe_async, ublk_wake_task, UblkUringOpFuture,
};
use libublk::{UblkError, UblkUringData};

thread_local! {
    static TASKS_RUN: Cell<u64> = const { Cell::new(0) };
    static NOW: Cell<Option<Instant>> = const { Cell::new(None) };
    /// `io_uring_enter`s of [`run_local`] on this thread.
    static ENTERS: Cell<u64> = const { Cell::new(0) };
    /// CQEs [`run_local`] reaped on this thread.
    static REAPED: Cell<u64> = const { Cell::new(0) };
    /// Tasks waiting in [`entered`]; woken after each enter. The vector keeps its
    /// capacity, so waiting allocates nothing once it has grown.
    static ENTERED: RefCell<Vec<std::task::Waker>> = const { RefCell::new(Vec::new()) };
}

/// Wait until the loop has entered the ring once more (module contract).
pub async fn entered() {
    let since = ENTERS.get();
    std::future::poll_fn(|cx| {
        if ENTERS.get() != since {
            return std::task::Poll::Ready(());
        }
        ENTERED.with_borrow_mut(|w| w.push(cx.waker().clone()));
        std::task::Poll::Pending
    })
    .await
}

/// This thread's loop so far: its `io_uring_enter`s and the CQEs it reaped (their ratio
/// is the loop's batch: completions served per system call).
pub fn loop_counts() -> (u64, u64) {
    (ENTERS.get(), REAPED.get())
}

/// The ring was just entered: count it and wake the tasks of [`entered`].
fn wake_entered() {
    ENTERS.set(ENTERS.get().wrapping_add(1));
    ENTERED.with_borrow_mut(|w| w.drain(..).for_each(|w| w.wake()));
}

/// The loop clock (module contract); the real clock before the loop first set it.
pub fn now() -> Instant {
    NOW.get().unwrap_or_else(refresh_now)
}

/// Set the loop clock to the real clock and answer it.
fn refresh_now() -> Instant {
    let t = Instant::now();
    NOW.set(Some(t));
    t
}

/// Task runs (polls) [`run_ready`] has made on this thread (tests/alloc.rs reports them with
/// each phase's allocations).
pub fn tasks_run() -> u64 {
    TASKS_RUN.get()
}

/// Refresh the loop clock, then run every task that is ready, counting the runs: what both
/// loops (the ublk queue's and [`run_local`]) do after each wake-up.
pub fn run_ready(exe: &super::exec::LocalExecutor<'_>) {
    refresh_now();
    while exe.try_tick() {
        TASKS_RUN.set(TASKS_RUN.get() + 1);
    }
}

/// Submit `sqe` on this thread's ring; resolves to the CQE's result (negative errno on error).
/// When the SQE cannot even be queued, the errno of why (not a made-up one).
pub async fn submit(sqe: squeue::Entry) -> i32 {
    match ublk_submit_sqe_async(sqe, UblkUringData::Target as u64).await {
        Ok(r) => r,
        Err(e) => -submit_errno(&e),
    }
}

/// The errno a submission failure stands for.
fn submit_errno(e: &UblkError) -> i32 {
    match e {
        UblkError::UringIOError(n) | UblkError::OtherError(n) => n.abs(),
        UblkError::IOError(io) => io.raw_os_error().unwrap_or(libc::EIO),
        UblkError::UringTimeout => libc::ETIMEDOUT,
        UblkError::QueueIsDown => libc::ENODEV,
        UblkError::UringIoQueued => libc::EBUSY,
        UblkError::InvalidVal | UblkError::JsonError(_) => libc::EINVAL,
    }
}

/// Push `sqes` as one linked chain (every entry but the last with IOSQE_IO_LINK, so the
/// kernel runs them in order, and cancels the rest once one fails or comes up short) and
/// wait for all of them; their results go to `out` in order. `futs` is scratch, kept by
/// the caller so that a chain allocates nothing once it has grown. The chain is pushed in
/// one go (the submission queue is flushed first when it has no room for all of it), so
/// no other SQE lands inside it. Everything the entries point to must stay valid until this
/// resolves (module contract).
pub async fn submit_chain(
    sqes: &mut Vec<squeue::Entry>,
    futs: &mut Vec<UblkUringOpFuture>,
    out: &mut Vec<i32>,
) {
    out.clear();
    futs.clear();
    let n = sqes.len();
    let pushed = libublk::io::with_task_io_ring_mut(|r| {
        let (cap, len) = {
            let sq = r.submission();
            (sq.capacity(), sq.len())
        };
        if cap < n {
            return Err(std::io::Error::from_raw_os_error(libc::E2BIG));
        }
        if cap - len < n {
            r.submit()?;
        }
        for (i, sqe) in sqes.drain(..).enumerate() {
            let f = UblkUringOpFuture::new(UblkUringData::Target as u64);
            let sqe = sqe.user_data(f.user_data);
            let sqe = if i + 1 < n { sqe.flags(squeue::Flags::IO_LINK) } else { sqe };
            // SAFETY: the caller keeps what the entry points to valid until its CQE (this
            // function's contract); there is room for the whole chain (checked above).
            if unsafe { r.submission().push(&sqe) }.is_err() {
                // Cannot happen (room was made); the futures pushed so far still resolve.
                break;
            }
            futs.push(f);
        }
        Ok(())
    });
    if let Err(e) = pushed {
        let errno = e.raw_os_error().unwrap_or(libc::EIO);
        sqes.clear();
        out.resize(n, -errno);
        return;
    }
    for f in futs.drain(..) {
        out.push(f.await);
    }
    // Entries that were never pushed count as cancelled.
    out.resize(n, -libc::ECANCELED);
}

/// Give this thread's ring a table of `n` empty buffer entries, for the driver to register
/// zero-copy request pages in (UBLK_F_AUTO_BUF_REG). Once per ring.
pub fn register_buffer_table(n: u32) -> std::io::Result<()> {
    libublk::io::with_task_io_ring_mut(|r| r.submitter().register_buffers_sparse(n))
}

/// The bytes of `sqe` (`struct io_uring_sqe`), changed by `f`: for fields io-uring's
/// builders do not set.
fn patch_sqe(sqe: squeue::Entry, f: impl FnOnce(&mut [u8; 64])) -> squeue::Entry {
    const _: () = assert!(std::mem::size_of::<squeue::Entry>() == 64);
    // SAFETY: `squeue::Entry` is `#[repr(C)]` around `struct io_uring_sqe` (64 bytes,
    // checked above), which is plain integers: every bit pattern is a valid value.
    let mut raw: [u8; 64] = unsafe { std::mem::transmute(sqe) };
    f(&mut raw);
    // SAFETY: as above, back to the same type.
    unsafe { std::mem::transmute::<[u8; 64], squeue::Entry>(raw) }
}

/// `sqe` with its `addr` field (bytes 16..24) set to `addr`: io-uring's URING_CMD builder
/// leaves it 0, and UBLK_F_AUTO_BUF_REG reads its buffer entry from there.
pub fn with_sqe_addr(sqe: squeue::Entry, addr: u64) -> squeue::Entry {
    patch_sqe(sqe, |raw| raw[16..24].copy_from_slice(&addr.to_ne_bytes()))
}

/// Sleep on the ring (an IORING_OP_TIMEOUT).
pub async fn sleep(d: Duration) {
    let ts = types::Timespec::new().sec(d.as_secs()).nsec(d.subsec_nanos());
    // `ts` lives in this future until the timeout completes.
    let _ = submit(opcode::Timeout::new(&ts).build()).await;
}

/// Create this thread's ring when it has no ublk queue (which would create it).
pub fn init_thread_ring(entries: u32) -> std::io::Result<()> {
    libublk::io::ublk_init_task_ring(|cell| {
        if cell.get().is_none() {
            let ring = IoUring::<squeue::Entry, io_uring::cqueue::Entry>::builder()
                .setup_cqsize(entries * 2)
                .setup_coop_taskrun()
                .build(entries)
                .map_err(UblkError::IOError)?;
            cell.set(RefCell::new(ring)).map_err(|_| UblkError::OtherError(-libc::EEXIST))?;
        }
        Ok(())
    })
    .map_err(|e| std::io::Error::other(e.to_string()))
}

/// Keep a poll on `exe`'s doorbell on this thread's ring, so that a task woken from another
/// thread runs at once (`exec`'s contract); once per executor, on the thread that drives
/// the ring. The poll needs no buffer, so the task may be dropped with its SQE in flight.
pub fn answer_doorbell(exe: &super::exec::LocalExecutor<'_>) -> std::io::Result<()> {
    let (fd, new) = exe.doorbell()?;
    if new {
        exe.spawn(async move {
            loop {
                let r =
                    submit(opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32).build()).await;
                if r < 0 && r != -libc::EINTR {
                    tracing::error!("shard doorbell: poll failed (errno {})", -r);
                    return;
                }
                let mut count = [0u8; 8];
                // SAFETY: reads at most 8 bytes into a live local array from a non-blocking
                // eventfd; a failure (nothing to read) is harmless.
                let _ = unsafe { libc::read(fd, count.as_mut_ptr().cast(), count.len()) };
            }
        })
        .detach();
    }
    Ok(())
}

/// Run `fut` (and whatever it spawns on `exe`) on this thread's ring until it completes;
/// `None` if the ring itself failed first.
pub fn run_local<'a, T: 'a>(
    exe: &super::exec::LocalExecutor<'a>,
    fut: impl Future<Output = T> + 'a,
) -> Option<T> {
    if let Err(e) = answer_doorbell(exe) {
        tracing::error!("shard doorbell: {e}");
        return None;
    }
    let task = exe.spawn(fut);
    loop {
        run_ready(exe);
        if task.is_finished() {
            break;
        }
        let r = libublk::io::with_task_io_ring_mut(|r| {
            let entered = r.submit_and_wait(1);
            wake_entered();
            entered?;
            ublk_reap_events_with_handler(r, |cqe| {
                REAPED.set(REAPED.get().wrapping_add(1));
                // A zero-copy send's second CQE only says the kernel let go of the pages
                // (which the driver tracks itself): its user data is the send's, whose
                // future resolved with the first and may be reused now.
                if !io_uring::cqueue::notif(cqe.flags()) {
                    ublk_wake_task(cqe.user_data(), cqe)
                }
            })
            .map_err(|e| std::io::Error::other(e.to_string()))
        });
        if let Err(e) = r {
            if e.raw_os_error() != Some(libc::EINTR) {
                tracing::error!("shard ring failed: {e}");
                break;
            }
        }
    }
    run_ready(exe);
    task.is_finished().then(|| futures_lite::future::block_on(task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_patched_sqe_carries_the_auto_buf_reg_entry_the_builder_leaves_out() {
        let raw = |e: squeue::Entry| -> [u8; 64] {
            // SAFETY: as in `patch_sqe`.
            unsafe { std::mem::transmute(e) }
        };
        let cmd = opcode::UringCmd16::new(types::Fd(3), 0x21).cmd([7; 16]).build();
        let before = raw(cmd.clone());
        let after = raw(with_sqe_addr(cmd, 0x1_0005));
        assert_eq!(after[16..24], 0x1_0005u64.to_ne_bytes());
        assert_eq!(after[..16], before[..16], "opcode, fd and cmd_op untouched");
        assert_eq!(after[24..], before[24..], "the command bytes untouched");
    }

    #[test]
    fn a_chain_runs_in_order_and_a_failed_link_cancels_the_rest() {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        init_thread_ring(64).expect("ring");
        let exe = super::super::exec::LocalExecutor::new();
        let (a, mut b) = std::os::unix::net::UnixStream::pair().expect("pair");
        let parts: [&'static [u8]; 3] = [b"first ", b"second ", b"third"];
        let fd = types::Fd(a.as_raw_fd());
        let results = run_local(&exe, async move {
            let (mut sqes, mut futs, mut out) = (Vec::new(), Vec::new(), Vec::new());
            for p in parts {
                let e = opcode::Send::new(fd, p.as_ptr(), p.len() as u32).flags(libc::MSG_WAITALL);
                sqes.push(e.build());
            }
            submit_chain(&mut sqes, &mut futs, &mut out).await;
            let ok = out.clone();
            // A send on a socket shut down for writing fails: the links after it are cancelled.
            a.shutdown(std::net::Shutdown::Write).expect("shutdown");
            for p in parts {
                let e = opcode::Send::new(fd, p.as_ptr(), p.len() as u32).flags(libc::MSG_NOSIGNAL);
                sqes.push(e.build());
            }
            submit_chain(&mut sqes, &mut futs, &mut out).await;
            (ok, out.clone(), sqes.is_empty() && futs.is_empty())
        })
        .expect("ran");
        assert_eq!(results.0, [6, 7, 5], "every link sent all of its bytes");
        let mut got = String::new();
        b.read_to_string(&mut got).expect("read");
        assert_eq!(got, "first second third", "in chain order, nothing after the shutdown");
        assert_eq!(results.1[0], -libc::EPIPE);
        assert_eq!(&results.1[1..], [-libc::ECANCELED, -libc::ECANCELED]);
        assert!(results.2, "the scratch is left empty for reuse");
    }

    #[test]
    fn the_loop_clock_is_one_stamp_per_wake_up_and_moves_with_the_ring() {
        init_thread_ring(64).expect("ring");
        let exe = super::super::exec::LocalExecutor::new();
        let (a, b, c) = run_local(&exe, async {
            let a = now();
            std::thread::sleep(Duration::from_millis(5));
            let b = now();
            sleep(Duration::from_millis(20)).await;
            (a, b, now())
        })
        .expect("ran");
        assert_eq!(a, b, "no wake-up between: one stamp");
        assert!(c >= a + Duration::from_millis(20), "refreshed after the ring woke the task");
        assert!(c <= Instant::now());
    }

    #[test]
    fn entered_resolves_after_the_next_enter_of_the_ring_and_not_on_a_spurious_poll() {
        init_thread_ring(64).expect("ring");
        let exe = super::super::exec::LocalExecutor::new();
        let ((pending, before, after), ()) = run_local(&exe, async {
            let before = ENTERS.get();
            let waits = async {
                let mut e = std::pin::pin!(entered());
                // Polled twice with no enter between (as a stray wake-up would): still waiting.
                let first = futures_lite::future::poll_once(e.as_mut()).await;
                let again = futures_lite::future::poll_once(e.as_mut()).await;
                e.await;
                (first.is_none() && again.is_none(), before, ENTERS.get())
            };
            // Something on the ring, so that its enter returns (the loop waits for a CQE).
            futures_lite::future::zip(waits, sleep(Duration::from_millis(5))).await
        })
        .expect("ran");
        assert!(pending, "entered resolved before the ring was entered");
        assert_eq!(after, before + 1, "resolved at the first enter after the call");
    }

    #[test]
    fn a_wake_from_another_thread_reaches_a_thread_asleep_in_its_ring() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{mpsc, Arc};
        init_thread_ring(64).expect("ring");
        let (tx, rx) = mpsc::channel::<std::task::Waker>();
        let flag = Arc::new(AtomicBool::new(false));
        let f2 = flag.clone();
        let waker = std::thread::spawn(move || {
            let w = rx.recv().expect("a waker");
            std::thread::sleep(Duration::from_millis(50));
            f2.store(true, Ordering::SeqCst);
            w.wake();
        });
        let mut sent = false;
        let exe = super::super::exec::LocalExecutor::new();
        // Nothing else is on the ring: without the doorbell this thread would sleep forever.
        let woke = run_local(
            &exe,
            std::future::poll_fn(|cx| {
                if flag.load(Ordering::SeqCst) {
                    return std::task::Poll::Ready(());
                }
                if !std::mem::replace(&mut sent, true) {
                    tx.send(cx.waker().clone()).expect("send");
                }
                std::task::Poll::Pending
            }),
        );
        assert!(woke.is_some());
        waker.join().expect("waker thread");
    }
}
