//! A pipelined sheep connection driven entirely by SQEs on the shard's own ring.
//!
//! Contract:
//! - Up to `slots` requests in flight; each gets a wire id = slot index | generation << 16,
//!   and responses are matched by id in any order. All state (slots, queues, buffers) is
//!   allocated when the connection is made: a request allocates nothing.
//! - One sender task batches every queued request into one SENDMSG (header + payload as
//!   iovecs, no copy); one receiver task reads responses into a connection buffer and copies
//!   each payload into the caller's destination. A response whose id is not in flight, or
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
//! - Single-threaded (`Rc`, `RefCell`); no borrow is held across an `.await`.

use std::cell::{RefCell, UnsafeCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use io_uring::{opcode, types};

use super::ring::submit;
use super::Error;
use crate::proto::{Opcode, ReqHeader, RspHeader, HEADER_LEN};

/// Requests gathered into one SENDMSG.
const MAX_BATCH: usize = 64;
/// Receive buffer per connection.
const RECV_BUF: usize = 256 << 10;

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
    stream: TcpStream,
    addr: SocketAddr,
    /// Encoded headers, one per slot, at stable addresses for SENDMSG.
    headers: Box<[UnsafeCell<[u8; HEADER_LEN]>]>,
    st: RefCell<State>,
    /// Sender and receiver tasks still running (their SQEs may reference our buffers).
    alive: std::cell::Cell<u8>,
}

impl RingConn {
    /// Connect (blocking, at shard start-up) with `slots` request slots, and spawn the
    /// sender and receiver tasks on `exe`.
    pub fn connect(addr: SocketAddr, timeout: Duration, slots: usize, exe: &smol::LocalExecutor<'_>) -> io::Result<Rc<RingConn>> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        let n = slots.clamp(1, u16::MAX as usize);
        let conn = Rc::new(RingConn {
            stream,
            addr,
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
                    })
                    .collect(),
                free: (0..n as u16).rev().collect(),
                free_waiters: VecDeque::with_capacity(64),
                sendq: VecDeque::with_capacity(n),
                sender: None,
                broken: None,
                inflight: 0,
            }),
            alive: std::cell::Cell::new(2),
        });
        exe.spawn(conn.clone().send_loop()).detach();
        exe.spawn(conn.clone().recv_loop()).detach();
        Ok(conn)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn inflight(&self) -> usize {
        self.st.borrow().inflight
    }

    pub fn is_broken(&self) -> bool {
        self.st.borrow().broken.is_some()
    }

    /// Whether both tasks have ended, so no SQE of this connection is in flight.
    pub fn is_quiet(&self) -> bool {
        self.alive.get() == 0
    }

    /// The socket, for a control plane that must break a stuck connection from outside.
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.stream.as_raw_fd()
    }

    /// Close the socket: the tasks end and every request in flight fails.
    pub fn close(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        self.fail(Error::Closed);
    }

    /// Send `hdr` (its id is assigned here) with `payload` when it has the WRITE flag, and
    /// wait for the response; a READ_OBJ response payload lands in `dest`. The server's
    /// result code is returned in the header, not interpreted.
    pub async fn call(&self, mut hdr: ReqHeader, payload: &[u8], dest: &mut [u8]) -> Result<RspHeader, Error> {
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
        {
            let mut st = self.st.borrow_mut();
            let s = &mut st.slots[idx];
            s.gen = s.gen.wrapping_add(1);
            hdr.id = (u32::from(s.gen) << 16) | idx as u32;
            // SAFETY: the header cell of a slot is only written here, while the slot is
            // owned by this call and not queued, so neither the sender nor the kernel reads it.
            unsafe { *self.headers[idx].get() = hdr.encode() };
            s.phase = Phase::Queued;
            (s.payload, s.payload_len) = if hdr.has_payload() { (payload.as_ptr(), payload.len()) } else { (std::ptr::null(), 0) };
            let takes = if hdr.opcode == Opcode::ReadObj as u8 { dest.len() } else { 0 };
            (s.dest, s.dest_len) = (dest.as_mut_ptr(), takes);
            s.result = None;
            st.inflight += 1;
            st.sendq.push_back(idx as u16);
            if let Some(w) = st.sender.take() {
                w.wake();
            }
        }
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

    fn fail(&self, e: Error) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
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

    fn complete(&self, idx: usize, r: Result<RspHeader, Error>) {
        let w = {
            let mut st = self.st.borrow_mut();
            let s = &mut st.slots[idx];
            s.phase = Phase::Done;
            s.result = Some(r);
            (s.dest, s.dest_len) = (std::ptr::null_mut(), 0);
            s.waker.take()
        };
        if let Some(w) = w {
            w.wake();
        }
    }

    async fn send_loop(self: Rc<Self>) {
        self.send_inner().await;
        self.alive.set(self.alive.get() - 1);
    }

    async fn recv_loop(self: Rc<Self>) {
        self.recv_inner().await;
        self.alive.set(self.alive.get() - 1);
    }

    async fn send_inner(&self) {
        let fd = types::Fd(self.stream.as_raw_fd());
        let mut iov: Vec<libc::iovec> = Vec::with_capacity(2 * MAX_BATCH);
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
            iov.clear();
            {
                let mut st = self.st.borrow_mut();
                let mut n = 0;
                while n < MAX_BATCH {
                    let Some(i) = st.sendq.pop_front() else { break };
                    let i = i as usize;
                    let s = &mut st.slots[i];
                    s.phase = Phase::Sent;
                    iov.push(libc::iovec { iov_base: self.headers[i].get().cast(), iov_len: HEADER_LEN });
                    if s.payload_len > 0 {
                        iov.push(libc::iovec { iov_base: s.payload as *mut libc::c_void, iov_len: s.payload_len });
                    }
                    n += 1;
                }
            }
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
                let mut left = n as usize;
                while left > 0 && start < iov.len() {
                    let v = &mut iov[start];
                    if left >= v.iov_len {
                        left -= v.iov_len;
                        start += 1;
                    } else {
                        // SAFETY: advancing within the same iovec's buffer, by less than its length.
                        v.iov_base = unsafe { v.iov_base.cast::<u8>().add(left) }.cast();
                        v.iov_len -= left;
                        left = 0;
                    }
                }
            }
        }
    }

    async fn recv_inner(&self) {
        let fd = types::Fd(self.stream.as_raw_fd());
        let mut buf = vec![0u8; RECV_BUF].into_boxed_slice();
        let (mut head, mut tail) = (0usize, 0usize);
        // The response whose payload is being copied: (slot, header, bytes copied so far).
        let mut cur: Option<(usize, RspHeader, usize)> = None;
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
            tail += n as usize;
            loop {
                if let Some((idx, rsp, done)) = cur {
                    let want = rsp.data_length as usize - done;
                    let take = want.min(tail - head);
                    {
                        let st = self.st.borrow();
                        let s = &st.slots[idx];
                        if !s.dest.is_null() && done + take <= s.dest_len {
                            // SAFETY: `dest` points to the caller's buffer of `dest_len` bytes,
                            // valid while the slot is in flight (module contract); the range is
                            // checked against `dest_len` just above.
                            unsafe { std::ptr::copy_nonoverlapping(buf[head..].as_ptr(), s.dest.add(done), take) };
                        }
                    }
                    head += take;
                    if take < want {
                        cur = Some((idx, rsp, done + take));
                        break;
                    }
                    cur = None;
                    self.complete(idx, Ok(rsp));
                    continue;
                }
                if tail - head < HEADER_LEN {
                    break;
                }
                let mut hb = [0u8; HEADER_LEN];
                hb.copy_from_slice(&buf[head..head + HEADER_LEN]);
                head += HEADER_LEN;
                let rsp = RspHeader::decode(&hb);
                let idx = (rsp.id & 0xffff) as usize;
                let ok = {
                    let st = self.st.borrow();
                    st.slots.get(idx).is_some_and(|s| {
                        s.gen == (rsp.id >> 16) as u16 && matches!(s.phase, Phase::Queued | Phase::Sent) && rsp.data_length as usize <= s.dest_len
                    })
                };
                if !ok {
                    tracing::warn!("sheep {}: response id {:#x} with {} bytes matches no request; closing", self.addr, rsp.id, rsp.data_length);
                    let _ = self.stream.shutdown(std::net::Shutdown::Both);
                    self.fail(Error::Protocol);
                    return;
                }
                if rsp.data_length == 0 {
                    self.complete(idx, Ok(rsp));
                } else {
                    cur = Some((idx, rsp, 0));
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
