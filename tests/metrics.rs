//! `/metrics` scraped the way Prometheus does: a real broker, real traffic (the client
//! library, the `eventflow` CLI, and kcat through the Kafka listener), then a plain HTTP GET
//! whose body is parsed by Prometheus's own Python parser (`prometheus_client`). Without
//! python3 and prometheus-client these tests are skipped with a line saying so, or fail
//! when EVENTFLOW_REQUIRE_KAFKA_CLIENTS=1 (as in CI).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::Broker;
use eventflow::protocol::api::Acks;

/// One sample: its name (with `_total`, `_bucket`… as exposed), labels and value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A scrape, parsed.
struct Scrape {
    /// Family name → type, as the parser reports them.
    families: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

impl Scrape {
    /// The value of the one sample `name` whose labels include `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<_> = self.matching(name, labels).collect();
        assert_eq!(
            found.len(),
            1,
            "{name}{labels:?}: expected one sample, found {found:?}"
        );
        found[0].value
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&str, &str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }
}

/// Whether python3 can import prometheus_client (see common::kafka_client_available).
fn parser_available() -> bool {
    common::python_module_available("prometheus_client", "prometheus-client")
}

/// A plain HTTP/1.1 GET; returns the status line, the headers (lower-cased names) and the
/// body.
fn http_get(addr: SocketAddr, path: &str) -> (String, BTreeMap<String, String>, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/plain\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
    let mut lines = head.lines();
    let status = lines.next().unwrap().to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

/// Parses exposition text with prometheus_client's parser.
fn parse(text: &str) -> Scrape {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
families, samples = {}, []
for family in text_string_to_metric_families(sys.stdin.read()):
    families[family.name] = family.type
    for s in family.samples:
        samples.append([s.name, s.labels, s.value])
json.dump({"families": families, "samples": samples}, sys.stdout)
"#;
    let mut command = Command::new("python3");
    command.args(["-c", SCRIPT]);
    let out = common::run_with_stdin(command, text);
    assert!(
        out.status.success(),
        "the Prometheus parser refused the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let families = parsed["families"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    let samples = parsed["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| Sample {
            name: s[0].as_str().unwrap().to_string(),
            labels: s[1]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect(),
            value: s[2].as_f64().unwrap(),
        })
        .collect();
    Scrape { families, samples }
}

/// GET /metrics from the broker, checked and parsed.
fn scrape(broker: &Broker) -> Scrape {
    let (status, headers, body) = http_get(broker.metrics.expect("a metrics listener"), "/metrics");
    assert!(status.contains(" 200 "), "{status}\n{body}");
    assert_eq!(
        headers.get("content-type").map(String::as_str),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    parse(&body)
}

/// Runs the `eventflow` CLI against the broker's shared port; it must succeed.
fn cli(broker: &Broker, args: &[&str], stdin: &str) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_eventflow"))
        .arg("--bootstrap")
        .arg(broker.addr.to_string())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("eventflow");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "eventflow {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn a_scrape_counts_what_the_traffic_did() {
    if !parser_available() {
        return;
    }
    let broker = Broker::start(&["--cores", "2"]);
    let before = scrape(&broker);
    let accepted_before: f64 = before
        .matching("eventflow_connections_accepted_total", &[])
        .map(|s| s.value)
        .sum();

    // Produce batches of known sizes with the client library.
    let mut client = broker.client();
    client.create_topic("metered", 2, &[]).unwrap();
    let mut bytes = [0u64; 2];
    let mut records = [0u64; 2];
    for (i, n) in [5usize, 7, 11].into_iter().enumerate() {
        let partition = (i % 2) as u32;
        let batch = common::batch("m", n, 100, common::now_ms());
        bytes[partition as usize] += batch.len() as u64;
        records[partition as usize] += n as u64;
        client
            .produce("metered", partition, batch, Acks::All)
            .unwrap();
    }
    // Read every partition once, from the start.
    for partition in 0..2 {
        let fetched = client
            .fetch("metered", partition, 0, 1 << 20, Duration::ZERO, 0)
            .unwrap();
        assert_eq!(fetched.high_watermark, records[partition as usize] as i64);
    }

    // A consumer group that reads 4 of 10 records and commits: lag 6.
    client.create_topic("lagged", 1, &[]).unwrap();
    let lines: String = (0..10).map(|i| format!("r{i}\n")).collect();
    cli(&broker, &["produce", "lagged"], &lines);
    cli(
        &broker,
        &[
            "consume",
            "lagged",
            "--group",
            "readers",
            "--from-beginning",
            "--max-messages",
            "4",
        ],
        "",
    );
    // A share group that accepts 3 of 10 records: 7 left, none locked once it exits.
    client.create_topic("queued", 1, &[]).unwrap();
    cli(&broker, &["produce", "queued"], &lines);
    cli(
        &broker,
        &[
            "queue",
            "consume",
            "queued",
            "--group",
            "workers",
            "--max-messages",
            "3",
        ],
        "",
    );

    let s = scrape(&broker);
    let topic = [("topic", "metered")];
    assert_eq!(
        s.value("eventflow_produced_records_total", &topic),
        (records[0] + records[1]) as f64
    );
    assert_eq!(
        s.value("eventflow_produced_bytes_total", &topic),
        (bytes[0] + bytes[1]) as f64
    );
    assert_eq!(
        s.value("eventflow_fetched_bytes_total", &topic),
        (bytes[0] + bytes[1]) as f64,
        "each partition was read once, whole"
    );
    assert_eq!(
        s.value("eventflow_produced_records_total", &[("topic", "lagged")]),
        10.0
    );
    for partition in 0..2usize {
        let labels = [("topic", "metered"), ("partition", &*partition.to_string())];
        assert_eq!(
            s.value("eventflow_partition_log_end_offset", &labels),
            records[partition] as f64
        );
        assert_eq!(
            s.value("eventflow_partition_log_start_offset", &labels),
            0.0
        );
        assert_eq!(
            s.value("eventflow_partition_size_bytes", &labels),
            bytes[partition] as f64
        );
        assert_eq!(s.value("eventflow_partition_segments", &labels), 1.0);
    }
    let group = [
        ("group", "readers"),
        ("topic", "lagged"),
        ("partition", "0"),
    ];
    assert_eq!(
        s.value("eventflow_consumer_group_committed_offset", &group),
        4.0
    );
    assert_eq!(s.value("eventflow_consumer_group_lag", &group), 6.0);
    assert!(s.value("eventflow_fetched_bytes_total", &[("topic", "queued")]) > 0.0);
    let share = [
        ("group", "workers"),
        ("topic", "queued"),
        ("partition", "0"),
    ];
    assert_eq!(
        s.value("eventflow_share_group_backlog_records", &share),
        7.0
    );
    assert_eq!(s.value("eventflow_share_group_locked_records", &share), 0.0);
    assert_eq!(
        s.value("eventflow_share_group_dead_lettered_records_total", &share),
        0.0
    );

    // Requests: three produce calls of our own, each answered without error and timed.
    let produce = [("protocol", "native"), ("api", "Produce")];
    assert!(
        s.value(
            "eventflow_requests_total",
            &[produce[0], produce[1], ("error", "none")]
        ) >= 3.0
    );
    assert!(s.value("eventflow_request_duration_seconds_count", &produce) >= 3.0);
    assert!(
        s.value(
            "eventflow_request_duration_seconds_bucket",
            &[produce[0], produce[1], ("le", "+Inf")]
        ) >= 3.0
    );
    // A request that fails as a whole is counted under its error.
    assert!(client.describe_topic("nowhere").is_err());
    let s2 = scrape(&broker);
    assert_eq!(
        s2.value(
            "eventflow_requests_total",
            &[
                ("protocol", "native"),
                ("api", "DescribeTopic"),
                ("error", "unknown_topic_or_partition")
            ]
        ),
        1.0
    );

    // Durable appends: rounds written and fdatasync'ed (--fsync always is the default).
    assert!(s.value("eventflow_group_commit_round_batches_count", &[]) >= 3.0);
    assert!(s.value("eventflow_group_commit_round_bytes_sum", &[]) >= (bytes[0] + bytes[1]) as f64);
    assert!(s.value("eventflow_fdatasync_duration_seconds_count", &[]) >= 3.0);

    // Connections: ours and the CLI's were accepted; none refused.
    let accepted: f64 = s
        .matching("eventflow_connections_accepted_total", &[])
        .map(|s| s.value)
        .sum();
    assert!(
        accepted >= accepted_before + 4.0,
        "{accepted_before} → {accepted}"
    );
    assert!(s.value("eventflow_connections_open", &[("listener", "native")]) >= 1.0);
    assert_eq!(
        s.matching("eventflow_connections_refused_total", &[])
            .map(|s| s.value)
            .sum::<f64>(),
        0.0
    );

    // Per shard: the request budget and the rings.
    for shard in ["0", "1"] {
        let limit = s.value("eventflow_queued_request_bytes_limit", &[("shard", shard)]);
        assert_eq!(limit, f64::from(32 << 20));
        assert!(s.value("eventflow_queued_request_bytes", &[("shard", shard)]) <= limit);
        assert_eq!(
            s.value("eventflow_ring_capacity_calls", &[("shard", shard)]),
            1024.0,
            "one ring of 1024 slots from the other shard"
        );
    }

    // The process and the build.
    assert!(s.value("process_resident_memory_bytes", &[]) > 1e6);
    assert!(s.value("process_open_fds", &[]) > 0.0);
    assert_eq!(s.value("eventflow_shards", &[]), 2.0);
    let build = s.matching("eventflow_build_info", &[]).next().unwrap();
    assert_eq!(build.labels["version"], env!("CARGO_PKG_VERSION"));
    assert!(!build.labels["commit"].is_empty());
    assert_eq!(
        s.families["eventflow_request_duration_seconds"],
        "histogram"
    );
    assert_eq!(s.families["eventflow_produced_records"], "counter");

    // A second scrape after more traffic: the counters grew by exactly that.
    let more = common::batch("more", 9, 10, common::now_ms());
    let more_bytes = more.len() as f64;
    client.produce("metered", 1, more, Acks::All).unwrap();
    let t = scrape(&broker);
    assert_eq!(
        t.value("eventflow_produced_records_total", &topic),
        s.value("eventflow_produced_records_total", &topic) + 9.0
    );
    assert_eq!(
        t.value("eventflow_produced_bytes_total", &topic),
        s.value("eventflow_produced_bytes_total", &topic) + more_bytes
    );
    assert!(t.value("eventflow_uptime_seconds", &[]) >= s.value("eventflow_uptime_seconds", &[]));
    assert!(t.value("process_cpu_seconds_total", &[]) >= s.value("process_cpu_seconds_total", &[]));
}

#[test]
fn kafka_clients_are_counted_on_the_kafka_listener() {
    if !parser_available() {
        return;
    }
    let kcat = Command::new("kcat")
        .arg("-V")
        .output()
        .is_ok_and(|out| out.status.success());
    if !common::kafka_client_available("kcat", kcat, "apt-get install kcat") {
        return;
    }
    let broker = Broker::start(&["--cores", "2"]);
    broker.client().create_topic("from-kafka", 1, &[]).unwrap();
    let mut child = Command::new("kcat")
        .arg("-b")
        .arg(broker.kafka.unwrap().to_string())
        .args(["-P", "-t", "from-kafka", "-p", "0"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kcat");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"one\ntwo\nthree\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let s = scrape(&broker);
    assert_eq!(
        s.value(
            "eventflow_produced_records_total",
            &[("topic", "from-kafka")]
        ),
        3.0
    );
    assert!(
        s.value(
            "eventflow_connections_accepted_total",
            &[("listener", "kafka")]
        ) >= 1.0
    );
    let produce = [("protocol", "kafka"), ("api", "Produce")];
    assert!(s.value("eventflow_request_duration_seconds_count", &produce) >= 1.0);
    assert!(
        s.value(
            "eventflow_requests_total",
            &[produce[0], produce[1], ("error", "none")]
        ) >= 1.0
    );
}

#[test]
fn partition_labels_split_traffic_by_partition() {
    if !parser_available() {
        return;
    }
    let broker = Broker::start(&["--cores", "2", "--metrics-partition-labels"]);
    let mut client = broker.client();
    client.create_topic("split", 3, &[]).unwrap();
    for partition in 0..3u32 {
        let n = 2 + partition as usize;
        let batch = common::batch("s", n, 10, common::now_ms());
        client
            .produce("split", partition, batch, Acks::All)
            .unwrap();
    }
    let s = scrape(&broker);
    for partition in 0..3u32 {
        let labels = [("topic", "split"), ("partition", &*partition.to_string())];
        assert_eq!(
            s.value("eventflow_produced_records_total", &labels),
            f64::from(2 + partition)
        );
    }
    // Only the per-partition series: a sum by topic counts each record once.
    let total: f64 = s
        .matching("eventflow_produced_records_total", &[("topic", "split")])
        .map(|s| s.value)
        .sum();
    assert_eq!(total, 9.0);
}

#[test]
fn paced_group_commit_rounds_gather_every_producers_batch() {
    if !parser_available() {
        return;
    }
    // Four producers, each sending three durable batches one after another, to a broker
    // whose rounds start at least 300 ms apart: each round takes the batch every waiting
    // producer has queued, so there are about as many rounds as batches per producer.
    let interval = Duration::from_millis(300);
    let broker = Broker::start(&["--cores", "1", "--group-commit-interval-us", "300000"]);
    broker.client().create_topic("paced", 1, &[]).unwrap();
    let clients: Vec<_> = (0..4).map(|_| broker.client()).collect();
    let started = std::time::Instant::now();
    let threads: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            std::thread::spawn(move || {
                for _ in 0..3 {
                    let batch = common::batch("p", 2, 10, common::now_ms());
                    client.produce("paced", 0, batch, Acks::All).unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    // Every producer's third batch waited for at least two intervals after its first.
    assert!(started.elapsed() >= 2 * interval, "{:?}", started.elapsed());
    let s = scrape(&broker);
    assert_eq!(
        s.value("eventflow_group_commit_round_batches_sum", &[]),
        12.0
    );
    let rounds = s.value("eventflow_group_commit_round_batches_count", &[]);
    assert!(
        (3.0..=5.0).contains(&rounds),
        "{rounds} rounds for 12 batches"
    );
}

/// The TCP ports process `pid` listens on, from /proc.
fn listening_ports(pid: u32) -> BTreeSet<u16> {
    let inodes: BTreeSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let mut ports = BTreeSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address is field 1 (ADDR:PORT in hex), st field 3 (0A: LISTEN), inode 9.
            if f.len() > 9 && f[3] == "0A" && inodes.contains(f[9]) {
                let port = f[1].rsplit(':').next().unwrap();
                ports.insert(u16::from_str_radix(port, 16).unwrap());
            }
        }
    }
    ports
}

#[test]
fn no_metrics_leaves_no_metrics_listener() {
    let broker = Broker::start(&["--cores", "2", "--no-metrics"]);
    assert_eq!(broker.metrics, None, "the ready line says metrics= (empty)");
    let mut expected: BTreeSet<u16> = broker.direct.iter().map(SocketAddr::port).collect();
    expected.insert(broker.addr.port());
    expected.insert(broker.kafka.unwrap().port());
    expected.insert(broker.http.unwrap().port());
    assert_eq!(listening_ports(broker.pid()), expected);

    // With metrics: one more port, the one the ready line names.
    let with = Broker::start(&["--cores", "2"]);
    let metrics = with.metrics.unwrap();
    let ports = listening_ports(with.pid());
    assert!(ports.contains(&metrics.port()), "{ports:?} vs {metrics}");
    assert_eq!(ports.len(), expected.len() + 1);
}

#[test]
fn the_http_listener_answers_unknown_paths_with_404_and_bounds_request_heads() {
    let broker = Broker::start(&["--cores", "1"]);
    let addr = broker.metrics.unwrap();
    let (status, _, _) = http_get(addr, "/nowhere");
    assert!(status.contains(" 404 "), "{status}");
    // A head far over the bound is refused, and the listener goes on serving.
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let huge = "x".repeat(64 << 10);
    let _ = write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: a\r\nX-Big: {huge}\r\n\r\n"
    );
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer}"
    );
    let (status, _, body) = http_get(addr, "/metrics");
    assert!(status.contains(" 200 "), "{status}");
    assert!(body.contains("# TYPE eventflow_uptime_seconds gauge"));
}

#[test]
fn the_grafana_dashboard_queries_only_metrics_the_broker_exports() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/eventflow.json");
    let text = std::fs::read_to_string(path).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 8, "{} queries", exprs.len());

    // The families a broker exposes (every one is written, with or without samples).
    let broker = Broker::start(&["--cores", "1"]);
    let (_, _, body) = http_get(broker.metrics.unwrap(), "/metrics");
    let exported: BTreeSet<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let mut used = BTreeSet::new();
    for expr in &exprs {
        for name in metric_names(expr) {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix).filter(|f| exported.contains(f)))
                .unwrap_or(&name);
            assert!(
                exported.contains(family),
                "the dashboard's `{expr}` names {name}, which the broker does not export"
            );
            used.insert(family.to_string());
        }
    }
    for wanted in [
        "eventflow_produced_bytes_total",
        "eventflow_request_duration_seconds",
        "eventflow_consumer_group_lag",
        "eventflow_partition_size_bytes",
    ] {
        assert!(used.contains(wanted), "the dashboard shows no {wanted}");
    }
}

fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// The metric names in a PromQL expression: identifiers that start with `eventflow_` or
/// `process_` (label names and functions never do).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut current = String::new();
    for c in expr.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            current.push(c);
        } else {
            if current.starts_with("eventflow_") || current.starts_with("process_") {
                names.push(current.clone());
            }
            current.clear();
        }
    }
    names
}

#[test]
fn idle_http_clients_cost_the_shards_nothing_and_are_bounded() {
    let broker = Broker::start(&["--cores", "2"]);
    let addr = broker.metrics.unwrap();
    // More silent connections than the listener serves at once (64): the extra ones wait
    // in the kernel's backlog, unaccepted.
    let silent: Vec<TcpStream> = (0..80).map(|_| TcpStream::connect(addr).unwrap()).collect();
    // The shards serve as before.
    let mut client = broker.client();
    client.create_topic("busy", 1, &[]).unwrap();
    let batch = common::batch("b", 10, 10, common::now_ms());
    client.produce("busy", 0, batch, Acks::All).unwrap();
    // The silent ones are closed after the head timeout (5 s), and a scrape gets through.
    let (status, _, body) = http_get(addr, "/metrics");
    assert!(status.contains(" 200 "), "{status}");
    assert!(body.contains("eventflow_produced_records_total{topic=\"busy\"} 10\n"));
    drop(silent);
}
