//! `sheepdev fio-report`: fio JSON outputs (`--output-format=json`) as one markdown table,
//! optionally against a ceiling run of the same jobs (e.g. on a ublk null device).
//!
//! Contract: reads every `*.json` in DIR (or the one file given), in natural order of the
//! file names (`qd1 < qd32 < qd128`), parses each with `crate::report::fio` and prints the
//! table on stdout. A job name may appear in only one file of a directory (it is the key
//! the ceiling is matched by). A file that is not fio JSON is an error naming the file.
//! When any job reports errors the table is still printed, then the command fails.

use std::cmp::Ordering;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;

use crate::report::fio::{self, Job};

#[derive(Debug, Args)]
pub struct FioReportArgs {
    /// fio outputs of the same jobs on the reference device (a directory of *.json or one
    /// file): each figure is also shown as a ratio to its same-named job.
    #[arg(long, value_parser = super::path_arg)]
    ceiling: Option<PathBuf>,
    /// A directory of fio `--output-format=json` files (*.json), or one such file.
    #[arg(value_parser = super::path_arg)]
    dir: PathBuf,
}

pub fn run(a: FioReportArgs) -> anyhow::Result<()> {
    let jobs = load(&a.dir)?;
    let ceiling = a.ceiling.as_deref().map(load).transpose()?;
    print!("{}", fio::markdown(&jobs, ceiling.as_deref()));
    let bad: Vec<&str> = jobs.iter().filter(|j| j.errors() > 0).map(|j| j.name.as_str()).collect();
    if !bad.is_empty() {
        bail!(
            "fio reported errors in {}: these figures are not a clean measurement",
            bad.join(", ")
        );
    }
    Ok(())
}

/// The jobs of every fio output under `path` (see the module contract).
fn load(path: &Path) -> anyhow::Result<Vec<Job>> {
    let files = if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("reading {}", path.display()))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .with_context(|| format!("reading {}", path.display()))?;
        files.retain(|f| f.extension().is_some_and(|e| e == "json") && f.is_file());
        files.sort_by(|a, b| natural_cmp(&a.to_string_lossy(), &b.to_string_lossy()));
        if files.is_empty() {
            bail!("no *.json fio outputs in {}", path.display());
        }
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut jobs: Vec<Job> = Vec::new();
    let mut from: Vec<&Path> = Vec::new();
    for f in &files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        for j in
            fio::parse(&text).with_context(|| format!("{} is not fio JSON output", f.display()))?
        {
            if let Some(i) = jobs.iter().position(|o| o.name == j.name) {
                bail!(
                    "job {:?} is in both {} and {}: one file per job name",
                    j.name,
                    from[i].display(),
                    f.display()
                );
            }
            jobs.push(j);
            from.push(f);
        }
    }
    Ok(jobs)
}

/// Compare names with runs of digits compared as numbers (`qd1 < qd32 < qd128`).
fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a, b);
    loop {
        match (a.chars().next(), b.chars().next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let na = a.find(|c: char| !c.is_ascii_digit()).unwrap_or(a.len());
                let nb = b.find(|c: char| !c.is_ascii_digit()).unwrap_or(b.len());
                let (da, db) = (a[..na].trim_start_matches('0'), b[..nb].trim_start_matches('0'));
                let o = da.len().cmp(&db.len()).then_with(|| da.cmp(db));
                if o != Ordering::Equal {
                    return o;
                }
                (a, b) = (&a[na..], &b[nb..]);
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(&y);
                }
                (a, b) = (&a[x.len_utf8()..], &b[y.len_utf8()..]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natural_order() {
        let mut v = vec![
            "randread-4k-qd32.json",
            "randread-4k-qd128.json",
            "randread-4k-qd1.json",
            "randwrite-4k-qd1.json",
            "a.json",
        ];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            v,
            vec![
                "a.json",
                "randread-4k-qd1.json",
                "randread-4k-qd32.json",
                "randread-4k-qd128.json",
                "randwrite-4k-qd1.json"
            ]
        );
        assert_eq!(natural_cmp("x007", "x7"), Ordering::Equal);
        assert_eq!(natural_cmp("x", "x1"), Ordering::Less);
    }

    const ONE: &str = r#"{ "jobs" : [ { "jobname" : "j", "read" : { "total_ios" : 10, "iops" : 10, "bw_bytes" : 40960 },
        "write" : { "iops" : 0, "bw_bytes" : 0 } } ] }"#;

    #[test]
    fn loads_a_directory_and_refuses_duplicates() {
        let d = tempfile::tempdir().expect("a temporary directory");
        std::fs::write(d.path().join("a.json"), ONE).expect("write");
        std::fs::write(d.path().join("notes.txt"), "not fio").expect("write");
        assert_eq!(load(d.path()).expect("loads").len(), 1);
        assert_eq!(load(&d.path().join("a.json")).expect("loads one file").len(), 1);
        std::fs::write(d.path().join("b.json"), ONE).expect("write");
        let e = load(d.path()).expect_err("j twice");
        assert!(e.to_string().contains("job \"j\" is in both"), "{e}");
        std::fs::write(d.path().join("b.json"), "garbage").expect("write");
        let e = format!("{:#}", load(d.path()).expect_err("not JSON"));
        assert!(e.contains("b.json is not fio JSON output: no JSON"), "{e}");
        let empty = tempfile::tempdir().expect("a temporary directory");
        assert!(load(empty.path()).expect_err("empty").to_string().contains("no *.json"));
    }
}
