//! SVG charts: throughput per workload, latency by percentile, and the rate over time.
//!
//! Each target keeps one colour in every chart. A chart with nothing to show is not written,
//! so a report never links an empty picture.

use std::path::Path;

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::summary::{latency_series, Target, TargetRuns, WorkloadRuns};
use crate::result::Sample;
use crate::workload::human_count;

/// The throughput overview's file name.
pub(super) const THROUGHPUT_FILE: &str = "throughput.svg";

/// The latency-by-percentile chart of the workload with this slug.
pub(super) fn latency_file(slug: &str) -> String {
    format!("latency-{slug}.svg")
}

/// The rate-over-time chart of the workload with this slug.
pub(super) fn timeline_file(slug: &str) -> String {
    format!("timeline-{slug}.svg")
}

/// Colour-blind-safe colours (Okabe and Ito), one per target in first-seen order.
const PALETTE: [RGBColor; 6] = [
    RGBColor(0, 114, 178),
    RGBColor(230, 159, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(213, 94, 0),
];

fn colour(target: usize) -> RGBColor {
    PALETTE[target % PALETTE.len()]
}

const WIDTH: u32 = 1000;
/// Integer steps per unit on axes with hand-placed ticks.
const MILLI: i32 = 1000;
const FONT: &str = "sans-serif";

/// Draws every chart the results allow into `dir`; returns the file names written.
pub(super) fn draw_all(
    dir: &Path,
    groups: &[WorkloadRuns<'_>],
    targets: &[Target],
) -> Result<Vec<String>> {
    let mut written = Vec::new();
    let mut keep = |name: String, drawn: bool| {
        if drawn {
            written.push(name);
        }
    };
    let path = dir.join(THROUGHPUT_FILE);
    keep(
        THROUGHPUT_FILE.to_string(),
        throughput(&path, groups, targets)?,
    );
    for g in groups {
        let name = latency_file(&g.slug);
        keep(name.clone(), latency(&dir.join(&name), g)?);
        let name = timeline_file(&g.slug);
        keep(name.clone(), timeline(&dir.join(&name), g)?);
    }
    Ok(written)
}

/// Horizontal grouped bars, because workload labels are too long to sit under vertical
/// ones: one group per workload, one bar per target.
fn throughput(path: &Path, groups: &[WorkloadRuns<'_>], targets: &[Target]) -> Result<bool> {
    let rows: Vec<(&str, Vec<(usize, f64)>)> = groups
        .iter()
        .map(|g| {
            let bars = g
                .targets
                .iter()
                .filter_map(|t| t.median_msgs_per_s().map(|m| (t.index, m)))
                .collect();
            (g.label, bars)
        })
        .filter(|(_, bars): &(&str, Vec<_>)| !bars.is_empty())
        .collect();
    if rows.is_empty() {
        return Ok(false);
    }
    let n = rows.len();
    let slots = rows.iter().map(|(_, b)| b.len()).max().unwrap_or(1);
    let top = rows
        .iter()
        .flat_map(|(_, bars)| bars.iter().map(|&(_, m)| m))
        .fold(1.0, f64::max);
    let longest = rows
        .iter()
        .map(|(l, _)| l.chars().count())
        .max()
        .unwrap_or(0);
    let row_px = slots * 24 + 26;
    // A band under the last row holds the legend, so that it never covers a bar.
    let legend_px = targets.len() * 20 + 20;
    let height = 130 + n * row_px + legend_px;

    // Row i (from the top) spans y in [n-1-i, n-i] thousandths of a row: integer
    // coordinates, because plotters labels hand-placed ticks only on those. Its label sits
    // at the row's centre.
    let rows_end = n as i32 * MILLI;
    let legend_band = (legend_px * MILLI as usize / row_px) as i32;
    let centres: Vec<i32> = (0..n as i32)
        .map(|i| rows_end - i * MILLI - MILLI / 2)
        .collect();
    let row_label = |y: &i32| {
        let i = (rows_end - y) / MILLI;
        rows.get(i as usize)
            .map_or(String::new(), |(l, _)| l.to_string())
    };

    let root = svg(path, height as u32)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Throughput: median over rounds", (FONT, 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size((longest * 7 + 20) as u32)
        .build_cartesian_2d(
            0.0..top * 1.18,
            (-legend_band..rows_end).with_key_points(centres),
        )?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_labels(6)
        .x_label_formatter(&|v| human_count(*v))
        .y_label_formatter(&row_label)
        .label_style((FONT, 13))
        .x_desc("messages per second")
        .draw()?;

    let slot = MILLI * 8 / 10 / slots as i32;
    let value_style =
        TextStyle::from((FONT, 12).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    for (index, target) in targets.iter().enumerate() {
        let fill = colour(index);
        let bars: Vec<(f64, i32, i32)> = rows
            .iter()
            .enumerate()
            .filter_map(|(i, (_, bars))| {
                let s = bars.iter().position(|&(t, _)| t == index)?;
                let upper = rows_end - i as i32 * MILLI - MILLI / 10 - s as i32 * slot;
                Some((bars[s].1, upper - slot * 85 / 100, upper))
            })
            .collect();
        if bars.is_empty() {
            continue;
        }
        chart
            .draw_series(
                bars.iter()
                    .map(|&(m, lo, hi)| Rectangle::new([(0.0, lo), (m, hi)], fill.filled())),
            )?
            .label(target.name.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], fill.filled()));
        chart.draw_series(bars.iter().map(|&(m, lo, hi)| {
            EmptyElement::at((m, (lo + hi) / 2))
                + Text::new(human_count(m), (5, 0), value_style.clone())
        }))?;
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    root.present()?;
    Ok(true)
}

/// One curve per target from the rounds' merged histograms. The x axis is log10(1/(1-q))
/// (the number of nines, in thousandths), so the tail gets as much room as the median.
fn latency(path: &Path, g: &WorkloadRuns<'_>) -> Result<bool> {
    let runs: Vec<_> = g
        .targets
        .iter()
        .flat_map(|t| t.runs.iter().copied())
        .collect();
    let Some(series) = latency_series(g.kind, &runs) else {
        return Ok(false);
    };
    let curves: Vec<(&TargetRuns<'_>, Vec<(f64, f64)>)> = g
        .targets
        .iter()
        .filter_map(|t| match t.merged_latency(series) {
            Some(Ok(h)) if !h.is_empty() => Some((t, percentile_curve(&h))),
            _ => None,
        })
        .collect();
    if curves.is_empty() {
        return Ok(false);
    }
    let points = || curves.iter().flat_map(|(_, c)| c.iter().copied());
    let max_us = points().map(|(_, y)| y).fold(1.0, f64::max);
    let min_us = points().map(|(_, y)| y).fold(max_us, f64::min).max(1.0);
    let nines = points().map(|(x, _)| x).fold(1.0, f64::max).ceil() as i32 * MILLI;
    let (scale, unit) = if max_us >= 10_000.0 {
        (1e-3, "ms")
    } else {
        (1.0, "µs")
    };
    let ticks: Vec<i32> = [0, 301, 1000, 2000, 3000, 4000, 5000]
        .into_iter()
        .filter(|&x| x <= nines)
        .collect();

    let root = svg(path, 560)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{}: {series} latency by percentile", g.label),
            (FONT, 18),
        )
        .margin(15)
        .margin_right(45)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (0..nines).with_key_points(ticks),
            (min_us * scale / 1.3..max_us * scale * 1.3).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_label_formatter(&|x| percentile_label(f64::from(*x) / f64::from(MILLI)))
        .y_label_formatter(&|y| axis_number(*y))
        .label_style((FONT, 13))
        .x_desc("percentile (rounds' histograms merged)")
        .y_desc(format!("latency ({unit})"))
        .draw()?;
    for (t, curve) in &curves {
        let stroke = colour(t.index).stroke_width(2);
        let rounds = t.runs.len();
        chart
            .draw_series(LineSeries::new(
                curve
                    .iter()
                    .map(|&(x, y)| ((x * f64::from(MILLI)).round() as i32, y * scale)),
                stroke,
            ))?
            .label(format!("{} ({rounds} rounds)", t.name))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], stroke));
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    root.present()?;
    Ok(true)
}

/// (nines, µs) from the minimum up to the quantile the sample count still supports
/// (1/(1-q) = count), at most 99.999%: beyond that every quantile is the maximum.
fn percentile_curve(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    let last = (h.len() as f64).log10().min(5.0);
    let steps = (last / 0.05).ceil() as usize;
    (0..=steps)
        .map(|i| (i as f64 * 0.05).min(last))
        .map(|x| (x, h.value_at_quantile(1.0 - 10f64.powf(-x)) as f64))
        .collect()
}

/// `0%`, `50%`, `99%`, `99.99%` for a position in nines.
fn percentile_label(nines: f64) -> String {
    let decimals = (nines.round() as usize).saturating_sub(2);
    format!("{:.*}%", decimals, (1.0 - 10f64.powf(-nines)) * 100.0)
}

/// `0.5`, `2`, `150`: no trailing zeros on a log axis.
fn axis_number(v: f64) -> String {
    if v >= 10.0 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// One line of the rate-over-time chart.
struct RateLine {
    target: usize,
    label: String,
    points: Vec<(f64, f64)>,
    /// Consumed rates are dashed, so they stay apart from produced ones of the same colour.
    dashed: bool,
}

/// A target's typical (median) round: produced and consumed per second, each when non-zero.
fn rate_lines(t: &TargetRuns<'_>) -> Vec<RateLine> {
    let run = t.median_round();
    let line = |what: &str, rate: fn(&Sample) -> f64| {
        run.timeline
            .iter()
            .any(|s| rate(s) > 0.0)
            .then(|| RateLine {
                target: t.index,
                label: format!("{} {what} (round {})", t.name, run.round),
                points: run.timeline.iter().map(|s| (s.t_s, rate(s))).collect(),
                dashed: what == "consumed",
            })
    };
    [
        line("produced", |s| s.produced_per_s),
        line("consumed", |s| s.consumed_per_s),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Each target's typical round over time, so that stalls and warm-up show.
fn timeline(path: &Path, g: &WorkloadRuns<'_>) -> Result<bool> {
    let lines: Vec<RateLine> = g.targets.iter().flat_map(rate_lines).collect();
    if lines.is_empty() {
        return Ok(false);
    }
    let points = || lines.iter().flat_map(|l| l.points.iter().copied());
    let end = points().map(|(x, _)| x).fold(1e-3, f64::max);
    let top = points().map(|(_, y)| y).fold(1.0, f64::max);

    let root = svg(path, 500)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{}: rate over time", g.label), (FONT, 18))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..end, 0.0..top * 1.15)?;
    chart
        .configure_mesh()
        .y_label_formatter(&|y| human_count(*y))
        .label_style((FONT, 13))
        .x_desc("seconds since the start (warm-up included)")
        .y_desc("records per second")
        .draw()?;
    for line in lines {
        let stroke = colour(line.target).stroke_width(2);
        let drawn = if line.dashed {
            chart.draw_series(DashedLineSeries::new(line.points, 6, 4, stroke))?
        } else {
            chart.draw_series(LineSeries::new(line.points, stroke))?
        };
        let dash = if line.dashed { 4 } else { 20 };
        drawn.label(line.label).legend(move |(x, y)| {
            DashedPathElement::new(vec![(x, y), (x + 20, y)], dash, 3, stroke)
        });
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    root.present()?;
    Ok(true)
}

fn svg(path: &Path, height: u32) -> Result<DrawingArea<SVGBackend<'_>, Shift>> {
    let root = SVGBackend::new(path, (WIDTH, height)).into_drawing_area();
    root.fill(&WHITE)
        .with_context(|| format!("drawing {}", path.display()))?;
    Ok(root)
}

fn legend<'a, X, Y>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
    position: SeriesLabelPosition,
) -> Result<()>
where
    X: Ranged,
    Y: Ranged,
{
    chart
        .configure_series_labels()
        .position(position)
        .label_font((FONT, 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_axis_reads_in_nines() {
        assert_eq!(percentile_label(0.0), "0%");
        assert_eq!(percentile_label(2f64.log10()), "50%");
        assert_eq!(percentile_label(2.0), "99%");
        assert_eq!(percentile_label(3.0), "99.9%");
        assert_eq!(percentile_label(5.0), "99.999%");
    }

    #[test]
    fn curves_stop_where_the_samples_do() {
        let mut h = crate::result::new_histogram();
        for v in 1..=1000 {
            h.record(v).unwrap();
        }
        let curve = percentile_curve(&h);
        assert_eq!(curve.first(), Some(&(0.0, 1.0)));
        assert_eq!(curve.last(), Some(&(3.0, 999.0)));
    }
}
