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
//! - Devices are created with user recovery and reissue ([`recovery_flags`]) when the driver
//!   has them: if the daemon exits or dies, the kernel keeps `/dev/ublkbN`, quiesces it
//!   and holds its I/O; a later [`run`] with `Spec::recover` re-attaches it
//!   (START_USER_RECOVERY, queues rebuilt with `UBLK_DEV_F_RECOVER_DEV`, then
//!   END_USER_RECOVERY by `start_dev`) and the held requests are served. A failed
//!   re-attach leaves the device as it was (quiesced), never deletes it.

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libublk::ctrl::{UblkCtrl, UblkCtrlBuilder};
use libublk::helpers::IoBuf;
use libublk::io::{UblkDev, UblkQueue};
use libublk::{sys, BufDesc, UblkError, UblkFlags};

use crate::block::{IoDesc, Op};
use crate::metrics::DeviceMetrics;
use crate::shard::{self, Shard};
use crate::sheep::Gateway;
use crate::vdi::Volume;

/// What serves the device's I/O.
pub enum Target {
    Sheep { vol: Arc<Volume>, gateways: Vec<Gateway>, connections: usize },
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
    /// Re-attach the existing, quiesced device `id` (left by a daemon that exited or died)
    /// instead of creating one. Its queues, depth and buffer size must match this spec.
    pub recover: bool,
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

/// Errors of the ublk layer: the driver, the control commands, the device's state.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open /dev/ublk-control ({0}): is the ublk_drv module loaded (modprobe ublk_drv) and are you root?")]
    NoDriver(std::io::Error),
    /// A control command failed (`what` names it, with the device).
    #[error("{what}: {source}")]
    Ctrl { what: String, source: UblkError },
    /// The device exists but is not in a state this operation can take.
    #[error("ublk device {id} {why}")]
    State { id: u32, why: String },
    #[error("re-attaching a device needs its id")]
    NoId,
    #[error("ublk device failed: {0}")]
    Run(UblkError),
}

impl Error {
    pub fn errno(&self) -> i32 {
        match self {
            Error::NoDriver(e) => e.raw_os_error().unwrap_or(libc::ENODEV),
            Error::Ctrl {
                source: UblkError::OtherError(n) | UblkError::UringIOError(n), ..
            } => n.abs(),
            Error::Ctrl { source: UblkError::IOError(e), .. } => {
                e.raw_os_error().unwrap_or(libc::EIO)
            }
            Error::Ctrl { .. } | Error::Run(_) => libc::EIO,
            Error::State { .. } => libc::EBUSY,
            Error::NoId => libc::EINVAL,
        }
    }
    /// Nothing in this layer is fixed by a new sheep connection.
    pub fn should_reconnect(&self) -> bool {
        false
    }
}

fn ctrl_err(what: String) -> impl FnOnce(UblkError) -> Error {
    move |source| Error::Ctrl { what, source }
}

/// Whether this kernel can create ublk devices.
pub fn available() -> Result<(), Error> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/ublk-control")
        .map(|_| ())
        .map_err(Error::NoDriver)
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
    Some(IoDesc {
        op,
        offset: iod.start_sector << 9,
        len: iod.nr_sectors << 9,
        tag,
        fua: iod.op_flags & sys::UBLK_IO_F_FUA != 0,
    })
}

/// What `run` reports once the device is up.
pub struct Started {
    pub id: u32,
    pub metrics: Option<DeviceMetrics>,
    /// Whether the device has user recovery (it survives the daemon; see [`recovery_flags`]).
    pub recoverable: bool,
}

/// The ublk flags a new device gets: `UBLK_F_USER_RECOVERY | UBLK_F_USER_RECOVERY_REISSUE`
/// when the driver has both (Linux 6.1+; asked with GET_FEATURES where the kernel has it,
/// 6.5+), else none (the device then dies with the daemon).
///
/// Why REISSUE rather than plain USER_RECOVERY: when the daemon dies, the requests it had
/// taken from the kernel and not completed are, with USER_RECOVERY alone, failed with EIO;
/// with REISSUE they are requeued and issued again to the next daemon. None of them was
/// acknowledged, so the filesystem above allows any outcome for them, but an EIO on a
/// write during an upgrade is exactly what recovery exists to avoid (ext4 aborts its
/// journal on one). Issuing a request again is safe here: a read, a write of the same
/// bytes at the same offset, a discard or a write-zeroes gives the same result whether or
/// not the first attempt reached sheep, and the next daemon reloads the inode, so a
/// copy-on-write the first attempt finished is seen as done and one it did not is redone.
/// Acknowledged writes are already durable in sheep (no volatile cache is declared), so
/// nothing else needs replaying.
pub fn recovery_flags() -> u64 {
    let want = u64::from(sys::UBLK_F_USER_RECOVERY | sys::UBLK_F_USER_RECOVERY_REISSUE);
    match UblkCtrl::get_features() {
        Some(f) if f & want != want => {
            tracing::warn!("this kernel's ublk driver has no user recovery: devices will not survive a daemon restart");
            0
        }
        _ => want,
    }
}

/// Whether process `pid` is alive (a zombie is not: its files are closed).
fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) S ...": the state follows the last ')'.
        Ok(s) => s
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|c| c != 'Z' && c != 'X'),
        Err(_) => false,
    }
}

fn state_name(state: u16) -> String {
    match u32::from(state) {
        sys::UBLK_S_DEV_DEAD => "stopped".into(),
        sys::UBLK_S_DEV_LIVE => "live".into(),
        sys::UBLK_S_DEV_QUIESCED => "quiesced".into(),
        sys::UBLK_S_DEV_FAIL_IO => "failing I/O".into(),
        s => format!("in state {s}"),
    }
}

/// How long [`attach`] waits for the process that served a live device to go away.
const OLD_DAEMON_WAIT: Duration = Duration::from_secs(15);

/// Open device `id` for re-attaching and start its recovery (START_USER_RECOVERY).
///
/// The device must have user recovery and the geometry `spec` gives. It is normally
/// quiesced; a live device whose serving process is gone is accepted too (the kernel
/// quiesces it a few seconds after its daemon died and START_USER_RECOVERY answers EBUSY
/// until then, which libublk retries for 30 s). A live device whose process still runs is
/// refused after [`OLD_DAEMON_WAIT`].
fn attach(id: u32, spec: &Spec, max_io: u32) -> Result<UblkCtrl, Error> {
    let ctrl = UblkCtrlBuilder::default()
        .name("sheepdev")
        .id(id as i32)
        .nr_queues(spec.queues)
        .depth(spec.depth)
        .io_buf_bytes(max_io)
        .ctrl_flags(u64::from(sys::UBLK_F_USER_RECOVERY | sys::UBLK_F_USER_RECOVERY_REISSUE))
        .dev_flags(UblkFlags::UBLK_DEV_F_RECOVER_DEV)
        .build()
        .map_err(ctrl_err(format!("cannot open ublk device {id}")))?;
    let mut info = ctrl.dev_info();
    if info.flags & u64::from(sys::UBLK_F_USER_RECOVERY) == 0 {
        let why = format!("was created without user recovery and cannot be re-attached (remove it with `sheepdev del --id {id}`)");
        return Err(Error::State { id, why });
    }
    if (info.nr_hw_queues, info.queue_depth, info.max_io_buf_bytes)
        != (spec.queues, spec.depth, max_io)
    {
        let why = format!(
            "has {} queues of depth {} with {}-byte buffers, the device table says {}, {} and {}: not re-attaching",
            info.nr_hw_queues, info.queue_depth, info.max_io_buf_bytes, spec.queues, spec.depth, max_io
        );
        return Err(Error::State { id, why });
    }
    let t0 = std::time::Instant::now();
    while u32::from(info.state) == sys::UBLK_S_DEV_LIVE && pid_alive(info.ublksrv_pid) {
        if t0.elapsed() > OLD_DAEMON_WAIT {
            return Err(Error::State {
                id,
                why: format!("is live and served by process {}", info.ublksrv_pid),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
        ctrl.read_dev_info().map_err(ctrl_err(format!("reading ublk device {id}")))?;
        info = ctrl.dev_info();
    }
    if !matches!(u32::from(info.state), sys::UBLK_S_DEV_LIVE | sys::UBLK_S_DEV_QUIESCED) {
        let why =
            format!("is {}, not quiesced: there is nothing to re-attach", state_name(info.state));
        return Err(Error::State { id, why });
    }
    match ctrl.start_user_recover() {
        Ok(r) if r >= 0 => Ok(ctrl),
        Ok(r) => {
            let why = format!(
                "did not become recoverable within 30 s ({}): is its old daemon still exiting?",
                std::io::Error::from_raw_os_error(-r)
            );
            Err(Error::State { id, why })
        }
        Err(e) => Err(ctrl_err(format!("cannot start recovering ublk device {id}"))(e)),
    }
}

/// Create the device (or re-attach it, with `Spec::recover`) and serve it until it is
/// deleted. `started` gets the device id (and its metrics) once `/dev/ublkbN` serves I/O.
/// Blocking: run it on its own thread.
pub fn run(
    spec: Spec,
    abort: Abort,
    started: impl FnOnce(Started) + Send + Sync + 'static,
) -> Result<(), Error> {
    let max_io = spec.effective_max_io();
    let size = spec.size();
    let recover = spec.recover;
    let ctrl = match (recover, spec.id) {
        (true, Some(id)) => attach(id, &spec, max_io)?,
        (true, None) => return Err(Error::NoId),
        (false, _) => UblkCtrlBuilder::default()
            .name("sheepdev")
            .id(spec.id.map_or(-1, |i| i as i32))
            .nr_queues(spec.queues)
            .depth(spec.depth)
            .io_buf_bytes(max_io)
            .ctrl_flags(recovery_flags())
            .dev_flags(UblkFlags::UBLK_DEV_F_ADD_DEV)
            .build()
            .map_err(ctrl_err("cannot create the ublk device".into()))?,
    };
    let recoverable = ctrl.dev_info().flags & u64::from(sys::UBLK_F_USER_RECOVERY) != 0;
    let (bs_shift, os_sectors) =
        (spec.block_size.trailing_zeros() as u8, (spec.object_size() >> 9) as u32);
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
    let dm = spec.metrics.as_ref().map(|(vdi, snap)| {
        DeviceMetrics::new(&format!("ublkb{id}"), vdi, snap, read_only, spec.queues, depth, size)
    });
    let target = Arc::new(match spec.target {
        Target::Sheep { vol, gateways, connections } => {
            let cfg = shard::Config {
                connections,
                slots: usize::from(depth) * 2 + 8,
                max_io: max_io as usize,
                io_timeout: spec.io_timeout,
                ..shard::Config::new(gateways)
            };
            QueueTarget::Sheep { vol, cfg }
        }
        Target::Null { .. } => QueueTarget::Null,
    });
    let started = Mutex::new(Some(started));
    let dm2 = dm.clone();
    let r = ctrl.run_target(
        tgt_init,
        move |qid, dev| serve_queue(qid, dev, &target, &abort, max_io, dm2.as_ref()),
        move |ctrl| {
            let id = ctrl.dev_info().dev_id;
            if let Some(f) =
                started.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take()
            {
                f(Started { id, metrics: dm, recoverable });
            }
        },
    );
    // A device that was stopped (`del`), or a new one that failed, is deleted. A failed
    // re-attach leaves the device quiesced for another try or a `del`.
    if r.is_ok() || !recover {
        let _ = ctrl.del_dev();
    }
    r.map(|_| ()).map_err(Error::Run)
}

enum QueueTarget {
    Sheep { vol: Arc<Volume>, cfg: shard::Config },
    Null,
}

/// One queue thread: pin, connect, one task per tag, run the ring until the queue stops.
fn serve_queue(
    qid: u16,
    dev: &UblkDev,
    target: &QueueTarget,
    abort: &Abort,
    max_io: u32,
    dm: Option<&DeviceMetrics>,
) {
    crate::shard::pin_thread(usize::from(qid));
    let q = match UblkQueue::new(qid, dev) {
        Ok(q) => Rc::new(q),
        Err(e) => {
            tracing::error!("queue {qid}: cannot set up: {e}");
            return;
        }
    };
    let exe = crate::shard::exec::LocalExecutor::new();
    if let Err(e) = crate::shard::ring::answer_doorbell(&exe) {
        tracing::error!("queue {qid}: {e}");
        return;
    }
    let depth = dev.dev_info.queue_depth as usize;
    let shard = match target {
        QueueTarget::Null => None,
        QueueTarget::Sheep { vol, cfg } => {
            let metrics = dm.map(|device| shard::QueueMetrics {
                device: device.clone(),
                queue: qid,
                depth: depth as u16,
            });
            let cfg = shard::Config { metrics, abort: Some(abort.clone()), ..cfg.clone() };
            match Shard::start(&cfg, vol.clone(), &exe) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::error!(
                        "queue {qid}: cannot connect to sheep: {e}; every request fails with EIO"
                    );
                    None
                }
            }
        }
    };
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
    futures_lite::future::block_on(async {
        let run_ops = || crate::shard::ring::run_ready(&exe);
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
    });
}

async fn serve_tag(
    q: &UblkQueue<'_>,
    tag: u16,
    shard: Option<&Shard>,
    null: bool,
    max_io: u32,
) -> Result<(), UblkError> {
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
                    tracing::debug!(
                        "queue {} tag {tag}: {:?} at {}+{}: {e}",
                        q.get_qid(),
                        d.op,
                        d.offset,
                        d.len
                    );
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
pub fn stop(id: u32, abort: Option<&Abort>) -> Result<(), Error> {
    if let Some(a) = abort {
        a.store(true, Ordering::Relaxed);
    }
    let ctrl = UblkCtrl::new_simple(id as i32).map_err(ctrl_err(format!("no ublk device {id}")))?;
    ctrl.kill_dev().map_err(ctrl_err(format!("cannot stop ublk device {id}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_alive_sees_this_process_and_not_a_missing_one() {
        assert!(pid_alive(std::process::id() as i32));
        // Above any pid_max the kernel allows (2^22).
        assert!(!pid_alive(i32::MAX));
        assert!(!pid_alive(-1));
    }

    #[test]
    fn state_names() {
        assert_eq!(state_name(sys::UBLK_S_DEV_QUIESCED as u16), "quiesced");
        assert_eq!(state_name(sys::UBLK_S_DEV_DEAD as u16), "stopped");
        assert_eq!(state_name(9), "in state 9");
    }
}
