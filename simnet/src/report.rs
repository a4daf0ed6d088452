//! The report of a scenario: CSV files, SVG plots and one HTML page that sets each
//! figure beside the paper's claim.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::metrics::{Metrics, Summary};
use crate::profiles::Profile;
use crate::scenario::Scenario;

/// A scenario's full result: the main run, and the sweep if the scenario has one.
#[derive(Debug)]
pub struct Outcome {
    pub scenario: Scenario,
    pub seed: u64,
    pub main: Metrics,
    pub summary: Summary,
    /// The sweep's points, by requester count.
    pub sweep: Vec<SweepPoint>,
}

/// One point of a sweep: a requester count, run on each of the sweep's seeds.
#[derive(Debug, Clone)]
pub struct SweepPoint {
    pub requesters: u32,
    /// `(seed, summary)`, in seed order.
    pub runs: Vec<(u64, Summary)>,
}

impl SweepPoint {
    /// A figure's mean over the seeds, with its 95 % confidence interval.
    pub fn estimate(&self, f: impl Fn(&Summary) -> f64) -> Estimate {
        Estimate::of(&self.runs.iter().map(|(_, x)| f(x)).collect::<Vec<_>>())
    }

    /// Jobs settled per hour.
    pub fn settled_per_h(&self) -> Estimate {
        self.estimate(|x| x.throughput_jobs_per_s * 3600.0)
    }

    /// Jobs the requesters submitted per hour: the offered load.
    pub fn offered_per_h(&self) -> Estimate {
        self.estimate(|x| x.jobs_submitted as f64 / (x.days * 24.0).max(1e-9))
    }

    pub fn utilization(&self) -> Estimate {
        self.estimate(|x| x.utilization)
    }

    /// The share of submitted jobs that got a contract: below 1 where
    /// requesters find no provider with a free slot at their price, and the
    /// bid expires.
    pub fn contracted_share(&self) -> Estimate {
        self.estimate(|x| x.contracts as f64 / (x.jobs_submitted.max(1)) as f64)
    }

    /// Mean utilization per provider class over the seeds.
    pub fn utilization_by_class(&self) -> Vec<(String, f64)> {
        let mut classes: Vec<String> = Vec::new();
        for (_, x) in &self.runs {
            for c in x.utilization_by_class.keys() {
                if !classes.contains(c) {
                    classes.push(c.clone());
                }
            }
        }
        classes
            .into_iter()
            .map(|c| {
                let e = self.estimate(|x| x.utilization_by_class.get(&c).copied().unwrap_or(0.0));
                (c, e.mean)
            })
            .collect()
    }
}

/// A mean over independent runs (seeds) and the half-width of its 95 %
/// confidence interval, from Student's t (0 for a single run).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    pub mean: f64,
    pub ci95: f64,
    pub n: usize,
}

impl Estimate {
    pub fn of(xs: &[f64]) -> Estimate {
        let n = xs.len();
        if n == 0 {
            return Estimate {
                mean: 0.0,
                ci95: 0.0,
                n,
            };
        }
        let mean = xs.iter().sum::<f64>() / n as f64;
        let ci95 = if n < 2 {
            0.0
        } else {
            let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            t95(n - 1) * (var / n as f64).sqrt()
        };
        Estimate { mean, ci95, n }
    }
}

/// Student's t, two-sided 95 %, for `dof` degrees of freedom.
fn t95(dof: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match dof {
        0 => f64::INFINITY,
        d if d <= T.len() => T[d - 1],
        _ => 1.96,
    }
}

/// A share of jobs contracted below this marks the knee.
pub const KNEE_SHARE: f64 = 0.9;

/// The knee of a sweep: the first requester count at which, on the mean over
/// the seeds, fewer than [`KNEE_SHARE`] of the submitted jobs got a contract:
/// from there on more requesters add expired bids rather than work. (Not
/// settled against offered: jobs still running when a short run ends would
/// count as lost.) `None` if the sweep never gets there.
pub fn knee(sweep: &[SweepPoint]) -> Option<u32> {
    sweep
        .iter()
        .find(|p| p.contracted_share().mean < KNEE_SHARE)
        .map(|p| p.requesters)
}

/// `f` over `items` on up to `threads` threads, results in the items' order.
/// Each call is its own deterministic simulation: the threads share nothing
/// but the queue of items, so the results do not depend on them. `done` is
/// told how many calls have ended, as each ends.
#[allow(clippy::disallowed_methods)] // independent runs side by side (see clippy.toml)
pub fn run_parallel<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> R + Sync,
    done: impl Fn(usize) + Sync,
) -> Vec<R> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let ended = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(Vec::with_capacity(items.len()));
    std::thread::scope(|s| {
        for _ in 0..threads.clamp(1, items.len().max(1)) {
            s.spawn(|| {
                loop {
                    let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(item) = items.get(k) else {
                        break;
                    };
                    let r = f(item);
                    if let Ok(mut all) = results.lock() {
                        all.push((k, r));
                    }
                    done(ended.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1);
                }
            });
        }
    });
    let mut out = results.into_inner().unwrap_or_default();
    out.sort_by_key(|(k, _)| *k);
    out.into_iter().map(|(_, r)| r).collect()
}

/// Why a report could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReportError {
    #[error("cannot write {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("plot {name}: {reason}")]
    Plot { name: String, reason: String },
}

/// Run the scenario (and its sweep). `progress(stage, share)` reports the
/// main run as it goes, and the sweep as its runs end. The sweep runs each
/// requester count on `sweep.seeds` seeds from `seed` on, side by side on
/// the machine's cores.
pub fn run_all(sc: &Scenario, seed: u64, mut progress: impl FnMut(&str, f64) + Send) -> Outcome {
    let main = run_one(sc, seed, None, None, |p| progress("main run", p));
    let summary = main.summary(&sc.requesters.fairness_groups);
    let mut sweep = Vec::new();
    if let Some(s) = &sc.sweep {
        let seeds: Vec<u64> = (0..u64::from(s.seeds.max(1)))
            .map(|k| seed.wrapping_add(k))
            .collect();
        let runs: Vec<(u32, u64)> = s
            .requesters
            .iter()
            .flat_map(|&n| seeds.iter().map(move |&k| (n, k)))
            .collect();
        let label = format!(
            "sweep: {} counts × {} seeds",
            s.requesters.len(),
            seeds.len()
        );
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let total = runs.len() as f64;
        let progress = std::sync::Mutex::new(&mut progress);
        let summaries = run_parallel(
            &runs,
            threads,
            |&(n, k)| {
                run_one(sc, k, Some(n), Some(s.days), |_| {})
                    .summary(&sc.requesters.fairness_groups)
            },
            |ended| {
                if let Ok(mut p) = progress.lock() {
                    p(&label, ended as f64 / total);
                }
            },
        );
        for (&(n, k), x) in runs.iter().zip(summaries) {
            match sweep.last_mut() {
                Some(SweepPoint { requesters, runs }) if *requesters == n => runs.push((k, x)),
                _ => sweep.push(SweepPoint {
                    requesters: n,
                    runs: vec![(k, x)],
                }),
            }
        }
    }
    Outcome {
        scenario: sc.clone(),
        seed,
        main,
        summary,
        sweep,
    }
}

/// One run of `sc`, optionally with another number of requesters and
/// another duration: a node core per peer (see [`crate::cores`]).
pub fn run_one(
    sc: &Scenario,
    seed: u64,
    requesters: Option<u32>,
    days: Option<f64>,
    progress: impl FnMut(f64),
) -> Metrics {
    let mut sc = sc.clone();
    sc.requesters.count = requesters.unwrap_or(sc.requesters.count);
    sc.days = days.unwrap_or(sc.days);
    let replicas = if sc.replica_per_peer {
        crate::cores::Replicas::PerPeer
    } else {
        crate::cores::Replicas::Shared
    };
    crate::cores::run(&sc, seed, replicas, progress)
}

/// Which driver ran the peers, for the report.
pub fn driver_line(sc: &Scenario) -> &'static str {
    if sc.replica_per_peer {
        "a node core per peer (the binary's protocol code), each with its own ledger replica and real automerge sync"
    } else {
        "a node core per peer (the binary's protocol code), lent one converged ledger replica in turn"
    }
}

/// Throughput scaling efficiency from the smallest to the largest sweep point:
/// `(X_max / X_min) / (n_max / n_min)` of jobs per second; 1.0 is linear.
pub fn scaling_efficiency(sweep: &[SweepPoint]) -> Option<f64> {
    let (p0, p1) = (sweep.first()?, sweep.last()?);
    let (n0, n1) = (p0.requesters, p1.requesters);
    let (x0, x1) = (p0.settled_per_h().mean, p1.settled_per_h().mean);
    if n0 == 0 || x0 <= 0.0 || n1 <= n0 {
        return None;
    }
    Some((x1 / x0) / (f64::from(n1) / f64::from(n0)))
}

/// Storage latency by object size (the paper's Fig. 2): what was measured, if
/// anything, and the fit `T_r = S/B_r`, `T_w = S/B_w + T_c` with `T_c` for the
/// scenario's epoch.
#[derive(Debug, Clone)]
pub struct StorageFigure {
    /// The calibration's points (on its own network's epochs); empty for a model.
    pub measured: Vec<crate::calibration::StoragePoint>,
    pub fit: crate::calibration::StorageFit,
    /// `T_c` on the scenario's epochs.
    pub tc_s: f64,
    /// Where the figures came from.
    pub source: String,
}

impl StorageFigure {
    /// The fit at `mb`: (read, blob write, ledger-finalized write) seconds.
    pub fn at(&self, mb: f64) -> (f64, f64, f64) {
        let w = mb / self.fit.write_mb_s;
        (mb / self.fit.read_mb_s, w, w + self.tc_s)
    }
}

/// The scenario's storage figure: fitted to its calibration's measurements,
/// or a model from its stated bandwidths (a 1 s committee round) without one.
pub fn storage_figure(sc: &Scenario) -> StorageFigure {
    let epoch_s = sc.epoch_minutes as f64 * 60.0;
    let cal = sc.calibration.as_ref();
    match cal.and_then(|c| Some((c, c.storage_fit()?))) {
        Some((c, fit)) => StorageFigure {
            measured: c.storage.clone(),
            fit,
            tc_s: fit.tc(epoch_s),
            source: format!(
                "measured: {}; a real iroh blob store and ledger, 3-member committee on loopback, {:.0} s epochs",
                c.source, c.storage_epoch_s
            ),
        },
        None => {
            let fit = crate::calibration::StorageFit {
                read_mb_s: sc.storage.read_mb_s,
                write_mb_s: sc.storage.write_mb_s,
                tc_measured_s: 0.0,
                commit_s: 1.0,
            };
            StorageFigure {
                measured: Vec::new(),
                fit,
                tc_s: fit.tc(epoch_s),
                source: "a model, not measured: the scenario's bandwidths and a 1 s committee round (no calibration)".into(),
            }
        }
    }
}

/// DP-SGD's overhead by batch size (the paper's Fig. 6): `(batch, overhead)`
/// measured, or the model at each of the scenario's batch sizes; and whether
/// it was measured.
pub fn dp_figure(sc: &Scenario) -> (Vec<(u32, f64)>, bool) {
    match sc.calibration.as_ref().filter(|c| !c.dp.is_empty()) {
        Some(c) => {
            let mut v: Vec<(u32, f64)> = c.dp.iter().map(|p| (p.batch, p.overhead())).collect();
            v.sort_by_key(|p| p.0);
            (v, true)
        }
        None => (
            sc.requesters
                .train_batches
                .iter()
                .map(|&b| (b, crate::calibration::DP_OVERHEAD_MODEL))
                .collect(),
            false,
        ),
    }
}

/// `text` safe inside HTML.
fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn write(path: &Path, text: &str) -> Result<(), ReportError> {
    std::fs::write(path, text).map_err(|source| ReportError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// The series legend, boxed, in the chart's corner.
fn legend<'a, DB: DrawingBackend + 'a, CT: plotters::coord::CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    name: &str,
    at: SeriesLabelPosition,
) -> Result<(), ReportError> {
    chart
        .configure_series_labels()
        .position(at)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| plot_err(name, e))
}

fn plot_err(name: &str, e: impl std::fmt::Display) -> ReportError {
    ReportError::Plot {
        name: name.to_string(),
        reason: e.to_string(),
    }
}

/// Bars of `values` (one per label), with an optional reference line.
fn bar_svg(
    path: &Path,
    title: &str,
    (x_label, labels): (&str, &[String]),
    y_label: &str,
    values: &[f64],
    reference: Option<(f64, &str)>,
    value_text: &dyn Fn(f64) -> String,
) -> Result<(), ReportError> {
    let name = path.display().to_string();
    let root = SVGBackend::new(path, (900, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(&name, e))?;
    let max = values
        .iter()
        .copied()
        .chain(reference.map(|r| r.0))
        .fold(0.0f64, f64::max)
        .max(1e-9)
        * 1.1;
    let n = values.len().max(1);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5f64..n as f64 - 0.5, 0f64..max)
        .map_err(|e| plot_err(&name, e))?;
    // Bars sit on whole numbers; label them, or number them when unlabelled.
    let label_of = |x: &f64| {
        let i = x.round();
        if (x - i).abs() > 1e-6 || i < 0.0 {
            return String::new();
        }
        labels
            .get(i as usize)
            .cloned()
            .unwrap_or_else(|| format!("{}", i as usize + 1))
    };
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .x_labels(n.min(30))
        .x_label_formatter(&label_of)
        .disable_x_mesh()
        .draw()
        .map_err(|e| plot_err(&name, e))?;
    chart
        .draw_series(values.iter().enumerate().map(|(i, v)| {
            Rectangle::new(
                [(i as f64 - 0.4, 0.0), (i as f64 + 0.4, *v)],
                BLUE.mix(0.6).filled(),
            )
        }))
        .map_err(|e| plot_err(&name, e))?;
    if n <= 12 {
        // Few bars: write each one's value above it (bars near 1.0 say
        // nothing without it).
        chart
            .draw_series(values.iter().enumerate().map(|(i, v)| {
                Text::new(
                    value_text(*v),
                    (i as f64 - 0.12, v + max * 0.07),
                    ("sans-serif", 14),
                )
            }))
            .map_err(|e| plot_err(&name, e))?;
    }
    if let Some((y, label)) = reference {
        chart
            .draw_series(LineSeries::new(
                [(-0.5, y), (n as f64 - 0.5, y)],
                RED.stroke_width(2),
            ))
            .map_err(|e| plot_err(&name, e))?
            .label(label)
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED));
        legend(&mut chart, &name, SeriesLabelPosition::UpperRight)?;
    }
    root.present().map_err(|e| plot_err(&name, e))
}

/// Which axes of [`lines_svg`] are logarithmic (values spanning orders of
/// magnitude: on a linear axis the small ones lie on it). Without a positive
/// point to place, the plot falls back to linear axes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Axes {
    /// Logarithmic x, linear y (a sweep over requester counts).
    LogX,
    LogLog,
}

/// Lines through (x, y) points, one series per (label, points).
fn lines_svg(
    path: &Path,
    title: &str,
    (x_label, y_label): (&str, &str),
    series: &[(&str, Vec<(f64, f64)>)],
    axes: Axes,
    decor: Decor<'_>,
) -> Result<(), ReportError> {
    let (bars, markers) = (decor.bars, decor.markers);
    let name = path.display().to_string();
    let root = SVGBackend::new(path, (900, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(&name, e))?;
    let pts = || {
        series
            .iter()
            .flat_map(|(_, p)| p.iter().copied())
            .chain(markers.iter().flat_map(|m| m.points.iter().copied()))
    };
    let (mut x1, mut y1) = (1e-9f64, 1e-9f64);
    let (mut x0, mut y0) = (f64::INFINITY, f64::INFINITY);
    let ends = bars.iter().flat_map(|b| [(b.x, b.lo), (b.x, b.hi)]);
    for (x, y) in pts().chain(ends) {
        x1 = x1.max(x);
        y1 = y1.max(y);
        if x > 0.0 {
            x0 = x0.min(x);
        }
        if y > 0.0 {
            y0 = y0.min(y);
        }
    }
    // A logarithmic axis has no place for 0: such points are left out.
    let kept: Vec<(&str, Vec<(f64, f64)>)> = series
        .iter()
        .map(|(label, p)| {
            let p = p
                .iter()
                .copied()
                .filter(|&(x, y)| match axes {
                    Axes::LogX => x > 0.0,
                    Axes::LogLog => x > 0.0 && y > 0.0,
                })
                .collect();
            (*label, p)
        })
        .collect();
    let series = &kept[..];
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70);
    if axes == Axes::LogLog && x0.is_finite() && y0.is_finite() {
        // A bar reaching 0 ends at the bottom of the axis.
        let bars: Vec<ErrorBar> = bars
            .iter()
            .map(|b| ErrorBar {
                lo: b.lo.max(y0 * 0.5),
                ..*b
            })
            .collect();
        let decor = Decor {
            bars: &bars[..],
            ..decor
        };
        // Room below the data for the legend (lower right), about 19 px a
        // line of the plot's 330: the data keeps the rest of the height.
        let lines = (series.len() + markers.len()) as f64;
        let room = ((lines * 19.0 + 16.0) / 330.0).min(0.6);
        let (lo, hi) = (y0 * 0.5, y1 * 2.0);
        let lo = lo / (hi / lo).powf(room / (1.0 - room));
        let chart = builder
            .build_cartesian_2d((x0 * 0.8..x1 * 1.25).log_scale(), (lo..hi).log_scale())
            .map_err(|e| plot_err(&name, e))?;
        draw_lines(chart, &name, (x_label, y_label), series, decor)?;
    } else if axes == Axes::LogX && x0.is_finite() {
        let chart = builder
            .build_cartesian_2d((x0 * 0.8..x1 * 1.25).log_scale(), 0f64..y1 * 1.1)
            .map_err(|e| plot_err(&name, e))?;
        draw_lines(chart, &name, (x_label, y_label), series, decor)?;
    } else {
        let chart = builder
            .build_cartesian_2d(0f64..x1 * 1.05, 0f64..y1 * 1.1)
            .map_err(|e| plot_err(&name, e))?;
        draw_lines(chart, &name, (x_label, y_label), series, decor)?;
    }
    root.present().map_err(|e| plot_err(&name, e))
}

/// The mesh, the series and the legend of [`lines_svg`], on either axes.
fn draw_lines<'a, X, Y>(
    mut chart: ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
    name: &str,
    (x_label, y_label): (&str, &str),
    series: &[(&str, Vec<(f64, f64)>)],
    Decor {
        bars,
        markers,
        values,
    }: Decor<'_>,
) -> Result<(), ReportError>
where
    X: Ranged<ValueType = f64> + plotters::coord::ranged1d::ValueFormatter<f64>,
    Y: Ranged<ValueType = f64> + plotters::coord::ranged1d::ValueFormatter<f64>,
{
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .x_label_formatter(&|v| tick(*v))
        .y_label_formatter(&|v| tick(*v))
        .draw()
        .map_err(|e| plot_err(name, e))?;
    let colors = [BLUE, RED, GREEN, MAGENTA, CYAN];
    for (i, (label, p)) in series.iter().enumerate() {
        let c = colors[i % colors.len()];
        chart
            .draw_series(LineSeries::new(p.clone(), c.stroke_width(2)))
            .map_err(|e| plot_err(name, e))?
            .label(*label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c));
        // Dots mark data points; a fitted curve has many and needs none.
        if p.len() <= 12 {
            chart
                .draw_series(p.iter().map(|&(x, y)| Circle::new((x, y), 3, c.filled())))
                .map_err(|e| plot_err(name, e))?;
        }
        // Values written beside the points of the first `values` series.
        if i < values && p.len() <= 12 {
            chart
                .draw_series(p.iter().map(|&(x, y)| {
                    EmptyElement::at((x, y))
                        + Text::new(
                            format!("{y:.2}"),
                            (4, -16),
                            ("sans-serif", 13).into_font().color(&c),
                        )
                }))
                .map_err(|e| plot_err(name, e))?;
        }
    }
    // Measured points: hollow squares in the colour of the line they belong to.
    for m in markers {
        let c = colors[m.color % colors.len()];
        chart
            .draw_series(m.points.iter().map(|&(x, y)| {
                EmptyElement::at((x, y)) + Rectangle::new([(-6, -6), (6, 6)], c.stroke_width(2))
            }))
            .map_err(|e| plot_err(name, e))?
            .label(m.label)
            .legend(move |(x, y)| {
                Rectangle::new([(x + 4, y - 5), (x + 14, y + 5)], c.stroke_width(2))
            });
    }
    // Error bars in the first series' colour, with short caps.
    for b in bars {
        let c = colors[0];
        chart
            .draw_series([PathElement::new(
                [(b.x, b.lo), (b.x, b.hi)],
                c.stroke_width(1),
            )])
            .map_err(|e| plot_err(name, e))?;
        chart
            .draw_series([b.lo, b.hi].map(|y| {
                EmptyElement::at((b.x, y)) + PathElement::new([(-5, 0), (5, 0)], c.stroke_width(1))
            }))
            .map_err(|e| plot_err(name, e))?;
    }
    // Lines here rise to the right, and a reference sits at the top: the
    // lower right is where they are not.
    legend(&mut chart, name, SeriesLabelPosition::LowerRight)
}

/// An axis tick's text: no float noise (`9.99999e-5`), no trailing zeros.
fn tick(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        return "0".into();
    }
    if !(1e-3..1e6).contains(&a) {
        return format!("{v:.0e}");
    }
    let text = format!("{v:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// What [`lines_svg`] draws beside its lines: error bars, measured points as
/// markers, and values written beside the points of the first `values` series.
#[derive(Clone, Copy, Debug, Default)]
struct Decor<'a> {
    bars: &'a [ErrorBar],
    markers: &'a [Markers<'a>],
    values: usize,
}

/// Points drawn as markers only (measurements beside a fitted line), in the
/// colour of series number `color`.
#[derive(Clone, Debug)]
struct Markers<'a> {
    label: &'a str,
    color: usize,
    points: Vec<(f64, f64)>,
}

/// A vertical error bar at `x`, from `lo` to `hi`.
#[derive(Clone, Copy, Debug)]
struct ErrorBar {
    x: f64,
    lo: f64,
    hi: f64,
}

/// Render an SVG plot to a PNG beside it. Text is drawn with the system's fonts
/// (e.g. Debian's fonts-dejavu-core); without any, the PNG has no labels.
fn svg_to_png(svg: &Path, opt: &resvg::usvg::Options<'_>) -> Result<(), ReportError> {
    let name = svg.display().to_string();
    let data = std::fs::read(svg).map_err(|source| ReportError::Io {
        path: name.clone(),
        source,
    })?;
    let tree = resvg::usvg::Tree::from_data(&data, opt).map_err(|e| plot_err(&name, e))?;
    let size = tree.size().to_int_size();
    let mut pixmap = resvg::tiny_skia::Pixmap::new(size.width(), size.height())
        .ok_or_else(|| plot_err(&name, "empty image"))?;
    pixmap.fill(resvg::tiny_skia::Color::WHITE);
    resvg::render(
        &tree,
        resvg::tiny_skia::Transform::default(),
        &mut pixmap.as_mut(),
    );
    pixmap
        .save_png(svg.with_extension("png"))
        .map_err(|e| plot_err(&name, e))
}

/// One of the paper's claims set against a run.
#[derive(Debug, Clone)]
pub struct Claim {
    pub figure: &'static str,
    pub claim: &'static str,
    /// What this run gives.
    pub here: String,
    /// `Some(true)` holds, `Some(false)` differs, `None` not measured.
    pub holds: Option<bool>,
    /// Why it differs (or what the agreement rests on).
    pub why: String,
}

const HYPERSCALERS: [&str; 3] = ["AWS", "GCP", "AZR"];

/// Whether the hyperscalers (mean over their classes of a provider's mean
/// income) out-earn every other class present; `None` without both kinds.
fn hyperscalers_lead(by_class: &std::collections::BTreeMap<String, f64>) -> Option<bool> {
    let is_hyper = |c: &String| HYPERSCALERS.contains(&c.as_str());
    let hyper: Vec<f64> = by_class
        .iter()
        .filter(|(c, _)| is_hyper(c))
        .map(|(_, v)| *v)
        .collect();
    let mut other = by_class.iter().filter(|(c, _)| !is_hyper(c)).peekable();
    if hyper.is_empty() || other.peek().is_none() {
        return None;
    }
    let h = hyper.iter().sum::<f64>() / hyper.len() as f64;
    Some(other.all(|(_, v)| h > *v))
}

/// Classes by a provider's mean income, highest first: "COM 1,234; …".
fn class_ranking(by_class: &std::collections::BTreeMap<String, f64>) -> String {
    let mut v: Vec<(&String, &f64)> = by_class.iter().collect();
    v.sort_by(|a, b| b.1.total_cmp(a.1));
    v.iter()
        .map(|(c, x)| format!("{c} {x:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The paper's claims (Figs. 2–6) against this run, each with a verdict and
/// the reason for a difference.
pub fn paper_claims(o: &Outcome) -> Vec<Claim> {
    let s = &o.summary;
    let mut out = Vec::new();

    let storage = storage_figure(&o.scenario);
    let worst = storage
        .measured
        .iter()
        .flat_map(|p| {
            let (r, w, _) = storage.at(p.size_mb as f64);
            [
                (p.blob_read_s / r - 1.0).abs(),
                (p.blob_write_s / w - 1.0).abs(),
            ]
        })
        .fold(0.0f64, f64::max);
    out.push(Claim {
        figure: "Fig. 2 (storage latency)",
        claim: "T_r = S/B_r; T_w = S/B_w + T_c",
        here: format!(
            "B_r {:.0} MB/s, B_w {:.0} MB/s, T_c {:.0} s on {}-minute epochs",
            storage.fit.read_mb_s, storage.fit.write_mb_s, storage.tc_s, o.scenario.epoch_minutes
        ),
        holds: (!storage.measured.is_empty()).then_some(worst <= 1.0),
        why: if storage.measured.is_empty() {
            "not measured: a model from the scenario's bandwidths (run `cloudchain sim` to calibrate)".into()
        } else {
            format!(
                "measured blob times are within {:.0} % of the fit at every size (one measurement per size); a ledger-finalized write is dominated by T_c, the wait for the next checkpoint (half an epoch), not by S",
                worst * 100.0
            )
        },
    });

    if let (Some(first), Some(last)) = (o.sweep.first(), o.sweep.last()) {
        let eff = scaling_efficiency(&o.sweep).unwrap_or(0.0);
        let knee_at = knee(&o.sweep);
        out.push(Claim {
            figure: "Fig. 3 (throughput)",
            claim: "throughput grows near-linearly with the requesters",
            here: format!(
                "efficiency {eff:.2} from {} to {} requesters; knee {}",
                first.requesters,
                last.requesters,
                knee_at.map_or("none".into(), |k| format!("at {k}"))
            ),
            holds: Some(knee_at.is_none() && eff >= 0.8),
            why: match knee_at {
                Some(k) => format!(
                    "linear only below the knee: from {k} requesters on the providers are full (utilization {:.0} % at {}), jobs find no free provider at their price, and throughput flattens",
                    last.utilization().mean * 100.0,
                    last.requesters
                ),
                None => format!(
                    "the sweep never saturates (utilization {:.0} % at its largest point), so linear growth follows from the offered load and says nothing about capacity",
                    last.utilization().mean * 100.0
                ),
            },
        });
    }

    let lead = hyperscalers_lead(&s.income_by_class);
    let appears = o.sweep.iter().find_map(|p| {
        let mut mean = std::collections::BTreeMap::new();
        for (_, x) in &p.runs {
            for (c, v) in &x.income_by_class {
                *mean.entry(c.clone()).or_insert(0.0) += v / p.runs.len() as f64;
            }
        }
        (hyperscalers_lead(&mean) == Some(true)).then(|| (p.requesters, p.utilization().mean))
    });
    let price = |p: Profile| p.params().price;
    out.push(Claim {
        figure: "Fig. 4 (tokens by provider)",
        claim: "the hyperscalers (AWS, GCP, Azure) earned the most",
        here: format!("a provider's mean income by class: {}", class_ranking(&s.income_by_class)),
        holds: lead,
        why: match lead {
            None => "the scenario has no hyperscalers, or only hyperscalers".into(),
            Some(true) => "the hyperscalers' capacity (8 slots each at the fastest speed) is in use: the cheaper providers are full".into(),
            Some(false) => format!(
                "requesters take the offer of best utility, and price weighs most: the hyperscalers list at {}–{} µ-tokens per CU against {} for a community node and {}–{} for the GPU clouds. At {:.0} % utilization a cheaper provider is nearly always free, so the hyperscalers win only what nobody cheaper can take. {}",
                price(Profile::Gcp),
                price(Profile::Aws),
                price(Profile::Community),
                price(Profile::Hetzner),
                price(Profile::Lambda),
                s.utilization * 100.0,
                match appears {
                    Some((n, u)) => format!(
                        "The paper's ordering appears under load: from {n} requesters on in the sweep (utilization {:.0} %), when the cheaper providers are full and the hyperscalers' larger capacity earns.",
                        u * 100.0
                    ),
                    None if o.sweep.is_empty() => "This scenario runs no sweep, so no load was tried under which the ordering could appear.".into(),
                    None => format!(
                        "It appears at no load of the sweep (up to {} requesters).",
                        o.sweep.last().map_or(0, |p| p.requesters)
                    ),
                }
            ),
        },
    });

    let jain_ok = s.jain_by_group.iter().all(|(_, j)| *j >= 0.89);
    out.push(Claim {
        figure: "Fig. 5 (fairness)",
        claim: "Jain's index ≥ 0.89 at every group size",
        here: format!(
            "requesters: {}; providers' work per slot: {:.3}",
            s.jain_by_group
                .iter()
                .map(|(g, j)| format!("{j:.3} in groups of {g}"))
                .collect::<Vec<_>>()
                .join(", "),
            s.jain_providers
        ),
        holds: (!s.jain_by_group.is_empty()).then_some(jain_ok && s.jain_providers >= 0.89),
        why: format!(
            "over requesters it {} because nearly every job is served below saturation (each requester's service ratio is near 1); over providers it is {:.2}: work goes to the cheapest offers first, so equal slots do not get equal work",
            if jain_ok { "holds" } else { "falls short" },
            s.jain_providers
        ),
    });

    let (dp, measured) = dp_figure(&o.scenario);
    let in_band = dp.iter().all(|(_, x)| (0.15..=0.20).contains(x));
    out.push(Claim {
        figure: "Fig. 6 (DP overhead)",
        claim: "DP-SGD costs 15–20 % more compute",
        here: dp
            .iter()
            .map(|(b, x)| format!("batch {b}: +{:.0} %", x * 100.0))
            .collect::<Vec<_>>()
            .join(", "),
        holds: measured.then_some(in_band),
        why: if !measured {
            "not measured: a model (run `cloudchain sim` to calibrate)".into()
        } else if in_band {
            "measured within the paper's band at every batch size".into()
        } else {
            "the overhead is per step (noise for every parameter) while the work grows with the batch, so it falls as the batch grows: clipping costs a few percent (per-example norms from the layer inputs and deltas), the noise the rest".into()
        },
    });
    out
}

/// A provider class's colour in the plots.
fn class_colour(p: Profile) -> RGBColor {
    match p {
        Profile::Aws => RGBColor(255, 153, 0),
        Profile::Gcp => RGBColor(52, 168, 83),
        Profile::Azure => RGBColor(0, 120, 212),
        Profile::Hetzner => RGBColor(213, 12, 45),
        Profile::Lambda => RGBColor(128, 60, 170),
        Profile::Community => RGBColor(110, 110, 110),
    }
}

/// The paper's Fig. 4: each provider's income as a stacked bar, coloured by
/// class: what requesters paid (solid), what the checkpoints minted (lighter,
/// above), what proven wrong results slashed (black, below 0). Sorted by net
/// income; each bar named by its class where they fit.
fn tokens_svg(path: &Path, m: &Metrics, gini: f64) -> Result<(), ReportError> {
    let name = path.display().to_string();
    let tok = |v: &[u64], i: usize| v.get(i).copied().unwrap_or(0) as f64 / 1e6;
    let mut order: Vec<usize> = (0..m.providers).collect();
    order.sort_by(|&a, &b| {
        m.provider_net(b)
            .total_cmp(&m.provider_net(a))
            .then(a.cmp(&b))
    });
    let top = order
        .iter()
        .map(|&i| tok(&m.provider_earned, i) + tok(&m.provider_minted, i))
        .fold(1e-9f64, f64::max)
        * 1.1;
    let bottom = -order
        .iter()
        .map(|&i| tok(&m.provider_slashed, i))
        .fold(0.0f64, f64::max)
        * 1.1;
    let n = order.len().max(1);
    let root = SVGBackend::new(path, (900, 460)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(&name, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "Tokens by provider: paid, minted (lighter), slashed (below 0); Gini {gini:.3}"
            ),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(-0.5f64..n as f64 - 0.5, bottom..top)
        .map_err(|e| plot_err(&name, e))?;
    let named = n <= 40;
    let label_of = |x: &f64| {
        let i = x.round();
        if !named || (x - i).abs() > 1e-6 || i < 0.0 {
            return String::new();
        }
        order
            .get(i as usize)
            .map_or(String::new(), |&p| profile_of(m, p).short().to_string())
    };
    chart
        .configure_mesh()
        .x_desc(if named {
            "providers by net income, named by class"
        } else {
            "providers by net income"
        })
        .y_desc("tokens")
        .x_labels(n.min(40))
        .x_label_formatter(&label_of)
        .y_label_formatter(&|v| tick(*v))
        .disable_x_mesh()
        .draw()
        .map_err(|e| plot_err(&name, e))?;
    let half = if n > 200 { 0.5 } else { 0.4 };
    for (x, &i) in order.iter().enumerate() {
        let (x, c) = (x as f64, class_colour(profile_of(m, i)));
        let (paid, minted, slashed) = (
            tok(&m.provider_earned, i),
            tok(&m.provider_minted, i),
            tok(&m.provider_slashed, i),
        );
        let bars = [
            (0.0, paid, c.filled()),
            (paid, paid + minted, c.mix(0.4).filled()),
            (-slashed, 0.0, BLACK.filled()),
        ];
        chart
            .draw_series(
                bars.into_iter()
                    .filter(|(lo, hi, _)| hi > lo)
                    .map(|(lo, hi, style)| Rectangle::new([(x - half, lo), (x + half, hi)], style)),
            )
            .map_err(|e| plot_err(&name, e))?;
    }
    // One legend entry per class present, and one for slashing.
    let mut classes: Vec<Profile> = (0..m.providers).map(|i| profile_of(m, i)).collect();
    classes.sort();
    classes.dedup();
    for p in classes {
        let c = class_colour(p);
        chart
            .draw_series(std::iter::empty::<Rectangle<(f64, f64)>>())
            .map_err(|e| plot_err(&name, e))?
            .label(p.params().label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], c.filled()));
    }
    chart
        .draw_series(std::iter::empty::<Rectangle<(f64, f64)>>())
        .map_err(|e| plot_err(&name, e))?
        .label("slashed")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], BLACK.filled()));
    legend(&mut chart, &name, SeriesLabelPosition::UpperRight)?;
    root.present().map_err(|e| plot_err(&name, e))
}

/// Providers' income split into what requesters paid, what the checkpoints
/// minted and what proven wrong results slashed of their bonds, by profile
/// and for cheaters apart (per provider in `providers.csv`).
fn profile_of(m: &Metrics, i: usize) -> Profile {
    m.provider_profiles
        .get(i)
        .copied()
        .unwrap_or(Profile::Community)
}

/// What this run measured against Fig. 4's claim: each class's share of what
/// requesters paid, the hyperscalers' together.
fn earnings_by_class(m: &Metrics) -> String {
    let total: u64 = m.provider_earned.iter().sum();
    if total == 0 {
        return "<p>Measured here: no provider was paid.</p>".into();
    }
    let mut by: Vec<(Profile, u64)> = Vec::new();
    for (i, e) in m.provider_earned.iter().enumerate() {
        let p = profile_of(m, i);
        match by.iter_mut().find(|(q, _)| *q == p) {
            Some((_, v)) => *v += e,
            None => by.push((p, *e)),
        }
    }
    by.sort_by_key(|b| std::cmp::Reverse(b.1));
    let share = |v: u64| v as f64 / total as f64 * 100.0;
    let hyper: u64 = by
        .iter()
        .filter(|(p, _)| matches!(p, Profile::Aws | Profile::Gcp | Profile::Azure))
        .map(|(_, v)| v)
        .sum();
    let classes: Vec<String> = by
        .iter()
        .map(|(p, v)| format!("{p:?} {:.1} %", share(*v)))
        .collect();
    format!(
        "<p>Measured here (share of what requesters paid): {}; the hyperscalers together {:.1} %.</p>",
        classes.join(", "),
        share(hyper)
    )
}

fn income_table(h: &mut String, m: &Metrics) {
    h.push_str(
        "<h2>Income</h2><table><tr><th>providers</th><th>count</th>\
         <th>paid by requesters</th><th>minted</th><th>slashed</th><th>net, per provider</th></tr>",
    );
    let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
    for i in 0..m.providers {
        let name = if m.cheaters.contains(&i) {
            "cheaters".to_string()
        } else {
            format!("{:?}", profile_of(m, i))
        };
        match groups.iter_mut().find(|(g, _)| *g == name) {
            Some((_, v)) => v.push(i),
            None => groups.push((name, vec![i])),
        }
    }
    for (name, v) in &groups {
        let sum = |x: &[u64]| v.iter().map(|&i| x[i]).sum::<u64>() as f64 / 1e6;
        let (paid, minted, slashed) = (
            sum(&m.provider_earned),
            sum(&m.provider_minted),
            sum(&m.provider_slashed),
        );
        let _ = write!(
            h,
            "<tr><td>{name}</td><td>{}</td><td>{paid:.1}</td><td>{minted:.1}</td><td>{slashed:.1}</td><td>{:.1}</td></tr>",
            v.len(),
            (paid + minted - slashed) / v.len() as f64
        );
    }
    h.push_str("</table>");
}

/// Write CSVs, SVG and PNG plots and `report.html` into `dir`; returns the HTML path.
pub fn write_report(o: &Outcome, dir: &Path) -> Result<PathBuf, ReportError> {
    std::fs::create_dir_all(dir).map_err(|source| ReportError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let m = &o.main;
    let s = &o.summary;

    // Providers.
    let mut csv = String::from(
        "provider,label,profile,paid_tokens,minted_tokens,slashed_tokens,jobs,compute_units,busy_share,final_price,cheater\n",
    );
    let secs = m.days * 86_400.0;
    for i in 0..m.providers {
        let slots = f64::from(m.provider_slots.get(i).copied().unwrap_or(1).max(1));
        let _ = writeln!(
            csv,
            "{i},{},{:?},{:.6},{:.6},{:.6},{},{:.3},{:.4},{},{}",
            m.provider_labels.get(i).map_or("", String::as_str),
            m.provider_profiles
                .get(i)
                .copied()
                .unwrap_or(crate::profiles::Profile::Community),
            m.provider_earned[i] as f64 / 1e6,
            m.provider_minted[i] as f64 / 1e6,
            m.provider_slashed[i] as f64 / 1e6,
            m.provider_jobs[i],
            m.provider_units[i] as f64 / 1000.0,
            m.provider_busy_ms[i] / (slots * secs * 1000.0),
            m.final_prices.get(i).copied().unwrap_or(0),
            m.cheaters.contains(&i),
        );
    }
    write(&dir.join("providers.csv"), &csv)?;
    let mut fair = String::from("group_size,jain\n");
    for (g, j) in &s.jain_by_group {
        let _ = writeln!(fair, "{g},{j:.5}");
    }
    write(&dir.join("fairness.csv"), &fair)?;
    let mut sweep = String::from(
        "requesters,seeds,offered_jobs_per_h,settled_jobs_per_h,settled_ci95,contracted_share,utilization,utilization_ci95,cu_per_s,sla_compliance,latency_p50_s\n",
    );
    for p in &o.sweep {
        let (settled, util) = (p.settled_per_h(), p.utilization());
        let _ = writeln!(
            sweep,
            "{},{},{:.3},{:.3},{:.3},{:.4},{:.4},{:.4},{:.3},{:.4},{:.1}",
            p.requesters,
            p.runs.len(),
            p.offered_per_h().mean,
            settled.mean,
            settled.ci95,
            p.contracted_share().mean,
            util.mean,
            util.ci95,
            p.estimate(|x| x.throughput_cu_per_s).mean,
            p.estimate(|x| x.sla_compliance).mean,
            p.estimate(|x| x.latency_p50_s).mean,
        );
    }
    write(&dir.join("sweep.csv"), &sweep)?;
    let mut classes = String::from("requesters,class,utilization\n");
    for p in &o.sweep {
        for (c, u) in p.utilization_by_class() {
            let _ = writeln!(classes, "{},{c},{u:.4}", p.requesters);
        }
    }
    write(&dir.join("sweep_classes.csv"), &classes)?;
    let storage = storage_figure(&o.scenario);
    let mut sizes: Vec<u64> = o.scenario.storage.sizes_mb.clone();
    sizes.extend(storage.measured.iter().map(|p| p.size_mb));
    sizes.sort_unstable();
    sizes.dedup();
    let mut st = String::from(
        "size_mb,measured_blob_read_s,measured_blob_write_s,measured_ledger_write_s,fit_read_s,fit_write_s,fit_ledger_finalized_write_s\n",
    );
    for &mb in &sizes {
        let m = storage.measured.iter().find(|p| p.size_mb == mb);
        let cell = |f: fn(&crate::calibration::StoragePoint) -> f64| {
            m.map_or(String::new(), |p| format!("{:.4}", f(p)))
        };
        let (r, w, lw) = storage.at(mb as f64);
        let _ = writeln!(
            st,
            "{mb},{},{},{},{r:.4},{w:.4},{lw:.3}",
            cell(|p| p.blob_read_s),
            cell(|p| p.blob_write_s),
            cell(|p| p.ledger_write_s),
        );
    }
    write(&dir.join("storage.csv"), &st)?;
    let (dp, dp_measured) = dp_figure(&o.scenario);
    let mut dpc = String::from("batch,overhead,measured\n");
    for (b, x) in &dp {
        let _ = writeln!(dpc, "{b},{x:.4},{dp_measured}");
    }
    write(&dir.join("dp.csv"), &dpc)?;
    let json = serde_json::to_string_pretty(s).unwrap_or_default();
    write(&dir.join("summary.json"), &json)?;

    // Plots.
    tokens_svg(&dir.join("tokens.svg"), m, s.gini_earnings)?;
    let jain: Vec<f64> = s.jain_by_group.iter().map(|(_, j)| *j).collect();
    // A scenario without requester groups has no fairness figure (it was
    // drawn empty).
    let fairness = !jain.is_empty();
    if fairness {
        bar_svg(
            &dir.join("fairness.svg"),
            &format!(
                "Jain's index by requester group size ({})",
                s.jain_by_group
                    .iter()
                    .map(|(g, _)| g.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            (
                "requester group size",
                &s.jain_by_group
                    .iter()
                    .map(|(g, _)| g.to_string())
                    .collect::<Vec<_>>(),
            ),
            "Jain's index",
            &jain,
            Some((0.89, "paper: ≥ 0.89")),
            &|v| format!("{v:.3}"),
        )?;
    }
    let knee_at = knee(&o.sweep);
    if !o.sweep.is_empty() {
        let x = |p: &SweepPoint| f64::from(p.requesters);
        let settled: Vec<(f64, f64)> = o
            .sweep
            .iter()
            .map(|p| (x(p), p.settled_per_h().mean))
            .collect();
        // What the requesters asked for, and the line through the smallest
        // point that linear scaling would follow: settled throughput that
        // tracks the offered load says the market is not saturated.
        let offered: Vec<(f64, f64)> = o
            .sweep
            .iter()
            .map(|p| (x(p), p.offered_per_h().mean))
            .collect();
        let ideal: Vec<(f64, f64)> = match settled.first() {
            Some(&(n0, y0)) if n0 > 0.0 => settled.iter().map(|&(n, _)| (n, y0 * n / n0)).collect(),
            _ => Vec::new(),
        };
        let bars = |f: &dyn Fn(&SweepPoint) -> Estimate, scale: f64| -> Vec<ErrorBar> {
            o.sweep
                .iter()
                .map(|p| {
                    let e = f(p);
                    ErrorBar {
                        x: x(p),
                        lo: (e.mean - e.ci95).max(0.0) * scale,
                        hi: (e.mean + e.ci95) * scale,
                    }
                })
                .filter(|b| b.hi > b.lo)
                .collect()
        };
        let top = offered
            .iter()
            .chain(&settled)
            .map(|p| p.1)
            .fold(0.0, f64::max);
        let bottom = offered
            .iter()
            .chain(&settled)
            .map(|p| p.1)
            .filter(|y| *y > 0.0)
            .fold(f64::INFINITY, f64::min);
        let knee_label = format!("knee: < {:.0} % of jobs contracted", KNEE_SHARE * 100.0);
        let mut series = vec![
            ("settled (mean ± 95 % CI over seeds)", settled),
            ("offered (submitted)", offered),
            ("linear from the smallest point", ideal),
        ];
        if let Some(k) = knee_at
            && bottom.is_finite()
        {
            series.push((
                &knee_label,
                vec![(f64::from(k), bottom), (f64::from(k), top)],
            ));
        }
        lines_svg(
            &dir.join("throughput.svg"),
            "Throughput against requesters",
            ("requesters (log)", "jobs per hour (log)"),
            &series,
            Axes::LogLog,
            Decor {
                bars: &bars(&SweepPoint::settled_per_h, 1.0),
                ..Decor::default()
            },
        )?;
        let util: Vec<(f64, f64)> = o
            .sweep
            .iter()
            .map(|p| (x(p), p.utilization().mean * 100.0))
            .collect();
        let full: Vec<(f64, f64)> = util.iter().map(|&(n, _)| (n, 95.0)).collect();
        lines_svg(
            &dir.join("utilization.svg"),
            "Provider utilization against requesters",
            ("requesters (log)", "busy slot time (%)"),
            &[
                ("utilization (mean ± 95 % CI over seeds)", util.clone()),
                ("95 %", full),
            ],
            Axes::LogX,
            Decor {
                bars: &bars(&SweepPoint::utilization, 100.0),
                ..Decor::default()
            },
        )?;
        let jain = |f: fn(&Summary) -> f64| -> Vec<(f64, f64)> {
            o.sweep.iter().map(|p| (x(p), p.estimate(f).mean)).collect()
        };
        lines_svg(
            &dir.join("fairness_load.svg"),
            "Fairness against load (Jain's index, mean over seeds)",
            ("requesters (log)", "Jain's index"),
            &[
                (
                    "over requesters (service ratio)",
                    jain(|x| x.jain_requesters),
                ),
                ("over providers (work per slot)", jain(|x| x.jain_providers)),
                (
                    "paper: ≥ 0.89",
                    [util.first(), util.last()]
                        .into_iter()
                        .flatten()
                        .map(|&(n, _)| (n, 0.89))
                        .collect(),
                ),
            ],
            Axes::LogX,
            Decor {
                values: 2,
                ..Decor::default()
            },
        )?;
    }
    // The fit from a tenth of the smallest size to five times the largest,
    // the measurements beside it as markers.
    let (lo, hi) = (
        sizes.first().copied().unwrap_or(1) as f64 / 10.0,
        sizes.last().copied().unwrap_or(1) as f64 * 5.0,
    );
    let span: Vec<f64> = std::iter::successors(Some(lo), |x| (x * 1.5 < hi).then_some(x * 1.5))
        .chain([hi])
        .collect();
    let fit = |f: fn((f64, f64, f64)) -> f64| -> Vec<(f64, f64)> {
        span.iter().map(|&mb| (mb, f(storage.at(mb)))).collect()
    };
    let measured = |f: fn(&crate::calibration::StoragePoint) -> f64| -> Vec<(f64, f64)> {
        storage
            .measured
            .iter()
            .map(|p| (p.size_mb as f64, f(p)))
            .collect()
    };
    let kind = if storage.measured.is_empty() {
        "model"
    } else {
        "fit"
    };
    let labels = [
        format!(
            "{kind}: blob read S/B_r, B_r = {:.0} MB/s",
            storage.fit.read_mb_s
        ),
        format!(
            "{kind}: blob write S/B_w, B_w = {:.0} MB/s",
            storage.fit.write_mb_s
        ),
        format!(
            "{kind}: ledger-finalized write S/B_w + T_c, T_c = {:.0} s ({} min epochs)",
            storage.tc_s, o.scenario.epoch_minutes
        ),
        format!(
            "measured: ledger-finalized write ({:.0} s epochs)",
            o.scenario
                .calibration
                .as_ref()
                .map_or(0.0, |c| c.storage_epoch_s)
        ),
    ];
    let mut series = vec![
        (labels[0].as_str(), fit(|t| t.0)),
        (labels[1].as_str(), fit(|t| t.1)),
        (labels[2].as_str(), fit(|t| t.2)),
    ];
    let bench_fit = format!(
        "fit: S/B_w + T_c at the calibration's epochs, T_c = {:.2} s",
        storage.fit.tc_measured_s
    );
    if !storage.measured.is_empty() {
        let tc = storage.fit.tc_measured_s;
        series.push((
            bench_fit.as_str(),
            span.iter()
                .map(|&mb| (mb, mb / storage.fit.write_mb_s + tc))
                .collect(),
        ));
    }
    let markers = if storage.measured.is_empty() {
        Vec::new()
    } else {
        vec![
            Markers {
                label: "measured: blob read",
                color: 0,
                points: measured(|p| p.blob_read_s),
            },
            Markers {
                label: "measured: blob write",
                color: 1,
                points: measured(|p| p.blob_write_s),
            },
            Markers {
                label: &labels[3],
                color: 3,
                points: measured(|p| p.ledger_write_s),
            },
        ]
    };
    lines_svg(
        &dir.join("storage.svg"),
        "Storage latency by object size (log-log)",
        ("object size (MB, log)", "seconds (log)"),
        &series,
        Axes::LogLog,
        Decor {
            markers: &markers,
            ..Decor::default()
        },
    )?;
    bar_svg(
        &dir.join("dp.svg"),
        &format!(
            "DP-SGD compute overhead by batch size ({})",
            if dp_measured { "measured" } else { "model" }
        ),
        (
            "batch size",
            &dp.iter().map(|(b, _)| b.to_string()).collect::<Vec<_>>(),
        ),
        "extra compute over plain SGD (%)",
        &dp.iter().map(|(_, x)| x * 100.0).collect::<Vec<_>>(),
        Some((20.0, "paper: 15–20 %")),
        &|v| format!("+{v:.1} %"),
    )?;

    // PNG copies of every plot.
    let mut opt = resvg::usvg::Options::default();
    opt.fontdb_mut().load_system_fonts();
    // plotters asks for "sans-serif": map it to a sans face that is installed.
    let sans = opt
        .fontdb
        .faces()
        .flat_map(|f| f.families.iter().map(|(name, _)| name.clone()))
        .find(|n| n.contains("Sans") && !n.contains("Mono"));
    if let Some(family) = sans {
        opt.fontdb_mut().set_sans_serif_family(family.clone());
        opt.font_family = family;
    }
    let mut plots = vec!["tokens.svg", "storage.svg", "dp.svg"];
    if fairness {
        plots.push("fairness.svg");
    }
    if !o.sweep.is_empty() {
        plots.extend(["throughput.svg", "utilization.svg", "fairness_load.svg"]);
    }
    for p in plots {
        svg_to_png(&dir.join(p), &opt)?;
    }

    // The page.
    let eff = scaling_efficiency(&o.sweep);
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=utf-8><title>CloudChain simnet: {name}</title>\
         <style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}th{{background:#eee}}\
         .claim{{color:#555;font-style:italic}}</style></head><body>\
         <h1>Scenario <code>{name}</code>, seed {seed}</h1><p>{desc}</p>\
         <p>{prov} providers, {req} requesters, {days} days; {events} events, {msgs} messages; digest <code>{digest}</code>.</p>\
         <p>Driver: {driver}.</p>",
        driver = driver_line(&o.scenario),
        name = o.scenario.name,
        seed = o.seed,
        desc = o.scenario.description,
        prov = s.providers,
        req = s.requesters,
        days = s.days,
        events = s.events,
        msgs = s.messages,
        digest = m.digest(),
    );
    let row = |h: &mut String, k: &str, v: String, claim: &str| {
        let _ = write!(
            h,
            "<tr><th>{k}</th><td>{v}</td><td class=claim>{claim}</td></tr>"
        );
    };
    h.push_str("<h2>The paper's claims against this run</h2><table><tr><th>figure</th><th>paper</th><th>this run</th><th>verdict</th><th>why</th></tr>");
    for c in paper_claims(o) {
        let verdict = match c.holds {
            Some(true) => "<b style=color:#080>holds</b>",
            Some(false) => "<b style=color:#b00>differs</b>",
            None => "<b style=color:#777>not measured</b>",
        };
        let _ = write!(
            h,
            "<tr><th>{}</th><td class=claim>{}</td><td>{}</td><td>{verdict}</td><td style=text-align:left>{}</td></tr>",
            c.figure,
            html_escape(c.claim),
            html_escape(&c.here),
            html_escape(&c.why)
        );
    }
    h.push_str("</table>");
    h.push_str("<h2>Figures</h2><table><tr><th>figure</th><th>simulated</th><th>paper</th></tr>");
    row(
        &mut h,
        "jobs submitted / settled",
        format!("{} / {}", s.jobs_submitted, s.jobs_settled),
        "",
    );
    row(
        &mut h,
        "throughput",
        format!(
            "{:.2} jobs/h, {:.1} CU/s",
            s.throughput_jobs_per_s * 3600.0,
            s.throughput_cu_per_s
        ),
        "",
    );
    row(
        &mut h,
        "SLA compliance",
        format!("{:.2} %", s.sla_compliance * 100.0),
        "SLA compliance is reported",
    );
    row(
        &mut h,
        "utilization",
        format!("{:.1} %", s.utilization * 100.0),
        "",
    );
    row(
        &mut h,
        if o.scenario.faults.profile_outages {
            "provider uptime by class (outages as the profiles advertise: a model)"
        } else {
            "provider uptime by class"
        },
        s.uptime_by_class
            .iter()
            .map(|(c, u)| format!("{c} {:.2} %", u * 100.0))
            .collect::<Vec<_>>()
            .join(", "),
        "",
    );
    row(
        &mut h,
        "latency p50 / p95 / p99 (submit → settled)",
        format!(
            "{:.0} / {:.0} / {:.0} s",
            s.latency_p50_s, s.latency_p95_s, s.latency_p99_s
        ),
        "",
    );
    row(
        &mut h,
        "Gini of tokens earned",
        format!("{:.3}", s.gini_earnings),
        "",
    );
    row(
        &mut h,
        "Jain's index over work per slot (providers)",
        format!("{:.3}", s.jain_providers),
        "",
    );
    for (g, j) in &s.jain_by_group {
        row(
            &mut h,
            &format!("Jain's index, requester groups of {g}"),
            format!("{j:.3}"),
            "≥ 0.89 at every group size",
        );
    }
    if let Some(e) = eff {
        row(
            &mut h,
            "throughput scaling efficiency (first → last sweep point)",
            format!("{:.2}", e),
            "",
        );
        row(
            &mut h,
            "knee of the sweep",
            knee_at.map_or_else(
                || "none (not saturated)".into(),
                |k| format!("{k} requesters"),
            ),
            "",
        );
    }
    row(
        &mut h,
        &format!(
            "DP-SGD compute overhead by batch size ({})",
            if dp_measured {
                "measured: the compute crate's CPU backend, with and without DP-SGD"
            } else {
                "a model, not measured: no calibration"
            }
        ),
        dp.iter()
            .map(|(b, x)| format!("{b}: +{:.0} %", x * 100.0))
            .collect::<Vec<_>>()
            .join(", "),
        "15–20 %",
    );
    row(
        &mut h,
        "cheating providers caught",
        format!(
            "{} of {} ({} wrong results caught, {} missed)",
            s.cheaters_caught, s.cheaters, s.wrong_results_caught, s.wrong_results_missed
        ),
        "",
    );
    row(
        &mut h,
        "ledger invariants",
        if s.invariant_violations.is_empty() {
            "held".into()
        } else {
            s.invariant_violations.join("; ")
        },
        "no negative balance, supply conserved",
    );
    h.push_str("</table>");
    income_table(&mut h, m);
    let fig = |h: &mut String, file: &str, title: &str, claim: &str| {
        let _ = write!(
            h,
            "<h2>{title}</h2><p class=claim>Paper: {claim}</p><img src=\"{file}\" width=900>"
        );
    };
    fig(
        &mut h,
        "tokens.svg",
        "Token distribution per provider (Fig. 4)",
        "the hyperscalers (AWS, GCP, Azure) earned the most",
    );
    h.push_str(&earnings_by_class(m));
    if fairness {
        fig(
            &mut h,
            "fairness.svg",
            "Fairness against requester group size",
            "Jain's index ≥ 0.89 at every group size",
        );
    }
    if let (Some(first), Some(last)) = (o.sweep.first(), o.sweep.last()) {
        fig(
            &mut h,
            "throughput.svg",
            "Throughput against requesters",
            "throughput grows near-linearly with the number of requesters",
        );
        let (u0, u1) = (first.utilization(), last.utilization());
        let _ = write!(
            h,
            "<p>Measured over {seeds} seeds per point: utilization from {a:.1} % ± {ea:.1} at {n0} requesters to {b:.1} % ± {eb:.1} at {n1}, where {share:.0} % of the submitted jobs got a contract; by provider class there: {classes}. {knee}</p>",
            share = last.contracted_share().mean * 100.0,
            classes = last
                .utilization_by_class()
                .iter()
                .map(|(c, u)| format!("{c} {:.0} %", u * 100.0))
                .collect::<Vec<_>>()
                .join(", "),
            seeds = first.runs.len(),
            a = u0.mean * 100.0,
            ea = u0.ci95 * 100.0,
            b = u1.mean * 100.0,
            eb = u1.ci95 * 100.0,
            n0 = first.requesters,
            n1 = last.requesters,
            knee = match knee_at {
                Some(k) => format!(
                    "The knee is at {k} requesters: from there on fewer than {:.0} % of the jobs get a contract (the rest find no free provider at their price and their bids expire), so growth is linear only below it.",
                    KNEE_SHARE * 100.0
                ),
                None => "No knee within the sweep: nearly every job got a contract, so the market never saturated and linear growth says nothing about capacity.".into(),
            },
        );
        fig(
            &mut h,
            "utilization.svg",
            "Provider utilization against requesters",
            "(no figure; the paper reports no utilization)",
        );
        fig(
            &mut h,
            "fairness_load.svg",
            "Fairness against load, over requesters and over providers (Fig. 5)",
            "Jain's index ≥ 0.89",
        );
    }
    fig(
        &mut h,
        "storage.svg",
        "Storage latency by object size (Fig. 2)",
        "T_r = S/B_r, T_w = S/B_w + T_c",
    );
    let _ = write!(
        h,
        "<p>Source: {src}. Fit: B_r = {r:.0} MB/s, B_w = {w:.0} MB/s; T_c = {tc:.1} s on the scenario's {e}-minute epochs (half an epoch's wait for the next checkpoint, plus {c:.2} s for the committee's round{measured}).</p>",
        src = html_escape(&storage.source),
        r = storage.fit.read_mb_s,
        w = storage.fit.write_mb_s,
        tc = storage.tc_s,
        e = o.scenario.epoch_minutes,
        c = storage.fit.commit_s,
        measured = if storage.measured.is_empty() {
            String::new()
        } else {
            format!(
                "; measured T_c was {:.2} s on the calibration's {:.0} s epochs",
                storage.fit.tc_measured_s,
                o.scenario
                    .calibration
                    .as_ref()
                    .map_or(0.0, |c| c.storage_epoch_s)
            )
        },
    );
    fig(
        &mut h,
        "dp.svg",
        "DP-SGD overhead by batch size (Fig. 6)",
        "DP-SGD costs 15–20 % more compute",
    );
    let _ = write!(
        h,
        "<p>{}</p>",
        match o.scenario.calibration.as_ref().filter(|_| dp_measured) {
            Some(c) => format!(
                "Measured: {}; one epoch of the simulated training jobs' MLP {:?} with and without DP-SGD (clipping and σ = 1 noise), best of several runs. A DP job's compute units in this run carry the overhead at its batch size.",
                html_escape(&c.source),
                crate::setup::TRAIN_LAYERS
            ),
            None => format!(
                "A model, not measured: +{:.0} % at every batch size (no calibration was given).",
                crate::calibration::DP_OVERHEAD_MODEL * 100.0
            ),
        }
    );
    h.push_str("<h2>Files</h2><p>providers.csv, fairness.csv, sweep.csv, storage.csv, dp.csv, summary.json; every plot as SVG and PNG</p></body></html>");
    let page = dir.join("report.html");
    write(&page, &h)?;
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hyperscalers_lead_only_above_every_other_class() {
        let by = |v: &[(&str, f64)]| -> std::collections::BTreeMap<String, f64> {
            v.iter().map(|(c, x)| (c.to_string(), *x)).collect()
        };
        assert_eq!(
            hyperscalers_lead(&by(&[("AWS", 9.0), ("AZR", 7.0), ("COM", 5.0)])),
            Some(true)
        );
        // Their mean against each other class: (9 + 1)/2 = 5 is not above 6.
        assert_eq!(
            hyperscalers_lead(&by(&[("AWS", 9.0), ("GCP", 1.0), ("HTZ", 6.0)])),
            Some(false)
        );
        assert_eq!(hyperscalers_lead(&by(&[("COM", 5.0)])), None);
        assert_eq!(
            class_ranking(&by(&[("AWS", 1.0), ("COM", 5.0)])),
            "COM 5, AWS 1"
        );
    }

    #[test]
    fn ticks_read_as_numbers() {
        assert_eq!(tick(1000.0), "1000");
        assert_eq!(tick(0.5), "0.5");
        assert_eq!(tick(9.99999999e-5), "1e-4");
        assert_eq!(tick(0.0), "0");
        assert_eq!(tick(12.25), "12.25");
    }

    #[test]
    fn estimates_use_students_t() {
        let one = Estimate::of(&[3.0]);
        assert_eq!((one.mean, one.ci95, one.n), (3.0, 0.0, 1));
        // Mean 2, sample sd 1, n 3: 4.303 · 1/√3.
        let e = Estimate::of(&[1.0, 2.0, 3.0]);
        assert!((e.mean - 2.0).abs() < 1e-12);
        assert!((e.ci95 - 4.303 / 3f64.sqrt()).abs() < 1e-9, "{e:?}");
        assert_eq!(Estimate::of(&[]).n, 0);
        assert_eq!(t95(100), 1.96);
    }

    #[test]
    fn parallel_runs_come_back_in_order() {
        let items: Vec<u64> = (0..20).collect();
        let ended = std::sync::atomic::AtomicUsize::new(0);
        let out = run_parallel(
            &items,
            3,
            |&k| k * k,
            |_| {
                ended.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            },
        );
        assert_eq!(out, items.iter().map(|k| k * k).collect::<Vec<_>>());
        assert_eq!(ended.into_inner(), 20);
    }
}
