//! The no-kernel data-plane benchmark (`sheepdev bench`).
//!
//! Contract:
//! - Shards are driven through the same [`IoDesc`] entry point the ublk queue uses, one
//!   pinned thread per shard with `depth` tasks each (like fio's numjobs × iodepth), with
//!   fio-like workloads: 4k randread, 4k randwrite, 64k randrw 50/50, 4k / 64k / 1M
//!   sequential write (each shard's tags share one cursor over the shard's slice, so the
//!   requests in flight are adjacent, as the kernel issues a sequential stream).
//! - Coalescing (adjacent writes merged into one sheep request, `shard::conn`) is a
//!   parameter of each point, so on and off can be compared in one run.
//! - In the same run a **raw pipelined generator** sends the same object requests
//!   (READ_OBJ/WRITE_OBJ on the same objects, same depth and threads) straight over the
//!   protocol with no block layer: the ceiling. Results are reported as sheepdev/raw ratios;
//!   absolute figures on a shared 2-core machine are noise.
//! - The VDI is prefilled first, so reads hit real objects and writes overwrite them.
//! - Latencies are recorded per thread in hdrhistogram (ns) and merged.
//! - Many devices (`devices` > 1 in a point): each thread serves, as a core thread of the
//!   daemon does, queue s of every device — one shard per device, each with its own
//!   volume (its own inode map, claims, metrics) and its own slice of the region, all on the
//!   thread's one set of connections ([`Shard::start_shared`], as `ublk/cores.rs` starts
//!   them). The thread's `depth` tags are dealt out round-robin (tag t serves device
//!   t mod devices), so the total depth, the connections and the bytes touched are those of
//!   the one-device point: only the number of devices differs.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::block::{IoDesc, Op};
use crate::metrics::DeviceMetrics;
use crate::proto::*;
use crate::shard::{self, ring, RingConn, Shard};
use crate::sheep::Gateway;
use crate::vdi::Volume;

/// A fio-like workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    RandRead4k,
    RandWrite4k,
    RandRw64k,
    SeqWrite4k,
    SeqWrite64k,
    SeqWrite1m,
}

impl Workload {
    pub const ALL: [Workload; 6] = [
        Workload::RandRead4k,
        Workload::RandWrite4k,
        Workload::RandRw64k,
        Workload::SeqWrite4k,
        Workload::SeqWrite64k,
        Workload::SeqWrite1m,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Workload::RandRead4k => "randread-4k",
            Workload::RandWrite4k => "randwrite-4k",
            Workload::RandRw64k => "randrw-64k",
            Workload::SeqWrite4k => "seqwrite-4k",
            Workload::SeqWrite64k => "seqwrite-64k",
            Workload::SeqWrite1m => "seqwrite-1m",
        }
    }
    pub fn block_size(self) -> u32 {
        match self {
            Workload::RandRead4k | Workload::RandWrite4k | Workload::SeqWrite4k => 4096,
            Workload::RandRw64k | Workload::SeqWrite64k => 64 << 10,
            Workload::SeqWrite1m => 1 << 20,
        }
    }
}

impl std::str::FromStr for Workload {
    type Err = String;
    fn from_str(s: &str) -> Result<Workload, String> {
        Workload::ALL.into_iter().find(|w| w.name() == s).ok_or_else(|| {
            format!(
                "unknown workload {s:?}: expected one of {}",
                Workload::ALL.map(Workload::name).join(", ")
            )
        })
    }
}

/// Who serves the requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    /// Shards through `IoDesc`.
    Sheepdev,
    /// The same, with metrics off (to measure their cost).
    SheepdevNoMetrics,
    /// Object requests straight over the protocol.
    Raw,
}

/// One measured point.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    pub workload: Workload,
    pub driver: Driver,
    pub shards: u16,
    pub depth: u16,
    /// Devices each shard thread serves (module contract; 1 for the raw generator).
    pub devices: u16,
    /// Coalescing on (sheepdev drivers; the raw generator never merges).
    pub coalesce: bool,
    /// Sheep requests that rode on another one (sheepdev drivers).
    pub merged: u64,
    pub ios: u64,
    pub errors: u64,
    pub seconds: f64,
    pub iops: f64,
    pub mib_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
}

/// What to measure against.
pub struct Target {
    pub addr: Gateway,
    pub vol: Arc<Volume>,
    /// Metrics of the benchmark's device (`device="bench"`), used by `Driver::Sheepdev`.
    pub metrics: Option<DeviceMetrics>,
    /// Bytes of the VDI the workloads touch (prefilled), from offset 0.
    pub region: u64,
    /// Sheep connections per shard (`add --connections`); the raw generator uses one.
    pub connections: usize,
    /// Devices 2, 3, … of many-devices points ([`Target::add_devices`]; device 1 is
    /// `vol` with `metrics`).
    pub more: Vec<Device>,
}

/// One more device of a many-devices point: a volume of its own over the benchmark's VDI.
#[derive(Clone)]
pub struct Device {
    pub vol: Arc<Volume>,
    pub metrics: Option<DeviceMetrics>,
}

impl Target {
    /// Give the target `n` devices in all (after [`prefill`]: each further device copies
    /// the prefilled volume's inode map, so its writes overwrite objects, as device 1's do).
    /// `metrics(i)` makes device i's metrics (i from 1).
    pub fn add_devices(&mut self, n: u16, metrics: impl Fn(u16) -> Option<DeviceMetrics>) {
        let v = &self.vol;
        let entries: Vec<u32> = (0..v.nr_objects()).map(|i| v.entry(i).unwrap_or(0)).collect();
        for i in (1 + self.more.len() as u16)..n {
            let vol = Volume::new(v.header().clone(), entries.clone(), v.is_read_only());
            self.more.push(Device { vol: Arc::new(vol), metrics: metrics(i) });
        }
    }
}

/// The bytes of `region` each of `devices` devices touches (its slice, whole `bs` blocks;
/// the whole region for one device).
pub fn device_region(region: u64, devices: u16, bs: u32) -> u64 {
    if devices <= 1 {
        return region;
    }
    region / u64::from(devices) / u64::from(bs) * u64::from(bs)
}

/// Why a point of `w` with `shards` threads and `devices` devices cannot run on `region`
/// bytes (each thread needs at least one request's worth of each device's slice).
pub fn too_small(region: u64, w: Workload, shards: u16, devices: u16) -> Option<String> {
    (device_region(region, devices, w.block_size()) < u64::from(w.block_size()) * u64::from(shards))
        .then(|| {
            format!(
                "{devices} devices leave less than one {} request per shard of the {} MiB region",
                w.name(),
                region >> 20
            )
        })
}

/// xorshift64*: a fast, allocation-free generator for offsets.
struct Rng(u64);
impl Rng {
    /// A generator for stream `n` (a thread and tag): distinct streams get distinct,
    /// unrelated sequences (the splitmix64 finaliser spreads `n` over the whole state,
    /// which xorshift64* needs non-zero).
    fn stream(n: u64) -> Rng {
        let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)).max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

struct ThreadResult {
    /// When the thread's last request finished (its teardown is not counted).
    ended: Instant,
    hist: Histogram<u64>,
    merged: u64,
    ios: u64,
    errors: u64,
    bytes: u64,
}

/// Run one point: `shards` threads × `depth` tasks for `duration`, with coalescing on or off,
/// the tasks of each thread spread over `devices` devices (module contract; the raw
/// generator has no devices: 1).
#[allow(clippy::too_many_arguments)]
pub fn run_point(
    t: &Target,
    w: Workload,
    driver: Driver,
    shards: u16,
    depth: u16,
    devices: u16,
    coalesce: bool,
    duration: Duration,
) -> Result<Point, String> {
    let devices = if driver == Driver::Raw { 1 } else { devices.max(1) };
    if usize::from(devices) > 1 + t.more.len() {
        return Err(format!("{devices} devices asked for, the target has {}", 1 + t.more.len()));
    }
    if let Some(why) = too_small(t.region, w, shards, devices) {
        return Err(why);
    }
    if let (Driver::Sheepdev, Some(dm)) = (driver, &t.metrics) {
        // Queues this point does not run show depth 0, not the last point's depth.
        for q in shards..dm.queues() {
            dm.set_queue_depth(q, 0);
        }
    }
    let start = Instant::now();
    let threads: Vec<_> = (0..shards)
        .map(|s| {
            let (addr, vol, dm, conns) =
                (t.addr.clone(), t.vol.clone(), t.metrics.clone(), t.connections);
            let more = t.more[..usize::from(devices) - 1].to_vec();
            let region = device_region(t.region, devices, w.block_size());
            std::thread::Builder::new()
                .name(format!("bench-shard-{s}"))
                .spawn(move || {
                    let job = Job {
                        vol,
                        region,
                        w,
                        s,
                        shards,
                        depth,
                        devices,
                        deadline: Instant::now() + duration,
                    };
                    shard_thread(addr, conns, more, dm, driver, coalesce, job)
                })
                .map_err(|e| format!("cannot start a shard thread: {e}"))
        })
        .collect::<Result<_, _>>()?;
    let mut hist =
        Histogram::<u64>::new_with_bounds(1_000, 60_000_000_000, 3).map_err(|e| e.to_string())?;
    let (mut ios, mut errors, mut bytes, mut merged) = (0, 0, 0, 0);
    let mut ended = start;
    for th in threads {
        let r = th.join().map_err(|_| "a shard thread panicked".to_string())??;
        hist.add(&r.hist).map_err(|e| e.to_string())?;
        (ios, errors, bytes, merged) =
            (ios + r.ios, errors + r.errors, bytes + r.bytes, merged + r.merged);
        ended = ended.max(r.ended);
    }
    let seconds = ended.saturating_duration_since(start).as_secs_f64().max(1e-9);
    let q = |x: f64| hist.value_at_quantile(x) as f64 / 1000.0;
    Ok(Point {
        workload: w,
        driver,
        shards,
        depth,
        devices,
        coalesce: coalesce && driver != Driver::Raw,
        merged,
        ios,
        errors,
        seconds,
        iops: ios as f64 / seconds,
        mib_s: bytes as f64 / seconds / (1 << 20) as f64,
        p50_us: q(0.5),
        p99_us: q(0.99),
        p999_us: q(0.999),
    })
}

/// What one bench thread runs: its slice of the point.
#[derive(Clone)]
struct Job {
    vol: Arc<Volume>,
    /// Bytes each device touches (device d: its slice `d × region ..`).
    region: u64,
    w: Workload,
    s: u16,
    shards: u16,
    depth: u16,
    devices: u16,
    deadline: Instant,
}

/// Who a bench thread's tags send their requests to.
#[derive(Clone)]
enum Io {
    Shard(Rc<Shard>),
    Raw(Rc<RingConn>),
}

fn shard_thread(
    addr: Gateway,
    conns: usize,
    more: Vec<Device>,
    dm: Option<DeviceMetrics>,
    driver: Driver,
    coalesce: bool,
    job: Job,
) -> Result<ThreadResult, String> {
    let (w, s, depth) = (job.w, job.s, job.depth);
    let bs = w.block_size();
    let slots = usize::from(depth) * 2 + 8;
    if driver == Driver::Raw {
        return raw_thread(addr, slots, job);
    }
    let cfg = shard::Config {
        connections: conns,
        slots,
        max_io: bs as usize,
        coalesce,
        core: Some(usize::from(s)),
        ring_entries: u32::from(depth) * 4 + 64,
        ..shard::Config::new([addr.clone()])
    };
    // A device's queue is as deep as the tags it gets.
    let dev_depth = depth.div_ceil(job.devices);
    let queue_metrics = |dm: Option<DeviceMetrics>| match (driver, dm) {
        (Driver::Sheepdev, Some(device)) => {
            Some(shard::QueueMetrics { device, queue: s, depth: dev_depth, zero_copy: false })
        }
        _ => None,
    };
    let cfg = shard::Config { metrics: queue_metrics(dm), ..cfg };
    let more_cfg: Vec<_> = more
        .into_iter()
        .map(|d| (shard::Config { metrics: queue_metrics(d.metrics), ..cfg.clone() }, d.vol))
        .collect();
    let vol = job.vol.clone();
    let spawned = shard::spawn(&format!("bench-shard-{s}"), cfg, vol, move |sh, exe| {
        // Devices 2, 3, …: shards of their own on this thread's connections.
        let others: Vec<_> = more_cfg
            .into_iter()
            .map(|(cfg, vol)| Shard::start_shared(&cfg, vol, sh.conns(), exe))
            .collect();
        let ios = std::iter::once(&sh).chain(&others).map(|x| Io::Shard(x.clone())).collect();
        let tasks = run_tags(exe, ios, job);
        async move {
            let mut r = match tasks {
                Ok(t) => t.await,
                Err(e) => Err(e),
            };
            others.iter().for_each(|o| o.close());
            for o in &others {
                o.shut_down().await;
            }
            if let Ok(r) = &mut r {
                // The connections are shared: every device's merges are counted on them.
                r.merged = sh.merged();
            }
            r
        }
    })
    .map_err(|e| e.to_string())?;
    spawned.join().map_err(|e| e.to_string())?
}

/// The raw generator's thread: one connection on its own ring, no shard.
fn raw_thread(addr: Gateway, slots: usize, job: Job) -> Result<ThreadResult, String> {
    let name = format!("bench-raw-{}", job.s);
    let t =
        std::thread::Builder::new().name(name).spawn(move || -> Result<ThreadResult, String> {
            crate::shard::pin_thread(usize::from(job.s));
            ring::init_thread_ring(u32::from(job.depth) * 4 + 64)
                .map_err(|e| format!("io_uring: {e}"))?;
            let exe = crate::shard::exec::LocalExecutor::new();
            let c = RingConn::connect(addr.clone(), Duration::from_secs(3), slots, &exe)
                .map_err(|e| format!("{addr}: {e}"))?;
            let tasks = run_tags(&exe, vec![Io::Raw(c.clone())], job)?;
            ring::run_local(&exe, async move {
                let r = tasks.await;
                c.shut_down().await;
                r
            })
            .ok_or("the raw generator's io_uring failed")?
        });
    t.map_err(|e| format!("cannot start a bench thread: {e}"))?
        .join()
        .map_err(|_| "a bench thread panicked".to_string())?
}

/// Spawn the `depth` tags of one bench thread, tag t on device `t mod devices` (`io[d]`
/// serves device d); the future ends when they all have.
fn run_tags(
    exe: &crate::shard::exec::LocalExecutor<'_>,
    io: Vec<Io>,
    job: Job,
) -> Result<impl std::future::Future<Output = Result<ThreadResult, String>> + 'static, String> {
    let (w, s, shards, depth, deadline) = (job.w, job.s, job.shards, job.depth, job.deadline);
    let bs = w.block_size();
    let hist = Rc::new(RefCell::new(
        Histogram::<u64>::new_with_bounds(1_000, 60_000_000_000, 3).map_err(|e| e.to_string())?,
    ));
    let (ios, errors) = (Rc::new(Cell::new(0u64)), Rc::new(Cell::new(0u64)));
    // Sequential workloads: one cursor per shard and device, over the shard's own slice of
    // the device's region.
    let slice = job.region / u64::from(shards);
    let cursors: Rc<[Cell<u64>]> = (0..io.len()).map(|_| Cell::new(0u64)).collect();
    let bss = job.vol.block_size_shift();
    let vid = job.vol.vid();
    let blocks = (job.region / u64::from(bs)).max(1);
    let tasks: Vec<_> = (0..depth)
        .map(|tag| {
            let dev = usize::from(tag) % io.len();
            let base = dev as u64 * job.region;
            let (io, hist, ios, errors, cursors) =
                (io[dev].clone(), hist.clone(), ios.clone(), errors.clone(), cursors.clone());
            exe.spawn(async move {
                let cursor = &cursors[dev];
                let mut buf = vec![0xa5u8; bs as usize];
                let mut rng = Rng::stream(u64::from(s) << 32 | u64::from(tag));
                while Instant::now() < deadline {
                    let (write, offset) = match w {
                        Workload::RandRead4k => (false, rng.next() % blocks * u64::from(bs)),
                        Workload::RandWrite4k => (true, rng.next() % blocks * u64::from(bs)),
                        Workload::RandRw64k => {
                            (rng.next() & 1 == 0, rng.next() % blocks * u64::from(bs))
                        }
                        Workload::SeqWrite4k | Workload::SeqWrite64k | Workload::SeqWrite1m => {
                            let c = cursor.get();
                            cursor.set((c + u64::from(bs)) % slice.max(u64::from(bs)));
                            (true, u64::from(s) * slice + c)
                        }
                    };
                    let offset = base + offset;
                    let t0 = Instant::now();
                    let ok = match &io {
                        Io::Shard(sh) => {
                            let d = IoDesc {
                                op: if write { Op::Write } else { Op::Read },
                                offset,
                                len: bs,
                                tag,
                                fua: false,
                            };
                            sh.handle(d, &mut buf).await.is_ok()
                        }
                        Io::Raw(c) => {
                            let oid = Oid::data(vid, (offset >> bss) as u32);
                            let args = ObjArgs {
                                oid,
                                offset: (offset & ((1 << bss) - 1)) as u32,
                                ..Default::default()
                            };
                            let r = if write {
                                c.call(
                                    ReqHeader::obj(
                                        Opcode::WriteObj,
                                        SD_FLAG_CMD_WRITE | SD_FLAG_CMD_DIRECT,
                                        bs,
                                        args,
                                    ),
                                    &buf,
                                    &mut [],
                                )
                                .await
                            } else {
                                c.call(ReqHeader::obj(Opcode::ReadObj, 0, bs, args), &[], &mut buf)
                                    .await
                            };
                            r.is_ok_and(|rsp| rsp.result.is_success())
                        }
                    };
                    hist.borrow_mut().saturating_record(t0.elapsed().as_nanos() as u64);
                    ios.set(ios.get() + 1);
                    if !ok {
                        errors.set(errors.get() + 1);
                    }
                }
            })
        })
        .collect();
    Ok(async move {
        for t in tasks {
            t.await;
        }
        let n = ios.get();
        let hist = Rc::try_unwrap(hist).map_err(|_| "histogram still shared")?.into_inner();
        Ok(ThreadResult {
            ended: Instant::now(),
            hist,
            merged: 0,
            ios: n,
            errors: errors.get(),
            bytes: n * u64::from(bs),
        })
    })
}

/// Write the whole region once (1 MiB requests, one shard, depth 32) so every object exists.
pub fn prefill(t: &Target) -> Result<(), String> {
    let size = t.region;
    let cfg = shard::Config { slots: 80, ..shard::Config::new([t.addr.clone()]) };
    let spawned = shard::spawn("bench-prefill", cfg, t.vol.clone(), move |shard, exe| {
        let next = Rc::new(Cell::new(0u64));
        let failed = Rc::new(Cell::new(false));
        let tasks: Vec<_> = (0..32u16)
            .map(|tag| {
                let (shard, next, failed) = (shard.clone(), next.clone(), failed.clone());
                exe.spawn(async move {
                    let mut buf = vec![0x5au8; 1 << 20];
                    loop {
                        let off = next.get();
                        if off >= size {
                            break;
                        }
                        next.set(off + (1 << 20));
                        let len = (size - off).min(1 << 20) as u32;
                        if shard
                            .handle(
                                IoDesc { op: Op::Write, offset: off, len, tag, fua: false },
                                &mut buf,
                            )
                            .await
                            .is_err()
                        {
                            failed.set(true);
                        }
                    }
                })
            })
            .collect();
        async move {
            for t in tasks {
                t.await;
            }
            failed.get()
        }
    })
    .map_err(|e| e.to_string())?;
    if spawned.join().map_err(|e| e.to_string())? {
        return Err("prefill writes failed".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tag_of_every_thread_draws_its_own_offsets() {
        // Seeds once collided in pairs (tags 2k and 2k+1 read the same blocks at once,
        // cache-hot for the second): every stream's first draws must differ.
        let mut seen = std::collections::HashSet::new();
        for s in 0..4u64 {
            for tag in 0..1024u64 {
                let mut r = Rng::stream(s << 32 | tag);
                let first: Vec<u64> = (0..4).map(|_| r.next() % (1 << 18)).collect();
                assert!(seen.insert(first), "thread {s} tag {tag} repeats another stream");
            }
        }
    }

    #[test]
    fn devices_split_the_region_into_whole_blocks() {
        let vol = Volume::new(
            crate::proto::InodeHeader {
                vdi_size: 1 << 30,
                block_size_shift: 22,
                vdi_id: 7,
                ..crate::proto::InodeHeader::default()
            },
            vec![7; 256],
            false,
        );
        let mut t = Target {
            addr: Gateway::from("127.0.0.1:7000".parse::<std::net::SocketAddr>().unwrap()),
            vol: Arc::new(vol),
            metrics: None,
            region: (1 << 30) + 4096,
            connections: 1,
            more: Vec::new(),
        };
        assert_eq!(device_region(t.region, 1, 4096), (1 << 30) + 4096, "one device: all of it");
        assert_eq!(device_region(t.region, 32, 1 << 20), 32 << 20);
        assert_eq!(device_region(t.region, 3, 1 << 20) % (1 << 20), 0);
        t.add_devices(4, |_| None);
        assert_eq!(t.more.len(), 3);
        assert!(t.more.iter().all(|d| d.vol.entry(255) == Some(7) && d.vol.vid() == Vid(7)));
        t.add_devices(2, |_| None);
        assert_eq!(t.more.len(), 3, "devices are only ever added");
    }
}
