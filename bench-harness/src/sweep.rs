//! `sweep`: how one knob at a time moves throughput and latency. A sweep file holds a base
//! workload, base broker flags and experiments; each experiment varies workload knobs
//! (`vary`) and/or broker flags (`vary_broker`) over the product of their values. Every
//! point gets a fresh `eventflowd`. Output: `results.json`, `sweep.csv`, `sweep.md` and one
//! SVG chart per experiment.
//!
//! ```toml
//! kind = "produce"
//! broker_flags = "--cores 2 --fsync always"
//! rounds = 1
//! [base]
//! message_size = 100
//! duration = "5s"
//! [[experiment]]
//! name = "batch"
//! vary.batch_bytes = [16384, 65536, 262144, 1048576]
//! [[experiment]]
//! name = "fsync"
//! vary_broker.fsync = ["never", "interval=10", "always"]
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use plotters::prelude::*;
use serde::Deserialize;
use toml::{Table, Value};

use crate::broker::LocalBroker;
use crate::plan::workload_from;
use crate::report::main_throughput;
use crate::result::{self, series, RunResult};
use crate::run::{self, Kind, RunContext};
use crate::target::TargetUrl;
use crate::workload::Workload;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SweepFile {
    kind: String,
    #[serde(default)]
    broker_flags: String,
    #[serde(default = "one")]
    rounds: u32,
    #[serde(default)]
    base: Table,
    experiment: Vec<ExperimentFile>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExperimentFile {
    name: String,
    #[serde(default)]
    vary: BTreeMap<String, Vec<Value>>,
    #[serde(default)]
    vary_broker: BTreeMap<String, Vec<Value>>,
}

/// One point of an experiment: the varied values and what they make.
#[derive(Debug, Clone)]
pub struct Point {
    pub experiment: String,
    /// (knob, value) in the experiment's order: workload knobs, then broker flags.
    pub params: Vec<(String, String)>,
    pub workload: Workload,
    pub broker_flags: String,
}

/// A parsed sweep.
#[derive(Debug)]
pub struct Sweep {
    pub kind: Kind,
    pub rounds: u32,
    pub points: Vec<Point>,
}

impl Sweep {
    pub fn parse(text: &str) -> Result<Sweep> {
        let file: SweepFile = toml::from_str(text).context("sweep file")?;
        let kind = Kind::parse(&file.kind)?;
        if file.rounds == 0 {
            bail!("rounds must be at least 1");
        }
        if file.experiment.is_empty() {
            bail!("the sweep has no [[experiment]]");
        }
        let mut points = Vec::new();
        for e in &file.experiment {
            if e.vary.is_empty() && e.vary_broker.is_empty() {
                bail!("experiment {}: nothing to vary", e.name);
            }
            let axes: Vec<(bool, &String, &Vec<Value>)> = e
                .vary
                .iter()
                .map(|(k, v)| (false, k, v))
                .chain(e.vary_broker.iter().map(|(k, v)| (true, k, v)))
                .collect();
            if let Some((_, k, _)) = axes.iter().find(|(_, _, v)| v.is_empty()) {
                bail!("experiment {}: `{k}` has no values", e.name);
            }
            for combo in product(&axes.iter().map(|(_, _, v)| v.len()).collect::<Vec<_>>()) {
                let mut knobs = file.base.clone();
                let mut flags = file.broker_flags.clone();
                let mut params = Vec::new();
                for (&(broker, key, values), &i) in axes.iter().zip(&combo) {
                    let value = &values[i];
                    params.push((key.clone(), display(value)));
                    if broker {
                        flags = with_flag(&flags, key, &display(value));
                    } else {
                        knobs.insert(key.clone(), value.clone());
                    }
                }
                let workload =
                    workload_from(knobs).with_context(|| format!("experiment {}", e.name))?;
                workload
                    .validate(kind)
                    .with_context(|| format!("experiment {}", e.name))?;
                points.push(Point {
                    experiment: e.name.clone(),
                    params,
                    workload,
                    broker_flags: flags,
                });
            }
        }
        Ok(Sweep {
            kind,
            rounds: file.rounds,
            points,
        })
    }

    pub fn load(path: &Path) -> Result<Sweep> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Sweep::parse(&text).with_context(|| format!("sweep {}", path.display()))
    }
}

/// Every index combination of axes with these lengths, the last axis fastest.
fn product(lengths: &[usize]) -> Vec<Vec<usize>> {
    let mut out = vec![Vec::new()];
    for &n in lengths {
        out = out
            .into_iter()
            .flat_map(|prefix| {
                (0..n).map(move |i| {
                    let mut v = prefix.clone();
                    v.push(i);
                    v
                })
            })
            .collect();
    }
    out
}

fn display(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `flags` with `--key value` set (replacing an existing `--key`); `key` uses `_` or `-`.
fn with_flag(flags: &str, key: &str, value: &str) -> String {
    let flag = format!("--{}", key.replace('_', "-"));
    let mut words: Vec<String> = Vec::new();
    let mut it = flags.split_whitespace();
    while let Some(w) = it.next() {
        if w == flag {
            it.next();
        } else if !w.starts_with(&format!("{flag}=")) {
            words.push(w.to_string());
        }
    }
    words.push(flag);
    if !value.is_empty() {
        words.push(value.to_string());
    }
    words.join(" ")
}

/// Runs every point (a fresh broker each), writes the outputs into `out`, returns
/// `sweep.md`'s path.
pub fn run_sweep(
    sweep: &Sweep,
    binary: &Path,
    out: &Path,
    scratch: &Path,
    progress: bool,
) -> Result<PathBuf> {
    let mut results = Vec::new();
    let total = sweep.points.len() as u32 * sweep.rounds;
    let mut n = 0;
    for point in &sweep.points {
        for round in 1..=sweep.rounds {
            n += 1;
            let params: Vec<String> = point
                .params
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            eprintln!(
                "[{n}/{total}] {}: {} (eventflowd {})",
                point.experiment,
                params.join(" "),
                point.broker_flags
            );
            crate::broker::settle();
            let broker = LocalBroker::start(binary, &point.broker_flags, scratch)?;
            let target = TargetUrl::Eventflow(broker.addr.clone()).connect()?;
            let ctx = RunContext {
                target: target.as_ref(),
                broker_pid: broker.pid(),
                durability: broker.durability(),
                broker_flags: Some(point.broker_flags.clone()),
                data_dir: Some(broker.data_dir.clone()),
                round,
                progress,
            };
            let r = run::run(sweep.kind, &point.workload, &ctx)?;
            drop(target);
            drop(broker);
            eprintln!("{}", crate::report::terminal_summary(&r));
            results.push((point.clone(), r));
            result::save(
                &out.join("results.json"),
                &results.iter().map(|(_, r)| r.clone()).collect::<Vec<_>>(),
            )?;
        }
    }
    std::fs::write(out.join("sweep.csv"), csv(&results))?;
    let mut md = String::from("# Sweep\n\n");
    let _ = writeln!(
        md,
        "Kind: {}. One fresh `eventflowd` per point; throughput is the median of {} round(s) \
         (every round is in sweep.csv), latency percentiles come from the rounds' histograms \
         merged.\n",
        sweep.kind.as_str(),
        sweep.rounds
    );
    let mut experiments: Vec<&str> = Vec::new();
    for (p, _) in &results {
        if !experiments.contains(&p.experiment.as_str()) {
            experiments.push(&p.experiment);
        }
    }
    for e in experiments {
        let rounds: Vec<&(Point, RunResult)> =
            results.iter().filter(|(p, _)| p.experiment == e).collect();
        let medians = medians(&rounds)?;
        let rows: Vec<&(Point, RunResult)> = medians.iter().collect();
        let chart = format!("sweep-{}.svg", slug(e));
        chart_experiment(&out.join(&chart), e, &rows)?;
        let _ = writeln!(md, "## {e}\n\n{}\n![{e}]({chart})\n", table(&rows));
    }
    let path = out.join("sweep.md");
    std::fs::write(&path, md)?;
    Ok(path)
}

/// One row per point: the round with the median throughput, its latency series replaced by
/// the rounds' histograms merged (percentiles are never averaged).
fn medians(rounds: &[&(Point, RunResult)]) -> Result<Vec<(Point, RunResult)>> {
    let mut out: Vec<(Point, RunResult)> = Vec::new();
    let mut done: Vec<&Vec<(String, String)>> = Vec::new();
    for (point, _) in rounds {
        if done.contains(&&point.params) {
            continue;
        }
        done.push(&point.params);
        let mut same: Vec<&RunResult> = rounds
            .iter()
            .filter(|(p, _)| p.params == point.params)
            .map(|(_, r)| r)
            .collect();
        same.sort_by(|a, b| rate(a).total_cmp(&rate(b)));
        let mut median = same[same.len() / 2].clone();
        for (name, latency) in &mut median.latency {
            let mut merged = result::new_histogram();
            for r in &same {
                if let Some(l) = r.latency.get(name) {
                    merged.add(l.histogram()?)?;
                }
            }
            *latency = result::Latency::from_histogram(&merged);
        }
        out.push((point.clone(), median));
    }
    Ok(out)
}

/// The main latency series of a result and its p50/p99/p99.9 in µs.
fn main_latency(r: &RunResult) -> Option<(u64, u64, u64)> {
    [series::E2E, series::PUBLISH_INTENDED, series::PUBLISH]
        .iter()
        .find_map(|s| r.latency.get(*s))
        .map(|l| (l.p50_us, l.p99_us, l.p999_us))
}

/// Records per second, by the throughput the comparison reports show for the same kind.
fn rate(r: &RunResult) -> f64 {
    main_throughput(r).map_or(0.0, |t| t.msgs_per_s)
}

fn mb_per_s(r: &RunResult) -> f64 {
    main_throughput(r).map_or(0.0, |t| t.mb_per_s)
}

fn csv(results: &[(Point, RunResult)]) -> String {
    let mut out = String::from(
        "experiment,params,broker_flags,round,msgs_per_s,mb_per_s,p50_us,p99_us,p999_us,broker_cpu_s_per_million,harness_cpu_s,errors\n",
    );
    for (p, r) in results {
        let params: Vec<String> = p.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let (p50, p99, p999) = main_latency(r).unwrap_or_default();
        let _ = writeln!(
            out,
            "{},{},{},{},{:.0},{:.1},{p50},{p99},{p999},{},{:.2},{}",
            p.experiment,
            params.join(" "),
            p.broker_flags,
            r.round,
            rate(r),
            mb_per_s(r),
            r.broker
                .map_or(String::new(), |b| format!("{:.3}", b.cpu_s_per_million)),
            r.harness_cpu_s,
            r.errors,
        );
    }
    out
}

fn table(rows: &[&(Point, RunResult)]) -> String {
    let mut out = String::from("| point | msgs/s | MB/s | p50 µs | p99 µs | p99.9 µs | broker CPU s / M msgs |\n|---|---:|---:|---:|---:|---:|---:|\n");
    for (p, r) in rows {
        let params: Vec<String> = p.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let (p50, p99, p999) = main_latency(r).unwrap_or_default();
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.1} | {p50} | {p99} | {p999} | {} |",
            params.join(" "),
            rate(r),
            mb_per_s(r),
            r.broker
                .map_or("—".into(), |b| format!("{:.2}", b.cpu_s_per_million)),
        );
    }
    out
}

fn slug(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

/// Bars of msgs/s per point (left axis) with p99 latency printed above each bar.
fn chart_experiment(path: &Path, name: &str, rows: &[&(Point, RunResult)]) -> Result<()> {
    let labels: Vec<String> = rows
        .iter()
        .map(|(p, r)| {
            let params: Vec<String> = p.params.iter().map(|(_, v)| v.clone()).collect();
            if rows.iter().filter(|(q, _)| q.params == p.params).count() > 1 {
                format!("{} r{}", params.join("/"), r.round)
            } else {
                params.join("/")
            }
        })
        .collect();
    let max = rows
        .iter()
        .map(|(_, r)| rate(r))
        .fold(0.0, f64::max)
        .max(1.0)
        * 1.15;
    let root = SVGBackend::new(path, (900, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let keys: Vec<String> = rows[0].0.params.iter().map(|(k, _)| k.clone()).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{name}: msgs/s (p99 above bars)"),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(80)
        // Integer ranges are inclusive in plotters: 0..n-1 gives n segments, one per bar.
        .build_cartesian_2d((0..rows.len().saturating_sub(1)).into_segmented(), 0.0..max)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_desc(keys.join(" / "))
        .y_desc("msgs/s")
        .x_label_formatter(&|x| match x {
            SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .y_label_formatter(&|v| crate::workload::human_count(*v))
        .draw()?;
    chart.draw_series(rows.iter().enumerate().map(|(i, (_, r))| {
        let mut bar = Rectangle::new(
            [
                (SegmentValue::Exact(i), 0.0),
                (SegmentValue::Exact(i + 1), rate(r)),
            ],
            BLUE.mix(0.6).filled(),
        );
        bar.set_margin(0, 0, 8, 8);
        bar
    }))?;
    chart.draw_series(rows.iter().enumerate().filter_map(|(i, (_, r))| {
        let (_, p99, _) = main_latency(r)?;
        Some(Text::new(
            format!("p99 {}", fmt_us(p99)),
            (SegmentValue::CenterOf(i), rate(r) + max * 0.02),
            ("sans-serif", 13).into_font(),
        ))
    }))?;
    root.present()?;
    Ok(())
}

fn fmt_us(us: u64) -> String {
    if us >= 10_000 {
        format!("{:.0} ms", us as f64 / 1000.0)
    } else if us >= 1000 {
        format!("{:.1} ms", us as f64 / 1000.0)
    } else {
        format!("{us} µs")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn experiments_expand_to_points() {
        let sweep = Sweep::parse(
            r#"
kind = "produce"
broker_flags = "--cores 2 --fsync always"
[base]
message_size = 100
messages = 1000
[[experiment]]
name = "batch"
vary.batch_bytes = [16384, 65536]
vary.linger_us = [0, 1000, 5000]
[[experiment]]
name = "fsync"
vary_broker.fsync = ["never", "always"]
"#,
        )
        .unwrap();
        assert_eq!(sweep.points.len(), 6 + 2);
        let p = &sweep.points[1];
        assert_eq!(p.workload.batch_bytes, 16384);
        assert_eq!(p.workload.linger_us, 1000);
        assert_eq!(p.workload.message_size, 100);
        assert_eq!(p.broker_flags, "--cores 2 --fsync always");
        assert_eq!(sweep.points[6].broker_flags, "--cores 2 --fsync never");
        assert_eq!(
            sweep.points[6].params,
            vec![("fsync".to_string(), "never".to_string())]
        );
    }

    #[test]
    fn bad_sweeps_say_why() {
        let err = |t: &str| format!("{:#}", Sweep::parse(t).unwrap_err());
        assert!(err("kind = \"produce\"\nexperiment = []").contains("no [[experiment]]"));
        assert!(err("kind = \"produce\"\n[[experiment]]\nname = \"x\"").contains("nothing to vary"));
        assert!(
            err("kind = \"produce\"\n[[experiment]]\nname = \"x\"\nvary.batch_bytes = []")
                .contains("no values")
        );
        assert!(
            err("kind = \"produce\"\n[[experiment]]\nname = \"x\"\nvary.size = [1]")
                .contains("workload knobs")
        );
    }

    #[test]
    fn flags_are_replaced_not_repeated() {
        assert_eq!(
            with_flag("--cores 2 --fsync always", "fsync", "never"),
            "--cores 2 --fsync never"
        );
        assert_eq!(
            with_flag("--fsync=always", "ring_capacity", "64"),
            "--fsync=always --ring-capacity 64"
        );
        assert_eq!(
            with_flag("--fsync=always", "fsync", "never"),
            "--fsync never"
        );
        assert_eq!(product(&[2, 3]).len(), 6);
        assert_eq!(product(&[2, 3])[1], vec![0, 1]);
    }
}
