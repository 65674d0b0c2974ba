//! `sheepdev bench`: the no-kernel data-plane benchmark (see `crate::bench`), against the
//! embedded store (started here) or any cluster (`-a`).

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;

use crate::bench::{self, Driver, Point, Workload};
use crate::proto::VdiName;
use crate::sheep::manage::{self, Redundancy};
use crate::sheep::{load_volume, parse_gateways, Client, Config, Gateway};
use crate::vdi::VdiSpec;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// A cluster to measure (host[:port] or unix:/path); default: an embedded store started for
    /// the run.
    #[arg(short = 'a', long = "address")]
    address: Option<String>,
    /// Workloads, comma-separated: randread-4k, randwrite-4k, randrw-64k, seqwrite-4k,
    /// seqwrite-64k, seqwrite-1m.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "randread-4k,randwrite-4k,randrw-64k,seqwrite-1m"
    )]
    workloads: Vec<Workload>,
    /// Requests in flight per shard, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,128", value_parser = clap::value_parser!(u16).range(1..=1024))]
    depths: Vec<u16>,
    /// Shard counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2", value_parser = clap::value_parser!(u16).range(1..=64))]
    shards: Vec<u16>,
    /// Devices each shard serves, comma-separated: with N, a shard's requests in flight are
    /// spread over N devices (each its own shard, volume and slice of the region, all on the
    /// shard's connections, as the daemon's core threads serve queue q of every device);
    /// several counts are measured in the same run and compared with the first.
    #[arg(long, value_delimiter = ',', default_value = "1", value_parser = clap::value_parser!(u16).range(1..=256))]
    devices: Vec<u16>,
    /// Seconds per point.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Bytes of the VDI the workloads touch (prefilled first).
    #[arg(long, default_value = "1G", value_parser = super::size_arg)]
    size: u64,
    /// Sheep connections per shard (as `add --connections`).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=16))]
    connections: u16,
    /// Object size of the benchmark's VDI (default: the cluster's, 4M on the embedded store).
    #[arg(long, value_parser = super::size_arg)]
    object_size: Option<u64>,
    /// Skip the raw-protocol ceiling.
    #[arg(long)]
    no_raw: bool,
    /// Make the embedded store fdatasync every write (default: like sheep -n).
    #[arg(long)]
    store_sync: bool,
    /// Make the embedded store take this many milliseconds more for every object read and
    /// write (what a replicated cluster's network and disks add; a client that sends one
    /// request at a time pays it in full, a pipelining one overlaps it).
    #[arg(long, default_value_t = 0, conflicts_with = "address", value_parser = clap::value_parser!(u64).range(0..=1000))]
    store_latency_ms: u64,
    /// Serve Prometheus metrics at http://ADDR/metrics while the benchmark runs.
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Run the shards without metrics (to compare; see --metrics-overhead).
    #[arg(long)]
    no_metrics: bool,
    /// Measure each point with metrics on and off, same run, and report the difference.
    #[arg(long, conflicts_with = "no_metrics")]
    metrics_overhead: bool,
    /// Coalescing of adjacent writes, comma-separated: on, off, or both (each point is then
    /// measured with each, same run, and an on/off table follows).
    #[arg(long, value_delimiter = ',', default_value = "on", value_parser = on_off)]
    coalesce: Vec<bool>,
    /// Measure each point this many times (the coalesce settings alternate their order).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    repeat: u32,
    /// Keep serving /metrics this many seconds after the last point (for scrapers).
    #[arg(long, default_value_t = 0)]
    linger: u64,
    /// Also write every point as JSON to this file.
    #[arg(long, value_parser = super::path_arg)]
    json: Option<PathBuf>,
    /// Also draw the points into this PNG: IOPS and p50/p99 latency against depth, one row per
    /// workload (needs a TrueType font: fonts-dejavu-core, or SHEEPDEV_FONT).
    #[arg(long, value_parser = super::path_arg)]
    plot: Option<PathBuf>,
}

fn on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("expected on or off, not {s:?}")),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The median IOPS of some runs of one point.
fn iops(v: &[Point]) -> f64 {
    median(v.iter().map(|p| p.iops).collect())
}

/// The median p99 (µs) of some runs of one point.
fn p99(v: &[Point]) -> f64 {
    median(v.iter().map(|p| p.p99_us).collect())
}

pub fn run(a: BenchArgs) -> anyhow::Result<()> {
    if !(0.1..=3600.0).contains(&a.seconds) {
        bail!("--seconds must be between 0.1 and 3600");
    }
    if a.size < (4 << 20) {
        bail!("--size must be at least 4M");
    }
    // Before the store and the prefill: a --size too small for --devices fails at once.
    for &w in &a.workloads {
        for &shards in &a.shards {
            for &devices in &a.devices {
                if let Some(why) = bench::too_small(a.size, w, shards, devices) {
                    bail!("{why}: give a larger --size or fewer --devices");
                }
            }
        }
    }
    let several_devices = a.devices.iter().any(|&d| d != a.devices[0]);
    if several_devices && a.coalesce.contains(&true) && a.coalesce.contains(&false) {
        bail!("--devices with several counts takes one --coalesce setting, not both");
    }
    if let Some(p) = &a.plot {
        if !p.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")) {
            bail!("--plot writes a PNG: give a file name ending in .png, not {}", p.display());
        }
        // Before measuring: a missing font should not cost a whole run.
        crate::report::plot::load_font()?;
    }
    let dir = tempfile::tempdir().context("creating a directory for the embedded store")?;
    let (store, addr) = match &a.address {
        Some(s) => (None, parse_gateways(s).map_err(anyhow::Error::msg)?.swap_remove(0)),
        None => {
            let cfg = crate::store::Config {
                dir: dir.path().to_path_buf(),
                listen: vec!["127.0.0.1:0".parse()?],
                sync: a.store_sync,
                object_delay: Duration::from_millis(a.store_latency_ms),
                // A benchmark of sheepdev, not of the store: its opt-in fast read path keeps
                // the store from being the bound (tuning/README.md, the store's read path).
                fast_reads: true,
                ..Default::default()
            };
            let s = crate::store::Store::start(cfg).context("starting the embedded store")?;
            let addr = Gateway::from(s.local_addrs()[0]);
            (Some(s), addr)
        }
    };
    let name = VdiName::new(&format!("sheepdev-bench-{}", std::process::id()))
        .map_err(anyhow::Error::msg)?;
    let (size, object_size) = (a.size, a.object_size.unwrap_or(0));
    let vol = crate::runtime::block_on({
        let (name, addr) = (name.clone(), addr.clone());
        async move {
            let c = Rc::new(Client::connect(&Config::new([addr])).await?);
            let vid = manage::create(&c, &name, size, Redundancy::Default, object_size).await?.vid;
            anyhow::Ok(load_volume(&c, vid, false).await?)
        }
    })??;
    if let Some(maddr) = a.metrics_addr {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new().name("bench-metrics".into()).spawn(move || {
            let r = crate::runtime::block_on(async move {
                match crate::metrics::serve_http(maddr) {
                    Ok(task) => {
                        let _ = tx.send(Ok(()));
                        task.await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            });
            if let Err(e) = r {
                tracing::error!("metrics server: {e}");
            }
        })?;
        rx.recv()
            .map_err(|_| anyhow::anyhow!("the metrics server did not start"))?
            .map_err(anyhow::Error::msg)?;
        eprintln!("bench: metrics on http://{maddr}/metrics");
    }
    let max_shards = a.shards.iter().copied().max().unwrap_or(1);
    let max_depth = a.depths.iter().copied().max().unwrap_or(1);
    // A bench device's metrics (none with --no-metrics): `bench`, then `bench-2`, `bench-3`, …
    let device_metrics = |device: &str| {
        (!a.no_metrics).then(|| {
            crate::metrics::DeviceMetrics::new(
                device,
                name.as_str(),
                "",
                false,
                max_shards,
                max_depth,
                size,
            )
        })
    };
    let mut target = bench::Target {
        addr: addr.clone(),
        vol: Arc::new(vol),
        region: size,
        metrics: device_metrics("bench"),
        connections: usize::from(a.connections),
        more: Vec::new(),
    };
    eprintln!("bench: prefilling {} MiB of {name} on {addr}", size >> 20);
    bench::prefill(&target).map_err(anyhow::Error::msg)?;
    let max_devices = a.devices.iter().copied().max().unwrap_or(1);
    target.add_devices(max_devices, |i| device_metrics(&format!("bench-{}", i + 1)));
    let dur = Duration::from_secs_f64(a.seconds);
    let mut points: Vec<Point> = Vec::new();
    let driver = if a.no_metrics { Driver::SheepdevNoMetrics } else { Driver::Sheepdev };
    let both = a.coalesce.contains(&true) && a.coalesce.contains(&false);
    println!(
        "| workload | shards | depth | devices | coalesce | merged % | sheepdev IOPS | MiB/s | p50 µs | p99 µs | p99.9 µs | raw IOPS | raw p99 µs | IOPS ratio | p99 ratio |{}",
        if a.metrics_overhead { " metrics off IOPS | on/off |" } else { "" }
    );
    println!(
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|{}",
        if a.metrics_overhead { "---:|---:|" } else { "" }
    );
    let mut pairs: Vec<String> = Vec::new();
    let mut by_devices: Vec<String> = Vec::new();
    // Per point: the sheepdev/raw ratios of each repetition (against the raw run next to
    // it), and for seqwrite-1m the MiB/s ÷ one request at a time.
    let mut goals: Vec<Goal> = Vec::new();
    let run = |w, d, shards, depth, devices, co| {
        bench::run_point(&target, w, d, shards, depth, devices, co, dur).map_err(anyhow::Error::msg)
    };
    // What each repetition measures: every coalesce setting with every device count.
    let settings: Vec<(bool, u16)> =
        a.coalesce.iter().flat_map(|&co| a.devices.iter().map(move |&dv| (co, dv))).collect();
    for &w in &a.workloads {
        // What `dog vdi write` does: one request at a time (seqwrite-1m only).
        let vs_one = w == Workload::SeqWrite1m && !a.no_raw;
        for &shards in &a.shards {
            for &depth in &a.depths {
                let (mut on, mut off) = (Vec::new(), Vec::new());
                // Per device count (in the order given): this point's runs.
                let mut per_devices: Vec<Vec<Point>> = vec![Vec::new(); a.devices.len()];
                let mut goal = Goal {
                    workload: w,
                    shards,
                    depth,
                    iops: Vec::new(),
                    p99: Vec::new(),
                    vs_one: Vec::new(),
                    one_mib_s: Vec::new(),
                };
                for rep in 0..a.repeat {
                    // The baselines run before sheepdev in even repetitions, after it in
                    // odd ones, so drift of the machine does not favour either side.
                    let baselines = |points: &mut Vec<Point>| -> anyhow::Result<(Option<Point>, Option<Point>)> {
                        let raw = if a.no_raw { None } else { Some(run(w, Driver::Raw, shards, depth, 1, true)?) };
                        let one = if vs_one { Some(run(w, Driver::Raw, 1, 1, 1, true)?) } else { None };
                        for p in raw.iter().chain(&one) {
                            if p.errors > 0 {
                                eprintln!("bench: {} raw errors in {} shards={} depth={}", p.errors, w.name(), p.shards, p.depth);
                            }
                        }
                        points.extend(raw.iter().chain(&one).cloned());
                        Ok((raw, one))
                    };
                    let before = if rep % 2 == 0 { Some(baselines(&mut points)?) } else { None };
                    let mut order = settings.clone();
                    if rep % 2 == 1 {
                        order.reverse();
                    }
                    let mut measured = Vec::new();
                    for &(co, dv) in &order {
                        let p = run(w, driver, shards, depth, dv, co)?;
                        let moff = if a.metrics_overhead {
                            Some(run(w, Driver::SheepdevNoMetrics, shards, depth, dv, co)?)
                        } else {
                            None
                        };
                        measured.push((p, moff));
                    }
                    let (raw, one) = match before {
                        Some(b) => b,
                        None => baselines(&mut points)?,
                    };
                    for (p, moff) in measured {
                        print_row(&p, raw.as_ref(), moff.as_ref());
                        if p.errors > 0 {
                            eprintln!(
                                "bench: {} errors in {} shards={shards} depth={depth}",
                                p.errors,
                                w.name()
                            );
                        }
                        if let Some(i) = a.devices.iter().position(|&d| d == p.devices) {
                            if a.coalesce.first() == Some(&p.coalesce) {
                                per_devices[i].push(p.clone());
                            }
                        }
                        // The goals count the first coalesce setting and device count given
                        // (the defaults: on, one device).
                        if a.coalesce.first() == Some(&p.coalesce)
                            && a.devices.first() == Some(&p.devices)
                        {
                            if let Some(r) = &raw {
                                goal.iops.push(p.iops / r.iops.max(1e-9));
                                goal.p99.push(p.p99_us / r.p99_us.max(1e-9));
                            }
                            if let Some(o) = &one {
                                goal.vs_one.push(p.mib_s / o.mib_s.max(1e-9));
                                goal.one_mib_s.push(o.mib_s);
                            }
                        }
                        if p.coalesce { &mut on } else { &mut off }.push(p.clone());
                        points.push(p);
                        points.extend(moff);
                    }
                }
                goals.push(goal);
                if several_devices {
                    by_devices.extend(devices_rows(w, shards, depth, &a.devices, &per_devices));
                }
                if both {
                    let each: Vec<String> = on
                        .iter()
                        .zip(&off)
                        .map(|(x, y)| format!("{:.2}", x.iops / y.iops.max(1e-9)))
                        .collect();
                    let merged = on.iter().map(|p| p.merged).sum::<u64>() as f64
                        / on.iter().map(|p| p.ios).sum::<u64>().max(1) as f64;
                    pairs.push(format!(
                        "| {} | {shards} | {depth} | {:.0} | {:.0} | **{:.2}** | {:.2} | {:.0} | {} |",
                        w.name(),
                        iops(&on),
                        iops(&off),
                        iops(&on) / iops(&off).max(1e-9),
                        p99(&on) / p99(&off).max(1e-9),
                        100.0 * merged,
                        each.join(" ")
                    ));
                }
            }
        }
    }
    print_goals(&goals, a.repeat);
    if several_devices {
        println!(
            "\nmany devices (medians of {} run(s) each, same run; the same total depth spread over the devices; against the first count given, {}; per-run ratios in run order):\n",
            a.repeat, a.devices[0]
        );
        println!("| workload | shards | depth | devices | IOPS | p99 µs | IOPS ratio | p99 ratio | runs |");
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---|");
        by_devices.iter().for_each(|l| println!("{l}"));
    }
    if both {
        println!("\ncoalesce on/off (medians of {} run(s) each, same run; per-pair ratios in run order):\n", a.repeat);
        println!("| workload | shards | depth | on IOPS | off IOPS | IOPS on/off | p99 on/off | merged % (on) | pairs |");
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---|");
        pairs.iter().for_each(|l| println!("{l}"));
    }
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_vec_pretty(&points)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &a.plot {
        let title = format!(
            "sheepdev bench: {}, {} s per point, {} MiB{}",
            a.address.as_deref().map_or("embedded store".to_string(), |s| format!("cluster {s}")),
            a.seconds,
            size >> 20,
            if a.address.is_none() {
                format!(
                    ", store {}{}",
                    if a.store_sync { "fdatasync on" } else { "sync off" },
                    if a.store_latency_ms > 0 {
                        format!(", +{} ms per object I/O", a.store_latency_ms)
                    } else {
                        String::new()
                    }
                )
            } else {
                String::new()
            }
        );
        // The curves are of the first device count given.
        let points: Vec<Point> =
            points.iter().filter(|p| p.devices == a.devices[0]).cloned().collect();
        crate::report::plot::draw(&points, &title, path)?;
        eprintln!("bench: plot written to {}", path.display());
    }
    if a.address.is_some() {
        crate::runtime::block_on(async move {
            let c = Client::connect(&Config::new([addr])).await?;
            manage::delete(&c, &VdiSpec::working(name)).await?;
            anyhow::Ok(())
        })??;
    }
    if a.linger > 0 {
        std::thread::sleep(Duration::from_secs(a.linger));
    }
    if let Some(s) = store {
        s.shutdown();
    }
    Ok(())
}

/// One point's ratios against the baselines measured next to it, one per repetition.
struct Goal {
    workload: Workload,
    shards: u16,
    depth: u16,
    iops: Vec<f64>,
    p99: Vec<f64>,
    vs_one: Vec<f64>,
    one_mib_s: Vec<f64>,
}

/// `median (min–max)` of `v`, or `-` when empty.
fn spread(v: &[f64]) -> String {
    let (lo, hi) =
        v.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &x| (l.min(x), h.max(x)));
    match v.len() {
        0 => "-".into(),
        1 => format!("{:.2}", v[0]),
        _ => format!("**{:.2}** ({lo:.2}–{hi:.2})", median(v.to_vec())),
    }
}

/// The goals table: each point's ratios against the baselines of its own repetitions, as
/// medians; and for seqwrite-1m, the point with the best median against one request at a
/// time.
fn print_goals(goals: &[Goal], repeat: u32) {
    if goals.iter().all(|g| g.iops.is_empty()) {
        return;
    }
    println!("\nratios against the baselines measured next to each run ({repeat} run(s) per point; median (min–max)):\n");
    println!("| workload | shards | depth | IOPS ÷ raw | p99 ÷ raw p99 | MiB/s ÷ one request at a time |");
    println!("|---|---:|---:|---|---|---|");
    for g in goals {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            g.workload.name(),
            g.shards,
            g.depth,
            spread(&g.iops),
            spread(&g.p99),
            spread(&g.vs_one)
        );
    }
    if let Some(g) = best_vs_one(goals) {
        println!(
            "\nseqwrite-1m one request at a time (like `dog vdi write`): {:.1} MiB/s (median); best sheepdev point, {} shard(s) at depth {}: {:.2}x it (median of {} run(s))\n",
            median(g.one_mib_s.clone()),
            g.shards,
            g.depth,
            median(g.vs_one.clone()),
            g.vs_one.len()
        );
    }
}

/// The seqwrite-1m point with the best median ratio against one request at a time.
fn best_vs_one(goals: &[Goal]) -> Option<&Goal> {
    goals
        .iter()
        .filter(|g| !g.vs_one.is_empty())
        .max_by(|x, y| median(x.vs_one.clone()).total_cmp(&median(y.vs_one.clone())))
}

/// The many-devices table's rows of one point: each device count against the first given
/// (`runs[i]`: the runs with `devices[i]`, in run order).
fn devices_rows(
    w: Workload,
    shards: u16,
    depth: u16,
    devices: &[u16],
    runs: &[Vec<Point>],
) -> Vec<String> {
    let Some(base) = runs.first() else { return Vec::new() };
    devices
        .iter()
        .zip(runs)
        .map(|(d, v)| {
            let each: Vec<String> = v
                .iter()
                .zip(base)
                .map(|(x, y)| format!("{:.2}", x.iops / y.iops.max(1e-9)))
                .collect();
            format!(
                "| {} | {shards} | {depth} | {d} | {:.0} | {:.0} | **{:.2}** | {:.2} | {} |",
                w.name(),
                iops(v),
                p99(v),
                iops(v) / iops(base).max(1e-9),
                p99(v) / p99(base).max(1e-9),
                each.join(" ")
            )
        })
        .collect()
}

/// One table row: a sheepdev point against the raw ceiling (and metrics off).
fn print_row(p: &Point, raw: Option<&Point>, off: Option<&Point>) {
    let (rio, rp99, ratio, pratio) = match raw {
        Some(r) => (
            format!("{:.0}", r.iops),
            format!("{:.0}", r.p99_us),
            format!("{:.2}", p.iops / r.iops.max(1e-9)),
            format!("{:.2}", p.p99_us / r.p99_us.max(1e-9)),
        ),
        None => ("-".into(), "-".into(), "-".into(), "-".into()),
    };
    let overhead = off
        .map_or(String::new(), |o| format!(" {:.0} | {:.3} |", o.iops, p.iops / o.iops.max(1e-9)));
    println!(
        "| {} | {} | {} | {} | {} | {:.0} | {:.0} | {:.1} | {:.0} | {:.0} | {:.0} | {rio} | {rp99} | {ratio} | {pratio} |{overhead}",
        p.workload.name(),
        p.shards,
        p.depth,
        p.devices,
        if p.coalesce { "on" } else { "off" },
        100.0 * p.merged as f64 / p.ios.max(1) as f64,
        p.iops,
        p.mib_s,
        p.p50_us,
        p.p99_us,
        p.p999_us
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn goal(depth: u16, vs_one: &[f64]) -> Goal {
        Goal {
            workload: Workload::SeqWrite1m,
            shards: 2,
            depth,
            iops: vec![1.0],
            p99: vec![1.0],
            vs_one: vs_one.to_vec(),
            one_mib_s: vec![700.0],
        }
    }

    #[test]
    fn spread_is_median_and_range() {
        assert_eq!(spread(&[]), "-");
        assert_eq!(spread(&[0.5]), "0.50");
        assert_eq!(spread(&[3.0, 1.0, 2.0]), "**2.00** (1.00–3.00)");
        assert_eq!(spread(&[1.0, 4.0]), "**2.50** (1.00–4.00)");
    }

    /// The best point is chosen by its median, so one lucky run does not make it.
    #[test]
    fn best_point_is_the_best_median_not_the_best_run() {
        let goals = [goal(8, &[2.9, 3.0, 3.1]), goal(32, &[2.5, 2.6, 4.0]), goal(1, &[])];
        assert_eq!(best_vs_one(&goals).map(|g| g.depth), Some(8));
        assert!(best_vs_one(&goals[2..]).is_none(), "no point measured against one at a time");
    }
}
