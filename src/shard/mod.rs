//! The hot path. A shard serves one hardware queue of one device (or, without a kernel, a
//! benchmark or test driver) on its thread's io_uring: in the daemon, a core thread that
//! serves queue q of every device, whose shards share the core's pipelined sheep
//! connections ([`Shard::start_shared`]); elsewhere a thread of its own with its own
//! connections ([`Shard::start`], [`spawn`], [`Remote`]).
//!
//! Contract:
//! - The kernel boundary is [`IoDesc`] `{op, offset, len, tag}` plus the tag's buffer;
//!   ublk, tests and the no-kernel benchmark all enter through [`Shard::handle`] — or, with
//!   zero copy, [`Shard::handle_data`] with the request's own kernel pages ([`Data::Kernel`]),
//!   which every path below carries to the connections unchanged (unallocated objects read
//!   as zeros are copied in by user copy).
//! - READ: per object piece, zeros for unallocated objects, else READ_OBJ of the owner's
//!   object. WRITE: WRITE_OBJ, CREATE or COW CREATE as `vdi::Volume` decides, creates of one
//!   object serialised across every shard of the device, and the request completes only
//!   after one coalesced inode update for the entries it created.
//! - FLUSH completes at once: a write is acknowledged only after sheep acknowledged its data
//!   and its inode update, and sheep's writes are durable when acknowledged (FLUSH_VDI is
//!   obsolete), so every acknowledged write is already stable. FUA needs nothing more.
//! - Live snapshots: a write refused with READONLY (another client snapshotted the VDI)
//!   makes one request of the device look the new working vid up (GET_VDI_INFO by name),
//!   switch the shared `Volume` to it and bring the new inode's entries that differ from
//!   memory in line (an object whose update raced the snapshot into the old inode is
//!   copied, never pointed at: sheep would not count that reference); every refused piece
//!   is then sent again as a COW. The application sees no error.
//! - DISCARD and WRITE_ZEROES zero the inode entries of the whole objects they cover (one
//!   inode write); on the partial objects at their edges WRITE_ZEROES writes zeros and
//!   DISCARD does nothing (discard is a hint; QEMU ignores partial discards the same way).
//! - Coalescing (on unless [`Config::coalesce`] is false): sheep requests are not
//!   merged here but where they wait — in a connection's send queue (`conn`, by the rule
//!   of `coalesce`). A WRITE_OBJ issued while an adjacent WRITE_OBJ of the same object is
//!   still queued rides on it: one sheep request, several payload iovecs, one response
//!   that completes every block request it carries with the same result. This covers
//!   writes of tags issued together by the kernel, writes released together when the create
//!   they waited for is persisted, and the inode entry updates of concurrent requests on
//!   neighbouring objects (adjacent WRITE_OBJs of the inode). Creates (CREATE / COW
//!   CREATE) never merge, so a resent create carries only its own piece; a failed
//!   connection fails each block request, which resends alone.
//!   Within one request, the entries it created still go as one inode write (`persist`).
//!   With several connections, a write that can ride on a queued neighbour is sent on that
//!   neighbour's connection.
//! - No allocation per request; no lock; the `Volume` shared with the other shards of the
//!   device is lock-free.

mod coalesce;
mod conn;
mod error;
pub mod exec;
mod follow;
pub mod mail;
pub mod ring;
mod start;
mod write;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use conn::{RingConn, ZC_SEND_MIN};
pub use error::Error;
pub use start::{spawn, Config, Done, Job, QueueMetrics, Remote, Spawned};

use crate::metrics::{Backend, ShardMetrics};
use crate::proto::*;
use crate::sheep::Gateway;
use crate::vdi::{split, ReadPlan, Volume};

/// Pin the calling (shard) thread to core `n` modulo the cores this process may use.
pub fn pin_thread(n: usize) {
    if let Some(cores) = core_affinity::get_core_ids().filter(|c| !c.is_empty()) {
        core_affinity::set_for_current(cores[n % cores.len()]);
    }
}

pub use crate::block::{Data, Dst, IoDesc, KernelBuf, Op, Src};

/// A thread's pipelined connections to one set of gateways, shared by its shards.
pub type Conns = Rc<[Rc<RingConn>]>;

/// How long a shard's first connect to a gateway may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Add a new connection to `conns` (with `cfg`'s coalescing), or close those made so far
/// and answer the connect error.
fn keep(
    conns: &mut Vec<Rc<RingConn>>,
    c: std::io::Result<Rc<RingConn>>,
    cfg: &Config,
) -> std::io::Result<()> {
    match c {
        Ok(c) => {
            c.set_coalesce(cfg.coalesce);
            conns.push(c);
            Ok(())
        }
        Err(e) => {
            conns.iter().for_each(|c| c.close());
            Err(e)
        }
    }
}

/// How often a request waiting for a connection to come back looks again.
const RETRY_POLL: Duration = Duration::from_millis(10);

/// One shard's state: owned by its thread, except the lock-free `Volume`.
pub struct Shard {
    vol: Arc<Volume>,
    conns: Conns,
    /// Whether the connections are this shard's alone (closed with it) rather than its
    /// thread's, shared with the other devices' shards there ([`Shard::start_shared`]).
    own_conns: bool,
    next: Cell<usize>,
    zeros: Box<[u8]>,
    /// Pre-resolved metric handles (none: metrics off). Borrowed only between awaits.
    metrics: Option<RefCell<ShardMetrics>>,
    closed: Cell<bool>,
    ticking: Cell<bool>,
    io_timeout: Duration,
    abort: Option<Arc<AtomicBool>>,
    /// Merges already counted into the metrics.
    merged_seen: Cell<u64>,
    /// Reconnects already published.
    reconnects_seen: Cell<u64>,
}

/// A sheep request without an answer for this long breaks its connection (which then
/// reconnects, and the request is resent). Sheep answers in milliseconds; a gateway absorbs
/// node failures with stalls of about a second.
const STALL: Duration = Duration::from_secs(5);

/// How often a shard publishes its latency histograms for `sheepdev stats`.
const TICK: Duration = Duration::from_millis(250);

impl Shard {
    /// Connect `cfg.connections` pipelined connections to the first reachable of
    /// `cfg.gateways` (blocking, at shard start) with `cfg.slots` request slots each,
    /// spawning their tasks on `exe`, the executor of this thread's ring. The connections
    /// reconnect by themselves (rotating through the gateways); a block request waits for
    /// them at most `cfg.io_timeout` (zero: forever) before it fails with EIO. The one way a
    /// shard is made (see `start.rs` for threads of their own).
    /// With `cfg.metrics`, the shard records into that device's queue and its ticker task
    /// ([`Shard::tick`]) is spawned on `exe`; `cfg.abort` fails every request at once when
    /// raised (forced delete).
    pub fn start(
        cfg: &Config,
        vol: Arc<Volume>,
        exe: &exec::LocalExecutor<'_>,
    ) -> std::io::Result<Rc<Shard>> {
        let conns = Shard::connect(cfg, exe)?;
        Ok(Shard::build(cfg, vol, conns, true, exe))
    }

    /// Connect `cfg.connections` pipelined connections (see [`Shard::start`]) that shards
    /// of several devices on this thread may share ([`Shard::start_shared`]): a sheep
    /// connection is not tied to a VDI, and request ids are unique per connection.
    pub fn connect(cfg: &Config, exe: &exec::LocalExecutor<'_>) -> std::io::Result<Conns> {
        let mut conns = Vec::with_capacity(cfg.connections.max(1));
        for _ in 0..cfg.connections.max(1) {
            let c =
                RingConn::connect_supervised(&cfg.gateways, CONNECT_TIMEOUT, cfg.slots, STALL, exe);
            keep(&mut conns, c, cfg)?;
        }
        Ok(conns.into())
    }

    /// [`Shard::connect`] for a thread that serves other devices on its ring (a core
    /// thread): the connects run on a helper thread (`conn::connect_aside`), so the ring
    /// goes on serving while a gateway is slow to answer.
    pub async fn connect_aside(
        cfg: &Config,
        exe: &exec::LocalExecutor<'_>,
    ) -> std::io::Result<Conns> {
        let mut conns = Vec::with_capacity(cfg.connections.max(1));
        for _ in 0..cfg.connections.max(1) {
            let c = RingConn::connect_supervised_aside(
                &cfg.gateways,
                CONNECT_TIMEOUT,
                cfg.slots,
                STALL,
                exe,
            )
            .await;
            keep(&mut conns, c, cfg)?;
        }
        Ok(conns.into())
    }

    /// A shard for `vol` on connections this thread already has ([`Shard::connect`]);
    /// closing it leaves them open for the other shards that use them.
    pub fn start_shared(
        cfg: &Config,
        vol: Arc<Volume>,
        conns: Conns,
        exe: &exec::LocalExecutor<'_>,
    ) -> Rc<Shard> {
        Shard::build(cfg, vol, conns, false, exe)
    }

    fn build(
        cfg: &Config,
        vol: Arc<Volume>,
        conns: Conns,
        own_conns: bool,
        exe: &exec::LocalExecutor<'_>,
    ) -> Rc<Shard> {
        let metrics = cfg.metrics.as_ref().map(|q| {
            let m = q.device.shard(
                q.queue,
                q.depth,
                conns.len(),
                &conns[0].addr().to_string(),
                q.zero_copy,
            );
            for (i, c) in conns.iter().enumerate() {
                m.set_conn(i, c.inflight(), c.is_up());
            }
            RefCell::new(m)
        });
        let shard = Rc::new(Shard {
            vol,
            conns,
            own_conns,
            next: Cell::new(0),
            zeros: vec![0u8; cfg.max_io.max(4096)].into_boxed_slice(),
            metrics,
            closed: Cell::new(false),
            ticking: Cell::new(false),
            io_timeout: cfg.io_timeout,
            abort: cfg.abort.clone(),
            merged_seen: Cell::new(0),
            reconnects_seen: Cell::new(0),
        });
        if shard.metrics.is_some() {
            exe.spawn(shard.clone().tick()).detach();
        }
        shard
    }

    /// Count a zero-copy queue's read or write by how its data moved; published with the
    /// other metrics.
    pub fn zero_copy(&self, path: crate::metrics::ZcPath) {
        if let Some(m) = &self.metrics {
            m.borrow_mut().zero_copy(path);
        }
    }

    /// The shard's connections (to start another device's shard on them:
    /// [`Shard::start_shared`]).
    pub fn conns(&self) -> Conns {
        self.conns.clone()
    }

    /// Block-layer sheep requests that rode on another one (were not sent on their own).
    pub fn merged(&self) -> u64 {
        self.conns.iter().map(|c| c.merged()).sum()
    }

    /// Times this shard's connections were re-established.
    pub fn reconnects(&self) -> u64 {
        self.conns.iter().map(|c| c.reconnects()).sum()
    }

    /// Whether every connection of this shard is up (none is waiting to reconnect).
    pub fn is_connected(&self) -> bool {
        self.conns.iter().all(|c| c.is_up())
    }

    /// The gateway this shard's connections talk to.
    pub fn gateway(&self) -> Gateway {
        self.conns[0].addr()
    }

    /// The shard is going away: its own connections close (requests in flight fail);
    /// shared ones stay for the other shards.
    pub fn close(&self) {
        self.closed.set(true);
        if self.own_conns {
            self.conns.iter().for_each(|c| c.close());
        }
    }

    /// Close, then let the connection tasks and the ticker end, so the ring and the buffers
    /// their SQEs point to may go.
    pub async fn shut_down(&self) {
        self.close();
        while !self.is_quiet() {
            ring::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Whether every connection's tasks and the ticker have ended (after `close`), so the
    /// ring may go.
    pub fn is_quiet(&self) -> bool {
        !self.ticking.get() && (!self.own_conns || self.conns.iter().all(|c| c.is_quiet()))
    }

    /// The shard's timer task: every [`TICK`] until `close` (and once more at the end), it
    /// publishes what the shard recorded locally — counters, histograms, in-flight counts,
    /// connection state — so a request touches no shared counter. [`Shard::start`] spawns
    /// it when metrics are on.
    async fn tick(self: Rc<Self>) {
        if self.metrics.is_none() {
            return;
        }
        self.ticking.set(true);
        while !self.closed.get() {
            ring::sleep(TICK).await;
            self.publish();
        }
        self.publish();
        self.ticking.set(false);
    }

    /// Publish the shard's metrics (see [`Shard::tick`]).
    fn publish(&self) {
        let Some(m) = &self.metrics else { return };
        let mut m = m.borrow_mut();
        for (i, c) in self.conns.iter().enumerate() {
            m.set_conn(i, c.inflight(), c.is_up());
        }
        let reconnects: u64 = self.conns.iter().map(|c| c.reconnects()).sum();
        m.reconnects.inc_by(reconnects.saturating_sub(self.reconnects_seen.replace(reconnects)));
        let merged = self.merged();
        m.coalesced.inc_by(merged.saturating_sub(self.merged_seen.replace(merged)));
        m.flush();
    }

    fn aborted(&self) -> bool {
        self.closed.get() || self.abort.as_ref().is_some_and(|a| a.load(Ordering::Relaxed))
    }

    /// Send one sheep request of kind `kind`, resending it on a connection failure until the
    /// connection is back or `deadline` passes. Resending is safe: a create is resent only
    /// while this request still holds the object's claim, so nobody else wrote the object
    /// and the entry is unchanged — the same CREATE (or COW) gives the same object.
    async fn call(
        &self,
        kind: Backend,
        hdr: ReqHeader,
        payload: &[u8],
        dest: &mut [u8],
        deadline: Option<Instant>,
    ) -> Result<RspHeader, Error> {
        self.call_data(kind, hdr, Src::Mem(payload), Dst::Mem(dest), deadline).await
    }

    /// [`Shard::call`] with data that may be a request's kernel pages (zero copy).
    async fn call_data(
        &self,
        kind: Backend,
        hdr: ReqHeader,
        payload: Src<'_>,
        mut dest: Dst<'_>,
        deadline: Option<Instant>,
    ) -> Result<RspHeader, Error> {
        loop {
            let r = self.call_once(kind, hdr, payload, dest.reborrow()).await;
            match r {
                Err(e) if e.should_reconnect() => {
                    // Wait for any connection to come back, within the deadline.
                    loop {
                        if self.aborted() || deadline.is_some_and(|d| Instant::now() >= d) {
                            return Err(e);
                        }
                        if self.conns.iter().any(|c| c.is_up()) {
                            break;
                        }
                        ring::sleep(RETRY_POLL).await;
                    }
                }
                r => return r,
            }
        }
    }

    /// One attempt on the least busy connection that is up, with metrics.
    async fn call_once(
        &self,
        kind: Backend,
        hdr: ReqHeader,
        payload: Src<'_>,
        dest: Dst<'_>,
    ) -> Result<RspHeader, Error> {
        let n = self.conns.len();
        let start = self.next.get();
        self.next.set((start + 1) % n);
        // A write that can ride on a queued neighbour goes to that connection (coalescing);
        // anything else to the least busy connection that is up.
        let ride = if n > 1 {
            (0..n).find(|&k| self.conns[k].is_up() && self.conns[k].can_ride(&hdr))
        } else {
            None
        };
        let i = ride.unwrap_or_else(|| {
            (0..n)
                .map(|k| (start + k) % n)
                .min_by_key(|&k| (!self.conns[k].is_up(), self.conns[k].inflight()))
                .unwrap_or(0)
        });
        let Some(m) = &self.metrics else {
            return self.conns[i]
                .call_data(hdr, payload, dest)
                .await
                .and_then(|rsp| check(&rsp).map(|()| rsp));
        };
        let t0 = ring::now();
        let r = self.conns[i]
            .call_data(hdr, payload, dest)
            .await
            .and_then(|rsp| check(&rsp).map(|()| rsp));
        let mut m = m.borrow_mut();
        m.backend(kind, ring::now().saturating_duration_since(t0));
        if let Err(e) = r {
            m.backend_error(kind, error_label(e));
        }
        r
    }

    /// Serve one block request with the tag's buffer; returns the bytes done.
    pub async fn handle(&self, d: IoDesc, buf: &mut [u8]) -> Result<u32, Error> {
        self.handle_data(d, Data::Mem(buf)).await
    }

    /// [`Shard::handle`] where the data may be the request's own kernel pages (zero copy).
    pub async fn handle_data(&self, d: IoDesc, data: Data<'_>) -> Result<u32, Error> {
        let (t, t0) = (self.io_timeout, ring::now());
        let dl = (!t.is_zero()).then(|| t0 + t);
        let Some(m) = &self.metrics else { return self.serve(d, data, dl).await };
        m.borrow_mut().begin_io();
        let r = self.serve(d, data, dl).await;
        m.borrow_mut().io(d.op, d.len, r.is_ok(), ring::now().saturating_duration_since(t0));
        r
    }

    /// Serve one block request; `dl`: when to stop resending it over a broken connection.
    async fn serve(&self, d: IoDesc, data: Data<'_>, dl: Option<Instant>) -> Result<u32, Error> {
        let len = d.len as usize;
        if d.offset.checked_add(u64::from(d.len)).is_none_or(|end| end > self.vol.size()) {
            return Err(Error::OutOfRange);
        }
        match d.op {
            Op::Read => {
                let mut dst = match data {
                    Data::Mem(m) => Dst::Mem(m),
                    Data::Kernel(k) => Dst::Kernel(k),
                };
                let mut dst = dst.slice(0, len).ok_or(Error::OutOfRange)?;
                for p in split(d.offset, u64::from(d.len), self.vol.block_size_shift()) {
                    let out = dst.slice(p.buf_off, p.len as usize).ok_or(Error::OutOfRange)?;
                    self.read_piece(p.idx, p.obj_off, out, dl).await?;
                }
            }
            Op::Write => {
                let src = match &data {
                    Data::Mem(m) => Src::Mem(m),
                    Data::Kernel(k) => Src::Kernel(*k),
                };
                self.write(d.offset, src.slice(0, len).ok_or(Error::OutOfRange)?, dl).await?;
            }
            Op::Flush => {}
            Op::Discard | Op::WriteZeroes => self.zero_range(d, dl).await?,
        }
        Ok(d.len)
    }

    async fn read_piece(
        &self,
        idx: u32,
        obj_off: u32,
        mut out: Dst<'_>,
        dl: Option<Instant>,
    ) -> Result<(), Error> {
        match self.vol.plan_read(idx)? {
            ReadPlan::Zero => match &mut out {
                Dst::Mem(m) => m.fill(0),
                Dst::Kernel(k) => {
                    for at in (0..k.len as usize).step_by(self.zeros.len()) {
                        let n = self.zeros.len().min(k.len as usize - at);
                        crate::block::copy_to_kernel(k, at, &self.zeros[..n]).map_err(|e| {
                            tracing::warn!("user copy of zeros: {e}");
                            Error::Io(e.raw_os_error().unwrap_or(libc::EIO))
                        })?;
                    }
                }
            },
            ReadPlan::Read(oid) => {
                let hdr = ReqHeader::obj(
                    Opcode::ReadObj,
                    0,
                    out.len() as u32,
                    ObjArgs { oid, offset: obj_off, ..Default::default() },
                );
                let want = out.len();
                let rsp = self.call_data(Backend::ReadObj, hdr, Src::Mem(&[]), out, dl).await?;
                if rsp.data_length as usize != want {
                    return Err(Error::Protocol);
                }
            }
        }
        Ok(())
    }
}

/// The `result` label of a failed sheep request.
fn error_label(e: Error) -> &'static str {
    match e {
        Error::Server(code) => code.label(),
        Error::Io(_) => "io",
        Error::Closed => "closed",
        Error::Protocol => "protocol",
        Error::ReadOnly | Error::OutOfRange | Error::Unsupported => "client",
    }
}

fn check(rsp: &RspHeader) -> Result<(), Error> {
    if rsp.result.is_success() {
        Ok(())
    } else {
        Err(Error::Server(rsp.result))
    }
}
