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
use crate::sheep::{load_volume, parse_gateways, Client, Config};
use crate::vdi::VdiSpec;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// A cluster to measure (host[:port]); default: an embedded store started for the run.
    #[arg(short = 'a', long = "address")]
    address: Option<String>,
    /// Workloads, comma-separated: randread-4k, randwrite-4k, randrw-64k, seqwrite-1m.
    #[arg(long, value_delimiter = ',', default_value = "randread-4k,randwrite-4k,randrw-64k,seqwrite-1m")]
    workloads: Vec<Workload>,
    /// Requests in flight per shard, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,128", value_parser = clap::value_parser!(u16).range(1..=1024))]
    depths: Vec<u16>,
    /// Shard counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2", value_parser = clap::value_parser!(u16).range(1..=64))]
    shards: Vec<u16>,
    /// Seconds per point.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Bytes of the VDI the workloads touch (prefilled first).
    #[arg(long, default_value = "1G", value_parser = super::size_arg)]
    size: u64,
    /// Skip the raw-protocol ceiling.
    #[arg(long)]
    no_raw: bool,
    /// Make the embedded store fdatasync every write (default: like sheep -n).
    #[arg(long)]
    store_sync: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics while the benchmark runs.
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Run the shards without metrics (to compare; see --metrics-overhead).
    #[arg(long)]
    no_metrics: bool,
    /// Measure each point with metrics on and off, same run, and report the difference.
    #[arg(long, conflicts_with = "no_metrics")]
    metrics_overhead: bool,
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

pub fn run(a: BenchArgs) -> anyhow::Result<()> {
    if !(0.1..=3600.0).contains(&a.seconds) {
        bail!("--seconds must be between 0.1 and 3600");
    }
    if a.size < (4 << 20) {
        bail!("--size must be at least 4M");
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
        Some(s) => (None, parse_gateways(s).map_err(anyhow::Error::msg)?[0]),
        None => {
            let cfg = crate::store::Config {
                dir: dir.path().to_path_buf(),
                listen: vec!["127.0.0.1:0".parse()?],
                sync: a.store_sync,
                ..Default::default()
            };
            let s = crate::store::Store::start(cfg).context("starting the embedded store")?;
            let addr = s.local_addrs()[0];
            (Some(s), addr)
        }
    };
    let name = VdiName::new(&format!("sheepdev-bench-{}", std::process::id())).map_err(anyhow::Error::msg)?;
    let size = a.size;
    let vol = super::block_on({
        let name = name.clone();
        async move {
            let c = Rc::new(Client::connect(&Config::new(vec![addr])).await?);
            let vid = manage::create(&c, &name, size, Redundancy::Default, 0).await?.vid;
            anyhow::Ok(load_volume(&c, vid, false).await?)
        }
    })??;
    if let Some(maddr) = a.metrics_addr {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new().name("bench-metrics".into()).spawn(move || {
            let r = super::block_on(async move {
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
        rx.recv().map_err(|_| anyhow::anyhow!("the metrics server did not start"))?.map_err(anyhow::Error::msg)?;
        eprintln!("bench: metrics on http://{maddr}/metrics");
    }
    let max_shards = a.shards.iter().copied().max().unwrap_or(1);
    let max_depth = a.depths.iter().copied().max().unwrap_or(1);
    let metrics = (!a.no_metrics).then(|| crate::metrics::DeviceMetrics::new("bench", name.as_str(), "", false, max_shards, max_depth, size));
    let target = bench::Target { addr, vol: Arc::new(vol), region: size, metrics };
    eprintln!("bench: prefilling {} MiB of {name} on {addr}", size >> 20);
    bench::prefill(&target).map_err(anyhow::Error::msg)?;
    let dur = Duration::from_secs_f64(a.seconds);
    let mut points: Vec<Point> = Vec::new();
    let driver = if a.no_metrics { Driver::SheepdevNoMetrics } else { Driver::Sheepdev };
    println!(
        "| workload | shards | depth | sheepdev IOPS | MiB/s | p50 µs | p99 µs | p99.9 µs | raw IOPS | raw p99 µs | IOPS ratio | p99 ratio |{}",
        if a.metrics_overhead { " metrics off IOPS | on/off |" } else { "" }
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|{}", if a.metrics_overhead { "---:|---:|" } else { "" });
    for &w in &a.workloads {
        for &shards in &a.shards {
            for &depth in &a.depths {
                let p = bench::run_point(&target, w, driver, shards, depth, dur).map_err(anyhow::Error::msg)?;
                let off = if a.metrics_overhead {
                    Some(bench::run_point(&target, w, Driver::SheepdevNoMetrics, shards, depth, dur).map_err(anyhow::Error::msg)?)
                } else {
                    None
                };
                let raw =
                    if a.no_raw { None } else { Some(bench::run_point(&target, w, Driver::Raw, shards, depth, dur).map_err(anyhow::Error::msg)?) };
                let (rio, rp99, ratio, pratio) = match &raw {
                    Some(r) => (
                        format!("{:.0}", r.iops),
                        format!("{:.0}", r.p99_us),
                        format!("{:.2}", p.iops / r.iops.max(1e-9)),
                        format!("{:.2}", p.p99_us / r.p99_us.max(1e-9)),
                    ),
                    None => ("-".into(), "-".into(), "-".into(), "-".into()),
                };
                let overhead = off.as_ref().map_or(String::new(), |o| format!(" {:.0} | {:.3} |", o.iops, p.iops / o.iops.max(1e-9)));
                println!(
                    "| {} | {shards} | {depth} | {:.0} | {:.1} | {:.0} | {:.0} | {:.0} | {rio} | {rp99} | {ratio} | {pratio} |{overhead}",
                    w.name(),
                    p.iops,
                    p.mib_s,
                    p.p50_us,
                    p.p99_us,
                    p.p999_us
                );
                if p.errors > 0 || raw.as_ref().is_some_and(|r| r.errors > 0) {
                    eprintln!("bench: {} errors in {} shards={shards} depth={depth}", p.errors + raw.as_ref().map_or(0, |r| r.errors), w.name());
                }
                points.push(p);
                points.extend(raw);
                points.extend(off);
            }
        }
        if w == Workload::SeqWrite1m && !a.no_raw {
            // What `dog vdi write` does: one request at a time.
            let one = bench::run_point(&target, w, Driver::Raw, 1, 1, dur).map_err(anyhow::Error::msg)?;
            let best = points.iter().filter(|p| p.workload == w && p.driver == driver).map(|p| p.mib_s).fold(0.0, f64::max);
            println!(
                "\nseqwrite-1m one request at a time (like `dog vdi write`): {:.1} MiB/s; best sheepdev: {best:.1} MiB/s ({:.2}x)\n",
                one.mib_s,
                best / one.mib_s.max(1e-9)
            );
            points.push(one);
        }
    }
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_vec_pretty(&points)?).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &a.plot {
        let title = format!(
            "sheepdev bench: {}, {} s per point, {} MiB{}",
            a.address.as_deref().map_or("embedded store".to_string(), |s| format!("cluster {s}")),
            a.seconds,
            size >> 20,
            if a.address.is_none() {
                if a.store_sync {
                    ", store fdatasync on"
                } else {
                    ", store sync off"
                }
            } else {
                ""
            }
        );
        crate::report::plot::draw(&points, &title, path)?;
        eprintln!("bench: plot written to {}", path.display());
    }
    if a.address.is_some() {
        super::block_on(async move {
            let c = Client::connect(&Config::new(vec![addr])).await?;
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
