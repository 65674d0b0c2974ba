//! One pipelined connection to a sheep gateway, on the glommio control-plane executor:
//! lookups, snapshots, clones, deletes, locks, inode reads. No VDI data goes here (that is
//! the shards', `crate::shard`).
//!
//! Contract:
//! - Many requests are in flight at once (up to `depth`); each gets a wire `id` from
//!   `proto::demux::wire_id` (slot index and that slot's generation), and responses are
//!   matched by id in whatever order sheep sends them. Framing and checks are
//!   `proto::demux`'s, as on the shards' connections.
//! - A response is checked against its request's bound (`proto::response_bound`) before its
//!   payload is read or allocated. A response with an id that is not in flight, or with an
//!   oversize length, breaks the connection: every request in flight fails with an error
//!   whose `should_reconnect()` is true, and the caller resends on a new connection.
//! - Sends are serialised (one writer at a time) so frames never interleave.
//! - Dropping a `call` future never leaks a slot: a late answer to an abandoned request is
//!   read and thrown away. Dropping the `Connection` closes the socket.
//! - Single-threaded (`Rc`/`RefCell`); no borrow is held across an `.await`.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use glommio::net::{TcpStream, UnixStream};
use glommio::sync::Semaphore;

use super::{Error, Gateway};
use crate::proto::demux::{self, wire_id, Demux, Event, InFlight};
use crate::proto::{response_bound, ReqHeader, RspHeader};

/// The socket of a connection: TCP, or a sheep's unix socket.
enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_flush(cx),
            Socket::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_close(cx),
            Socket::Unix(s) => Pin::new(s).poll_close(cx),
        }
    }
}

/// A response: its header and its payload.
pub type Response = (RspHeader, Vec<u8>);

enum State {
    Free,
    Waiting {
        bound: u32,
        waker: Option<Waker>,
    },
    /// The caller went away; a late answer is drained and dropped.
    Abandoned {
        bound: u32,
    },
    Done(Result<Response, Error>),
}

struct Slot {
    gen: u16,
    state: State,
}

/// Why the connection stopped.
#[derive(Clone)]
enum Broken {
    Eof,
    Io(io::ErrorKind, String),
    Stream(demux::Broken),
}

struct Inner {
    addr: Gateway,
    writer: RefCell<Option<WriteHalf<Socket>>>,
    write_lock: Semaphore,
    depth: Semaphore,
    slots: RefCell<Vec<Slot>>,
    free: RefCell<Vec<u16>>,
    broken: RefCell<Option<Broken>>,
    inflight: Cell<usize>,
    peak: Cell<usize>,
    timeout: Duration,
}

/// A pipelined connection. See the module contract.
pub struct Connection {
    inner: Rc<Inner>,
    _reader: glommio::Task<()>,
}

impl Connection {
    /// Connect to `addr` within `connect_timeout`; allow `depth` requests in flight, each
    /// answered within `timeout` (zero: wait forever).
    pub async fn connect(
        addr: &Gateway,
        connect_timeout: Duration,
        timeout: Duration,
        depth: usize,
    ) -> Result<Connection, Error> {
        let addr = addr.clone();
        let ms = connect_timeout.as_millis() as u64;
        let connected = match &addr {
            Gateway::Tcp(a) => {
                TcpStream::connect_timeout(*a, connect_timeout.max(Duration::from_millis(1)))
                    .await
                    .map(Socket::Tcp)
            }
            Gateway::Unix(p) => UnixStream::connect(p).await.map(Socket::Unix),
        };
        let stream = match connected {
            Ok(s) => s,
            Err(glommio::GlommioError::TimedOut(_)) => {
                return Err(Error::ConnectTimeout { addr, ms })
            }
            Err(e) => {
                let source: io::Error = e.into();
                if source.kind() == io::ErrorKind::TimedOut {
                    return Err(Error::ConnectTimeout { addr, ms });
                }
                return Err(Error::Connect { addr, source });
            }
        };
        if let Socket::Tcp(t) = &stream {
            t.set_nodelay(true)
                .map_err(|source| Error::Io { addr: addr.clone(), source: source.into() })?;
        }
        let depth = depth.clamp(1, u16::MAX as usize);
        let (rd, wr) = futures_lite::io::split(stream);
        let inner = Rc::new(Inner {
            addr,
            writer: RefCell::new(Some(wr)),
            write_lock: Semaphore::new(1),
            depth: Semaphore::new(depth as u64),
            slots: RefCell::new((0..depth).map(|_| Slot { gen: 0, state: State::Free }).collect()),
            free: RefCell::new((0..depth as u16).rev().collect()),
            broken: RefCell::new(None),
            inflight: Cell::new(0),
            peak: Cell::new(0),
            timeout,
        });
        let reader = glommio::spawn_local(read_loop(inner.clone(), rd));
        Ok(Connection { inner, _reader: reader })
    }

    pub fn addr(&self) -> &Gateway {
        &self.inner.addr
    }

    /// Requests in flight right now.
    pub fn inflight(&self) -> usize {
        self.inner.inflight.get()
    }

    /// The most requests that were in flight at once.
    pub fn peak_inflight(&self) -> usize {
        self.inner.peak.get()
    }

    /// Send one request (its `id` is assigned here) with `payload` when it carries the
    /// WRITE flag, and wait for its response. The server's result code is not interpreted.
    pub async fn call(&self, mut hdr: ReqHeader, payload: &[u8]) -> Result<Response, Error> {
        let inner = &self.inner;
        inner.check()?;
        if hdr.has_payload() && payload.len() != hdr.data_length as usize {
            return Err(Error::Invalid(format!(
                "payload of {} bytes for a header announcing {}",
                payload.len(),
                hdr.data_length
            )));
        }
        let _permit = inner.depth.acquire_permit(1).await.map_err(|_| inner.broken_error())?;
        inner.check()?;
        let slot = SlotGuard::take(inner, response_bound(&hdr))?;
        hdr.id = slot.id;

        {
            let _w = inner.write_lock.acquire_permit(1).await.map_err(|_| inner.broken_error())?;
            inner.check()?;
            let mut wr = inner.writer.borrow_mut().take().ok_or_else(|| inner.broken_error())?;
            let sent = async {
                wr.write_all(&hdr.encode()).await?;
                if hdr.has_payload() {
                    wr.write_all(payload).await?;
                }
                wr.flush().await
            }
            .await;
            match sent {
                Ok(()) => *inner.writer.borrow_mut() = Some(wr),
                Err(e) => {
                    inner.fail_all(Broken::Io(e.kind(), e.to_string()));
                    return Err(Error::Io { addr: inner.addr.clone(), source: e });
                }
            }
        }

        let wait = poll_fn(|cx| slot.poll(cx.waker()));
        if inner.timeout.is_zero() {
            return wait.await;
        }
        match glommio::timer::timeout(inner.timeout, async { Ok(wait.await) }).await {
            Ok(r) => r,
            Err(_) => {
                let op = crate::proto::Opcode::try_from(hdr.opcode)
                    .map(|o| o.name())
                    .unwrap_or("request");
                let ms = inner.timeout.as_millis() as u64;
                inner.fail_all(Broken::Io(io::ErrorKind::TimedOut, format!("{op} timed out")));
                Err(Error::Timeout { addr: inner.addr.clone(), op, ms })
            }
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.inner.fail_all(Broken::Io(
            io::ErrorKind::NotConnected,
            "connection closed by client".into(),
        ));
    }
}

/// Owns one slot for the life of a `call`; frees or abandons it on drop.
struct SlotGuard<'a> {
    inner: &'a Inner,
    idx: usize,
    id: u32,
}

impl<'a> SlotGuard<'a> {
    fn take(inner: &'a Inner, bound: u32) -> Result<SlotGuard<'a>, Error> {
        let idx = inner
            .free
            .borrow_mut()
            .pop()
            .ok_or_else(|| Error::Invalid("no free request slot".into()))?
            as usize;
        let mut slots = inner.slots.borrow_mut();
        let s = &mut slots[idx];
        s.gen = s.gen.wrapping_add(1);
        s.state = State::Waiting { bound, waker: None };
        inner.inflight.set(inner.inflight.get() + 1);
        inner.peak.set(inner.peak.get().max(inner.inflight.get()));
        Ok(SlotGuard { inner, idx, id: wire_id(idx as u16, s.gen) })
    }

    fn poll(&self, waker: &Waker) -> Poll<Result<Response, Error>> {
        let mut slots = self.inner.slots.borrow_mut();
        let s = &mut slots[self.idx];
        match &mut s.state {
            State::Done(_) => {
                match std::mem::replace(&mut s.state, State::Abandoned { bound: 0 }) {
                    State::Done(r) => Poll::Ready(r),
                    _ => unreachable!("state was just matched as Done"),
                }
            }
            State::Waiting { waker: w, .. } => {
                *w = Some(waker.clone());
                Poll::Pending
            }
            State::Abandoned { .. } | State::Free => Poll::Ready(Err(self.inner.broken_error())),
        }
    }
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        let mut slots = self.inner.slots.borrow_mut();
        let s = &mut slots[self.idx];
        match s.state {
            State::Waiting { bound, .. } if self.inner.broken.borrow().is_none() => {
                s.state = State::Abandoned { bound }
            }
            _ => {
                s.state = State::Free;
                self.inner.free.borrow_mut().push(self.idx as u16);
            }
        }
        self.inner.inflight.set(self.inner.inflight.get().saturating_sub(1));
    }
}

impl Inner {
    /// What `proto::demux` needs to judge a response to slot `idx`.
    fn in_flight(&self, idx: usize) -> Option<InFlight> {
        match self.slots.borrow().get(idx) {
            Some(Slot {
                gen,
                state: State::Waiting { bound, .. } | State::Abandoned { bound },
            }) => Some(InFlight { gen: *gen, bound: *bound }),
            _ => None,
        }
    }

    /// The response to slot `idx` is complete: wake its caller, or free an abandoned slot.
    fn complete(&self, idx: usize, rsp: RspHeader, data: Vec<u8>) {
        let waker = {
            let mut slots = self.slots.borrow_mut();
            let s = &mut slots[idx];
            match std::mem::replace(&mut s.state, State::Free) {
                State::Waiting { waker, .. } => {
                    s.state = State::Done(Ok((rsp, data)));
                    waker
                }
                // Abandoned: the caller is gone; the slot is free again.
                _ => {
                    self.free.borrow_mut().push(idx as u16);
                    None
                }
            }
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    fn check(&self) -> Result<(), Error> {
        match self.broken.borrow().is_some() {
            true => Err(self.broken_error()),
            false => Ok(()),
        }
    }

    fn broken_error(&self) -> Error {
        match self.broken.borrow().clone() {
            None | Some(Broken::Eof) => Error::Closed(self.addr.clone()),
            Some(Broken::Io(kind, msg)) => {
                Error::Io { addr: self.addr.clone(), source: io::Error::new(kind, msg) }
            }
            Some(Broken::Stream(source)) => Error::Stream { addr: self.addr.clone(), source },
        }
    }

    /// Mark the connection broken and fail everything in flight.
    fn fail_all(&self, why: Broken) {
        {
            let mut b = self.broken.borrow_mut();
            if b.is_none() {
                *b = Some(why);
            }
        }
        self.writer.borrow_mut().take();
        let mut wake = Vec::new();
        {
            let mut slots = self.slots.borrow_mut();
            for (i, s) in slots.iter_mut().enumerate() {
                match std::mem::replace(&mut s.state, State::Free) {
                    State::Waiting { waker, .. } => {
                        s.state = State::Done(Err(self.broken_error()));
                        wake.extend(waker);
                    }
                    State::Abandoned { .. } => self.free.borrow_mut().push(i as u16),
                    other => s.state = other,
                }
            }
        }
        self.write_lock.close();
        self.depth.close();
        wake.into_iter().for_each(Waker::wake);
    }
}

/// Bytes the reader takes from the socket at once.
const RECV_BUF: usize = 64 << 10;

/// Read responses and hand each to its slot; the framing and every check are
/// `proto::demux`'s, the same code the shards' connections use.
async fn read_loop(inner: Rc<Inner>, mut rd: ReadHalf<Socket>) {
    let mut buf = vec![0u8; RECV_BUF];
    let (mut start, mut end) = (0usize, 0usize);
    let mut demux = Demux::new();
    let mut payload: Vec<u8> = Vec::new();
    loop {
        loop {
            let (used, ev) = demux.feed(&buf[start..end], |idx| inner.in_flight(idx));
            start += used;
            match ev {
                Event::NeedMore => break,
                Event::Payload { data, .. } => payload.extend_from_slice(data),
                Event::Complete { slot, rsp } => {
                    inner.complete(slot, rsp, std::mem::take(&mut payload))
                }
                Event::Break(source) => {
                    tracing::warn!(
                        "{}; closing the connection",
                        Error::Stream { addr: inner.addr.clone(), source }
                    );
                    inner.fail_all(Broken::Stream(source));
                    return;
                }
            }
        }
        if start == end {
            (start, end) = (0, 0);
        } else if end == buf.len() {
            buf.copy_within(start..end, 0);
            (start, end) = (0, end - start);
        }
        match rd.read(&mut buf[end..]).await {
            Ok(0) => {
                inner.fail_all(Broken::Eof);
                return;
            }
            Ok(n) => end += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                inner.fail_all(Broken::Io(e.kind(), e.to_string()));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;

    use super::*;
    use crate::proto::{Opcode, VdiArgs, HEADER_LEN, SD_RES_SUCCESS};

    /// A one-connection server that answers each request with `answer(request)`.
    fn fake_sheep(
        answer: fn(ReqHeader) -> Vec<u8>,
        requests: usize,
    ) -> (Gateway, std::thread::JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().expect("accept");
            for _ in 0..requests {
                let mut h = [0u8; HEADER_LEN];
                if s.read_exact(&mut h).is_err() {
                    return;
                }
                let _ = s.write_all(&answer(ReqHeader::decode(&h)));
            }
        });
        (Gateway::Tcp(addr), t)
    }

    fn ask(addr: &Gateway) -> Result<Response, Error> {
        crate::runtime::block_on(async {
            let c = Connection::connect(addr, Duration::from_secs(1), Duration::from_secs(5), 4)
                .await?;
            c.call(ReqHeader::vdi(Opcode::GetClusterDefault, 0, 0, VdiArgs::default()), &[]).await
        })
        .expect("executor")
    }

    #[test]
    fn answers_are_matched_by_id_and_a_stray_id_breaks_the_connection() {
        let (addr, t) =
            fake_sheep(|req| RspHeader::reply_to(&req, SD_RES_SUCCESS).encode().to_vec(), 1);
        let (rsp, data) = ask(&addr).expect("answered");
        assert!(rsp.result.is_success() && data.is_empty());
        t.join().expect("server");

        let (addr, t) = fake_sheep(
            |req| {
                RspHeader { id: req.id ^ 0x1_0000, ..RspHeader::reply_to(&req, SD_RES_SUCCESS) }
                    .encode()
                    .to_vec()
            },
            1,
        );
        let e = ask(&addr).expect_err("a stale generation is not our answer");
        assert!(matches!(e, Error::Stream { .. }) && e.should_reconnect(), "{e}");
        t.join().expect("server");

        // Payload on an answer whose request takes none: oversize, before it is read.
        let (addr, t) = fake_sheep(
            |req| {
                RspHeader { data_length: 8, ..RspHeader::reply_to(&req, SD_RES_SUCCESS) }
                    .encode()
                    .to_vec()
            },
            1,
        );
        let e = ask(&addr).expect_err("oversize");
        assert!(
            matches!(e, Error::Stream { source: crate::proto::demux::Broken::Oversize { .. }, .. }),
            "{e}"
        );
        t.join().expect("server");
    }
}
