//! Why the `kafka://` target sets each librdkafka property, and where the property is
//! documented. The report prints these beside the values, so that a reader can check that
//! the Kafka side was configured the way a Kafka performance engineer would configure it.
//!
//! Kept outside the `kafka` feature: a report of saved results is redrawn by a harness built
//! without librdkafka too.

/// The librdkafka the `kafka` feature builds (from the source rdkafka-sys 4.9.0 vendors).
pub const VERSION: &str = "2.10.0";

/// The property reference of that version, in librdkafka's repository.
const CONF: &str = "librdkafka CONFIGURATION.md";

/// `(property, why, source)` for every property the target sets.
const NOTES: &[(&str, &str, &str)] = &[
    (
        "socket.nagle.disable",
        "TCP_NODELAY, as Kafka's Java client and Eventflow's client set it; the default was \
         false before librdkafka 2.10.0 and could only add latency",
        "librdkafka CONFIGURATION.md; CHANGELOG.md v2.10.0 (#4986)",
    ),
    ("acks", "from the plan (`acks`)", CONF),
    (
        "batch.size",
        "from the plan (`batch_bytes`), the same byte bound as Eventflow's client",
        "librdkafka CONFIGURATION.md; Kafka producer configs (batch.size)",
    ),
    (
        "linger.ms",
        "from the plan (`linger_us`); a float in librdkafka, so microseconds map exactly",
        "librdkafka CONFIGURATION.md; Kafka producer configs (linger.ms)",
    ),
    (
        "batch.num.messages",
        "at its upper bound, so that batch.size binds and not a record count",
        CONF,
    ),
    (
        "message.max.bytes",
        "raised to batch.size when larger: librdkafka caps a batch at the smaller of the two",
        CONF,
    ),
    (
        "queue.buffering.max.kbytes",
        "the same client buffer as Eventflow's client (64 MiB or four batches): back-pressure \
         starts at the same point",
        CONF,
    ),
    (
        "queue.buffering.max.messages",
        "at its upper range so that the byte bound binds",
        CONF,
    ),
    (
        "partitioner",
        "murmur2_random: the Java client's default partitioner, and Eventflow's (keyed records \
         to murmur2(key) % partitions)",
        CONF,
    ),
    (
        "compression.type",
        "none on both sides: the harness measures the broker, not a codec",
        CONF,
    ),
    (
        "enable.idempotence",
        "off: Eventflow's client has no idempotent producer to compare with",
        CONF,
    ),
    (
        "fetch.max.bytes",
        "8 MiB, the same fetch size as Eventflow's client",
        CONF,
    ),
    (
        "max.partition.fetch.bytes",
        "8 MiB, the same fetch size as Eventflow's client",
        CONF,
    ),
    (
        "fetch.wait.max.ms",
        "100 ms, the same long-poll wait as Eventflow's client",
        CONF,
    ),
    (
        "fetch.min.bytes",
        "1: answer as soon as anything is there, as Eventflow's client asks",
        CONF,
    ),
    (
        "queued.max.messages.kbytes",
        "prefetch sized to the fetch size: four 8 MiB fetches queued ahead of the application",
        CONF,
    ),
    (
        "queued.min.messages",
        "at its upper bound, so that the byte bound binds: with the default (100,000) two \
         fetches of 100-byte records fill it",
        CONF,
    ),
    (
        "fetch.queue.backoff.ms",
        "10 ms instead of 1 s: how long a partition waits to fetch again once its prefetch \
         queue is full (added in librdkafka 2.4.0; before it the wait was always 1 s). The \
         queue holds 32 MiB, over 20 ms of reading at 1.5 GB/s",
        "librdkafka CONFIGURATION.md; CHANGELOG.md v2.4.0 (#2879)",
    ),
    ("check.crcs", "from the plan (`check_crcs`)", CONF),
    (
        "enable.auto.commit",
        "off: the harness commits nothing, it measures reading",
        CONF,
    ),
    (
        "allow.auto.create.topics",
        "off: topics are made through the admin API only",
        CONF,
    ),
];

/// Why `property` is set as it is, and where it is documented; `None` for a name that is not
/// a librdkafka property the target sets.
pub fn note(property: &str) -> Option<(&'static str, &'static str)> {
    NOTES
        .iter()
        .find(|(name, _, _)| *name == property)
        .map(|&(_, why, source)| (why, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_note_names_its_source() {
        for (name, why, source) in NOTES {
            assert!(
                !why.is_empty() && source.contains("CONFIGURATION.md"),
                "{name}"
            );
            assert_eq!(
                NOTES.iter().filter(|(n, _, _)| n == name).count(),
                1,
                "{name}"
            );
        }
        assert!(note("fetch.queue.backoff.ms").is_some());
        assert!(note("no.such.property").is_none());
    }
}
