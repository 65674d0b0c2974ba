//! `sheepdev vdi …`: VDI management and byte I/O, so nobody needs sheep's `dog`.
//!
//! Contract: arguments are validated before the first request; `write` and `read` keep
//! up to `--depth` requests in flight and draw a progress bar only when stderr is a
//! terminal; errors are one line naming the VDI and the problem.

use std::collections::VecDeque;
use std::io::{IsTerminal, Read, Write};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use crate::proto::VdiName;
use crate::sheep::manage::{self, Redundancy};
use crate::sheep::{parse_gateways, Client, Config, Gateway, VolumeIo};
use crate::vdi::VdiSpec;

#[derive(Debug, Args)]
pub struct VdiArgs {
    /// Gateways: host[:port] (port 7000 by default) or unix:/path (a sheep's `<dir>/sock` on
    /// this host), comma-separated.
    #[arg(short = 'a', long = "address", global = true, default_value = "127.0.0.1:7000", value_parser = gateways)]
    address: Gateways,
    /// Seconds to wait for a gateway to accept the connection.
    #[arg(long, global = true, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=600))]
    connect_timeout: u64,
    #[command(subcommand)]
    cmd: VdiCmd,
}

#[derive(Debug, Subcommand)]
enum VdiCmd {
    /// Create a VDI.
    Create {
        name: String,
        /// Size with an optional K/M/G/T suffix.
        #[arg(value_parser = super::size_arg)]
        size: u64,
        /// Number of copies (1..31), or D:P for erasure coding; default: the cluster's.
        #[arg(long)]
        copies: Option<Redundancy>,
        /// Object size, a power of two from 1M to 2G; default: the cluster's (4M).
        #[arg(long, value_parser = super::size_arg)]
        object_size: Option<u64>,
    },
    /// List VDIs and snapshots.
    List {
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Snapshot the working VDI NAME (it gets a new vid; the snapshot keeps the old one).
    Snapshot {
        name: String,
        #[arg(short = 't', long)]
        tag: Option<String>,
    },
    /// Clone snapshot NAME:SNAP (id or tag) to a new VDI NEW.
    Clone { src: String, new: String },
    /// Make a new working VDI of NAME from snapshot NAME:SNAP; the current one is kept as a snapshot.
    Rebase { src: String },
    /// Delete a VDI or a snapshot (NAME or NAME:SNAP), its objects included.
    Delete { spec: String },
    /// Write stdin into a VDI.
    Write {
        spec: String,
        #[arg(long, default_value = "0", value_parser = super::size_arg)]
        offset: u64,
        /// Requests in flight.
        #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=1024))]
        depth: u16,
    },
    /// Read a VDI or snapshot to stdout.
    Read {
        spec: String,
        #[arg(long, default_value = "0", value_parser = super::size_arg)]
        offset: u64,
        /// Bytes to read; default: to the end of the VDI.
        #[arg(long, value_parser = super::size_arg)]
        length: Option<u64>,
        #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=1024))]
        depth: u16,
    },
}

/// The parsed `-a` list (a newtype, so clap treats it as one value).
#[derive(Debug, Clone)]
struct Gateways(Vec<Gateway>);

fn gateways(s: &str) -> Result<Gateways, String> {
    parse_gateways(s).map(Gateways)
}

fn spec(s: &str) -> anyhow::Result<VdiSpec> {
    s.parse::<VdiSpec>().map_err(anyhow::Error::msg)
}

fn name(s: &str) -> anyhow::Result<VdiName> {
    if s.contains(':') {
        bail!("vdi name {s:?} cannot contain ':' here (use NAME, not NAME:SNAP)");
    }
    VdiName::new(s).map_err(|e| anyhow::anyhow!("vdi {s:?}: {e}"))
}

pub fn run(a: VdiArgs) -> anyhow::Result<()> {
    let mut cfg = Config::new(a.address.0.clone());
    cfg.connect_timeout = Duration::from_secs(a.connect_timeout);
    crate::runtime::block_on(async move {
        // Validate everything the user typed before talking to anyone.
        let cmd = a.cmd;
        let plan = Plan::new(cmd)?;
        let client = Rc::new(Client::connect(&cfg).await?);
        plan.run(client).await
    })?
}

/// A validated command.
enum Plan {
    Create { name: VdiName, size: u64, redundancy: Redundancy, object_size: u64 },
    List { json: bool },
    Snapshot { name: VdiName, tag: Option<VdiName> },
    Clone { src: VdiSpec, new: VdiName },
    Rebase { src: VdiSpec },
    Delete { spec: VdiSpec },
    Write { spec: VdiSpec, offset: u64, depth: usize },
    Read { spec: VdiSpec, offset: u64, length: Option<u64>, depth: usize },
}

impl Plan {
    fn new(cmd: VdiCmd) -> anyhow::Result<Plan> {
        Ok(match cmd {
            VdiCmd::Create { name: n, size, copies, object_size } => {
                let name = name(&n)?;
                if let Some(os) = object_size {
                    if !os.is_power_of_two() {
                        bail!("object size {os} is not a power of two");
                    }
                    manage::check_size(size, os.trailing_zeros() as u8).with_context(|| format!("vdi {n}"))?;
                }
                Plan::Create { name, size, redundancy: copies.unwrap_or(Redundancy::Default), object_size: object_size.unwrap_or(0) }
            }
            VdiCmd::List { json } => Plan::List { json },
            VdiCmd::Snapshot { name: n, tag } => {
                let tag = tag.map(|t| {
                    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
                        bail!("tag {t:?} is all digits: it would read as a snapshot id, choose another")
                    }
                    VdiName::new(&t).map_err(|e| anyhow::anyhow!("tag {t:?}: {e}"))
                });
                Plan::Snapshot { name: name(&n)?, tag: tag.transpose()? }
            }
            VdiCmd::Clone { src, new } => Plan::Clone { src: spec(&src)?, new: name(&new)? },
            VdiCmd::Rebase { src } => Plan::Rebase { src: spec(&src)? },
            VdiCmd::Delete { spec: s } => Plan::Delete { spec: spec(&s)? },
            VdiCmd::Write { spec: s, offset, depth } => Plan::Write { spec: spec(&s)?, offset, depth: depth.into() },
            VdiCmd::Read { spec: s, offset, length, depth } => Plan::Read { spec: spec(&s)?, offset, length, depth: depth.into() },
        })
    }

    async fn run(self, c: Rc<Client>) -> anyhow::Result<()> {
        match self {
            Plan::Create { name, size, redundancy, object_size } => {
                let info = manage::create(&c, &name, size, redundancy, object_size).await.with_context(|| format!("creating vdi {name}"))?;
                eprintln!("created {name} (vid {})", info.vid);
            }
            Plan::List { json } => {
                let rows = manage::list(&c).await.context("listing vdis")?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&rows)?);
                } else {
                    print_table(&rows);
                }
            }
            Plan::Snapshot { name, tag } => {
                let (old, new) = manage::snapshot(&c, &name, tag.as_ref()).await.with_context(|| format!("snapshotting {name}"))?;
                let snap_id = c.read_inode_header(old).await?.snap_id;
                eprintln!("snapshot {name}:{snap_id} (vid {old}); working vdi is now vid {new}");
            }
            Plan::Clone { src, new } => {
                let info = manage::clone(&c, &src, &new).await.with_context(|| format!("cloning {src} to {new}"))?;
                eprintln!("cloned {src} to {new} (vid {})", info.vid);
            }
            Plan::Rebase { src } => {
                let (old, new) = manage::rebase(&c, &src).await.with_context(|| format!("rebasing {} on {src}", src.name))?;
                eprintln!("{} is now vid {} made from {src}; the previous working vdi (vid {old}) is kept as a snapshot", src.name, new.vid);
            }
            Plan::Delete { spec } => {
                let vid = manage::delete(&c, &spec).await.with_context(|| format!("deleting {spec}"))?;
                eprintln!("deleted {spec} (vid {vid})");
            }
            Plan::Write { spec, offset, depth } => write(c, &spec, offset, depth).await.with_context(|| format!("writing {spec}"))?,
            Plan::Read { spec, offset, length, depth } => read(c, &spec, offset, length, depth).await.with_context(|| format!("reading {spec}"))?,
        }
        Ok(())
    }
}

fn print_table(rows: &[manage::Listed]) {
    println!("{:<2} {:<24} {:>5} {:>10} {:>10} {:>10} {:>8} {:<16}", "", "Name", "Id", "Size", "Used", "Shared", "Vid", "Tag");
    for r in rows {
        println!(
            "{:<2} {:<24} {:>5} {:>10} {:>10} {:>10} {:>8x} {:<16}",
            if r.snapshot { "s" } else { "" },
            r.name,
            r.snap_id,
            human(r.size),
            human(r.used),
            human(r.shared),
            r.vid,
            r.tag
        );
    }
}

fn human(b: u64) -> String {
    const U: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

fn progress(total: Option<u64>) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let pb = match total {
        Some(t) => indicatif::ProgressBar::new(t),
        None => indicatif::ProgressBar::new_spinner(),
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}") {
        pb.set_style(style);
    }
    pb
}

/// Bytes in one request: up to the next object boundary, at most 4 MiB.
fn chunk_len(offset: u64, bss: u8, left: u64) -> u64 {
    let os = 1u64 << bss;
    (os - (offset & (os - 1))).min(4 << 20).min(left)
}

async fn open(c: &Rc<Client>, spec: &VdiSpec, read_only: bool) -> anyhow::Result<Rc<VolumeIo>> {
    let info = c.vdi_info(&spec.name, &spec.snap).await?;
    if !read_only && spec.snap.is_snapshot() {
        bail!("{spec} is a snapshot and cannot be written (clone it, or rebase onto it)");
    }
    Ok(Rc::new(VolumeIo::open(c.clone(), info.vid, read_only).await?))
}

async fn write(c: Rc<Client>, spec: &VdiSpec, offset: u64, depth: usize) -> anyhow::Result<()> {
    let vol = open(&c, spec, false).await?;
    let size = vol.size();
    let bss = vol.header().block_size_shift;
    // A regular file on stdin: check the whole length before writing anything.
    let stdin_len = std::fs::metadata("/dev/stdin").ok().filter(|m| m.is_file()).map(|m| m.len());
    if let Some(len) = stdin_len {
        if offset.saturating_add(len) > size {
            bail!("{len} bytes at offset {offset} do not fit in the vdi's {size} bytes");
        }
    }
    let pb = progress(stdin_len);
    let started = Instant::now();
    let mut inflight: VecDeque<glommio::Task<Result<(), crate::sheep::Error>>> = VecDeque::new();
    let mut pos = offset;
    let mut reader = Some(std::io::stdin());
    loop {
        let want = chunk_len(pos, bss, size.saturating_sub(pos)).max(1) as usize;
        let rd = reader.take().context("stdin lost")?;
        let (rd, buf) = glommio::executor()
            .spawn_blocking(move || {
                let mut buf = vec![0u8; want];
                let mut got = 0;
                let mut rd = rd;
                while got < want {
                    match rd.read(&mut buf[got..]) {
                        Ok(0) => break,
                        Ok(n) => got += n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => return (rd, Err(e)),
                    }
                }
                buf.truncate(got);
                (rd, Ok(buf))
            })
            .await;
        reader = Some(rd);
        let buf = buf.context("reading stdin")?;
        if buf.is_empty() {
            break;
        }
        if pos + buf.len() as u64 > size {
            bail!("input goes beyond the end of the vdi ({size} bytes) at offset {pos}; {} bytes were written", pos - offset);
        }
        let (v, at, n) = (vol.clone(), pos, buf.len() as u64);
        inflight.push_back(glommio::spawn_local(async move { v.write(at, &buf).await }));
        pos += n;
        pb.set_position(pos - offset);
        if inflight.len() >= depth {
            if let Some(t) = inflight.pop_front() {
                t.await?;
            }
        }
    }
    while let Some(t) = inflight.pop_front() {
        t.await?;
    }
    pb.finish_and_clear();
    report("wrote", pos - offset, started, &c);
    Ok(())
}

async fn read(c: Rc<Client>, spec: &VdiSpec, offset: u64, length: Option<u64>, depth: usize) -> anyhow::Result<()> {
    let vol = open(&c, spec, true).await?;
    let size = vol.size();
    let bss = vol.header().block_size_shift;
    let len = length.unwrap_or(size.saturating_sub(offset));
    if offset.checked_add(len).is_none_or(|end| end > size) {
        bail!("{len} bytes at offset {offset} are beyond the vdi's {size} bytes");
    }
    let pb = progress(Some(len));
    let started = Instant::now();
    let mut out = std::io::stdout().lock();
    let mut inflight: VecDeque<glommio::Task<Result<Vec<u8>, crate::sheep::Error>>> = VecDeque::new();
    let mut pos = offset;
    let end = offset + len;
    let mut done = 0u64;
    while pos < end || !inflight.is_empty() {
        while pos < end && inflight.len() < depth {
            let n = chunk_len(pos, bss, end - pos);
            let (v, at) = (vol.clone(), pos);
            inflight.push_back(glommio::spawn_local(async move {
                let mut buf = vec![0u8; n as usize];
                v.read(at, &mut buf).await.map(|()| buf)
            }));
            pos += n;
        }
        if let Some(t) = inflight.pop_front() {
            let buf = t.await?;
            out.write_all(&buf).context("writing stdout")?;
            done += buf.len() as u64;
            pb.set_position(done);
        }
    }
    out.flush().context("writing stdout")?;
    pb.finish_and_clear();
    report("read", len, started, &c);
    Ok(())
}

fn report(what: &str, bytes: u64, started: Instant, c: &Client) {
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    let mibs = bytes as f64 / secs / (1 << 20) as f64;
    tracing::info!("{what} {bytes} bytes in {secs:.2} s ({mibs:.1} MiB/s), up to {} requests in flight", c.peak_inflight());
}
