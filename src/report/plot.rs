//! `sheepdev bench --plot`: the benchmark's points as one PNG.
//!
//! Contract:
//! - One row per workload (in the order measured), three panels each: IOPS, p50 and p99
//!   latency against the queue depth per shard (log2 axis). One line per driver and shard
//!   count: the colour is the shard count, sheepdev is solid, the raw-protocol ceiling
//!   dashed, sheepdev without metrics dotted. Latency axes are logarithmic. The legend is
//!   in each row's p50 panel.
//! - [`series`] is the whole of the data handling and is pure: points grouped by workload,
//!   driver and shard count, sorted by depth, one value per depth (the first point measured
//!   wins: with `--repeat` that is the first run's, and `sheepdev bench`'s one-at-a-time
//!   seqwrite-1m runs are raw points at shards 1, depth 1 too),
//!   latencies that are not positive left out (a log axis cannot show them).
//! - Text is drawn with a TrueType font read at run time through plotters' `ab_glyph`
//!   (no fontconfig, no system font library): `SHEEPDEV_FONT` if set, else Debian's
//!   fonts-dejavu-core ([`DEFAULT_FONT`]). [`load_font`] is cheap to call again and is
//!   called before a benchmark starts, so a missing font fails in one line at once.

use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;

use crate::bench::{Driver, Point, Workload};

/// Debian's fonts-dejavu-core.
pub const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const FAMILY: &str = "sans-serif";
const PANEL: (u32, u32) = (620, 380);
const TITLE_H: u32 = 50;
/// One colour per shard count (1, 2, …), cycling.
const COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
];

/// Why the plot could not be made.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The I/O error is in the message (not a `source`), so it is printed once.
    #[error("cannot read the plot font {path}: {err} (install Debian's fonts-dejavu-core, or set SHEEPDEV_FONT to a .ttf file)")]
    FontRead { path: String, err: std::io::Error },
    #[error("{path} is not a TrueType or OpenType font (set SHEEPDEV_FONT to a .ttf file)")]
    FontBad { path: String },
    #[error("no points to plot")]
    Empty,
    #[error("drawing {path}: {msg}")]
    Draw { path: String, msg: String },
}

/// What a panel shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Iops,
    P50,
    P99,
}

impl Metric {
    pub const ALL: [Metric; 3] = [Metric::Iops, Metric::P50, Metric::P99];

    fn of(self, p: &Point) -> f64 {
        match self {
            Metric::Iops => p.iops,
            Metric::P50 => p.p50_us,
            Metric::P99 => p.p99_us,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Metric::Iops => "IOPS",
            Metric::P50 => "p50 latency",
            Metric::P99 => "p99 latency",
        }
    }
}

/// One line of a panel.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub workload: Workload,
    pub driver: Driver,
    pub shards: u16,
    /// `(depth, value)`, ascending depth, one per depth.
    pub points: Vec<(u16, f64)>,
}

impl Series {
    fn label(&self) -> String {
        let who = match self.driver {
            Driver::Sheepdev => "sheepdev",
            Driver::SheepdevNoMetrics => "sheepdev, no metrics",
            Driver::Raw => "raw",
        };
        format!("{who}, {} shard{}", self.shards, if self.shards == 1 { "" } else { "s" })
    }
}

fn driver_rank(d: Driver) -> u8 {
    match d {
        Driver::Sheepdev => 0,
        Driver::SheepdevNoMetrics => 1,
        Driver::Raw => 2,
    }
}

/// The workloads of `points`, in the order first measured.
pub fn workloads(points: &[Point]) -> Vec<Workload> {
    let mut w: Vec<Workload> = Vec::new();
    for p in points {
        if !w.contains(&p.workload) {
            w.push(p.workload);
        }
    }
    w
}

/// The lines of every panel showing `metric` (see the module contract), ordered by
/// workload (as measured), then sheepdev, sheepdev without metrics, raw, then shards.
/// A run with coalescing both on and off draws the sheepdev points with it on.
pub fn series(points: &[Point], metric: Metric) -> Vec<Series> {
    let mut out: Vec<Series> = Vec::new();
    let any_on = points.iter().any(|p| p.coalesce);
    for p in points {
        if any_on && !p.coalesce && p.driver != Driver::Raw {
            continue;
        }
        let v = metric.of(p);
        if !v.is_finite() || (metric != Metric::Iops && v <= 0.0) {
            continue;
        }
        let s = match out
            .iter_mut()
            .find(|s| s.workload == p.workload && s.driver == p.driver && s.shards == p.shards)
        {
            Some(s) => s,
            None => {
                out.push(Series {
                    workload: p.workload,
                    driver: p.driver,
                    shards: p.shards,
                    points: Vec::new(),
                });
                let last = out.len() - 1;
                &mut out[last]
            }
        };
        if !s.points.iter().any(|&(d, _)| d == p.depth) {
            s.points.push((p.depth, v));
        }
    }
    for s in &mut out {
        s.points.sort_by_key(|&(d, _)| d);
    }
    let order = workloads(points);
    let wrank = |w: Workload| order.iter().position(|&x| x == w).unwrap_or(usize::MAX);
    out.sort_by_key(|s| (wrank(s.workload), driver_rank(s.driver), s.shards));
    out
}

/// Where a value goes on the panel's y axis: IOPS as they are, latencies as log2 (a log
/// axis whose labels, `2^y`, come out as 64, 128, 256 … µs).
fn y_of(metric: Metric, v: f64) -> f64 {
    match metric {
        Metric::Iops => v,
        _ => v.log2(),
    }
}

/// The y range of a panel, in axis units ([`y_of`]): from 0 for IOPS, padded for latencies.
fn y_range(values: impl Iterator<Item = f64>, metric: Metric) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    match metric {
        Metric::Iops => (0.0, if hi > 0.0 { hi * 1.1 } else { 1.0 }),
        _ if lo.is_finite() && hi > 0.0 => (y_of(metric, lo) - 0.4, y_of(metric, hi) + 0.4),
        _ => (0.0, 4.0),
    }
}

/// A y label: the value the axis position stands for; IOPS with `k` for thousands,
/// latencies in µs below 1 ms and in ms from there.
fn y_label(metric: Metric, y: f64) -> String {
    match metric {
        Metric::Iops if y >= 10_000.0 => format!("{:.0}k", y / 1000.0),
        Metric::Iops => format!("{y:.0}"),
        _ => {
            let us = y.exp2();
            if us >= 10_000.0 {
                format!("{:.0} ms", us / 1000.0)
            } else if us >= 1000.0 {
                format!("{:.1} ms", us / 1000.0)
            } else if us >= 10.0 {
                format!("{us:.0} µs")
            } else {
                format!("{us:.1} µs")
            }
        }
    }
}

/// Register the font (see the module contract); later calls do nothing.
pub fn load_font() -> Result<(), Error> {
    static LOADED: OnceLock<()> = OnceLock::new();
    if LOADED.get().is_some() {
        return Ok(());
    }
    let path = std::env::var("SHEEPDEV_FONT").unwrap_or_else(|_| DEFAULT_FONT.to_string());
    let bytes = std::fs::read(&path).map_err(|err| Error::FontRead { path: path.clone(), err })?;
    // plotters keeps `&'static` font data; the font is loaded once per process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font(FAMILY, FontStyle::Normal, bytes)
        .map_err(|_| Error::FontBad { path })?;
    let _ = LOADED.set(());
    Ok(())
}

fn draw_err(path: &Path) -> impl Fn(&dyn std::fmt::Display) -> Error + '_ {
    move |e| Error::Draw { path: path.display().to_string(), msg: e.to_string() }
}

/// Draw `points` into the PNG `path` under `title`.
pub fn draw(points: &[Point], title: &str, path: &Path) -> Result<(), Error> {
    load_font()?;
    let rows = workloads(points);
    if rows.is_empty() {
        return Err(Error::Empty);
    }
    let err = draw_err(path);
    let cols = Metric::ALL.len() as u32;
    let size = (PANEL.0 * cols, TITLE_H + PANEL.1 * rows.len() as u32);
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let body = root.titled(title, (FAMILY, 24)).map_err(|e| err(&e))?;
    let panels = body.split_evenly((rows.len(), Metric::ALL.len()));
    for (r, &w) in rows.iter().enumerate() {
        for (c, &m) in Metric::ALL.iter().enumerate() {
            let lines: Vec<Series> =
                series(points, m).into_iter().filter(|s| s.workload == w).collect();
            panel(&panels[r * Metric::ALL.len() + c], w, m, &lines).map_err(|e| err(&e))?;
        }
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;
type DrawResult<'a> =
    Result<(), DrawingAreaErrorKind<<BitMapBackend<'a> as DrawingBackend>::ErrorType>>;

fn panel<'a>(area: &Area<'a>, w: Workload, m: Metric, lines: &[Series]) -> DrawResult<'a> {
    let depths = lines.iter().flat_map(|s| s.points.iter().map(|&(d, _)| f64::from(d).log2()));
    let (x0, x1) =
        depths.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| (a.min(x), b.max(x)));
    let (x0, x1) = if x0.is_finite() && x1 > x0 {
        (x0 - 0.2, x1 + 0.2)
    } else if x0.is_finite() {
        (x0 - 1.0, x0 + 1.0)
    } else {
        (0.0, 1.0)
    };
    let (y0, y1) = y_range(lines.iter().flat_map(|s| s.points.iter().map(|&(_, v)| v)), m);
    let caption = format!("{} — {}", w.name(), m.label());
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FAMILY, 18))
        .margin(10)
        .x_label_area_size(38)
        .y_label_area_size(62)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    let ticks = ((x1 - x0).round() as usize + 1).clamp(2, 12);
    chart
        .configure_mesh()
        .x_desc("queue depth per shard")
        .y_desc(m.label())
        .x_labels(ticks)
        .y_labels(7)
        .x_label_formatter(&|x| format!("{}", 2f64.powf(*x).round()))
        .y_label_formatter(&|y| y_label(m, *y))
        .light_line_style(TRANSPARENT)
        .label_style((FAMILY, 13))
        .axis_desc_style((FAMILY, 14))
        .draw()?;
    for s in lines {
        let colour = COLOURS[usize::from(s.shards.saturating_sub(1)) % COLOURS.len()];
        let style = ShapeStyle { color: colour.to_rgba(), filled: false, stroke_width: 2 };
        let pts: Vec<(f64, f64)> =
            s.points.iter().map(|&(d, v)| (f64::from(d).log2(), y_of(m, v))).collect();
        let (dash, gap) = match s.driver {
            Driver::Sheepdev => (0, 0),
            Driver::Raw => (9, 6),
            Driver::SheepdevNoMetrics => (2, 5),
        };
        let anno = if dash == 0 {
            chart.draw_series(LineSeries::new(pts.iter().copied(), style))?
        } else {
            chart.draw_series(DashedLineSeries::new(pts.iter().copied(), dash, gap, style))?
        };
        anno.label(s.label()).legend(move |(x, y)| {
            if dash == 0 {
                PathElement::new(vec![(x, y), (x + 24, y)], style).into_dyn()
            } else {
                DashedPathElement::new(vec![(x, y), (x + 24, y)], dash / 2 + 1, gap / 2 + 1, style)
                    .into_dyn()
            }
        });
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, style.filled())))?;
    }
    // One legend per row (every panel has the same lines), where latency curves leave room.
    if m != Metric::P50 {
        return Ok(());
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .label_font((FAMILY, 12))
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pt(
        workload: Workload,
        driver: Driver,
        shards: u16,
        depth: u16,
        iops: f64,
        p50: f64,
        p99: f64,
    ) -> Point {
        Point {
            workload,
            driver,
            shards,
            depth,
            devices: 1,
            coalesce: true,
            merged: 0,
            ios: 1,
            errors: 0,
            seconds: 1.0,
            iops,
            mib_s: 0.0,
            p50_us: p50,
            p99_us: p99,
            p999_us: p99,
        }
    }

    fn sample() -> Vec<Point> {
        use Driver::*;
        use Workload::*;
        vec![
            pt(RandRead4k, Sheepdev, 1, 32, 300.0, 90.0, 200.0),
            pt(RandRead4k, Raw, 1, 32, 400.0, 80.0, 150.0),
            pt(RandRead4k, Sheepdev, 1, 1, 100.0, 10.0, 20.0),
            pt(RandRead4k, Raw, 1, 1, 120.0, 9.0, 18.0),
            pt(RandRead4k, Sheepdev, 2, 1, 180.0, 0.0, 25.0),
            pt(SeqWrite1m, Raw, 1, 8, 50.0, 900.0, 1500.0),
            pt(SeqWrite1m, Sheepdev, 1, 8, 45.0, 950.0, 1600.0),
            // `sheepdev bench`'s extra "one request at a time" point, after the others.
            pt(SeqWrite1m, Raw, 1, 8, 10.0, 100.0, 200.0),
        ]
    }

    #[test]
    fn series_group_sort_and_order() {
        let s = series(&sample(), Metric::Iops);
        let keys: Vec<_> = s.iter().map(|s| (s.workload, s.driver, s.shards)).collect();
        assert_eq!(
            keys,
            vec![
                (Workload::RandRead4k, Driver::Sheepdev, 1),
                (Workload::RandRead4k, Driver::Sheepdev, 2),
                (Workload::RandRead4k, Driver::Raw, 1),
                (Workload::SeqWrite1m, Driver::Sheepdev, 1),
                (Workload::SeqWrite1m, Driver::Raw, 1),
            ]
        );
        assert_eq!(s[0].points, vec![(1, 100.0), (32, 300.0)], "sorted by depth");
        assert_eq!(s[4].points, vec![(8, 50.0)], "the first point at a depth wins");
        assert_eq!(s[2].label(), "raw, 1 shard");
        assert_eq!(s[1].label(), "sheepdev, 2 shards");
    }

    #[test]
    fn latency_series_drop_non_positive_values() {
        let p50 = series(&sample(), Metric::P50);
        assert!(!p50.iter().any(|s| s.shards == 2), "a zero latency cannot go on a log axis");
        let p99 = series(&sample(), Metric::P99);
        assert_eq!(p99.iter().find(|s| s.shards == 2).expect("series").points, vec![(1, 25.0)]);
    }

    #[test]
    fn y_ranges() {
        assert_eq!(y_range([100.0, 300.0].into_iter(), Metric::Iops), (0.0, 330.0));
        assert_eq!(y_range(std::iter::empty(), Metric::Iops), (0.0, 1.0));
        assert_eq!(y_range([16.0, 256.0].into_iter(), Metric::P99), (3.6, 8.4));
        assert_eq!(y_range(std::iter::empty(), Metric::P50), (0.0, 4.0));
        assert_eq!(y_label(Metric::P99, 7.0), "128 µs");
        assert_eq!(y_label(Metric::P50, 11.0), "2.0 ms");
        assert_eq!(y_label(Metric::P50, 16.0), "66 ms");
        assert_eq!(y_label(Metric::P50, -1.0), "0.5 µs");
        assert_eq!(y_label(Metric::Iops, 125_000.0), "125k");
    }

    #[test]
    fn workloads_in_measured_order() {
        assert_eq!(workloads(&sample()), vec![Workload::RandRead4k, Workload::SeqWrite1m]);
        assert!(matches!(
            draw(&[], "t", Path::new("/nonexistent/x.png")),
            Err(Error::Empty) | Err(Error::FontRead { .. })
        ));
    }

    /// Needs the font (Debian's fonts-dejavu-core; tests/all.sh installs it): fails, with the
    /// font error, where it is missing.
    #[test]
    fn draws_a_png() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("bench.png");
        draw(&sample(), "sheepdev bench (test)", &path)
            .expect("drawing (is fonts-dejavu-core installed?)");
        let png = std::fs::read(&path).expect("the PNG");
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert!(png.len() > 10_000, "{} bytes: an empty picture?", png.len());
    }
}
