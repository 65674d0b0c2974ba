//! Network side of the embedded store: listeners, one reader thread per connection, a
//! fixed pool of worker threads, and an orderly shutdown.
//!
//! Contract:
//! - One acceptor thread per listen address. Each connection gets TCP_NODELAY, a write
//!   timeout, and a reader thread that reads a header, then `data_length` payload bytes
//!   only when `SD_FLAG_CMD_WRITE` is set (bounded by [`MAX_PAYLOAD`] *before* anything
//!   is allocated; a larger one closes the connection with a warning). EOF or a partial
//!   header or payload closes the connection quietly. The reader takes the socket's bytes
//!   through a 256 KiB buffer (a pipelining client's queued requests in one syscall) and
//!   payloads into buffers of the store's [`Pool`] (`answers.rs`).
//! - Every request, READ_OBJ included, goes through one bounded queue to `workers`
//!   threads, so the requests of one connection run concurrently and their responses go
//!   out in completion order, like sheep's. A worker runs the request (`ops.rs`) into an
//!   [`Answer`] built in a pooled buffer (object data is `pread` into it) and writes the
//!   whole response, header and payload, with one `write_all` under the connection's
//!   write lock; a failed write closes the connection.
//! - Opt-in, for benchmarks only ([`Config::fast_reads`](super::Config::fast_reads), off
//!   by default and in the conformance suite): the reader runs READ_OBJ itself while no
//!   slow disk is simulated, gathering the answers of consecutive reads in one buffer
//!   while more requests are already buffered, and sends them in one write before it could
//!   block (a socket read, the worker queue) or once 256 KiB gathered. What it saves (a
//!   hand-off per read, a write per answer) is measured in tuning/README.md.
//! - [`Store::shutdown`] stops accepting, shuts every connection down, lets the workers
//!   finish what they hold and joins every thread. It does not wait for idle clients.
//!   Dropping a `Store` does the same. [`Store::restart`] is a shutdown and a start on the
//!   same directory and bound addresses.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::answers::{Answer, Pool};
use super::fault::Faults;
use super::meta::Meta;
use super::objects::Objects;
use super::ops::Handler;
use super::{describe, Config, Error, MAX_PAYLOAD};
use crate::net::Stream;
use crate::proto::{Opcode, ReqHeader, RspHeader, HEADER_LEN, SD_RES_SYSTEM_ERROR};

/// A client that does not read its responses for this long is disconnected.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long shutdown waits for the connection that wakes a blocked acceptor.
const WAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause after a failed accept (e.g. out of file descriptors) before the next one.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// Queued requests per worker before readers block (and TCP pushes back on clients).
const QUEUE_PER_WORKER: usize = 4;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One client connection, shared by its reader and the workers answering it.
struct Conn {
    stream: Stream,
    /// Who it is, for the log.
    peer: String,
    write_lock: Mutex<()>,
}

impl Conn {
    /// Write whole responses (one, or on the fast path several) under the write lock; a
    /// failed write closes the connection and answers false.
    fn send(&self, bytes: &[u8]) -> bool {
        if bytes.is_empty() {
            return true;
        }
        let res = {
            let _g = lock(&self.write_lock);
            (&self.stream).write_all(bytes)
        };
        if let Err(e) = res {
            tracing::debug!(
                "cannot answer {}: {}; closing the connection",
                self.peer,
                describe(&e)
            );
            self.close();
            return false;
        }
        true
    }

    fn close(&self) {
        let _ = self.stream.shutdown();
    }
}

struct Job {
    conn: Arc<Conn>,
    req: ReqHeader,
    /// The payload is `payload[..len]` (a pooled buffer may be longer: see [`Pool`]).
    payload: Vec<u8>,
    len: usize,
}

/// State shared by every thread of one store.
struct Shared {
    handler: Handler,
    stop: AtomicBool,
    /// The queue's sender; `None` once shutdown began, so only readers hold senders.
    jobs: Mutex<Option<SyncSender<Job>>>,
    conns: Mutex<Vec<(Arc<Conn>, JoinHandle<()>)>>,
    /// Requests read and not yet answered, over all connections, and the most seen.
    inflight: AtomicUsize,
    peak_inflight: AtomicUsize,
    /// Requests read, over all connections, since the start.
    requests: AtomicU64,
    /// Buffers for request payloads and answers, reused.
    pool: Pool,
    /// The reader answers READ_OBJ itself ([`Config::fast_reads`]).
    fast_reads: bool,
}

/// A running store; see the module docs of `store` for what it serves.
pub struct Store {
    addrs: Vec<SocketAddr>,
    shared: Arc<Shared>,
    acceptors: Vec<(SocketAddr, JoinHandle<()>)>,
    /// The unix socket `DIR/sock` and its acceptor, when it could be bound.
    unix: Option<(PathBuf, JoinHandle<()>)>,
    workers: Vec<JoinHandle<()>>,
    stopped: bool,
    /// What it was started with, the listen addresses replaced by the bound ones.
    cfg: Config,
}

fn thread_error(io: std::io::Error) -> Error {
    Error::Thread { reason: describe(&io), io }
}

impl Store {
    /// Load the store in `cfg.dir`, bind every listen address and start serving. Returns
    /// once every address accepts connections.
    pub fn start(cfg: Config) -> Result<Store, Error> {
        if cfg.listen.is_empty() {
            return Err(Error::NoListen);
        }
        if cfg.workers == 0 {
            return Err(Error::Config("workers must be at least 1"));
        }
        if !(1..=31).contains(&cfg.copies) {
            return Err(Error::Config("copies must be between 1 and 31"));
        }
        let mut listeners = Vec::with_capacity(cfg.listen.len());
        for &addr in &cfg.listen {
            let listen_err = |io: std::io::Error| Error::Listen { addr, reason: describe(&io), io };
            let l = TcpListener::bind(addr).map_err(listen_err)?;
            let local = l.local_addr().map_err(listen_err)?;
            listeners.push((local, l));
        }
        // Bound first: a store that cannot listen leaves the directory alone.
        let objs = Objects::open(&cfg.dir, cfg.sync, open_files_budget())
            .map_err(|(path, e)| Error::dir(path, e))?;
        let meta = Meta::load(&objs)?;
        let nr_inodes = meta.nr_inodes();
        let (tx, rx) = mpsc::sync_channel(cfg.workers.saturating_mul(QUEUE_PER_WORKER));
        let shared = Arc::new(Shared {
            handler: Handler::new(
                meta,
                objs,
                cfg.locking,
                cfg.copies,
                Faults::new(cfg.object_delay),
            ),
            stop: AtomicBool::new(false),
            jobs: Mutex::new(Some(tx)),
            conns: Mutex::new(Vec::new()),
            inflight: AtomicUsize::new(0),
            peak_inflight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            pool: Pool::default(),
            fast_reads: cfg.fast_reads,
        });
        let addrs: Vec<SocketAddr> = listeners.iter().map(|(a, _)| *a).collect();
        let cfg = Config { listen: addrs.clone(), ..cfg };
        let mut store = Store {
            addrs,
            shared,
            acceptors: Vec::new(),
            unix: None,
            workers: Vec::new(),
            stopped: false,
            cfg,
        };
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..store.cfg.workers {
            let (sh, rx) = (Arc::clone(&store.shared), Arc::clone(&rx));
            let h = thread::Builder::new()
                .name(format!("store-worker-{i}"))
                .spawn(move || work(&sh, &rx));
            store.workers.push(h.map_err(thread_error)?);
        }
        for (addr, l) in listeners {
            let sh = Arc::clone(&store.shared);
            let h = thread::Builder::new()
                .name(format!("store-accept-{addr}"))
                .spawn(move || accept(&sh, &l, addr));
            store.acceptors.push((addr, h.map_err(thread_error)?));
        }
        // Like sheep: clients on this host may also come through `DIR/sock`.
        let sock = store.cfg.dir.join("sock");
        let _ = std::fs::remove_file(&sock);
        match UnixListener::bind(&sock) {
            Ok(l) => {
                let (sh, path) = (Arc::clone(&store.shared), sock.clone());
                let h = thread::Builder::new()
                    .name("store-accept-unix".into())
                    .spawn(move || accept_unix(&sh, &l, &path));
                store.unix = Some((sock, h.map_err(thread_error)?));
            }
            Err(e) => tracing::warn!(
                "cannot listen on {}: {}; clients come over TCP only",
                sock.display(),
                describe(&e)
            ),
        }
        tracing::info!(
            "store serving {} ({} inodes, locking {}, sync {}) on {:?}",
            store.cfg.dir.display(),
            nr_inodes,
            if store.cfg.locking { "on" } else { "off" },
            if store.cfg.sync { "on" } else { "off" },
            store.addrs
        );
        Ok(store)
    }

    /// The bound addresses, in the order of `Config::listen` (real ports when 0 was given).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The unix socket it also serves clients on (`DIR/sock`), when that could be bound.
    pub fn unix_socket(&self) -> Option<&Path> {
        self.unix.as_ref().map(|(p, _)| p.as_path())
    }

    /// The most requests that were read and not yet answered at one moment, over all
    /// connections, since the start (what a benchmark's queue depth really reached).
    pub fn peak_inflight(&self) -> usize {
        self.shared.peak_inflight.load(Ordering::Relaxed)
    }

    /// Requests read so far, over all connections (a test counts how many sheep requests
    /// a workload took).
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// The fault controls of this running store (see `fault.rs`).
    pub fn faults(&self) -> Faults {
        self.shared.handler.faults().clone()
    }

    /// The configuration it runs with, its listen addresses being the bound ones: what
    /// [`Store::start`] needs to bring the same store back on the same addresses.
    pub fn config(&self) -> Config {
        self.cfg.clone()
    }

    /// Shut down, then start again on the same directory and addresses (a store-side fault
    /// for tests: every connection ends, in-memory state such as locks is lost). The
    /// listeners rebind at once: std sets SO_REUSEADDR, so the connections this store
    /// closed, left in TIME_WAIT, do not hold the port.
    pub fn restart(self) -> Result<Store, Error> {
        let cfg = self.config();
        self.shutdown();
        Store::start(cfg)
    }

    /// Stop accepting, close every connection and join every thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    /// Serve until the acceptors end (for the CLI, that is until the process is killed;
    /// with `sync` on, every acknowledged write is on disk by then), then shut down.
    pub fn wait(mut self) {
        for (_, h) in self.acceptors.drain(..) {
            let _ = h.join();
        }
        if let Some((_, h)) = self.unix.take() {
            let _ = h.join();
        }
        self.stop();
    }

    fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        self.shared.stop.store(true, Ordering::SeqCst);
        // Readers get senders from here only; from now on, readers hold the last ones.
        lock(&self.shared.jobs).take();
        for (addr, h) in self.acceptors.drain(..) {
            if h.is_finished() || TcpStream::connect_timeout(&wake_addr(addr), WAKE_TIMEOUT).is_ok()
            {
                let _ = h.join();
            } else {
                tracing::warn!("cannot wake the acceptor on {addr}; leaving it behind");
            }
        }
        if let Some((path, h)) = self.unix.take() {
            if h.is_finished() || UnixStream::connect(&path).is_ok() {
                let _ = h.join();
            } else {
                tracing::warn!("cannot wake the acceptor on {}; leaving it behind", path.display());
            }
            let _ = std::fs::remove_file(&path);
        }
        let conns = std::mem::take(&mut *lock(&self.shared.conns));
        for (c, _) in &conns {
            c.close();
        }
        for (_, h) in conns {
            let _ = h.join();
        }
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
        tracing::info!("store on {:?} stopped", self.addrs);
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How many object files the store keeps open: half of the file descriptors it may have,
/// after raising its soft limit to the hard one (as sheep does), the other half being for
/// connections and creates.
fn open_files_budget() -> usize {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one `rlimit` we own; setrlimit only reads one.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 256;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit { rlim_cur: lim.rlim_max.min(1 << 20), rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim.rlim_cur = want.rlim_cur;
            }
        }
    }
    usize::try_from(lim.rlim_cur / 2).unwrap_or(usize::MAX).clamp(16, 16 << 10)
}

/// Where to connect to reach a listener bound to `a` (a wildcard means loopback).
fn wake_addr(mut a: SocketAddr) -> SocketAddr {
    if a.ip().is_unspecified() {
        match a {
            SocketAddr::V4(_) => a.set_ip(Ipv4Addr::LOCALHOST.into()),
            SocketAddr::V6(_) => a.set_ip(Ipv6Addr::LOCALHOST.into()),
        }
    }
    a
}

fn accept(sh: &Arc<Shared>, l: &TcpListener, addr: SocketAddr) {
    for conn in l.incoming() {
        if sh.stop.load(Ordering::SeqCst) {
            break;
        }
        match conn {
            Ok(s) => {
                let Ok(peer) = s.peer_addr() else { continue };
                if let Err(e) = s.set_nodelay(true) {
                    tracing::warn!("cannot set up the connection from {peer}: {}", describe(&e));
                    continue;
                }
                serve(sh, Stream::Tcp(s), peer.to_string());
            }
            Err(e) => {
                tracing::warn!("accept on {addr} failed: {}", describe(&e));
                thread::sleep(ACCEPT_BACKOFF);
            }
        }
    }
}

fn accept_unix(sh: &Arc<Shared>, l: &UnixListener, path: &Path) {
    for conn in l.incoming() {
        if sh.stop.load(Ordering::SeqCst) {
            break;
        }
        match conn {
            Ok(s) => serve(sh, Stream::Unix(s), format!("unix:{}", path.display())),
            Err(e) => {
                tracing::warn!("accept on {} failed: {}", path.display(), describe(&e));
                thread::sleep(ACCEPT_BACKOFF);
            }
        }
    }
}

fn serve(sh: &Arc<Shared>, stream: Stream, peer: String) {
    let Some(tx) = lock(&sh.jobs).clone() else { return };
    if let Err(e) = stream.set_write_timeout(Some(WRITE_TIMEOUT)) {
        tracing::warn!("cannot set up the connection from {peer}: {}", describe(&e));
        return;
    }
    let conn = Arc::new(Conn { stream, peer, write_lock: Mutex::new(()) });
    let (c, counters) = (Arc::clone(&conn), Arc::clone(sh));
    match thread::Builder::new()
        .name("store-conn".into())
        .spawn(move || read_requests(&c, &tx, &counters))
    {
        Ok(h) => {
            let mut conns = lock(&sh.conns);
            conns.retain(|(_, other)| !other.is_finished());
            tracing::debug!("connection from {}", conn.peer);
            conns.push((conn, h));
        }
        Err(e) => {
            tracing::warn!("cannot serve {}: no thread: {}", conn.peer, describe(&e));
            conn.close();
        }
    }
}

/// Bytes a connection's reader takes from the socket at once: a pipelining client's queued
/// requests are read with one syscall, not one or two per request.
const READ_BUF: usize = 256 << 10;
/// Fast path: bytes of gathered READ_OBJ answers that are sent without waiting for more.
const OUT_FLUSH: usize = 256 << 10;
/// Fast path: an answer buffer that grew past this (a huge read) is given up after its send.
const OUT_KEEP: usize = 4 << 20;

/// The connection's reader (module contract): every request to the workers, or on the
/// fast path READ_OBJ run here, its answer gathered in `out` and sent before anything that
/// may block (a socket read, the worker queue) and whenever `out` holds [`OUT_FLUSH`].
fn read_requests(conn: &Arc<Conn>, tx: &SyncSender<Job>, sh: &Shared) {
    let mut head = [0u8; HEADER_LEN];
    let mut rd = std::io::BufReader::with_capacity(READ_BUF, &conn.stream);
    // Fast path only (empty otherwise): answers not sent yet, and how many requests.
    let mut out = Answer::default();
    let mut gathered = 0usize;
    let flush = |out: &mut Answer, gathered: &mut usize| {
        if *gathered == 0 {
            return true;
        }
        let ok = conn.send(out.bytes());
        out.clear(OUT_KEEP);
        sh.inflight.fetch_sub(std::mem::take(gathered), Ordering::Relaxed);
        ok
    };
    loop {
        if rd.buffer().len() < HEADER_LEN && !flush(&mut out, &mut gathered) {
            break;
        }
        if let Err(e) = rd.read_exact(&mut head) {
            tracing::debug!("connection from {} ends: {}", conn.peer, describe(&e));
            break;
        }
        let req = ReqHeader::decode(&head);
        let mut payload = Vec::new();
        let mut len = 0;
        if req.has_payload() {
            if req.data_length > MAX_PAYLOAD {
                tracing::warn!(
                    "closing the connection from {}: request {} (opcode 0x{:02x}) announces a payload of {} bytes, more than {}",
                    conn.peer,
                    req.id,
                    req.opcode,
                    req.data_length,
                    MAX_PAYLOAD
                );
                break;
            }
            if rd.buffer().len() < req.data_length as usize && !flush(&mut out, &mut gathered) {
                break;
            }
            len = req.data_length as usize;
            payload = sh.pool.take(len);
            if let Err(e) = rd.read_exact(&mut payload[..len]) {
                tracing::debug!(
                    "connection from {} ends inside a payload: {}",
                    conn.peer,
                    describe(&e)
                );
                break;
            }
        }
        sh.requests.fetch_add(1, Ordering::Relaxed);
        let now = sh.inflight.fetch_add(1, Ordering::Relaxed) + 1;
        sh.peak_inflight.fetch_max(now, Ordering::Relaxed);
        if sh.fast_reads
            && req.opcode == Opcode::ReadObj as u8
            && sh.handler.faults().object_delay().is_zero()
        {
            respond(sh, &req, &[], &mut out, &conn.peer);
            gathered += 1;
            if out.len() >= OUT_FLUSH && !flush(&mut out, &mut gathered) {
                break;
            }
            continue;
        }
        if !flush(&mut out, &mut gathered) {
            break;
        }
        if tx.send(Job { conn: Arc::clone(conn), req, payload, len }).is_err() {
            sh.inflight.fetch_sub(1, Ordering::Relaxed);
            break;
        }
    }
    flush(&mut out, &mut gathered);
    conn.close();
}

/// A worker: run a request into an answer in a pooled buffer, send it in one write.
fn work(sh: &Shared, rx: &Mutex<Receiver<Job>>) {
    loop {
        let job = lock(rx).recv();
        let Ok(Job { conn, req, payload, len }) = job else { break };
        let mut out = Answer::from_buf(sh.pool.take(0));
        respond(sh, &req, &payload[..len], &mut out, &conn.peer);
        sh.pool.give(payload);
        conn.send(out.bytes());
        sh.pool.give(out.into_buf());
        sh.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Handle one request and append its response to `out` (a system error if it panicked).
fn respond(sh: &Shared, req: &ReqHeader, payload: &[u8], out: &mut Answer, peer: &str) {
    let start = out.mark();
    if catch_unwind(AssertUnwindSafe(|| sh.handler.handle(req, payload, out))).is_err() {
        let op = Opcode::try_from(req.opcode).map_or("unknown", Opcode::name);
        tracing::error!("request {} ({op}) from {peer} panicked; answering system error", req.id);
        out.truncate(start);
        let mut rsp = RspHeader::reply_to(req, SD_RES_SYSTEM_ERROR);
        rsp.data_length = 0;
        out.push(&rsp.encode());
    }
}
