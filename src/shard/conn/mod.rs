//! A pipelined sheep connection driven entirely by SQEs on the shard's own ring.
//!
//! Contract:
//! - Up to `slots` requests in flight; each gets a wire id = slot index | generation << 16,
//!   and responses are matched by id in any order. All state (slots, queues, buffers) is
//!   allocated when the connection is made: a request allocates nothing.
//! - One sender task batches every queued request into one SENDMSG (header + payload as
//!   iovecs, no copy); one receiver task reads responses into a connection buffer and copies
//!   each payload into the caller's destination, with the framing and every check done by
//!   `proto::demux` (pure, fuzzed in `tests/fuzz/`). A response whose id is not in flight, or
//!   whose length exceeds what its request can take, breaks the connection: every request
//!   in flight fails with an error whose `should_reconnect()` is true.
//! - Buffer ownership ("rent"): the caller's payload and destination are referenced by raw
//!   pointer while its [`RingConn::call`] future is pending. A shard never drops such a
//!   future before it resolves (tasks run to completion); if one is dropped anyway while
//!   its request is still queued or in flight, the process aborts rather than let the
//!   kernel or the receiver touch freed memory. When a connection breaks, its callers get
//!   their error at once while a SENDMSG may still be reading their payload: that only
//!   sends stale bytes on a dead socket, because payloads live in shard-owned buffers that
//!   outlive the connection.
//! - Kernel pages (zero copy, [`RingConn::call_data`]): a payload that is a ublk request's
//!   registered pages is sent from them — the batch then goes as one linked chain of
//!   SENDMSGs (our memory) and SEND_ZCs (the pages), each all-or-error (MSG_WAITALL), so the
//!   stream stays in order; on AF_UNIX, which has no zero-copy send, piece by piece with
//!   WRITE_FIXED. A response payload bound for a request's pages is read straight into them
//!   (READ_FIXED of exactly what is left of it) whenever nothing of it is buffered yet; the
//!   bytes that came with an earlier read are copied in by user copy. The driver keeps the
//!   request (and its pages) alive until the ring's last use of them has ended, so a caller
//!   that gives up (a broken connection) cannot leave the ring writing freed memory.
//! - Coalescing (on unless [`RingConn::set_coalesce`] turns it off): a request queued while
//!   one of the last [`MERGE_SCAN`] queued requests is one it may ride on (the rule is
//!   `coalesce::rides_on`: adjacent plain WRITE_OBJs of one object, never a create, a read,
//!   or an overlap) rides on that lead: the lead's header grows by the rider's length, the
//!   rider's slot joins the lead's chain and is never queued itself, and the sender sends
//!   the rider's payload as one more iovec after the lead's (no copy). The lead's response
//!   completes every rider with the same result (an error fails them all); a broken
//!   connection fails each of them, and each caller resends its own request (it may ride on
//!   another one then).
//! - Single-threaded (`Rc`, `RefCell`); no borrow is held across an `.await`.

use std::cell::{Cell, RefCell, UnsafeCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;

use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use super::coalesce::{self, Chains};
use super::Error;
use crate::block::{Dst, KernelBuf, Src};
use crate::net::{Gateway, Stream};
use crate::proto::demux::wire_id;
use crate::proto::{Opcode, ReqHeader, RspHeader, HEADER_LEN};

pub(super) mod socket;
pub use socket::ZC_SEND_MIN;

/// Requests gathered into one SENDMSG.
const MAX_BATCH: usize = 64;
/// The most iovecs in one SENDMSG (Linux's UIO_MAXIOV).
const MAX_IOV: usize = 1024;
/// The most pieces (SENDMSGs and SEND_ZCs) in one linked chain of a batch with kernel pages.
const MAX_CHAIN: usize = 128;
/// Receive buffer per connection.
const RECV_BUF: usize = 256 << 10;
/// How long one reconnect attempt may take (blocking the shard thread: it has nothing to
/// serve while its connection is down).
const RECONNECT_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Free,
    /// Waiting for the sender.
    Queued,
    /// Handed to the kernel (maybe partly sent); waiting for the response.
    Sent,
    Done,
}

struct Slot {
    gen: u16,
    phase: Phase,
    payload: *const u8,
    payload_len: usize,
    dest: *mut u8,
    dest_len: usize,
    /// The payload is a request's kernel pages (zero copy) instead of `payload`.
    payload_k: Option<KernelBuf>,
    /// The destination is a request's kernel pages instead of `dest` (`dest_len` is theirs).
    dest_k: Option<KernelBuf>,
    result: Option<Result<RspHeader, Error>>,
    waker: Option<Waker>,
    /// When the request was queued (only with a stall timeout).
    sent_at: Option<Instant>,
    /// The request as queued (a lead's `data_length` grows with its riders).
    hdr: ReqHeader,
}

struct State {
    slots: Box<[Slot]>,
    free: Vec<u16>,
    free_waiters: VecDeque<Waker>,
    sendq: VecDeque<u16>,
    sender: Option<Waker>,
    broken: Option<Error>,
    inflight: usize,
    /// Which slots ride on which queued lead (`coalesce`).
    chains: Chains,
}

/// A connection; see the module contract.
pub struct RingConn {
    /// The current socket (none while reconnecting).
    stream: RefCell<Option<Stream>>,
    /// The gateway of the current socket.
    addr: RefCell<Gateway>,
    /// Where to reconnect, in rotation (empty: never reconnect).
    gateways: Vec<Gateway>,
    /// A request older than this breaks the connection (zero: never).
    stall: Duration,
    /// Encoded headers, one per slot, at stable addresses for SENDMSG.
    headers: Box<[UnsafeCell<[u8; HEADER_LEN]>]>,
    st: RefCell<State>,
    /// Tasks still running (their SQEs may reference our buffers).
    alive: Cell<u8>,
    /// The owner is going away: stop reconnecting.
    closed: Cell<bool>,
    reconnects: Cell<u64>,
    /// Writes may ride on a queued write (module contract).
    coalesce: Cell<bool>,
    /// Requests that rode on another one.
    merged: Cell<u64>,
}

/// Connect to `g` on a helper thread and wait for it on this thread's ring, so the ring
/// keeps serving its other sockets and queues meanwhile: a TCP connect to a gateway that
/// does not answer takes up to `timeout`, and on a core thread that would stall every
/// device the core serves. Connects are rare (start-up, reconnects at most once per 100 ms
/// – 1 s backoff per connection), so a thread each is cheap enough.
pub(crate) async fn connect_aside(g: &Gateway, timeout: Duration) -> io::Result<Stream> {
    let (post, mail) = super::mail::mailbox::<io::Result<Stream>>()?;
    let target = g.clone();
    std::thread::Builder::new().name("sheepdev-connect".into()).spawn(move || {
        // The waiting side may be gone (its shard closed): then the stream is dropped.
        let _ = post.send(target.connect(timeout));
    })?;
    mail.recv().await.unwrap_or_else(|| Err(io::Error::other("the connect thread died")))
}

/// The first of `gateways` that `connect` reaches, with its index; else the last error,
/// naming its gateway.
async fn first_reachable<F, Fut>(gateways: &[Gateway], connect: F) -> io::Result<(usize, Stream)>
where
    F: Fn(&Gateway) -> Fut,
    Fut: std::future::Future<Output = io::Result<Stream>>,
{
    let mut last = io::Error::other("no gateway given");
    for (i, g) in gateways.iter().enumerate() {
        match connect(g).await {
            Ok(stream) => return Ok((i, stream)),
            Err(e) => last = io::Error::new(e.kind(), format!("{g}: {e}")),
        }
    }
    Err(last)
}

impl RingConn {
    /// Connect (blocking, at shard start-up) with `slots` request slots, and spawn the
    /// sender and receiver tasks on `exe`. The connection never reconnects.
    pub fn connect(
        addr: impl Into<Gateway>,
        timeout: Duration,
        slots: usize,
        exe: &super::exec::LocalExecutor<'_>,
    ) -> io::Result<Rc<RingConn>> {
        let addr = addr.into();
        let stream = addr.connect(timeout)?;
        let conn = Self::build(stream, addr, Vec::new(), Duration::ZERO, slots);
        conn.alive.set(1);
        exe.spawn(conn.clone().run_once()).detach();
        Ok(conn)
    }

    /// Connect to the first reachable of `gateways` (blocking, at shard start-up), then keep
    /// the connection up: when it breaks — socket error, EOF, a response that matches no
    /// request, or a request older than `stall` — every request in flight fails with an
    /// error whose `should_reconnect()` is true (the caller resends it), and a supervisor task
    /// reconnects, rotating through `gateways` with a backoff from 100 ms to 1 s, until
    /// [`RingConn::close`].
    pub fn connect_supervised(
        gateways: &[Gateway],
        timeout: Duration,
        slots: usize,
        stall: Duration,
        exe: &super::exec::LocalExecutor<'_>,
    ) -> io::Result<Rc<RingConn>> {
        // The connects are plain calls: the future is ready at its first poll.
        let first = first_reachable(gateways, |g| std::future::ready(g.connect(timeout)));
        let (i, stream) = futures_lite::future::block_on(first)?;
        Ok(Self::supervised(stream, gateways, i, stall, slots, exe))
    }

    /// [`RingConn::connect_supervised`] for a thread that serves other work on its ring (a
    /// core thread): each connect runs on a helper thread ([`connect_aside`]), so the ring
    /// goes on serving while a gateway takes up to `timeout` to answer.
    pub async fn connect_supervised_aside(
        gateways: &[Gateway],
        timeout: Duration,
        slots: usize,
        stall: Duration,
        exe: &super::exec::LocalExecutor<'_>,
    ) -> io::Result<Rc<RingConn>> {
        let (i, stream) = first_reachable(gateways, |g| {
            let g = g.clone();
            async move { connect_aside(&g, timeout).await }
        })
        .await?;
        Ok(Self::supervised(stream, gateways, i, stall, slots, exe))
    }

    /// A connection on `stream` (to `gateways[i]`) and its supervisor task.
    fn supervised(
        stream: Stream,
        gateways: &[Gateway],
        i: usize,
        stall: Duration,
        slots: usize,
        exe: &super::exec::LocalExecutor<'_>,
    ) -> Rc<RingConn> {
        let mut rotation = gateways[i..].to_vec();
        rotation.extend_from_slice(&gateways[..i]);
        let conn = Self::build(stream, gateways[i].clone(), rotation, stall, slots);
        conn.alive.set(1);
        exe.spawn(conn.clone().supervise()).detach();
        conn
    }

    fn build(
        stream: Stream,
        addr: Gateway,
        gateways: Vec<Gateway>,
        stall: Duration,
        slots: usize,
    ) -> Rc<RingConn> {
        let n = slots.clamp(1, u16::MAX as usize);
        Rc::new(RingConn {
            stream: RefCell::new(Some(stream)),
            addr: RefCell::new(addr),
            gateways,
            stall,
            closed: Cell::new(false),
            reconnects: Cell::new(0),
            coalesce: Cell::new(true),
            merged: Cell::new(0),
            headers: (0..n).map(|_| UnsafeCell::new([0u8; HEADER_LEN])).collect(),
            st: RefCell::new(State {
                slots: (0..n)
                    .map(|_| Slot {
                        gen: 0,
                        phase: Phase::Free,
                        payload: std::ptr::null(),
                        payload_len: 0,
                        dest: std::ptr::null_mut(),
                        dest_len: 0,
                        payload_k: None,
                        dest_k: None,
                        result: None,
                        waker: None,
                        sent_at: None,
                        hdr: ReqHeader::obj(Opcode::ReadObj, 0, 0, Default::default()),
                    })
                    .collect(),
                free: (0..n as u16).rev().collect(),
                free_waiters: VecDeque::with_capacity(64),
                sendq: VecDeque::with_capacity(n),
                sender: None,
                broken: None,
                inflight: 0,
                chains: Chains::new(n),
            }),
            alive: Cell::new(0),
        })
    }

    /// The gateway of the current (or last) socket.
    pub fn addr(&self) -> Gateway {
        self.addr.borrow().clone()
    }

    /// Times this connection was re-established.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.get()
    }

    /// Let writes ride on queued writes (module contract); on by default.
    pub fn set_coalesce(&self, on: bool) {
        self.coalesce.set(on);
    }

    /// Requests that rode on another one so far.
    pub fn merged(&self) -> u64 {
        self.merged.get()
    }

    /// Whether the connection is up (requests can be sent now).
    pub fn is_up(&self) -> bool {
        self.st.borrow().broken.is_none()
    }

    /// Whether the owner closed it (it will not come back).
    pub fn is_closed(&self) -> bool {
        self.closed.get()
    }

    pub fn inflight(&self) -> usize {
        self.st.borrow().inflight
    }

    /// Whether its tasks have ended, so no SQE of this connection is in flight.
    pub fn is_quiet(&self) -> bool {
        self.alive.get() == 0
    }

    /// Close for good: the tasks end, every request in flight fails, no reconnect.
    pub fn close(&self) {
        self.closed.set(true);
        self.fail(Error::Closed);
    }

    /// Close, then let the tasks end, so the ring and the buffers their SQEs point to may go.
    pub async fn shut_down(&self) {
        self.close();
        while !self.is_quiet() {
            super::ring::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Send `hdr` (its id is assigned here) with `payload` when it has the WRITE flag, and
    /// wait for the response; a READ_OBJ response payload lands in `dest`. The server's
    /// result code is returned in the header, not interpreted.
    pub async fn call(
        &self,
        hdr: ReqHeader,
        payload: &[u8],
        dest: &mut [u8],
    ) -> Result<RspHeader, Error> {
        self.call_data(hdr, Src::Mem(payload), Dst::Mem(dest)).await
    }

    /// [`RingConn::call`] where the payload or the destination may be a request's kernel
    /// pages (zero copy): a payload there is sent from them (SEND_ZC on the registered
    /// buffer), and a response's payload is read into them by the ring where it can
    /// (READ_FIXED) and copied in by user copy where it cannot (bytes that came with an
    /// earlier read).
    pub async fn call_data(
        &self,
        hdr: ReqHeader,
        payload: Src<'_>,
        mut dest: Dst<'_>,
    ) -> Result<RspHeader, Error> {
        let idx = poll_fn(|cx| {
            let mut st = self.st.borrow_mut();
            if let Some(e) = st.broken {
                return Poll::Ready(Err(e));
            }
            match st.free.pop() {
                Some(i) => Poll::Ready(Ok(i as usize)),
                None => {
                    st.free_waiters.push_back(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await?;
        let guard = CallGuard { conn: self, idx };
        self.enqueue(idx, hdr, payload, &mut dest);
        let r = poll_fn(|cx| {
            let mut st = self.st.borrow_mut();
            let s = &mut st.slots[idx];
            match s.result.take() {
                Some(r) => Poll::Ready(r),
                None => {
                    s.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await;
        drop(guard);
        r
    }

    /// Set slot `idx` (taken from `free`) up for `hdr` and queue it for the sender, or let
    /// it ride on a queued write (module contract).
    fn enqueue(&self, idx: usize, mut hdr: ReqHeader, payload: Src<'_>, dest: &mut Dst<'_>) {
        {
            let mut st = self.st.borrow_mut();
            let s = &mut st.slots[idx];
            s.gen = s.gen.wrapping_add(1);
            hdr.id = wire_id(idx as u16, s.gen);
            // SAFETY: the header cell of a slot is only written here, while the slot is owned
            // by this call and not queued, and by `ride` before the sender takes it, so
            // neither the sender nor the kernel reads it now.
            unsafe { *self.headers[idx].get() = hdr.encode() };
            s.phase = Phase::Queued;
            (s.payload, s.payload_len, s.payload_k) = match payload {
                _ if !hdr.has_payload() => (std::ptr::null(), 0, None),
                Src::Mem(m) => (m.as_ptr(), m.len(), None),
                Src::Kernel(k) => (std::ptr::null(), k.len as usize, Some(k)),
            };
            let takes = if hdr.opcode == Opcode::ReadObj as u8 { dest.len() } else { 0 };
            (s.dest, s.dest_len, s.dest_k) = match dest {
                Dst::Mem(m) => (m.as_mut_ptr(), takes, None),
                Dst::Kernel(k) => (std::ptr::null_mut(), takes, (takes > 0).then_some(*k)),
            };
            s.result = None;
            s.sent_at = (!self.stall.is_zero()).then(super::ring::now);
            s.hdr = hdr;
            st.chains.start(idx);
            st.inflight += 1;
            if self.coalesce.get() && self.ride(&mut st, idx) {
                self.merged.set(self.merged.get() + 1);
            } else {
                st.sendq.push_back(idx as u16);
                if let Some(w) = st.sender.take() {
                    w.wake();
                }
            }
        }
    }

    /// Whether a request `h` queued now would ride on a queued write (module contract).
    pub fn can_ride(&self, h: &ReqHeader) -> bool {
        self.coalesce.get() && Self::find_lead(&self.st.borrow(), h).is_some()
    }

    /// The queued request that `h` can ride on, if any (module contract).
    fn find_lead(st: &State, h: &ReqHeader) -> Option<usize> {
        let queued = st
            .sendq
            .iter()
            .rev()
            .map(|&l| usize::from(l))
            .filter(|&l| st.slots[l].phase == Phase::Queued);
        coalesce::find_lead(queued.map(|l| (l, &st.slots[l].hdr)), &st.chains, h)
    }

    /// Attach the request in slot `idx` (set up, not queued) to a queued WRITE_OBJ it can
    /// ride on (module contract); false when there is none.
    fn ride(&self, st: &mut State, idx: usize) -> bool {
        let h = st.slots[idx].hdr;
        let Some(lead) = Self::find_lead(st, &h) else {
            return false;
        };
        st.chains.attach(lead, idx);
        let s = &mut st.slots[lead];
        s.hdr.data_length += h.data_length;
        // SAFETY: the lead is queued and not yet taken by the sender (phase Queued), so
        // neither the sender nor the kernel reads its header cell now; single-threaded.
        unsafe { *self.headers[lead].get() = s.hdr.encode() };
        true
    }

    fn fail(&self, e: Error) {
        if let Some(s) = self.stream.borrow().as_ref() {
            let _ = s.shutdown();
        }
        let mut wake = Vec::new();
        {
            let mut st = self.st.borrow_mut();
            if st.broken.is_none() {
                st.broken = Some(e);
            }
            st.sendq.clear();
            for s in st.slots.iter_mut() {
                if matches!(s.phase, Phase::Queued | Phase::Sent) {
                    s.phase = Phase::Done;
                    s.result = Some(Err(e));
                    (s.dest, s.dest_len, s.dest_k) = (std::ptr::null_mut(), 0, None);
                    wake.extend(s.waker.take());
                }
            }
            wake.extend(st.sender.take());
            wake.extend(st.free_waiters.drain(..));
        }
        wake.into_iter().for_each(Waker::wake);
    }

    /// Complete the request in slot `idx` and every rider of its chain with `r`.
    fn complete(&self, idx: usize, r: Result<RspHeader, Error>) {
        let mut next = Some(idx);
        while let Some(i) = next {
            let w = {
                let mut st = self.st.borrow_mut();
                let s = &mut st.slots[i];
                if !matches!(s.phase, Phase::Queued | Phase::Sent) {
                    // Already failed: its caller has (or will get) that error, not this;
                    // its riders failed with it.
                    return;
                }
                s.phase = Phase::Done;
                s.result = Some(r);
                (s.dest, s.dest_len, s.dest_k) = (std::ptr::null_mut(), 0, None);
                let w = s.waker.take();
                next = st.chains.take_next(i);
                w
            };
            if let Some(w) = w {
                w.wake();
            }
        }
    }
}

/// Frees the slot when a call ends; aborts if a call is dropped while its buffers are still
/// referenced (see the module contract).
struct CallGuard<'a> {
    conn: &'a RingConn,
    idx: usize,
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        let waiter = {
            let mut st = self.conn.st.borrow_mut();
            let s = &mut st.slots[self.idx];
            if matches!(s.phase, Phase::Queued | Phase::Sent) {
                tracing::error!("a sheep request future was dropped while in flight; aborting to protect its buffers");
                std::process::abort();
            }
            s.phase = Phase::Free;
            (s.payload, s.payload_len, s.dest, s.dest_len) =
                (std::ptr::null(), 0, std::ptr::null_mut(), 0);
            (s.payload_k, s.dest_k) = (None, None);
            s.waker = None;
            st.chains.clear(self.idx);
            st.inflight -= 1;
            st.free.push(self.idx as u16);
            st.free_waiters.pop_front()
        };
        if let Some(w) = waiter {
            w.wake();
        }
    }
}

#[cfg(test)]
mod tests;
