//! The tasks of a connection's socket: the sender (every queued request, with its riders,
//! in one SENDMSG — or, when some payloads are requests' kernel pages, one linked chain of
//! SENDMSGs and SEND_ZCs in order), the receiver (reads, `proto::demux`, copies into the
//! callers' destinations, or reads straight into a request's kernel pages), the stall
//! watchdog, and the supervisor that reconnects.

use std::future::poll_fn;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use io_uring::{opcode, types};

use super::super::ring::{self, submit};
use super::super::Error;
use super::{Phase, RingConn, MAX_BATCH, MAX_CHAIN, MAX_IOV, RECONNECT_TIMEOUT, RECV_BUF};
use crate::block::{copy_to_kernel, KernelBuf};
use crate::proto::demux::{Demux, Event, InFlight};
use crate::proto::HEADER_LEN;

impl RingConn {
    /// Serve one socket until it breaks (no reconnect).
    pub(super) async fn run_once(self: Rc<Self>) {
        let fd = self.stream.borrow().as_ref().map(|s| s.as_raw_fd());
        if let Some(fd) = fd {
            futures_lite::future::zip(
                self.send_inner(types::Fd(fd)),
                self.recv_inner(types::Fd(fd)),
            )
            .await;
        }
        self.alive.set(self.alive.get() - 1);
    }

    /// Serve the socket, and reconnect whenever it breaks, until closed.
    pub(super) async fn supervise(self: Rc<Self>) {
        let mut backoff = Duration::from_millis(100);
        let mut next = 1 % self.gateways.len().max(1);
        loop {
            let fd = self.stream.borrow().as_ref().map(|s| s.as_raw_fd());
            if let Some(fd) = fd {
                let fd = types::Fd(fd);
                futures_lite::future::zip(
                    self.send_inner(fd),
                    futures_lite::future::zip(self.recv_inner(fd), self.watch()),
                )
                .await;
                // Every task of that socket is done: nothing refers to it any more.
                self.stream.borrow_mut().take();
                backoff = Duration::from_millis(100);
            }
            if self.closed.get() {
                break;
            }
            super::super::ring::sleep(backoff).await;
            if self.closed.get() {
                break;
            }
            let g = self.gateways[next % self.gateways.len().max(1)].clone();
            next += 1;
            // Not on this thread: a core thread serves other devices meanwhile.
            match super::connect_aside(&g, RECONNECT_TIMEOUT).await {
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
                super::super::ring::sleep(POLL.min(tick - waited)).await;
                waited += POLL;
                continue;
            }
            waited = Duration::ZERO;
            let oldest = {
                let st = self.st.borrow();
                st.slots
                    .iter()
                    .filter(|s| matches!(s.phase, Phase::Queued | Phase::Sent))
                    .filter_map(|s| s.sent_at)
                    .min()
            };
            if oldest.is_some_and(|t| t.elapsed() > self.stall) {
                tracing::warn!(
                    "sheep {}: a request got no answer within {:?}; reconnecting",
                    self.addr.borrow(),
                    self.stall
                );
                self.fail(Error::Io(libc::ETIMEDOUT));
                return;
            }
        }
    }

    /// Move up to [`MAX_BATCH`] queued requests (with their riders) into `iov`, header and
    /// payloads in order, marking them sent; at most [`MAX_IOV`] iovecs. `segs` says how
    /// the batch goes out: runs of `iov` and, between them, payloads that are kernel pages
    /// (at most [`MAX_CHAIN`] pieces).
    pub(super) fn take_batch(&self, iov: &mut Vec<libc::iovec>, segs: &mut Vec<Seg>) {
        iov.clear();
        segs.clear();
        let mut mark = 0;
        let mut st = self.st.borrow_mut();
        let mut n = 0;
        while n < MAX_BATCH {
            // A header, the lead's payload and one iovec per rider must fit; and, should
            // every payload be kernel pages, two pieces each.
            let Some(&i) = st.sendq.front() else { break };
            let i = usize::from(i);
            let riders = st.chains.riders(i);
            if iov.len() + 2 + riders > MAX_IOV || segs.len() + 3 + 2 * riders > MAX_CHAIN {
                break;
            }
            st.sendq.pop_front();
            iov.push(libc::iovec { iov_base: self.headers[i].get().cast(), iov_len: HEADER_LEN });
            let mut next = Some(i);
            while let Some(j) = next {
                let s = &mut st.slots[j];
                s.phase = Phase::Sent;
                if let Some(k) = s.payload_k {
                    if iov.len() > mark {
                        segs.push(Seg::Iov { from: mark, to: iov.len() });
                    }
                    segs.push(Seg::Kernel(k));
                    mark = iov.len();
                } else if s.payload_len > 0 {
                    iov.push(libc::iovec {
                        iov_base: s.payload as *mut libc::c_void,
                        iov_len: s.payload_len,
                    });
                }
                next = st.chains.next(j);
            }
            n += 1;
        }
        if iov.len() > mark {
            segs.push(Seg::Iov { from: mark, to: iov.len() });
        }
    }

    async fn send_inner(&self, fd: types::Fd) {
        let mut iov: Vec<libc::iovec> = Vec::with_capacity(MAX_IOV);
        let mut chain = Chain::new();
        // AF_UNIX has no zero-copy send: kernel pages go with WRITE_FIXED, one piece after
        // the other (a short write there is normal and is resumed).
        let unix = matches!(self.stream.borrow().as_ref(), Some(crate::net::Stream::Unix(_)));
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
            self.take_batch(&mut iov, &mut chain.segs);
            if chain.segs.iter().any(|s| matches!(s, Seg::Kernel(_))) {
                let sent = match unix {
                    false => chain.send(fd, &mut iov).await,
                    true => chain.send_serial(fd, &mut iov).await,
                };
                if let Err(e) = sent {
                    self.fail(e);
                    return;
                }
                continue;
            }
            let mut start = 0;
            while start < iov.len() {
                // SAFETY: an all-zero msghdr is valid; the fields set below point into `iov`,
                // which this future owns and does not touch until the SENDMSG completes.
                let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
                msg.msg_iov = iov[start..].as_mut_ptr();
                msg.msg_iovlen = iov.len() - start;
                let n =
                    submit(opcode::SendMsg::new(fd, &msg).flags(libc::MSG_NOSIGNAL as u32).build())
                        .await;
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
            // The rest of a payload bound for a request's kernel pages, with nothing of it
            // buffered here: read it straight into them.
            let direct = (head == tail).then(|| self.direct_dest(&demux)).flatten();
            let n = match direct {
                Some((k, want)) => {
                    let at = (k.off as usize) as *mut u8;
                    let len = want.min(u32::MAX as usize) as u32;
                    submit(opcode::ReadFixed::new(fd, at, len, k.index).build()).await
                }
                None => {
                    let room = &mut buf[tail..];
                    submit(opcode::Recv::new(fd, room.as_mut_ptr(), room.len() as u32).build())
                        .await
                }
            };
            if n <= 0 {
                self.fail(if n == 0 { Error::Closed } else { Error::Io(-n) });
                return;
            }
            // Broken meanwhile (send error, stall, close): its callers already have their
            // error and their destinations are gone; nothing more is delivered.
            if self.st.borrow().broken.is_some() {
                return;
            }
            match direct {
                Some(_) => demux.skip(n as usize),
                None => tail += n as usize,
            }
            loop {
                let (used, ev) = demux.feed(&buf[head..tail], |i| {
                    let st = self.st.borrow();
                    let s = st
                        .slots
                        .get(i)
                        .filter(|s| matches!(s.phase, Phase::Queued | Phase::Sent))?;
                    if st.chains.is_carried(i) {
                        return None;
                    }
                    Some(InFlight {
                        gen: s.gen,
                        bound: u32::try_from(s.dest_len).unwrap_or(u32::MAX),
                    })
                });
                head += used;
                match ev {
                    Event::NeedMore => break,
                    Event::Payload { slot, offset, data } => {
                        let st = self.st.borrow();
                        let kernel = st.slots.get(slot).and_then(|s| s.dest_k);
                        if let Some(k) = kernel {
                            // Bytes that came with an earlier read: user copy.
                            if let Err(e) = copy_to_kernel(&k, offset, data) {
                                drop(st);
                                tracing::warn!(
                                    "sheep {}: user copy of a read: {e}",
                                    self.addr.borrow()
                                );
                                self.fail(Error::Io(e.raw_os_error().unwrap_or(libc::EIO)));
                                return;
                            }
                        } else if let Some(s) = st
                            .slots
                            .get(slot)
                            .filter(|s| !s.dest.is_null() && offset + data.len() <= s.dest_len)
                        {
                            // SAFETY: `dest` points to the caller's buffer of `dest_len` bytes,
                            // valid while the slot is in flight (module contract); the range is
                            // checked against `dest_len` just above.
                            unsafe {
                                std::ptr::copy_nonoverlapping(
                                    data.as_ptr(),
                                    s.dest.add(offset),
                                    data.len(),
                                )
                            };
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

impl RingConn {
    /// The kernel pages the current response's payload goes to, and how much of it is still
    /// to come, when the ring can read into them.
    fn direct_dest(&self, demux: &Demux) -> Option<(KernelBuf, usize)> {
        let (slot, offset, want) = demux.pending()?;
        let st = self.st.borrow();
        let s = st.slots.get(slot).filter(|s| matches!(s.phase, Phase::Queued | Phase::Sent))?;
        let k = s.dest_k.filter(|k| k.ring_reads)?;
        (offset + want <= k.len as usize).then(|| (k.sub(offset as u32, want as u32), want))
    }
}

/// Kernel payloads smaller than this are not sent from the pages: the shard is handed a
/// copy (user copy) that goes with the other queued requests in one SENDMSG. SEND_ZC pins
/// pages and posts a second completion, and a plain SEND from the registered buffer (7.2+)
/// still needs a SEND of its own per request in a linked chain; both cost more than the
/// copy on small payloads (measured: tuning/README.md, "Zero copy").
pub const ZC_SEND_MIN: u32 = 64 << 10;

/// A piece of a batch (see [`RingConn::take_batch`]): iovecs `from..to` of it, or a
/// request's kernel pages.
#[derive(Clone, Copy, Debug)]
pub(super) enum Seg {
    Iov { from: usize, to: usize },
    Kernel(KernelBuf),
}

/// A sender's scratch for batches with kernel pages in them, allocated once.
struct Chain {
    segs: Vec<Seg>,
    msgs: Vec<libc::msghdr>,
    sqes: Vec<io_uring::squeue::Entry>,
    futs: Vec<libublk::uring_async::UblkUringOpFuture>,
    results: Vec<i32>,
}

impl Chain {
    fn new() -> Chain {
        Chain {
            segs: Vec::with_capacity(MAX_CHAIN),
            msgs: Vec::with_capacity(MAX_CHAIN),
            sqes: Vec::with_capacity(MAX_CHAIN),
            futs: Vec::with_capacity(MAX_CHAIN),
            results: Vec::with_capacity(MAX_CHAIN),
        }
    }

    /// Send the batch `self.segs` describes piece by piece, resuming short sends: SENDMSG
    /// for our memory, WRITE_FIXED from the registered buffer for kernel pages (sockets
    /// without SEND_ZC: AF_UNIX).
    async fn send_serial(&mut self, fd: types::Fd, iov: &mut [libc::iovec]) -> Result<(), Error> {
        let end = |n: i32| if n == 0 { Error::Closed } else { Error::Io(-n) };
        for seg in &self.segs {
            match *seg {
                Seg::Iov { from, to } => {
                    let run = &mut iov[..to];
                    let mut start = from;
                    while start < to {
                        // SAFETY: an all-zero msghdr is valid; it points into `run`, which
                        // is not touched until the SENDMSG completes.
                        let mut m: libc::msghdr = unsafe { std::mem::zeroed() };
                        m.msg_iov = run[start..].as_mut_ptr();
                        m.msg_iovlen = to - start;
                        let n = submit(
                            opcode::SendMsg::new(fd, &m).flags(libc::MSG_NOSIGNAL as u32).build(),
                        )
                        .await;
                        if n <= 0 {
                            return Err(end(n));
                        }
                        start = crate::iov::advance(run, start, n as usize);
                    }
                }
                Seg::Kernel(k) => {
                    let mut done = 0u32;
                    while done < k.len {
                        let at = ((k.off + done) as usize) as *const u8;
                        let n =
                            submit(opcode::WriteFixed::new(fd, at, k.len - done, k.index).build())
                                .await;
                        if n <= 0 {
                            return Err(end(n));
                        }
                        done += n as u32;
                    }
                }
            }
        }
        Ok(())
    }

    /// Send the batch `self.segs` describes as one linked chain: a SENDMSG per run of our
    /// memory, a SEND_ZC from the registered buffer per kernel payload, each with
    /// MSG_WAITALL (all of it or an error, so the chain keeps the stream in order).
    async fn send(&mut self, fd: types::Fd, iov: &mut [libc::iovec]) -> Result<(), Error> {
        const FLAGS: i32 = libc::MSG_NOSIGNAL | libc::MSG_WAITALL;
        self.msgs.clear();
        for seg in &self.segs {
            if let Seg::Iov { from, to } = *seg {
                // SAFETY: an all-zero msghdr is valid; its iovecs are `iov[from..to]`, which
                // the caller keeps untouched until this resolves.
                let mut m: libc::msghdr = unsafe { std::mem::zeroed() };
                m.msg_iov = iov[from..].as_mut_ptr();
                m.msg_iovlen = to - from;
                self.msgs.push(m);
            }
        }
        self.sqes.clear();
        let mut m = 0;
        for seg in &self.segs {
            let sqe = match *seg {
                Seg::Iov { .. } => {
                    m += 1;
                    opcode::SendMsg::new(fd, &self.msgs[m - 1]).flags(FLAGS as u32).build()
                }
                // The buffer "address" of kernel pages is the offset into the request.
                Seg::Kernel(k) => opcode::SendZc::new(fd, (k.off as usize) as *const u8, k.len)
                    .buf_index(Some(k.index))
                    .flags(FLAGS)
                    .build(),
            };
            self.sqes.push(sqe);
        }
        ring::submit_chain(&mut self.sqes, &mut self.futs, &mut self.results).await;
        for (seg, &r) in self.segs.iter().zip(&self.results) {
            let want = match *seg {
                Seg::Iov { from, to } => iov[from..to].iter().map(|v| v.iov_len).sum::<usize>(),
                Seg::Kernel(k) => k.len as usize,
            };
            match r {
                r if r < 0 => return Err(Error::Io(-r)),
                0 => return Err(Error::Closed),
                r if r as usize != want => return Err(Error::Io(libc::EIO)),
                _ => {}
            }
        }
        Ok(())
    }
}
