//! The command line: clap definitions and dispatch. Control plane only: it may allocate,
//! block and use anyhow; every failure reaches `main` as one line and a non-zero exit.

#[cfg(feature = "tools")]
mod batch;
#[cfg(feature = "tools")]
mod bench;
mod dev;
#[cfg(feature = "tools")]
mod fault;
#[cfg(feature = "tools")]
mod report;
mod store;
mod vdi;

use std::path::PathBuf;

use clap::error::{ContextKind, ContextValue};
use clap::{Parser, Subcommand};

/// Sheepdog VDIs as Linux block devices through ublk.
#[derive(Debug, Parser)]
#[command(name = "sheepdev", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon that hosts every mapped device (control socket, shards).
    Serve(dev::ServeArgs),
    /// Map a VDI (or a snapshot) as /dev/ublkbN; prints the device path.
    Add(dev::AddArgs),
    /// Unmap a device: VDI[:SNAP], /dev/ublkbN or --id N.
    Del(dev::DelArgs),
    /// Re-attach a device a previous daemon left (`serve` re-attaches them all at start;
    /// this retries one whose re-attach failed): VDI[:SNAP], /dev/ublkbN or --id N.
    Recover(dev::RecoverArgs),
    /// Grow a mapped device's VDI and the device with I/O running (UPDATE_SIZE, Linux
    /// 6.16+; older kernels: the VDI grows, the device on its next add): VDI, /dev/ublkbN
    /// or --id N, then SIZE. Shrinking is refused.
    Resize(dev::ResizeArgs),
    /// List mapped devices (`--json` includes the ublk features each device has).
    List(dev::ListArgs),
    /// The ublk features of this kernel's driver and what sheepdev does with each.
    Features(dev::FeaturesArgs),
    /// Latency percentiles (p50/p99/p99.9) per device and op, from the daemon.
    Stats(dev::ListArgs),
    /// The no-kernel data-plane benchmark: shards vs the raw protocol, same run.
    #[cfg(feature = "tools")]
    Bench(bench::BenchArgs),
    /// fio JSON outputs as a markdown table (IOPS, MiB/s, p50/p99/p99.9 per job), optionally
    /// as ratios to a ceiling run of the same jobs (e.g. on a ublk null device).
    #[cfg(feature = "tools")]
    FioReport(report::FioReportArgs),
    /// Manage VDIs on a Sheepdog cluster or the embedded store (no `dog` needed).
    Vdi(vdi::VdiArgs),
    /// Run the embedded store: a single-node store for tests, demos and benchmarks, not a
    /// Sheepdog cluster. It speaks sheep's client protocol and keeps objects as files in DIR.
    Store(store::StoreArgs),
    /// A TCP fault proxy between sheepdev and a sheep endpoint (tests; one line per fault).
    #[cfg(feature = "tools")]
    #[command(hide = true)]
    FaultProxy(fault::FaultProxyArgs),
    /// A ublk null device on libublk's own queue loop with or without UBLK_F_BATCH_IO
    /// (tests: bench/vm-batch.sh).
    #[cfg(feature = "tools")]
    #[command(hide = true)]
    BatchNull(batch::BatchNullArgs),
    /// Print a systemd unit for `sheepdev serve` (crash → restart → devices re-attached).
    SystemdUnit(dev::SystemdUnitArgs),
}

/// Run the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(a) => dev::serve(a),
        Command::Add(a) => dev::add(a),
        Command::Del(a) => dev::del(a),
        Command::Recover(a) => dev::recover(a),
        Command::SystemdUnit(a) => dev::systemd_unit(a),
        Command::List(a) => dev::list(a),
        Command::Resize(a) => dev::resize(a),
        Command::Features(a) => dev::features(a),
        Command::Stats(a) => dev::stats(a),
        #[cfg(feature = "tools")]
        Command::Bench(a) => bench::run(a),
        #[cfg(feature = "tools")]
        Command::FioReport(a) => report::run(a),
        Command::Vdi(a) => vdi::run(a),
        Command::Store(a) => store::run(a),
        #[cfg(feature = "tools")]
        Command::FaultProxy(a) => fault::run(a),
        #[cfg(feature = "tools")]
        Command::BatchNull(a) => batch::run(a),
    }
}

/// The line to print when a build without `--features tools` is asked for one of its
/// subcommands (`bench`, `fio-report`, `fault-proxy`); `None` for any other parse error.
pub fn without_tools(e: &clap::Error) -> Option<String> {
    const TOOLS: [&str; 4] = ["bench", "fio-report", "fault-proxy", "batch-null"];
    match e.get(ContextKind::InvalidSubcommand) {
        Some(ContextValue::String(s)) if !cfg!(feature = "tools") && TOOLS.contains(&s.as_str()) => {
            Some(format!("`{s}` is test and benchmark tooling, not in this build (cargo build --release --features tools)"))
        }
        _ => None,
    }
}

/// Parse a size flag (`4M`, `10G`).
pub fn size_arg(s: &str) -> Result<u64, String> {
    crate::vdi::parse_size(s)
}

pub(crate) fn metrics_addr(s: &str) -> Result<dev::MetricsAddr, String> {
    if s == "off" {
        return Ok(dev::MetricsAddr(None));
    }
    s.parse().map(|a| dev::MetricsAddr(Some(a))).map_err(|_| {
        format!("bad metrics address {s:?}: expected IP:PORT (e.g. 127.0.0.1:9477) or off")
    })
}

pub(crate) fn path_arg(s: &str) -> Result<PathBuf, String> {
    if s.is_empty() {
        return Err("empty path".into());
    }
    Ok(PathBuf::from(s))
}
