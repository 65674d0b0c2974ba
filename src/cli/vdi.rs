//! `sheepdev vdi …`: VDI management and byte I/O, so nobody needs sheep's `dog`.
//!
//! Contract: arguments are validated before the first request; `write` and `read` look the
//! VDI up on the control plane, then move the bytes through a shard (`shard::Remote`, the
//! device's own data path), keeping up to `--depth` requests in flight and draw a progress bar only when stderr is a
//! terminal; errors are one line naming the VDI and the problem.

use std::collections::{BTreeMap, VecDeque};
use std::io::{IsTerminal, Read, Write};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use crate::block::{IoDesc, Op};
use crate::proto::VdiName;
use crate::shard::{self, Job, Remote};
use crate::sheep::manage::{self, Redundancy};
use crate::sheep::{load_volume, parse_gateways, Client, Config, Gateway};
use crate::vdi::{VdiSpec, Volume};

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
    /// Grow the working VDI NAME to SIZE, as `dog vdi resize` does (shrinking is refused).
    /// A device that maps it keeps its size: grow both with `sheepdev resize`.
    Resize {
        name: String,
        #[arg(value_parser = super::size_arg)]
        size: u64,
    },
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
    let all = a.address.0;
    // Validate everything the user typed before talking to anyone.
    let plan = Plan::new(a.cmd)?;
    // The control plane (glommio) looks the VDI up; byte I/O then runs on a shard.
    let data = crate::runtime::block_on(async move {
        let client = Rc::new(Client::connect(&cfg).await?);
        plan.run(client, &all).await
    })??;
    match data {
        None => Ok(()),
        Some(Data::Write { spec, o, offset, depth }) => {
            write(o, offset, depth).with_context(|| format!("writing {spec}"))
        }
        Some(Data::Read { spec, o, offset, length, depth }) => {
            read(o, offset, length, depth).with_context(|| format!("reading {spec}"))
        }
    }
}

/// A byte-I/O command, its VDI opened.
enum Data {
    Write { spec: VdiSpec, o: Opened, offset: u64, depth: usize },
    Read { spec: VdiSpec, o: Opened, offset: u64, length: Option<u64>, depth: usize },
}

/// A validated command.
enum Plan {
    Create { name: VdiName, size: u64, redundancy: Redundancy, object_size: u64 },
    List { json: bool },
    Snapshot { name: VdiName, tag: Option<VdiName> },
    Clone { src: VdiSpec, new: VdiName },
    Rebase { src: VdiSpec },
    Resize { name: VdiName, size: u64 },
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
                    manage::check_size(size, os.trailing_zeros() as u8)
                        .with_context(|| format!("vdi {n}"))?;
                }
                Plan::Create {
                    name,
                    size,
                    redundancy: copies.unwrap_or(Redundancy::Default),
                    object_size: object_size.unwrap_or(0),
                }
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
            VdiCmd::Resize { name: n, size } => Plan::Resize { name: name(&n)?, size },
            VdiCmd::Delete { spec: s } => Plan::Delete { spec: spec(&s)? },
            VdiCmd::Write { spec: s, offset, depth } => {
                Plan::Write { spec: spec(&s)?, offset, depth: depth.into() }
            }
            VdiCmd::Read { spec: s, offset, length, depth } => {
                Plan::Read { spec: spec(&s)?, offset, length, depth: depth.into() }
            }
        })
    }

    async fn run(self, c: Rc<Client>, all: &[Gateway]) -> anyhow::Result<Option<Data>> {
        match self {
            Plan::Create { name, size, redundancy, object_size } => {
                let info = manage::create(&c, &name, size, redundancy, object_size)
                    .await
                    .with_context(|| format!("creating vdi {name}"))?;
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
                let (old, new) = manage::snapshot(&c, &name, tag.as_ref())
                    .await
                    .with_context(|| format!("snapshotting {name}"))?;
                let snap_id = c.read_inode_header(old).await?.snap_id;
                eprintln!("snapshot {name}:{snap_id} (vid {old}); working vdi is now vid {new}");
            }
            Plan::Clone { src, new } => {
                let info = manage::clone(&c, &src, &new)
                    .await
                    .with_context(|| format!("cloning {src} to {new}"))?;
                eprintln!("cloned {src} to {new} (vid {})", info.vid);
            }
            Plan::Rebase { src } => {
                let (old, new) = manage::rebase(&c, &src)
                    .await
                    .with_context(|| format!("rebasing {} on {src}", src.name))?;
                eprintln!("{} is now vid {} made from {src}; the previous working vdi (vid {old}) is kept as a snapshot", src.name, new.vid);
            }
            Plan::Resize { name, size } => {
                let (vid, old) = manage::resize(&c, &name, size)
                    .await
                    .with_context(|| format!("resizing {name}"))?;
                if old == size {
                    eprintln!("{name} (vid {vid}) is {size} bytes already");
                } else {
                    eprintln!("{name} (vid {vid}): {old} -> {size} bytes");
                }
            }
            Plan::Delete { spec } => {
                let vid =
                    manage::delete(&c, &spec).await.with_context(|| format!("deleting {spec}"))?;
                eprintln!("deleted {spec} (vid {vid})");
            }
            Plan::Write { spec, offset, depth } => {
                let o =
                    open(&c, all, &spec, false).await.with_context(|| format!("writing {spec}"))?;
                return Ok(Some(Data::Write { spec, o, offset, depth }));
            }
            Plan::Read { spec, offset, length, depth } => {
                let o =
                    open(&c, all, &spec, true).await.with_context(|| format!("reading {spec}"))?;
                return Ok(Some(Data::Read { spec, o, offset, length, depth }));
            }
        }
        Ok(None)
    }
}

fn print_table(rows: &[manage::Listed]) {
    println!(
        "{:<2} {:<24} {:>5} {:>10} {:>10} {:>10} {:>8} {:<16}",
        "", "Name", "Id", "Size", "Used", "Shared", "Vid", "Tag"
    );
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
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        pb.set_style(style);
    }
    pb
}

/// The largest request `vdi read/write` sends.
const CHUNK: u64 = 4 << 20;

/// Bytes in one request: up to the next object boundary, at most [`CHUNK`].
fn chunk_len(offset: u64, bss: u8, left: u64) -> u64 {
    let os = 1u64 << bss;
    (os - (offset & (os - 1))).min(CHUNK).min(left)
}

/// What `vdi read/write` take from the control plane: the VDI opened (its inode read) and
/// where its shard connects. The bytes then go through a shard like a device's.
struct Opened {
    vol: Arc<Volume>,
    gateways: Vec<Gateway>,
}

async fn open(
    c: &Client,
    all: &[Gateway],
    spec: &VdiSpec,
    read_only: bool,
) -> anyhow::Result<Opened> {
    let info = c.vdi_info(&spec.name, &spec.snap).await?;
    if !read_only && spec.snap.is_snapshot() {
        bail!("{spec} is a snapshot and cannot be written (clone it, or rebase onto it)");
    }
    let vol = Arc::new(load_volume(c, info.vid, read_only).await?);
    Ok(Opened { vol, gateways: c.reachable_first(all) })
}

/// The shard that carries the bytes: requests of up to [`CHUNK`], `depth` at once.
fn shard_for(o: &Opened, depth: usize) -> anyhow::Result<Remote> {
    let cfg = shard::Config {
        slots: depth * 2 + 8,
        max_io: CHUNK as usize,
        ..shard::Config::new(o.gateways.clone())
    };
    Remote::start(cfg, o.vol.clone(), depth)
        .with_context(|| format!("connecting to {}", o.gateways[0]))
}

/// Wait for one request of `remote`; its buffer back, or the error naming its offset.
fn finish(remote: &Remote, what: &str) -> anyhow::Result<(u64, Vec<u8>)> {
    let d = remote.next_done()?;
    match d.result {
        Ok(_) => Ok((d.id, d.buf)),
        Err(e) => bail!("{what} at offset {}: {e}", d.id),
    }
}

/// Fill `buf` from `rd` as far as it goes; the bytes read (fewer only at the end).
fn read_full(rd: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match rd.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

fn write(o: Opened, offset: u64, depth: usize) -> anyhow::Result<()> {
    let size = o.vol.size();
    let bss = o.vol.block_size_shift();
    // A regular file on stdin: check the whole length before writing anything.
    let stdin_len = std::fs::metadata("/dev/stdin").ok().filter(|m| m.is_file()).map(|m| m.len());
    if let Some(len) = stdin_len {
        if offset.saturating_add(len) > size {
            bail!("{len} bytes at offset {offset} do not fit in the vdi's {size} bytes");
        }
    }
    let remote = shard_for(&o, depth)?;
    let pb = progress(stdin_len);
    let started = Instant::now();
    let mut stdin = std::io::stdin().lock();
    let (mut pos, mut inflight, mut peak) = (offset, 0usize, 0usize);
    let mut free: Vec<Vec<u8>> = Vec::new();
    let mut failed = None;
    loop {
        let want = chunk_len(pos, bss, size.saturating_sub(pos)).max(1) as usize;
        let mut buf = free.pop().unwrap_or_default();
        buf.resize(want, 0);
        let got = read_full(&mut stdin, &mut buf).context("reading stdin")?;
        if got == 0 {
            break;
        }
        if pos + got as u64 > size {
            failed = Some(format!(
                "input goes beyond the end of the vdi ({size} bytes) at offset {pos}"
            ));
            break;
        }
        buf.truncate(got);
        remote.submit(Job {
            id: pos,
            desc: IoDesc { op: Op::Write, offset: pos, len: got as u32, tag: 0, fua: false },
            buf,
        })?;
        (pos, inflight) = (pos + got as u64, inflight + 1);
        peak = peak.max(inflight);
        pb.set_position(pos - offset);
        if inflight >= depth {
            free.push(finish(&remote, "write")?.1);
            inflight -= 1;
        }
    }
    for _ in 0..inflight {
        finish(&remote, "write")?;
    }
    if let Some(why) = failed {
        bail!("{why}; {} bytes were written", pos - offset);
    }
    pb.finish_and_clear();
    report("wrote", pos - offset, started, peak);
    Ok(())
}

fn read(o: Opened, offset: u64, length: Option<u64>, depth: usize) -> anyhow::Result<()> {
    let size = o.vol.size();
    let bss = o.vol.block_size_shift();
    let len = length.unwrap_or(size.saturating_sub(offset));
    if offset.checked_add(len).is_none_or(|end| end > size) {
        bail!("{len} bytes at offset {offset} are beyond the vdi's {size} bytes");
    }
    let remote = shard_for(&o, depth)?;
    let pb = progress(Some(len));
    let started = Instant::now();
    let mut out = std::io::stdout().lock();
    // Requests finish in any order; stdout takes them in offset order.
    let mut pending: VecDeque<u64> = VecDeque::new();
    let mut arrived: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut free: Vec<Vec<u8>> = Vec::new();
    let (mut pos, end, mut done, mut peak) = (offset, offset + len, 0u64, 0usize);
    while pos < end || !pending.is_empty() {
        while pos < end && pending.len() < depth {
            let n = chunk_len(pos, bss, end - pos);
            let mut buf = free.pop().unwrap_or_default();
            buf.resize(n as usize, 0);
            remote.submit(Job {
                id: pos,
                desc: IoDesc { op: Op::Read, offset: pos, len: n as u32, tag: 0, fua: false },
                buf,
            })?;
            pending.push_back(pos);
            peak = peak.max(pending.len());
            pos += n;
        }
        let (at, buf) = finish(&remote, "read")?;
        arrived.insert(at, buf);
        while let Some(buf) = pending.front().and_then(|at| arrived.remove(at)) {
            pending.pop_front();
            out.write_all(&buf).context("writing stdout")?;
            done += buf.len() as u64;
            pb.set_position(done);
            free.push(buf);
        }
    }
    out.flush().context("writing stdout")?;
    pb.finish_and_clear();
    report("read", len, started, peak);
    Ok(())
}

fn report(what: &str, bytes: u64, started: Instant, peak: usize) {
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    let mibs = bytes as f64 / secs / (1 << 20) as f64;
    tracing::info!(
        "{what} {bytes} bytes in {secs:.2} s ({mibs:.1} MiB/s), up to {peak} requests in flight"
    );
}
