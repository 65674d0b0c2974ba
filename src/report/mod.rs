//! Reports on measurements: fio's JSON output and `sheepdev bench` points turned into
//! markdown tables and plots. Control plane only (used by `sheepdev fio-report` and
//! `sheepdev bench --plot`); nothing here is on the data path.
//!
//! Contract:
//! - [`fio`] parses fio's `--output-format=json` text as fio writes it, warning lines
//!   before the JSON included, into one [`fio::Job`] per job name and group, with the
//!   entries of `numjobs` summed. It reads no files: callers hand it text, so every rule is
//!   unit-tested on embedded samples. Bad or incomplete JSON is an error value naming what
//!   is missing, never a panic and never a silently zero figure.
//! - [`fio::markdown`] renders jobs (and, given a ceiling run of the same jobs, each
//!   figure as a ratio to the ceiling's same-named job) as one markdown table; rows are
//!   per job *and direction*, so a mixed job shows its reads and its writes separately.
//! - [`plot`] turns `crate::bench::Point`s into series (pure, tested) and draws them into
//!   one PNG with plotters. Text needs a TrueType font, read at run time (Debian's
//!   `fonts-dejavu-core` by default); a missing font is a one-line error before any
//!   measurement starts, not a crash after it.
//! - Latencies are kept in nanoseconds as fio reports them and shown in microseconds.

pub mod fio;
pub mod plot;
