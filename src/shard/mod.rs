//! The hot path. A shard is one thread pinned to one core that owns one ublk hardware
//! queue (or, without a kernel, a benchmark or test driver), its own pipelined sheep
//! connections on that thread's io_uring, and one task per tag.
//!
//! Contract:
//! - The kernel boundary is [`IoDesc`] `{op, offset, len, tag}` plus the tag's buffer;
//!   ublk, tests and the no-kernel benchmark all enter through [`Shard::handle`].
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
pub mod ring;
mod start;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use conn::RingConn;
pub use error::Error;
pub use start::{spawn, Config, Done, Job, QueueMetrics, Remote, Spawned};

use crate::metrics::{Backend, ShardMetrics};
use crate::proto::inode::entry_offset;
use crate::proto::*;
use crate::sheep::Gateway;
use crate::vdi::{split, ReadPlan, Volume, WritePlan};

/// Pin the calling (shard) thread to core `n` modulo the cores this process may use.
pub fn pin_thread(n: usize) {
    if let Some(cores) = core_affinity::get_core_ids().filter(|c| !c.is_empty()) {
        core_affinity::set_for_current(cores[n % cores.len()]);
    }
}

pub use crate::block::{IoDesc, Op};

/// How long a writer waits before looking again at an object another writer is creating.
const CREATE_WAIT: Duration = Duration::from_micros(20);
/// How often a request waiting for a connection to come back looks again.
const RETRY_POLL: Duration = Duration::from_millis(10);
/// Entries created by one request whose inode update is coalesced into one write.
const MAX_CREATED: usize = 8;
/// How often a piece refused with READONLY follows a live snapshot before it fails (each
/// follow moves the own vid on; a vid that stays read-only fails at once).
const READONLY_RETRIES: u32 = 4;
/// How often a request waiting for another to follow a live snapshot looks again.
const FOLLOW_WAIT: Duration = Duration::from_millis(1);

/// One shard's state: owned by its thread, except the lock-free `Volume`.
pub struct Shard {
    vol: Arc<Volume>,
    conns: Vec<Rc<RingConn>>,
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
    pub fn start(cfg: &Config, vol: Arc<Volume>, exe: &exec::LocalExecutor<'_>) -> std::io::Result<Rc<Shard>> {
        let mut conns: Vec<Rc<RingConn>> = Vec::with_capacity(cfg.connections.max(1));
        for _ in 0..cfg.connections.max(1) {
            match RingConn::connect_supervised(&cfg.gateways, Duration::from_secs(3), cfg.slots, STALL, exe) {
                Ok(c) => {
                    c.set_coalesce(cfg.coalesce);
                    conns.push(c)
                }
                Err(e) => {
                    conns.iter().for_each(|c| c.close());
                    return Err(e);
                }
            }
        }
        let metrics = cfg.metrics.as_ref().map(|q| {
            let m = q.device.shard(q.queue, q.depth, conns.len(), &conns[0].addr().to_string());
            for (i, c) in conns.iter().enumerate() {
                m.set_conn(i, c.inflight(), c.is_up());
            }
            RefCell::new(m)
        });
        let shard = Rc::new(Shard {
            vol,
            conns,
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
        Ok(shard)
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

    /// Close every connection (the shard is going away): requests in flight fail.
    pub fn close(&self) {
        self.closed.set(true);
        self.conns.iter().for_each(|c| c.close());
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
        !self.ticking.get() && self.conns.iter().all(|c| c.is_quiet())
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
    async fn call(&self, kind: Backend, hdr: ReqHeader, payload: &[u8], dest: &mut [u8], deadline: Option<Instant>) -> Result<RspHeader, Error> {
        loop {
            let r = self.call_once(kind, hdr, payload, dest).await;
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
    async fn call_once(&self, kind: Backend, hdr: ReqHeader, payload: &[u8], dest: &mut [u8]) -> Result<RspHeader, Error> {
        let n = self.conns.len();
        let start = self.next.get();
        self.next.set((start + 1) % n);
        // A write that can ride on a queued neighbour goes to that connection (coalescing);
        // anything else to the least busy connection that is up.
        let ride = if n > 1 { (0..n).find(|&k| self.conns[k].is_up() && self.conns[k].can_ride(&hdr)) } else { None };
        let i =
            ride.unwrap_or_else(|| (0..n).map(|k| (start + k) % n).min_by_key(|&k| (!self.conns[k].is_up(), self.conns[k].inflight())).unwrap_or(0));
        let Some(m) = &self.metrics else {
            return self.conns[i].call(hdr, payload, dest).await.and_then(|rsp| check(&rsp).map(|()| rsp));
        };
        let t0 = ring::now();
        let r = self.conns[i].call(hdr, payload, dest).await.and_then(|rsp| check(&rsp).map(|()| rsp));
        let m = m.borrow();
        m.backend(kind, ring::now().saturating_duration_since(t0));
        if let Err(e) = r {
            m.backend_error(kind, error_label(e));
        }
        r
    }

    /// Serve one block request with the tag's buffer; returns the bytes done.
    pub async fn handle(&self, d: IoDesc, buf: &mut [u8]) -> Result<u32, Error> {
        let (t, t0) = (self.io_timeout, ring::now());
        let dl = (!t.is_zero()).then(|| t0 + t);
        let Some(m) = &self.metrics else { return self.serve(d, buf, dl).await };
        m.borrow_mut().begin_io();
        let r = self.serve(d, buf, dl).await;
        m.borrow_mut().io(d.op, d.len, r.is_ok(), ring::now().saturating_duration_since(t0));
        r
    }

    /// Serve one block request; `dl`: when to stop resending it over a broken connection.
    async fn serve(&self, d: IoDesc, buf: &mut [u8], dl: Option<Instant>) -> Result<u32, Error> {
        let len = d.len as usize;
        if d.offset.checked_add(u64::from(d.len)).is_none_or(|end| end > self.vol.size()) {
            return Err(Error::OutOfRange);
        }
        match d.op {
            Op::Read => {
                let buf = buf.get_mut(..len).ok_or(Error::OutOfRange)?;
                for p in split(d.offset, u64::from(d.len), self.vol.block_size_shift()) {
                    self.read_piece(p.idx, p.obj_off, &mut buf[p.buf_off..p.buf_off + p.len as usize], dl).await?;
                }
            }
            Op::Write => {
                let buf = buf.get(..len).ok_or(Error::OutOfRange)?;
                self.write(d.offset, buf, dl).await?;
            }
            Op::Flush => {}
            Op::Discard | Op::WriteZeroes => self.zero_range(d, buf, dl).await?,
        }
        Ok(d.len)
    }

    async fn read_piece(&self, idx: u32, obj_off: u32, out: &mut [u8], dl: Option<Instant>) -> Result<(), Error> {
        match self.vol.plan_read(idx)? {
            ReadPlan::Zero => out.fill(0),
            ReadPlan::Read(oid) => {
                let hdr = ReqHeader::obj(Opcode::ReadObj, 0, out.len() as u32, ObjArgs { oid, offset: obj_off, ..Default::default() });
                let rsp = self.call(Backend::ReadObj, hdr, &[], out, dl).await?;
                if rsp.data_length as usize != out.len() {
                    return Err(Error::Protocol);
                }
            }
        }
        Ok(())
    }

    async fn plan_write(&self, idx: u32) -> Result<WritePlan, Error> {
        let mut waited = false;
        loop {
            match self.vol.plan_write(idx)? {
                WritePlan::Wait => {
                    if !waited {
                        waited = true;
                        if let Some(m) = &self.metrics {
                            m.borrow().create_waits.inc();
                        }
                    }
                    ring::sleep(CREATE_WAIT).await
                }
                p => return Ok(p),
            }
        }
    }

    /// Write `data` at `offset`, then persist the entries it created (coalesced). A piece
    /// refused with READONLY (a live snapshot of the VDI) follows the snapshot and is sent
    /// again, planned against the new working vid (so a COW).
    async fn write(&self, offset: u64, data: &[u8], dl: Option<Instant>) -> Result<(), Error> {
        let (copies, policy) = (self.vol.header().nr_copies, self.vol.header().copy_policy);
        let mut created = [(0u32, 0u32); MAX_CREATED];
        let mut n = 0;
        let mut result = Ok(());
        'pieces: for p in split(offset, data.len() as u64, self.vol.block_size_shift()) {
            let piece = &data[p.buf_off..p.buf_off + p.len as usize];
            let args = |oid, cow| ObjArgs { oid, cow_oid: cow, copies, copy_policy: policy, offset: p.obj_off, ..Default::default() };
            let flags = SD_FLAG_CMD_WRITE | SD_FLAG_CMD_DIRECT;
            let mut refused = 0;
            loop {
                let plan = match self.plan_write(p.idx).await {
                    Ok(plan) => plan,
                    Err(e) => {
                        result = Err(e);
                        break 'pieces;
                    }
                };
                let (kind, hdr, oid) = match plan {
                    WritePlan::Write(oid) => (Backend::WriteObj, ReqHeader::obj(Opcode::WriteObj, flags, p.len, args(oid, Oid(0))), oid),
                    WritePlan::Create(oid) => {
                        (Backend::CreateAndWrite, ReqHeader::obj(Opcode::CreateAndWriteObj, flags, p.len, args(oid, Oid(0))), oid)
                    }
                    WritePlan::Cow { oid, cow } => {
                        if let Some(m) = &self.metrics {
                            m.borrow().cow.inc();
                        }
                        (Backend::CowCreate, ReqHeader::obj(Opcode::CreateAndWriteObj, flags | SD_FLAG_CMD_COW, p.len, args(oid, cow)), oid)
                    }
                    WritePlan::Wait => unreachable!("plan_write waits"),
                };
                let r = self.call(kind, hdr, piece, &mut [], dl).await.map(|_| ());
                if plan.is_create() {
                    match r {
                        Ok(()) => {
                            created[n] = (p.idx, self.vol.created(p.idx, oid.vid()));
                            n += 1;
                            if n == MAX_CREATED {
                                self.persist(&created[..n], dl).await?;
                                n = 0;
                            }
                        }
                        Err(_) => self.vol.release(p.idx, None),
                    }
                }
                match r {
                    Ok(()) => break,
                    Err(Error::Server(code)) if code == SD_RES_READONLY && refused < READONLY_RETRIES => {
                        refused += 1;
                        if let Err(e) = self.follow_snapshot(oid.vid(), dl).await {
                            result = Err(e);
                            break 'pieces;
                        }
                    }
                    Err(e) => {
                        result = Err(e);
                        break 'pieces;
                    }
                }
            }
        }
        if n > 0 {
            self.persist(&created[..n], dl).await?;
        }
        result
    }

    /// One inode write for the entries of `created` (contiguous indexes of one request),
    /// then release their claims; on failure the entries are restored.
    async fn persist(&self, created: &[(u32, u32)], dl: Option<Instant>) -> Result<(), Error> {
        let lo = created.iter().map(|c| c.0).min().unwrap_or(0);
        let hi = created.iter().map(|c| c.0).max().unwrap_or(0);
        let mut bytes = [0u8; 4 * MAX_CREATED];
        let count = (hi - lo + 1) as usize;
        let r = if count <= MAX_CREATED {
            for (k, idx) in (lo..=hi).enumerate() {
                bytes[4 * k..4 * k + 4].copy_from_slice(&self.vol.entry(idx).unwrap_or(0).to_le_bytes());
            }
            let vid = self.vol.vid();
            match self.write_inode(vid, entry_offset(lo), &bytes[..4 * count], dl).await {
                // The update landed in the inode of a vid that a live snapshot froze
                // meanwhile: that snapshot now references the new objects. The new working
                // inode gets copies of them, not the pointers (see `carry`).
                Ok(()) if self.vol.vid() != vid => self.carry_created(created, dl).await,
                r => r,
            }
        } else {
            Err(Error::OutOfRange)
        };
        for &(idx, old) in created {
            self.vol.release(idx, if r.is_ok() { None } else { Some(old) });
        }
        r
    }

    /// After a live snapshot froze the vid these creates were persisted into: carry each
    /// (its claim is still held) into the working vid by a copy.
    async fn carry_created(&self, created: &[(u32, u32)], dl: Option<Instant>) -> Result<(), Error> {
        for &(idx, _) in created {
            let (now, e) = (self.vol.vid(), self.vol.entry(idx).unwrap_or(0));
            if e != 0 && e != now.0 {
                self.carry(idx, Vid(e), now, dl).await?;
            }
        }
        Ok(())
    }

    /// Make object `idx` of the working vid `to` a copy of `from`'s (a COW create with no
    /// payload), point the entry at it, in memory and in `to`'s inode. The caller holds the
    /// claim on `idx`.
    ///
    /// Never point `to`'s inode at `from`'s object instead: sheep keeps generational
    /// reference counts (`gref`) next to the entries and zeroes them for every entry an
    /// inode write covers, so a second inode referencing an object through a client's
    /// write is not counted, and when either drops it later sheep removes the object from
    /// under the other (seen on sheep 1.0: a snapshot lost its object after the working
    /// VDI rewrote an unchanged shared entry and then copied-on-write it).
    async fn carry(&self, idx: u32, from: Vid, to: Vid, dl: Option<Instant>) -> Result<(), Error> {
        let h = self.vol.header();
        let args =
            ObjArgs { oid: Oid::data(to, idx), cow_oid: Oid::data(from, idx), copies: h.nr_copies, copy_policy: h.copy_policy, ..Default::default() };
        let hdr = ReqHeader::obj(Opcode::CreateAndWriteObj, SD_FLAG_CMD_WRITE | SD_FLAG_CMD_DIRECT | SD_FLAG_CMD_COW, 0, args);
        self.call(Backend::CowCreate, hdr, &[], &mut [], dl).await?;
        self.vol.set_entry(idx, to.0)?;
        self.write_inode(to, entry_offset(idx), &to.0.to_le_bytes(), dl).await
    }

    /// Write zeroed inode entries (a discard) into the inode of the own vid. sheep accepts
    /// inode writes to a snapshot, so an update that raced a live snapshot may have landed
    /// in the snapshot's inode: when the own vid moved meanwhile, the zeros go to the new
    /// one too (dropping a reference is always counted right; see `carry` for why entries
    /// that point at objects are never written twice).
    async fn write_zeroed_entries(&self, offset: u32, zeros: &[u8], dl: Option<Instant>) -> Result<(), Error> {
        debug_assert!(zeros.iter().all(|&b| b == 0));
        let mut vid = self.vol.vid();
        loop {
            self.write_inode(vid, offset, zeros, dl).await?;
            let now = self.vol.vid();
            if now == vid {
                return Ok(());
            }
            vid = now;
        }
    }

    async fn write_inode(&self, vid: Vid, offset: u32, bytes: &[u8], dl: Option<Instant>) -> Result<(), Error> {
        let args = ObjArgs { oid: Oid::inode(vid), offset, ..Default::default() };
        let hdr = ReqHeader::obj(Opcode::WriteObj, SD_FLAG_CMD_WRITE | SD_FLAG_CMD_DIRECT, bytes.len() as u32, args);
        self.call(Backend::InodeUpdate, hdr, bytes, &mut [], dl).await.map(|_| ())
    }

    /// A write of an object of `stale` got READONLY: someone snapshotted the VDI. One
    /// request (of any shard of the device) looks the new working vid up and switches the
    /// shared `Volume` to it; the others wait for that and plan again.
    async fn follow_snapshot(&self, stale: Vid, dl: Option<Instant>) -> Result<(), Error> {
        if !self.vol.begin_follow(stale) {
            while self.vol.is_following() {
                if self.aborted() {
                    return Err(Error::Closed);
                }
                ring::sleep(FOLLOW_WAIT).await;
            }
            return Ok(());
        }
        let r = self.follow_inner(stale, dl).await;
        self.vol.end_follow();
        if let (Ok(_), Some(m)) = (&r, &self.metrics) {
            m.borrow().inode_reloads.inc();
        }
        match r {
            // A warning: another client changed the VDI under the device (the daemon moves
            // its table entry and the VDI lock after it).
            Ok(new) => {
                tracing::warn!("vdi {}: live snapshot of vid {stale} by another client; writes now go to vid {new}", self.vol.header().name_lossy())
            }
            Err(e) => {
                tracing::warn!("vdi {}: vid {stale} became read-only and no new working vdi could be followed: {e}", self.vol.header().name_lossy())
            }
        }
        r.map(|_| ())
    }

    /// GET_VDI_INFO by name, check the new inode, switch, then bring the new inode's entries
    /// that differ from memory in line: objects whose updates landed in the snapshot's inode
    /// after the snapshot was taken are carried over as copies (`carry`), discards as zeros;
    /// equal entries are never rewritten. Not on the I/O path: it allocates.
    async fn follow_inner(&self, stale: Vid, dl: Option<Instant>) -> Result<Vid, Error> {
        // Name + zeroed tag, as every lookup (SD_LOOKUP_LEN): the working VDI.
        let payload = crate::proto::lookup_field(&self.vol.header().name, None);
        let hdr = ReqHeader::vdi(Opcode::GetVdiInfo, SD_FLAG_CMD_WRITE, payload.len() as u32, VdiArgs::default());
        let rsp = self.call(Backend::VdiLookup, hdr, &payload, &mut [], dl).await?;
        let new = match Vid::new(rsp.vdi_id()) {
            Some(v) if v != stale => v,
            // The vid stays a snapshot and no other working VDI took its name (a clone made
            // from a working VDI, reference §10.3): nothing to follow.
            _ => return Err(Error::Server(SD_RES_READONLY)),
        };
        let mut head = vec![0u8; crate::proto::inode::INODE_HEADER_PARSE_LEN];
        let rh = ReqHeader::obj(Opcode::ReadObj, 0, head.len() as u32, ObjArgs { oid: Oid::inode(new), ..Default::default() });
        self.call(Backend::ReadObj, rh, &[], &mut head, dl).await?;
        let h = InodeHeader::parse(&head).map_err(|_| Error::Protocol)?;
        let old = self.vol.header();
        if h.is_snapshot() || h.vdi_id != new.0 || h.block_size_shift != old.block_size_shift || h.vdi_size < old.vdi_size {
            return Err(Error::Server(SD_RES_READONLY));
        }
        self.vol.follow(stale, new);
        // Reconcile: the new inode is sheep's copy of the old one at the moment of the
        // snapshot; memory may differ where updates raced it (landed in the snapshot's
        // inode, or not yet written). Only entries that differ are touched — rewriting an
        // unchanged one would reset sheep's reference count of a shared object (`carry`).
        // An entry whose claim is held is left to its holder (`persist` carries it).
        const CHUNK: u32 = 16 << 10;
        let nr = self.vol.nr_objects();
        let mut inode = vec![0u8; 4 * CHUNK.min(nr.max(1)) as usize];
        for _pass in 0..8 {
            let mut differed = false;
            let mut lo = 0;
            while lo < nr {
                let hi = (lo + CHUNK).min(nr);
                let buf = &mut inode[..4 * (hi - lo) as usize];
                let rh = ReqHeader::obj(
                    Opcode::ReadObj,
                    0,
                    buf.len() as u32,
                    ObjArgs { oid: Oid::inode(new), offset: entry_offset(lo), ..Default::default() },
                );
                self.call(Backend::ReadObj, rh, &[], buf, dl).await?;
                for idx in lo..hi {
                    let k = 4 * (idx - lo) as usize;
                    let there = u32::from_le_bytes([buf[k], buf[k + 1], buf[k + 2], buf[k + 3]]);
                    if self.vol.entry(idx) == Some(there) {
                        continue;
                    }
                    differed = true;
                    if !self.vol.try_claim(idx)? {
                        continue;
                    }
                    let r = match self.vol.entry(idx).unwrap_or(0) {
                        m if m == there || m == new.0 => Ok(()),
                        0 => self.write_inode(new, entry_offset(idx), &0u32.to_le_bytes(), dl).await,
                        m => self.carry(idx, Vid(m), new, dl).await,
                    };
                    self.vol.release(idx, None);
                    r?;
                }
                lo = hi;
            }
            if !differed {
                break;
            }
        }
        Ok(new)
    }

    /// DISCARD / WRITE_ZEROES (see the module contract). `scratch` is the tag's buffer,
    /// unused by these ops, which carries the zeroed entries.
    async fn zero_range(&self, d: IoDesc, scratch: &mut [u8], dl: Option<Instant>) -> Result<(), Error> {
        if self.vol.is_read_only() {
            return Err(Error::ReadOnly);
        }
        let bss = self.vol.block_size_shift();
        let os = 1u64 << bss;
        let end = d.offset + u64::from(d.len);
        let first_whole = d.offset.div_ceil(os);
        let end_whole = end / os;
        if d.op == Op::WriteZeroes {
            // Partial objects at the edges get real zeros.
            let head_end = (first_whole * os).min(end);
            if first_whole > end_whole {
                self.write_zeros(d.offset, end, dl).await?;
                return Ok(());
            }
            self.write_zeros(d.offset, head_end, dl).await?;
            self.write_zeros(end_whole * os, end, dl).await?;
        }
        // Whole objects: claim, zero the entries in one inode write per scratch-full, release.
        let per_write = (scratch.len() / 4).max(1) as u64;
        let mut lo = first_whole;
        while lo < end_whole {
            let hi = (lo + per_write).min(end_whole);
            let mut any = false;
            for idx in lo..hi {
                let idx = idx as u32;
                loop {
                    if self.vol.try_claim(idx)? {
                        break;
                    }
                    ring::sleep(CREATE_WAIT).await;
                }
                any |= self.vol.set_entry(idx, 0)? != 0;
            }
            let bytes = &mut scratch[..4 * (hi - lo) as usize];
            bytes.fill(0);
            let r = if any { self.write_zeroed_entries(entry_offset(lo as u32), bytes, dl).await } else { Ok(()) };
            for idx in lo..hi {
                self.vol.release(idx as u32, None);
            }
            r?;
            lo = hi;
        }
        Ok(())
    }

    async fn write_zeros(&self, mut from: u64, to: u64, dl: Option<Instant>) -> Result<(), Error> {
        while from < to {
            let n = (to - from).min(self.zeros.len() as u64) as usize;
            self.write(from, &self.zeros[..n], dl).await?;
            from += n as u64;
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
