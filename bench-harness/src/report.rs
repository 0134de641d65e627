//! Reports from saved results: a markdown page with SVG charts for comparisons and sweeps,
//! and a plain-text summary for the end of a run.
//!
//! A report must let a reader check a claim, not only read it: it states the machine, the
//! commit, the method, the durability each target ran with and its client settings, and it
//! flags any run that lost, duplicated or failed records, since such a run's numbers are not
//! comparable with a clean one.

mod charts;
mod summary;
pub mod targets;
mod text;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::ceiling::Medium;
use crate::result::{series, RunResult, Skipped};
use crate::target::librdkafka;
use crate::workload::human_count;
pub(crate) use summary::main_throughput;
use summary::{latency_series, median, Target, TargetRuns, WorkloadRuns};

/// Writes `dir/report.md` and SVG charts into `dir` for these results (any mix of targets,
/// workloads and rounds). Returns the report path.
pub fn write_report(dir: &Path, title: &str, results: &[RunResult]) -> Result<PathBuf> {
    write_report_with(dir, title, results, &[])
}

/// [`write_report`], naming the targets the comparison skipped and why.
pub fn write_report_with(
    dir: &Path,
    title: &str,
    results: &[RunResult],
    skipped: &[Skipped],
) -> Result<PathBuf> {
    if results.is_empty() {
        bail!("no results to report (no runs were given)");
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let targets = summary::targets(results);
    let groups = summary::group(results, &targets);
    let charts = charts::draw_all(dir, &groups, &targets)?;
    let path = dir.join("report.md");
    let mut md = render_markdown(title, results, &charts);
    if !skipped.is_empty() {
        // After the title line, before the machine: a reader sees first what is missing.
        let at = md.find('\n').map_or(md.len(), |i| i + 2).min(md.len());
        md.insert_str(at, &skipped_section(skipped));
    }
    std::fs::write(&path, md).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The markdown text alone (used by `write_report`; testable without files). `charts` are
/// the SVG file names to link.
pub fn render_markdown(title: &str, results: &[RunResult], charts: &[String]) -> String {
    let mut md = format!("# {title}\n\n");
    if results.is_empty() {
        md.push_str("No results to report.\n");
        return md;
    }
    let targets = summary::targets(results);
    let groups = summary::group(results, &targets);
    let mut linked: Vec<&str> = Vec::new();
    let mut link = |md: &mut String, name: &str, alt: &str| {
        if let Some(chart) = charts.iter().find(|c| *c == name) {
            linked.push(chart.as_str());
            let _ = writeln!(md, "![{alt}]({name})\n");
        }
    };

    machine_section(&mut md, results);
    ceiling_section(&mut md, results);
    md.push_str(METHOD);
    settings_section(&mut md, results, &targets);
    md.push_str("## Results\n\n");
    link(&mut md, charts::THROUGHPUT_FILE, "throughput per workload");
    for g in &groups {
        workload_section(&mut md, g);
        link(
            &mut md,
            &charts::latency_file(&g.slug),
            "latency by percentile",
        );
        link(&mut md, &charts::timeline_file(&g.slug), "rate over time");
    }
    let others: Vec<&String> = charts
        .iter()
        .filter(|c| !linked.contains(&c.as_str()))
        .collect();
    if !others.is_empty() {
        md.push_str("## Other charts\n\n");
        for name in others {
            let _ = writeln!(md, "![{name}]({name})\n");
        }
    }
    md
}

const METHOD: &str = "## Method

Producers send on an open-loop schedule (a fixed rate, or as fast as the client accepts
with `rate=max`), and latency counts from each record's intended send time, so a stalled
broker cannot hide its stall by slowing the sender. Every worker records into its own
HdrHistogram (1 µs to 1 h, 3 significant digits) and the histograms are merged, never
averaged. The warm-up is sent but not measured. In comparisons the targets run in
alternating rounds (A B A B) so that drift on the machine touches both; throughput figures
are medians across rounds, and latency percentiles come from the rounds' histograms merged
per target. Before every run the harness calls sync(2), so that one run's writeback does
not land on the next, and an `eventflowd` the harness starts gets a fresh data directory
for every run.

";

/// One line per target that was left out, with the error it gave.
fn skipped_section(skipped: &[Skipped]) -> String {
    let mut md = String::new();
    for s in skipped {
        let reason = s.reason.replace('\n', " ");
        let _ = writeln!(
            md,
            "**Skipped:** `{}` did not answer and has no results here: {reason}\n",
            s.target
        );
    }
    md
}

/// Title block: when, where and which commit, from the first result.
fn machine_section(md: &mut String, results: &[RunResult]) {
    let first = &results[0];
    let m = &first.machine;
    let start = results.iter().map(|r| r.started_unix_s).min().unwrap_or(0);
    let end = results.iter().map(|r| r.started_unix_s).max().unwrap_or(0);
    let when = if start == end {
        text::date(start)
    } else {
        format!("{} to {}", text::date(start), text::date(end))
    };
    let _ = writeln!(md, "Runs started {when}.\n");
    md.push_str("| Machine | |\n|---|---|\n");
    for (fact, value) in [
        ("CPU", m.cpu_model.clone()),
        ("CPUs", m.cpus.to_string()),
        ("Memory", format!("{} GiB", m.memory_gib)),
        ("Kernel", m.kernel.clone()),
        ("Filesystem", m.filesystem.clone()),
        ("Commit", format!("`{}`", m.git_commit)),
        (
            "Harness clock",
            if m.clock.is_empty() {
                "instant".into()
            } else {
                m.clock.clone()
            },
        ),
    ] {
        let _ = writeln!(md, "| {fact} | {value} |");
    }
    md.push('\n');
    let commits = distinct(results.iter().map(|r| r.machine.git_commit.as_str()));
    if commits.len() > 1 {
        let list = commits.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>();
        let _ = writeln!(
            md,
            "**Note:** these results come from {} different commits: {}.\n",
            commits.len(),
            list.join(", ")
        );
    }
    let same_machine = |r: &RunResult| {
        let (a, b) = (&r.machine, m);
        (&a.cpu_model, a.cpus, &a.kernel, &a.filesystem)
            == (&b.cpu_model, b.cpus, &b.kernel, &b.filesystem)
            && a.memory_gib == b.memory_gib
    };
    if !results.iter().all(same_machine) {
        md.push_str("**Note:** not every result comes from this machine; compare with care.\n\n");
    }
}

/// The machine's ceilings, from the first result that carries them.
fn ceiling_section(md: &mut String, results: &[RunResult]) {
    let Some(c) = results.iter().find_map(|r| r.ceiling.as_ref()) else {
        return;
    };
    let _ = writeln!(
        md,
        "## This machine's ceilings\n\nMeasured by `eventflow-bench ceiling` before the runs, \
         on the data directory's filesystem ({}). Each result's MB/s (record values) is also given as \
         a fraction of the ceiling that binds it: the lower of loopback and the disk path, \
         which is the page cache (written for produce and e2e, read for consume), or O_DIRECT \
         write for produce and e2e on an `eventflowd` writing its log with O_DIRECT (its default, \
         `--log-writes direct`; measured with one writer and 1 MiB writes, which a broker \
         writing larger chunks from several shards can pass), or O_DIRECT read for a consume \
         run whose backlog came from the device (the disks read at least half as many bytes \
         as it consumed, /proc/diskstats); a durable run's p99 is set beside fdatasync's.\n",
        c.filesystem
    );
    md.push_str("| Ceiling | |\n|---|--:|\n");
    for (name, value) in [
        (
            "Loopback TCP, 1 MiB writes",
            format!("{:.0} MB/s", c.loopback_mb_per_s),
        ),
        (
            "Page-cache write",
            format!("{:.0} MB/s", c.page_cache_write_mb_per_s),
        ),
        (
            "Page-cache read",
            format!("{:.0} MB/s", c.page_cache_read_mb_per_s),
        ),
        (
            "O_DIRECT write",
            format!("{:.0} MB/s", c.direct_write_mb_per_s),
        ),
        (
            "O_DIRECT read",
            format!("{:.0} MB/s", c.direct_read_mb_per_s),
        ),
        (
            "fdatasync after a 4 KiB append, p50",
            text::latency(c.fdatasync_p50_us as u64),
        ),
        (
            "fdatasync after a 4 KiB append, p99",
            text::latency(c.fdatasync_p99_us as u64),
        ),
    ] {
        let _ = writeln!(md, "| {name} | {value} |");
    }
    md.push('\n');
}

/// `12% of page-cache write`, and for a durable run `; p99 2.1× fdatasync p99`.
fn of_ceiling(t: &TargetRuns<'_>, kind: &str, mb: Option<f64>, p99_us: Option<u64>) -> String {
    let Some(r) = t.runs.iter().find(|r| r.ceiling.is_some()) else {
        return DASH.to_string();
    };
    let c = r.ceiling.as_ref().expect("found with a ceiling");
    let bound = c.bound(kind, medium(t, kind));
    let mut cell = match mb {
        Some(mb) if bound.mb_per_s > 0.0 => {
            format!("{:.0}% of {}", mb / bound.mb_per_s * 100.0, bound.name)
        }
        _ => DASH.to_string(),
    };
    if crate::broker::fsyncs_before_ack(&r.durability) && c.fdatasync_p99_us > 0.0 {
        if let Some(p99) = p99_us {
            let _ = write!(
                cell,
                "; p99 {:.1}× fdatasync p99",
                p99 as f64 / c.fdatasync_p99_us
            );
        }
    }
    cell
}

/// Where the runs' log bytes went or came from. Eventflow's log writes bypass the page
/// cache unless its flags say otherwise (a broker the harness did not start is taken to run
/// the default). A consume run read from the device when the disks read at least half the
/// bytes it consumed, as most of the runs did; it read from memory (a cache) otherwise.
fn medium(t: &TargetRuns<'_>, kind: &str) -> Medium {
    let from_device = |r: &RunResult| {
        let (Some(disk), Some(consumed)) = (r.disk_requests_per_s, r.consumed.as_ref()) else {
            return false;
        };
        consumed.mb_per_s > 0.0 && disk.read_bytes >= consumed.mb_per_s * 1e6 / 2.0
    };
    let device = match kind {
        "consume" => t.runs.iter().filter(|r| from_device(r)).count() * 2 > t.runs.len(),
        _ => t.runs.first().is_some_and(|r| {
            r.target_kind == "eventflow"
                && r.broker_flags
                    .as_deref()
                    .is_none_or(crate::broker::eventflow_writes_direct)
        }),
    };
    if device {
        Medium::Device
    } else {
        Medium::Memory
    }
}

/// Durability and client settings per target: what a throughput figure was bought with.
fn settings_section(md: &mut String, results: &[RunResult], targets: &[Target]) {
    md.push_str("## Durability and client settings\n\n");
    for t in targets {
        let runs: Vec<&RunResult> = results.iter().filter(|r| r.target == t.address).collect();
        let _ = writeln!(md, "### {} (`{}`)\n", t.name, t.address);
        let durability = distinct(runs.iter().map(|r| r.durability.as_str()));
        let _ = writeln!(md, "- Durability: {}", code_list(&durability));
        let flags = distinct(runs.iter().filter_map(|r| r.broker_flags.as_deref()));
        if flags.is_empty() {
            md.push_str("- Broker flags: not recorded (the harness did not start the broker)\n");
        } else {
            let _ = writeln!(md, "- Broker flags: {}", code_list(&flags));
        }
        md.push('\n');
        let settings = client_settings(&runs);
        let kafka = runs.iter().any(|r| r.target_kind == "kafka");
        let note = |key: &str| kafka.then(|| librdkafka::note(key)).flatten();
        if settings.iter().any(|(key, _)| note(key).is_some()) {
            md.push_str("| Client setting | Value | Why | Source |\n|---|---|---|---|\n");
            for (key, values) in settings {
                let (why, source) = note(key).unwrap_or((DASH, DASH));
                let _ = writeln!(
                    md,
                    "| `{key}` | {} | {why} | {source} |",
                    code_list(&values)
                );
            }
            md.push('\n');
        } else if !settings.is_empty() {
            md.push_str("| Client setting | Value |\n|---|---|\n");
            for (key, values) in settings {
                let _ = writeln!(md, "| `{key}` | {} |", code_list(&values));
            }
            md.push('\n');
        }
    }
}

/// Each setting once, with every value it took across the runs (workloads may differ).
fn client_settings<'a>(runs: &[&'a RunResult]) -> Vec<(&'a str, Vec<&'a str>)> {
    let mut settings: Vec<(&str, Vec<&str>)> = Vec::new();
    for (key, value) in runs.iter().flat_map(|r| &r.client_settings) {
        match settings.iter_mut().find(|(k, _)| k == key) {
            Some((_, values)) if !values.contains(&value.as_str()) => values.push(value),
            Some(_) => {}
            None => settings.push((key, vec![value])),
        }
    }
    settings
}

/// One workload: a row per target, then the Eventflow/Kafka ratio when both ran.
fn workload_section(md: &mut String, g: &WorkloadRuns<'_>) {
    let runs: Vec<&RunResult> = g
        .targets
        .iter()
        .flat_map(|t| t.runs.iter().copied())
        .collect();
    let series = latency_series(g.kind, &runs);
    let _ = writeln!(md, "### {}\n", g.label);
    let measured = match g.kind {
        "consume" | "e2e" => "consumed",
        _ => "produced",
    };
    match series {
        Some(s) => {
            let _ = writeln!(
                md,
                "Kind `{}`: throughput of records {measured}, median over rounds; latency \
                 `{s}` from the rounds' histograms merged per target.\n",
                g.kind
            );
        }
        None => {
            let _ = writeln!(
                md,
                "Kind `{}`: throughput of records {measured}, median over rounds.\n",
                g.kind
            );
        }
    }
    let ceiling = runs.iter().any(|r| r.ceiling.is_some());
    md.push_str(
        "| Target | Rounds | msgs/s | min–max | MB/s | p50 | p99 | p99.9 | max \
         | Broker CPU s / M msgs | Broker peak RSS |",
    );
    md.push_str(if ceiling {
        " Of the ceiling | Check |\n|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|---|\n"
    } else {
        " Check |\n|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|\n"
    });
    let mut notes = Vec::new();
    for t in &g.targets {
        md.push_str(&target_row(t, g.kind, series, ceiling, &mut notes));
    }
    md.push('\n');
    for note in notes {
        let _ = writeln!(md, "{note}\n");
    }
    if let Some(line) = ratio_line(g, series) {
        let _ = writeln!(md, "{line}\n");
    }
}

/// A table row; problems that need more words than a cell go to `notes`.
fn target_row(
    t: &TargetRuns<'_>,
    kind: &str,
    series: Option<&str>,
    ceiling: bool,
    notes: &mut Vec<String>,
) -> String {
    let throughputs = t.throughputs();
    let rates: Vec<f64> = throughputs.iter().map(|x| x.msgs_per_s).collect();
    let range = match (
        rates.iter().copied().reduce(f64::min),
        rates.iter().copied().reduce(f64::max),
    ) {
        (Some(lo), Some(hi)) => format!("{}–{}", human_count(lo), human_count(hi)),
        _ => DASH.to_string(),
    };
    let mb = median(throughputs.iter().map(|x| x.mb_per_s).collect());
    let merged = series.and_then(|s| t.merged_latency(s));
    let p99_us = match &merged {
        Some(Ok(h)) if !h.is_empty() => Some(h.value_at_quantile(0.99)),
        _ => None,
    };
    let latency = match merged {
        Some(Ok(h)) if !h.is_empty() => [0.5, 0.99, 0.999]
            .iter()
            .map(|&q| text::latency(h.value_at_quantile(q)))
            .chain([text::latency(h.max())])
            .collect(),
        Some(Err(e)) => {
            notes.push(format!(
                "**{}:** latency histogram unreadable ({e}).",
                t.name
            ));
            vec!["unreadable".to_string(); 4]
        }
        _ => vec![DASH.to_string(); 4],
    };
    let stolen = t.runs.iter().filter_map(|r| r.steal_pct).reduce(f64::max);
    if let Some(max) = stolen.filter(|max| *max >= STEAL_FLAGGED_PCT) {
        let requests = t
            .runs
            .iter()
            .filter_map(|r| r.disk_requests_per_s)
            // A flush is counted among the writes as well.
            .map(|d| d.reads + d.writes)
            .reduce(f64::max)
            .map(|n| {
                format!(
                    " The disks completed up to {n:.0} requests per second in them: on a VM \
                     whose host charges its disk emulation to the VM, fewer, larger requests \
                     steal less (docs/PERFORMANCE.md)."
                )
            })
            .unwrap_or_default();
        notes.push(format!(
            "**{}:** the hypervisor stole up to {max:.1}% of the machine's CPU time during \
             these runs (`steal` in /proc/stat); latency percentiles from p{:.0} up can hold \
             its stalls.{requests}",
            t.name,
            stall_reach(max)
        ));
    }
    let brokers: Vec<_> = t.runs.iter().filter_map(|r| r.broker).collect();
    let cpu = median(brokers.iter().map(|b| b.cpu_s_per_million).collect());
    let rss = median(brokers.iter().map(|b| b.rss_peak_kib as f64).collect());
    let check = match text::faults(t.faults()) {
        Some(faults) => format!("⚠ {faults}"),
        None => "ok".to_string(),
    };
    let cells = [
        t.name.to_string(),
        t.runs.len().to_string(),
        or_dash(t.median_msgs_per_s(), human_count),
        range,
        or_dash(mb, |v| format!("{v:.1}")),
    ]
    .into_iter()
    .chain(latency)
    .chain([
        or_dash(cpu, |v| format!("{v:.2}")),
        or_dash(rss, text::memory),
    ])
    .chain(ceiling.then(|| of_ceiling(t, kind, mb, p99_us)))
    .chain([check]);
    format!("| {} |\n", cells.collect::<Vec<_>>().join(" | "))
}

/// `Eventflow / Kafka: throughput 2.00×, p99 0.50×` when both kinds ran this workload.
fn ratio_line(g: &WorkloadRuns<'_>, series: Option<&str>) -> Option<String> {
    let of_kind = |kind: &str| {
        g.targets
            .iter()
            .find(|t| t.runs.first().is_some_and(|r| r.target_kind == kind))
    };
    let (eventflow, kafka) = (of_kind("eventflow")?, of_kind("kafka")?);
    let mut parts = Vec::new();
    if let (Some(e), Some(k)) = (eventflow.median_msgs_per_s(), kafka.median_msgs_per_s()) {
        if k > 0.0 {
            parts.push(format!(
                "throughput {:.2}× (median msgs/s; higher is better)",
                e / k
            ));
        }
    }
    let p99 = |t: &TargetRuns<'_>| match t.merged_latency(series?)? {
        Ok(h) if !h.is_empty() => Some(h.value_at_quantile(0.99) as f64),
        _ => None,
    };
    if let (Some(e), Some(k)) = (p99(eventflow), p99(kafka)) {
        parts.push(format!(
            "p99 {:.2}× (merged histograms; lower is better)",
            e / k
        ));
    }
    (!parts.is_empty()).then(|| format!("**Eventflow / Kafka:** {}.", parts.join(", ")))
}

/// One run's figures for the terminal, in aligned plain-text columns.
pub fn terminal_summary(result: &RunResult) -> String {
    let mut out = format!(
        "{} on {} ({}), round {}: {:.1} s measured\n\n",
        result.label, result.target_kind, result.target, result.round, result.elapsed_s
    );
    let mut rows = vec![row(["", "msgs/s", "MB/s", "records"])];
    for (what, t) in [("produced", result.produced), ("consumed", result.consumed)] {
        if let Some(t) = t {
            rows.push(row([
                what,
                &human_count(t.msgs_per_s),
                &format!("{:.1}", t.mb_per_s),
                &t.messages.to_string(),
            ]));
        }
    }
    out.push_str(&text::aligned(&rows));
    out.push('\n');
    out.push_str(&latency_table(result));
    out.push_str(&usage(result));
    out
}

/// Every latency series of the run, the usual ones first.
fn latency_table(result: &RunResult) -> String {
    const ORDER: [&str; 5] = [
        series::PUBLISH_INTENDED,
        series::PUBLISH,
        series::PUBLISH_DELAY,
        series::E2E,
        series::E2E_ACTUAL,
    ];
    let mut names: Vec<&str> = ORDER
        .into_iter()
        .filter(|s| result.latency.contains_key(*s))
        .collect();
    names.extend(
        result
            .latency
            .keys()
            .map(String::as_str)
            .filter(|s| !ORDER.contains(s)),
    );
    if names.is_empty() {
        return String::new();
    }
    let mut rows = vec![row([
        "latency", "p50", "p90", "p99", "p99.9", "p99.99", "max",
    ])];
    for name in names {
        let l = &result.latency[name];
        let cells = [
            l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.p9999_us, l.max_us,
        ];
        rows.push(
            std::iter::once(name.to_string())
                .chain(cells.into_iter().map(text::latency))
                .collect(),
        );
    }
    text::aligned(&rows) + "\n"
}

/// CPU, memory and the record check, as `name  value` lines.
fn usage(result: &RunResult) -> String {
    let core_share = result.harness_cpu_s / result.elapsed_s.max(1e-9) * 100.0;
    let mut facts = vec![(
        "harness CPU",
        format!(
            "{:.2} s ({core_share:.0}% of one core)",
            result.harness_cpu_s
        ),
    )];
    if let Some(steal) = result.steal_pct {
        facts.push(("CPU stolen", stolen(steal)));
    }
    if let Some(d) = result.disk_requests_per_s {
        let rates = format!(
            "{} reads ({:.0} MB/s), {} writes, {} flushes per second (/proc/diskstats, which \
             counts a flush among the writes too)",
            d.reads.round(),
            d.read_bytes / 1e6,
            d.writes.round(),
            d.flushes.round()
        );
        facts.push(("disk requests", rates));
    }
    if let Some(b) = result.broker {
        let cpu = format!("{:.2} s per million records", b.cpu_s_per_million);
        facts.push(("broker CPU", cpu));
        facts.push(("broker peak RSS", text::memory(b.rss_peak_kib as f64)));
    }
    let check = match text::faults((result.errors, result.missing, result.duplicates)) {
        Some(f) => format!("⚠ {f}"),
        None => "0 errors, 0 missing, 0 duplicates".to_string(),
    };
    facts.push(("check", check));
    text::facts(&facts)
}

/// Stolen CPU time from which a run is flagged, in percent of the machine's.
const STEAL_FLAGGED_PCT: f64 = 1.0;

/// The lowest latency percentile that stalls taking `steal_pct` % of the time can reach.
fn stall_reach(steal_pct: f64) -> f64 {
    (100.0 - steal_pct).max(0.0).floor()
}

/// The hypervisor's share of the run's CPU time, and what it means for the percentiles.
fn stolen(pct: f64) -> String {
    if pct >= STEAL_FLAGGED_PCT {
        format!(
            "⚠ {pct:.1}% of the machine's CPU time (the host held the VM's CPUs back: latency \
             percentiles from p{:.0} up can hold its stalls)",
            stall_reach(pct)
        )
    } else {
        format!("{pct:.1}% of the machine's CPU time")
    }
}

const DASH: &str = "–";

fn or_dash(v: Option<f64>, show: impl Fn(f64) -> String) -> String {
    v.map_or_else(|| DASH.to_string(), show)
}

fn row<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(std::string::ToString::to_string).collect()
}

/// Values in first-seen order, each once.
fn distinct<'a>(values: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut seen = Vec::new();
    for v in values {
        if !seen.contains(&v) {
            seen.push(v);
        }
    }
    seen
}

fn code_list(values: &[&str]) -> String {
    let quoted: Vec<String> = values.iter().map(|v| format!("`{v}`")).collect();
    quoted.join(", ")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::machine::Machine;
    use crate::result::{new_histogram, BrokerUsage, Latency, Sample, Throughput};
    use crate::workload::Workload;

    const PRODUCE: &str = "produce 100B p1 x1/1 acks=all rate=max";
    const E2E: &str = "e2e 1024B p4 x2/2 acks=1 rate=100k/s";

    /// A clean 10-second run at `msgs_per_s`, without latency series.
    fn run(kind: &str, label: &str, target: &str, round: u32, msgs_per_s: f64) -> RunResult {
        let elapsed_s = 10.0;
        let messages = (msgs_per_s * elapsed_s) as u64;
        let throughput = Throughput::new(messages, messages * 100, elapsed_s);
        RunResult {
            kind: kind.into(),
            label: label.into(),
            target_kind: target.into(),
            target: format!("{target}://127.0.0.1:9292"),
            workload: Workload::default(),
            client_settings: vec![
                ("acks".into(), "all".into()),
                ("linger".into(), format!("{}", 1 + round)),
            ],
            durability: format!("{target} durability"),
            broker_flags: (target == "eventflow").then(|| "--cores 2".into()),
            machine: Machine {
                git_commit: "abc123".into(),
                ..Machine::default()
            },
            round,
            started_unix_s: 1_700_000_000 + u64::from(round) * 60,
            elapsed_s,
            produced: Some(throughput),
            consumed: (kind != "produce").then_some(throughput),
            latency: BTreeMap::new(),
            timeline: (1..=10)
                .map(|t| Sample {
                    t_s: f64::from(t),
                    produced_per_s: msgs_per_s,
                    consumed_per_s: if kind == "produce" {
                        0.0
                    } else {
                        msgs_per_s * 0.9
                    },
                })
                .collect(),
            harness_cpu_s: 4.0,
            steal_pct: Some(6.5),
            disk_requests_per_s: Some(crate::machine::DiskRequests {
                reads: 2.0,
                writes: 7123.4,
                flushes: 3561.0,
                read_bytes: 8192.0,
            }),
            broker: Some(BrokerUsage {
                pid: 42,
                cpu_s: 12.0,
                cpu_s_per_million: 1.5,
                rss_start_kib: 100 << 10,
                rss_peak_kib: 512 << 10,
            }),
            errors: 0,
            first_error: None,
            missing: 0,
            duplicates: 0,
            ceiling: None,
        }
    }

    fn with_latency(mut r: RunResult, name: &str, value_us: u64) -> RunResult {
        let mut h = new_histogram();
        h.record_n(value_us, 1000).unwrap();
        r.latency.insert(name.into(), Latency::from_histogram(&h));
        r
    }

    /// Two workloads × two rounds × two targets, alternated as `compare` runs them.
    /// Eventflow: 1.9M and 2.1M msgs/s, 100 µs then 300 µs; Kafka: 0.9M and 1.1M, 200 then
    /// 600 µs. Merged, Eventflow's p50 is 100 µs and its p99 300 µs.
    fn comparison() -> Vec<RunResult> {
        let mut results = Vec::new();
        for (kind, label, name) in [
            ("produce", PRODUCE, series::PUBLISH_INTENDED),
            ("e2e", E2E, series::E2E),
        ] {
            for round in 0..2u32 {
                let ef = run(
                    kind,
                    label,
                    "eventflow",
                    round,
                    1.9e6 + 0.2e6 * f64::from(round),
                );
                results.push(with_latency(ef, name, 100 + 200 * u64::from(round)));
                let kafka = run(
                    kind,
                    label,
                    "kafka",
                    round,
                    0.9e6 + 0.2e6 * f64::from(round),
                );
                results.push(with_latency(kafka, name, 200 + 400 * u64::from(round)));
            }
        }
        results
    }

    fn row_of<'a>(md: &'a str, section: &str, target: &str) -> &'a str {
        let start = md.find(&format!("### {section}")).unwrap();
        md[start..]
            .lines()
            .find(|l| l.starts_with(&format!("| {target} |")))
            .unwrap()
    }

    #[test]
    fn markdown_compares_targets_per_workload() {
        let md = render_markdown("Eventflow vs Kafka", &comparison(), &[]);
        assert!(md.starts_with("# Eventflow vs Kafka\n"));
        assert!(md.contains("2023-11-14 22:13:20 UTC to 2023-11-14 22:14:20 UTC"));
        assert!(md.contains("| Commit | `abc123` |"));
        assert!(!md.contains("different commits"));
        assert!(md.contains("open-loop"));
        assert!(md.contains("the hypervisor stole up to 6.5%"), "{md}");
        assert!(md.contains("up to 7125 requests per second"), "{md}");

        let row = row_of(&md, PRODUCE, "eventflow");
        assert!(
            row.starts_with("| eventflow | 2 | 2.00M | 1.90M–2.10M | 200.0 |"),
            "{row}"
        );
        // Merged histograms: p50 from round 0's samples, p99 and above from round 1's.
        assert!(
            row.contains("| 100 µs | 300 µs | 300 µs | 300 µs | 1.50 | 512 MiB | ok |"),
            "{row}"
        );
        let row = row_of(&md, E2E, "kafka");
        assert!(row.contains("| 1.00M | 900k–1.10M |"), "{row}");
        assert!(
            row.contains("| 200 µs | 600 µs | 600 µs | 600 µs |"),
            "{row}"
        );

        let ratio = "**Eventflow / Kafka:** throughput 2.00× (median msgs/s; higher is \
                     better), p99 0.50× (merged histograms; lower is better).";
        assert_eq!(md.matches(ratio).count(), 2, "{md}");
        assert!(md.contains("`publish_intended`"));
        assert!(md.contains("`e2e` from the rounds' histograms merged"));
    }

    #[test]
    fn a_consume_row_is_read_against_where_its_backlog_came_from() {
        const CONSUME: &str = "consume 100B p1 x1/1";
        let ceiling = crate::ceiling::Ceiling {
            loopback_mb_per_s: 8000.0,
            page_cache_write_mb_per_s: 1500.0,
            page_cache_read_mb_per_s: 7000.0,
            direct_write_mb_per_s: 2000.0,
            direct_read_mb_per_s: 900.0,
            fdatasync_p50_us: 300.0,
            fdatasync_p99_us: 600.0,
            filesystem: "ext4".into(),
        };
        // 2M records/s of 100 B: 200 MB/s consumed.
        let runs = |device_read_bytes: f64| -> Vec<RunResult> {
            (0..3)
                .map(|round| {
                    let mut r = run("consume", CONSUME, "eventflow", round, 2e6);
                    r.ceiling = Some(ceiling.clone());
                    if let Some(d) = r.disk_requests_per_s.as_mut() {
                        d.read_bytes = device_read_bytes;
                    }
                    r
                })
                .collect()
        };
        // The disks read about what was consumed: the device's reads bind.
        let md = render_markdown("t", &runs(220e6), &[]);
        let row = row_of(&md, CONSUME, "eventflow");
        assert!(row.contains("| 22% of O_DIRECT read |"), "{row}");
        // They read next to nothing: the backlog came from memory.
        let md = render_markdown("t", &runs(8192.0), &[]);
        let row = row_of(&md, CONSUME, "eventflow");
        assert!(row.contains("| 3% of page-cache read |"), "{row}");
        assert!(md.contains("| O_DIRECT read | 900 MB/s |"), "{md}");
    }

    #[test]
    fn markdown_states_settings_once_per_target() {
        let md = render_markdown("t", &comparison(), &[]);
        assert_eq!(
            md.matches("### eventflow (`eventflow://127.0.0.1:9292`)")
                .count(),
            1
        );
        assert!(md.contains("- Durability: `eventflow durability`"));
        assert!(md.contains("- Broker flags: `--cores 2`"));
        assert!(md.contains("- Broker flags: not recorded"));
        assert_eq!(md.matches("| `acks` | `all` |").count(), 2);
        assert_eq!(md.matches("| `linger` | `1`, `2` |").count(), 2);
        // librdkafka's properties carry their reason and source; Eventflow's client has none.
        assert_eq!(
            md.matches("| Client setting | Value | Why | Source |")
                .count(),
            1
        );
        assert!(md
            .contains("| `acks` | `all` | from the plan (`acks`) | librdkafka CONFIGURATION.md |"));
        assert!(md.contains("| `linger` | `1`, `2` | – | – |"));
    }

    #[test]
    fn markdown_notes_mixed_commits_and_links_charts() {
        let mut results = comparison();
        results[3].machine.git_commit = "def456".into();
        let charts = vec![
            "throughput.svg".to_string(),
            format!("latency-{}.svg", "produce-100b-p1-x1-1-acks-all-rate-max"),
            "extra.svg".to_string(),
        ];
        let md = render_markdown("t", &results, &charts);
        assert!(md.contains("2 different commits: `abc123`, `def456`"));
        assert!(md.contains("![throughput per workload](throughput.svg)"));
        assert!(md.contains("(latency-produce-100b-p1-x1-1-acks-all-rate-max.svg)"));
        assert!(md.contains("## Other charts\n\n![extra.svg](extra.svg)"));
        assert!(!md.contains("timeline-"));
    }

    #[test]
    fn faulty_runs_are_flagged() {
        let mut results = comparison();
        results[1].errors = 3;
        results[3].missing = 1;
        let md = render_markdown("t", &results, &[]);
        let row = row_of(&md, PRODUCE, "kafka");
        assert!(row.ends_with("| ⚠ 3 errors, 1 missing |"), "{row}");
        assert!(row_of(&md, PRODUCE, "eventflow").ends_with("| ok |"));

        let summary = terminal_summary(&results[1]);
        assert!(summary.contains("⚠ 3 errors"), "{summary}");
    }

    #[test]
    fn missing_series_and_bad_histograms_do_not_panic() {
        let mut results = comparison();
        results.push(run("consume", "consume only", "eventflow", 0, 5e5));
        results[0]
            .latency
            .get_mut(series::PUBLISH_INTENDED)
            .unwrap()
            .histogram = "not a histogram".into();
        let md = render_markdown("t", &results, &[]);
        assert!(row_of(&md, PRODUCE, "eventflow").contains("| unreadable |"));
        assert!(md.contains("latency histogram unreadable (round 0:"));
        let row = row_of(&md, "consume only", "eventflow");
        assert!(
            row.contains("| 500k | 500k–500k | 50.0 | – | – | – | – |"),
            "{row}"
        );

        let dir = tempfile::tempdir().unwrap();
        write_report(dir.path(), "t", &results).unwrap();
        assert!(!dir.path().join("latency-consume-only.svg").exists());
        assert!(dir.path().join("timeline-consume-only.svg").exists());
    }

    #[test]
    fn empty_results_are_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = write_report(dir.path(), "t", &[]).unwrap_err();
        assert!(err.to_string().contains("no results"));
        assert!(render_markdown("t", &[], &[]).contains("No results to report."));
    }

    #[test]
    fn report_writes_markdown_and_charts() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("report");
        let path = write_report(&out, "Eventflow vs Kafka", &comparison()).unwrap();
        assert_eq!(path, out.join("report.md"));
        let md = std::fs::read_to_string(&path).unwrap();
        for slug in [
            "produce-100b-p1-x1-1-acks-all-rate-max",
            "e2e-1024b-p4-x2-2-acks-1-rate-100k-s",
        ] {
            for chart in [
                format!("latency-{slug}.svg"),
                format!("timeline-{slug}.svg"),
            ] {
                let svg = std::fs::read_to_string(out.join(&chart)).unwrap();
                assert!(svg.starts_with("<svg"), "{chart}");
                assert!(md.contains(&format!("]({chart})")), "{chart}");
            }
        }
        let svg = std::fs::read_to_string(out.join("throughput.svg")).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("kafka"));
        assert!(md.contains("](throughput.svg)"));
    }

    #[test]
    fn terminal_summary_shows_rates_latency_and_usage() {
        let results = comparison();
        let summary = terminal_summary(&results[2]);
        assert!(summary.contains("2.10M"), "{summary}");
        assert!(summary.contains("p99.99"), "{summary}");
        assert!(summary.contains("publish_intended"), "{summary}");
        assert!(summary.contains("300 µs"), "{summary}");
        assert!(summary.contains("1.50 s per million records"), "{summary}");
        assert!(summary.contains("512 MiB"), "{summary}");
        assert!(
            summary.contains("CPU stolen") && summary.contains("6.5% of the machine's CPU time"),
            "{summary}"
        );
        assert!(summary.contains("from p93 up"), "{summary}");
        assert!(
            summary.contains("2 reads (0 MB/s), 7123 writes, 3561 flushes per second"),
            "{summary}"
        );
        assert!(
            summary.contains("0 errors, 0 missing, 0 duplicates"),
            "{summary}"
        );
        let header = summary.lines().find(|l| l.starts_with("latency")).unwrap();
        let values = summary
            .lines()
            .find(|l| l.starts_with("publish_intended"))
            .unwrap();
        assert_eq!(
            header.chars().count(),
            values.chars().count(),
            "columns align"
        );
    }
}
