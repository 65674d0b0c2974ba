//! The shard thread's task executor: a run queue that allocates when a task is spawned and
//! never when one is woken, so the data path allocates nothing per I/O (tests/alloc.rs).
//! smol's `LocalExecutor`, used before, queues wake-ups in an unbounded concurrent queue
//! that allocates a 504-byte block every 31 wake-ups.
//!
//! Contract:
//! - [`LocalExecutor::spawn`] takes futures that may borrow anything living for `'a`, and
//!   returns an `async_task::Task` (await it, `detach` it, ask `is_finished`). A task that
//!   panics is finished; the panic comes out where its `Task` is awaited (a detached task's
//!   panic is dropped), not in [`LocalExecutor::try_tick`].
//! - [`LocalExecutor::try_tick`] runs one woken task, in wake-up order; tasks run only on
//!   the thread that owns the executor (it is neither `Send` nor `Sync`).
//! - A wake-up pushes the task onto a queue kept behind an uncontended mutex (a waker may be
//!   used from any thread). A task is queued at most once at a time, so the queue never
//!   holds more than the live tasks: once it has grown to that, waking allocates nothing.
//!   A wake-up from another thread also rings the executor's doorbell, an eventfd
//!   ([`LocalExecutor::doorbell`]), when one was made: the thread's ring loop keeps a poll
//!   on it (`ring::answer_doorbell`), so a thread asleep in `io_uring_enter` wakes up
//!   (another shard released a claim this one's writer was parked on).
//! - Dropping the executor cancels every task that has not finished, on the owner thread,
//!   dropping their futures while what they borrow is still alive.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Context, Poll, Waker};
use std::thread::{self, ThreadId};

pub use async_task::Task;
use async_task::{Builder, Runnable};

/// Queue room reserved up front (a ublk queue's tags plus the connection tasks).
const INITIAL_QUEUE: usize = 256;

/// The queue of woken tasks, shared with every task's waker.
struct RunQueue {
    owner: ThreadId,
    ready: Mutex<VecDeque<Runnable>>,
    /// The executor is gone: no task is left to run.
    closed: AtomicBool,
    /// Rung by wake-ups from other threads (see the module contract).
    bell: OnceLock<OwnedFd>,
}

impl RunQueue {
    fn ready(&self) -> MutexGuard<'_, VecDeque<Runnable>> {
        self.ready.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn schedule(&self, r: Runnable) {
        if !self.closed.load(Ordering::Acquire) {
            self.ready().push_back(r);
            if let (Some(bell), false) = (self.bell.get(), thread::current().id() == self.owner) {
                let one = 1u64.to_ne_bytes();
                // SAFETY: writes 8 bytes from a live local array to the eventfd this queue owns.
                let _ = unsafe { libc::write(bell.as_raw_fd(), one.as_ptr().cast(), one.len()) };
            }
        } else if thread::current().id() == self.owner {
            drop(r);
        } else {
            // Every task was cancelled when the executor went, so this cannot happen; if it
            // did, dropping here would drop a non-Send future on a foreign thread.
            std::mem::forget(r);
        }
    }
}

/// A spawned task that has not finished: its waker (to cancel it) and whether it is done.
struct Active {
    waker: Waker,
    done: Rc<Cell<bool>>,
}

/// Marks its task done when the task's future completes or is dropped.
struct DoneOnDrop(Rc<Cell<bool>>);

impl Drop for DoneOnDrop {
    fn drop(&mut self) {
        self.0.set(true);
    }
}

/// A future that reports its completion (or cancellation) to the executor's active list.
struct Tracked<F> {
    fut: F,
    _done: DoneOnDrop,
}

impl<F: Future> Future for Tracked<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: `fut` is structurally pinned: it is never moved out of `Tracked`, and
        // `Tracked` has no `Unpin` impl that would let it move while pinned.
        unsafe { self.map_unchecked_mut(|t| &mut t.fut) }.poll(cx)
    }
}

/// A single-thread executor; see the module contract.
pub struct LocalExecutor<'a> {
    queue: Arc<RunQueue>,
    active: RefCell<Vec<Active>>,
    /// Not `Send` or `Sync`; invariant in `'a`, like the futures it holds.
    _marker: PhantomData<(Rc<()>, Cell<&'a ()>)>,
}

impl Default for LocalExecutor<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'a> LocalExecutor<'a> {
    pub fn new() -> Self {
        LocalExecutor {
            queue: Arc::new(RunQueue {
                owner: thread::current().id(),
                ready: Mutex::new(VecDeque::with_capacity(INITIAL_QUEUE)),
                closed: AtomicBool::new(false),
                bell: OnceLock::new(),
            }),
            active: RefCell::new(Vec::new()),
            _marker: PhantomData,
        }
    }

    /// The doorbell eventfd (made on first use; non-blocking), and whether this call made
    /// it: whoever drives the thread's ring polls it (module contract).
    pub fn doorbell(&self) -> std::io::Result<(RawFd, bool)> {
        if let Some(fd) = self.queue.bell.get() {
            return Ok((fd.as_raw_fd(), false));
        }
        // SAFETY: eventfd has no memory arguments; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        let _ = self.queue.bell.set(unsafe { OwnedFd::from_raw_fd(fd) });
        Ok((self.queue.bell.get().map_or(fd, |b| b.as_raw_fd()), true))
    }

    /// Spawn `fut`; it first runs at a later [`LocalExecutor::try_tick`].
    pub fn spawn<T: 'a>(&self, fut: impl Future<Output = T> + 'a) -> Task<T> {
        let done = Rc::new(Cell::new(false));
        let fut = Tracked { fut, _done: DoneOnDrop(done.clone()) };
        let queue = Arc::clone(&self.queue);
        // SAFETY: async_task's conditions for a future that is neither Send nor 'static:
        // - the Runnable is run only by `try_tick`, on the owner thread (`self` is !Send and
        //   !Sync), and dropped only there: by `try_tick`, by `Drop for LocalExecutor`, or by
        //   `RunQueue::schedule` on the owner thread; a foreign thread never drops one;
        // - the future borrows only what lives for 'a, and `Drop for LocalExecutor` (which
        //   runs within 'a) cancels every task still alive, dropping its future.
        let (runnable, task) = unsafe {
            Builder::new()
                .propagate_panic(true)
                .spawn_unchecked(move |()| fut, move |r| queue.schedule(r))
        };
        {
            let mut active = self.active.borrow_mut();
            active.retain(|a| !a.done.get());
            active.push(Active { waker: runnable.waker(), done });
        }
        runnable.schedule();
        task
    }

    /// Run one woken task; false when none is ready.
    pub fn try_tick(&self) -> bool {
        let next = self.queue.ready().pop_front();
        match next {
            Some(r) => {
                r.run();
                true
            }
            None => false,
        }
    }
}

impl Drop for LocalExecutor<'_> {
    fn drop(&mut self) {
        // Queue every unfinished task, then drop what is queued: dropping a Runnable
        // cancels its task and drops its future, here, while what it borrows still lives.
        for a in self.active.get_mut().drain(..) {
            if !a.done.get() {
                a.waker.wake();
            }
        }
        loop {
            let next = self.queue.ready().pop_front();
            match next {
                Some(r) => drop(r),
                None => break,
            }
        }
        self.queue.closed.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_in_wake_order_and_returns_outputs() {
        let log = RefCell::new(Vec::new());
        let exe = LocalExecutor::new();
        let a = exe.spawn(async {
            log.borrow_mut().push(1);
            futures_lite::future::yield_now().await;
            log.borrow_mut().push(3);
            7
        });
        let b = exe.spawn(async { log.borrow_mut().push(2) });
        while exe.try_tick() {}
        assert_eq!(*log.borrow(), vec![1, 2, 3]);
        assert!(a.is_finished() && b.is_finished());
        assert_eq!(futures_lite::future::block_on(a), 7);
    }

    #[test]
    fn a_panicking_task_does_not_take_the_executor_down() {
        let exe = LocalExecutor::new();
        let t = exe.spawn(async { panic!("task panics") });
        let ok = exe.spawn(async { 1 });
        while exe.try_tick() {}
        assert!(t.is_finished());
        assert_eq!(futures_lite::future::block_on(ok), 1);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            futures_lite::future::block_on(t)
        }));
        assert!(r.is_err(), "the panic comes out where the task is awaited");
    }

    #[test]
    fn dropping_the_executor_drops_pending_futures_while_their_borrows_live() {
        let dropped = Cell::new(0);
        struct Count<'a>(&'a Cell<u32>);
        impl Drop for Count<'_> {
            fn drop(&mut self) {
                self.0.set(self.0.get() + 1);
            }
        }
        let parked: RefCell<Option<Waker>> = RefCell::new(None);
        {
            let exe = LocalExecutor::new();
            let c = Count(&dropped);
            exe.spawn(async {
                let _c = c;
                std::future::poll_fn(|cx| {
                    *parked.borrow_mut() = Some(cx.waker().clone());
                    Poll::<()>::Pending
                })
                .await;
            })
            .detach();
            exe.spawn(std::future::pending::<()>()).detach();
            while exe.try_tick() {}
            assert_eq!(dropped.get(), 0);
        }
        assert_eq!(dropped.get(), 1, "the pending task's future was dropped with the executor");
        // A waker that outlived the executor wakes nothing and frees nothing twice.
        let w = parked.borrow_mut().take();
        w.expect("the task parked its waker").wake();
    }

    #[test]
    fn a_wake_from_another_thread_queues_the_task() {
        let exe = LocalExecutor::new();
        let woken = Arc::new(AtomicBool::new(false));
        let w2 = Arc::clone(&woken);
        let t = exe.spawn(std::future::poll_fn(move |cx| {
            if w2.load(Ordering::SeqCst) {
                return Poll::Ready(());
            }
            let w = cx.waker().clone();
            let w3 = Arc::clone(&w2);
            std::thread::spawn(move || {
                w3.store(true, Ordering::SeqCst);
                w.wake();
            });
            Poll::Pending
        }));
        while !t.is_finished() {
            exe.try_tick();
            std::thread::yield_now();
        }
        assert!(woken.load(Ordering::SeqCst));
    }
}
