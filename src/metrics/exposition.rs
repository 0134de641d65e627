//! The Prometheus text exposition format (version 0.0.4) of the shards' snapshots merged.
//!
//! Counters end in `_total`, durations are seconds and sizes bytes; every family is
//! written with its `# HELP` and `# TYPE` lines even when it has no sample yet, so a
//! dashboard's queries name families that are always there. docs/OPERATIONS.md lists them.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

use super::histogram::{HistogramSnapshot, LATENCY_NS};
use super::labels::{ApiId, Listener, Outcome};
use super::process::ProcessInfo;
use super::snapshot::{PartitionState, ShardSnapshot, ShareState};

/// The content type of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What a scrape renders.
pub struct Scrape<'a> {
    /// Every shard's snapshot.
    pub shards: &'a [ShardSnapshot],
    /// The process's figures.
    pub process: ProcessInfo,
    /// The crate version.
    pub version: &'a str,
    /// The git commit the binary was built from (`unknown` outside a checkout).
    pub commit: &'a str,
    /// When the process started, in seconds since the Unix epoch.
    pub start_time: f64,
    /// Seconds since the broker started.
    pub uptime_seconds: f64,
    /// Whether traffic is labelled per partition (`--metrics-partition-labels`).
    pub partition_labels: bool,
    /// The name of an API (the `api` label).
    pub api_name: &'a dyn Fn(ApiId) -> String,
    /// The name of a request's outcome (the `error` label).
    pub outcome_name: &'a dyn Fn(Outcome) -> String,
}

/// Renders `scrape` as Prometheus text.
pub fn render(scrape: &Scrape<'_>) -> String {
    let mut w = Writer::default();
    let shards = scrape.shards;

    w.family(
        "eventflow_build_info",
        "gauge",
        "Always 1; the labels say which build runs.",
    );
    w.sample(
        "eventflow_build_info",
        &[("version", scrape.version), ("commit", scrape.commit)],
        1,
    );
    w.family(
        "eventflow_uptime_seconds",
        "gauge",
        "Seconds since the broker started.",
    );
    w.sample_f("eventflow_uptime_seconds", &[], scrape.uptime_seconds);
    w.family(
        "eventflow_shards",
        "gauge",
        "Shards (threads, one per core) serving.",
    );
    w.sample("eventflow_shards", &[], shards.len() as u64);
    w.family(
        "process_start_time_seconds",
        "gauge",
        "When the process started, in seconds since the Unix epoch.",
    );
    w.sample_f("process_start_time_seconds", &[], scrape.start_time);
    w.family(
        "process_resident_memory_bytes",
        "gauge",
        "Resident set size of the process.",
    );
    w.sample(
        "process_resident_memory_bytes",
        &[],
        scrape.process.resident_bytes,
    );
    w.family(
        "process_cpu_seconds_total",
        "counter",
        "User and system CPU time of the process.",
    );
    w.sample_f("process_cpu_seconds_total", &[], scrape.process.cpu_seconds);
    w.family(
        "process_open_fds",
        "gauge",
        "Open file descriptors of the process.",
    );
    w.sample("process_open_fds", &[], scrape.process.open_fds);
    w.family("process_threads", "gauge", "Threads of the process.");
    w.sample("process_threads", &[], scrape.process.threads);

    traffic(&mut w, scrape);
    requests(&mut w, scrape);

    let mut batches = HistogramSnapshot::empty(super::histogram::ROUND_BATCHES);
    let mut bytes = HistogramSnapshot::empty(super::histogram::ROUND_BYTES);
    let mut sync = HistogramSnapshot::empty(LATENCY_NS);
    let mut throttle = HistogramSnapshot::empty(LATENCY_NS);
    for s in shards {
        batches.merge(&s.traffic.round_batches);
        bytes.merge(&s.traffic.round_bytes);
        sync.merge(&s.traffic.fdatasync);
        throttle.merge(&s.traffic.quota_throttle);
    }
    w.family(
        "eventflow_group_commit_round_batches",
        "histogram",
        "Record batches written per group-commit round of a partition.",
    );
    w.histogram("eventflow_group_commit_round_batches", &[], &batches, 1.0);
    w.family(
        "eventflow_group_commit_round_bytes",
        "histogram",
        "Bytes written per group-commit round of a partition.",
    );
    w.histogram("eventflow_group_commit_round_bytes", &[], &bytes, 1.0);
    w.family(
        "eventflow_fdatasync_duration_seconds",
        "histogram",
        "Time of each fdatasync of a partition's log after a group-commit round.",
    );
    w.histogram("eventflow_fdatasync_duration_seconds", &[], &sync, 1e9);
    w.family(
        "eventflow_quota_throttle_seconds",
        "histogram",
        "Throttle time of each response to a client over a quota (its count: throttled responses).",
    );
    w.histogram("eventflow_quota_throttle_seconds", &[], &throttle, 1e9);

    partitions(&mut w, shards);
    groups(&mut w, shards);
    connections(&mut w, shards);

    w.per_shard(
        shards,
        "eventflow_queued_request_bytes",
        "Bytes of requests a shard holds in memory, against --max-queued-bytes.",
        |s| s.queued_bytes,
    );
    w.per_shard(
        shards,
        "eventflow_queued_request_bytes_limit",
        "A shard's budget of request bytes (--max-queued-bytes).",
        |s| s.queued_limit,
    );
    w.per_shard(
        shards,
        "eventflow_ring_queued_calls",
        "Calls from other shards waiting in the rings towards a shard.",
        |s| s.ring_queued,
    );
    w.per_shard(
        shards,
        "eventflow_ring_capacity_calls",
        "Slots of the rings towards a shard, over all senders (--ring-capacity each).",
        |s| s.ring_capacity,
    );
    w.per_shard(
        shards,
        "eventflow_tail_cache_bytes",
        "Memory the tail caches of a shard's partitions hold: their newest log, written with \
         --log-writes direct, that fetches read from memory.",
        |s| s.tail_cache_bytes,
    );
    w.per_shard(
        shards,
        "eventflow_tail_cache_limit_bytes",
        "What a shard's tail caches may hold together (--tail-cache-shard-mb, at least \
         --tail-cache-mb); each active segment's newest write stays beyond it.",
        |s| s.tail_cache_limit,
    );
    w.family(
        "eventflow_scrub_corrupt_batches_total",
        "counter",
        "Corrupt record batches the scrubber found (and fenced), counted on every pass.",
    );
    let corrupt = shards.iter().map(|s| s.traffic.scrub_corrupt_batches).sum();
    w.sample("eventflow_scrub_corrupt_batches_total", &[], corrupt);
    w.family(
        "eventflow_compaction_runs_total",
        "counter",
        "Compaction passes run over partition logs (cleanup.policy=compact).",
    );
    let runs = shards.iter().map(|s| s.traffic.compactions).sum();
    w.sample("eventflow_compaction_runs_total", &[], runs);
    w.family(
        "eventflow_compaction_bytes_removed_total",
        "counter",
        "Bytes compaction removed from sealed segments (overwritten records and old tombstones).",
    );
    let removed = shards
        .iter()
        .map(|s| s.traffic.compaction_bytes_removed)
        .sum();
    w.sample("eventflow_compaction_bytes_removed_total", &[], removed);
    w.family(
        "eventflow_log_read_bytes_total",
        "counter",
        "Bytes of partition logs read for fetch responses, by source: memory (the tail cache \
         of --log-writes direct, --tail-cache-mb) or file (the page cache, else the disk).",
    );
    for (source, bytes) in [
        (
            "memory",
            shards.iter().map(|s| s.traffic.log_read_memory_bytes).sum(),
        ),
        (
            "file",
            shards.iter().map(|s| s.traffic.log_read_file_bytes).sum(),
        ),
    ] {
        w.sample(
            "eventflow_log_read_bytes_total",
            &[("source", source)],
            bytes,
        );
    }
    w.out
}

fn traffic(w: &mut Writer, scrape: &Scrape<'_>) {
    // (topic, partition) → (records, bytes in, bytes out), over shards.
    let mut rows: BTreeMap<(&str, Option<u32>), [u64; 3]> = BTreeMap::new();
    for s in scrape.shards {
        for t in &s.traffic.topics {
            if t.partition.is_some() != scrape.partition_labels {
                continue;
            }
            let row = rows.entry((&t.topic, t.partition)).or_default();
            row[0] += t.produced_records;
            row[1] += t.produced_bytes;
            row[2] += t.fetched_bytes;
        }
    }
    let families = [
        (
            "eventflow_produced_records_total",
            "Records acknowledged to producers.",
        ),
        (
            "eventflow_produced_bytes_total",
            "Bytes of record batches acknowledged to producers.",
        ),
        (
            "eventflow_fetched_bytes_total",
            "Bytes of record batches sent to consumers.",
        ),
    ];
    for (i, (name, help)) in families.iter().enumerate() {
        w.family(name, "counter", help);
        for ((topic, partition), values) in &rows {
            let partition = partition.map(|p| p.to_string());
            let mut labels = vec![("topic", *topic)];
            if let Some(p) = &partition {
                labels.push(("partition", p));
            }
            w.sample(name, &labels, values[i]);
        }
    }
}

fn requests(w: &mut Writer, scrape: &Scrape<'_>) {
    let mut counts: BTreeMap<(&str, String, String), u64> = BTreeMap::new();
    let mut latency: BTreeMap<(&str, String), HistogramSnapshot> = BTreeMap::new();
    for s in scrape.shards {
        for r in &s.traffic.requests {
            let key = (
                r.api.protocol.label(),
                (scrape.api_name)(r.api),
                (scrape.outcome_name)(r.outcome),
            );
            *counts.entry(key).or_default() += r.count;
        }
        for l in &s.traffic.latency {
            let key = (l.api.protocol.label(), (scrape.api_name)(l.api));
            latency
                .entry(key)
                .or_insert_with(|| HistogramSnapshot::empty(LATENCY_NS))
                .merge(&l.seconds);
        }
    }
    w.family(
        "eventflow_requests_total",
        "counter",
        "Requests answered, per protocol, API and request-level error (`none`: no error; \
         `connection_closed`: the connection was closed instead).",
    );
    for ((protocol, api, error), count) in &counts {
        let labels = [("protocol", *protocol), ("api", api), ("error", error)];
        w.sample("eventflow_requests_total", &labels, *count);
    }
    w.family(
        "eventflow_request_duration_seconds",
        "histogram",
        "Time from a request decoded to its response queued, per protocol and API (a \
         fetch's includes its long-poll wait).",
    );
    for ((protocol, api), h) in &latency {
        let labels = [("protocol", *protocol), ("api", api.as_str())];
        w.histogram("eventflow_request_duration_seconds", &labels, h, 1e9);
    }
}

/// One figure of a partition.
type PartitionValue = fn(&PartitionState) -> f64;
/// One figure of a share-partition.
type ShareValue = fn(&ShareState) -> u64;

fn partitions(w: &mut Writer, shards: &[ShardSnapshot]) {
    let mut all: Vec<_> = shards.iter().flat_map(|s| &s.partitions).collect();
    all.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    let families: [(&str, &str, PartitionValue); 4] = [
        (
            "eventflow_partition_log_end_offset",
            "The next offset to be written to a partition (its high watermark).",
            |p| p.log_end as f64,
        ),
        (
            "eventflow_partition_log_start_offset",
            "The first offset still in a partition's log.",
            |p| p.log_start as f64,
        ),
        (
            "eventflow_partition_size_bytes",
            "Bytes of a partition's segment files.",
            |p| p.size_bytes as f64,
        ),
        (
            "eventflow_partition_segments",
            "Segment files of a partition.",
            |p| p.segments as f64,
        ),
    ];
    for (name, help, value) in families {
        w.family(name, "gauge", help);
        for p in &all {
            let partition = p.partition.to_string();
            let labels = [("topic", p.topic.as_str()), ("partition", &partition)];
            w.sample_f(name, &labels, value(p));
        }
    }
}

fn groups(w: &mut Writer, shards: &[ShardSnapshot]) {
    let ends: HashMap<(&str, u32), i64> = shards
        .iter()
        .flat_map(|s| &s.partitions)
        .map(|p| ((p.topic.as_str(), p.partition), p.log_end))
        .collect();
    let mut committed: Vec<_> = shards.iter().flat_map(|s| &s.committed).collect();
    committed
        .sort_by(|a, b| (&a.group, &a.topic, a.partition).cmp(&(&b.group, &b.topic, b.partition)));
    w.family(
        "eventflow_consumer_group_committed_offset",
        "gauge",
        "The next offset a consumer group will consume from a partition (its committed offset).",
    );
    for c in &committed {
        let partition = c.partition.to_string();
        let labels = [
            ("group", c.group.as_str()),
            ("topic", &c.topic),
            ("partition", &partition),
        ];
        w.sample_f(
            "eventflow_consumer_group_committed_offset",
            &labels,
            c.offset as f64,
        );
    }
    w.family(
        "eventflow_consumer_group_lag",
        "gauge",
        "Records a consumer group has not consumed from a partition: log end offset minus \
         committed offset (partitions of deleted topics are left out).",
    );
    for c in &committed {
        let Some(&end) = ends.get(&(c.topic.as_str(), c.partition)) else {
            continue;
        };
        let partition = c.partition.to_string();
        let labels = [
            ("group", c.group.as_str()),
            ("topic", &c.topic),
            ("partition", &partition),
        ];
        let lag = end.saturating_sub(c.offset).max(0);
        w.sample("eventflow_consumer_group_lag", &labels, lag as u64);
    }

    let mut shares: Vec<_> = shards.iter().flat_map(|s| &s.shares).collect();
    shares
        .sort_by(|a, b| (&a.group, &a.topic, a.partition).cmp(&(&b.group, &b.topic, b.partition)));
    let families: [(&str, &str, &str, ShareValue); 3] = [
        (
            "eventflow_share_group_backlog_records",
            "gauge",
            "Records of a partition a share group has not finished: from the share-partition \
             start to the log end, not yet accepted, rejected or dead-lettered.",
            |s| s.backlog,
        ),
        (
            "eventflow_share_group_locked_records",
            "gauge",
            "Records of a partition locked to a share group's consumers now.",
            |s| s.locked,
        ),
        (
            "eventflow_share_group_dead_lettered_records_total",
            "counter",
            "Records of a partition a share group moved to its dead-letter topic since the \
             broker started.",
            |s| s.dead_lettered,
        ),
    ];
    for (name, kind, help, value) in families {
        w.family(name, kind, help);
        for s in &shares {
            let partition = s.partition.to_string();
            let labels = [
                ("group", s.group.as_str()),
                ("topic", &s.topic),
                ("partition", &partition),
            ];
            w.sample(name, &labels, value(s));
        }
    }
}

fn connections(w: &mut Writer, shards: &[ShardSnapshot]) {
    let mut sums = [[0u64; 3]; 3];
    for s in shards {
        for c in &s.traffic.connections {
            let row = &mut sums[c.listener as usize];
            row[0] += c.open;
            row[1] += c.accepted;
            row[2] += c.refused;
        }
    }
    let families = [
        (
            "eventflow_connections_open",
            "gauge",
            "Client connections open now.",
        ),
        (
            "eventflow_connections_accepted_total",
            "counter",
            "Client connections accepted and served.",
        ),
        (
            "eventflow_connections_refused_total",
            "counter",
            "Client connections refused over --max-connections or --max-connections-per-ip.",
        ),
    ];
    for (i, (name, kind, help)) in families.iter().enumerate() {
        w.family(name, kind, help);
        for l in Listener::ALL {
            w.sample(name, &[("listener", l.label())], sums[l as usize][i]);
        }
    }
}

#[derive(Default)]
struct Writer {
    out: String,
}

impl Writer {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn labels(&mut self, labels: &[(&str, &str)], extra: Option<(&str, &str)>) {
        if labels.is_empty() && extra.is_none() {
            return;
        }
        self.out.push('{');
        for (i, (k, v)) in labels.iter().chain(extra.as_ref()).enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
        }
        self.out.push('}');
    }

    /// A gauge family with one sample per shard (label `shard`).
    fn per_shard(
        &mut self,
        shards: &[ShardSnapshot],
        name: &str,
        help: &str,
        value: impl Fn(&ShardSnapshot) -> u64,
    ) {
        self.family(name, "gauge", help);
        for s in shards {
            let shard = s.shard.to_string();
            self.sample(name, &[("shard", &shard)], value(s));
        }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.out.push_str(name);
        self.labels(labels, None);
        let _ = writeln!(self.out, " {value}");
    }

    fn sample_f(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        self.labels(labels, None);
        let _ = writeln!(self.out, " {}", float(value));
    }

    /// Cumulative buckets, `+Inf`, sum and count; recorded values divided by `unit` give
    /// the exposed unit (1e9: nanoseconds to seconds).
    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &HistogramSnapshot, unit: f64) {
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0;
        for (bound, count) in h.bounds.iter().zip(&h.counts) {
            cumulative += count;
            let le = float(*bound as f64 / unit);
            self.out.push_str(&bucket);
            self.labels(labels, Some(("le", &le)));
            let _ = writeln!(self.out, " {cumulative}");
        }
        let total = h.count();
        self.out.push_str(&bucket);
        self.labels(labels, Some(("le", "+Inf")));
        let _ = writeln!(self.out, " {total}");
        self.sample_f(&format!("{name}_sum"), labels, h.sum as f64 / unit);
        self.sample(&format!("{name}_count"), labels, total);
    }
}

fn float(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else if v.is_nan() {
        "NaN".into()
    } else if v > 0.0 {
        "+Inf".into()
    } else {
        "-Inf".into()
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::super::histogram::Histogram;
    use super::super::snapshot::*;
    use super::*;

    fn shard(id: u16) -> ShardSnapshot {
        let h = Histogram::new(super::super::histogram::LATENCY_NS);
        h.record(3_000_000);
        ShardSnapshot {
            shard: id,
            traffic: ShardTraffic {
                topics: vec![TopicTraffic {
                    topic: "a\"b".into(),
                    partition: None,
                    produced_records: 5,
                    produced_bytes: 500,
                    fetched_bytes: 7,
                }],
                requests: vec![],
                latency: vec![RequestLatency {
                    api: ApiId {
                        protocol: super::super::labels::WireProtocol::Kafka,
                        key: 0,
                    },
                    seconds: h.snapshot(),
                }],
                round_batches: HistogramSnapshot::empty(super::super::histogram::ROUND_BATCHES),
                round_bytes: HistogramSnapshot::empty(super::super::histogram::ROUND_BYTES),
                fdatasync: HistogramSnapshot::empty(super::super::histogram::LATENCY_NS),
                quota_throttle: HistogramSnapshot::empty(super::super::histogram::LATENCY_NS),
                connections: vec![],
                scrub_corrupt_batches: 1,
                compactions: 2,
                compaction_bytes_removed: 4096,
                log_read_memory_bytes: 300,
                log_read_file_bytes: 20,
            },
            partitions: vec![PartitionState {
                topic: format!("t{id}"),
                partition: 0,
                log_start: 0,
                log_end: 10,
                size_bytes: 100,
                segments: 1,
            }],
            committed: (id == 0)
                .then(|| CommittedOffset {
                    group: "g".into(),
                    topic: "t0".into(),
                    partition: 0,
                    offset: 4,
                })
                .into_iter()
                .collect(),
            shares: vec![],
            queued_bytes: 0,
            queued_limit: 1,
            ring_queued: 0,
            ring_capacity: 2,
            tail_cache_bytes: 3 << 20,
            tail_cache_limit: 256 << 20,
        }
    }

    #[test]
    fn shards_merge_and_labels_are_escaped() {
        let shards = [shard(0), shard(1)];
        let text = render(&Scrape {
            shards: &shards,
            process: ProcessInfo::default(),
            version: "1",
            commit: "abc",
            start_time: 0.0,
            uptime_seconds: 1.5,
            partition_labels: false,
            api_name: &|_| "Produce".into(),
            outcome_name: &|_| "none".into(),
        });
        assert!(text.contains("eventflow_produced_records_total{topic=\"a\\\"b\"} 10\n"));
        assert!(text.contains(
            "eventflow_request_duration_seconds_bucket{protocol=\"kafka\",api=\"Produce\",le=\"0.0025\"} 0\n"
        ));
        assert!(text.contains(
            "eventflow_request_duration_seconds_bucket{protocol=\"kafka\",api=\"Produce\",le=\"0.005\"} 2\n"
        ));
        assert!(text.contains(
            "eventflow_request_duration_seconds_sum{protocol=\"kafka\",api=\"Produce\"} 0.006\n"
        ));
        // Group g committed 4 on t0/0, whose end is 10.
        assert!(text.contains(
            "eventflow_consumer_group_lag{group=\"g\",topic=\"t0\",partition=\"0\"} 6\n"
        ));
        assert!(text.contains("eventflow_scrub_corrupt_batches_total 2\n"));
        assert!(text.contains("eventflow_tail_cache_bytes{shard=\"1\"} 3145728\n"));
        assert!(text.contains("eventflow_tail_cache_limit_bytes{shard=\"0\"} 268435456\n"));
        assert!(text.contains("eventflow_compaction_runs_total 4\n"));
        assert!(text.contains("eventflow_compaction_bytes_removed_total 8192\n"));
        assert!(text.contains("eventflow_log_read_bytes_total{source=\"memory\"} 600\n"));
        assert!(text.contains("eventflow_log_read_bytes_total{source=\"file\"} 40\n"));
        assert!(text.contains("# TYPE eventflow_share_group_locked_records gauge\n"));
    }
}
