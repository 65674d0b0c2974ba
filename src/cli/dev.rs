//! `sheepdev serve | add | del | recover | list | systemd-unit`: the daemon and the commands
//! that talk to it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::Args;

use crate::daemon::{self, AddRequest, Request, Target};
use crate::sheep::parse_gateways;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Control socket (root only); default $SHEEPDEV_CONTROL or /run/sheepdev/control.sock.
    #[arg(long, value_parser = super::path_arg)]
    control: Option<PathBuf>,
    /// Where the device table is persisted.
    #[arg(long, default_value = "/run/sheepdev", value_parser = super::path_arg)]
    state_dir: PathBuf,
    /// Serve Prometheus metrics at http://ADDR/metrics (`off` to disable). Binding beyond
    /// loopback is an explicit choice.
    #[arg(long, default_value = "127.0.0.1:9477", value_parser = super::metrics_addr)]
    metrics_addr: MetricsAddr,
    /// CPUs of the data plane, one pinned core thread each serving queue q of every device
    /// (as taskset: `0-3,6`); default: every CPU this process may run on.
    #[arg(long, value_parser = cpu_list)]
    cores: Option<CpuList>,
    /// Request buffers per core thread, in MiB: what its requests in flight may hold at
    /// once (Linux 6.5+, NEED_GET_DATA; older kernels keep depth × max-io per queue).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    buffers: u32,
    /// On SIGTERM/SIGINT, quiesce each device before exiting (`auto`: where the kernel has
    /// UBLK_F_QUIESCE, 6.16+): requests in flight finish instead of being issued again by
    /// the next daemon. `off` (default: no shorter stall measured, VM scenario 10): the
    /// kernel requeues them when the daemon's files close.
    #[arg(long, default_value = "off", value_parser = ["auto", "off"])]
    quiesce: String,
}

/// `--cores`: CPU ids.
#[derive(Debug, Clone)]
pub struct CpuList(Vec<usize>);

fn cpu_list(s: &str) -> Result<CpuList, String> {
    let mut cpus = Vec::new();
    for part in s.split(',') {
        let bad = || format!("bad CPU list {s:?} (want e.g. 0-3,6)");
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => {
                (a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?)
            }
            None => {
                let n: usize = part.trim().parse().map_err(|_| bad())?;
                (n, n)
            }
        };
        if lo > hi || hi >= 4096 {
            return Err(bad());
        }
        cpus.extend(lo..=hi);
    }
    cpus.sort_unstable();
    cpus.dedup();
    let allowed: Vec<usize> =
        core_affinity::get_core_ids().unwrap_or_default().iter().map(|c| c.id).collect();
    if let Some(c) = cpus.iter().find(|c| !allowed.contains(c)) {
        return Err(format!("CPU {c} is not one this process may run on ({allowed:?})"));
    }
    Ok(CpuList(cpus))
}

/// `--metrics-addr`: an address, or `off`.
#[derive(Debug, Clone, Copy)]
pub struct MetricsAddr(pub Option<std::net::SocketAddr>);

#[derive(Debug, Args)]
pub struct AddArgs {
    /// `[HOST[:PORT]] VDI[:SNAPID|:TAG]`: the gateway (port 7000 by default, or `unix:PATH`,
    /// a sheep's own socket `<sheep dir>/sock` on this host) and the VDI.
    /// `linux:snap` maps a new writable VDI made from the snapshot (by rebase; the current
    /// working VDI is kept as a snapshot); with --read-only it maps the snapshot itself.
    #[arg(num_args = 0..=2, value_name = "[HOST[:PORT]] VDI")]
    args: Vec<String>,
    /// Gateways host[:port] or unix:/path, comma-separated (instead of HOST[:PORT]).
    #[arg(short = 'a', long = "address")]
    address: Option<String>,
    /// Hardware queues, queue q served by the daemon's core q mod cores (with fewer queues
    /// than cores, starting at core id x queues); default: one per core of the daemon
    /// (`serve --cores`).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=64))]
    queues: Option<u16>,
    /// Requests in flight per queue.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u16).range(1..=4096))]
    depth: u16,
    /// Sheep connections per shard.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=16))]
    connections: u16,
    /// Largest request (capped at the object size).
    #[arg(long, default_value = "512K", value_parser = super::size_arg)]
    max_io: u64,
    /// Map read-only (a snapshot is always read-only).
    #[arg(long)]
    read_only: bool,
    /// Do not take the exclusive VDI lock (for operators who know the VDI is not written elsewhere).
    #[arg(long)]
    shared: bool,
    /// Ask for /dev/ublkbN with this N.
    #[arg(long)]
    id: Option<u32>,
    /// Seconds a block request may wait for an unreachable cluster before it fails with EIO
    /// (0: wait forever). The device stays and recovers when the cluster returns.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    io_timeout: u64,
    /// Logical block size: 512 or 4096.
    #[arg(long, default_value_t = 512, value_parser = block_size)]
    block_size: u32,
    /// Map a ublk null device of this size instead of a VDI (a benchmark ceiling).
    #[arg(long, value_parser = super::size_arg, conflicts_with_all = ["address", "read_only", "shared"])]
    null: Option<u64>,
    /// Give each tag its own max-io buffer, which the driver copies into and out of, instead
    /// of borrowing one from the core's pool (`serve --buffers`) while a request is in
    /// flight: 1-7 % more 4k IOPS (tuning/README.md, "Copy modes") for
    /// queues x depth x max-io bytes of this device's own (128 MiB at the defaults on 2 cores).
    #[arg(long, conflicts_with = "null")]
    own_buffers: bool,
    /// Serve the device from the requests' own pages (zero copy: UBLK_F_AUTO_BUF_REG, Linux
    /// 6.16+): writes go to sheep straight from them (SEND_ZC), reads land in them, and no
    /// buffer is kept for the device at all. `auto` takes it where the kernel has it, `on`
    /// fails where it does not, `off` copies as before. Fixed when the device is made.
    #[arg(long, default_value = "auto", value_parser = ["auto", "on", "off"])]
    zero_copy: String,
}

fn block_size(s: &str) -> Result<u32, String> {
    match s {
        "512" => Ok(512),
        "4096" | "4k" | "4K" => Ok(4096),
        _ => Err(format!("block size {s:?} must be 512 or 4096")),
    }
}

#[derive(Debug, Args)]
pub struct DelArgs {
    /// VDI[:SNAP] or /dev/ublkbN.
    target: Option<String>,
    /// The device id N of /dev/ublkbN.
    #[arg(long, conflicts_with = "target")]
    id: Option<u32>,
    /// Remove the device even if the cluster is unreachable (requests in flight fail).
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
pub struct RecoverArgs {
    /// VDI[:SNAP] or /dev/ublkbN.
    target: Option<String>,
    /// The device id N of /dev/ublkbN.
    #[arg(long, conflicts_with = "target")]
    id: Option<u32>,
}

#[derive(Debug, Args)]
pub struct ResizeArgs {
    /// VDI or /dev/ublkbN (with --id: only SIZE).
    #[arg(num_args = 1..=2, required = true)]
    args: Vec<String>,
    /// The device id N of /dev/ublkbN.
    #[arg(long)]
    id: Option<u32>,
}

#[derive(Debug, Args)]
pub struct FeaturesArgs {
    /// One JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct SystemdUnitArgs {
    /// The sheepdev binary the unit runs (default: this one).
    #[arg(long, value_parser = super::path_arg)]
    bin: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[arg(long)]
    json: bool,
}

pub fn serve(a: ServeArgs) -> anyhow::Result<()> {
    daemon::serve(daemon::ServeOptions {
        control: a.control.unwrap_or_else(daemon::control_path),
        state_dir: a.state_dir,
        metrics_addr: a.metrics_addr.0,
        cores: match a.cores {
            Some(c) => c.0,
            None => core_affinity::get_core_ids()
                .map(|c| c.iter().map(|c| c.id).collect())
                .filter(|c: &Vec<usize>| !c.is_empty())
                .unwrap_or_else(|| vec![0]),
        },
        buffer_bytes: (a.buffers as usize) << 20,
        quiesce: a.quiesce == "auto",
    })?;
    Ok(())
}

fn call(req: &Request) -> anyhow::Result<daemon::Response> {
    let r = daemon::request(&daemon::control_path(), req, Duration::from_secs(180))
        .map_err(anyhow::Error::msg)?;
    for w in &r.warnings {
        eprintln!("sheepdev: warning: {w}");
    }
    if let Some(e) = &r.error {
        bail!("{e}");
    }
    Ok(r)
}

pub fn add(a: AddArgs) -> anyhow::Result<()> {
    let (gw, vdi) = match (a.args.as_slice(), a.null) {
        ([], Some(_)) => (None, String::new()),
        ([_, ..], Some(_)) => bail!("--null maps a null device: give no VDI"),
        ([], None) => bail!("which VDI? usage: sheepdev add [HOST[:PORT]] VDI[:SNAP]"),
        ([vdi], None) => (None, vdi.clone()),
        ([host, vdi], None) => (Some(host.clone()), vdi.clone()),
        _ => bail!("too many arguments: usage: sheepdev add [HOST[:PORT]] VDI[:SNAP]"),
    };
    if gw.is_some() && a.address.is_some() {
        bail!("give the gateway either as HOST[:PORT] or with -a, not both");
    }
    let gateways = match (gw.or(a.address), a.null) {
        (_, Some(_)) => Vec::new(),
        (Some(g), None) => parse_gateways(&g).map_err(anyhow::Error::msg)?,
        (None, None) => parse_gateways("127.0.0.1:7000").map_err(anyhow::Error::msg)?,
    };
    if a.null.is_none() {
        vdi.parse::<crate::vdi::VdiSpec>().map_err(anyhow::Error::msg)?;
    }
    let req = AddRequest {
        gateways: gateways.iter().map(|g| g.to_string()).collect(),
        vdi,
        // 0: the daemon gives one queue per core.
        queues: a.queues.unwrap_or(0),
        depth: a.depth,
        connections: a.connections,
        max_io: u32::try_from(a.max_io)
            .map_err(|_| anyhow::anyhow!("max-io {} is too large", a.max_io))?,
        block_size: a.block_size,
        read_only: a.read_only,
        shared: a.shared,
        id: a.id,
        io_timeout: a.io_timeout,
        null_size: a.null,
        own_buffers: a.own_buffers,
        zero_copy: a.zero_copy.parse().map_err(|e: String| anyhow::anyhow!(e))?,
    };
    let r = call(&Request::Add(req))?;
    let m = r.mapping.ok_or_else(|| anyhow::anyhow!("the daemon answered without a device"))?;
    println!("{}", m.device);
    Ok(())
}

/// The device a `del`/`recover` names.
fn target(t: Option<String>, id: Option<u32>, cmd: &str) -> anyhow::Result<Target> {
    Ok(match (t, id) {
        (_, Some(id)) => Target::Id(id),
        (Some(t), None) if t.starts_with("/dev/") => Target::Device(t),
        (Some(t), None) => {
            t.parse::<crate::vdi::VdiSpec>().map_err(anyhow::Error::msg)?;
            Target::Vdi(t)
        }
        (None, None) => {
            bail!("which device? usage: sheepdev {cmd} VDI[:SNAP] | /dev/ublkbN | --id N")
        }
    })
}

pub fn del(a: DelArgs) -> anyhow::Result<()> {
    let target = target(a.target, a.id, "del")?;
    let r = call(&Request::Del { target, force: a.force })?;
    if let Some(m) = r.mapping {
        eprintln!("removed {} ({})", m.device, m.vdi);
    }
    Ok(())
}

pub fn recover(a: RecoverArgs) -> anyhow::Result<()> {
    let target = target(a.target, a.id, "recover")?;
    let r = call(&Request::Recover { target })?;
    let m = r.mapping.ok_or_else(|| anyhow::anyhow!("the daemon answered without a device"))?;
    println!("{}", m.device);
    Ok(())
}

pub fn resize(a: ResizeArgs) -> anyhow::Result<()> {
    let (t, size) = match (a.args.as_slice(), a.id) {
        ([t, size], None) => (Some(t.clone()), size),
        ([size], Some(_)) => (None, size),
        ([_], None) => bail!("which size? usage: sheepdev resize VDI | /dev/ublkbN | --id N SIZE"),
        _ => bail!("give the device either as VDI, /dev/ublkbN or --id N, not both"),
    };
    let size = super::size_arg(size).map_err(anyhow::Error::msg)?;
    let target = target(t, a.id, "resize")?;
    let r = call(&Request::Resize { target, size })?;
    let m = r.mapping.ok_or_else(|| anyhow::anyhow!("the daemon answered without a device"))?;
    println!("{} {}", m.device, m.size);
    Ok(())
}

/// What the kernel's ublk driver has (GET_FEATURES), and what sheepdev does with each.
pub fn features(a: FeaturesArgs) -> anyhow::Result<()> {
    use crate::ublk::features::{driver, FEATURES};
    crate::ublk::available().map_err(anyhow::Error::msg)?;
    let zc = crate::ublk::zero_copy::support();
    let Some(have) = driver() else {
        bail!("this kernel's ublk driver does not answer GET_FEATURES (Linux 6.5+): every tag keeps its own buffer, no resize")
    };
    if a.json {
        let rows: Vec<serde_json::Value> = FEATURES
            .iter()
            .map(|f| serde_json::json!({"name": f.name, "kernel": have & f.bit != 0, "sheepdev": f.used}))
            .collect();
        let zc = serde_json::json!({
            "usable": zc.usable.is_ok(),
            "why_not": zc.usable.as_ref().err(),
            "ring_reads": zc.ring_reads,
        });
        let v =
            serde_json::json!({"mask": format!("{have:#x}"), "features": rows, "zero_copy": zc});
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("ublk driver features {have:#x} (GET_FEATURES)");
    println!("{:<24} {:<7} sheepdev", "feature", "kernel");
    for f in FEATURES {
        println!("{:<24} {:<7} {}", f.name, if have & f.bit != 0 { "yes" } else { "no" }, f.used);
    }
    match &zc.usable {
        Ok(()) => println!(
            "zero copy: yes (writes of 64 KiB and more sent with SEND_ZC from the request's pages, smaller ones copied out by user copy and batched; reads {})",
            if zc.ring_reads { "received into them with READ_FIXED" } else { "copied into them by user copy (this io_uring cannot READ_FIXED a socket)" },
        ),
        Err(why) => println!("zero copy: no ({why})"),
    }
    Ok(())
}

/// Print the systemd unit with this binary (or `--bin`) in `ExecStart`.
pub fn systemd_unit(a: SystemdUnitArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    let bin = match a.bin {
        Some(b) => b,
        None => {
            std::env::current_exe().context("finding this binary's path (give it with --bin)")?
        }
    };
    let bin = bin
        .to_str()
        .filter(|b| b.starts_with('/') && !b.contains(char::is_whitespace) && !b.contains('%'));
    let Some(bin) = bin else {
        bail!("the unit needs an absolute path without spaces or '%' for the binary (give one with --bin)")
    };
    print!("{}", daemon::SYSTEMD_UNIT.replace("@SHEEPDEV@", bin));
    Ok(())
}

pub fn stats(a: ListArgs) -> anyhow::Result<()> {
    let r = call(&Request::Stats)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r.stats)?);
        return Ok(());
    }
    println!(
        "{:<14} {:<20} {:<13} {:>12} {:>10} {:>10} {:>10}",
        "device", "vdi", "op", "requests", "p50 µs", "p99 µs", "p99.9 µs"
    );
    for d in &r.stats {
        for o in d.ops.iter().filter(|o| o.count > 0) {
            println!(
                "{:<14} {:<20} {:<13} {:>12} {:>10.1} {:>10.1} {:>10.1}",
                d.device, d.vdi, o.op, o.count, o.p50_us, o.p99_us, o.p999_us
            );
        }
    }
    Ok(())
}

pub fn list(a: ListArgs) -> anyhow::Result<()> {
    let r = call(&Request::List)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r.mappings)?);
        return Ok(());
    }
    println!(
        "{:<14} {:<20} {:>8} {:<10} {:<22} {:>6} {:>6} {:<8}",
        "device", "vdi", "vid", "snapshot", "gateways", "queues", "depth", "state"
    );
    for m in &r.mappings {
        println!(
            "{:<14} {:<20} {:>8x} {:<10} {:<22} {:>6} {:>6} {:<8}",
            m.device,
            m.vdi,
            m.vid,
            m.snapshot.as_deref().or(m.rebased_from.as_deref().map(|_| "rebased")).unwrap_or("-"),
            m.gateways.join(","),
            m.queues,
            m.depth,
            if m.read_only { format!("{} ro", m.state) } else { m.state.clone() }
        );
    }
    Ok(())
}
