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
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use io_uring::{opcode, types};

use super::coalesce::{may_ride, rides_on, MERGE_SCAN};
use super::ring::submit;
use super::Error;
use crate::net::{Gateway, Stream};
use crate::proto::demux::{wire_id, Demux, Event, InFlight};
use crate::proto::{Opcode, ReqHeader, RspHeader, HEADER_LEN};

/// Requests gathered into one SENDMSG.
const MAX_BATCH: usize = 64;
/// The most iovecs in one SENDMSG (Linux's UIO_MAXIOV).
const MAX_IOV: usize = 1024;
/// No slot (end of a rider chain).
const NONE: u16 = u16::MAX;
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
    result: Option<Result<RspHeader, Error>>,
    waker: Option<Waker>,
    /// When the request was queued (only with a stall timeout).
    sent_at: Option<Instant>,
    /// The request as queued (a lead's `data_length` grows with its riders).
    hdr: ReqHeader,
    /// Rider chain: the next slot whose payload follows this one's (`NONE`: the end).
    next: u16,
    /// Lead only: the last slot of its chain, and how many riders it carries.
    tail: u16,
    riders: u16,
    /// Rides on another slot's request: no response of its own is expected.
    carried: bool,
}

struct State {
    slots: Box<[Slot]>,
    free: Vec<u16>,
    free_waiters: VecDeque<Waker>,
    sendq: VecDeque<u16>,
    sender: Option<Waker>,
    broken: Option<Error>,
    inflight: usize,
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

impl RingConn {
    /// Connect (blocking, at shard start-up) with `slots` request slots, and spawn the
    /// sender and receiver tasks on `exe`. The connection never reconnects.
    pub fn connect(addr: impl Into<Gateway>, timeout: Duration, slots: usize, exe: &super::exec::LocalExecutor<'_>) -> io::Result<Rc<RingConn>> {
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
        let mut last = io::Error::other("no gateway given");
        for (i, g) in gateways.iter().enumerate() {
            match g.connect(timeout) {
                Ok(stream) => {
                    let mut rotation = gateways[i..].to_vec();
                    rotation.extend_from_slice(&gateways[..i]);
                    let conn = Self::build(stream, g.clone(), rotation, stall, slots);
                    conn.alive.set(1);
                    exe.spawn(conn.clone().supervise()).detach();
                    return Ok(conn);
                }
                Err(e) => last = io::Error::new(e.kind(), format!("{g}: {e}")),
            }
        }
        Err(last)
    }

    fn build(stream: Stream, addr: Gateway, gateways: Vec<Gateway>, stall: Duration, slots: usize) -> Rc<RingConn> {
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
                        result: None,
                        waker: None,
                        sent_at: None,
                        hdr: ReqHeader::obj(Opcode::ReadObj, 0, 0, Default::default()),
                        next: NONE,
                        tail: NONE,
                        riders: 0,
                        carried: false,
                    })
                    .collect(),
                free: (0..n as u16).rev().collect(),
                free_waiters: VecDeque::with_capacity(64),
                sendq: VecDeque::with_capacity(n),
                sender: None,
                broken: None,
                inflight: 0,
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
    pub async fn call(&self, hdr: ReqHeader, payload: &[u8], dest: &mut [u8]) -> Result<RspHeader, Error> {
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
        self.enqueue(idx, hdr, payload, dest);
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
    fn enqueue(&self, idx: usize, mut hdr: ReqHeader, payload: &[u8], dest: &mut [u8]) {
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
            (s.payload, s.payload_len) = if hdr.has_payload() { (payload.as_ptr(), payload.len()) } else { (std::ptr::null(), 0) };
            let takes = if hdr.opcode == Opcode::ReadObj as u8 { dest.len() } else { 0 };
            (s.dest, s.dest_len) = (dest.as_mut_ptr(), takes);
            s.result = None;
            s.sent_at = (!self.stall.is_zero()).then(super::ring::now);
            (s.hdr, s.next, s.tail, s.riders, s.carried) = (hdr, NONE, idx as u16, 0, false);
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
        if st.sendq.is_empty() || !may_ride(h) {
            return None;
        }
        st.sendq.iter().rev().take(MERGE_SCAN).map(|&l| usize::from(l)).find(|&l| {
            let s = &st.slots[l];
            s.phase == Phase::Queued && rides_on(&s.hdr, usize::from(s.riders), h)
        })
    }

    /// Attach the request in slot `idx` (set up, not queued) to a queued WRITE_OBJ it can
    /// ride on (module contract); false when there is none.
    fn ride(&self, st: &mut State, idx: usize) -> bool {
        let h = st.slots[idx].hdr;
        let Some(lead) = Self::find_lead(st, &h) else {
            return false;
        };
        let tail = usize::from(st.slots[lead].tail);
        st.slots[tail].next = idx as u16;
        st.slots[idx].carried = true;
        let s = &mut st.slots[lead];
        s.tail = idx as u16;
        s.riders += 1;
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
                    (s.dest, s.dest_len) = (std::ptr::null_mut(), 0);
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
        let mut i = idx;
        loop {
            let (w, next) = {
                let mut st = self.st.borrow_mut();
                let s = &mut st.slots[i];
                if !matches!(s.phase, Phase::Queued | Phase::Sent) {
                    // Already failed: its caller has (or will get) that error, not this;
                    // its riders failed with it.
                    return;
                }
                s.phase = Phase::Done;
                s.result = Some(r);
                (s.dest, s.dest_len) = (std::ptr::null_mut(), 0);
                let next = std::mem::replace(&mut s.next, NONE);
                (s.waker.take(), next)
            };
            if let Some(w) = w {
                w.wake();
            }
            if next == NONE {
                return;
            }
            i = usize::from(next);
        }
    }

    /// Serve one socket until it breaks (no reconnect).
    async fn run_once(self: Rc<Self>) {
        let fd = self.stream.borrow().as_ref().map(|s| s.as_raw_fd());
        if let Some(fd) = fd {
            futures_lite::future::zip(self.send_inner(types::Fd(fd)), self.recv_inner(types::Fd(fd))).await;
        }
        self.alive.set(self.alive.get() - 1);
    }

    /// Serve the socket, and reconnect whenever it breaks, until closed.
    async fn supervise(self: Rc<Self>) {
        let mut backoff = Duration::from_millis(100);
        let mut next = 1 % self.gateways.len().max(1);
        loop {
            let fd = self.stream.borrow().as_ref().map(|s| s.as_raw_fd());
            if let Some(fd) = fd {
                let fd = types::Fd(fd);
                futures_lite::future::zip(self.send_inner(fd), futures_lite::future::zip(self.recv_inner(fd), self.watch())).await;
                // Every task of that socket is done: nothing refers to it any more.
                self.stream.borrow_mut().take();
                backoff = Duration::from_millis(100);
            }
            if self.closed.get() {
                break;
            }
            super::ring::sleep(backoff).await;
            if self.closed.get() {
                break;
            }
            let g = self.gateways[next % self.gateways.len().max(1)].clone();
            next += 1;
            match g.connect(RECONNECT_TIMEOUT) {
                Ok(s) => {
                    tracing::info!("sheep connection to {g} re-established");
                    *self.stream.borrow_mut() = Some(s);
                    *self.addr.borrow_mut() = g;
                    self.reconnects.set(self.reconnects.get() + 1);
                    let waiters: Vec<Waker> = {
                        let mut st = self.st.borrow_mut();
                        st.broken = None;
                        st.free_waiters.drain(..).collect()
                    };
                    waiters.into_iter().for_each(Waker::wake);
                }
                Err(e) => {
                    tracing::debug!("reconnect to {g} failed: {e}");
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
        self.alive.set(self.alive.get() - 1);
    }

    /// Break the socket when a request waits longer than `stall` (or the owner closed it).
    async fn watch(&self) {
        if self.stall.is_zero() {
            return;
        }
        let tick = (self.stall / 4).clamp(Duration::from_millis(10), Duration::from_millis(250));
        // A broken socket ends this task within `POLL`, so the supervisor (which waits for
        // every task of the socket) reconnects without waiting out a whole tick.
        const POLL: Duration = Duration::from_millis(20);
        let mut waited = tick;
        loop {
            if self.closed.get() || self.st.borrow().broken.is_some() {
                return;
            }
            if waited < tick {
                super::ring::sleep(POLL.min(tick - waited)).await;
                waited += POLL;
                continue;
            }
            waited = Duration::ZERO;
            let oldest = {
                let st = self.st.borrow();
                st.slots.iter().filter(|s| matches!(s.phase, Phase::Queued | Phase::Sent)).filter_map(|s| s.sent_at).min()
            };
            if oldest.is_some_and(|t| t.elapsed() > self.stall) {
                tracing::warn!("sheep {}: a request got no answer within {:?}; reconnecting", self.addr.borrow(), self.stall);
                self.fail(Error::Io(libc::ETIMEDOUT));
                return;
            }
        }
    }

    /// Move up to [`MAX_BATCH`] queued requests (with their riders) into `iov`, header and
    /// payloads in order, marking them sent; at most [`MAX_IOV`] iovecs.
    fn take_batch(&self, iov: &mut Vec<libc::iovec>) {
        iov.clear();
        let mut st = self.st.borrow_mut();
        let mut n = 0;
        while n < MAX_BATCH {
            // A header, the lead's payload and one iovec per rider must fit.
            let Some(&i) = st.sendq.front() else { break };
            let i = usize::from(i);
            if iov.len() + 2 + usize::from(st.slots[i].riders) > MAX_IOV {
                break;
            }
            st.sendq.pop_front();
            iov.push(libc::iovec { iov_base: self.headers[i].get().cast(), iov_len: HEADER_LEN });
            let mut j = i;
            while j != usize::from(NONE) {
                let s = &mut st.slots[j];
                s.phase = Phase::Sent;
                if s.payload_len > 0 {
                    iov.push(libc::iovec { iov_base: s.payload as *mut libc::c_void, iov_len: s.payload_len });
                }
                j = usize::from(s.next);
            }
            n += 1;
        }
    }

    async fn send_inner(&self, fd: types::Fd) {
        let mut iov: Vec<libc::iovec> = Vec::with_capacity(MAX_IOV);
        loop {
            let go = poll_fn(|cx| {
                let mut st = self.st.borrow_mut();
                if st.broken.is_some() {
                    Poll::Ready(false)
                } else if !st.sendq.is_empty() {
                    Poll::Ready(true)
                } else {
                    st.sender = Some(cx.waker().clone());
                    Poll::Pending
                }
            })
            .await;
            if !go {
                return;
            }
            self.take_batch(&mut iov);
            let mut start = 0;
            while start < iov.len() {
                // SAFETY: an all-zero msghdr is valid; the fields set below point into `iov`,
                // which this future owns and does not touch until the SENDMSG completes.
                let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
                msg.msg_iov = iov[start..].as_mut_ptr();
                msg.msg_iovlen = iov.len() - start;
                let n = submit(opcode::SendMsg::new(fd, &msg).flags(libc::MSG_NOSIGNAL as u32).build()).await;
                if n <= 0 {
                    self.fail(if n == 0 { Error::Closed } else { Error::Io(-n) });
                    return;
                }
                start = crate::iov::advance(&mut iov, start, n as usize);
            }
        }
    }

    /// Read responses and hand them to their callers; the framing and every check are
    /// [`Demux`]'s (see `proto::demux`), this adds the reads and the copies.
    async fn recv_inner(&self, fd: types::Fd) {
        let mut buf = vec![0u8; RECV_BUF].into_boxed_slice();
        let (mut head, mut tail) = (0usize, 0usize);
        let mut demux = Demux::new();
        loop {
            if head == tail {
                (head, tail) = (0, 0);
            } else if tail == buf.len() {
                buf.copy_within(head..tail, 0);
                (head, tail) = (0, tail - head);
            }
            let room = &mut buf[tail..];
            let n = submit(opcode::Recv::new(fd, room.as_mut_ptr(), room.len() as u32).build()).await;
            if n <= 0 {
                self.fail(if n == 0 { Error::Closed } else { Error::Io(-n) });
                return;
            }
            // Broken meanwhile (send error, stall, close): its callers already have their
            // error and their destinations are gone; nothing more is delivered.
            if self.st.borrow().broken.is_some() {
                return;
            }
            tail += n as usize;
            loop {
                let (used, ev) = demux.feed(&buf[head..tail], |i| {
                    let st = self.st.borrow();
                    let s = st.slots.get(i).filter(|s| matches!(s.phase, Phase::Queued | Phase::Sent) && !s.carried)?;
                    Some(InFlight { gen: s.gen, bound: u32::try_from(s.dest_len).unwrap_or(u32::MAX) })
                });
                head += used;
                match ev {
                    Event::NeedMore => break,
                    Event::Payload { slot, offset, data } => {
                        let st = self.st.borrow();
                        if let Some(s) = st.slots.get(slot).filter(|s| !s.dest.is_null() && offset + data.len() <= s.dest_len) {
                            // SAFETY: `dest` points to the caller's buffer of `dest_len` bytes,
                            // valid while the slot is in flight (module contract); the range is
                            // checked against `dest_len` just above.
                            unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), s.dest.add(offset), data.len()) };
                        }
                    }
                    Event::Complete { slot, rsp } => self.complete(slot, Ok(rsp)),
                    Event::Break(why) => {
                        tracing::warn!("sheep {}: {why}; closing", self.addr.borrow());
                        self.fail(Error::Protocol);
                        return;
                    }
                }
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
            (s.payload, s.payload_len, s.dest, s.dest_len) = (std::ptr::null(), 0, std::ptr::null_mut(), 0);
            (s.next, s.tail, s.riders, s.carried) = (NONE, NONE, 0, false);
            s.waker = None;
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
mod tests {
    use super::super::coalesce::{MAX_MERGED, MAX_RIDERS};
    use super::*;
    use crate::proto::{demux::split_id, ObjArgs, SD_RES_SUCCESS};
    use std::io::{Read, Write};
    use std::net::TcpListener;

    const LEN: usize = 4096;

    /// A fake sheep: each answer in turn goes to one new connection, as the reply to the one
    /// READ_OBJ it receives; then it reads until the client closes that connection.
    fn fake_sheep(answers: Vec<fn(RspHeader) -> Vec<u8>>) -> (std::net::SocketAddr, std::thread::JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let t = std::thread::spawn(move || {
            for answer in answers {
                let (mut s, _) = l.accept().expect("accept");
                let mut hb = [0u8; HEADER_LEN];
                s.read_exact(&mut hb).expect("request");
                let mut rsp = RspHeader::reply_to(&ReqHeader::decode(&hb), SD_RES_SUCCESS);
                rsp.data_length = LEN as u32;
                s.write_all(&answer(rsp)).expect("answer");
                let mut rest = Vec::new();
                let _ = s.read_to_end(&mut rest);
            }
        });
        (addr, t)
    }

    fn with_payload(rsp: RspHeader) -> Vec<u8> {
        let mut b = rsp.encode().to_vec();
        b.resize(HEADER_LEN + rsp.data_length as usize, 0x5a);
        b
    }

    /// A response read after the connection failed (the stall watch fired while its payload
    /// was arriving) must not turn the request's error into a success with half a payload.
    #[test]
    fn a_late_answer_does_not_replace_the_error_of_a_failed_request() {
        let (_l, conn) = idle_conn(1);
        {
            let mut st = conn.st.borrow_mut();
            st.slots[0].phase = Phase::Sent;
            st.inflight += 1;
        }
        conn.fail(Error::Io(libc::ETIMEDOUT));
        let req = ReqHeader::obj(Opcode::ReadObj, 0, LEN as u32, ObjArgs::default());
        conn.complete(0, Ok(RspHeader::reply_to(&req, SD_RES_SUCCESS)));
        let mut st = conn.st.borrow_mut();
        assert_eq!(st.slots[0].result.take(), Some(Err(Error::Io(libc::ETIMEDOUT))));
        assert!(st.broken.is_some());
    }

    /// A connection without tasks (the test drives its queue by hand) and its listener.
    fn idle_conn(slots: usize) -> (TcpListener, Rc<RingConn>) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        (l, RingConn::build(Gateway::from(addr).connect(Duration::from_secs(3)).expect("connect"), addr.into(), Vec::new(), Duration::ZERO, slots))
    }

    /// Queue `op` of `payload.len()` bytes at `offset` of `oid` in a fresh slot.
    fn queue(conn: &RingConn, op: Opcode, oid: u64, offset: u32, payload: &[u8]) -> usize {
        let idx = usize::from(conn.st.borrow_mut().free.pop().expect("a free slot"));
        let args = ObjArgs { oid: crate::proto::Oid(oid), offset, ..Default::default() };
        conn.enqueue(idx, ReqHeader::obj(op, crate::proto::SD_FLAG_CMD_WRITE, payload.len() as u32, args), payload, &mut []);
        idx
    }

    fn sent_header(conn: &RingConn, idx: usize) -> ReqHeader {
        // SAFETY: no sender task runs; nothing writes the cell while the test reads it.
        ReqHeader::decode(unsafe { &*conn.headers[idx].get() })
    }

    #[test]
    fn adjacent_writes_of_one_object_ride_on_the_queued_one_and_share_its_result() {
        let (_l, conn) = idle_conn(16);
        let bufs: Vec<Vec<u8>> = (0..8u8).map(|k| vec![k; 4096]).collect();
        let a = queue(&conn, Opcode::WriteObj, 1, 0, &bufs[0]);
        let b = queue(&conn, Opcode::WriteObj, 1, 4096, &bufs[1]); // rides on a
        let c = queue(&conn, Opcode::WriteObj, 2, 8192, &bufs[2]); // another object
        let d = queue(&conn, Opcode::WriteObj, 1, 8192, &bufs[3]); // rides on a, behind c
        let e = queue(&conn, Opcode::CreateAndWriteObj, 1, 12288, &bufs[4]); // a create never merges
        let f = queue(&conn, Opcode::WriteObj, 1, 20480, &bufs[5]); // a gap
        let g = queue(&conn, Opcode::WriteObj, 1, 0, &bufs[6]); // overlaps a
        let h = queue(&conn, Opcode::CreateAndWriteObj, 1, 24576, &bufs[7]); // adjacent to f, but a create
        assert_eq!(conn.merged(), 2);
        assert_eq!(sent_header(&conn, a).data_length, 3 * 4096, "the lead's header carries its riders");
        assert_eq!(sent_header(&conn, a).obj_args().offset, 0);
        assert_eq!(sent_header(&conn, c).data_length, 4096);
        let mut iov = Vec::with_capacity(MAX_IOV);
        conn.take_batch(&mut iov);
        let order: Vec<*mut libc::c_void> = iov.iter().map(|v| v.iov_base).collect();
        let hdr = |i: usize| conn.headers[i].get().cast::<libc::c_void>();
        let pay = |k: usize| bufs[k].as_ptr() as *mut libc::c_void;
        assert_eq!(
            order,
            vec![hdr(a), pay(0), pay(1), pay(3), hdr(c), pay(2), hdr(e), pay(4), hdr(f), pay(5), hdr(g), pay(6), hdr(h), pay(7)],
            "one header, then the lead's and each rider's payload in order"
        );
        let req = ReqHeader::obj(Opcode::WriteObj, 0, 0, ObjArgs::default());
        conn.complete(a, Ok(RspHeader::reply_to(&req, crate::proto::SD_RES_EIO)));
        let mut st = conn.st.borrow_mut();
        for i in [a, b, d] {
            assert_eq!(st.slots[i].result.take().map(|r| r.map(|r| r.result)), Some(Ok(crate::proto::SD_RES_EIO)), "slot {i}");
        }
        for i in [c, e, f, g, h] {
            assert!(st.slots[i].result.is_none(), "slot {i} is not answered by a's response");
        }
        drop(st);
        conn.fail(Error::Closed);
        assert_eq!(conn.st.borrow_mut().slots[c].result.take(), Some(Err(Error::Closed)));
    }

    #[test]
    fn merging_stops_at_its_caps_and_when_turned_off() {
        let (_l, conn) = idle_conn(MAX_RIDERS + 8);
        let big = vec![0u8; MAX_MERGED as usize];
        let a = queue(&conn, Opcode::WriteObj, 1, 0, &big[..MAX_MERGED as usize - 4096]);
        let _ = queue(&conn, Opcode::WriteObj, 1, MAX_MERGED - 4096, &big[..4096]);
        let c = queue(&conn, Opcode::WriteObj, 1, MAX_MERGED, &big[..1]);
        assert_eq!(sent_header(&conn, a).data_length, MAX_MERGED);
        assert_eq!(conn.merged(), 1, "no request grows past MAX_MERGED");
        for k in 1..=MAX_RIDERS as u32 + 1 {
            queue(&conn, Opcode::WriteObj, 1, MAX_MERGED + k, &big[..1]);
        }
        assert_eq!(conn.merged(), 1 + MAX_RIDERS as u64);
        assert_eq!(sent_header(&conn, c).data_length, 1 + MAX_RIDERS as u32, "no request carries more than MAX_RIDERS riders");
        assert_eq!(conn.st.borrow().sendq.len(), 3);
        conn.fail(Error::Closed);
        let (_l, conn) = idle_conn(4);
        conn.set_coalesce(false);
        queue(&conn, Opcode::WriteObj, 1, 0, &big[..4096]);
        queue(&conn, Opcode::WriteObj, 1, 4096, &big[..4096]);
        assert_eq!((conn.merged(), conn.st.borrow().sendq.len()), (0, 2));
        conn.fail(Error::Closed);
    }

    #[test]
    fn a_response_that_matches_no_request_breaks_the_connection_and_it_comes_back() {
        let answers: Vec<fn(RspHeader) -> Vec<u8>> = vec![
            // An earlier generation of the same slot.
            |mut r| {
                let (slot, gen) = split_id(r.id);
                r.id = wire_id(slot as u16, gen.wrapping_sub(1));
                with_payload(r)
            },
            // A slot nobody uses.
            |mut r| {
                r.id = wire_id(999, split_id(r.id).1);
                with_payload(r)
            },
            // One byte more than the read asked for.
            |mut r| {
                r.data_length += 1;
                with_payload(r)
            },
            // Finally a good answer, on the fourth connection.
            with_payload,
        ];
        let (addr, server) = fake_sheep(answers);
        let client = std::thread::spawn(move || {
            super::super::ring::init_thread_ring(64).expect("ring");
            let exe = crate::shard::exec::LocalExecutor::new();
            let conn = RingConn::connect_supervised(&[addr.into()], Duration::from_secs(1), 4, Duration::ZERO, &exe).expect("connect");
            let c2 = conn.clone();
            super::super::ring::run_local(&exe, async move {
                let conn = c2;
                let hdr = ReqHeader::obj(Opcode::ReadObj, 0, LEN as u32, ObjArgs::default());
                let mut dest = vec![0u8; LEN];
                for bad in 0..3 {
                    let r = conn.call(hdr, &[], &mut dest).await;
                    assert_eq!(r, Err(Error::Protocol), "bad answer {bad}");
                    assert!(r.err().is_some_and(Error::should_reconnect));
                    assert!(dest.iter().all(|&b| b == 0), "bad answer {bad} wrote into the destination");
                    let deadline = Instant::now() + Duration::from_secs(10);
                    while !conn.is_up() {
                        assert!(Instant::now() < deadline, "no reconnect after bad answer {bad}");
                        super::super::ring::sleep(Duration::from_millis(10)).await;
                    }
                }
                let r = conn.call(hdr, &[], &mut dest).await.expect("the resent request is answered");
                assert_eq!(r.data_length as usize, LEN);
                assert!(dest.iter().all(|&b| b == 0x5a));
                assert_eq!(conn.reconnects(), 3);
                conn.shut_down().await;
            })
            .expect("ring");
        });
        client.join().expect("client");
        server.join().expect("fake sheep");
    }
}
