//! The proxy's threads: one acceptor, and one relay per connection pair (see the contract
//! in `mod.rs`).

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::{lock, Cut, CutPoint, Fault, Faults, Framer, Handle};

/// How often a relay looks at the fault settings while idle or stalled.
const TICK: Duration = Duration::from_millis(10);
/// Bytes buffered per direction.
const BUF: usize = 256 << 10;
/// How long opening the target connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a cut waits for the forwarded part to reach the client before ending.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// A running fault proxy; see the module contract in `mod.rs`.
pub struct Proxy {
    addr: SocketAddr,
    handle: Handle,
    acceptor: Option<JoinHandle<()>>,
    relays: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl Proxy {
    /// Bind `listen` (port 0 picks one; see [`Proxy::addr`]) and relay every client to
    /// `target`.
    pub fn start(listen: SocketAddr, target: SocketAddr) -> io::Result<Proxy> {
        let l = TcpListener::bind(listen)?;
        let addr = l.local_addr()?;
        let handle = Handle { faults: Arc::new(Faults::new()) };
        let relays: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (f, r) = (Arc::clone(&handle.faults), Arc::clone(&relays));
        let acceptor = thread::Builder::new()
            .name("fault-accept".into())
            .spawn(move || accept(&l, target, &f, &r))?;
        Ok(Proxy { addr, handle, acceptor: Some(acceptor), relays })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The fault controls.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.handle.faults.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.acceptor.take() {
            let mut wake = self.addr;
            if wake.ip().is_unspecified() {
                wake.set_ip(if wake.is_ipv4() {
                    Ipv4Addr::LOCALHOST.into()
                } else {
                    Ipv6Addr::LOCALHOST.into()
                });
            }
            if h.is_finished() || TcpStream::connect_timeout(&wake, CONNECT_TIMEOUT).is_ok() {
                let _ = h.join();
            }
        }
        for h in std::mem::take(&mut *lock(&self.relays)) {
            let _ = h.join();
        }
    }
}

fn accept(
    l: &TcpListener,
    target: SocketAddr,
    f: &Arc<Faults>,
    relays: &Mutex<Vec<JoinHandle<()>>>,
) {
    let next = AtomicU64::new(0);
    for client in l.incoming() {
        if f.stop.load(Ordering::SeqCst) {
            break;
        }
        let client = match client {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("fault proxy: accept failed: {e}");
                thread::sleep(TICK);
                continue;
            }
        };
        let Ok(peer) = client.peer_addr() else { continue };
        if !f.accepting.load(Ordering::SeqCst) {
            let _ = client.shutdown(Shutdown::Both);
            f.record(Fault::Refused { peer });
            continue;
        }
        let server = match TcpStream::connect_timeout(&target, CONNECT_TIMEOUT) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!("fault proxy: cannot reach {target} for {peer}: {e}");
                let _ = client.shutdown(Shutdown::Both);
                continue;
            }
        };
        let id = next.fetch_add(1, Ordering::Relaxed);
        let gen = f.generation.load(Ordering::SeqCst);
        f.live.fetch_add(1, Ordering::SeqCst);
        let f2 = Arc::clone(f);
        match thread::Builder::new().name(format!("fault-relay-{id}")).spawn(move || {
            relay(&f2, id, gen, client, server);
            f2.live.fetch_sub(1, Ordering::SeqCst);
        }) {
            Ok(h) => {
                let mut r = lock(relays);
                r.retain(|h| !h.is_finished());
                r.push(h);
            }
            Err(e) => {
                f.live.fetch_sub(1, Ordering::SeqCst);
                tracing::warn!("fault proxy: no thread for {peer}: {e}");
            }
        }
    }
}

/// Bytes read from one side and not yet written to the other.
struct Pipe {
    buf: Box<[u8]>,
    lo: usize,
    hi: usize,
}

impl Pipe {
    fn new() -> Pipe {
        Pipe { buf: vec![0u8; BUF].into_boxed_slice(), lo: 0, hi: 0 }
    }

    fn is_empty(&self) -> bool {
        self.lo == self.hi
    }

    /// Read what `from` has (only when empty). `Ok(0)`: EOF; `WouldBlock`: nothing yet.
    fn fill(&mut self, mut from: &TcpStream) -> io::Result<usize> {
        let n = from.read(&mut self.buf)?;
        (self.lo, self.hi) = (0, n);
        Ok(n)
    }

    /// Write as much as `to` takes now.
    fn drain(&mut self, mut to: &TcpStream) -> io::Result<()> {
        while self.lo < self.hi {
            match to.write(&self.buf[self.lo..self.hi]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.lo += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

fn would_block(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted)
}

/// Relay one pair until either side ends, a drop, a cut or the proxy stops.
fn relay(f: &Faults, id: u64, gen: u64, client: TcpStream, server: TcpStream) {
    let setup = client
        .set_nodelay(true)
        .and(server.set_nodelay(true))
        .and(client.set_nonblocking(true))
        .and(server.set_nonblocking(true));
    if let Err(e) = setup {
        tracing::warn!("fault proxy: cannot set up connection {id}: {e}");
        return close(&client, &server);
    }
    let (mut up, mut down) = (Pipe::new(), Pipe::new());
    let mut framer = Framer::default();
    let mut cut: Option<(Cut, CutPoint)> = None;
    loop {
        if f.stop.load(Ordering::SeqCst) || f.generation.load(Ordering::SeqCst) != gen {
            return close(&client, &server);
        }
        if let Some(left) = f.stalled_for() {
            thread::sleep(left.min(TICK));
            continue;
        }
        if let Some((how, cp)) = cut {
            if down.is_empty() {
                return end_with_cut(f, id, how, cp, client, server);
            }
        }
        let ev = |read: bool, write: bool| {
            (if read { libc::POLLIN } else { 0 }) | (if write { libc::POLLOUT } else { 0 })
        };
        let mut fds = [
            libc::pollfd {
                fd: client.as_raw_fd(),
                events: ev(up.is_empty(), !down.is_empty()),
                revents: 0,
            },
            libc::pollfd {
                fd: server.as_raw_fd(),
                events: ev(down.is_empty() && cut.is_none(), !up.is_empty()),
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, TICK.as_millis() as libc::c_int) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            tracing::warn!("fault proxy: poll failed on connection {id}: {e}");
            return close(&client, &server);
        }
        let bad = libc::POLLERR | libc::POLLHUP | libc::POLLNVAL;
        if (fds[0].revents | fds[1].revents) & bad != 0
            && fds[0].revents & libc::POLLIN == 0
            && fds[1].revents & libc::POLLIN == 0
        {
            return close(&client, &server);
        }
        let mut moved = false;
        if up.is_empty() && fds[0].revents & libc::POLLIN != 0 {
            match up.fill(&client) {
                Ok(0) => return close(&client, &server),
                Ok(_) => moved = true,
                Err(e) if would_block(&e) => {}
                Err(_) => return close(&client, &server),
            }
        }
        if down.is_empty() && cut.is_none() && fds[1].revents & libc::POLLIN != 0 {
            let before = framer.pos();
            match down.fill(&server) {
                Ok(0) => return close(&client, &server),
                Ok(n) => {
                    moved = true;
                    let mut how = None;
                    if let Some(cp) = framer.scan(&down.buf[..n], |len| {
                        how = f.take_cut(len);
                        how.is_some()
                    }) {
                        down.hi = usize::try_from(cp.at - before).unwrap_or(n).min(n);
                        cut = how.map(|h| (h, cp));
                    }
                }
                Err(e) if would_block(&e) => {}
                Err(_) => return close(&client, &server),
            }
        }
        if moved {
            let d = f.delay();
            if !d.is_zero() {
                thread::sleep(d);
            }
        }
        if up.drain(&server).is_err() || down.drain(&client).is_err() {
            return close(&client, &server);
        }
    }
}

fn close(client: &TcpStream, server: &TcpStream) {
    let _ = client.shutdown(Shutdown::Both);
    let _ = server.shutdown(Shutdown::Both);
}

/// Let what was forwarded reach the client, then end the pair as `how` says.
fn end_with_cut(f: &Faults, id: u64, how: Cut, cp: CutPoint, client: TcpStream, server: TcpStream) {
    let t0 = Instant::now();
    while unsent(&client) > 0 && t0.elapsed() < FLUSH_TIMEOUT {
        thread::sleep(Duration::from_millis(1));
    }
    let _ = server.shutdown(Shutdown::Both);
    match how {
        Cut::Reset => {
            let linger = libc::linger { l_onoff: 1, l_linger: 0 };
            // SAFETY: the fd is open (owned by `client`), and `linger` is a valid
            // `struct linger` of the size passed.
            let rc = unsafe {
                libc::setsockopt(
                    client.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&raw const linger).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                tracing::warn!(
                    "fault proxy: SO_LINGER on connection {id}: {}",
                    io::Error::last_os_error()
                );
            }
            // Closing the only descriptor of a socket with a zero linger sends an RST.
            drop(client);
        }
        Cut::Truncate => {
            let _ = client.shutdown(Shutdown::Both);
        }
    }
    f.record(Fault::Cut {
        how,
        connection: id,
        id: cp.id,
        data_length: cp.data_length,
        sent: cp.at - cp.start,
        in_payload: cp.in_payload,
    });
}

/// Bytes the kernel still holds for `s` (not yet sent or not yet acknowledged).
fn unsent(s: &TcpStream) -> i32 {
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int through the pointer, which is valid.
    let rc = unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    if rc == 0 {
        n
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fault::{Event, Which};
    use crate::proto::{ReqHeader, RspHeader, HEADER_LEN, SD_RES_SUCCESS};

    fn local() -> SocketAddr {
        "127.0.0.1:0".parse().expect("addr")
    }

    /// A server that answers every 48-byte request with a response of `len` payload bytes.
    fn server(len: u32) -> SocketAddr {
        let l = TcpListener::bind(local()).expect("bind");
        let a = l.local_addr().expect("addr");
        thread::spawn(move || {
            for s in l.incoming().flatten() {
                thread::spawn(move || {
                    let mut s = s;
                    let mut head = [0u8; HEADER_LEN];
                    while s.read_exact(&mut head).is_ok() {
                        let mut rsp =
                            RspHeader::reply_to(&ReqHeader::decode(&head), SD_RES_SUCCESS);
                        rsp.data_length = len;
                        let mut out = rsp.encode().to_vec();
                        out.extend((0..len).map(|i| i as u8));
                        if s.write_all(&out).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        a
    }

    fn ask(c: &mut TcpStream, id: u32) -> io::Result<Vec<u8>> {
        let req = ReqHeader {
            proto_ver: 2,
            opcode: 2,
            flags: 0,
            epoch: 0,
            id,
            data_length: 0,
            args: [0; 32],
        };
        c.write_all(&req.encode())?;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match c.read(&mut buf) {
                Ok(0) => return Ok(got),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if got.is_empty() => return Err(e),
                Err(e) => {
                    return Err(io::Error::new(e.kind(), format!("after {} bytes: {e}", got.len())))
                }
            }
        }
    }

    fn cut_event(rx: &std::sync::mpsc::Receiver<Event>) -> Fault {
        rx.recv_timeout(Duration::from_secs(10)).expect("a cut within 10 s").fault
    }

    #[test]
    fn relays_then_truncates_a_response_in_its_payload() {
        let p = Proxy::start(local(), server(1000)).expect("proxy");
        let h = p.handle();
        let rx = h.events();
        let mut c = TcpStream::connect(p.addr()).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        // A whole response goes through untouched.
        let req = ReqHeader {
            proto_ver: 2,
            opcode: 2,
            flags: 0,
            epoch: 0,
            id: 7,
            data_length: 0,
            args: [0; 32],
        };
        c.write_all(&req.encode()).expect("send");
        let mut whole = vec![0u8; HEADER_LEN + 1000];
        c.read_exact(&mut whole).expect("a whole response");
        assert_eq!(RspHeader::decode(whole[..HEADER_LEN].try_into().expect("48")).id, 7);
        h.cut_next(Cut::Truncate, Which::WithPayload);
        let got = ask(&mut c, 8).expect("part of a response, then EOF");
        assert_eq!(got.len(), HEADER_LEN + 500);
        assert_eq!(
            cut_event(&rx),
            Fault::Cut {
                how: Cut::Truncate,
                connection: 0,
                id: 8,
                data_length: 1000,
                sent: 548,
                in_payload: true
            }
        );
        assert_eq!(h.injected(), 1);
    }

    #[test]
    fn resets_a_connection_in_a_header() {
        let p = Proxy::start(local(), server(0)).expect("proxy");
        let h = p.handle();
        let rx = h.events();
        let mut c = TcpStream::connect(p.addr()).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        h.cut_next(Cut::Reset, Which::Any);
        let e = ask(&mut c, 1).expect_err("the connection is reset");
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}");
        assert!(matches!(
            cut_event(&rx),
            Fault::Cut { how: Cut::Reset, sent: 24, in_payload: false, .. }
        ));
    }

    #[test]
    fn drops_refuses_and_stalls() {
        let p = Proxy::start(local(), server(10)).expect("proxy");
        let h = p.handle();
        let mut c = TcpStream::connect(p.addr()).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let req = ReqHeader {
            proto_ver: 2,
            opcode: 2,
            flags: 0,
            epoch: 0,
            id: 1,
            data_length: 0,
            args: [0; 32],
        };
        c.write_all(&req.encode()).expect("send");
        let mut r = [0u8; HEADER_LEN + 10];
        c.read_exact(&mut r).expect("answer");
        assert_eq!(h.drop_all(), 1);
        assert_eq!(c.read(&mut r).expect("EOF after a drop"), 0);
        h.set_accepting(false);
        let mut c = TcpStream::connect(p.addr()).expect("accepted, then closed");
        c.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        assert!(c.read(&mut r).map_or(true, |n| n == 0), "a refused client reads nothing");
        h.set_accepting(true);
        let mut c = TcpStream::connect(p.addr()).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        h.stall(Duration::from_millis(300));
        let t0 = Instant::now();
        c.write_all(&req.encode()).expect("send");
        c.read_exact(&mut r).expect("answer after the stall");
        assert!(t0.elapsed() >= Duration::from_millis(250), "answered after {:?}", t0.elapsed());
        assert_eq!(h.injected(), 3);
    }
}
