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
}

/// xorshift64*: a fast, allocation-free generator for offsets.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

struct ThreadResult {
    hist: Histogram<u64>,
    merged: u64,
    ios: u64,
    errors: u64,
    bytes: u64,
}

/// Run one point: `shards` threads × `depth` tasks for `duration`, with coalescing on or off.
pub fn run_point(
    t: &Target,
    w: Workload,
    driver: Driver,
    shards: u16,
    depth: u16,
    coalesce: bool,
    duration: Duration,
) -> Result<Point, String> {
    if let (Driver::Sheepdev, Some(dm)) = (driver, &t.metrics) {
        // Queues this point does not run show depth 0, not the last point's depth.
        for q in shards..dm.queues() {
            dm.set_queue_depth(q, 0);
        }
    }
    let start = Instant::now();
    let threads: Vec<_> = (0..shards)
        .map(|s| {
            let (addr, vol, region, dm, conns) =
                (t.addr.clone(), t.vol.clone(), t.region, t.metrics.clone(), t.connections);
            std::thread::Builder::new()
                .name(format!("bench-shard-{s}"))
                .spawn(move || {
                    shard_thread(
                        addr, conns, vol, region, dm, w, driver, s, shards, depth, coalesce,
                        duration,
                    )
                })
                .map_err(|e| format!("cannot start a shard thread: {e}"))
        })
        .collect::<Result<_, _>>()?;
    let mut hist =
        Histogram::<u64>::new_with_bounds(1_000, 60_000_000_000, 3).map_err(|e| e.to_string())?;
    let (mut ios, mut errors, mut bytes, mut merged) = (0, 0, 0, 0);
    for th in threads {
        let r = th.join().map_err(|_| "a shard thread panicked".to_string())??;
        hist.add(&r.hist).map_err(|e| e.to_string())?;
        (ios, errors, bytes, merged) =
            (ios + r.ios, errors + r.errors, bytes + r.bytes, merged + r.merged);
    }
    let seconds = start.elapsed().as_secs_f64();
    let q = |x: f64| hist.value_at_quantile(x) as f64 / 1000.0;
    Ok(Point {
        workload: w,
        driver,
        shards,
        depth,
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
    region: u64,
    w: Workload,
    s: u16,
    shards: u16,
    depth: u16,
    deadline: Instant,
}

/// Who a bench thread's tags send their requests to.
#[derive(Clone)]
enum Io {
    Shard(Rc<Shard>),
    Raw(Rc<RingConn>),
}

#[allow(clippy::too_many_arguments)]
fn shard_thread(
    addr: Gateway,
    conns: usize,
    vol: Arc<Volume>,
    region: u64,
    dm: Option<DeviceMetrics>,
    w: Workload,
    driver: Driver,
    s: u16,
    shards: u16,
    depth: u16,
    coalesce: bool,
    duration: Duration,
) -> Result<ThreadResult, String> {
    let bs = w.block_size();
    let slots = usize::from(depth) * 2 + 8;
    let job =
        Job { vol: vol.clone(), region, w, s, shards, depth, deadline: Instant::now() + duration };
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
    let metrics = match (driver, dm) {
        (Driver::Sheepdev, Some(device)) => {
            Some(shard::QueueMetrics { device, queue: s, depth, zero_copy: false })
        }
        _ => None,
    };
    let cfg = shard::Config { metrics, ..cfg };
    let spawned = shard::spawn(&format!("bench-shard-{s}"), cfg, vol, move |sh, exe| {
        let tasks = run_tags(exe, Io::Shard(sh.clone()), job);
        async move {
            let mut r = tasks?.await?;
            r.merged = sh.merged();
            Ok(r)
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
            let tasks = run_tags(&exe, Io::Raw(c.clone()), job)?;
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

/// Spawn the `depth` tags of one bench thread; the future ends when they all have.
fn run_tags(
    exe: &crate::shard::exec::LocalExecutor<'_>,
    io: Io,
    job: Job,
) -> Result<impl std::future::Future<Output = Result<ThreadResult, String>> + 'static, String> {
    let (w, s, shards, depth, deadline) = (job.w, job.s, job.shards, job.depth, job.deadline);
    let bs = w.block_size();
    let hist = Rc::new(RefCell::new(
        Histogram::<u64>::new_with_bounds(1_000, 60_000_000_000, 3).map_err(|e| e.to_string())?,
    ));
    let (ios, errors) = (Rc::new(Cell::new(0u64)), Rc::new(Cell::new(0u64)));
    // Sequential workloads: one cursor per shard, over its own slice of the region.
    let slice = job.region / u64::from(shards);
    let cursor = Rc::new(Cell::new(0u64));
    let bss = job.vol.block_size_shift();
    let vid = job.vol.vid();
    let blocks = (job.region / u64::from(bs)).max(1);
    let tasks: Vec<_> = (0..depth)
        .map(|tag| {
            let (io, hist, ios, errors, cursor) =
                (io.clone(), hist.clone(), ios.clone(), errors.clone(), cursor.clone());
            exe.spawn(async move {
                let mut buf = vec![0xa5u8; bs as usize];
                let mut rng =
                    Rng(0x9e37_79b9_7f4a_7c15 ^ (u64::from(s) << 32 | u64::from(tag)) | 1);
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
        Ok(ThreadResult { hist, merged: 0, ios: n, errors: errors.get(), bytes: n * u64::from(bs) })
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
