//! The workload knobs every subcommand shares, as command-line flags and as TOML (sweeps and
//! comparisons), and the record layout the harness writes.

use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::run::Kind;

/// Acknowledgement level, mapped to each target's own setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
pub enum Acks {
    /// Fire and forget.
    #[value(name = "0")]
    #[serde(rename = "0")]
    None,
    /// The leader (Eventflow: the owning shard) has it.
    #[value(name = "1")]
    #[serde(rename = "1")]
    Leader,
    /// Every replica has it (on one node: as durable as the broker's fsync setting).
    #[value(name = "all")]
    #[serde(rename = "all")]
    All,
}

impl Acks {
    /// The value as users write it: `0`, `1` or `all`.
    pub fn as_str(self) -> &'static str {
        match self {
            Acks::None => "0",
            Acks::Leader => "1",
            Acks::All => "all",
        }
    }
}

/// How records are keyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Keys {
    /// No key: the client's sticky partitioner fills one batch at a time.
    None,
    /// A random 8-byte key per record (spread by hash).
    Random,
    /// The record's sequence number as an 8-byte key.
    Seq,
}

/// Where a `consume` run's records come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Backlog {
    /// Producers write --messages records first (not measured), then consumers read them
    /// and every one is checked.
    Fill,
    /// Read --messages records (at most what is stored) from the earliest offsets of a
    /// topic filled before, for example by a `produce` run.
    Existing,
}

/// One workload. Every field has a flag; in TOML the same names with `_` for `-`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Args)]
#[serde(default, deny_unknown_fields)]
pub struct Workload {
    /// Topic to use.
    #[arg(long, default_value = "bench")]
    pub topic: String,
    /// Partitions (created with --create-topic; otherwise the topic must have them).
    #[arg(long, default_value_t = 1)]
    pub partitions: u32,
    /// Create the topic first (deleted and recreated if it exists, so runs start empty).
    #[arg(long)]
    pub create_topic: bool,
    /// Producer clients, each on its own thread with its own connection(s).
    #[arg(long, default_value_t = 1)]
    pub producers: u32,
    /// Consumer clients; partition p goes to consumer p mod consumers.
    #[arg(long, default_value_t = 1)]
    pub consumers: u32,
    /// Record value size in bytes (at least 24: the harness's header).
    #[arg(long, default_value_t = 100)]
    pub message_size: usize,
    /// Records to measure (all producers together). Default: 1,000,000 unless --duration.
    #[arg(long)]
    pub messages: Option<u64>,
    /// How long to measure (`30s`, `2m`); with --messages, whichever ends first.
    #[arg(long, value_parser = parse_duration)]
    #[serde(with = "humantime_serde_opt")]
    pub duration: Option<Duration>,
    /// Sending before measuring starts; its records are not counted.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    #[serde(with = "humantime_serde")]
    pub warmup: Duration,
    /// Records per second, all producers together, sent open-loop on a fixed schedule;
    /// 0 sends as fast as the client accepts.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Producer batch size in bytes (Kafka: batch.size).
    #[arg(long, default_value_t = 256 * 1024)]
    pub batch_bytes: usize,
    /// How long a batch may wait for more records, in µs (Kafka: linger.ms, in fractional ms).
    #[arg(long, default_value_t = 1000)]
    pub linger_us: u64,
    /// Acknowledgement level.
    #[arg(long, value_enum, default_value = "all")]
    pub acks: Acks,
    /// Record keys.
    #[arg(long, value_enum, default_value = "none")]
    pub keys: Keys,
    /// `consume` only: fill the backlog first, or read what the topic already holds.
    #[arg(long, value_enum, default_value = "fill")]
    pub backlog: Backlog,
    /// Consume as this consumer group (subscribe) instead of assigning partitions.
    #[arg(long)]
    pub consumer_group: Option<String>,
    /// Pin the harness's worker threads to these CPUs (`0,1` or `0-1`), round-robin.
    #[arg(long)]
    pub cpus: Option<String>,
    /// Consumers verify every fetched batch's CRC-32C (eventflow's client does by default;
    /// librdkafka's `check.crcs`). Off unless asked for, so that both kinds of target do
    /// the same work.
    #[arg(long)]
    #[serde(default)]
    pub check_crcs: bool,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            topic: "bench".into(),
            partitions: 1,
            create_topic: false,
            producers: 1,
            consumers: 1,
            message_size: 100,
            messages: None,
            duration: None,
            warmup: Duration::ZERO,
            rate: 0,
            batch_bytes: 256 * 1024,
            linger_us: 1000,
            acks: Acks::All,
            keys: Keys::None,
            backlog: Backlog::Fill,
            consumer_group: None,
            cpus: None,
            check_crcs: false,
        }
    }
}

/// Records measured when neither --messages nor --duration is given.
pub const DEFAULT_MESSAGES: u64 = 1_000_000;

/// Most producers, and consumers, a workload may have: a record names its producer in
/// 16 bits.
const MAX_CLIENTS: u32 = u16::MAX as u32;
const MAX_MESSAGE_SIZE: usize = 16 << 20;
/// Producer clients buffer four batches (`target::producer_buffer_bytes`): this keeps that
/// buffer at 1 GiB or less.
const MAX_BATCH_BYTES: usize = 256 << 20;

impl Workload {
    /// Rejects combinations that cannot run as `kind`, and sizes the harness cannot handle
    /// (producer indexes are 16 bits in every record; buffers are sized from these knobs).
    pub fn validate(&self, kind: Kind) -> Result<()> {
        if self.topic.is_empty() {
            bail!("--topic must not be empty");
        }
        if self.partitions == 0 {
            bail!("--partitions must be at least 1");
        }
        if !(1..=MAX_CLIENTS).contains(&self.producers) {
            bail!("--producers must be from 1 to {MAX_CLIENTS}");
        }
        if !(1..=MAX_CLIENTS).contains(&self.consumers) {
            bail!("--consumers must be from 1 to {MAX_CLIENTS}");
        }
        if self.message_size < HEADER_LEN {
            bail!(
                "--message-size must be at least {HEADER_LEN} bytes (the harness's timestamps and sequence number)"
            );
        }
        if self.message_size > MAX_MESSAGE_SIZE {
            bail!("--message-size above 16 MiB is not supported");
        }
        if self.messages == Some(0) {
            bail!("--messages must be at least 1");
        }
        if !(1..=MAX_BATCH_BYTES).contains(&self.batch_bytes) {
            bail!("--batch-bytes must be from 1 to {MAX_BATCH_BYTES} (256 MiB)");
        }
        if kind == Kind::Consume && self.messages.is_none() && self.duration.is_some() {
            bail!("consume reads a backlog of --messages records; --duration does not size it");
        }
        if let Some(cpus) = &self.cpus {
            parse_cpus(cpus)?;
        }
        Ok(())
    }

    /// Records to measure, all producers together (`None`: until --duration ends).
    pub fn message_budget(&self) -> Option<u64> {
        match (self.messages, self.duration) {
            (Some(n), _) => Some(n),
            (None, Some(_)) => None,
            (None, None) => Some(DEFAULT_MESSAGES),
        }
    }

    /// Producer `i`'s share of `total` (the first ones take the remainder).
    pub fn share(total: u64, workers: u32, i: u32) -> u64 {
        let workers = u64::from(workers);
        let i = u64::from(i);
        total / workers + u64::from(i < total % workers)
    }

    /// Partitions consumer `i` reads when partitions are assigned, not subscribed.
    pub fn consumer_partitions(&self, i: u32) -> Vec<u32> {
        (0..self.partitions)
            .filter(|p| p % self.consumers == i)
            .collect()
    }

    /// A short label: `produce 100B p1 acks=all rate=max`.
    pub fn label(&self, kind: &str) -> String {
        let rate = if self.rate == 0 {
            "max".to_string()
        } else {
            format!("{}/s", human_count(self.rate as f64))
        };
        format!(
            "{kind} {}B p{} x{}/{} acks={} rate={rate}",
            self.message_size,
            self.partitions,
            self.producers,
            self.consumers,
            self.acks.as_str()
        )
    }
}

/// `1.5M`, `200k`, `950`.
pub fn human_count(n: f64) -> String {
    if n >= 1e6 {
        format!("{:.2}M", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.0}k", n / 1e3)
    } else {
        format!("{n:.0}")
    }
}

/// Parses `30s`, `2m`, `500ms`, `1h 5m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration ({e}); try 30s, 2m or 500ms"))
}

/// Parses a CPU list: `0,1`, `0-3`, `0-1,3`.
pub fn parse_cpus(s: &str) -> Result<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || anyhow::anyhow!("--cpus `{s}`: `{part}` is not a CPU number or range");
        match part.split_once('-') {
            Some((a, b)) => {
                let a: usize = a.trim().parse().map_err(|_| bad())?;
                let b: usize = b.trim().parse().map_err(|_| bad())?;
                if a > b {
                    return Err(bad());
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().map_err(|_| bad())?),
        }
    }
    if cpus.is_empty() {
        bail!("--cpus `{s}` names no CPU");
    }
    Ok(cpus)
}

/// Bytes at the start of every record value the harness writes: the intended send time and
/// the actual send time (ns on the harness's clock), then a word holding the harness's mark
/// (high 8 bits), the producer (next 16) and its sequence number (low 40). The rest is
/// pre-generated random payload.
pub const HEADER_LEN: usize = 24;

/// Marks a value as the harness's, so that most records another writer put on the topic are
/// told apart by their header alone. Changing the layout means changing this byte.
const STAMP_MAGIC: u64 = 0xEB;
/// 2^40 records per producer: over a day at 10 M records/s.
const SEQ_BITS: u32 = 40;
const SEQ_MASK: u64 = (1 << SEQ_BITS) - 1;

/// What the harness reads back from a record value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// When the schedule said to send (ns on the harness clock).
    pub intended_ns: u64,
    /// When `send` was called.
    pub sent_ns: u64,
    /// Producer index.
    pub producer: u16,
    /// Sequence number within the producer, from 0.
    pub seq: u64,
}

impl Stamp {
    /// Writes the stamp into the first [`HEADER_LEN`] bytes of `value`.
    pub fn write(&self, value: &mut [u8]) {
        value[0..8].copy_from_slice(&self.intended_ns.to_le_bytes());
        value[8..16].copy_from_slice(&self.sent_ns.to_le_bytes());
        let id =
            (STAMP_MAGIC << 56) | (u64::from(self.producer) << SEQ_BITS) | (self.seq & SEQ_MASK);
        value[16..24].copy_from_slice(&id.to_le_bytes());
    }

    /// Reads a stamp; `None` for a value too short to hold one or without the harness's
    /// mark (not the harness's record). A stamp read is well formed, not necessarily from
    /// this run: its producer and sequence number still need checking against the run.
    pub fn read(value: &[u8]) -> Option<Stamp> {
        let header = value.get(..HEADER_LEN)?;
        let word = |i: usize| u64::from_le_bytes(header[i..i + 8].try_into().expect("8 bytes"));
        let id = word(16);
        if id >> 56 != STAMP_MAGIC {
            return None;
        }
        Some(Stamp {
            intended_ns: word(0),
            sent_ns: word(8),
            producer: (id >> SEQ_BITS) as u16,
            seq: id & SEQ_MASK,
        })
    }
}

/// `Option<Duration>` as a humantime string in TOML and JSON.
mod humantime_serde_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| humantime::parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Duration as a humantime string in TOML and JSON.
mod humantime_serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip() {
        let stamp = Stamp {
            intended_ns: 123_456_789,
            sent_ns: 123_999_000,
            producer: 7,
            seq: (1 << 39) + 5,
        };
        let mut value = vec![0u8; 100];
        stamp.write(&mut value);
        assert_eq!(Stamp::read(&value), Some(stamp));
        assert_eq!(Stamp::read(&value[..10]), None);
        let last = Stamp {
            producer: u16::MAX,
            seq: SEQ_MASK,
            ..stamp
        };
        last.write(&mut value);
        assert_eq!(Stamp::read(&value), Some(last));
    }

    #[test]
    fn values_without_the_mark_are_not_stamps() {
        assert_eq!(Stamp::read(&[0u8; 100]), None);
        assert_eq!(Stamp::read(&[0xffu8; 100]), None);
        assert_eq!(Stamp::read(b"{\"user\": 42, \"event\": \"click\"}"), None);
    }

    #[test]
    fn sizes_the_harness_cannot_handle_are_refused() {
        let ok = Workload::default();
        assert!(ok.validate(Kind::Produce).is_ok());
        let refused = |w: Workload, kind: Kind, what: &str| {
            let err = format!("{:#}", w.validate(kind).unwrap_err());
            assert!(err.contains(what), "{err}");
        };
        let max = Workload {
            producers: 65_535,
            consumers: 65_535,
            batch_bytes: 256 << 20,
            message_size: 16 << 20,
            ..ok.clone()
        };
        assert!(max.validate(Kind::E2e).is_ok());
        refused(
            Workload {
                producers: 65_536,
                ..ok.clone()
            },
            Kind::Produce,
            "--producers",
        );
        refused(
            Workload {
                consumers: 70_000,
                ..ok.clone()
            },
            Kind::E2e,
            "--consumers",
        );
        refused(
            Workload {
                batch_bytes: (256 << 20) + 1,
                ..ok.clone()
            },
            Kind::Produce,
            "--batch-bytes",
        );
        refused(
            Workload {
                batch_bytes: usize::MAX,
                ..ok.clone()
            },
            Kind::Produce,
            "--batch-bytes",
        );
        refused(
            Workload {
                message_size: (16 << 20) + 1,
                ..ok.clone()
            },
            Kind::Produce,
            "--message-size",
        );
        let timed = Workload {
            duration: Some(Duration::from_secs(5)),
            ..ok.clone()
        };
        refused(timed.clone(), Kind::Consume, "--duration");
        assert!(timed.validate(Kind::E2e).is_ok());
        let sized = Workload {
            messages: Some(10),
            ..timed
        };
        assert!(sized.validate(Kind::Consume).is_ok());
    }

    #[test]
    fn shares_add_up() {
        for total in [0, 1, 7, 1_000_001] {
            for workers in 1..6 {
                let sum: u64 = (0..workers)
                    .map(|i| Workload::share(total, workers, i))
                    .sum();
                assert_eq!(sum, total);
            }
        }
    }

    #[test]
    fn toml_uses_the_flag_names() {
        let w: Workload = toml::from_str(
            "message_size = 1024\npartitions = 2\nduration = \"30s\"\nacks = \"1\"\nkeys = \"seq\"",
        )
        .unwrap();
        assert_eq!(w.message_size, 1024);
        assert_eq!(w.duration, Some(Duration::from_secs(30)));
        assert_eq!(w.acks, Acks::Leader);
        assert_eq!(w.keys, Keys::Seq);
        assert!(toml::from_str::<Workload>("mesage_size = 1").is_err());
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpus("0-2,5").unwrap(), vec![0, 1, 2, 5]);
        assert!(parse_cpus("2-1").is_err());
        assert!(parse_cpus("x").is_err());
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("fast").is_err());
    }
}
