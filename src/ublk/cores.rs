//! The daemon's data plane: one pinned thread per core for the whole daemon, each serving
//! queue q of every device.
//!
//! Contract:
//! - [`Cores::start`] starts one thread per listed CPU, once, at `serve`. Each pins itself,
//!   makes its io_uring and executor, and waits on its mailbox (`shard::mail`) — the one
//!   `io_uring_enter` it sleeps in also serves every queue and sheep socket it has.
//! - A device's queue q is attached to core `q mod cores` (a device with fewer queues than
//!   cores: shifted by `dev_id × queues`, [`core_of`]) with an owned message
//!   ([`Attach`]): the core maps the queue (`queue.rs`), starts the device's shard for it on
//!   the core's connections to those gateways (made by the first device that needs them,
//!   each connect on a helper thread so that the core goes on serving its other devices
//!   meanwhile, as do reconnects; then shared by every device's shard on that core:
//!   `--connections` per gateway set per core, not per device), spawns one task per tag,
//!   and answers [`Event::Ready`] (or [`Event::Failed`]). When the driver aborts the
//!   queue's tags (the device stopped), the core closes that shard, unmaps the queue and
//!   answers [`Event::Ended`]; the core itself and its connections stay.
//! - Each core publishes its loop's `io_uring_enter`s and reaped completions every second
//!   (`sheepdev_core_ring_enters_total`, `sheepdev_core_ring_completions_total`, by
//!   core): their ratio is how many completions one system call serves.
//! - Buffers: a request borrows from the core's pool (`buffers.rs`, `cap` bytes per core)
//!   only while in flight — with NEED_GET_DATA (new sheep devices) or user copy
//!   (`queue.rs`'s `Transfer`); on a driver with neither (before GET_FEATURES, 6.5) each tag
//!   keeps its own `max_io` buffer, as the driver requires. A zero-copy device
//!   (`Transfer::AutoReg`) borrows only for writes under `shard::ZC_SEND_MIN` (their
//!   copy) and writes that were not registered: its requests' own pages are registered
//!   in the core ring's buffer table (`zero_copy::TABLE_ENTRIES` entries, made when the
//!   core starts where the kernel has zero copy), where each of its tags has an entry of
//!   its own while the queue is attached, and the sheep connections send from and read
//!   into them — while the queue is given large requests (`zero_copy::Registering`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::rc::Rc;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use libublk::io::UblkDev;

use super::buffers::Buffers;
use super::queue::{Next, Queue, Transfer};
use super::zero_copy::{self, Table};
use super::{to_desc, Abort};
use crate::block::{Data, KernelBuf, Op};
use crate::metrics::{DeviceMetrics, ZcPath};
use crate::shard::exec::LocalExecutor;
use crate::shard::mail::{mailbox, Mail, Post};
use crate::shard::{self, ring, Conns, Shard};
use crate::vdi::Volume;

/// Request slots of each core connection: the requests of every device on the core share
/// them (a request beyond them waits for a free slot).
const CORE_SLOTS: usize = 1024;

/// Entries of a core's ring (submission queue; the completion queue is twice that). A full
/// submission queue is flushed, not refused.
const CORE_RING: u32 = 1024;

/// What serves a device's queues.
pub(super) enum QueueTarget {
    Sheep { vol: Arc<Volume>, cfg: shard::Config },
    Null,
}

/// Attach queue `qid` of `dev` to a core (module contract).
pub(super) struct Attach {
    pub dev: Arc<UblkDev>,
    pub qid: u16,
    pub target: Arc<QueueTarget>,
    pub abort: Abort,
    pub max_io: u32,
    pub metrics: Option<DeviceMetrics>,
    pub events: mpsc::Sender<Event>,
}

/// What a core answers about a queue it was given.
#[derive(Debug)]
pub(super) enum Event {
    /// The queue's tags are fetching; `tid` is the core thread's.
    Ready {
        qid: u16,
        tid: i32,
    },
    Failed {
        qid: u16,
        why: String,
    },
    Ended {
        qid: u16,
    },
}

/// The core threads (module contract).
pub struct Cores {
    posts: Vec<Post<Attach>>,
    _threads: Vec<JoinHandle<()>>,
    cpus: Vec<usize>,
}

impl Cores {
    /// One thread per CPU id in `cpus`, each with `buffer_bytes` of request buffers.
    pub fn start(cpus: &[usize], buffer_bytes: usize) -> io::Result<Cores> {
        if cpus.is_empty() {
            return Err(io::Error::other("no cores to serve on"));
        }
        let (mut posts, mut threads) = (Vec::new(), Vec::new());
        for (i, &cpu) in cpus.iter().enumerate() {
            let (post, mail) = mailbox::<Attach>()?;
            let (ok_tx, ok_rx) = mpsc::channel::<io::Result<()>>();
            let t =
                std::thread::Builder::new().name(format!("sheepdev-core{i}")).spawn(move || {
                    core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
                    // PR_SET_IO_FLUSHER, as for any ublk queue thread; the thread id.
                    let tid = libublk::ctrl::UblkCtrl::init_queue_thread();
                    if let Err(e) = ring::init_thread_ring(CORE_RING) {
                        let _ = ok_tx.send(Err(e));
                        return;
                    }
                    // The executor lives as long as the thread (the process): leaked so that
                    // the tasks it runs may spawn on it.
                    let exe: &'static LocalExecutor<'static> =
                        Box::leak(Box::new(LocalExecutor::new()));
                    let _ = ok_tx.send(Ok(()));
                    let table = zero_copy::support().usable.is_ok().then(|| {
                        ring::register_buffer_table(zero_copy::TABLE_ENTRIES)
                            .map(|()| Table::new(zero_copy::TABLE_ENTRIES))
                            .map_err(|e| {
                                tracing::warn!("core {i}: no buffer table for zero copy: {e}")
                            })
                            .ok()
                    });
                    let core = Rc::new(Core {
                        conns: RefCell::new(HashMap::new()),
                        buffers: Buffers::new(buffer_bytes),
                        table: RefCell::new(table.flatten()),
                        tid,
                    });
                    exe.spawn(publish_loop_counts(i)).detach();
                    ring::run_local(exe, core.run(mail, exe));
                })?;
            match ok_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(io::Error::other("a core thread died while starting")),
            }
            posts.push(post);
            threads.push(t);
        }
        Ok(Cores { posts, _threads: threads, cpus: cpus.to_vec() })
    }

    pub fn len(&self) -> usize {
        self.posts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.posts.is_empty()
    }

    /// The CPU ids the cores run on.
    pub fn cpus(&self) -> &[usize] {
        &self.cpus
    }

    /// Hand queue `a.qid` to its core ([`core_of`]); `Err` when that core is gone.
    pub(super) fn attach(&self, a: Attach) -> Result<(), super::Error> {
        let info = &a.dev.dev_info;
        let core = core_of(a.qid, info.nr_hw_queues, info.dev_id, self.posts.len());
        self.posts[core].send(a).map_err(|a| super::Error::CoreGone { core, queue: a.qid })
    }
}

/// The core that serves queue `qid` of device `dev_id`, which has `queues` queues, out of
/// `cores`: core q mod cores, so that with a queue per core (the default) a core serves
/// queue q of every device, the queue the kernel gives the requests of its own CPU. A device
/// with fewer queues than there are cores starts at core `dev_id × queues`, so that such
/// devices fill the cores in turn instead of all sitting on the first ones.
pub(super) fn core_of(qid: u16, queues: u16, dev_id: u32, cores: usize) -> usize {
    let first = if usize::from(queues) >= cores {
        0
    } else {
        (dev_id as usize).wrapping_mul(usize::from(queues)) % cores
    };
    (first + usize::from(qid)) % cores
}

/// How often a core publishes its loop's counters (`sheepdev_core_ring_*`).
const PUBLISH: std::time::Duration = std::time::Duration::from_secs(1);

/// Publish this core thread's ring enters and reaped completions, every [`PUBLISH`], for
/// as long as the thread runs.
async fn publish_loop_counts(core: usize) {
    let label = core.to_string();
    let f = crate::metrics::global();
    let enters = f.core_enters.with_label_values(&[label.as_str()]);
    let reaped = f.core_completions.with_label_values(&[label.as_str()]);
    let mut seen = (0, 0);
    loop {
        ring::sleep(PUBLISH).await;
        let now = ring::loop_counts();
        enters.inc_by(now.0.wrapping_sub(seen.0));
        reaped.inc_by(now.1.wrapping_sub(seen.1));
        seen = now;
    }
}

/// One core's state, owned by its thread.
struct Core {
    /// Connections by (gateways, connections per gateway set).
    conns: RefCell<HashMap<(Vec<String>, usize), Conns>>,
    buffers: Rc<Buffers>,
    /// The ring's buffer-table entries for zero-copy queues (none: no zero copy here).
    table: RefCell<Option<Table>>,
    tid: i32,
}

impl Core {
    async fn run(self: Rc<Self>, mail: Mail<Attach>, exe: &'static LocalExecutor<'static>) {
        while let Some(a) = mail.recv().await {
            exe.spawn(self.clone().serve(a, exe)).detach();
        }
    }

    /// The core's connections for `cfg`'s gateways, made on first use — on a helper thread
    /// (`Shard::connect_aside`), so the core's other devices are served meanwhile.
    async fn conns(&self, cfg: &shard::Config, exe: &LocalExecutor<'_>) -> io::Result<Conns> {
        let key = (cfg.gateways.iter().map(|g| g.to_string()).collect::<Vec<_>>(), cfg.connections);
        if let Some(c) = self.conns.borrow().get(&key) {
            return Ok(c.clone());
        }
        let cfg = shard::Config { slots: CORE_SLOTS, metrics: None, ..cfg.clone() };
        let c = Shard::connect_aside(&cfg, exe).await?;
        // Another queue for the same gateways may have connected while this one waited:
        // keep the first set, so the core has one per gateway set.
        let mut map = self.conns.borrow_mut();
        if let Some(first) = map.get(&key) {
            c.iter().for_each(|c| c.close());
            return Ok(first.clone());
        }
        map.insert(key, c.clone());
        Ok(c)
    }

    /// Serve one attached queue until the driver ends it (module contract).
    async fn serve(self: Rc<Self>, a: Attach, exe: &'static LocalExecutor<'static>) {
        let qid = a.qid;
        let q = match Queue::new(a.dev.clone(), qid) {
            Ok(q) => Rc::new(q),
            Err(e) => {
                let why = format!("cannot map queue {qid}: {e}");
                let _ = a.events.send(Event::Failed { qid, why });
                return;
            }
        };
        let depth = q.depth();
        // Zero copy: an entry of the ring's buffer table per tag, while the queue is here.
        let zc = if q.transfer() == Transfer::AutoReg {
            let first = self.table.borrow_mut().as_mut().and_then(|t| t.take(depth));
            match first {
                Some(first) => Some(Zc { first, ring_reads: zero_copy::support().ring_reads }),
                None => {
                    let why = match &*self.table.borrow() {
                        Some(_) => format!("the core's buffer table has no {depth} free entries left for queue {qid} (zero copy; {} per core)", zero_copy::TABLE_ENTRIES),
                        None => "this core has no buffer table (zero copy is not available here)".to_string(),
                    };
                    let _ = a.events.send(Event::Failed { qid, why });
                    return;
                }
            }
        } else {
            None
        };
        let shard = match &*a.target {
            QueueTarget::Null => None,
            QueueTarget::Sheep { vol, cfg } => {
                let metrics = a.metrics.as_ref().map(|device| shard::QueueMetrics {
                    device: device.clone(),
                    queue: qid,
                    depth,
                    zero_copy: zc.is_some(),
                });
                let cfg = shard::Config { metrics, abort: Some(a.abort.clone()), ..cfg.clone() };
                match self.conns(&cfg, exe).await {
                    Ok(conns) => Some(Shard::start_shared(&cfg, vol.clone(), conns, exe)),
                    Err(e) => {
                        tracing::error!(
                            "device {} queue {qid}: cannot connect to sheep: {e}; every request fails with EIO",
                            q.dev().dev_info.dev_id
                        );
                        None
                    }
                }
            }
        };
        if !matches!(q.transfer(), Transfer::UserCopy | Transfer::AutoReg) {
            // libublk's START_DEV waits for every queue to say its buffers are in place
            // unless the device has user copy (or AUTO_BUF_REG): each tag has its own buffer
            // before its first FETCH, or borrows one per request (GetData).
            q.dev().notify_buffer_registration_complete(false);
        }
        let null = matches!(&*a.target, QueueTarget::Null);
        let registering = Rc::new(zero_copy::Registering::new(depth));
        let tags: Vec<_> = (0..depth)
            .map(|tag| {
                let (q, shard, bufs) = (q.clone(), shard.clone(), self.buffers.clone());
                let registering = registering.clone();
                exe.spawn(async move {
                    let r = match zc {
                        Some(zc) => {
                            let s = shard.as_deref();
                            let t = TagZc { zc, registering: &registering };
                            serve_tag_zc(&q, tag, s, null, a.max_io, &bufs, t).await
                        }
                        None => serve_tag(&q, tag, shard.as_deref(), null, a.max_io, &bufs).await,
                    };
                    if let Err(e) = r {
                        if e != libc::ENODEV {
                            let id = q.dev().dev_info.dev_id;
                            tracing::warn!(
                                "device {id} queue {} tag {tag}: {}",
                                q.qid(),
                                io::Error::from_raw_os_error(e)
                            );
                        }
                    }
                })
            })
            .collect();
        let _ = a.events.send(Event::Ready { qid, tid: self.tid });
        for t in tags {
            t.await;
        }
        if let Some(s) = &shard {
            s.shut_down().await;
        }
        drop(shard);
        drop(q);
        if let (Some(zc), Some(t)) = (zc, self.table.borrow_mut().as_mut()) {
            t.give(zc.first, depth);
        }
        let _ = a.events.send(Event::Ended { qid });
    }
}

/// One tag: fetch, then serve and commit each request the driver gives it, until the driver
/// aborts the tag (`Err(ENODEV)`: the device stopped) or a command fails.
async fn serve_tag(
    q: &Queue,
    tag: u16,
    shard: Option<&Shard>,
    null: bool,
    max_io: u32,
    bufs: &Rc<Buffers>,
) -> Result<(), i32> {
    let mode = q.transfer();
    // Transfer::Own: the tag's own buffer, given to the driver with every command.
    let mut own = (mode == Transfer::Own).then(|| vec![0u8; max_io as usize].into_boxed_slice());
    let own_addr = own.as_mut().map_or(0, |b| b.as_mut_ptr() as u64);
    let mut next = q.fetch(tag, own_addr).await?;
    loop {
        let iod = q.desc(tag);
        let d = to_desc(&iod, tag);
        // A borrowed buffer where the tag has none and the request moves data through one:
        // every request but a null device's under user copy (which copies nothing).
        // (Flush, discard and write-zeroes carry no data: they need none.)
        let data_op = d.is_some_and(|d| matches!(d.op, Op::Read | Op::Write));
        let mut lease = match d {
            Some(d)
                if data_op && mode != Transfer::Own && !(null && mode == Transfer::UserCopy) =>
            {
                Some(lease(bufs, d, max_io).await)
            }
            _ => None,
        };
        if next == Next::NeedData {
            match (&mut lease, d) {
                (Some(l), Some(d)) if l.len() >= d.len as usize => q.get_data(tag, l).await?,
                // A write's payload must be fetched before anything else happens to the tag.
                _ => return Err(libc::EPROTO),
            }
        }
        let res = match (d, shard) {
            (None, _) => -libc::EOPNOTSUPP,
            (Some(d), _) if null => d.len as i32,
            (Some(_), None) => -libc::EIO,
            (Some(d), Some(s)) => {
                let r = match (mode, own.as_mut(), lease.as_mut()) {
                    (Transfer::UserCopy, _, Some(l)) => user_copy_io(q, tag, d, l, s).await,
                    (_, Some(b), _) => s.handle(d, b).await.map_err(|e| e.errno()),
                    (_, _, Some(l)) => s.handle(d, l).await.map_err(|e| e.errno()),
                    _ if !data_op => s.handle(d, &mut []).await.map_err(|e| e.errno()),
                    _ => Err(libc::EIO),
                };
                outcome(q, tag, d, r)
            }
        };
        next = match (mode, lease) {
            // The driver copies a read's data out of the lease while the ring hands it the
            // commit (queue.rs): keep the lease until then, not until the next request.
            (Transfer::GetData, Some(l)) if d.is_some_and(|d| d.op == Op::Read) => {
                let commit = q.commit(tag, l.as_ptr() as u64, res);
                let mut commit = std::pin::pin!(commit);
                let pushed = futures_lite::future::poll_once(commit.as_mut()).await;
                if pushed.is_none() {
                    ring::entered().await;
                }
                drop(l);
                match pushed {
                    Some(r) => r?,
                    None => commit.await?,
                }
            }
            (Transfer::Own, _) => q.commit(tag, own_addr, res).await?,
            (_, l) => {
                drop(l);
                q.commit(tag, 0, res).await?
            }
        };
    }
}

/// A zero-copy queue's place in its core ring's buffer table.
#[derive(Clone, Copy)]
struct Zc {
    /// The entry of tag 0 (tag t has `first + t`).
    first: u16,
    /// Whether the ring reads sockets into registered buffers.
    ring_reads: bool,
}

/// What a zero-copy tag shares with its queue.
struct TagZc<'a> {
    zc: Zc,
    /// Whether the queue's next requests are registered (`zero_copy::Registering`).
    registering: &'a zero_copy::Registering,
}

/// One tag of a zero-copy queue (`Transfer::AutoReg`): the driver registers each request's
/// pages at the tag's entry before handing it over, and the shard sends from or reads into
/// them ([`Data::Kernel`]) — unless the queue has only been given small requests lately
/// (`zero_copy::Registering`: the tag then names no entry). A request that was not
/// registered (flagged NEED_REG_BUF: not asked for, or the registration failed) is served
/// by user copy: a read's data goes into its pages with `pwrite` from what the connection
/// received, a write's payload is copied out into a borrowed buffer. Ends as [`serve_tag`]
/// does.
async fn serve_tag_zc(
    q: &Queue,
    tag: u16,
    shard: Option<&Shard>,
    null: bool,
    max_io: u32,
    bufs: &Rc<Buffers>,
    t: TagZc<'_>,
) -> Result<(), i32> {
    let (zc, registering) = (t.zc, t.registering);
    let index = zc.first + tag;
    q.fetch_reg(tag, registering.entry(index)).await?;
    loop {
        let iod = q.desc(tag);
        let d = to_desc(&iod, tag);
        let unregistered = iod.op_flags & libublk::sys::UBLK_IO_F_NEED_REG_BUF != 0;
        if let Some(d) = d {
            registering.saw(matches!(d.op, Op::Read | Op::Write), d.len);
        }
        let res = match (d, shard) {
            (None, _) => -libc::EOPNOTSUPP,
            (Some(d), _) if null => d.len as i32,
            (Some(_), None) => -libc::EIO,
            (Some(d), Some(s)) => {
                let data_op = matches!(d.op, Op::Read | Op::Write);
                // A small write is copied out of the pages (user copy) and sent with the
                // other queued requests in one SENDMSG (see `shard::ZC_SEND_MIN`).
                let small_write = d.op == Op::Write && d.len < crate::shard::ZC_SEND_MIN;
                let k = KernelBuf {
                    index,
                    fd: q.fd(),
                    pos: q.pos(tag),
                    off: 0,
                    len: d.len,
                    ring_reads: zc.ring_reads,
                };
                let r = if data_op && unregistered && d.op == Op::Read {
                    // Not registered: the data still goes into the pages, by user copy
                    // (`pwrite`) from what the connection received — no buffer borrowed.
                    s.zero_copy(ZcPath::Unregistered);
                    let k = KernelBuf { index: zero_copy::NO_ENTRY, ring_reads: false, ..k };
                    s.handle_data(d, Data::Kernel(k)).await.map_err(|e| e.errno())
                } else if data_op && (unregistered || small_write) {
                    s.zero_copy(if unregistered { ZcPath::Unregistered } else { ZcPath::Copied });
                    let mut l = lease(bufs, d, max_io).await;
                    user_copy_io(q, tag, d, &mut l, s).await
                } else if data_op {
                    s.zero_copy(ZcPath::Pages);
                    s.handle_data(d, Data::Kernel(k)).await.map_err(|e| e.errno())
                } else {
                    s.handle_data(d, Data::Mem(&mut [])).await.map_err(|e| e.errno())
                };
                outcome(q, tag, d, r)
            }
        };
        q.commit_reg(tag, registering.entry(index), res).await?;
    }
}

/// A buffer from the core's pool for `d`'s data (at most `max_io`, at least a page).
async fn lease(bufs: &Rc<Buffers>, d: crate::block::IoDesc, max_io: u32) -> super::buffers::Lease {
    bufs.get((d.len as usize).min(max_io as usize).max(4096)).await
}

/// The commit result of a served request: the bytes done, or -errno (logged at debug).
fn outcome(q: &Queue, tag: u16, d: crate::block::IoDesc, r: Result<u32, i32>) -> i32 {
    match r {
        Ok(n) => n as i32,
        Err(errno) => {
            tracing::debug!(
                "queue {} tag {tag}: {:?} at {}+{}: errno {errno}",
                q.qid(),
                d.op,
                d.offset,
                d.len
            );
            -errno
        }
    }
}

/// Serve `d` with a borrowed buffer: a write's payload is copied in first, a read's data out
/// after (module contract of `queue.rs`).
async fn user_copy_io(
    q: &Queue,
    tag: u16,
    d: crate::block::IoDesc,
    buf: &mut [u8],
    s: &Shard,
) -> Result<u32, i32> {
    let len = d.len as usize;
    let io_err = |e: io::Error| {
        tracing::warn!("queue {} tag {tag}: user copy: {e}", q.qid());
        libc::EIO
    };
    if d.op == Op::Write {
        q.copy_in(tag, buf.get_mut(..len).ok_or(libc::EINVAL)?).map_err(io_err)?;
    }
    let n = s.handle(d, buf).await.map_err(|e| e.errno())?;
    if d.op == Op::Read {
        q.copy_out(tag, &buf[..len]).map_err(io_err)?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::core_of;

    #[test]
    fn a_queue_per_core_puts_queue_q_of_every_device_on_core_q() {
        for dev in 0..8 {
            for q in 0..4 {
                assert_eq!(core_of(q, 4, dev, 4), usize::from(q));
            }
        }
        // More queues than cores: q mod cores.
        assert_eq!(core_of(5, 8, 3, 4), 1);
    }

    #[test]
    fn devices_with_fewer_queues_than_cores_fill_the_cores_in_turn() {
        let mut load = [0u32; 4];
        for dev in 0..32 {
            let cores: Vec<usize> = (0..2).map(|q| core_of(q, 2, dev, 4)).collect();
            assert_ne!(cores[0], cores[1], "a device's queues are on distinct cores");
            cores.iter().for_each(|&c| load[c] += 1);
        }
        assert_eq!(load, [16; 4]);
        let one: Vec<usize> = (0..6).map(|dev| core_of(0, 1, dev, 2)).collect();
        assert_eq!(one, [0, 1, 0, 1, 0, 1]);
        assert_eq!(core_of(0, 1, u32::MAX, 3), (u32::MAX as usize) % 3);
    }
}
