//! The kernel side: a ublk device whose queues are shards.
//!
//! Contract:
//! - The daemon starts its [`Cores`] once: one pinned thread per core, each with one ring
//!   that serves queue q of every device and the sheep connections (`cores.rs`).
//! - [`start`] creates the device (libublk 0.4.8 for the control commands), hands queue q
//!   to core q mod cores (`cores::core_of`), where one task per tag loops fetch →
//!   [`IoDesc`] → `Shard::handle` → commit (`queue.rs`: the queue protocol, since
//!   libublk's `UblkQueue` allows one queue per thread), and starts it. [`stop`] ends it;
//!   [`Ended::wait`] waits for every queue to have let go, then deletes the device.
//! - Device limits follow the VDI: size = `vdi_size`, `chunk_sectors` = object size (no
//!   request crosses an object; the shard splits defensively anyway), `max_sectors` =
//!   `max_io` ≤ object size, discard granularity = object size. No volatile cache is
//!   declared: a write completes only once it is durable.
//! - `Target::Null` completes every request at once (the ublk ceiling for benchmarks).
//! - Devices are created with user recovery and reissue ([`recovery_flags`]) when the driver
//!   has them: if the daemon exits or dies, the kernel keeps `/dev/ublkbN`, quiesces it
//!   and holds its I/O; a later [`start`] with `Spec::recover` re-attaches it
//!   (START_USER_RECOVERY, queues rebuilt with `UBLK_DEV_F_RECOVER_DEV`, then
//!   END_USER_RECOVERY by `start_dev`) and the held requests are served. A failed
//!   re-attach leaves the device as it was (quiesced), never deletes it.
//! - Features are asked of the driver at run time ([`features`]); a device records the
//!   flags it was created with, and [`features::resize`] grows it live where UPDATE_SIZE is.

mod buffers;
mod cores;
pub mod features;
mod queue;
pub mod zero_copy;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use libublk::ctrl::{UblkCtrl, UblkCtrlBuilder};
use libublk::io::UblkDev;
use libublk::{sys, UblkError, UblkFlags};

pub use cores::Cores;
use cores::{Attach, Event, QueueTarget};

use crate::block::{IoDesc, Op};
use crate::metrics::DeviceMetrics;
use crate::shard;
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
    /// Each tag keeps its own `max_io` buffer (the driver copies into and out of it) instead
    /// of borrowing one from its core's pool per request (`add --own-buffers`): a few
    /// percent more IOPS for `queues × depth × max_io` bytes of the device's own.
    pub own_buffers: bool,
    /// Serve from the requests' own pages (`zero_copy::decide` said yes): no buffers at all,
    /// writes sent from the pages, reads received into them.
    pub zero_copy: bool,
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
    /// `add --zero-copy on` where this kernel cannot (the line says why).
    #[error("{0}")]
    NoZeroCopy(String),
    /// The core thread a queue belongs to has ended.
    #[error("core {core} (queue {queue}) is gone")]
    CoreGone { core: usize, queue: u16 },
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
            Error::Ctrl { .. } | Error::Run(_) | Error::CoreGone { .. } => libc::EIO,
            Error::State { .. } => libc::EBUSY,
            Error::NoId => libc::EINVAL,
            Error::NoZeroCopy(_) => libc::EOPNOTSUPP,
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
    match features::driver() {
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

/// How a new device's request data moves (`queue.rs`'s `Transfer`): a sheep device asks for
/// NEED_GET_DATA where the driver has it, so a request borrows a core buffer only while in
/// flight and a read's data goes back with its commit (no extra syscall; user copy costs a
/// `pwrite` per read: measured in tuning/README.md); a null device asks for USER_COPY,
/// under which it copies nothing at all (the ublk ceiling). Neither where the driver lacks
/// it, or cannot say (GET_FEATURES, 6.5+), or the device asked for `own` buffers: then
/// every tag has its own buffer.
fn data_flag(null: bool, own: bool) -> u64 {
    if own && !null {
        return 0;
    }
    let want = if null { sys::UBLK_F_USER_COPY } else { sys::UBLK_F_NEED_GET_DATA };
    if features::has(want) {
        u64::from(want)
    } else {
        0
    }
}

/// A device being served by the cores; see [`start`].
pub struct Device {
    pub id: u32,
    pub metrics: Option<DeviceMetrics>,
    /// Whether the device has user recovery (it survives the daemon; see [`recovery_flags`]).
    pub recoverable: bool,
    /// The ublk flags the device has (see [`features`]).
    pub flags: u64,
    pub ended: Ended,
}

/// The end of a device: its queues reporting that the driver stopped them.
pub struct Ended {
    ctrl: UblkCtrl,
    events: mpsc::Receiver<Event>,
    left: u16,
}

impl Ended {
    /// Wait (blocking) at most `timeout` for every queue to end — after [`stop`] — then
    /// delete the device from the kernel. `false` when some queue did not end in time; the
    /// device is then left to a later `del` (deleting it now could wait forever on a queue
    /// that still holds its char device).
    pub fn wait(mut self, timeout: Duration) -> bool {
        let until = std::time::Instant::now() + timeout;
        while self.left > 0 {
            let rest = until.saturating_duration_since(std::time::Instant::now());
            match self.events.recv_timeout(rest) {
                Ok(Event::Ended { qid }) => {
                    tracing::debug!("device {} queue {qid} ended", self.ctrl.dev_info().dev_id);
                    self.left -= 1
                }
                Ok(_) => {}
                Err(_) => {
                    self.ctrl.disown();
                    return false;
                }
            }
        }
        let _ = self.ctrl.del_dev();
        true
    }
}

/// Create the device (or re-attach it, with `Spec::recover`), attach its queues to the
/// cores (queue q to core q mod cores, `cores::core_of`) and start it; returns once
/// `/dev/ublkbN` serves I/O.
/// Blocking (control commands): run it off the control plane's executor. A device that
/// fails to start is stopped again and, unless it was being re-attached, deleted; a failed
/// re-attach leaves it as it was (quiesced).
pub fn start(spec: Spec, abort: Abort, cores: &Cores) -> Result<Device, Error> {
    let max_io = spec.effective_max_io();
    let size = spec.size();
    let recover = spec.recover;
    let null = matches!(spec.target, Target::Null { .. });
    let ctrl = match (recover, spec.id) {
        (true, Some(id)) => attach(id, &spec, max_io)?,
        (true, None) => return Err(Error::NoId),
        (false, _) => UblkCtrlBuilder::default()
            .name("sheepdev")
            .id(spec.id.map_or(-1, |i| i as i32))
            .nr_queues(spec.queues)
            .depth(spec.depth)
            .io_buf_bytes(max_io)
            .ctrl_flags(
                recovery_flags()
                    | if spec.zero_copy && !null {
                        zero_copy::flags()
                    } else {
                        data_flag(null, spec.own_buffers)
                    }
                    | features::quiesce_flag(),
            )
            .dev_flags(UblkFlags::UBLK_DEV_F_ADD_DEV)
            .build()
            .map_err(ctrl_err("cannot create the ublk device".into()))?,
    };
    let flags = ctrl.dev_info().flags;
    let recoverable = flags & u64::from(sys::UBLK_F_USER_RECOVERY) != 0;
    let (bs_shift, os_sectors) =
        (spec.block_size.trailing_zeros() as u8, (spec.object_size() >> 9) as u32);
    let read_only = spec.read_only;
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
        Ok(())
    };
    let id = ctrl.dev_info().dev_id;
    let queues = ctrl.dev_info().nr_hw_queues;
    let dev = Arc::new(
        UblkDev::new("sheepdev".into(), tgt_init, &ctrl)
            .map_err(ctrl_err(format!("cannot open ublk device {id}")))?,
    );
    let dm = spec.metrics.as_ref().map(|(vdi, snap)| {
        DeviceMetrics::new(&format!("ublkb{id}"), vdi, snap, read_only, queues, spec.depth, size)
    });
    let target = Arc::new(match spec.target {
        Target::Sheep { vol, gateways, connections } => {
            let cfg = shard::Config {
                connections,
                max_io: max_io as usize,
                io_timeout: spec.io_timeout,
                ..shard::Config::new(gateways)
            };
            QueueTarget::Sheep { vol, cfg }
        }
        Target::Null { .. } => QueueTarget::Null,
    });
    let (tx, events) = mpsc::channel();
    let mut ended = Ended { ctrl, events, left: 0 };
    let fail = |ended: Ended, e: Error| {
        // Queues already fetching end when the driver aborts them (STOP_DEV).
        let _ = ended.ctrl.kill_dev();
        if recover {
            ended.ctrl.disown();
        }
        ended.wait(Duration::from_secs(10));
        Err(e)
    };
    for qid in 0..queues {
        let a = Attach {
            dev: dev.clone(),
            qid,
            target: target.clone(),
            abort: abort.clone(),
            max_io,
            metrics: dm.clone(),
            events: tx.clone(),
        };
        if let Err(e) = cores.attach(a) {
            return fail(ended, e);
        }
        ended.left += 1;
    }
    drop(tx);
    for _ in 0..queues {
        match ended.events.recv_timeout(Duration::from_secs(30)) {
            Ok(Event::Ready { qid, tid }) => {
                let _ = ended.ctrl.configure_queue(&dev, qid, tid);
            }
            Ok(Event::Failed { qid, why }) => {
                ended.left -= 1;
                let why = format!("queue {qid}: {why}");
                return fail(ended, Error::State { id, why });
            }
            Ok(Event::Ended { .. }) => ended.left -= 1,
            Err(_) => {
                let why = "did not get its queues ready within 30 s".to_string();
                return fail(ended, Error::State { id, why });
            }
        }
    }
    if let Err(e) = ended.ctrl.start_dev(&dev) {
        let e = ctrl_err(format!("cannot start ublk device {id}"))(e);
        return fail(ended, e);
    }
    Ok(Device { id, metrics: dm, recoverable, flags, ended })
}

/// Stop device `id` (its queues end; see [`Ended::wait`]). With `abort`, raise it first so
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
