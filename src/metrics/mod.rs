//! Metrics: Prometheus series for operators (scraped from `/metrics`) and hdrhistogram
//! percentiles for `sheepdev stats`.
//!
//! Contract:
//! - One process-wide registry ([`global`]). Names follow Prometheus conventions: prefix
//!   `sheepdev_`, base units (`_seconds`, `_bytes`), `_total` on counters, and only
//!   low-cardinality labels: device, queue, op, opcode, result, conn, gateway, path — never an
//!   oid, offset or vid.
//! - The hot path touches only the shard's own [`ShardMetrics`] (built once per shard, with
//!   pre-resolved handles): a request adds to plain local counters (prometheus'
//!   `LocalIntCounter`) and to bucket arrays held inline in the struct ([`LocalLatency`]:
//!   the bucket is found by arithmetic, not by a scan) — no atomic, no label lookup, no
//!   lock, no pointer to follow, no allocation per I/O. The shard publishes them into the
//!   shared series from its timer ([`ShardMetrics::flush`], every 250 ms, and when it
//!   stops), so `/metrics` lags the I/O by at most that. Measured: the shared atomic series
//!   cost 7–12 % of the IOPS of 4k reads at QD32 on the host (`sheepdev bench
//!   --metrics-overhead`). Error series are resolved on the (rare) error path.
//! - Latency buckets are exponential from 10 µs to ~10 s, each bound inclusive (`le`), as
//!   Prometheus' own histograms count. The two latency families are this module's own
//!   collector ([`LatencyVec`]), because a prometheus `Histogram` can only be fed one
//!   observation at a time: publishing a shard's counts would cost as much as observing.
//! - [`DeviceMetrics::remove`] drops every series of a device when it is unmapped.

mod http;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use hdrhistogram::Histogram as Hdr;
use prometheus::core::{Collector, Desc};
use prometheus::local::LocalIntCounter;
use prometheus::proto;
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use serde::Serialize;

pub use http::serve_http;

use crate::block::Op;

/// Block ops in label order.
pub const OPS: [(Op, &str); 5] = [
    (Op::Read, "read"),
    (Op::Write, "write"),
    (Op::Flush, "flush"),
    (Op::Discard, "discard"),
    (Op::WriteZeroes, "write_zeroes"),
];

/// Backend request kinds, in label order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    ReadObj = 0,
    WriteObj = 1,
    CreateAndWrite = 2,
    CowCreate = 3,
    InodeUpdate = 4,
    /// GET_VDI_INFO after a live snapshot (READONLY): the new working vid.
    VdiLookup = 5,
}
pub const BACKEND_LABELS: [&str; 6] =
    ["read_obj", "write_obj", "create_and_write", "cow_create", "inode_update", "vdi_lookup"];

/// How a zero-copy device's read or write moved its data (`sheepdev_zero_copy_requests_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZcPath {
    /// On the request's own pages, registered by the driver.
    Pages = 0,
    /// Registered, but a small write: copied out into a pool buffer.
    Copied = 1,
    /// Not registered (not asked for, or the registration failed): by user copy, a read's
    /// data written into the pages, a write's payload read out into a pool buffer.
    Unregistered = 2,
}
pub const ZC_PATHS: [&str; 3] = ["pages", "copied", "unregistered"];

/// The number of latency buckets with a finite bound; one more counts the rest (`+Inf`).
const BUCKETS: usize = 21;
/// The first bucket's bound, ns.
const FIRST_BOUND_NS: u64 = 10_000;

/// 10 µs × 2^k, k = 0..20: 10 µs … ~10.5 s.
pub fn latency_buckets() -> Vec<f64> {
    (0..BUCKETS).map(|k| 10e-6 * f64::from(1u32 << k)).collect()
}

/// The bucket of a latency of `ns`: the least k with `ns` ≤ 10 µs × 2^k, or [`BUCKETS`]
/// (`+Inf`) above the last bound.
fn bucket_of(ns: u64) -> usize {
    // The least k with ceil(ns / 10 µs) ≤ 2^k.
    let q = ns.div_ceil(FIRST_BOUND_NS);
    if q <= 1 {
        return 0;
    }
    ((u64::BITS - (q - 1).leading_zeros()) as usize).min(BUCKETS)
}

/// A latency histogram recorded on the hot path: counts per bucket and the sum, plain
/// integers in the owner's memory. Published with [`LatencySeries::add`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocalLatency {
    counts: [u64; BUCKETS + 1],
    sum_ns: u64,
}

impl LocalLatency {
    /// Count one latency.
    #[inline]
    pub fn record(&mut self, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.counts[bucket_of(ns)] += 1;
        self.sum_ns = self.sum_ns.saturating_add(ns);
    }

    fn is_empty(&self) -> bool {
        self.counts.iter().all(|&c| c == 0)
    }
}

/// One published latency series: what every flush of its shard added up to.
#[derive(Debug, Default)]
pub struct LatencySeries {
    counts: [AtomicU64; BUCKETS + 1],
    sum_ns: AtomicU64,
}

impl LatencySeries {
    /// Add `l` into the series and clear it (a shard's flush).
    pub fn add(&self, l: &mut LocalLatency) {
        if l.is_empty() {
            return;
        }
        for (shared, local) in self.counts.iter().zip(l.counts.iter()) {
            if *local != 0 {
                shared.fetch_add(*local, Ordering::Relaxed);
            }
        }
        self.sum_ns.fetch_add(l.sum_ns, Ordering::Relaxed);
        *l = LocalLatency::default();
    }

    fn proto(&self) -> proto::Histogram {
        let mut h = proto::Histogram::default();
        let mut cumulative = 0u64;
        let mut buckets = Vec::with_capacity(BUCKETS);
        for (c, bound) in self.counts[..BUCKETS].iter().zip(latency_buckets()) {
            cumulative += c.load(Ordering::Relaxed);
            let mut b = proto::Bucket::default();
            b.set_upper_bound(bound);
            b.set_cumulative_count(cumulative);
            buckets.push(b);
        }
        h.set_bucket(buckets);
        h.set_sample_count(cumulative + self.counts[BUCKETS].load(Ordering::Relaxed));
        h.set_sample_sum(self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9);
        h
    }
}

/// A latency family: the series of [`LatencySeries`] by label values, collected as a
/// Prometheus histogram. Series are created and removed off the hot path (a queue
/// starting, a device removed); the map's lock is taken only then and by a scrape. A clone
/// is a handle to the same family (as the prometheus crate's vectors are), so the registry
/// and [`Families`] each hold one.
#[derive(Clone)]
pub struct LatencyVec(Arc<LatencyFamily>);

struct LatencyFamily {
    desc: Desc,
    series: Mutex<BTreeMap<Vec<String>, Arc<LatencySeries>>>,
}

impl LatencyVec {
    fn new(name: &str, help: &str, labels: &[&str]) -> prometheus::Result<LatencyVec> {
        let desc = Desc::new(
            name.to_string(),
            help.to_string(),
            labels.iter().map(|l| l.to_string()).collect(),
            Default::default(),
        )?;
        Ok(LatencyVec(Arc::new(LatencyFamily { desc, series: Mutex::new(BTreeMap::new()) })))
    }

    /// The series of these label values (in the family's label order), made on first use.
    pub fn with_label_values(&self, values: &[&str]) -> Arc<LatencySeries> {
        debug_assert_eq!(values.len(), self.0.desc.variable_labels.len(), "one value per label");
        let key: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        self.0
            .series
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(key)
            .or_default()
            .clone()
    }

    /// Drop the series of these label values (an error if there was none, as the
    /// prometheus crate's vectors say it).
    pub fn remove_label_values(&self, values: &[&str]) -> prometheus::Result<()> {
        let key: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        match self.0.series.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&key) {
            Some(_) => Ok(()),
            None => Err(prometheus::Error::Msg(format!("no series {values:?}"))),
        }
    }
}

impl Collector for LatencyVec {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.0.desc]
    }

    fn collect(&self) -> Vec<proto::MetricFamily> {
        let series = self.0.series.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Label pairs sorted by name, as the prometheus crate's own vectors give them.
        let mut order: Vec<usize> = (0..self.0.desc.variable_labels.len()).collect();
        order.sort_by_key(|&i| &self.0.desc.variable_labels[i]);
        let metrics = series
            .iter()
            .map(|(values, s)| {
                let labels = order
                    .iter()
                    .map(|&i| {
                        let mut p = proto::LabelPair::default();
                        p.set_name(self.0.desc.variable_labels[i].clone());
                        p.set_value(values[i].clone());
                        p
                    })
                    .collect();
                let mut m = proto::Metric::from_label(labels);
                m.set_histogram(s.proto());
                m
            })
            .collect();
        let mut mf = proto::MetricFamily::default();
        mf.set_name(self.0.desc.fq_name.clone());
        mf.set_help(self.0.desc.help.clone());
        mf.set_field_type(proto::MetricType::HISTOGRAM);
        mf.set_metric(metrics);
        vec![mf]
    }
}

/// Every family sheepdev exports.
pub struct Families {
    pub registry: Registry,
    pub build_info: IntGaugeVec,
    pub device_info: IntGaugeVec,
    pub device_size: IntGaugeVec,
    pub io_requests: IntCounterVec,
    pub io_bytes: IntCounterVec,
    pub io_latency: LatencyVec,
    pub queue_inflight: IntGaugeVec,
    pub queue_depth: IntGaugeVec,
    pub backend_latency: LatencyVec,
    pub backend_errors: IntCounterVec,
    pub backend_inflight: IntGaugeVec,
    pub connection_up: IntGaugeVec,
    pub reconnects: IntCounterVec,
    pub coalesced: IntCounterVec,
    pub cow_writes: IntCounterVec,
    pub create_waits: IntCounterVec,
    pub inode_reloads: IntCounterVec,
    pub zero_copy: IntCounterVec,
    pub core_enters: IntCounterVec,
    pub core_completions: IntCounterVec,
}

fn reg<C: Collector + Clone + 'static>(r: &Registry, c: C) -> C {
    r.register(Box::new(c.clone())).expect("each family is registered once, with a valid name");
    c
}

impl Families {
    fn new() -> Families {
        let r = Registry::new();
        let g = |n: &str, h: &str, l: &[&str]| {
            reg(&r, IntGaugeVec::new(Opts::new(n, h), l).expect("valid gauge"))
        };
        let c = |n: &str, h: &str, l: &[&str]| {
            reg(&r, IntCounterVec::new(Opts::new(n, h), l).expect("valid counter"))
        };
        let hist = |n: &str, h: &str, l: &[&str]| {
            reg(&r, LatencyVec::new(n, h, l).expect("valid histogram"))
        };
        let dq = &["device", "queue"];
        let f = Families {
            build_info: g("sheepdev_build_info", "Build information; always 1.", &["version"]),
            device_info: g(
                "sheepdev_device_info",
                "One series per mapped device; always 1.",
                &["device", "vdi", "snapshot", "read_only", "queues", "depth"],
            ),
            device_size: g("sheepdev_device_size_bytes", "Size of the device.", &["device"]),
            io_requests: c(
                "sheepdev_io_requests_total",
                "Block requests completed, by op and result.",
                &["device", "queue", "op", "result"],
            ),
            io_bytes: c(
                "sheepdev_io_bytes_total",
                "Bytes of completed block requests.",
                &["device", "queue", "op"],
            ),
            io_latency: hist(
                "sheepdev_io_latency_seconds",
                "Block request latency, from arrival at the shard to completion.",
                &["device", "queue", "op"],
            ),
            queue_inflight: g(
                "sheepdev_queue_inflight",
                "Block requests in progress on the queue.",
                dq,
            ),
            queue_depth: g("sheepdev_queue_depth", "Depth of the queue.", dq),
            backend_latency: hist(
                "sheepdev_backend_request_latency_seconds",
                "Sheep request latency by opcode.",
                &["device", "queue", "opcode"],
            ),
            backend_errors: c(
                "sheepdev_backend_errors_total",
                "Sheep requests that failed, by result.",
                &["device", "queue", "opcode", "result"],
            ),
            backend_inflight: g(
                "sheepdev_backend_inflight",
                "Sheep requests in flight per connection.",
                &["device", "queue", "conn"],
            ),
            connection_up: g(
                "sheepdev_backend_connection_up",
                "Whether a sheep connection is up.",
                &["device", "queue", "conn", "gateway"],
            ),
            reconnects: c(
                "sheepdev_backend_reconnects_total",
                "Reconnections to a gateway.",
                &["device", "gateway"],
            ),
            coalesced: c(
                "sheepdev_coalesced_merges_total",
                "Requests merged into another sheep request.",
                dq,
            ),
            cow_writes: c("sheepdev_cow_writes_total", "Copy-on-write creates.", dq),
            create_waits: c(
                "sheepdev_create_waits_total",
                "Writes held because their object was being created.",
                dq,
            ),
            inode_reloads: c(
                "sheepdev_inode_reloads_total",
                "Inode header reloads (live snapshots).",
                dq,
            ),
            zero_copy: c(
                "sheepdev_zero_copy_requests_total",
                "Reads and writes of a zero-copy device by how their data moved: pages (on the \
                 request's own pages, registered by the driver), copied (registered, but a small \
                 write, copied out into a pool buffer) or unregistered (not registered: moved by user \
                 copy).",
                &["device", "queue", "path"],
            ),
            core_enters: c(
                "sheepdev_core_ring_enters_total",
                "io_uring_enter calls of a core thread's loop (each one serves the kernel's \
                 queues and the sheep sockets of every device on the core).",
                &["core"],
            ),
            core_completions: c(
                "sheepdev_core_ring_completions_total",
                "Completions a core thread's loop reaped from its ring; divided by \
                 sheepdev_core_ring_enters_total, the completions one system call serves.",
                &["core"],
            ),
            registry: r,
        };
        f.build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        #[cfg(target_os = "linux")]
        {
            let _ = f
                .registry
                .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()));
        }
        f
    }
}

/// The process-wide families.
pub fn global() -> &'static Families {
    static F: OnceLock<Families> = OnceLock::new();
    F.get_or_init(Families::new)
}

/// Render every family in the text exposition format.
pub fn render() -> String {
    let mut out = String::new();
    let enc = prometheus::TextEncoder::new();
    if let Err(e) = enc.encode_utf8(&global().registry.gather(), &mut out) {
        out = format!("# error encoding metrics: {e}\n");
    }
    out
}

/// A shard's published latencies (ns), one histogram per op. The shard records into its own
/// histograms and merges them here from a timer ([`ShardMetrics::flush`]), never per I/O;
/// `sheepdev stats` reads them. The lock is per shard: no lock is shared between shards.
type ShardHdr = [Mutex<Hdr<u64>>; 5];

/// 1 µs to 600 s at two significant digits (percentiles within 1 %): ~25 KiB a histogram.
/// Three digits cost ~180 KiB each, ten per (device, queue): ~115 MiB with 32 devices of two
/// queues (measured in the VM, bench/vm-many.sh).
fn new_hdr() -> Hdr<u64> {
    Hdr::<u64>::new_with_bounds(1_000, 600_000_000_000, 2).expect("valid histogram bounds")
}

/// The percentile histograms of one device's shards.
pub struct Percentiles {
    shards: Mutex<Vec<Arc<ShardHdr>>>,
}

/// p50/p99/p99.9 of one op.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct OpStats {
    pub op: String,
    pub count: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
}

impl Percentiles {
    fn new() -> Percentiles {
        Percentiles { shards: Mutex::new(Vec::new()) }
    }
    /// p50/p99/p99.9 per op over every shard, as of their last flush.
    pub fn snapshot(&self) -> Vec<OpStats> {
        let shards = self.shards.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        OPS.iter()
            .enumerate()
            .map(|(i, (_, name))| {
                let mut h = new_hdr();
                for s in &shards {
                    let _ = h.add(&*s[i].lock().unwrap_or_else(std::sync::PoisonError::into_inner));
                }
                let q = |x: f64| h.value_at_quantile(x) as f64 / 1000.0;
                OpStats {
                    op: (*name).to_string(),
                    count: h.len(),
                    p50_us: q(0.5),
                    p99_us: q(0.99),
                    p999_us: q(0.999),
                }
            })
            .collect()
    }
}

/// Which family a tracked series belongs to (so a device's series can be removed).
#[derive(Clone, Copy)]
enum Fam {
    IoRequests,
    IoBytes,
    IoLatency,
    QueueInflight,
    QueueDepth,
    BackendLatency,
    BackendErrors,
    BackendInflight,
    ConnectionUp,
    Reconnects,
    Coalesced,
    CowWrites,
    CreateWaits,
    InodeReloads,
    ZeroCopy,
}

/// Every series created for one device, for [`DeviceMetrics::remove`].
type Tracked = Arc<Mutex<Vec<(Fam, Vec<String>)>>>;

fn track(t: &Tracked, fam: Fam, labels: &[&str]) {
    let mut t = t.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if !t.iter().any(|(f, l)| {
        *f as u8 == fam as u8 && l.iter().map(String::as_str).eq(labels.iter().copied())
    }) {
        t.push((fam, labels.iter().map(|s| s.to_string()).collect()));
    }
}

/// The series of one device; cloned into each of its shards.
#[derive(Clone)]
pub struct DeviceMetrics {
    pub device: String,
    pub percentiles: Arc<Percentiles>,
    info: Vec<String>,
    tracked: Tracked,
    queues: u16,
}

impl DeviceMetrics {
    /// Register a device: its info and size series, and its percentile recorders.
    pub fn new(
        device: &str,
        vdi: &str,
        snapshot: &str,
        read_only: bool,
        queues: u16,
        depth: u16,
        size: u64,
    ) -> DeviceMetrics {
        let f = global();
        let info = vec![
            device.to_string(),
            vdi.to_string(),
            snapshot.to_string(),
            read_only.to_string(),
            queues.to_string(),
            depth.to_string(),
        ];
        f.device_info.with_label_values(&info).set(1);
        f.device_size.with_label_values(&[device]).set(size as i64);
        DeviceMetrics {
            device: device.to_string(),
            percentiles: Arc::new(Percentiles::new()),
            info,
            tracked: Arc::new(Mutex::new(Vec::new())),
            queues,
        }
    }

    /// Pre-resolved handles for queue `q` with `conns` connections to `gateway`; with
    /// `zero_copy`, the queue's zero-copy series too.
    pub fn shard(
        &self,
        q: u16,
        depth: u16,
        conns: usize,
        gateway: &str,
        zero_copy: bool,
    ) -> ShardMetrics {
        let f = global();
        let (d, qs) = (self.device.as_str(), q.to_string());
        let t = &self.tracked;
        let c = |fam: &IntCounterVec, which: Fam, l: &[&str]| {
            track(t, which, l);
            fam.with_label_values(l)
        };
        let g = |fam: &IntGaugeVec, which: Fam, l: &[&str]| {
            track(t, which, l);
            fam.with_label_values(l)
        };
        let h = |fam: &LatencyVec, which: Fam, l: &[&str]| {
            track(t, which, l);
            fam.with_label_values(l)
        };
        g(&f.queue_depth, Fam::QueueDepth, &[d, &qs]).set(i64::from(depth));
        let conn_labels: Vec<String> = (0..conns).map(|c| c.to_string()).collect();
        ShardMetrics {
            ok: OPS.map(|(_, n)| c(&f.io_requests, Fam::IoRequests, &[d, &qs, n, "ok"]).local()),
            err: OPS
                .map(|(_, n)| c(&f.io_requests, Fam::IoRequests, &[d, &qs, n, "error"]).local()),
            bytes: OPS.map(|(_, n)| c(&f.io_bytes, Fam::IoBytes, &[d, &qs, n]).local()),
            latency: [LocalLatency::default(); 5],
            latency_series: OPS.map(|(_, n)| h(&f.io_latency, Fam::IoLatency, &[d, &qs, n])),
            inflight: 0,
            inflight_gauge: g(&f.queue_inflight, Fam::QueueInflight, &[d, &qs]),
            backend: [LocalLatency::default(); 6],
            backend_series: BACKEND_LABELS
                .map(|n| h(&f.backend_latency, Fam::BackendLatency, &[d, &qs, n])),
            conn_inflight: conn_labels
                .iter()
                .map(|cl| g(&f.backend_inflight, Fam::BackendInflight, &[d, &qs, cl]))
                .collect(),
            conn_up: conn_labels
                .iter()
                .map(|cl| g(&f.connection_up, Fam::ConnectionUp, &[d, &qs, cl, gateway]))
                .collect(),
            reconnects: c(&f.reconnects, Fam::Reconnects, &[d, gateway]),
            coalesced: c(&f.coalesced, Fam::Coalesced, &[d, &qs]),
            cow: c(&f.cow_writes, Fam::CowWrites, &[d, &qs]),
            create_waits: c(&f.create_waits, Fam::CreateWaits, &[d, &qs]),
            inode_reloads: c(&f.inode_reloads, Fam::InodeReloads, &[d, &qs]),
            zero_copy: zero_copy
                .then(|| ZC_PATHS.map(|p| c(&f.zero_copy, Fam::ZeroCopy, &[d, &qs, p]).local())),
            hdr: OPS.map(|_| new_hdr()),
            published: {
                let p: Arc<ShardHdr> = Arc::new(OPS.map(|_| Mutex::new(new_hdr())));
                self.percentiles
                    .shards
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(p.clone());
                p
            },
            device: d.to_string(),
            queue: qs,
            tracked: self.tracked.clone(),
        }
    }

    /// The number of queues the device was registered with.
    pub fn queues(&self) -> u16 {
        self.queues
    }

    /// Set queue `q`'s depth gauge (0 marks a queue that is not running, e.g. between the
    /// benchmark's points).
    pub fn set_queue_depth(&self, q: u16, depth: u16) {
        let qs = q.to_string();
        let l = [self.device.as_str(), qs.as_str()];
        track(&self.tracked, Fam::QueueDepth, &l);
        global().queue_depth.with_label_values(&l).set(i64::from(depth));
    }

    /// Drop every series of this device (it was unmapped).
    pub fn remove(&self) {
        let f = global();
        let info: Vec<&str> = self.info.iter().map(String::as_str).collect();
        let _ = f.device_info.remove_label_values(&info);
        let _ = f.device_size.remove_label_values(&[self.device.as_str()]);
        let tracked = std::mem::take(
            &mut *self.tracked.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for (fam, labels) in tracked {
            let l: Vec<&str> = labels.iter().map(String::as_str).collect();
            let _ = match fam {
                Fam::IoRequests => f.io_requests.remove_label_values(&l),
                Fam::IoBytes => f.io_bytes.remove_label_values(&l),
                Fam::IoLatency => f.io_latency.remove_label_values(&l),
                Fam::QueueInflight => f.queue_inflight.remove_label_values(&l),
                Fam::QueueDepth => f.queue_depth.remove_label_values(&l),
                Fam::BackendLatency => f.backend_latency.remove_label_values(&l),
                Fam::BackendErrors => f.backend_errors.remove_label_values(&l),
                Fam::BackendInflight => f.backend_inflight.remove_label_values(&l),
                Fam::ConnectionUp => f.connection_up.remove_label_values(&l),
                Fam::Reconnects => f.reconnects.remove_label_values(&l),
                Fam::Coalesced => f.coalesced.remove_label_values(&l),
                Fam::CowWrites => f.cow_writes.remove_label_values(&l),
                Fam::CreateWaits => f.create_waits.remove_label_values(&l),
                Fam::InodeReloads => f.inode_reloads.remove_label_values(&l),
                Fam::ZeroCopy => f.zero_copy.remove_label_values(&l),
            };
        }
    }
}

/// Handles one shard writes on the hot path. See the module contract.
pub struct ShardMetrics {
    ok: [LocalIntCounter; 5],
    err: [LocalIntCounter; 5],
    bytes: [LocalIntCounter; 5],
    latency: [LocalLatency; 5],
    latency_series: [Arc<LatencySeries>; 5],
    /// Block requests being served (published into `inflight_gauge`).
    inflight: i64,
    inflight_gauge: IntGauge,
    backend: [LocalLatency; 6],
    backend_series: [Arc<LatencySeries>; 6],
    conn_inflight: Vec<IntGauge>,
    conn_up: Vec<IntGauge>,
    pub reconnects: IntCounter,
    pub coalesced: IntCounter,
    pub cow: IntCounter,
    pub create_waits: IntCounter,
    pub inode_reloads: IntCounter,
    /// A zero-copy device's reads and writes by [`ZcPath`].
    zero_copy: Option<[LocalIntCounter; 3]>,
    hdr: [Hdr<u64>; 5],
    published: Arc<ShardHdr>,
    device: String,
    queue: String,
    tracked: Tracked,
}

fn op_index(op: Op) -> usize {
    match op {
        Op::Read => 0,
        Op::Write => 1,
        Op::Flush => 2,
        Op::Discard => 3,
        Op::WriteZeroes => 4,
    }
}

impl ShardMetrics {
    /// A block request begins.
    pub fn begin_io(&mut self) {
        self.inflight += 1;
    }

    /// A block request (counted by [`ShardMetrics::begin_io`]) finished after `elapsed`.
    pub fn io(&mut self, op: Op, len: u32, ok: bool, elapsed: Duration) {
        let i = op_index(op);
        self.inflight -= 1;
        if ok {
            self.ok[i].inc();
            self.bytes[i].inc_by(u64::from(len));
        } else {
            self.err[i].inc();
        }
        self.latency[i].record(elapsed);
        self.hdr[i].saturating_record(elapsed.as_nanos() as u64);
    }

    /// A zero-copy device's read or write took `path`.
    pub fn zero_copy(&mut self, path: ZcPath) {
        if let Some(z) = &mut self.zero_copy {
            z[path as usize].inc();
        }
    }

    /// Connection `i`'s requests in flight and whether it is up, as of now (from the
    /// shard's timer); an unknown `i` is ignored.
    pub fn set_conn(&self, i: usize, inflight: usize, up: bool) {
        if let Some(g) = self.conn_inflight.get(i) {
            g.set(i64::try_from(inflight).unwrap_or(i64::MAX));
        }
        if let Some(g) = self.conn_up.get(i) {
            g.set(i64::from(up));
        }
    }

    /// Publish what was recorded since the last flush: the local counters and histograms
    /// into the Prometheus series, the percentiles for `sheepdev stats` (from a timer, not
    /// per I/O; allocates nothing).
    pub fn flush(&mut self) {
        for c in self
            .ok
            .iter_mut()
            .chain(self.err.iter_mut())
            .chain(self.bytes.iter_mut())
            .chain(self.zero_copy.iter_mut().flatten())
        {
            c.flush();
        }
        for (local, shared) in self
            .latency
            .iter_mut()
            .zip(self.latency_series.iter())
            .chain(self.backend.iter_mut().zip(self.backend_series.iter()))
        {
            shared.add(local);
        }
        self.inflight_gauge.set(self.inflight);
        for (local, shared) in self.hdr.iter_mut().zip(self.published.iter()) {
            if local.is_empty() {
                continue;
            }
            if let Ok(mut s) = shared.lock() {
                let _ = s.add(&*local);
            }
            local.reset();
        }
    }

    /// A sheep request of kind `b` finished after `elapsed`.
    pub fn backend(&mut self, b: Backend, elapsed: Duration) {
        self.backend[b as usize].record(elapsed);
    }

    /// A sheep request failed (the rare path: resolves its series here).
    pub fn backend_error(&self, b: Backend, result: &str) {
        let l = [self.device.as_str(), self.queue.as_str(), BACKEND_LABELS[b as usize], result];
        track(&self.tracked, Fam::BackendErrors, &l);
        global().backend_errors.with_label_values(&l).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::core::Metric;

    fn bucket_count(fam: &str, dev: &str, le: &str) -> Option<u64> {
        let text = render();
        let needle = format!("device=\"{dev}\"");
        text.lines()
            .filter(|l| {
                l.starts_with(&format!("{fam}_bucket{{"))
                    && l.contains(&needle)
                    && l.contains("op=\"read\"")
                    && l.contains(&format!("le=\"{le}\""))
            })
            .find_map(|l| l.rsplit(' ').next()?.parse().ok())
    }

    #[test]
    fn buckets_span_10us_to_10s() {
        let b = latency_buckets();
        assert!((b[0] - 10e-6).abs() < 1e-12);
        assert!(b[b.len() - 1] > 10.0 && b[b.len() - 1] < 11.0);
    }

    #[test]
    fn bucket_bounds_are_inclusive_as_prometheus_counts_them() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(10_000), 0);
        assert_eq!(bucket_of(10_001), 1);
        assert_eq!(bucket_of(160_000), 4);
        assert_eq!(bucket_of(160_001), 5);
        assert_eq!(bucket_of(10_000 << 20), 20);
        assert_eq!(bucket_of((10_000 << 20) + 1), BUCKETS);
        assert_eq!(bucket_of(u64::MAX), BUCKETS);
    }

    #[test]
    fn a_published_series_matches_a_prometheus_histogram_fed_the_same_latencies() {
        let reference = prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new("reference", "r").buckets(latency_buckets()),
        )
        .expect("valid histogram");
        let mut local = LocalLatency::default();
        let shared = LatencySeries::default();
        // Every bound, its neighbours, and a spread of others up to past the last bound.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut samples: Vec<u64> = (0..BUCKETS as u32)
            .flat_map(|k| {
                let b = FIRST_BOUND_NS << k;
                [b - 1, b, b + 1]
            })
            .collect();
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            samples.push(x % 20_000_000_000);
        }
        for (i, &ns) in samples.iter().enumerate() {
            local.record(Duration::from_nanos(ns));
            reference.observe(ns as f64 / 1e9);
            if i % 500 == 0 {
                shared.add(&mut local);
                assert!(local.is_empty(), "a flush clears the shard's counts");
            }
        }
        shared.add(&mut local);
        let (ours, theirs) = (shared.proto(), reference.metric().get_histogram().clone());
        assert_eq!(ours.get_sample_count(), theirs.get_sample_count());
        assert!((ours.get_sample_sum() - theirs.get_sample_sum()).abs() < 1e-6);
        let pairs = |h: &proto::Histogram| -> Vec<(u64, u64)> {
            h.get_bucket()
                .iter()
                .map(|b| ((b.upper_bound() * 1e9).round() as u64, b.cumulative_count()))
                .collect()
        };
        assert_eq!(pairs(&ours), pairs(&theirs));
    }

    #[test]
    fn an_io_of_known_latency_lands_in_its_bucket() {
        let dm = DeviceMetrics::new("test-bucket", "v", "", false, 1, 4, 1 << 30);
        let mut m = dm.shard(0, 4, 1, "127.0.0.1:7000", false);
        m.zero_copy(ZcPath::Pages);
        m.begin_io();
        m.io(Op::Read, 4096, true, Duration::from_micros(150));
        assert_eq!(
            bucket_count("sheepdev_io_latency_seconds", "test-bucket", "0.00016"),
            Some(0),
            "published only by flush"
        );
        m.flush();
        // Buckets are 10 µs × 2^k: 150 µs is above 80 µs and below 160 µs.
        assert_eq!(bucket_count("sheepdev_io_latency_seconds", "test-bucket", "0.00008"), Some(0));
        assert_eq!(bucket_count("sheepdev_io_latency_seconds", "test-bucket", "0.00016"), Some(1));
        assert!(render().contains(
            "sheepdev_io_bytes_total{device=\"test-bucket\",op=\"read\",queue=\"0\"} 4096"
        ));
        let s = dm.percentiles.snapshot();
        let read = s.iter().find(|o| o.op == "read").expect("read stats");
        assert_eq!(read.count, 1);
        assert!((read.p50_us - 150.0).abs() < 1.0, "p50 {}", read.p50_us);
        assert!(!render().contains("sheepdev_zero_copy_requests_total{device=\"test-bucket\""));
        dm.remove();
        assert!(!render().contains("test-bucket"), "every series of a removed device is gone");
    }

    #[test]
    fn a_zero_copy_queue_counts_its_paths() {
        let dm = DeviceMetrics::new("test-zc", "v", "", false, 1, 4, 1 << 30);
        let mut m = dm.shard(0, 4, 1, "127.0.0.1:7000", true);
        m.zero_copy(ZcPath::Pages);
        m.zero_copy(ZcPath::Unregistered);
        m.zero_copy(ZcPath::Unregistered);
        m.flush();
        let text = render();
        let z = "sheepdev_zero_copy_requests_total{device=\"test-zc\"";
        assert!(text.contains(&format!("{z},path=\"pages\",queue=\"0\"}} 1")), "{text}");
        assert!(text.contains(&format!("{z},path=\"copied\",queue=\"0\"}} 0")), "{text}");
        assert!(text.contains(&format!("{z},path=\"unregistered\",queue=\"0\"}} 2")), "{text}");
        dm.remove();
        assert!(!render().contains("test-zc"));
    }
}
