//! The performance targets of the write-path work, checked against saved results:
//! `eventflow-bench targets DIR...` (docs/PERFORMANCE.md, "The write-path targets, checked
//! in one command"; bench-harness/targets.sh runs the comparisons it reads).
//!
//! Each goal names the runs it reads by their workload (kind, record size, partitions,
//! rate), so any comparison's results can be checked, and a goal whose runs are not among
//! them says so instead of passing. Figures are medians over the rounds, and latency
//! percentiles come from the rounds' histograms merged, as in the report. Runs are read
//! per kind of target (all `eventflow` runs together, whatever flags each side had), so
//! that the durable goal can come from a `--fsync always` comparison and the others from a
//! `--fsync never` one.

use std::fmt::Write as _;

use super::summary::{median, TargetRuns};
use super::{medium, text};
use crate::ceiling::Bound;
use crate::result::{series, RunResult};

/// A produce run at least this long counts as "past the writeback threshold".
const LONG_RUN_RECORDS: u64 = 30_000_000;
/// Seconds after the first within this share of the run's median second count as steady.
const STEADY_BAND: f64 = 0.15;
/// Two identical runs in a row agree when the second is within this share of the first.
const REPEAT_BAND: f64 = 0.10;
/// The durable end-to-end rate, records per second.
const DURABLE_RATE: u64 = 200_000;
/// The durable p99 may exceed the machine's fdatasync p99 by this much, µs.
const DURABLE_P99_BUDGET_US: f64 = 1_000.0;
/// Records per second one consumer must read from one partition.
const CONSUME_RECORDS_PER_S: f64 = 10e6;
/// The share of the binding ceiling a 1 KiB produce run must reach.
const LARGE_RECORD_SHARE: f64 = 0.60;

/// Whether a goal was met by the runs given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Met,
    NotMet,
    /// The results hold no run this goal reads, or lack what it is measured against.
    NotMeasured,
}

/// One goal, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// The kind of target whose runs were read (`eventflow`, `kafka`, ...).
    pub target: String,
    pub goal: &'static str,
    /// What was measured, in words and figures.
    pub measured: String,
    pub verdict: Verdict,
}

/// Every goal for every kind of target among `results`, in the order the goals are listed
/// in docs/PERFORMANCE.md.
pub fn check(results: &[RunResult]) -> Vec<Check> {
    let mut kinds: Vec<&str> = Vec::new();
    for r in results {
        if !kinds.contains(&r.target_kind.as_str()) {
            kinds.push(&r.target_kind);
        }
    }
    let mut checks = Vec::new();
    for kind in kinds {
        let runs: Vec<&RunResult> = results.iter().filter(|r| r.target_kind == kind).collect();
        let long: Vec<&RunResult> = runs.iter().copied().filter(|r| is_long(r)).collect();
        for (goal, (measured, verdict)) in [
            (GOAL_STEADY, steady(&long)),
            (GOAL_REPEAT, repeat(&runs)),
            (GOAL_DURABLE, durable(kind, &runs)),
            (GOAL_CONSUME, consume(kind, &runs)),
            (GOAL_LARGE, large_records(kind, &runs)),
        ] {
            checks.push(Check {
                target: kind.to_string(),
                goal,
                measured,
                verdict,
            });
        }
    }
    checks
}

const GOAL_STEADY: &str = "produce 100 B, 30 M records: every second after the first within \
                           ±15 % of the run's median second";
const GOAL_REPEAT: &str = "two identical 30 M-record produce runs in a row within 10 % of \
                           each other";
const GOAL_DURABLE: &str = "e2e at 200 k records/s, acks=all, fdatasync before the ack: p99 \
                            ≤ 1 ms + the machine's fdatasync p99";
const GOAL_CONSUME: &str = "consume 100 B from one partition: ≥ 10 M records/s";
const GOAL_LARGE: &str = "produce 1 KiB: ≥ 60 % of the binding ceiling";

/// The markdown table of `checks`, with a line on how it was read.
pub fn markdown(checks: &[Check]) -> String {
    let mut md = String::from(
        "| target | goal | measured (medians over the rounds) | met |\n|---|---|---|---|\n",
    );
    for c in checks {
        let verdict = match c.verdict {
            Verdict::Met => "**yes**",
            Verdict::NotMet => "no",
            Verdict::NotMeasured => "not measured",
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {verdict} |",
            c.target, c.goal, c.measured
        );
    }
    md.push_str(
        "\nRead from the runs' saved results (`eventflow-bench targets`): each goal takes the \
         runs whose workload it names, over every round given; ceilings are the ones each \
         comparison measured before its runs.\n",
    );
    md
}

type Outcome = (String, Verdict);

fn not_measured(why: &str) -> Outcome {
    (why.to_string(), Verdict::NotMeasured)
}

fn met(ok: bool) -> Verdict {
    if ok {
        Verdict::Met
    } else {
        Verdict::NotMet
    }
}

/// The share of a produce run's seconds after the first that lie within ±15 % of its median
/// second; `None` for a run of under three seconds.
fn steady_share(run: &RunResult) -> Option<f64> {
    let rates: Vec<f64> = run
        .timeline
        .iter()
        .skip(1)
        .map(|s| s.produced_per_s)
        .filter(|r| *r > 0.0)
        .collect();
    if rates.len() < 2 {
        return None;
    }
    let mid = median(rates.clone())?;
    let steady = rates
        .iter()
        .filter(|r| (*r - mid).abs() <= STEADY_BAND * mid)
        .count();
    Some(steady as f64 / rates.len() as f64)
}

fn steady(long: &[&RunResult]) -> Outcome {
    let shares: Vec<f64> = long.iter().filter_map(|r| steady_share(r)).collect();
    if shares.is_empty() {
        return not_measured("no produce run of 30 M records or more with a timeline");
    }
    let all = shares.iter().filter(|s| **s >= 1.0).count();
    let mid = median(shares.clone()).unwrap_or(0.0);
    let list: Vec<String> = shares
        .iter()
        .map(|s| format!("{:.0}%", s * 100.0))
        .collect();
    (
        format!(
            "{all} of {} runs steady in every second; seconds within the band per run: {}",
            shares.len(),
            list.join(", ")
        ),
        met(mid >= 1.0),
    )
}

/// A produce run of 100 B records long enough to pass the kernel's writeback threshold.
fn is_long(r: &RunResult) -> bool {
    r.kind == "produce"
        && (90..=128).contains(&r.workload.message_size)
        && r.workload.messages.unwrap_or(0) >= LONG_RUN_RECORDS
}

/// Second over first of each two long produce runs that ran one right after the other:
/// adjacent in `runs` (one kind of target's runs in the order they ran), of one round,
/// label and target.
fn repeat(runs: &[&RunResult]) -> Outcome {
    let mut ratios = Vec::new();
    let rate = |r: &RunResult| r.produced.map_or(0.0, |t| t.msgs_per_s);
    let mut i = 0;
    while i + 1 < runs.len() {
        let (first, second) = (runs[i], runs[i + 1]);
        if is_long(first)
            && is_long(second)
            && first.round == second.round
            && first.label == second.label
            && first.target == second.target
        {
            if rate(first) > 0.0 {
                ratios.push(rate(second) / rate(first));
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    let Some(mid) = median(ratios.clone()) else {
        return not_measured(
            "no two identical produce runs of 30 M records one after the other (`compare` \
             runs a plan entry for all its rounds before the next: give it one round at a \
             time, as bench-harness/targets.sh does)",
        );
    };
    let list: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
    (
        format!(
            "second run over the first: median {mid:.2} (rounds: {})",
            list.join(", ")
        ),
        met((mid - 1.0).abs() <= REPEAT_BAND),
    )
}

/// The runs among `runs` that `keep` selects, grouped as the report groups them.
fn select<'a>(
    kind: &'a str,
    runs: &[&'a RunResult],
    keep: impl Fn(&RunResult) -> bool,
) -> TargetRuns<'a> {
    TargetRuns {
        name: kind,
        index: 0,
        runs: runs.iter().copied().filter(|r| keep(r)).collect(),
    }
}

/// The median of `figure` over the runs that have it.
fn median_of(runs: &TargetRuns<'_>, figure: impl Fn(&RunResult) -> Option<f64>) -> Option<f64> {
    median(runs.runs.iter().filter_map(|r| figure(r)).collect())
}

/// `mb` MB/s as a share of the ceiling that binds `work` runs like these (where their bytes
/// went or came from), and that ceiling; `None` without a ceiling or a figure for it.
fn share_of_bound(runs: &TargetRuns<'_>, work: &str, mb: f64) -> Option<(f64, Bound)> {
    let ceiling = runs.runs.iter().find_map(|r| r.ceiling.as_ref())?;
    let bound = ceiling.bound(work, medium(runs, work));
    (bound.mb_per_s > 0.0).then(|| (mb / bound.mb_per_s, bound))
}

fn durable(kind: &str, runs: &[&RunResult]) -> Outcome {
    let runs = select(kind, runs, |r| {
        r.kind == "e2e"
            && r.workload.rate == DURABLE_RATE
            && crate::broker::fsyncs_before_ack(&r.durability)
    });
    if runs.runs.is_empty() {
        return not_measured("no e2e run at 200 k records/s with an fdatasync before the ack");
    }
    let Some(sync_p99) = median_of(&runs, |r| {
        r.ceiling
            .as_ref()
            .map(|c| c.fdatasync_p99_us)
            .filter(|us| *us > 0.0)
    }) else {
        return not_measured("the e2e runs carry no ceiling (run them with `compare`)");
    };
    let p99 = match runs.merged_latency(series::E2E) {
        Some(Ok(h)) => h.value_at_quantile(0.99),
        Some(Err(e)) => return not_measured(&format!("unreadable e2e histogram: {e}")),
        None => return not_measured("the e2e runs have no e2e latency"),
    };
    let bound = DURABLE_P99_BUDGET_US + sync_p99;
    let rounds = runs.runs.len();
    let mut measured = format!(
        "p99 {} over {rounds} round{}, against 1 ms + {} = {} ({:.2}×)",
        text::latency(p99),
        if rounds == 1 { "" } else { "s" },
        text::latency(sync_p99 as u64),
        text::latency(bound as u64),
        p99 as f64 / bound
    );
    if let Some(stolen) = median_of(&runs, |r| r.steal_pct) {
        let _ = write!(measured, "; CPU stolen {stolen:.1} %");
    }
    (measured, met(p99 as f64 <= bound))
}

fn consume(kind: &str, runs: &[&RunResult]) -> Outcome {
    let runs = select(kind, runs, |r| {
        r.kind == "consume"
            && (90..=128).contains(&r.workload.message_size)
            && r.workload.partitions == 1
            && r.workload.consumers == 1
    });
    let Some(rate) = median_of(&runs, |r| r.consumed.map(|t| t.msgs_per_s)) else {
        return not_measured("no consume run of 100 B records from one partition");
    };
    let mut measured = format!("{:.2} M records/s", rate / 1e6);
    if let Some(mb) = median_of(&runs, |r| r.consumed.map(|t| t.mb_per_s)) {
        if let Some((share, bound)) = share_of_bound(&runs, "consume", mb) {
            let _ = write!(
                measured,
                " ({mb:.0} MB/s, {:.0} % of {} at {:.0} MB/s)",
                share * 100.0,
                bound.name,
                bound.mb_per_s
            );
        }
    }
    (measured, met(rate >= CONSUME_RECORDS_PER_S))
}

fn large_records(kind: &str, runs: &[&RunResult]) -> Outcome {
    let runs = select(kind, runs, |r| {
        r.kind == "produce" && r.workload.message_size == 1024
    });
    let Some(mb) = median_of(&runs, |r| r.produced.map(|t| t.mb_per_s)) else {
        return not_measured("no produce run of 1 KiB records");
    };
    let Some((share, bound)) = share_of_bound(&runs, "produce", mb) else {
        return not_measured("the 1 KiB runs carry no ceiling (run them with `compare`)");
    };
    (
        format!(
            "{mb:.0} MB/s, {:.0} % of {} at {:.0} MB/s",
            share * 100.0,
            bound.name,
            bound.mb_per_s
        ),
        met(share >= LARGE_RECORD_SHARE),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::ceiling::Ceiling;
    use crate::machine::{DiskRequests, Machine};
    use crate::result::{new_histogram, Latency, Sample, Throughput};
    use crate::workload::Workload;

    fn ceiling() -> Ceiling {
        Ceiling {
            filesystem: "ext4".into(),
            loopback_mb_per_s: 5_000.0,
            page_cache_write_mb_per_s: 2_400.0,
            page_cache_read_mb_per_s: 2_700.0,
            direct_write_mb_per_s: 1_500.0,
            direct_read_mb_per_s: 1_400.0,
            fdatasync_p50_us: 150.0,
            fdatasync_p99_us: 250.0,
        }
    }

    fn run(kind: &str, round: u32, workload: Workload, durability: &str) -> RunResult {
        RunResult {
            kind: kind.into(),
            label: format!("{kind} {}B", workload.message_size),
            target_kind: "eventflow".into(),
            target: "eventflowd --cores 2".into(),
            workload,
            client_settings: Vec::new(),
            durability: durability.into(),
            broker_flags: Some("--cores 2".into()),
            machine: Machine::default(),
            round,
            started_unix_s: 0,
            elapsed_s: 1.0,
            produced: None,
            consumed: None,
            latency: BTreeMap::new(),
            timeline: Vec::new(),
            harness_cpu_s: 0.0,
            steal_pct: Some(0.1),
            disk_requests_per_s: None,
            broker: None,
            errors: 0,
            first_error: None,
            missing: 0,
            duplicates: 0,
            ceiling: Some(ceiling()),
        }
    }

    /// A 30 M-record produce run at `rate` records/s whose seconds after the first follow
    /// `seconds` (records/s).
    fn long(round: u32, rate: f64, seconds: &[f64]) -> RunResult {
        let mut r = run(
            "produce",
            round,
            Workload {
                message_size: 100,
                messages: Some(30_000_000),
                ..Workload::default()
            },
            "eventflowd --fsync never",
        );
        r.produced = Some(Throughput::new(rate as u64, rate as u64 * 100, 1.0));
        r.timeline = std::iter::once(1.0)
            .chain(seconds.iter().copied())
            .enumerate()
            .map(|(i, produced_per_s)| Sample {
                t_s: i as f64 + 1.0,
                produced_per_s,
                consumed_per_s: 0.0,
            })
            .collect();
        r
    }

    fn e2e(round: u32, p99_us: u64) -> RunResult {
        let mut r = run(
            "e2e",
            round,
            Workload {
                message_size: 100,
                rate: DURABLE_RATE,
                ..Workload::default()
            },
            "eventflowd --fsync always",
        );
        let mut h = new_histogram();
        h.record_n(p99_us / 4, 98).unwrap();
        h.record_n(p99_us, 2).unwrap();
        r.latency
            .insert(series::E2E.into(), Latency::from_histogram(&h));
        r
    }

    fn verdicts(results: &[RunResult]) -> Vec<(&'static str, Verdict)> {
        check(results).iter().map(|c| (c.goal, c.verdict)).collect()
    }

    fn verdict_of(results: &[RunResult], goal: &str) -> Check {
        check(results)
            .into_iter()
            .find(|c| c.goal == goal)
            .expect("every goal is checked")
    }

    #[test]
    fn every_goal_without_its_runs_is_not_measured_rather_than_met() {
        let other = run(
            "produce",
            1,
            Workload::default(),
            "eventflowd --fsync never",
        );
        let all = verdicts(&[other]);
        assert_eq!(all.len(), 5);
        assert!(
            all.iter().all(|(_, v)| *v == Verdict::NotMeasured),
            "{all:?}"
        );
        assert!(check(&[]).is_empty());
    }

    #[test]
    fn long_runs_are_steady_and_repeat_only_within_their_bands() {
        let flat = [5.0e6, 5.1e6, 4.9e6, 5.0e6];
        let swings = [5.0e6, 2.0e6, 5.0e6, 5.0e6, 3.0e6];
        let steady = [long(1, 5.0e6, &flat), long(1, 5.2e6, &flat)];
        assert_eq!(verdict_of(&steady, GOAL_STEADY).verdict, Verdict::Met);
        assert_eq!(verdict_of(&steady, GOAL_REPEAT).verdict, Verdict::Met);

        // Two rounds of three swinging runs out of four: the median run is not steady.
        let mixed = [
            long(1, 5.0e6, &swings),
            long(1, 5.0e6, &flat),
            long(2, 5.0e6, &swings),
            long(2, 5.0e6, &swings),
        ];
        let c = verdict_of(&mixed, GOAL_STEADY);
        assert_eq!(c.verdict, Verdict::NotMet);
        assert!(c.measured.starts_with("1 of 4 runs"), "{}", c.measured);

        // The second run of each round 40 % faster, as buffered writes gave.
        let faster = [
            long(1, 3.0e6, &flat),
            long(1, 4.2e6, &flat),
            long(2, 3.0e6, &flat),
            long(2, 4.3e6, &flat),
        ];
        let c = verdict_of(&faster, GOAL_REPEAT);
        assert_eq!(c.verdict, Verdict::NotMet);
        assert!(c.measured.contains("1.40, 1.43"), "{}", c.measured);
        // Pairs are runs one right after the other: not a run alone, not two with another
        // run between them, nor the rounds of one plan entry (compare's order: every round
        // of one entry, then the next).
        let between = run(
            "produce",
            1,
            Workload {
                message_size: 1024,
                ..Workload::default()
            },
            "eventflowd --fsync never",
        );
        for apart in [
            vec![long(1, 3.0e6, &flat)],
            vec![long(1, 3.0e6, &flat), between, long(1, 4.2e6, &flat)],
            vec![
                long(1, 3.0e6, &flat),
                long(2, 3.0e6, &flat),
                long(1, 4.2e6, &flat),
                long(2, 4.2e6, &flat),
            ],
        ] {
            assert_eq!(
                verdict_of(&apart, GOAL_REPEAT).verdict,
                Verdict::NotMeasured
            );
        }
    }

    #[test]
    fn the_durable_p99_is_read_from_merged_rounds_against_the_ceilings_fdatasync() {
        // 1 ms + 250 µs is the bound; the rounds' merged p99 decides, not one round.
        let under = [e2e(1, 1_200), e2e(2, 1_100)];
        let c = verdict_of(&under, GOAL_DURABLE);
        assert_eq!(c.verdict, Verdict::Met, "{}", c.measured);
        assert!(c.measured.contains("1.25 ms"), "{}", c.measured);
        let over = [e2e(1, 1_400), e2e(2, 2_100)];
        assert_eq!(verdict_of(&over, GOAL_DURABLE).verdict, Verdict::NotMet);

        // A run that did not sync before the ack, or has no ceiling, is not this goal's.
        let mut never = e2e(1, 500);
        never.durability = "eventflowd --fsync never".into();
        assert_eq!(
            verdict_of(&[never], GOAL_DURABLE).verdict,
            Verdict::NotMeasured
        );
        let mut bare = e2e(1, 500);
        bare.ceiling = None;
        assert_eq!(
            verdict_of(&[bare], GOAL_DURABLE).verdict,
            Verdict::NotMeasured
        );
    }

    #[test]
    fn consume_and_large_records_name_the_ceiling_that_binds_them() {
        let consume = |round, rate: f64, disk_read: f64| {
            let mut r = run(
                "consume",
                round,
                Workload {
                    message_size: 100,
                    partitions: 1,
                    consumers: 1,
                    ..Workload::default()
                },
                "eventflowd --fsync never",
            );
            r.consumed = Some(Throughput::new(rate as u64, rate as u64 * 110, 1.0));
            r.disk_requests_per_s = Some(DiskRequests {
                read_bytes: disk_read,
                ..DiskRequests::default()
            });
            r
        };
        // Read from the disks: against O_DIRECT read.
        let from_disk = [consume(1, 8.2e6, 9.0e8), consume(2, 8.4e6, 9.2e8)];
        let c = verdict_of(&from_disk, GOAL_CONSUME);
        assert_eq!(c.verdict, Verdict::NotMet);
        assert!(
            c.measured.starts_with("8.30 M records/s") && c.measured.contains("of O_DIRECT read"),
            "{}",
            c.measured
        );
        let from_memory = [consume(1, 11.9e6, 0.0)];
        let c = verdict_of(&from_memory, GOAL_CONSUME);
        assert_eq!(c.verdict, Verdict::Met);
        assert!(c.measured.contains("of page-cache read"), "{}", c.measured);

        let large = |mb: f64| {
            let mut r = run(
                "produce",
                1,
                Workload {
                    message_size: 1024,
                    ..Workload::default()
                },
                "eventflowd --fsync never",
            );
            r.produced = Some(Throughput::new(1, (mb * 1e6) as u64, 1.0));
            r
        };
        // eventflowd writes with O_DIRECT by default: 975 of 1,500 MB/s is 65 %.
        let c = verdict_of(&[large(975.0)], GOAL_LARGE);
        assert_eq!(c.verdict, Verdict::Met);
        assert!(
            c.measured.contains("65 % of O_DIRECT write"),
            "{}",
            c.measured
        );
        assert_eq!(
            verdict_of(&[large(600.0)], GOAL_LARGE).verdict,
            Verdict::NotMet
        );
    }

    #[test]
    fn the_table_has_a_row_per_goal_and_target_kind() {
        let mut kafka = e2e(1, 1_000);
        kafka.target_kind = "kafka".into();
        kafka.durability = "Kafka default: no fsync".into();
        let md = markdown(&check(&[e2e(1, 1_000), kafka]));
        assert_eq!(
            md.lines()
                .filter(|l| l.starts_with("| eventflow |"))
                .count(),
            5
        );
        assert_eq!(md.lines().filter(|l| l.starts_with("| kafka |")).count(), 5);
        assert!(
            md.contains("| **yes** |") && md.contains("| not measured |"),
            "{md}"
        );
    }
}
