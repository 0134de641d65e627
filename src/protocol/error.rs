//! Stable wire error codes.
//!
//! Clients match on these numbers, so a code is never renumbered or reused: a retired code
//! stays reserved in this list forever. New codes are appended.

use std::fmt;

/// An error code as carried in responses (`u16`, big-endian). `None` (0) means success.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// Success.
    None = 0,
    /// An unexpected broker-side failure; the message says more.
    Unknown = 1,
    /// The frame could not be decoded; the broker closes the connection after this response.
    CorruptFrame = 2,
    /// The API key is not one this broker knows.
    UnsupportedApi = 3,
    /// The API is known but not at the requested version.
    UnsupportedVersion = 4,
    /// The frame is larger than `--max-request-bytes`; the connection is closed.
    RequestTooLarge = 5,
    /// The topic or partition does not exist.
    UnknownTopicOrPartition = 6,
    /// A topic with that name already exists.
    TopicAlreadyExists = 7,
    /// The topic name is not valid (1–249 characters of `[A-Za-z0-9._-]`, not `.` or `..`).
    InvalidTopic = 8,
    /// The partition count is not valid (1..=10000).
    InvalidPartitions = 9,
    /// A config key is unknown or its value is not valid.
    InvalidConfig = 10,
    /// The fetch offset is outside `[log start, high watermark]`.
    OffsetOutOfRange = 11,
    /// A record batch failed validation (magic, length, CRC32C).
    CorruptBatch = 12,
    /// A record batch is larger than `--max-batch-bytes`.
    BatchTooLarge = 13,
    /// The request decoded but its content is not acceptable (bad acks, empty records…).
    InvalidRequest = 14,
    /// The data device is full.
    NotEnoughDisk = 15,
    /// The log could not be read or written.
    StorageError = 16,
    /// The broker is shutting down and takes no new requests.
    ShuttingDown = 17,
    /// The broker already serves `--max-connections` connections.
    TooManyConnections = 18,
    /// The request did not complete within its timeout.
    Timeout = 19,
    /// No such group.
    UnknownGroup = 20,
    /// The member is not (or no longer) in the group: its session expired or it left.
    /// Join again.
    UnknownMember = 21,
    /// The request's generation is not the group's current one: the member was fenced by
    /// a rebalance. Take the new assignment (heartbeat) and retry.
    StaleGeneration = 22,
    /// The group still has members.
    GroupNotEmpty = 23,
    /// The session timeout is outside the broker's limits.
    InvalidSessionTimeout = 24,
    /// A share acknowledgement named a record the consumer does not hold (never acquired,
    /// its lock expired, already acknowledged, or held by another consumer).
    RecordNotHeld = 25,
    /// The request does not fit the group: another assignment strategy, or a consumer
    /// group used as a share group (or the reverse).
    InconsistentGroup = 26,
    /// An idempotent producer's batch does not carry the sequence number the partition
    /// expects next from it (a batch before it was lost), or a new epoch does not start at
    /// sequence 0.
    OutOfOrderSequence = 27,
    /// An idempotent producer's batch carries an older epoch than the partition has seen
    /// from that producer id: a newer instance of the producer took over.
    InvalidProducerEpoch = 28,
    /// A request other than the SASL handshake's on a listener that requires
    /// authentication, before the client authenticated.
    AuthenticationRequired = 29,
    /// Wrong user name or password (the two are not told apart).
    AuthenticationFailed = 30,
    /// The listener does not offer that SASL mechanism.
    UnsupportedSaslMechanism = 31,
    /// A SASL request out of turn (authenticate before a handshake, a second handshake).
    IllegalSaslState = 32,
    /// The client's principal may not do this.
    NotAuthorized = 33,
    /// No such user, or no credential of that mechanism.
    UnknownUser = 34,
}

impl ErrorCode {
    /// Every code in use, in numeric order (documentation and tests use it). A retired
    /// code leaves this list, and its number is never given to another.
    pub const ALL: [ErrorCode; 35] = [
        ErrorCode::None,
        ErrorCode::Unknown,
        ErrorCode::CorruptFrame,
        ErrorCode::UnsupportedApi,
        ErrorCode::UnsupportedVersion,
        ErrorCode::RequestTooLarge,
        ErrorCode::UnknownTopicOrPartition,
        ErrorCode::TopicAlreadyExists,
        ErrorCode::InvalidTopic,
        ErrorCode::InvalidPartitions,
        ErrorCode::InvalidConfig,
        ErrorCode::OffsetOutOfRange,
        ErrorCode::CorruptBatch,
        ErrorCode::BatchTooLarge,
        ErrorCode::InvalidRequest,
        ErrorCode::NotEnoughDisk,
        ErrorCode::StorageError,
        ErrorCode::ShuttingDown,
        ErrorCode::TooManyConnections,
        ErrorCode::Timeout,
        ErrorCode::UnknownGroup,
        ErrorCode::UnknownMember,
        ErrorCode::StaleGeneration,
        ErrorCode::GroupNotEmpty,
        ErrorCode::InvalidSessionTimeout,
        ErrorCode::RecordNotHeld,
        ErrorCode::InconsistentGroup,
        ErrorCode::OutOfOrderSequence,
        ErrorCode::InvalidProducerEpoch,
        ErrorCode::AuthenticationRequired,
        ErrorCode::AuthenticationFailed,
        ErrorCode::UnsupportedSaslMechanism,
        ErrorCode::IllegalSaslState,
        ErrorCode::NotAuthorized,
        ErrorCode::UnknownUser,
    ];

    /// The numeric code.
    pub fn as_u16(self) -> u16 {
        self as u16
    }

    /// The code for a number; numbers this build does not know (a code added by a newer
    /// broker, or a retired one) map to [`ErrorCode::Unknown`]. Looked up by value, not by
    /// position in [`ErrorCode::ALL`], so retiring a code leaves a hole and moves nothing.
    pub fn from_u16(code: u16) -> ErrorCode {
        match code {
            0 => ErrorCode::None,
            1 => ErrorCode::Unknown,
            2 => ErrorCode::CorruptFrame,
            3 => ErrorCode::UnsupportedApi,
            4 => ErrorCode::UnsupportedVersion,
            5 => ErrorCode::RequestTooLarge,
            6 => ErrorCode::UnknownTopicOrPartition,
            7 => ErrorCode::TopicAlreadyExists,
            8 => ErrorCode::InvalidTopic,
            9 => ErrorCode::InvalidPartitions,
            10 => ErrorCode::InvalidConfig,
            11 => ErrorCode::OffsetOutOfRange,
            12 => ErrorCode::CorruptBatch,
            13 => ErrorCode::BatchTooLarge,
            14 => ErrorCode::InvalidRequest,
            15 => ErrorCode::NotEnoughDisk,
            16 => ErrorCode::StorageError,
            17 => ErrorCode::ShuttingDown,
            18 => ErrorCode::TooManyConnections,
            19 => ErrorCode::Timeout,
            20 => ErrorCode::UnknownGroup,
            21 => ErrorCode::UnknownMember,
            22 => ErrorCode::StaleGeneration,
            23 => ErrorCode::GroupNotEmpty,
            24 => ErrorCode::InvalidSessionTimeout,
            25 => ErrorCode::RecordNotHeld,
            26 => ErrorCode::InconsistentGroup,
            27 => ErrorCode::OutOfOrderSequence,
            28 => ErrorCode::InvalidProducerEpoch,
            29 => ErrorCode::AuthenticationRequired,
            30 => ErrorCode::AuthenticationFailed,
            31 => ErrorCode::UnsupportedSaslMechanism,
            32 => ErrorCode::IllegalSaslState,
            33 => ErrorCode::NotAuthorized,
            34 => ErrorCode::UnknownUser,
            _ => ErrorCode::Unknown,
        }
    }

    /// Whether a client may retry the same request unchanged and hope for success.
    pub fn is_retriable(self) -> bool {
        matches!(
            self,
            ErrorCode::NotEnoughDisk
                | ErrorCode::Timeout
                | ErrorCode::ShuttingDown
                | ErrorCode::TooManyConnections
        )
    }

    /// A short lower-case name, as used in logs and docs.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::None => "none",
            ErrorCode::Unknown => "unknown",
            ErrorCode::CorruptFrame => "corrupt frame",
            ErrorCode::UnsupportedApi => "unsupported api",
            ErrorCode::UnsupportedVersion => "unsupported version",
            ErrorCode::RequestTooLarge => "request too large",
            ErrorCode::UnknownTopicOrPartition => "unknown topic or partition",
            ErrorCode::TopicAlreadyExists => "topic already exists",
            ErrorCode::InvalidTopic => "invalid topic",
            ErrorCode::InvalidPartitions => "invalid partitions",
            ErrorCode::InvalidConfig => "invalid config",
            ErrorCode::OffsetOutOfRange => "offset out of range",
            ErrorCode::CorruptBatch => "corrupt batch",
            ErrorCode::BatchTooLarge => "batch too large",
            ErrorCode::InvalidRequest => "invalid request",
            ErrorCode::NotEnoughDisk => "not enough disk",
            ErrorCode::StorageError => "storage error",
            ErrorCode::ShuttingDown => "shutting down",
            ErrorCode::TooManyConnections => "too many connections",
            ErrorCode::Timeout => "timeout",
            ErrorCode::UnknownGroup => "unknown group",
            ErrorCode::UnknownMember => "unknown member",
            ErrorCode::StaleGeneration => "stale generation",
            ErrorCode::GroupNotEmpty => "group not empty",
            ErrorCode::InvalidSessionTimeout => "invalid session timeout",
            ErrorCode::RecordNotHeld => "record not held",
            ErrorCode::InconsistentGroup => "inconsistent group",
            ErrorCode::OutOfOrderSequence => "out of order sequence",
            ErrorCode::InvalidProducerEpoch => "invalid producer epoch",
            ErrorCode::AuthenticationRequired => "authentication required",
            ErrorCode::AuthenticationFailed => "authentication failed",
            ErrorCode::UnsupportedSaslMechanism => "unsupported sasl mechanism",
            ErrorCode::IllegalSaslState => "illegal sasl state",
            ErrorCode::NotAuthorized => "not authorized",
            ErrorCode::UnknownUser => "unknown user",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.as_u16())
    }
}

/// An error code with the broker's explanation, as sent on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct WireError {
    /// The stable code.
    pub code: ErrorCode,
    /// A human-readable explanation.
    pub message: String,
}

impl WireError {
    /// Creates an error with a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        WireError {
            code,
            message: message.into(),
        }
    }
}

/// The message of a [`ErrorCode::CorruptBatch`] fetch error for offsets the broker has
/// fenced: `offsets FIRST..=LAST are fenced as corrupt: REASON`. Its shape is part of the
/// protocol (docs/PROTOCOL.md): a consumer that wants to go on reads the range back with
/// [`parse_fenced`] and seeks past `LAST`.
pub fn fenced_message(first: i64, last: i64, reason: &str) -> String {
    format!("offsets {first}..={last} are fenced as corrupt: {reason}")
}

/// The offset range of a [`fenced_message`] anywhere in `message` (a client may have put a
/// prefix before it), or `None` if it holds none.
pub fn parse_fenced(message: &str) -> Option<(i64, i64)> {
    let at = message.find("offsets ")?;
    let rest = &message[at + "offsets ".len()..];
    let (range, tail) = rest.split_once(' ')?;
    if !tail.starts_with("are fenced") {
        return None;
    }
    let (first, last) = range.split_once("..=")?;
    let (first, last) = (first.parse().ok()?, last.parse().ok()?);
    (first <= last).then_some((first, last))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_by_value() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_u16(code.as_u16()), code, "{code}");
        }
        // ALL is in numeric order with no number twice.
        assert!(ErrorCode::ALL
            .windows(2)
            .all(|w| w[0].as_u16() < w[1].as_u16()));
        // Pinned numbers: clients depend on them.
        assert_eq!(ErrorCode::UnknownTopicOrPartition.as_u16(), 6);
        assert_eq!(ErrorCode::CorruptBatch.as_u16(), 12);
        assert_eq!(ErrorCode::Timeout.as_u16(), 19);
        assert_eq!(ErrorCode::StaleGeneration.as_u16(), 22);
        assert_eq!(ErrorCode::InconsistentGroup.as_u16(), 26);
        assert_eq!(ErrorCode::OutOfOrderSequence.as_u16(), 27);
        assert_eq!(ErrorCode::InvalidProducerEpoch.as_u16(), 28);
    }

    #[test]
    fn a_fenced_range_reads_back_from_its_message() {
        let message = fenced_message(20, 29, "batch crc mismatch");
        assert_eq!(parse_fenced(&message), Some((20, 29)));
        let prefixed = format!("events/0 at offset 25: {message}");
        assert_eq!(parse_fenced(&prefixed), Some((20, 29)));
        assert_eq!(parse_fenced("offsets 9..=3 are fenced as corrupt: x"), None);
        assert_eq!(parse_fenced("offsets a..=3 are fenced as corrupt: x"), None);
        assert_eq!(parse_fenced("corrupt log 0.log: bad batch header"), None);
    }

    #[test]
    fn unknown_numbers_map_to_unknown() {
        // The first number past the newest code, and numbers far beyond it.
        let next = ErrorCode::ALL[ErrorCode::ALL.len() - 1].as_u16() + 1;
        for n in [next, 1000, 60_000, u16::MAX] {
            assert_eq!(ErrorCode::from_u16(n), ErrorCode::Unknown, "{n}");
        }
    }
}
