//! What a run produces: the settings, the machine, throughput, merged latency histograms and
//! the rate over time, saved as JSON so that `report` can redraw it later.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use base64::Engine;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::ceiling::Ceiling;
use crate::machine::Machine;
use crate::workload::Workload;

/// Latency histograms record microseconds, from 1 µs to an hour, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// Names of the latency series a run may carry.
pub mod series {
    /// Ack time minus the actual `send` call.
    pub const PUBLISH: &str = "publish";
    /// Ack time minus the intended send time (open-loop schedule): no coordinated omission.
    pub const PUBLISH_INTENDED: &str = "publish_intended";
    /// Actual `send` minus intended send time: how far the client fell behind the schedule.
    pub const PUBLISH_DELAY: &str = "publish_delay";
    /// Receive time minus the intended send time carried in the record.
    pub const E2E: &str = "e2e";
    /// Receive time minus the actual send time carried in the record.
    pub const E2E_ACTUAL: &str = "e2e_actual";
}

/// One run of one workload against one target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// `produce`, `consume` or `e2e`.
    pub kind: String,
    /// A short label for tables (`Workload::label`).
    pub label: String,
    /// `eventflow` or `kafka`.
    pub target_kind: String,
    /// The target's address (`eventflow://127.0.0.1:9292`).
    pub target: String,
    /// The workload knobs.
    pub workload: Workload,
    /// The client settings the knobs mapped to.
    pub client_settings: Vec<(String, String)>,
    /// The broker's durability setting, in words (`--fsync always`, `Kafka default: no fsync`).
    pub durability: String,
    /// Broker flags when the harness started the broker itself.
    pub broker_flags: Option<String>,
    /// Where it ran.
    pub machine: Machine,
    /// Round number in a comparison (0 outside `compare`).
    pub round: u32,
    /// Start time, seconds since the Unix epoch.
    pub started_unix_s: u64,
    /// Length of the measured phase (warm-up excluded), seconds.
    pub elapsed_s: f64,
    /// Records acknowledged (or sent, with acks=0) in the measured phase.
    pub produced: Option<Throughput>,
    /// Records consumed in the measured phase.
    pub consumed: Option<Throughput>,
    /// Latency series by name (see [`series`]).
    pub latency: BTreeMap<String, Latency>,
    /// Rates per interval over the run, warm-up included (`t_s` from the start).
    pub timeline: Vec<Sample>,
    /// The harness's own CPU time (user + system) over the measured phase, seconds.
    pub harness_cpu_s: f64,
    /// Of the machine's CPU time over the measured phase, the percentage the hypervisor
    /// stole (`steal` in /proc/stat): on a VM whose host caps its share, stalls of whole
    /// milliseconds that land in every latency percentile they reach. `None` in results
    /// saved before it was measured, or where /proc/stat has no steal.
    #[serde(default)]
    pub steal_pct: Option<f64>,
    /// Requests per second the machine's disks completed over the measured phase
    /// (/proc/diskstats). On VMs whose host charges its disk emulation to the VM's CPU,
    /// many small requests come with stolen time (docs/PERFORMANCE.md). `None` in results
    /// saved before it was measured.
    #[serde(default)]
    pub disk_requests_per_s: Option<crate::machine::DiskRequests>,
    /// Broker process usage, when its PID was given or the harness started it.
    pub broker: Option<BrokerUsage>,
    /// Sends or fetches that failed.
    pub errors: u64,
    /// The first failure's message.
    #[serde(default)]
    pub first_error: Option<String>,
    /// Records sent (and acknowledged) but never consumed (`consume` and `e2e`).
    pub missing: u64,
    /// Records consumed more than once.
    pub duplicates: u64,
    /// The machine's ceilings, measured by the same `compare` before its runs.
    #[serde(default)]
    pub ceiling: Option<Ceiling>,
}

/// A target that `compare` left out because it did not answer, and the error it gave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    pub target: String,
    pub reason: String,
}

/// Beside `results.json`: the targets a comparison skipped, for `report` to redraw.
pub const SKIPPED_FILE: &str = "skipped.json";

/// Writes `dir/skipped.json`, or removes a stale one when nothing was skipped.
pub fn save_skipped(dir: &Path, skipped: &[Skipped]) -> Result<()> {
    let path = dir.join(SKIPPED_FILE);
    if skipped.is_empty() {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", path.display()))
            }
            _ => Ok(()),
        };
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = serde_json::to_string_pretty(skipped)?;
    std::fs::write(&path, json).with_context(|| format!("writing {}", path.display()))
}

/// Reads `dir/skipped.json`; none when the file is not there.
pub fn load_skipped(dir: &Path) -> Result<Vec<Skipped>> {
    let path = dir.join(SKIPPED_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// A message and byte count over the measured phase.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Throughput {
    pub messages: u64,
    pub bytes: u64,
    pub msgs_per_s: f64,
    /// 10^6 bytes per second.
    pub mb_per_s: f64,
}

impl Throughput {
    pub fn new(messages: u64, bytes: u64, elapsed_s: f64) -> Throughput {
        let secs = elapsed_s.max(1e-9);
        Throughput {
            messages,
            bytes,
            msgs_per_s: messages as f64 / secs,
            mb_per_s: bytes as f64 / secs / 1e6,
        }
    }
}

/// Percentiles in microseconds, and the whole histogram (HdrHistogram V2, deflated, base64).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub p9999_us: u64,
    pub max_us: u64,
    pub histogram: String,
}

impl Latency {
    /// Summarizes and serializes a merged histogram.
    pub fn from_histogram(h: &Histogram<u64>) -> Latency {
        Latency {
            count: h.len(),
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.5),
            p90_us: h.value_at_quantile(0.9),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            p9999_us: h.value_at_quantile(0.9999),
            max_us: h.max(),
            histogram: encode_histogram(h),
        }
    }

    /// The stored histogram.
    pub fn histogram(&self) -> Result<Histogram<u64>> {
        decode_histogram(&self.histogram)
    }
}

/// Rates over one sampling interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// End of the interval, seconds since the run started.
    pub t_s: f64,
    /// Records acknowledged per second (sent, with acks=0).
    pub produced_per_s: f64,
    /// Records consumed per second.
    pub consumed_per_s: f64,
}

/// The broker's CPU and memory over the measured phase, from /proc/PID.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BrokerUsage {
    pub pid: u32,
    /// User + system CPU seconds over the measured phase.
    pub cpu_s: f64,
    /// CPU seconds per million records (produced + consumed) in the measured phase.
    pub cpu_s_per_million: f64,
    /// Resident set at the start of the run, KiB.
    pub rss_start_kib: u64,
    /// Largest resident set sampled during the run, KiB.
    pub rss_peak_kib: u64,
}

/// HdrHistogram V2 + deflate, base64 (standard alphabet): what HdrHistogram's other
/// implementations and its online plotter read.
pub fn encode_histogram(h: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    V2DeflateSerializer::new()
        .serialize(h, &mut bytes)
        .expect("serializing into a Vec cannot fail");
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Reverses [`encode_histogram`].
pub fn decode_histogram(s: &str) -> Result<Histogram<u64>> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .context("histogram is not base64")?;
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| anyhow::anyhow!("histogram does not decode: {e:?}"))
}

/// Writes results as pretty JSON.
pub fn save(path: &Path, results: &[RunResult]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let json = serde_json::to_string_pretty(results)?;
    std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))
}

/// Reads results written by [`save`] (a JSON array, or a single result).
pub fn load(path: &Path) -> Result<Vec<RunResult>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    if text.trim_start().starts_with('[') {
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    } else {
        Ok(vec![
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Merging per-worker histograms gives the percentiles of all samples together, which
    /// averaging the workers' percentiles would not.
    #[test]
    fn merged_histograms_keep_every_sample() {
        let mut fast = new_histogram();
        let mut slow = new_histogram();
        for _ in 0..990 {
            fast.record(100).unwrap();
        }
        for _ in 0..10 {
            slow.record(50_000).unwrap();
        }
        let mut merged = new_histogram();
        merged.add(&fast).unwrap();
        merged.add(&slow).unwrap();
        assert_eq!(merged.len(), 1000);
        assert_eq!(merged.value_at_quantile(0.5), 100);
        // p99.5 is a slow sample: 10 of 1000 are slow.
        assert!(merged.value_at_quantile(0.995) >= 49_000);
        let averaged_p99 = (fast.value_at_quantile(0.99) + slow.value_at_quantile(0.99)) / 2;
        assert_ne!(merged.value_at_quantile(0.99), averaged_p99);
    }

    #[test]
    fn histograms_round_trip_through_text() {
        let mut h = new_histogram();
        for v in [1, 7, 250, 1_000, 65_000, 2_000_000] {
            h.record_n(v, v % 13 + 1).unwrap();
        }
        let back = decode_histogram(&encode_histogram(&h)).unwrap();
        assert_eq!(back.len(), h.len());
        for q in [0.0, 0.5, 0.9, 0.99, 1.0] {
            assert_eq!(back.value_at_quantile(q), h.value_at_quantile(q));
        }
        assert!(decode_histogram("not base64!").is_err());
    }

    #[test]
    fn results_round_trip_through_json() {
        let mut h = new_histogram();
        h.record(42).unwrap();
        let mut latency = BTreeMap::new();
        latency.insert(series::PUBLISH.to_string(), Latency::from_histogram(&h));
        let result = RunResult {
            kind: "produce".into(),
            label: "produce 100B".into(),
            target_kind: "eventflow".into(),
            target: "eventflow://127.0.0.1:9292".into(),
            workload: Workload::default(),
            client_settings: vec![("acks".into(), "all".into())],
            durability: "--fsync always".into(),
            broker_flags: Some("--cores 2".into()),
            machine: Machine::default(),
            round: 1,
            started_unix_s: 1,
            elapsed_s: 2.5,
            produced: Some(Throughput::new(1000, 100_000, 2.5)),
            consumed: None,
            latency,
            timeline: vec![Sample {
                t_s: 1.0,
                produced_per_s: 400.0,
                consumed_per_s: 0.0,
            }],
            harness_cpu_s: 0.5,
            steal_pct: None,
            disk_requests_per_s: None,
            broker: None,
            errors: 0,
            first_error: None,
            missing: 0,
            duplicates: 0,
            ceiling: None,
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r/results.json");
        save(&path, std::slice::from_ref(&result)).unwrap();
        assert_eq!(load(&path).unwrap(), vec![result]);
    }
}
