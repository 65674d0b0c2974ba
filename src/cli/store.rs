//! `sheepdev store`: run the embedded store in the foreground until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::store::{Config, Store};

#[derive(Debug, Args)]
pub struct StoreArgs {
    /// Directory holding the objects (created if missing).
    #[arg(long, value_parser = super::path_arg)]
    dir: PathBuf,
    /// Address to listen on; repeat for several gateways of one store.
    #[arg(long, default_value = "127.0.0.1:7000", value_parser = listen_arg)]
    listen: Vec<SocketAddr>,
    /// Enforce VDI locks (like a cluster formatted with `dog cluster format -l`).
    #[arg(long)]
    locking: bool,
    /// Acknowledge writes before they reach stable storage (like sheep -n): benchmarks only.
    #[arg(long)]
    no_sync: bool,
    /// Redundancy the store reports as the cluster default.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=31))]
    copies: u8,
    /// Emulated disk latency in milliseconds added to every object read and write (tests).
    #[arg(long, default_value_t = 0, hide = true, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    slow_disk_ms: u64,
    /// Worker threads serving requests.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    workers: u16,
    /// Benchmark tuning knob: each connection's reader answers object reads itself and
    /// sends a burst of them in one write, instead of handing each to a worker (see
    /// tuning/README.md, "The embedded store's read path"). Off by default.
    #[arg(long)]
    fast_reads: bool,
}

fn listen_arg(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| format!("bad listen address {s:?}: expected IP:PORT, e.g. 127.0.0.1:7000"))
}

pub fn run(a: StoreArgs) -> anyhow::Result<()> {
    let cfg = Config {
        dir: a.dir.clone(),
        listen: a.listen,
        locking: a.locking,
        sync: !a.no_sync,
        copies: a.copies,
        workers: usize::from(a.workers),
        object_delay: std::time::Duration::from_millis(a.slow_disk_ms),
        fast_reads: a.fast_reads,
    };
    let store =
        Store::start(cfg).with_context(|| format!("starting the store in {}", a.dir.display()))?;
    for addr in store.local_addrs() {
        eprintln!("sheepdev store: serving {} on {addr}", a.dir.display());
    }
    store.wait();
    Ok(())
}
