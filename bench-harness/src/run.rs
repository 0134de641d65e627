//! One run: producers on an open-loop schedule, consumers checking every record, a monitor
//! that samples rates, CPU and memory, and the merge of everything into a [`RunResult`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};

use crate::clock::{self, now_ns, Schedule};
use crate::machine::{self, Machine};
use crate::result::{new_histogram, series, BrokerUsage, Latency, RunResult, Sample, Throughput};
use crate::target::{AckSink, ConsumerWorker, OutgoingRecord, ProducerWorker, Target};
use crate::workload::{parse_cpus, Backlog, Keys, Stamp, Workload};

/// What a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Producers only: acknowledged records per second and publish latency.
    Produce,
    /// Consumers reading a backlog that producers filled first (not measured).
    Consume,
    /// Producers and consumers at once: end-to-end latency from the stamp in each record.
    E2e,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Produce => "produce",
            Kind::Consume => "consume",
            Kind::E2e => "e2e",
        }
    }

    pub fn parse(s: &str) -> Result<Kind> {
        match s {
            "produce" => Ok(Kind::Produce),
            "consume" => Ok(Kind::Consume),
            "e2e" => Ok(Kind::E2e),
            other => bail!("unknown run kind `{other}` (produce, consume or e2e)"),
        }
    }
}

/// Everything about a run that is not the workload.
pub struct RunContext<'a> {
    pub target: &'a dyn Target,
    /// The broker's process, for CPU and RSS readings.
    pub broker_pid: Option<u32>,
    /// The broker's durability setting in words, for the report.
    pub durability: String,
    /// Broker flags, when the harness started the broker.
    pub broker_flags: Option<String>,
    /// The broker's data directory, for the filesystem fact.
    pub data_dir: Option<PathBuf>,
    /// Round number within a comparison.
    pub round: u32,
    /// Draw a progress bar on stderr (hidden anyway when stderr is not a terminal).
    pub progress: bool,
}

/// A run stops with an error when no record moves for this long.
const STALL: Duration = Duration::from_secs(30);
/// After the producers finish, consumers get this long without progress to catch up.
const DRAIN: Duration = Duration::from_secs(10);
/// How often the monitor wakes (progress, RSS).
const TICK: Duration = Duration::from_millis(100);
/// Timeline resolution.
const SAMPLE_EVERY_NS: u64 = 1_000_000_000;
/// Records a producer sends between updates of the shared counters.
const REPORT_EVERY: u64 = 256;
/// A closed-loop producer hands its client up to this many records at once
/// (`ProducerWorker::send_many`), and at most `SLICE_BYTES` of values: a client with a call
/// that queues many records pays its per-call costs once per slice. A record's send time
/// is taken as it joins the slice, so its publish latency includes the rest of the slice's
/// stamping (a few µs at 64 records). Open-loop producers
/// send each record when it is due, and so does every producer with
/// `EVENTFLOW_BENCH_NO_SLICES` set (to measure what slices change).
const SLICE_RECORDS: usize = 64;
const SLICE_BYTES: usize = 64 << 10;

/// Counters every worker adds to; the monitor reads them.
#[derive(Default)]
struct Totals {
    sent: AtomicU64,
    acked: AtomicU64,
    consumed: AtomicU64,
    errors: AtomicU64,
    /// The first error's message, for the result.
    first_error: Mutex<Option<String>>,
    /// Set when the run must end now (error, stall, or consumers done).
    stop: AtomicBool,
    /// Per producer, a bound on the sequence numbers it has stamped so far, raised before
    /// each record goes out: a consumer holding a stamp at or above its producer's bound
    /// (or of a producer the run does not have) got another writer's record.
    issued: Vec<AtomicU64>,
}

impl Totals {
    fn new(producers: u32) -> Totals {
        Totals {
            issued: (0..producers).map(|_| AtomicU64::new(0)).collect(),
            ..Totals::default()
        }
    }

    /// Counts an error; keeps its message if it is the first.
    fn error(&self, message: impl FnOnce() -> String) {
        if self.errors.fetch_add(1, Ordering::Relaxed) == 0 {
            *self
                .first_error
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(message());
        }
    }
}

/// Tells every worker to stop when dropped.
struct StopOnDrop<'a>(&'a Totals);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::Relaxed);
    }
}

/// The measured window: records whose intended send time falls in it count.
#[derive(Debug, Clone, Copy)]
struct Window {
    start_ns: u64,
    end_ns: u64,
}

impl Window {
    /// Every record counts (a consume run's backlog).
    const ALL: Window = Window {
        start_ns: 0,
        end_ns: u64::MAX,
    };

    fn contains(&self, t: u64) -> bool {
        t >= self.start_ns && t < self.end_ns
    }
}

/// When the producers' schedule starts and which records count. It is fixed once every
/// producer is connected, just before the first send, so that connecting does not eat into
/// the window; acks and consumers read it afterwards.
#[derive(Debug, Clone, Copy)]
struct Timing {
    start_ns: u64,
    window: Window,
}

type SharedTiming = Arc<OnceLock<Timing>>;

/// Which records a producer phase measures.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Filling a backlog: everything counts toward the check, nothing is timed.
    Fill,
    /// Measuring after a warm-up, for a duration or until the budget is sent.
    Measure {
        warmup: Duration,
        duration: Option<Duration>,
    },
}

/// Delivery tags carry the send times back to the ack callback without a lookup: with a
/// schedule, the record's index (its intended time follows from it) and how late it was
/// sent in µs; without one, the send time in µs.
mod tag {
    use crate::clock::Schedule;

    const DELAY_BITS: u32 = 24;
    const DELAY_MAX: u64 = (1 << DELAY_BITS) - 1;

    pub(super) fn encode(schedule: &Schedule, k: u64, intended_ns: u64, sent_ns: u64) -> u64 {
        if schedule.is_open_loop() {
            let delay_us = (sent_ns.saturating_sub(intended_ns) / 1000).min(DELAY_MAX);
            (k << DELAY_BITS) | delay_us
        } else {
            sent_ns / 1000
        }
    }

    /// (intended, sent) in ns.
    pub(super) fn decode(schedule: &Schedule, tag: u64) -> (u64, u64) {
        if schedule.is_open_loop() {
            let intended = schedule.intended_ns(tag >> DELAY_BITS);
            (intended, intended + (tag & DELAY_MAX) * 1000)
        } else {
            let sent = tag * 1000;
            (sent, sent)
        }
    }
}

/// One producer's acknowledgements (called on client threads).
struct ProducerSink {
    /// This producer's share of the rate.
    rate: f64,
    timing: SharedTiming,
    totals: Arc<Totals>,
    state: Mutex<SinkState>,
}

struct SinkState {
    publish: Histogram<u64>,
    publish_intended: Histogram<u64>,
    acked_measured: u64,
    last_ack_ns: u64,
}

impl AckSink for ProducerSink {
    fn acked(&self, tag: u64, error: Option<&dyn std::fmt::Display>) {
        self.acked_many(std::slice::from_ref(&tag), error);
    }

    /// One clock reading, one count and one lock for the whole run: a batch's records were
    /// acknowledged at one instant.
    fn acked_many(&self, tags: &[u64], error: Option<&dyn std::fmt::Display>) {
        if let Some(e) = error {
            for _ in tags {
                self.totals.error(|| format!("delivery failed: {e}"));
            }
            return;
        }
        let now = now_ns();
        self.totals
            .acked
            .fetch_add(tags.len() as u64, Ordering::Relaxed);
        let Some(timing) = self.timing.get() else {
            return;
        };
        let schedule = Schedule::new(timing.start_ns, self.rate);
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let s = &mut *s;
        let before = s.acked_measured;
        // Records sent within one microsecond of each other have one latency: a run of
        // them is one histogram update.
        let (mut publish, mut publish_intended) = (Repeats::default(), Repeats::default());
        for &tag in tags {
            let (intended, sent) = tag::decode(&schedule, tag);
            if timing.window.contains(intended) {
                publish.add(&mut s.publish, now.saturating_sub(sent) / 1000);
                publish_intended.add(&mut s.publish_intended, now.saturating_sub(intended) / 1000);
                s.acked_measured += 1;
            }
        }
        publish.flush(&mut s.publish);
        publish_intended.flush(&mut s.publish_intended);
        if s.acked_measured > before {
            s.last_ack_ns = s.last_ack_ns.max(now);
        }
    }
}

/// Equal values in a row, recorded into a histogram with one call.
#[derive(Default)]
struct Repeats {
    value: u64,
    count: u64,
}

impl Repeats {
    fn add(&mut self, histogram: &mut Histogram<u64>, value: u64) {
        if self.count > 0 && value != self.value {
            self.flush(histogram);
        }
        self.value = value;
        self.count += 1;
    }

    fn flush(&mut self, histogram: &mut Histogram<u64>) {
        if self.count > 0 {
            histogram.saturating_record_n(self.value, self.count);
            self.count = 0;
        }
    }
}

/// What a producer thread reports at the end.
struct ProducerOutcome {
    delay: Histogram<u64>,
    /// Records sent per sequence number (for the consumers' check): 0..sent.
    sent: u64,
}

/// What a consumer thread reports at the end.
struct ConsumerOutcome {
    e2e: Histogram<u64>,
    e2e_actual: Histogram<u64>,
    measured: u64,
    measured_bytes: u64,
    last_ns: u64,
    /// Per producer, a bit per sequence number seen.
    seen: Vec<Vec<u64>>,
    duplicates: u64,
    /// Records without the harness's stamp, or with one no producer of this run wrote
    /// (another writer on the topic).
    foreign: u64,
}

/// Runs one workload against one target.
pub fn run(kind: Kind, w: &Workload, ctx: &RunContext<'_>) -> Result<RunResult> {
    w.validate(kind)?;
    let cpus = w.cpus.as_deref().map(parse_cpus).transpose()?;
    ctx.target.prepare_topic(w)?;
    let marks = ctx.target.watermarks(w)?;
    // An existing backlog is read from the earliest offsets and only counted: its records
    // may come from several earlier runs, whose sequence numbers repeat.
    let existing = kind == Kind::Consume && w.backlog == Backlog::Existing;
    let start_offsets: Vec<i64> = marks
        .iter()
        .map(|&(low, high)| if existing { low } else { high })
        .collect();
    let stored: u64 = marks
        .iter()
        .map(|&(low, high)| (high - low).max(0) as u64)
        .sum();
    if existing && stored == 0 {
        bail!("--backlog existing: topic {} holds no records", w.topic);
    }
    let started_unix_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let machine = Machine::read(ctx.data_dir.as_deref());
    let broker_pid = ctx.broker_pid.map(|p| p.to_string());
    let rss_start_kib = broker_pid.as_deref().and_then(machine::process_rss_kib);

    let totals = Arc::new(Totals::new(w.producers));
    let budget = w.message_budget();
    let mut monitor = Monitor::new(ctx, w, kind, broker_pid.clone());

    // Consume: fill the backlog first, unmeasured, then read it.
    let mut fill_sent = Vec::new();
    if kind == Kind::Consume && !existing {
        let fill = Workload {
            rate: 0,
            warmup: Duration::ZERO,
            duration: None,
            ..w.clone()
        };
        let (outcomes, _) = run_producers(
            ctx,
            &fill,
            &cpus,
            Phase::Fill,
            &Arc::default(),
            budget,
            &totals,
            &mut monitor,
            "filling",
        )?;
        fill_sent = outcomes.iter().map(|o| o.sent).collect();
        if totals.errors.load(Ordering::Relaxed) > 0 {
            bail!(
                "{} records failed while filling the backlog",
                totals.errors.load(Ordering::Relaxed)
            );
        }
    }

    let timing = SharedTiming::default();
    let mut producers = Vec::new();
    let mut sinks = Vec::new();
    let mut consumers = Vec::new();
    std::thread::scope(|scope| -> Result<()> {
        // However this closure ends (an error, a panicked thread), the threads still
        // running must stop, or the scope would wait for them forever.
        let _stop = StopOnDrop(&totals);
        let mut consumer_handles = Vec::new();
        if kind != Kind::Produce {
            let workers = (0..w.consumers)
                .map(|i| ctx.target.consumer(w, i, &start_offsets))
                .collect::<Result<Vec<_>>>()?;
            // Like the producers' schedule, a consume run's clock starts once every
            // consumer is connected (and in its group), so connecting is not measured.
            if kind == Kind::Consume {
                let start_ns = now_ns();
                let _ = timing.set(Timing {
                    start_ns,
                    window: Window::ALL,
                });
                monitor.begin(start_ns, &totals);
            }
            for (i, worker) in (0..w.consumers).zip(workers) {
                let totals = totals.clone();
                let timing = timing.clone();
                let pin = pin_for(&cpus, (w.producers + i) as usize);
                let record_latency = kind == Kind::E2e;
                consumer_handles.push(scope.spawn(move || {
                    pin_current(pin);
                    consume_loop(worker, &timing, record_latency, !existing, &totals)
                }));
            }
        }
        if kind != Kind::Consume {
            let (outcomes, s) = run_producers_in(
                scope,
                ctx,
                w,
                &cpus,
                Phase::Measure {
                    warmup: w.warmup,
                    duration: w.duration,
                },
                &timing,
                budget,
                &totals,
                &mut monitor,
                "measuring",
            )?;
            producers = outcomes;
            sinks = s;
        } else {
            producers = fill_sent
                .iter()
                .map(|&sent| ProducerOutcome {
                    delay: new_histogram(),
                    sent,
                })
                .collect();
        }
        if !consumer_handles.is_empty() {
            let expected = if existing {
                budget.unwrap_or(u64::MAX).min(stored)
            } else {
                totals.acked.load(Ordering::Relaxed)
            };
            monitor.drain(&totals, expected, &consumer_handles);
            totals.stop.store(true, Ordering::Relaxed);
            for h in consumer_handles {
                consumers.push(
                    h.join()
                        .map_err(|_| anyhow::anyhow!("a consumer thread panicked"))??,
                );
            }
        }
        Ok(())
    })?;
    monitor.finish();
    let measure_start_ns = timing
        .get()
        .map_or_else(now_ns, |t| t.window.start_ns.max(t.start_ns));

    // Merge.
    let mut latency = BTreeMap::new();
    let mut produced = None;
    let mut last_ns = measure_start_ns;
    if kind != Kind::Consume {
        let mut publish = new_histogram();
        let mut publish_intended = new_histogram();
        let mut delay = new_histogram();
        let mut measured = 0;
        for sink in &sinks {
            let s = sink
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            publish.add(&s.publish)?;
            publish_intended.add(&s.publish_intended)?;
            measured += s.acked_measured;
            last_ns = last_ns.max(s.last_ack_ns);
        }
        for p in &producers {
            delay.add(&p.delay)?;
        }
        let elapsed_s = (last_ns - measure_start_ns) as f64 / 1e9;
        produced = Some(Throughput::new(
            measured,
            measured * w.message_size as u64,
            elapsed_s,
        ));
        insert(&mut latency, series::PUBLISH, &publish);
        if w.rate > 0 {
            insert(&mut latency, series::PUBLISH_INTENDED, &publish_intended);
            insert(&mut latency, series::PUBLISH_DELAY, &delay);
        }
    }
    let mut consumed = None;
    let (mut missing, mut duplicates) = (0, 0);
    if kind != Kind::Produce {
        let mut e2e = new_histogram();
        let mut e2e_actual = new_histogram();
        let (mut n, mut bytes, mut last, mut foreign) = (0, 0, measure_start_ns, 0);
        for c in &consumers {
            e2e.add(&c.e2e)?;
            e2e_actual.add(&c.e2e_actual)?;
            n += c.measured;
            bytes += c.measured_bytes;
            last = last.max(c.last_ns);
            duplicates += c.duplicates;
            foreign += c.foreign;
        }
        if foreign > 0 {
            tracing_note(&format!(
                "{foreign} records the harness's producers did not write were skipped"
            ));
        }
        if existing {
            let wanted = budget.unwrap_or(u64::MAX).min(stored);
            missing = wanted.saturating_sub(n + foreign);
        } else {
            let (m, d) = check_delivery(&producers, &consumers);
            missing = m;
            duplicates += d;
        }
        let elapsed_s = (last - measure_start_ns) as f64 / 1e9;
        consumed = Some(Throughput::new(n, bytes, elapsed_s));
        last_ns = last_ns.max(last);
        if kind == Kind::E2e {
            insert(&mut latency, series::E2E, &e2e);
            insert(&mut latency, series::E2E_ACTUAL, &e2e_actual);
        }
    }
    let elapsed_s = (last_ns - measure_start_ns) as f64 / 1e9;
    let messages = produced.map_or(0, |t| t.messages) + consumed.map_or(0, |t| t.messages);
    let broker = monitor.broker_usage(ctx.broker_pid, rss_start_kib, messages);
    let errors = totals.errors.load(Ordering::Relaxed);
    let first_error = totals
        .first_error
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    if let Some(e) = &first_error {
        eprintln!("eventflow-bench: {errors} errors; the first: {e}");
    }
    Ok(RunResult {
        kind: kind.as_str().into(),
        label: w.label(kind.as_str()),
        target_kind: ctx.target.kind().into(),
        target: ctx.target.url().into(),
        workload: w.clone(),
        client_settings: ctx.target.client_settings(w),
        durability: ctx.durability.clone(),
        broker_flags: ctx.broker_flags.clone(),
        machine,
        round: ctx.round,
        started_unix_s,
        elapsed_s,
        produced,
        consumed,
        latency,
        timeline: std::mem::take(&mut monitor.timeline),
        harness_cpu_s: monitor.harness_cpu_s(),
        steal_pct: monitor.steal_pct(),
        disk_requests_per_s: monitor.disk_requests_per_s(),
        broker,
        errors,
        first_error,
        missing,
        duplicates,
        ceiling: None,
    })
}

fn insert(map: &mut BTreeMap<String, Latency>, name: &str, h: &Histogram<u64>) {
    if !h.is_empty() {
        map.insert(name.to_string(), Latency::from_histogram(h));
    }
}

fn tracing_note(msg: &str) {
    eprintln!("eventflow-bench: {msg}");
}

/// Starts the producers, waits for them and returns their outcomes and ack sinks.
#[allow(clippy::too_many_arguments)]
fn run_producers(
    ctx: &RunContext<'_>,
    w: &Workload,
    cpus: &Option<Vec<usize>>,
    phase: Phase,
    timing: &SharedTiming,
    budget: Option<u64>,
    totals: &Arc<Totals>,
    monitor: &mut Monitor,
    label: &str,
) -> Result<(Vec<ProducerOutcome>, Vec<Arc<ProducerSink>>)> {
    std::thread::scope(|scope| {
        run_producers_in(
            scope, ctx, w, cpus, phase, timing, budget, totals, monitor, label,
        )
    })
}

#[allow(clippy::too_many_arguments)]
fn run_producers_in<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    ctx: &RunContext<'_>,
    w: &'scope Workload,
    cpus: &Option<Vec<usize>>,
    phase: Phase,
    timing: &SharedTiming,
    budget: Option<u64>,
    totals: &Arc<Totals>,
    monitor: &mut Monitor,
    label: &str,
) -> Result<(Vec<ProducerOutcome>, Vec<Arc<ProducerSink>>)> {
    let rate = w.rate as f64 / f64::from(w.producers);
    let mut workers = Vec::new();
    let mut sinks = Vec::new();
    for _ in 0..w.producers {
        let sink = Arc::new(ProducerSink {
            rate,
            timing: timing.clone(),
            totals: totals.clone(),
            state: Mutex::new(SinkState {
                publish: new_histogram(),
                publish_intended: new_histogram(),
                acked_measured: 0,
                last_ack_ns: 0,
            }),
        });
        workers.push(ctx.target.producer(w, sink.clone())?);
        sinks.push(sink);
    }
    // Everyone is connected: the schedule and the window start now.
    let start_ns = now_ns();
    let window = match phase {
        Phase::Fill => Window::ALL,
        Phase::Measure { warmup, duration } => {
            let start = start_ns + warmup.as_nanos() as u64;
            Window {
                start_ns: start,
                end_ns: duration.map_or(u64::MAX, |d| start + d.as_nanos() as u64),
            }
        }
    };
    let _ = timing.set(Timing { start_ns, window });
    if let Phase::Measure { .. } = phase {
        monitor.begin(window.start_ns, totals);
    }
    let schedule = Schedule::new(start_ns, rate);
    let mut handles = Vec::new();
    for (i, worker) in (0..w.producers).zip(workers) {
        let share = budget.map(|b| Workload::share(b, w.producers, i));
        let totals = totals.clone();
        let pin = pin_for(cpus, i as usize);
        handles.push(scope.spawn(move || {
            pin_current(pin);
            let worker = ProducerLoop {
                worker,
                index: i as u16,
                schedule,
                window,
                budget: share,
                keys: w.keys,
                message_size: w.message_size,
                totals: &totals,
            };
            let outcome = worker.run();
            if outcome.is_err() {
                totals.stop.store(true, Ordering::Relaxed);
            }
            outcome
        }));
    }
    monitor.watch_producers(label, totals, &handles);
    let mut outcomes = Vec::new();
    for h in handles {
        outcomes.push(
            h.join()
                .map_err(|_| anyhow::anyhow!("a producer thread panicked"))??,
        );
    }
    if let Some(err) = monitor.failure.take() {
        return Err(err);
    }
    Ok((outcomes, sinks))
}

struct ProducerLoop<'a> {
    worker: Box<dyn ProducerWorker>,
    index: u16,
    schedule: Schedule,
    window: Window,
    /// Records to send inside the window (`None`: until the window ends).
    budget: Option<u64>,
    keys: Keys,
    message_size: usize,
    totals: &'a Totals,
}

impl ProducerLoop<'_> {
    fn run(mut self) -> Result<ProducerOutcome> {
        // The payload is made once; each send rewrites only its 24-byte stamp. A
        // closed-loop producer hands records over a slice at a time (`send_many`), so it
        // keeps one payload per record of a slice.
        let mut rng = SmallRng::seed_from_u64(0x5eed ^ u64::from(self.index));
        let mut payload = vec![0u8; self.message_size];
        rng.fill_bytes(&mut payload);
        let open_loop = self.schedule.is_open_loop();
        let slice_len = if open_loop || std::env::var_os("EVENTFLOW_BENCH_NO_SLICES").is_some() {
            1
        } else {
            (SLICE_BYTES / self.message_size.max(1)).clamp(1, SLICE_RECORDS)
        };
        let mut slice = Slice {
            payloads: vec![payload; slice_len],
            keys: vec![None; slice_len],
            tags: vec![0; slice_len],
            len: 0,
        };
        let mut delay = new_histogram();
        let mut measured = 0u64;
        let mut k = 0u64;
        let mut unreported = 0u64;
        let issued = &self.totals.issued[usize::from(self.index)];
        let mut bound = 0u64;
        while !self.totals.stop.load(Ordering::Relaxed) {
            let intended = if open_loop {
                let due = self.schedule.intended_ns(k);
                clock::sleep_until(due);
                due
            } else {
                0
            };
            let sent = now_ns();
            let intended = if open_loop { intended } else { sent };
            let in_window = intended >= self.window.start_ns;
            if in_window {
                if intended >= self.window.end_ns || self.budget.is_some_and(|b| measured >= b) {
                    break;
                }
                measured += 1;
                if open_loop {
                    delay.saturating_record((sent - intended) / 1000);
                }
            }
            // Raised ahead a batch at a time: one shared store per batch, not per record.
            if k == bound {
                bound += REPORT_EVERY;
                issued.store(bound, Ordering::Relaxed);
            }
            let n = slice.len;
            Stamp {
                intended_ns: intended,
                sent_ns: sent,
                producer: self.index,
                seq: k,
            }
            .write(&mut slice.payloads[n]);
            slice.keys[n] = match self.keys {
                Keys::None => None,
                Keys::Random => Some(rng.next_u64().to_le_bytes()),
                Keys::Seq => Some(k.to_le_bytes()),
            };
            slice.tags[n] = tag::encode(&self.schedule, k, intended, sent);
            slice.len += 1;
            k += 1;
            if slice.len == slice_len {
                self.send(&mut slice, k)?;
            }
            unreported += 1;
            if unreported == REPORT_EVERY {
                self.totals.sent.fetch_add(unreported, Ordering::Relaxed);
                unreported = 0;
            }
        }
        self.send(&mut slice, k)?;
        self.totals.sent.fetch_add(unreported, Ordering::Relaxed);
        self.worker.flush()?;
        Ok(ProducerOutcome { delay, sent: k })
    }

    /// Sends the records stamped into `slice` (`k`: the sequence number after them).
    fn send(&mut self, slice: &mut Slice, k: u64) -> Result<()> {
        let record = |i: usize| OutgoingRecord {
            key: slice.keys[i].as_ref().map(|key| &key[..]),
            value: &slice.payloads[i],
            tag: slice.tags[i],
        };
        // A lone record (every open-loop send) goes without building a list.
        let sent = match slice.len {
            0 => Ok(()),
            1 => {
                let one = record(0);
                self.worker.send(None, one.key, one.value, one.tag)
            }
            n => {
                let many: Vec<OutgoingRecord<'_>> = (0..n).map(record).collect();
                self.worker.send_many(&many)
            }
        };
        sent.with_context(|| {
            format!(
                "producer {} sending records {}..{k}",
                self.index,
                k - slice.len as u64
            )
        })?;
        slice.len = 0;
        Ok(())
    }
}

/// Records a closed-loop producer has stamped and not yet handed to its client.
struct Slice {
    payloads: Vec<Vec<u8>>,
    keys: Vec<Option<[u8; 8]>>,
    tags: Vec<u64>,
    len: usize,
}

fn consume_loop(
    mut worker: Box<dyn ConsumerWorker>,
    timing: &SharedTiming,
    record_latency: bool,
    check: bool,
    totals: &Totals,
) -> Result<ConsumerOutcome> {
    let mut out = ConsumerOutcome::new();
    let issued = check.then_some(&totals.issued[..]);
    while !totals.stop.load(Ordering::Relaxed) {
        let n = worker.poll(Duration::from_millis(100), &mut |value| {
            let now = now_ns();
            // Set before the first send, so every record of this run finds it set.
            let window = timing.get().map_or(Window::ALL, |t| t.window);
            out.receive(value, now, window, record_latency, issued);
        });
        match n {
            Ok(n) => {
                totals.consumed.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) => {
                totals.error(|| format!("consumer poll: {e:#}"));
                totals.stop.store(true, Ordering::Relaxed);
                return Err(e.context("consumer poll"));
            }
        }
    }
    Ok(out)
}

impl ConsumerOutcome {
    fn new() -> ConsumerOutcome {
        ConsumerOutcome {
            e2e: new_histogram(),
            e2e_actual: new_histogram(),
            measured: 0,
            measured_bytes: 0,
            last_ns: 0,
            seen: Vec::new(),
            duplicates: 0,
            foreign: 0,
        }
    }

    /// Takes one record value, received at `now`. With `issued` (the run's per-producer
    /// bounds) its sequence number is marked seen for the delivery check.
    fn receive(
        &mut self,
        value: &[u8],
        now: u64,
        window: Window,
        record_latency: bool,
        issued: Option<&[AtomicU64]>,
    ) {
        let Some(stamp) = Stamp::read(value) else {
            self.foreign += 1;
            return;
        };
        if issued.is_some_and(|issued| !self.mark_seen(&stamp, issued)) {
            self.foreign += 1;
            return;
        }
        if window.contains(stamp.intended_ns) {
            self.measured += 1;
            self.measured_bytes += value.len() as u64;
            self.last_ns = now;
            if record_latency {
                self.e2e
                    .saturating_record(now.saturating_sub(stamp.intended_ns) / 1000);
                self.e2e_actual
                    .saturating_record(now.saturating_sub(stamp.sent_ns) / 1000);
            }
        }
    }

    /// Marks the stamp's sequence number seen; false, touching nothing, when no producer of
    /// this run has stamped it. The bitset grows only up to what a producer has sent, so a
    /// stray stamp cannot make it huge.
    fn mark_seen(&mut self, stamp: &Stamp, issued: &[AtomicU64]) -> bool {
        let producer = usize::from(stamp.producer);
        let sent = issued
            .get(producer)
            .is_some_and(|bound| stamp.seq < bound.load(Ordering::Relaxed));
        if !sent {
            return false;
        }
        let bits = grow(&mut self.seen, producer, stamp.seq);
        let (word, bit) = ((stamp.seq / 64) as usize, 1u64 << (stamp.seq % 64));
        if bits[word] & bit != 0 {
            self.duplicates += 1;
        }
        bits[word] |= bit;
        true
    }
}

/// The bitset of `producer`, long enough to hold `seq`.
fn grow(seen: &mut Vec<Vec<u64>>, producer: usize, seq: u64) -> &mut Vec<u64> {
    if seen.len() <= producer {
        seen.resize_with(producer + 1, Vec::new);
    }
    let bits = &mut seen[producer];
    let words = (seq / 64) as usize + 1;
    if bits.len() < words {
        bits.resize(words.next_power_of_two(), 0);
    }
    bits
}

/// (missing, duplicates across consumers): every sequence number a producer sent must be
/// seen by exactly one consumer.
fn check_delivery(producers: &[ProducerOutcome], consumers: &[ConsumerOutcome]) -> (u64, u64) {
    let (mut missing, mut duplicates) = (0, 0);
    for (p, outcome) in producers.iter().enumerate() {
        for seq in 0..outcome.sent {
            let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
            let seen_by = consumers
                .iter()
                .filter(|c| {
                    c.seen
                        .get(p)
                        .and_then(|b| b.get(word))
                        .is_some_and(|w| w & bit != 0)
                })
                .count() as u64;
            match seen_by {
                0 => missing += 1,
                n => duplicates += n - 1,
            }
        }
    }
    (missing, duplicates)
}

fn pin_for(cpus: &Option<Vec<usize>>, worker: usize) -> Option<usize> {
    cpus.as_ref().map(|c| c[worker % c.len()])
}

fn pin_current(cpu: Option<usize>) {
    if let Some(id) = cpu {
        core_affinity::set_for_current(core_affinity::CoreId { id });
    }
}

/// The run's observer: progress bar, timeline, CPU and RSS readings, stall detection.
struct Monitor {
    bar: ProgressBar,
    broker_pid: Option<String>,
    measure_start_ns: u64,
    harness_cpu_start: f64,
    harness_cpu_end: f64,
    /// The machine's (stolen, total) CPU seconds at the measured phase's start and end.
    steal_start: Option<(f64, f64)>,
    steal_end: Option<(f64, f64)>,
    /// The machine's disk requests at the measured phase's start and end, and when.
    disk_start: Option<(machine::DiskRequests, u64)>,
    disk_end: Option<(machine::DiskRequests, u64)>,
    broker_cpu_start: Option<f64>,
    broker_cpu_end: Option<f64>,
    rss_peak_kib: u64,
    timeline: Vec<Sample>,
    run_start_ns: u64,
    last_sample: (u64, u64, u64),
    failure: Option<anyhow::Error>,
}

impl Monitor {
    fn new(ctx: &RunContext<'_>, w: &Workload, kind: Kind, broker_pid: Option<String>) -> Monitor {
        let bar = if ctx.progress {
            ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(10))
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template("{spinner} {prefix} [{elapsed_precise}] {msg}")
                .expect("valid template"),
        );
        bar.set_prefix(format!("{} {}", ctx.target.kind(), w.label(kind.as_str())));
        let now = now_ns();
        Monitor {
            bar,
            broker_pid,
            measure_start_ns: u64::MAX,
            harness_cpu_start: 0.0,
            harness_cpu_end: 0.0,
            steal_start: None,
            steal_end: None,
            disk_start: None,
            disk_end: None,
            broker_cpu_start: None,
            broker_cpu_end: None,
            rss_peak_kib: 0,
            timeline: Vec::new(),
            run_start_ns: now,
            last_sample: (now, 0, 0),
            failure: None,
        }
    }

    /// The measured window starts at `t` (possibly after a warm-up still to come).
    /// The timeline restarts here (a consume run's backlog fill is not part of it).
    fn begin(&mut self, t: u64, totals: &Totals) {
        self.measure_start_ns = t;
        self.harness_cpu_start = f64::NAN;
        let now = now_ns();
        self.timeline.clear();
        self.run_start_ns = now;
        self.last_sample = (
            now,
            totals.acked.load(Ordering::Relaxed),
            totals.consumed.load(Ordering::Relaxed),
        );
    }

    /// Called every tick: readings, progress, the timeline.
    fn tick(&mut self, phase: &str, totals: &Totals) {
        let now = now_ns();
        if self.harness_cpu_start.is_nan() && now >= self.measure_start_ns {
            self.harness_cpu_start = machine::process_cpu_seconds("self").unwrap_or(0.0);
            self.steal_start = machine::cpu_steal_seconds();
            self.disk_start = machine::disk_requests().map(|d| (d, now));
            self.broker_cpu_start = self
                .broker_pid
                .as_deref()
                .and_then(machine::process_cpu_seconds);
        }
        if let Some(rss) = self
            .broker_pid
            .as_deref()
            .and_then(machine::process_rss_kib)
        {
            self.rss_peak_kib = self.rss_peak_kib.max(rss);
        }
        let acked = totals.acked.load(Ordering::Relaxed);
        let consumed = totals.consumed.load(Ordering::Relaxed);
        let (t0, a0, c0) = self.last_sample;
        if now - t0 >= SAMPLE_EVERY_NS {
            let secs = (now - t0) as f64 / 1e9;
            let sample = Sample {
                t_s: (now - self.run_start_ns) as f64 / 1e9,
                produced_per_s: (acked - a0) as f64 / secs,
                consumed_per_s: (consumed - c0) as f64 / secs,
            };
            self.bar.set_message(format!(
                "{phase}: {} produced/s, {} consumed/s, {} acked, {} consumed",
                crate::workload::human_count(sample.produced_per_s),
                crate::workload::human_count(sample.consumed_per_s),
                acked,
                consumed
            ));
            self.timeline.push(sample);
            self.last_sample = (now, acked, consumed);
        }
        self.bar.tick();
    }

    /// Ticks until every producer thread ends; stops them on a stall.
    fn watch_producers<T>(
        &mut self,
        phase: &str,
        totals: &Totals,
        handles: &[std::thread::ScopedJoinHandle<'_, T>],
    ) {
        let mut progress = (
            totals.sent.load(Ordering::Relaxed),
            totals.acked.load(Ordering::Relaxed),
            now_ns(),
        );
        while !handles
            .iter()
            .all(std::thread::ScopedJoinHandle::is_finished)
        {
            std::thread::sleep(TICK);
            self.tick(phase, totals);
            let now = now_ns();
            let current = (
                totals.sent.load(Ordering::Relaxed),
                totals.acked.load(Ordering::Relaxed),
            );
            if current != (progress.0, progress.1) {
                progress = (current.0, current.1, now);
            } else if now - progress.2 > STALL.as_nanos() as u64 && self.failure.is_none() {
                self.failure = Some(anyhow::anyhow!(
                    "no record sent or acknowledged for {STALL:?}: the broker is stuck or gone"
                ));
                totals.stop.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Ticks until consumers have `expected` records, or made no progress for [`DRAIN`].
    fn drain<T>(
        &mut self,
        totals: &Totals,
        expected: u64,
        handles: &[std::thread::ScopedJoinHandle<'_, T>],
    ) {
        let mut last = (totals.consumed.load(Ordering::Relaxed), now_ns());
        loop {
            let consumed = totals.consumed.load(Ordering::Relaxed);
            if consumed >= expected
                || totals.stop.load(Ordering::Relaxed)
                || handles
                    .iter()
                    .any(std::thread::ScopedJoinHandle::is_finished)
            {
                break;
            }
            std::thread::sleep(TICK);
            self.tick("draining", totals);
            let now = now_ns();
            if consumed != last.0 {
                last = (consumed, now);
            } else if now - last.1 > DRAIN.as_nanos() as u64 {
                // What never arrived is counted as missing.
                break;
            }
        }
    }

    fn finish(&mut self) {
        self.harness_cpu_end = machine::process_cpu_seconds("self").unwrap_or(0.0);
        self.steal_end = machine::cpu_steal_seconds();
        self.disk_end = machine::disk_requests().map(|d| (d, now_ns()));
        if self.harness_cpu_start.is_nan() {
            self.harness_cpu_start = self.harness_cpu_end;
            self.steal_start = self.steal_end;
            self.disk_start = self.disk_end;
        }
        self.broker_cpu_end = self
            .broker_pid
            .as_deref()
            .and_then(machine::process_cpu_seconds);
        if let Some(rss) = self
            .broker_pid
            .as_deref()
            .and_then(machine::process_rss_kib)
        {
            self.rss_peak_kib = self.rss_peak_kib.max(rss);
        }
        self.bar.finish_and_clear();
    }

    fn harness_cpu_s(&self) -> f64 {
        (self.harness_cpu_end - self.harness_cpu_start).max(0.0)
    }

    fn steal_pct(&self) -> Option<f64> {
        Some(machine::steal_percent(self.steal_start?, self.steal_end?))
    }

    fn disk_requests_per_s(&self) -> Option<machine::DiskRequests> {
        let ((start, t0), (end, t1)) = (self.disk_start?, self.disk_end?);
        (t1 > t0).then(|| machine::DiskRequests::rate(start, end, (t1 - t0) as f64 / 1e9))
    }

    fn broker_usage(
        &self,
        pid: Option<u32>,
        rss_start_kib: Option<u64>,
        messages: u64,
    ) -> Option<BrokerUsage> {
        let pid = pid?;
        let cpu_s = (self.broker_cpu_end? - self.broker_cpu_start?).max(0.0);
        Some(BrokerUsage {
            pid,
            cpu_s,
            cpu_s_per_million: if messages > 0 {
                cpu_s / (messages as f64 / 1e6)
            } else {
                0.0
            },
            rss_start_kib: rss_start_kib.unwrap_or(0),
            rss_peak_kib: self.rss_peak_kib,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_record_what_one_call_per_value_records() {
        let values = [5u64, 5, 5, 7, 7, 5, 9, 9, 9, 9, 1, 1_000_000];
        let mut one_by_one = new_histogram();
        let mut grouped = new_histogram();
        let mut repeats = Repeats::default();
        for &v in &values {
            one_by_one.saturating_record(v);
            repeats.add(&mut grouped, v);
        }
        repeats.flush(&mut grouped);
        repeats.flush(&mut grouped); // a second flush adds nothing
        assert_eq!(grouped, one_by_one);
        assert_eq!(grouped.len(), values.len() as u64);
    }

    #[test]
    fn tags_carry_send_times() {
        let open = Schedule::new(1_000_000, 1000.0);
        let intended = open.intended_ns(42);
        let tag = tag::encode(&open, 42, intended, intended + 3_500_000);
        assert_eq!(tag::decode(&open, tag), (intended, intended + 3_500_000));
        let closed = Schedule::new(0, 0.0);
        let tag = tag::encode(&closed, 7, 123_456_000, 123_456_000);
        assert_eq!(tag::decode(&closed, tag), (123_456_000, 123_456_000));
    }

    #[test]
    fn delivery_check_counts_missing_and_duplicates() {
        let producer = |sent| ProducerOutcome {
            delay: new_histogram(),
            sent,
        };
        let consumer = |seqs: &[(usize, u64)]| {
            let mut c = ConsumerOutcome::new();
            for &(p, seq) in seqs {
                let bits = grow(&mut c.seen, p, seq);
                bits[(seq / 64) as usize] |= 1 << (seq % 64);
            }
            c
        };
        let producers = [producer(3), producer(70)];
        let all: Vec<(usize, u64)> = (0..3)
            .map(|s| (0, s))
            .chain((0..70).map(|s| (1, s)))
            .collect();
        assert_eq!(check_delivery(&producers, &[consumer(&all)]), (0, 0));
        let (a, b) = all.split_at(40);
        assert_eq!(
            check_delivery(&producers, &[consumer(a), consumer(b)]),
            (0, 0)
        );
        assert_eq!(check_delivery(&producers, &[consumer(&all[1..])]), (1, 0));
        assert_eq!(
            check_delivery(&producers, &[consumer(&all), consumer(&all[..2])]),
            (0, 2)
        );
    }

    #[test]
    fn stamps_no_producer_of_the_run_wrote_are_foreign() {
        // Producer 0 has stamped up to 255, producer 1 up to 511.
        let issued = [AtomicU64::new(256), AtomicU64::new(512)];
        let mut c = ConsumerOutcome::new();
        let mut take = |value: &[u8]| c.receive(value, 1_000, Window::ALL, true, Some(&issued));
        let stamped = |producer, seq| {
            let mut value = vec![0u8; 100];
            Stamp {
                intended_ns: 10,
                sent_ns: 20,
                producer,
                seq,
            }
            .write(&mut value);
            value
        };
        take(&[0xff; 100]);
        take(b"short");
        take(&stamped(2, 0));
        take(&stamped(u16::MAX, 0));
        take(&stamped(0, 256));
        take(&stamped(1, (1 << 40) - 1));
        assert_eq!(c.foreign, 6);
        assert!(c.seen.is_empty(), "the bitsets grew for foreign stamps");
        assert_eq!((c.measured, c.duplicates), (0, 0));
        assert!(c.e2e.is_empty());

        let mut take = |value: &[u8]| c.receive(value, 1_000, Window::ALL, true, Some(&issued));
        take(&stamped(1, 511));
        take(&stamped(1, 511));
        assert_eq!((c.foreign, c.measured, c.duplicates), (6, 2, 1));
        assert_eq!(c.seen.len(), 2);
        assert_eq!(c.seen[1].len(), 8);
    }
}
