//! The kernel side: a ublk device whose queues are shards.
//!
//! Contract:
//! - [`run`] creates the device (libublk 0.4.8), starts one thread per hardware queue,
//!   pins it to one core (core_affinity), and on that thread builds the queue's ring, the
//!   shard's sheep connections on the same ring, and one task per tag looping
//!   fetch → [`IoDesc`] → [`Shard::handle`] → commit. It returns when the device is stopped
//!   (deleted), after every queue thread has closed its connections and drained its ring.
//! - Device limits follow the VDI: size = `vdi_size`, `chunk_sectors` = object size (no
//!   request crosses an object; the shard splits defensively anyway), `max_sectors` =
//!   `max_io` ≤ object size, discard granularity = object size. No volatile cache is
//!   declared: a write completes only once it is durable.
//! - `Target::Null` completes every request at once (the ublk ceiling for benchmarks).

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libublk::ctrl::{UblkCtrl, UblkCtrlBuilder};
use libublk::helpers::IoBuf;
use libublk::io::{UblkDev, UblkQueue};
use libublk::{sys, BufDesc, UblkError, UblkFlags};

use crate::metrics::DeviceMetrics;
use crate::shard::{IoDesc, Op, Shard};
use crate::vdi::Volume;

/// What serves the device's I/O.
pub enum Target {
    Sheep { vol: Arc<Volume>, gateways: Vec<SocketAddr>, connections: usize },
    Null { size: u64 },
}

/// How to build the device.
pub struct Spec {
    /// Device id (`/dev/ublkbN`); `None` lets the kernel choose.
    pub id: Option<u32>,
    pub queues: u16,
    pub depth: u16,
    /// Largest request in bytes (capped at the object size).
    pub max_io: u32,
    /// 512 or 4096.
    pub block_size: u32,
    pub read_only: bool,
    pub target: Target,
    /// Labels for the device's metrics: (vdi, snapshot). `None`: no metrics.
    pub metrics: Option<(String, String)>,
    /// How long a block request may wait for the cluster (zero: forever).
    pub io_timeout: Duration,
}

/// Raised by a forced delete: every shard of the device fails its requests at once instead
/// of waiting for the cluster.
pub type Abort = Arc<AtomicBool>;

impl Spec {
    fn size(&self) -> u64 {
        match &self.target {
            Target::Sheep { vol, .. } => vol.size(),
            Target::Null { size } => *size,
        }
    }
    fn object_size(&self) -> u64 {
        match &self.target {
            Target::Sheep { vol, .. } => 1 << vol.block_size_shift(),
            Target::Null { .. } => 4 << 20,
        }
    }
    /// `max_io` after the object-size cap, rounded to the block size.
    pub fn effective_max_io(&self) -> u32 {
        let m = u64::from(self.max_io).min(self.object_size()).max(u64::from(self.block_size));
        (m - m % u64::from(self.block_size)) as u32
    }
}

/// Whether this kernel can create ublk devices.
pub fn available() -> Result<(), String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/ublk-control")
        .map(|_| ())
        .map_err(|e| format!("cannot open /dev/ublk-control ({e}): is the ublk_drv module loaded (modprobe ublk_drv) and are you root?"))
}

fn to_desc(iod: &sys::ublksrv_io_desc, tag: u16) -> Option<IoDesc> {
    let op = match iod.op_flags & 0xff {
        sys::UBLK_IO_OP_READ => Op::Read,
        sys::UBLK_IO_OP_WRITE => Op::Write,
        sys::UBLK_IO_OP_FLUSH => Op::Flush,
        sys::UBLK_IO_OP_DISCARD => Op::Discard,
        sys::UBLK_IO_OP_WRITE_ZEROES => Op::WriteZeroes,
        _ => return None,
    };
    Some(IoDesc { op, offset: iod.start_sector << 9, len: iod.nr_sectors << 9, tag, fua: iod.op_flags & sys::UBLK_IO_F_FUA != 0 })
}

/// What `run` reports once the device is up.
pub struct Started {
    pub id: u32,
    pub metrics: Option<DeviceMetrics>,
}

/// Create the device and serve it until it is deleted. `started` gets the device id (and
/// its metrics) once `/dev/ublkbN` exists. Blocking: run it on its own thread.
pub fn run(spec: Spec, abort: Abort, started: impl FnOnce(Started) + Send + Sync + 'static) -> Result<(), String> {
    let max_io = spec.effective_max_io();
    let size = spec.size();
    let ctrl = UblkCtrlBuilder::default()
        .name("sheepdev")
        .id(spec.id.map_or(-1, |i| i as i32))
        .nr_queues(spec.queues)
        .depth(spec.depth)
        .io_buf_bytes(max_io)
        .dev_flags(UblkFlags::UBLK_DEV_F_ADD_DEV)
        .build()
        .map_err(|e| format!("cannot create the ublk device: {e}"))?;
    let (bs_shift, os_sectors) = (spec.block_size.trailing_zeros() as u8, (spec.object_size() >> 9) as u32);
    let (read_only, depth) = (spec.read_only, spec.depth);
    let tgt_init = move |dev: &mut UblkDev| {
        dev.set_default_params(size);
        let p = &mut dev.tgt.params;
        p.types = sys::UBLK_PARAM_TYPE_BASIC | sys::UBLK_PARAM_TYPE_DISCARD;
        p.basic.attrs = if read_only { sys::UBLK_ATTR_READ_ONLY } else { 0 };
        p.basic.logical_bs_shift = bs_shift;
        p.basic.physical_bs_shift = bs_shift.max(12);
        p.basic.io_min_shift = bs_shift.max(12);
        p.basic.io_opt_shift = bs_shift.max(12);
        p.basic.max_sectors = max_io >> 9;
        p.basic.chunk_sectors = os_sectors;
        p.discard.discard_granularity = os_sectors << 9;
        p.discard.max_discard_sectors = u32::MAX >> 9;
        p.discard.max_write_zeroes_sectors = u32::MAX >> 9;
        p.discard.max_discard_segments = 1;
        // Room on the ring for the tags' commands and the sheep sockets' SQEs.
        dev.tgt.sq_depth = depth.saturating_mul(4).max(128);
        dev.tgt.cq_depth = depth.saturating_mul(4).max(128);
        Ok(())
    };
    let id = ctrl.dev_info().dev_id;
    let dm = spec.metrics.as_ref().map(|(vdi, snap)| DeviceMetrics::new(&format!("ublkb{id}"), vdi, snap, read_only, spec.queues, depth, size));
    let target = Arc::new(match spec.target {
        Target::Sheep { vol, gateways, connections } => QueueTarget::Sheep { vol, gateways, connections, io_timeout: spec.io_timeout },
        Target::Null { .. } => QueueTarget::Null,
    });
    let started = Mutex::new(Some(started));
    let dm2 = dm.clone();
    let r = ctrl.run_target(
        tgt_init,
        move |qid, dev| serve_queue(qid, dev, &target, &abort, max_io, dm2.as_ref()),
        move |ctrl| {
            let id = ctrl.dev_info().dev_id;
            if let Some(f) = started.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() {
                f(Started { id, metrics: dm });
            }
        },
    );
    let _ = ctrl.del_dev();
    r.map(|_| ()).map_err(|e| format!("ublk device failed: {e}"))
}

enum QueueTarget {
    Sheep { vol: Arc<Volume>, gateways: Vec<SocketAddr>, connections: usize, io_timeout: Duration },
    Null,
}

/// One queue thread: pin, connect, one task per tag, run the ring until the queue stops.
fn serve_queue(qid: u16, dev: &UblkDev, target: &QueueTarget, abort: &Abort, max_io: u32, dm: Option<&DeviceMetrics>) {
    crate::shard::pin_thread(usize::from(qid));
    let q = match UblkQueue::new(qid, dev) {
        Ok(q) => Rc::new(q),
        Err(e) => {
            tracing::error!("queue {qid}: cannot set up: {e}");
            return;
        }
    };
    let exe = Rc::new(smol::LocalExecutor::new());
    let depth = dev.dev_info.queue_depth as usize;
    let shard = match target {
        QueueTarget::Null => None,
        QueueTarget::Sheep { vol, gateways, connections, io_timeout } => {
            match Shard::new(vol.clone(), gateways, *connections, depth * 2 + 8, max_io as usize, &exe) {
                Ok(s) => {
                    let s = s.with_io_timeout(*io_timeout).with_abort(abort.clone());
                    let s = match dm {
                        Some(dm) => {
                            let m = dm.shard(qid, depth as u16, *connections, &s.gateway().to_string());
                            s.with_metrics(m)
                        }
                        None => s,
                    };
                    Some(Rc::new(s))
                }
                Err(e) => {
                    tracing::error!("queue {qid}: cannot connect to sheep: {e}; every request fails with EIO");
                    None
                }
            }
        }
    };
    if let Some(s) = &shard {
        exe.spawn(s.clone().tick()).detach();
    }
    let null = matches!(target, QueueTarget::Null);
    let tasks: Vec<_> = q
        .tags()
        .map(|tag| {
            let (q, shard) = (q.clone(), shard.clone());
            exe.spawn(async move {
                match serve_tag(&q, tag, shard.as_deref(), null, max_io).await {
                    Ok(()) | Err(UblkError::QueueIsDown) => {}
                    Err(e) => tracing::error!("queue {qid} tag {tag}: {e}"),
                }
            })
        })
        .collect();
    let exe2 = exe.clone();
    smol::block_on(exe.run(async {
        let run_ops = || while exe2.try_tick() {};
        let done = || {
            if q.is_stopping() {
                if let Some(s) = &shard {
                    s.close();
                }
            }
            tasks.iter().all(|t| t.is_finished()) && shard.as_ref().is_none_or(|s| s.is_quiet())
        };
        if let Err(e) = libublk::wait_and_handle_io_events(&q, Some(20), run_ops, done).await {
            tracing::error!("queue {qid}: ring failed: {e}");
        }
    }));
}

async fn serve_tag(q: &UblkQueue<'_>, tag: u16, shard: Option<&Shard>, null: bool, max_io: u32) -> Result<(), UblkError> {
    let mut buf = IoBuf::<u8>::new(max_io as usize);
    q.submit_io_prep_cmd(tag, BufDesc::Slice(buf.as_slice()), 0, Some(&buf)).await?;
    loop {
        let iod = *q.get_iod(tag);
        let res = match (to_desc(&iod, tag), shard) {
            (None, _) => -libc::EOPNOTSUPP,
            (Some(d), _) if null => d.len as i32,
            (Some(d), Some(s)) => match s.handle(d, buf.as_mut_slice()).await {
                Ok(n) => n as i32,
                Err(e) => {
                    tracing::debug!("queue {} tag {tag}: {:?} at {}+{}: {e}", q.get_qid(), d.op, d.offset, d.len);
                    -e.errno()
                }
            },
            (Some(_), None) => -libc::EIO,
        };
        q.submit_io_commit_cmd(tag, BufDesc::Slice(buf.as_slice()), res).await?;
    }
}

/// Stop device `id` (its queues end and [`run`] returns). With `abort`, raise it first so
/// requests waiting for an unreachable cluster fail at once instead of hanging the stop.
pub fn stop(id: u32, abort: Option<&Abort>) -> Result<(), String> {
    if let Some(a) = abort {
        a.store(true, Ordering::Relaxed);
    }
    let ctrl = UblkCtrl::new_simple(id as i32).map_err(|e| format!("no ublk device {id}: {e}"))?;
    ctrl.kill_dev().map_err(|e| format!("cannot stop ublk device {id}: {e}"))?;
    Ok(())
}
