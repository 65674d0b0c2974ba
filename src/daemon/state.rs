//! The daemon's state, shared by `server.rs` (the control socket, add/del) and
//! `recover.rs` (re-attach, exit): the device table, the devices this process runs, and the
//! control-plane calls both make on a mapping's VDI lock.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use super::{Error, Mapping};
use crate::sheep::{Client, Config, Gateway};
use crate::ublk::Abort;

/// How `serve` runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub control: PathBuf,
    pub state_dir: PathBuf,
    /// Where `/metrics` is served (none: not served).
    pub metrics_addr: Option<SocketAddr>,
    /// The CPUs the data plane runs on, one pinned core thread each (`serve --cores`).
    pub cores: Vec<usize>,
    /// Request buffers per core thread, in bytes (`serve --buffers`).
    pub buffer_bytes: usize,
    /// Quiesce every device that has UBLK_F_QUIESCE before a SIGTERM/SIGINT exit
    /// (`serve --quiesce auto`; off by default).
    pub quiesce: bool,
}

/// A device this daemon runs.
pub(super) struct Live {
    pub(super) abort: Abort,
    pub(super) metrics: Option<crate::metrics::DeviceMetrics>,
    /// Waits for the device's queues to end after a stop, then deletes it.
    pub(super) ended: crate::ublk::Ended,
    /// The VDI the shards serve (none: a null device); its vid moves when the shards follow
    /// a live snapshot, and [`Daemon::follow_vids`] brings the table and the lock after it.
    pub(super) vol: Option<Arc<crate::vdi::Volume>>,
    /// The device's ublk flags (`ublk::features`).
    pub(super) flags: u64,
}

/// What [`Daemon::launch`] hands back once the device serves I/O.
pub(super) struct Launched {
    pub(super) id: u32,
    pub(super) recoverable: bool,
    /// The device's ublk flags (`ublk::features`).
    pub(super) flags: u64,
    pub(super) live: Live,
}

pub(super) struct Daemon {
    /// The data plane: one pinned thread per core, serving queue q of every device.
    pub(super) cores: Arc<crate::ublk::Cores>,
    pub(super) opts: ServeOptions,
    pub(super) mappings: RefCell<BTreeMap<u32, Mapping>>,
    pub(super) live: RefCell<BTreeMap<u32, Live>>,
    /// Control requests (and re-attaches) under way; a SIGTERM exit waits for them.
    pub(super) busy: Cell<usize>,
    /// Set on SIGTERM/SIGINT: new add/del/recover requests are refused.
    pub(super) stopping: Cell<bool>,
}

/// Counts one request in [`Daemon::busy`] while it lives.
pub(super) struct Busy<'a>(&'a Cell<usize>);

impl<'a> Busy<'a> {
    pub(super) fn new(c: &'a Cell<usize>) -> Busy<'a> {
        c.set(c.get() + 1);
        Busy(c)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// Whether the kernel still has ublk device `id`.
pub(super) fn kernel_has(id: u32) -> bool {
    std::path::Path::new(&format!("/dev/ublkc{id}")).exists()
        || std::path::Path::new(&format!("/sys/class/ublk-char/ublkc{id}")).exists()
}

pub(super) async fn release(lock: &Option<(Rc<Client>, crate::proto::Vid)>) {
    if let Some((c, vid)) = lock {
        if let Err(e) = c.release_vdi(*vid, false).await {
            tracing::warn!("could not release the lock on vid {vid}: {e}");
        }
    }
}

/// A client for the control-plane requests of a mapping (lock moves and releases), with
/// short timeouts: the cluster may be gone.
pub(super) async fn mapping_client(m: &Mapping) -> Result<Client, Error> {
    let gateways: Vec<Gateway> = m.gateways.iter().filter_map(|g| g.parse().ok()).collect();
    let mut cfg = Config::new(gateways);
    cfg.connect_timeout = Duration::from_secs(2);
    cfg.request_timeout = Duration::from_secs(10);
    Client::connect(&cfg)
        .await
        .map_err(Error::sheep(format!("connecting to {}", m.gateways.join(","))))
}

pub(super) async fn release_by_name(m: &Mapping) -> Result<(), Error> {
    let c = mapping_client(m).await?;
    c.release_vdi(crate::proto::Vid(m.vid), false)
        .await
        .map_err(Error::sheep(format!("releasing vid {:x}", m.vid)))
}
