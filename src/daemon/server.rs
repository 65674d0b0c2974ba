//! `sheepdev serve`: the control socket, add/del/list, and the persisted mapping table.
//! Re-attaching devices and the exit on SIGTERM are in `recover.rs`.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use glommio::net::UnixListener;

use super::state::{
    kernel_has, mapping_client, release, release_by_name, Busy, Daemon, Launched, Live,
    ServeOptions,
};
use super::{AddRequest, Error, Mapping, Request, Response, Target};
use crate::proto::SD_RES_VDI_LOCKED;
use crate::sheep::{load_volume, manage, Client, Config, Gateway};
use crate::ublk::{self, Abort};
use crate::vdi::{SnapSel, VdiSpec};

/// How long `add` waits for the kernel to bring a device up, and `del` for it to go.
const DEVICE_WAIT: Duration = Duration::from_secs(60);

/// How often the daemon looks for devices that followed a live snapshot.
const VID_WATCH: Duration = Duration::from_millis(500);

/// Run the daemon: re-attach what a previous one left, serve the control socket, and on
/// SIGTERM/SIGINT exit the process (0) leaving every device for the next daemon.
pub fn serve(opts: ServeOptions) -> Result<(), Error> {
    let ctx = |what: String| move |e: std::io::Error| Error::Control(format!("{what}: {e}"));
    std::fs::create_dir_all(&opts.state_dir)
        .map_err(ctx(format!("creating {}", opts.state_dir.display())))?;
    std::fs::set_permissions(&opts.state_dir, std::fs::Permissions::from_mode(0o700))
        .map_err(ctx(format!("making {} private", opts.state_dir.display())))?;
    if let Some(dir) = opts.control.parent() {
        std::fs::create_dir_all(dir).map_err(ctx(format!("creating {}", dir.display())))?;
    }
    if opts.control.exists() {
        if std::os::unix::net::UnixStream::connect(&opts.control).is_ok() {
            return Err(Error::Busy(format!(
                "another sheepdev daemon is already serving {}",
                opts.control.display()
            )));
        }
        std::fs::remove_file(&opts.control)
            .map_err(ctx(format!("removing the stale socket {}", opts.control.display())))?;
    }
    super::recover::catch_signals()
        .map_err(ctx("installing the SIGTERM/SIGINT handlers".into()))?;
    // Every device a previous daemon left is re-attached once the socket is up; those the
    // kernel no longer has are dropped.
    let (mut mappings, gone): (BTreeMap<u32, Mapping>, Vec<Mapping>) = {
        let (keep, gone): (Vec<_>, Vec<_>) =
            load_state(&opts.state_dir).into_values().partition(|m| kernel_has(m.id));
        (keep.into_iter().map(|m| (m.id, m)).collect(), gone)
    };
    for m in mappings.values_mut() {
        m.state = "recovering".into();
    }
    let to_recover: Vec<u32> = mappings.keys().copied().collect();
    let cores = Arc::new(
        ublk::Cores::start(&opts.cores, opts.buffer_bytes)
            .map_err(ctx("starting the core threads".into()))?,
    );
    eprintln!(
        "sheepdev serve: {} core threads on CPUs {:?}, {} MiB of request buffers each",
        cores.len(),
        cores.cpus(),
        opts.buffer_bytes >> 20
    );
    crate::runtime::block_on(async move {
        let _metrics = match opts.metrics_addr {
            Some(a) => {
                let t = crate::metrics::serve_http(a).map_err(Error::Control)?;
                eprintln!("sheepdev serve: metrics on http://{a}/metrics");
                Some(t)
            }
            None => None,
        };
        let listener = UnixListener::bind(&opts.control)
            .map_err(|e| Error::Control(format!("listening on {}: {e}", opts.control.display())))?;
        std::fs::set_permissions(&opts.control, std::fs::Permissions::from_mode(0o600))
            .map_err(ctx(format!("making {} private", opts.control.display())))?;
        eprintln!("sheepdev serve: control socket {}", opts.control.display());
        let d = Rc::new(Daemon {
            cores,
            opts,
            mappings: RefCell::new(mappings),
            live: RefCell::new(BTreeMap::new()),
            busy: Cell::new(0),
            stopping: Cell::new(false),
        });
        d.persist();
        glommio::spawn_local(d.clone().exit_on_signal()).detach();
        glommio::spawn_local(d.clone().recover_all(to_recover, gone)).detach();
        glommio::spawn_local(d.clone().follow_vids()).detach();
        loop {
            match listener.accept().await {
                Ok(stream) => {
                    let d = d.clone();
                    glommio::spawn_local(async move {
                        let mut rd = BufReader::new(stream);
                        let mut line = String::new();
                        if rd.read_line(&mut line).await.is_err() || line.is_empty() {
                            return;
                        }
                        let resp = match serde_json::from_str::<Request>(&line) {
                            Ok(req) => d.handle(req).await,
                            Err(e) => Response {
                                error: Some(format!("bad request: {e}")),
                                ..Default::default()
                            },
                        };
                        let mut out = serde_json::to_string(&resp)
                            .unwrap_or_else(|_| "{\"error\":\"cannot encode the answer\"}".into());
                        out.push('\n');
                        let mut stream = rd.into_inner();
                        let _ = stream.write_all(out.as_bytes()).await;
                    })
                    .detach();
                }
                Err(e) => tracing::warn!("control socket accept failed: {e}"),
            }
        }
    })
    .map_err(|e| Error::Control(e.to_string()))?
}

fn state_file(dir: &std::path::Path) -> PathBuf {
    dir.join("devices.json")
}

fn load_state(dir: &std::path::Path) -> BTreeMap<u32, Mapping> {
    let Ok(text) = std::fs::read_to_string(state_file(dir)) else { return BTreeMap::new() };
    match serde_json::from_str::<Vec<Mapping>>(&text) {
        Ok(v) => v.into_iter().map(|m| (m.id, m)).collect(),
        Err(e) => {
            tracing::warn!("ignoring unreadable {}: {e}", state_file(dir).display());
            BTreeMap::new()
        }
    }
}

impl Daemon {
    pub(super) fn persist(&self) {
        let v: Vec<Mapping> = self.mappings.borrow().values().cloned().collect();
        let path = state_file(&self.opts.state_dir);
        let tmp = path.with_extension("json.tmp");
        let r = serde_json::to_vec_pretty(&v)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = r {
            tracing::error!("cannot persist the device table to {}: {e}", path.display());
        }
    }

    async fn handle(&self, req: Request) -> Response {
        let _busy = match req {
            Request::Add(_)
            | Request::Del { .. }
            | Request::Recover { .. }
            | Request::Resize { .. }
                if self.stopping.get() =>
            {
                return Response {
                    error: Some(
                        "the daemon is shutting down (SIGTERM): try again once it is back".into(),
                    ),
                    ..Default::default()
                };
            }
            Request::Add(_)
            | Request::Del { .. }
            | Request::Recover { .. }
            | Request::Resize { .. } => Some(Busy::new(&self.busy)),
            Request::List | Request::Stats => None,
        };
        match req {
            Request::List => Response {
                mappings: self.mappings.borrow().values().cloned().collect(),
                ..Default::default()
            },
            Request::Stats => {
                let devices: Vec<_> = {
                    let live = self.live.borrow();
                    let maps = self.mappings.borrow();
                    live.iter()
                        .filter_map(|(id, l)| {
                            Some((maps.get(id)?.clone(), l.metrics.as_ref()?.percentiles.clone()))
                        })
                        .collect()
                };
                let mut stats = Vec::new();
                for (m, p) in devices {
                    let ops = glommio::executor().spawn_blocking(move || p.snapshot()).await;
                    stats.push(super::DeviceStats { device: m.device, vdi: m.vdi, ops });
                }
                Response { stats, ..Default::default() }
            }
            Request::Add(a) => match self.add(a).await {
                Ok(m) => Response { mapping: Some(m), ..Default::default() },
                Err(e) => Response { error: Some(e.to_string()), ..Default::default() },
            },
            Request::Resize { target, size } => match self.resize(target, size).await {
                Ok((m, warnings)) => Response { mapping: Some(m), warnings, ..Default::default() },
                Err(e) => Response { error: Some(e.to_string()), ..Default::default() },
            },
            Request::Del { target, force } => match self.del(target, force).await {
                Ok((m, warnings)) => Response { mapping: Some(m), warnings, ..Default::default() },
                Err(e) => Response { error: Some(e.to_string()), ..Default::default() },
            },
            Request::Recover { target } => match self.find(&target) {
                Ok(id)
                    if self.mappings.borrow().get(&id).is_some_and(|m| m.state == "recovering") =>
                {
                    Response {
                        error: Some(format!("/dev/ublkb{id} is being re-attached already")),
                        ..Default::default()
                    }
                }
                Ok(id) => match self.reattach(id).await {
                    Ok(m) => Response { mapping: Some(m), ..Default::default() },
                    Err(e) => Response { error: Some(e.to_string()), ..Default::default() },
                },
                Err(e) => Response { error: Some(e.to_string()), ..Default::default() },
            },
        }
    }

    async fn add(&self, mut a: AddRequest) -> Result<Mapping, Error> {
        if a.queues == 0 {
            // One queue per core of this daemon (`serve --cores`).
            a.queues = self.cores.len().clamp(1, 64) as u16;
        }
        if !(1..=64).contains(&a.queues)
            || !(1..=4096).contains(&a.depth)
            || !(1..=16).contains(&a.connections)
        {
            return Err(Error::Invalid(
                "queues must be 1..64, depth 1..4096, connections 1..16".into(),
            ));
        }
        if a.block_size != 512 && a.block_size != 4096 {
            return Err(Error::Invalid(format!("block size {} is not 512 or 4096", a.block_size)));
        }
        if a.max_io < a.block_size || a.max_io > (1 << 20) {
            return Err(Error::Invalid(format!(
                "max-io {} must be between the block size and 1M",
                a.max_io
            )));
        }
        if let Some(id) = a.id {
            if self.mappings.borrow().contains_key(&id)
                || std::path::Path::new(&format!("/dev/ublkc{id}")).exists()
            {
                return Err(Error::Busy(format!("ublk device id {id} is already in use")));
            }
        }
        ublk::available()?;
        // Decided before anything is made: the driver offers no other copy mode later.
        let zero_copy = ublk::zero_copy::decide(a.zero_copy, a.null_size.is_some(), a.own_buffers)
            .map_err(|why| match a.own_buffers {
                true => Error::Invalid(why),
                false => Error::Ublk(ublk::Error::NoZeroCopy(why)),
            })?;
        let gateways: Vec<Gateway> = a
            .gateways
            .iter()
            .map(|g| g.parse().map_err(|_| Error::Invalid(format!("bad gateway address {g:?}"))))
            .collect::<Result<_, _>>()?;
        let mut m = Mapping {
            device: String::new(),
            id: 0,
            vdi: a.vdi.clone(),
            name: String::new(),
            vid: 0,
            snapshot: None,
            rebased_from: None,
            gateways: a.gateways.clone(),
            queues: a.queues,
            depth: a.depth,
            connections: a.connections,
            max_io: a.max_io,
            block_size: a.block_size,
            size: 0,
            read_only: a.read_only,
            shared: a.shared,
            locked: false,
            state: "live".into(),
            io_timeout: a.io_timeout,
            recoverable: false,
            features: Vec::new(),
        };
        let target;
        let mut lock: Option<(Rc<Client>, crate::proto::Vid)> = None;
        if let Some(size) = a.null_size {
            if size == 0 || size % u64::from(a.block_size) != 0 {
                return Err(Error::Invalid(format!(
                    "null device size {size} must be a non-zero multiple of the block size"
                )));
            }
            (m.vdi, m.name, m.size) = ("null".into(), "null".into(), size);
            target = ublk::Target::Null { size };
        } else {
            let spec: VdiSpec = a.vdi.parse().map_err(Error::Invalid)?;
            m.name = spec.name.to_string();
            let mut cfg = Config::new(gateways.iter().cloned());
            cfg.connect_timeout = Duration::from_secs(3);
            let c = Rc::new(Client::connect(&cfg).await.map_err(Error::sheep("connecting"))?);
            let in_use = |e: crate::sheep::Error, what: &str| {
                if e.code() == Some(SD_RES_VDI_LOCKED) {
                    Error::Busy(format!("{what} is in use: another client holds its lock (map it with --shared only if you know that is safe)"))
                } else {
                    Error::Sheep { context: what.to_string(), source: e }
                }
            };
            let vid = match (&spec.snap, a.read_only) {
                (SnapSel::Working, false) if !a.shared => {
                    let v = c
                        .lock_vdi(&spec.name, &SnapSel::Working, false)
                        .await
                        .map_err(|e| in_use(e, &a.vdi))?
                        .vid;
                    lock = Some((c.clone(), v));
                    v
                }
                (SnapSel::Working, _) => {
                    c.vdi_info(&spec.name, &SnapSel::Working)
                        .await
                        .map_err(Error::sheep(&a.vdi))?
                        .vid
                }
                (_, true) => {
                    m.snapshot = Some(spec.snap.to_string().trim_start_matches(':').to_string());
                    c.vdi_info(&spec.name, &spec.snap).await.map_err(Error::sheep(&a.vdi))?.vid
                }
                (_, false) => {
                    // The seed's semantics: a new writable VDI from the snapshot, by rebase.
                    let (_, new) = manage::rebase(&c, &spec).await.map_err(Error::sheep(
                        format!("making {} writable from {}", spec.name, a.vdi),
                    ))?;
                    m.rebased_from =
                        Some(spec.snap.to_string().trim_start_matches(':').to_string());
                    if a.shared {
                        new.vid
                    } else {
                        let v = c
                            .lock_vdi(&spec.name, &SnapSel::Working, false)
                            .await
                            .map_err(|e| in_use(e, spec.name.as_str()))?
                            .vid;
                        lock = Some((c.clone(), v));
                        v
                    }
                }
            };
            m.locked = lock.is_some();
            let vol = match load_volume(&c, vid, a.read_only).await {
                Ok(v) => v,
                Err(e) => {
                    release(&lock).await;
                    return Err(Error::sheep(&a.vdi)(e));
                }
            };
            (m.vid, m.size) = (vid.0, vol.size());
            if vol.is_read_only() {
                m.read_only = true;
            }
            let gws = c.reachable_first(&gateways);
            target = ublk::Target::Sheep {
                vol: Arc::new(vol),
                gateways: gws,
                connections: usize::from(a.connections),
            };
        }
        let labels = (m.vdi.clone(), m.snapshot.clone().unwrap_or_default());
        let spec = ublk::Spec {
            id: a.id,
            queues: a.queues,
            depth: a.depth,
            max_io: a.max_io,
            block_size: a.block_size,
            read_only: m.read_only,
            target,
            metrics: Some(labels),
            io_timeout: Duration::from_secs(a.io_timeout),
            recover: false,
            own_buffers: a.own_buffers,
            zero_copy,
        };
        m.max_io = spec.effective_max_io();
        let l = match self.launch(spec).await {
            Ok(l) => l,
            Err(e) => {
                release(&lock).await;
                return Err(e);
            }
        };
        (m.id, m.device, m.recoverable) = (l.id, format!("/dev/ublkb{}", l.id), l.recoverable);
        m.features = ublk::features::names(l.flags);
        self.mappings.borrow_mut().insert(l.id, m.clone());
        self.live.borrow_mut().insert(l.id, l.live);
        self.persist();
        tracing::info!("mapped {} as {}", m.vdi, m.device);
        Ok(m)
    }

    /// Every [`VID_WATCH`]: a device whose shards followed a live snapshot (another client
    /// snapshotted its VDI; see `shard`) now serves a new working vid. Record it in the
    /// table (so a re-attach after a restart opens the vid the device writes, and `del`
    /// releases the right lock) and, when the device holds the VDI lock, take the lock of
    /// the new vid and give back the old one. A lock request that cannot reach the cluster
    /// is tried again at the next tick.
    async fn follow_vids(self: Rc<Self>) {
        loop {
            glommio::timer::sleep(VID_WATCH).await;
            let moved: Vec<(Mapping, u32)> = {
                let live = self.live.borrow();
                let maps = self.mappings.borrow();
                live.iter()
                    .filter_map(|(id, l)| Some((maps.get(id)?, l.vol.as_ref()?.vid().0)))
                    .filter(|(m, vid)| m.vid != *vid)
                    .map(|(m, vid)| (m.clone(), vid))
                    .collect()
            };
            for (m, new) in moved {
                if m.locked {
                    match move_lock(&m, new).await {
                        Ok(()) => {}
                        Err(LockMove::Retry(e)) => {
                            tracing::warn!("{}: {e}", m.device);
                            continue;
                        }
                        Err(LockMove::NotOurs(e)) => {
                            eprintln!("sheepdev serve: {} ({}): {e}", m.device, m.name)
                        }
                    }
                }
                eprintln!(
                    "sheepdev serve: {} ({}) follows a live snapshot: vid {:x} -> {new:x}",
                    m.device, m.name, m.vid
                );
                if let Some(e) = self.mappings.borrow_mut().get_mut(&m.id) {
                    e.vid = new;
                }
                self.persist();
            }
        }
    }

    /// Start `spec`'s device on the cores and wait until it serves I/O (or failed).
    pub(super) async fn launch(&self, spec: ublk::Spec) -> Result<Launched, Error> {
        let abort: Abort = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let vol = match &spec.target {
            ublk::Target::Sheep { vol, .. } => Some(vol.clone()),
            _ => None,
        };
        let (cores, a2) = (self.cores.clone(), abort.clone());
        // A re-attach may first wait up to 30 s for the kernel to quiesce the device.
        let dev = glommio::executor().spawn_blocking(move || ublk::start(spec, a2, &cores)).await?;
        Ok(Launched {
            id: dev.id,
            recoverable: dev.recoverable,
            flags: dev.flags,
            live: Live { abort, metrics: dev.metrics, ended: dev.ended, vol, flags: dev.flags },
        })
    }

    pub(super) fn find(&self, t: &Target) -> Result<u32, Error> {
        let maps = self.mappings.borrow();
        let found: Vec<u32> = match t {
            Target::Id(id) => maps.get(id).map(|m| m.id).into_iter().collect(),
            Target::Device(d) => maps.values().filter(|m| &m.device == d).map(|m| m.id).collect(),
            Target::Vdi(v) => {
                let exact: Vec<u32> = maps.values().filter(|m| &m.vdi == v).map(|m| m.id).collect();
                if exact.is_empty() {
                    maps.values()
                        .filter(|m| &m.name == v && m.snapshot.is_none())
                        .map(|m| m.id)
                        .collect()
                } else {
                    exact
                }
            }
        };
        let what = match t {
            Target::Id(id) => format!("device id {id}"),
            Target::Device(d) => d.clone(),
            Target::Vdi(v) => format!("vdi {v}"),
        };
        match found[..] {
            [id] => Ok(id),
            [] => Err(Error::NotFound(format!("no mapped device matches {what}"))),
            _ => Err(Error::Invalid(format!(
                "{what} matches several devices ({}); name one by path or --id",
                found.iter().map(|i| format!("/dev/ublkb{i}")).collect::<Vec<_>>().join(", ")
            ))),
        }
    }

    /// The one mapped device `t` names, and its table row.
    pub(super) fn found(&self, t: &Target) -> Result<(u32, Mapping), Error> {
        let id = self.find(t)?;
        let m = self.mappings.borrow().get(&id).cloned();
        Ok((id, m.ok_or_else(|| Error::NotFound("the device vanished".into()))?))
    }

    async fn del(&self, t: Target, force: bool) -> Result<(Mapping, Vec<String>), Error> {
        let (id, m) = self.found(&t)?;
        if m.state == "recovering" {
            return Err(Error::Busy(format!(
                "{} is being re-attached; try again once `sheepdev list` shows it live",
                m.device
            )));
        }
        let live = self.live.borrow_mut().remove(&id);
        let mut warnings = Vec::new();
        let abort = live.as_ref().map(|l| l.abort.clone());
        let exists = std::path::Path::new(&format!("/dev/ublkc{id}")).exists();
        if exists {
            let s = if force { abort.clone() } else { None };
            let r = glommio::executor().spawn_blocking(move || ublk::stop(id, s.as_ref())).await;
            if let Err(e) = r {
                if !force {
                    if let Some(l) = live {
                        self.live.borrow_mut().insert(id, l);
                    }
                    return Err(e.into());
                }
                warnings.push(e.to_string());
            }
        }
        if let Some(dm) = live.as_ref().and_then(|l| l.metrics.as_ref()) {
            dm.remove();
        }
        if let Some(l) = live {
            let ended = glommio::executor()
                .spawn_blocking(move || {
                    l.ended.wait(if force { Duration::from_secs(10) } else { DEVICE_WAIT })
                })
                .await;
            if !ended {
                warnings.push(format!("device {id} did not finish stopping in time; its queues may still be draining (`sheepdev del --id {id}` again removes it)"));
            }
        } else if exists {
            // Left by an earlier daemon: remove the kernel device too.
            let r = glommio::executor()
                .spawn_blocking(move || {
                    libublk::ctrl::UblkCtrl::new_simple(id as i32)
                        .and_then(|c| c.del_dev())
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                })
                .await;
            if let Err(e) = r {
                warnings.push(format!("deleting ublk device {id}: {e}"));
            }
        }
        if m.locked {
            if let Err(e) = release_by_name(&m).await {
                let w = format!("could not release the lock on {} (vid {:x}): {e}", m.name, m.vid);
                if !force {
                    warnings.push(w);
                } else {
                    warnings.push(format!(
                        "{w}; release it later with a client that can reach the cluster"
                    ));
                }
            }
        }
        self.mappings.borrow_mut().remove(&id);
        self.persist();
        Ok((m, warnings))
    }
}

/// Why the VDI lock did not follow a live snapshot.
enum LockMove {
    /// No decision: the cluster could not be reached. Try again later.
    Retry(String),
    /// Decided: the new working vid is not locked by this device.
    NotOurs(String),
}

/// The device's VDI moved from `m.vid` to the new working vid `new` (a live snapshot):
/// LOCK_VDI the working VDI by name, then give back the lock of the old vid.
async fn move_lock(m: &Mapping, new: u32) -> Result<(), LockMove> {
    let c = mapping_client(m)
        .await
        .map_err(|e| LockMove::Retry(format!("moving the VDI lock after a live snapshot: {e}")))?;
    let name = crate::proto::VdiName::new(&m.name).map_err(|e| LockMove::NotOurs(e.to_string()))?;
    let r = match c.lock_vdi(&name, &SnapSel::Working, false).await {
        Ok(info) if info.vid.0 == new => Ok(()),
        Ok(info) => {
            let _ = c.release_vdi(info.vid, false).await;
            Err(LockMove::NotOurs(format!(
                "the working VDI is vid {:x}, not the vid {new:x} the device follows: it is not locked by this device",
                info.vid.0
            )))
        }
        Err(e) if e.code() == Some(SD_RES_VDI_LOCKED) => {
            Err(LockMove::NotOurs(format!("another client locked the new working vid {new:x}: writes go on, but the VDI is not exclusively ours")))
        }
        Err(e) => return Err(LockMove::Retry(format!("locking the new working vid {new:x}: {e}"))),
    };
    if let Err(e) = c.release_vdi(crate::proto::Vid(m.vid), false).await {
        tracing::warn!(
            "{}: could not release the lock on the snapshot vid {:x}: {e}",
            m.name,
            m.vid
        );
    }
    r
}
