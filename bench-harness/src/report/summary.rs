//! Results grouped the way the report reads them: by workload label, then by target, both in
//! first-seen order so that a report lists things in the order they ran.
//!
//! Figures across rounds are medians, so one disturbed round cannot move them much; latency
//! percentiles come from the rounds' histograms merged, never from averaged percentiles.

use hdrhistogram::Histogram;

use crate::result::{new_histogram, series, RunResult, Throughput};

/// One workload label and its runs on every target.
pub(super) struct WorkloadRuns<'a> {
    pub label: &'a str,
    pub kind: &'a str,
    /// File-name-safe form of the label, unique within the report.
    pub slug: String,
    pub targets: Vec<TargetRuns<'a>>,
}

/// The rounds of one workload on one target.
pub(super) struct TargetRuns<'a> {
    /// The target's name in tables and legends.
    pub name: &'a str,
    /// The target's place among all targets of the report (picks its colour).
    pub index: usize,
    pub runs: Vec<&'a RunResult>,
}

/// A target as the report names it.
pub(super) struct Target {
    /// The address, which tells targets apart.
    pub address: String,
    /// `eventflow` or `kafka`, or with the address added when two targets share a kind.
    pub name: String,
}

/// Every target in first-seen order.
pub(super) fn targets(results: &[RunResult]) -> Vec<Target> {
    let mut found: Vec<(&str, &str)> = Vec::new();
    for r in results {
        if !found.iter().any(|(address, _)| *address == r.target) {
            found.push((&r.target, &r.target_kind));
        }
    }
    let shared = |kind: &str| found.iter().filter(|(_, k)| *k == kind).count() > 1;
    found
        .iter()
        .map(|&(address, kind)| Target {
            address: address.to_string(),
            name: if shared(kind) {
                format!("{kind} ({address})")
            } else {
                kind.to_string()
            },
        })
        .collect()
}

/// Results grouped by label, then by target.
pub(super) fn group<'a>(results: &'a [RunResult], targets: &'a [Target]) -> Vec<WorkloadRuns<'a>> {
    let mut groups: Vec<WorkloadRuns<'a>> = Vec::new();
    for r in results {
        let index = targets
            .iter()
            .position(|t| t.address == r.target)
            .expect("every result's target is listed");
        let at = match groups.iter().position(|g| g.label == r.label) {
            Some(at) => at,
            None => {
                groups.push(WorkloadRuns {
                    label: &r.label,
                    kind: &r.kind,
                    slug: String::new(),
                    targets: Vec::new(),
                });
                groups.len() - 1
            }
        };
        let group = &mut groups[at];
        match group.targets.iter_mut().find(|t| t.index == index) {
            Some(t) => t.runs.push(r),
            None => group.targets.push(TargetRuns {
                name: &targets[index].name,
                index,
                runs: vec![r],
            }),
        }
    }
    let mut taken: Vec<String> = Vec::new();
    for g in &mut groups {
        g.slug = unique_slug(g.label, &taken);
        taken.push(g.slug.clone());
    }
    groups
}

/// Lower-case letters and digits, runs of anything else as one `-`.
fn slug(label: &str) -> String {
    let mut out = String::new();
    for c in label.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    let out = out.trim_end_matches('-');
    if out.is_empty() {
        "workload".to_string()
    } else {
        out.to_string()
    }
}

/// Labels that differ only in punctuation would share a file: number the later ones.
fn unique_slug(label: &str, taken: &[String]) -> String {
    let base = slug(label);
    let mut candidate = base.clone();
    let mut n = 2;
    while taken.contains(&candidate) {
        candidate = format!("{base}-{n}");
        n += 1;
    }
    candidate
}

/// The throughput a workload is about: consumed for `consume` and `e2e` (what arrived),
/// produced otherwise; the other one when that is missing.
pub(crate) fn main_throughput(run: &RunResult) -> Option<Throughput> {
    match run.kind.as_str() {
        "consume" | "e2e" => run.consumed.or(run.produced),
        _ => run.produced.or(run.consumed),
    }
}

/// The latency series a workload is about: the open-loop one when the run has it.
pub(super) fn latency_series(kind: &str, runs: &[&RunResult]) -> Option<&'static str> {
    let has = |name: &str| runs.iter().any(|r| r.latency.contains_key(name));
    match kind {
        "produce" if has(series::PUBLISH_INTENDED) => Some(series::PUBLISH_INTENDED),
        "produce" if has(series::PUBLISH) => Some(series::PUBLISH),
        "e2e" if has(series::E2E) => Some(series::E2E),
        _ => None,
    }
}

/// The median; the mean of the middle two for an even count; `None` when empty.
pub(super) fn median(mut values: Vec<f64>) -> Option<f64> {
    values.retain(|v| v.is_finite());
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

impl TargetRuns<'_> {
    /// Main throughput of each round that has one.
    pub(super) fn throughputs(&self) -> Vec<Throughput> {
        self.runs
            .iter()
            .filter_map(|r| main_throughput(r))
            .collect()
    }

    pub(super) fn median_msgs_per_s(&self) -> Option<f64> {
        median(self.throughputs().iter().map(|t| t.msgs_per_s).collect())
    }

    /// The round whose throughput is the median (the lower one of an even count), to draw
    /// as the typical round; the first round when none has a throughput.
    pub(super) fn median_round(&self) -> &RunResult {
        let mut ranked: Vec<(f64, &RunResult)> = self
            .runs
            .iter()
            .filter_map(|r| main_throughput(r).map(|t| (t.msgs_per_s, *r)))
            .collect();
        ranked.sort_by(|a, b| a.0.total_cmp(&b.0));
        match ranked.len() {
            0 => self.runs[0],
            n => ranked[(n - 1) / 2].1,
        }
    }

    /// The rounds' histograms of `name` added together; `None` when no round has the series.
    pub(super) fn merged_latency(&self, name: &str) -> Option<Result<Histogram<u64>, String>> {
        let stored: Vec<_> = self
            .runs
            .iter()
            .filter_map(|r| r.latency.get(name).map(|l| (r.round, l)))
            .collect();
        if stored.is_empty() {
            return None;
        }
        let mut merged = new_histogram();
        for (round, latency) in stored {
            let added = latency
                .histogram()
                .map_err(|e| e.to_string())
                .and_then(|h| merged.add(&h).map_err(|e| format!("{e:?}")));
            if let Err(e) = added {
                return Some(Err(format!("round {round}: {e}")));
            }
        }
        Some(Ok(merged))
    }

    /// Errors, missing and duplicate records over all rounds.
    pub(super) fn faults(&self) -> (u64, u64, u64) {
        self.runs.iter().fold((0, 0, 0), |(e, m, d), r| {
            (e + r.errors, m + r.missing, d + r.duplicates)
        })
    }
}
