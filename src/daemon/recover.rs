//! Devices that outlive the daemon: re-attaching what a previous daemon left, and the exit
//! on SIGTERM/SIGINT that leaves every device for the next one.
//!
//! Contract:
//! - [`Daemon::recover_all`] runs once at start, after the control socket is up: every
//!   persisted device the kernel still has is re-attached in turn ([`Daemon::reattach`]);
//!   every one it no longer has is dropped from the table with a log line (its VDI lock,
//!   if the table says we took one, is released).
//! - [`Daemon::reattach`] serves the device again with what the table recorded: the same
//!   vid, gateways, queues, depth, buffer size, block size, read-only flag, timeout and
//!   metric labels. On failure the device stays `orphaned` and quiesced (its I/O waits);
//!   nothing is deleted.
//! - [`Daemon::exit_on_signal`]: SIGTERM or SIGINT refuses new add/del/recover requests,
//!   waits (bounded) for those under way, persists the table, quiesces every device that
//!   has UBLK_F_QUIESCE when asked to (6.16+, `serve --quiesce auto`; bounded by
//!   [`QUIESCE_WAIT`]) and exits 0 without stopping any device: the kernel quiesces the
//!   others when the process's files close.

use std::rc::Rc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::state::{kernel_has, release, release_by_name, Busy, Daemon, Launched};
use super::{Error, Mapping};
use crate::proto::{VdiName, Vid, SD_RES_VDI_LOCKED};
use crate::sheep::{load_volume, Client, Config, Gateway};
use crate::ublk;
use crate::vdi::SnapSel;

/// The signal that asked the daemon to exit (0: none yet).
static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    SIGNAL.store(sig, Ordering::Relaxed);
}

/// Route SIGTERM and SIGINT to [`Daemon::exit_on_signal`] (through a flag it polls).
pub(super) fn catch_signals() -> std::io::Result<()> {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; the handler only
        // stores to an atomic, which is async-signal-safe; the pointers passed are valid for
        // the calls.
        let r = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// How long a SIGTERM exit waits for control requests under way (an `add` waits up to 60 s
/// for its device); the systemd unit's `TimeoutStopSec` is above it.
const EXIT_WAIT: Duration = Duration::from_secs(75);

/// How long a SIGTERM exit lets each device's requests in flight complete (QUIESCE_DEV).
const QUIESCE_WAIT: Duration = Duration::from_secs(3);

impl Daemon {
    /// Wait for SIGTERM/SIGINT, then exit leaving every device to the next daemon.
    pub(super) async fn exit_on_signal(self: Rc<Self>) {
        let sig = loop {
            glommio::timer::sleep(Duration::from_millis(100)).await;
            match SIGNAL.load(Ordering::Relaxed) {
                0 => {}
                s => break s,
            }
        };
        let name = if sig == libc::SIGINT { "SIGINT" } else { "SIGTERM" };
        self.stopping.set(true);
        let t0 = Instant::now();
        while self.busy.get() > 0 && t0.elapsed() < EXIT_WAIT {
            glommio::timer::sleep(Duration::from_millis(100)).await;
        }
        if self.busy.get() > 0 {
            eprintln!("sheepdev serve: {name}: {} control requests still under way after {} s; exiting anyway", self.busy.get(), EXIT_WAIT.as_secs());
        }
        self.persist();
        if self.opts.quiesce {
            self.quiesce_all(name).await;
        }
        let (kept, lost): (Vec<Mapping>, Vec<Mapping>) = self
            .mappings
            .borrow()
            .values()
            .cloned()
            .partition(|m| m.recoverable || m.state != "live");
        eprintln!(
            "sheepdev serve: {name}: exiting; {} device(s) stay in the kernel with their I/O held until the next `sheepdev serve` re-attaches them{}",
            kept.len(),
            if kept.is_empty() { String::new() } else { format!(" ({})", kept.iter().map(|m| m.device.as_str()).collect::<Vec<_>>().join(", ")) }
        );
        for m in &lost {
            eprintln!(
                "sheepdev serve: {} ({}) has no user recovery: the kernel stops it now",
                m.device, m.vdi
            );
        }
        // No destructor may run: dropping a device's control would delete the device.
        std::process::exit(0);
    }

    /// Before an exit: quiesce every device created with UBLK_F_QUIESCE, all at once, each
    /// bounded by [`QUIESCE_WAIT`] (a device whose requests wait for an unreachable cluster
    /// times out and is left to the kernel, as without quiesce).
    async fn quiesce_all(&self, signal: &str) {
        let devices: Vec<(u32, u64)> =
            self.live.borrow().iter().map(|(id, l)| (*id, l.flags)).collect();
        let tasks: Vec<_> = devices
            .into_iter()
            .map(|(id, flags)| {
                glommio::executor().spawn_blocking(move || {
                    let t0 = Instant::now();
                    (id, ublk::features::quiesce(id, flags, QUIESCE_WAIT), t0.elapsed())
                })
            })
            .collect();
        for t in tasks {
            match t.await {
                (_, Ok(false), _) => {}
                (id, Ok(true), took) => eprintln!(
                    "sheepdev serve: {signal}: /dev/ublkb{id} quiesced in {} ms: its requests in flight completed, new ones wait for the next daemon",
                    took.as_millis()
                ),
                (id, Err(e), _) => eprintln!(
                    "sheepdev serve: {signal}: /dev/ublkb{id}: {e}; its requests in flight are issued again by the next daemon"
                ),
            }
        }
    }

    /// At start: re-attach `ids` one by one, and drop the devices in `gone`.
    pub(super) async fn recover_all(self: Rc<Self>, ids: Vec<u32>, gone: Vec<Mapping>) {
        for m in gone {
            eprintln!("sheepdev serve: {} ({}) no longer exists in the kernel: dropped from the device table", m.device, m.vdi);
            self.release_stale_lock(&m).await;
        }
        for id in ids {
            if self.stopping.get() {
                // Exiting: the rest stay quiesced (and `recovering` in the table) for the next daemon.
                break;
            }
            let _busy = Busy::new(&self.busy);
            let Some((dev, vdi)) =
                self.mappings.borrow().get(&id).map(|m| (m.device.clone(), m.vdi.clone()))
            else {
                continue;
            };
            let t0 = Instant::now();
            match self.reattach(id).await {
                Ok(_) => eprintln!("sheepdev serve: re-attached {dev} ({vdi}) in {:.1} s", t0.elapsed().as_secs_f64()),
                Err(e) => eprintln!(
                    "sheepdev serve: cannot re-attach {dev} ({vdi}): {e}; it stays orphaned with its I/O held: `sheepdev recover {dev}` retries, `sheepdev del {dev}` removes it"
                ),
            }
        }
    }

    /// The lock of a device that is gone: the previous daemon took it and nobody released it.
    async fn release_stale_lock(&self, m: &Mapping) {
        if m.locked {
            match release_by_name(m).await {
                Ok(()) => {
                    eprintln!("sheepdev serve: released the lock on {} (vid {:x})", m.name, m.vid)
                }
                Err(e) => eprintln!(
                    "sheepdev serve: could not release the lock on {} (vid {:x}): {e}",
                    m.name, m.vid
                ),
            }
        }
    }

    /// Serve device `id`, which a previous daemon left, again.
    pub(super) async fn reattach(&self, id: u32) -> Result<Mapping, Error> {
        let mut m = self
            .mappings
            .borrow()
            .get(&id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("no mapped device has id {id}")))?;
        if self.live.borrow().contains_key(&id) {
            return Err(Error::Busy(format!("{} is already served by this daemon", m.device)));
        }
        if !kernel_has(id) {
            self.mappings.borrow_mut().remove(&id);
            self.persist();
            self.release_stale_lock(&m).await;
            return Err(Error::NotFound(format!(
                "{} no longer exists in the kernel: dropped it from the device table",
                m.device
            )));
        }
        self.set_state(id, "recovering");
        let r = self.reattach_as(&m).await;
        match r {
            Ok(l) => {
                (m.state, m.recoverable) = ("live".into(), l.recoverable);
                m.features = crate::ublk::features::names(l.flags);
                // The VDI grew while the device was not served (or without UPDATE_SIZE).
                let bs = u64::from(m.block_size);
                let want = l.live.vol.as_ref().map_or(0, |v| v.size() / bs * bs);
                if want > m.size {
                    let r = glommio::executor()
                        .spawn_blocking(move || crate::ublk::features::resize(id, want))
                        .await;
                    match r {
                        Ok(true) => m.size = want,
                        Ok(false) => {}
                        Err(e) => tracing::warn!("{}: growing it to its VDI's size: {e}", m.device),
                    }
                }
                self.mappings.borrow_mut().insert(id, m.clone());
                self.live.borrow_mut().insert(id, l.live);
                self.persist();
                tracing::info!("re-attached {} ({})", m.device, m.vdi);
                Ok(m)
            }
            Err(e) => {
                self.set_state(id, "orphaned");
                Err(e)
            }
        }
    }

    fn set_state(&self, id: u32, state: &str) {
        if let Some(m) = self.mappings.borrow_mut().get_mut(&id) {
            m.state = state.into();
        }
        self.persist();
    }

    async fn reattach_as(&self, m: &Mapping) -> Result<Launched, Error> {
        let (target, lock) = if m.vid == 0 {
            // A null device (`add --null`): no VDI behind it.
            (ublk::Target::Null { size: m.size }, None)
        } else {
            sheep_target(m).await?
        };
        let spec = ublk::Spec {
            id: Some(m.id),
            queues: m.queues,
            depth: m.depth,
            max_io: m.max_io,
            block_size: m.block_size,
            read_only: m.read_only,
            target,
            metrics: Some((m.vdi.clone(), m.snapshot.clone().unwrap_or_default())),
            io_timeout: Duration::from_secs(m.io_timeout),
            recover: true,
            // A re-attached device keeps the buffers it was made with (its flags say which).
            own_buffers: false,
            zero_copy: false,
        };
        match self.launch(spec).await {
            Ok(l) => Ok(l),
            Err(e) => {
                // Only a lock taken just now is given back; the previous daemon's stays with
                // the device, which still exists.
                release(&lock).await;
                Err(e)
            }
        }
    }
}

/// The sheep target of a persisted mapping, and the VDI lock if it had to be taken again.
///
/// The lock. The previous daemon took LOCK_VDI and did not release it; the lock outlives
/// the connection that took it. Sheep's lock names no holder, so asking again cannot tell
/// "held by us" from "held by someone else": both answer VDI_LOCKED. Skipping the lock would
/// leave it unchecked; failing on VDI_LOCKED would refuse every re-attach. So we ask: success
/// means it had been released while no daemon ran and we hold it again (said in the log);
/// VDI_LOCKED is taken as our own lock, since the table says we hold it and have not
/// released it. A working VDI that is no longer the vid the device served (a snapshot was
/// taken meanwhile) is refused rather than written.
async fn sheep_target(m: &Mapping) -> Result<(ublk::Target, Option<(Rc<Client>, Vid)>), Error> {
    let gateways: Vec<Gateway> = m
        .gateways
        .iter()
        .map(|g| {
            g.parse().map_err(|_| {
                Error::Invalid(format!("bad gateway address {g:?} in the device table"))
            })
        })
        .collect::<Result<_, _>>()?;
    let mut cfg = Config::new(gateways.iter().cloned());
    cfg.connect_timeout = Duration::from_secs(3);
    let c = Rc::new(
        Client::connect(&cfg)
            .await
            .map_err(Error::sheep(format!("connecting to {}", m.gateways.join(","))))?,
    );
    let mut lock = None;
    if m.locked {
        let name = VdiName::new(&m.name).map_err(|e| Error::Invalid(format!("{}: {e}", m.name)))?;
        match c.lock_vdi(&name, &SnapSel::Working, false).await {
            Ok(info) if info.vid.0 == m.vid => {
                eprintln!("sheepdev serve: the lock on {} had been released while no daemon ran; taken again", m.name);
                lock = Some((c.clone(), info.vid));
            }
            Ok(info) => {
                release(&Some((c.clone(), info.vid))).await;
                return Err(Error::Busy(format!(
                    "the working VDI {} is now vid {:x}, not the vid {:x} the device served: not re-attaching",
                    m.name, info.vid.0, m.vid
                )));
            }
            Err(e) if e.code() == Some(SD_RES_VDI_LOCKED) => {}
            Err(e) => return Err(Error::sheep(format!("locking {}", m.name))(e)),
        }
    }
    let checked = match load_volume(&c, Vid(m.vid), m.read_only).await {
        Ok(v) if v.size() < m.size => {
            Err(Error::Busy(format!("vid {:x} is now {} bytes, the device {}: not re-attaching", m.vid, v.size(), m.size)))
        }
        Ok(v) if v.is_read_only() && !m.read_only => {
            Err(Error::Busy(format!("vid {:x} ({}) has become read-only (a snapshot?): not re-attaching a writable device to it", m.vid, m.name)))
        }
        Ok(v) => Ok(v),
        Err(e) => Err(Error::sheep(&m.vdi)(e)),
    };
    let vol = match checked {
        Ok(v) => v,
        Err(e) => {
            release(&lock).await;
            return Err(e);
        }
    };
    let gws = c.reachable_first(&gateways);
    Ok((
        ublk::Target::Sheep {
            vol: Arc::new(vol),
            gateways: gws,
            connections: usize::from(m.connections),
        },
        lock,
    ))
}
