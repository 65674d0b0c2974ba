//! fio's `--output-format=json` output: parse, sum per job, render as markdown.
//!
//! Contract:
//! - Input is the text of one fio output file as fio writes it: any lines before the first
//!   line that starts with `{` are skipped (fio prints warnings such as "multiple writers
//!   may overwrite blocks" into the `--output` file ahead of the JSON), and anything after
//!   the first complete JSON value is ignored.
//! - fio writes one `jobs[]` entry per job process unless `group_reporting=1` merges them.
//!   Entries with the same `jobname` and `groupid` become one [`Job`], in order of first
//!   appearance: IOPS, bandwidth and I/O counts are **summed**; a latency percentile is the
//!   **highest** among the entries (the worst job: percentiles cannot be summed, and with
//!   `group_reporting=1`, as in `bench/fio/`, there is one entry and the figure is fio's own).
//! - Percentiles come from `clat_ns.percentile` (completion latency, fio's default), keys
//!   like `"99.900000"`; when a job has none there but `lat_ns.percentile` (fio's
//!   `lat_percentiles=1`), from that, and the [`Dir::lat_source`] says so. A direction
//!   that did no I/O has no percentiles; fio omits them and so does [`Dir`] (`None`).
//! - Errors: `error` (an errno; non-zero means the job failed) and `total_err` (I/O errors
//!   counted under `continue_on_error`) are kept per job and shown; [`Job::errors`] > 0
//!   means the figures are not a clean measurement.
//! - `numjobs` and `iodepth` are read from `job options`, then `global options`, then
//!   fio's defaults (the number of entries, 1), for the "jobs × QD" column.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Deserialize;

/// Why a fio output could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no JSON in fio's output (no line starts with '{{')")]
    NoJson,
    #[error("fio's JSON does not parse: {0}")]
    Json(#[from] serde_json::Error),
    #[error("fio's JSON has no jobs")]
    NoJobs,
}

/// A direction of I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
}

impl Op {
    pub const ALL: [Op; 2] = [Op::Read, Op::Write];
    pub fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
        }
    }
}

/// Which fio latency the percentiles measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatSource {
    /// `clat_ns`: submission to completion (fio's default percentiles).
    Clat,
    /// `lat_ns`: including submission (fio's `lat_percentiles=1`).
    Lat,
}

/// One direction of one job, summed over its entries.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Dir {
    /// I/Os completed (`total_ios`).
    pub ios: u64,
    pub iops: f64,
    /// Bytes per second (`bw_bytes`).
    pub bw_bytes: f64,
    pub p50_ns: Option<f64>,
    pub p99_ns: Option<f64>,
    pub p999_ns: Option<f64>,
    /// Where the percentiles come from; `None` when there are none.
    pub lat_source: Option<LatSource>,
}

impl Dir {
    pub fn mib_s(&self) -> f64 {
        self.bw_bytes / (1024.0 * 1024.0)
    }

    /// Whether this direction did any I/O.
    pub fn active(&self) -> bool {
        self.ios > 0 || self.iops > 0.0
    }

    fn add(&mut self, o: &Dir) {
        self.ios += o.ios;
        self.iops += o.iops;
        self.bw_bytes += o.bw_bytes;
        self.p50_ns = max_opt(self.p50_ns, o.p50_ns);
        self.p99_ns = max_opt(self.p99_ns, o.p99_ns);
        self.p999_ns = max_opt(self.p999_ns, o.p999_ns);
        self.lat_source = match (self.lat_source, o.lat_source) {
            (Some(LatSource::Lat), _) | (_, Some(LatSource::Lat)) => Some(LatSource::Lat),
            (a, b) => a.or(b),
        };
    }
}

fn max_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, y) => x.or(y),
    }
}

/// One fio job (its `numjobs` entries merged).
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub name: String,
    pub group: u32,
    /// `jobs[]` entries merged into this one (1 under `group_reporting=1`).
    pub entries: u32,
    pub numjobs: u32,
    /// Per job, as fio counts it; `None` when the option is not a plain number.
    pub iodepth: Option<u32>,
    pub read: Dir,
    pub write: Dir,
    /// Entries whose `error` is non-zero.
    pub failed: u32,
    /// The first non-zero `error` (an errno), 0 if none.
    pub first_error: i64,
    /// I/O errors fio counted and went on (`total_err`, with `continue_on_error`).
    pub io_errors: u64,
}

impl Job {
    pub fn dir(&self, op: Op) -> &Dir {
        match op {
            Op::Read => &self.read,
            Op::Write => &self.write,
        }
    }

    /// Failed entries plus counted I/O errors: non-zero means not a clean measurement.
    pub fn errors(&self) -> u64 {
        u64::from(self.failed) + self.io_errors
    }

    /// The directions that did I/O.
    pub fn ops(&self) -> impl Iterator<Item = Op> + '_ {
        Op::ALL.into_iter().filter(|&op| self.dir(op).active())
    }
}

#[derive(Deserialize)]
struct RawOutput {
    #[serde(default)]
    jobs: Vec<RawJob>,
    #[serde(rename = "global options", default)]
    global: BTreeMap<String, serde_json::Value>,
}

#[derive(Deserialize)]
struct RawJob {
    jobname: String,
    #[serde(default)]
    groupid: u32,
    #[serde(default)]
    error: i64,
    #[serde(default)]
    total_err: u64,
    #[serde(rename = "job options", default)]
    options: BTreeMap<String, serde_json::Value>,
    read: RawDir,
    write: RawDir,
}

#[derive(Deserialize)]
struct RawDir {
    #[serde(default)]
    total_ios: u64,
    iops: f64,
    bw_bytes: f64,
    #[serde(default)]
    clat_ns: Option<RawLat>,
    #[serde(default)]
    lat_ns: Option<RawLat>,
}

#[derive(Deserialize)]
struct RawLat {
    #[serde(default)]
    percentile: Option<BTreeMap<String, f64>>,
}

impl RawDir {
    fn to_dir(&self) -> Dir {
        let (pct, src) = match (pick(&self.clat_ns), pick(&self.lat_ns)) {
            (Some(p), _) => (Some(p), Some(LatSource::Clat)),
            (None, Some(p)) => (Some(p), Some(LatSource::Lat)),
            (None, None) => (None, None),
        };
        let at = |q: f64| pct.and_then(|p| percentile(p, q));
        Dir {
            ios: self.total_ios,
            iops: self.iops,
            bw_bytes: self.bw_bytes,
            p50_ns: at(50.0),
            p99_ns: at(99.0),
            p999_ns: at(99.9),
            lat_source: src,
        }
    }
}

/// A latency's percentiles, if fio wrote any.
fn pick(l: &Option<RawLat>) -> Option<&BTreeMap<String, f64>> {
    l.as_ref().and_then(|l| l.percentile.as_ref()).filter(|p| !p.is_empty())
}

/// The value of fio's percentile key for `q` (keys are formatted `"99.900000"`).
fn percentile(p: &BTreeMap<String, f64>, q: f64) -> Option<f64> {
    p.iter()
        .find(|(k, _)| k.trim().parse::<f64>().is_ok_and(|x| (x - q).abs() < 1e-6))
        .map(|(_, &v)| v)
}

fn option_u32(
    job: &BTreeMap<String, serde_json::Value>,
    global: &BTreeMap<String, serde_json::Value>,
    key: &str,
) -> Option<Option<u32>> {
    let v = job.get(key).or_else(|| global.get(key))?;
    Some(match v {
        serde_json::Value::String(s) => s.trim().parse().ok(),
        serde_json::Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        _ => None,
    })
}

/// The JSON part of fio's output: from the first line that starts with `{`.
fn json_start(text: &str) -> Option<&str> {
    let mut off = 0;
    for line in text.split_inclusive('\n') {
        if line.trim_start().starts_with('{') {
            return Some(&text[off..]);
        }
        off += line.len();
    }
    None
}

/// Parse one fio output (see the module contract).
pub fn parse(text: &str) -> Result<Vec<Job>, Error> {
    let json = json_start(text).ok_or(Error::NoJson)?;
    let out: RawOutput =
        serde_json::Deserializer::from_str(json).into_iter().next().ok_or(Error::NoJson)??;
    if out.jobs.is_empty() {
        return Err(Error::NoJobs);
    }
    let mut jobs: Vec<Job> = Vec::new();
    // `numjobs` as the options give it, per job; fio's default is the entries it wrote.
    let mut numjobs: Vec<Option<u32>> = Vec::new();
    for raw in &out.jobs {
        let (read, write) = (raw.read.to_dir(), raw.write.to_dir());
        let failed = u32::from(raw.error != 0);
        match jobs.iter_mut().find(|j| j.name == raw.jobname && j.group == raw.groupid) {
            Some(j) => {
                j.entries += 1;
                j.read.add(&read);
                j.write.add(&write);
                j.failed += failed;
                if j.first_error == 0 {
                    j.first_error = raw.error;
                }
                j.io_errors += raw.total_err;
            }
            None => {
                numjobs.push(option_u32(&raw.options, &out.global, "numjobs").flatten());
                jobs.push(Job {
                    name: raw.jobname.clone(),
                    group: raw.groupid,
                    entries: 1,
                    numjobs: 0,
                    iodepth: option_u32(&raw.options, &out.global, "iodepth").unwrap_or(Some(1)),
                    read,
                    write,
                    failed,
                    first_error: raw.error,
                    io_errors: raw.total_err,
                });
            }
        }
    }
    for (j, n) in jobs.iter_mut().zip(numjobs) {
        j.numjobs = n.unwrap_or(j.entries);
    }
    Ok(jobs)
}

/// Microseconds from nanoseconds, with as many decimals as a small figure needs.
fn us(ns: Option<f64>) -> String {
    match ns {
        None => "-".into(),
        Some(ns) => {
            let us = ns / 1000.0;
            if us < 10.0 {
                format!("{us:.2}")
            } else if us < 100.0 {
                format!("{us:.1}")
            } else {
                format!("{us:.0}")
            }
        }
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    }
}

/// One markdown table: a row per job and direction that did I/O (a job that did none, e.g.
/// one that failed at once, gets one row so its errors show). With `ceiling`, each figure
/// is also given as a ratio to the ceiling's job of the same name and direction ("-" where
/// there is none): IOPS and MiB/s ratios below 1 and latency ratios above 1 are the cost.
pub fn markdown(jobs: &[Job], ceiling: Option<&[Job]>) -> String {
    let mut s = String::new();
    let lat = jobs.iter().any(|j| j.ops().any(|op| j.dir(op).lat_source == Some(LatSource::Lat)));
    if ceiling.is_some() {
        s.push_str("| job | op | jobs × QD | IOPS | ceiling IOPS | IOPS/ceil | MiB/s | MiB/s/ceil | p50 µs | p50/ceil | p99 µs | p99/ceil | p99.9 µs | p99.9/ceil | errors |\n");
        s.push_str("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    } else {
        s.push_str(
            "| job | op | jobs × QD | IOPS | MiB/s | p50 µs | p99 µs | p99.9 µs | errors |\n",
        );
        s.push_str("|---|---|---|---:|---:|---:|---:|---:|---:|\n");
    }
    for j in jobs {
        let ops: Vec<Option<Op>> =
            if j.ops().next().is_none() { vec![None] } else { j.ops().map(Some).collect() };
        for op in ops {
            let none = Dir::default();
            let d = op.map_or(&none, |op| j.dir(op));
            let mark = if d.lat_source == Some(LatSource::Lat) { "*" } else { "" };
            let qd = j.iodepth.map_or("?".into(), |q| q.to_string());
            let errors = if j.errors() == 0 {
                "0".to_string()
            } else if j.first_error != 0 {
                format!("{} (errno {})", j.errors(), j.first_error)
            } else {
                j.errors().to_string()
            };
            let head = format!(
                "| {} | {}{mark} | {} × {qd} ",
                j.name,
                op.map_or("-", Op::name),
                j.numjobs
            );
            match ceiling {
                None => {
                    let _ = writeln!(
                        s,
                        "{head}| {:.0} | {:.1} | {} | {} | {} | {errors} |",
                        d.iops,
                        d.mib_s(),
                        us(d.p50_ns),
                        us(d.p99_ns),
                        us(d.p999_ns)
                    );
                }
                Some(c) => {
                    let cd = op
                        .and_then(|op| c.iter().find(|cj| cj.name == j.name).map(|cj| cj.dir(op)))
                        .filter(|cd| cd.active());
                    let cf = |f: fn(&Dir) -> Option<f64>| cd.and_then(f);
                    let _ = writeln!(
                        s,
                        "{head}| {:.0} | {} | {} | {:.1} | {} | {} | {} | {} | {} | {} | {} | {errors} |",
                        d.iops,
                        cd.map_or("-".into(), |c| format!("{:.0}", c.iops)),
                        ratio(Some(d.iops), cf(|c| Some(c.iops))),
                        d.mib_s(),
                        ratio(Some(d.bw_bytes), cf(|c| Some(c.bw_bytes))),
                        us(d.p50_ns),
                        ratio(d.p50_ns, cf(|c| c.p50_ns)),
                        us(d.p99_ns),
                        ratio(d.p99_ns, cf(|c| c.p99_ns)),
                        us(d.p999_ns),
                        ratio(d.p999_ns, cf(|c| c.p999_ns)),
                    );
                }
            }
        }
    }
    if lat {
        s.push_str("\n\\* percentiles of total latency (`lat_ns`, fio's `lat_percentiles=1`); the others are completion latency (`clat_ns`).\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// fio 3.33, `group_reporting=1`, 2 jobs of 4k randread at QD32 (trimmed to the fields
    /// the parser reads, plus a few it must ignore), with the warning line fio writes first.
    const GROUPED: &str = r#"fio: multiple writers may overwrite blocks that belong to other jobs. This can cause verification failures.
{
  "fio version" : "fio-3.33",
  "timestamp" : 1795575536,
  "global options" : { "ioengine" : "io_uring", "direct" : "1", "numjobs" : "2", "group_reporting" : "1" },
  "jobs" : [
    {
      "jobname" : "randread-4k-qd32",
      "groupid" : 0,
      "error" : 0,
      "eta" : 0,
      "job options" : { "rw" : "randread", "bs" : "4k", "iodepth" : "32" },
      "read" : {
        "io_bytes" : 392036352, "bw_bytes" : 196018176, "bw" : 191424, "iops" : 47855.9,
        "runtime" : 2000, "total_ios" : 95712, "short_ios" : 0, "drop_ios" : 0,
        "slat_ns" : { "min" : 1000, "max" : 90000, "mean" : 2000.5, "stddev" : 10.0, "N" : 95712 },
        "clat_ns" : { "min" : 20000, "max" : 9000000, "mean" : 600000.0, "stddev" : 5.0, "N" : 95712,
          "percentile" : { "1.000000" : 40192, "50.000000" : 569344, "99.000000" : 1531904,
                           "99.900000" : 5013504, "99.990000" : 8847360 } },
        "lat_ns" : { "min" : 21000, "max" : 9100000, "mean" : 602000.0, "stddev" : 5.0, "N" : 95712 }
      },
      "write" : {
        "io_bytes" : 0, "bw_bytes" : 0, "bw" : 0, "iops" : 0.000000, "runtime" : 0, "total_ios" : 0,
        "clat_ns" : { "min" : 0, "max" : 0, "mean" : 0.0, "stddev" : 0.0, "N" : 0 },
        "lat_ns" : { "min" : 0, "max" : 0, "mean" : 0.0, "stddev" : 0.0, "N" : 0 }
      },
      "trim" : { "io_bytes" : 0, "bw_bytes" : 0, "iops" : 0.0, "total_ios" : 0 }
    }
  ],
  "disk_util" : [ { "name" : "ublkb0", "util" : 99.5 } ]
}
"#;

    /// Two entries of one randrw job (no group_reporting), numjobs given per job.
    const UNGROUPED: &str = r#"{
  "fio version" : "fio-3.33",
  "jobs" : [
    { "jobname" : "rw", "groupid" : 0, "error" : 0,
      "job options" : { "rw" : "randrw", "numjobs" : "2" },
      "read" : { "total_ios" : 1000, "iops" : 500.5, "bw_bytes" : 2050048,
        "clat_ns" : { "N" : 1000, "percentile" : { "50.000000" : 1000, "99.000000" : 5000, "99.900000" : 9000 } } },
      "write" : { "total_ios" : 400, "iops" : 200.0, "bw_bytes" : 819200,
        "clat_ns" : { "N" : 400, "percentile" : { "50.000000" : 2000, "99.000000" : 4000, "99.900000" : 20000 } } } },
    { "jobname" : "rw", "groupid" : 0, "error" : 0,
      "job options" : { "rw" : "randrw", "numjobs" : "2" },
      "read" : { "total_ios" : 1100, "iops" : 549.5, "bw_bytes" : 2250752,
        "clat_ns" : { "N" : 1100, "percentile" : { "50.000000" : 1500, "99.000000" : 4500, "99.900000" : 8000 } } },
      "write" : { "total_ios" : 600, "iops" : 300.0, "bw_bytes" : 1228800,
        "clat_ns" : { "N" : 600, "percentile" : { "50.000000" : 1800, "99.000000" : 6000, "99.900000" : 10000 } } } },
    { "jobname" : "seq", "groupid" : 1, "error" : 5, "total_err" : 3,
      "job options" : { "rw" : "write", "iodepth" : "8" },
      "read" : { "total_ios" : 0, "iops" : 0, "bw_bytes" : 0 },
      "write" : { "total_ios" : 10, "iops" : 5.0, "bw_bytes" : 5242880,
        "lat_ns" : { "N" : 10, "percentile" : { "50.000000" : 100000, "99.000000" : 200000, "99.900000" : 300000 } } } }
  ]
}"#;

    #[test]
    fn skips_warnings_and_reads_a_grouped_job() {
        let jobs = parse(GROUPED).expect("parses");
        assert_eq!(jobs.len(), 1);
        let j = &jobs[0];
        assert_eq!(
            (j.name.as_str(), j.group, j.entries, j.numjobs, j.iodepth),
            ("randread-4k-qd32", 0, 1, 2, Some(32))
        );
        assert_eq!(j.read.ios, 95712);
        assert!((j.read.iops - 47855.9).abs() < 1e-9);
        assert!((j.read.mib_s() - 186.94).abs() < 0.01);
        assert_eq!(
            (j.read.p50_ns, j.read.p99_ns, j.read.p999_ns),
            (Some(569344.0), Some(1531904.0), Some(5013504.0))
        );
        assert_eq!(j.read.lat_source, Some(LatSource::Clat));
        assert!(!j.write.active());
        assert_eq!(j.write.p99_ns, None, "a direction without I/O has no percentiles");
        assert_eq!(j.ops().collect::<Vec<_>>(), vec![Op::Read]);
        assert_eq!(j.errors(), 0);
    }

    #[test]
    fn sums_entries_and_takes_the_worst_percentile() {
        let jobs = parse(UNGROUPED).expect("parses");
        assert_eq!(
            jobs.iter().map(|j| (j.name.as_str(), j.group, j.entries)).collect::<Vec<_>>(),
            vec![("rw", 0, 2), ("seq", 1, 1)]
        );
        let rw = &jobs[0];
        assert_eq!((rw.numjobs, rw.iodepth), (2, Some(1)), "iodepth defaults to fio's 1");
        assert_eq!(rw.read.ios, 2100);
        assert!((rw.read.iops - 1050.0).abs() < 1e-9);
        assert!((rw.read.bw_bytes - 4300800.0).abs() < 1e-9);
        assert_eq!(
            (rw.read.p50_ns, rw.read.p99_ns, rw.read.p999_ns),
            (Some(1500.0), Some(5000.0), Some(9000.0))
        );
        assert!((rw.write.iops - 500.0).abs() < 1e-9);
        assert_eq!(
            (rw.write.p50_ns, rw.write.p99_ns, rw.write.p999_ns),
            (Some(2000.0), Some(6000.0), Some(20000.0))
        );
        assert_eq!(rw.ops().collect::<Vec<_>>(), vec![Op::Read, Op::Write]);
    }

    #[test]
    fn keeps_errors_and_lat_percentiles() {
        let jobs = parse(UNGROUPED).expect("parses");
        let seq = &jobs[1];
        assert_eq!((seq.failed, seq.first_error, seq.io_errors, seq.errors()), (1, 5, 3, 4));
        assert_eq!((seq.numjobs, seq.iodepth), (1, Some(8)));
        assert_eq!(seq.write.lat_source, Some(LatSource::Lat));
        assert_eq!(seq.write.p99_ns, Some(200000.0));
        let md = markdown(&jobs, None);
        assert!(
            md.contains("| seq | write* | 1 × 8 | 5 | 5.0 | 100 | 200 | 300 | 4 (errno 5) |"),
            "{md}"
        );
        assert!(md.contains("lat_percentiles=1"), "{md}");
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(matches!(parse("fio: no such file\n"), Err(Error::NoJson)));
        assert!(matches!(parse(""), Err(Error::NoJson)));
        assert!(matches!(parse("{ \"jobs\" : [] }"), Err(Error::NoJobs)));
        assert!(matches!(parse("{ \"jobs\" : [ { \"jobname\" : \"x\" "), Err(Error::Json(_))));
        let e = parse(
            r#"{ "jobs" : [ { "jobname" : "x", "read" : { "iops" : 1, "bw_bytes" : 1 } } ] }"#,
        )
        .expect_err("no write section");
        assert!(e.to_string().contains("missing field `write`"), "{e}");
    }

    #[test]
    fn ignores_text_after_the_json() {
        let text = format!("{GROUPED}fio: file hash not empty on exit\n");
        assert_eq!(parse(&text).expect("parses").len(), 1);
    }

    #[test]
    fn markdown_rows_per_direction() {
        let jobs = parse(UNGROUPED).expect("parses");
        let md = markdown(&jobs, None);
        let lines: Vec<&str> = md.lines().collect();
        assert_eq!(
            lines[0],
            "| job | op | jobs × QD | IOPS | MiB/s | p50 µs | p99 µs | p99.9 µs | errors |"
        );
        assert_eq!(lines[2], "| rw | read | 2 × 1 | 1050 | 4.1 | 1.50 | 5.00 | 9.00 | 0 |");
        assert_eq!(lines[3], "| rw | write | 2 × 1 | 500 | 2.0 | 2.00 | 6.00 | 20.0 | 0 |");
    }

    #[test]
    fn markdown_against_a_ceiling() {
        let dev = parse(GROUPED).expect("parses");
        let mut null = dev.clone();
        null[0].read.iops *= 4.0;
        null[0].read.bw_bytes *= 4.0;
        null[0].read.p50_ns = null[0].read.p50_ns.map(|v| v / 2.0);
        null[0].read.p99_ns = None;
        let md = markdown(&dev, Some(&null));
        let row = md.lines().nth(2).expect("a row");
        assert_eq!(row, "| randread-4k-qd32 | read | 2 × 32 | 47856 | 191424 | 0.25 | 186.9 | 0.25 | 569 | 2.00 | 1532 | - | 5014 | 1.00 | 0 |");
        let other = parse(UNGROUPED).expect("parses");
        let md = markdown(&other, Some(&null));
        assert!(
            md.lines().nth(2).expect("a row").starts_with("| rw | read | 2 × 1 | 1050 | - | - |"),
            "{md}"
        );
    }

    #[test]
    fn a_job_without_io_still_shows() {
        let text = r#"{ "jobs" : [ { "jobname" : "dead", "error" : 5,
            "read" : { "iops" : 0, "bw_bytes" : 0 }, "write" : { "iops" : 0, "bw_bytes" : 0 } } ] }"#;
        let jobs = parse(text).expect("parses");
        let md = markdown(&jobs, None);
        assert!(md.contains("| dead | - | 1 × 1 | 0 | 0.0 | - | - | - | 1 (errno 5) |"), "{md}");
    }
}
