//! Kafka's error codes for the broker's own: the one place a Kafka response learns what
//! went wrong. Numbers from Kafka's `Errors` enum (clients/src/main/java/org/apache/kafka/
//! common/protocol/Errors.java, Kafka 4.0).

use crate::protocol::ErrorCode;

/// NONE.
pub const NONE: i16 = 0;
/// UNKNOWN_SERVER_ERROR.
pub const UNKNOWN_SERVER_ERROR: i16 = -1;
/// OFFSET_OUT_OF_RANGE.
pub const OFFSET_OUT_OF_RANGE: i16 = 1;
/// CORRUPT_MESSAGE.
pub const CORRUPT_MESSAGE: i16 = 2;
/// UNKNOWN_TOPIC_OR_PARTITION.
pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
/// NOT_LEADER_OR_FOLLOWER.
pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
/// REQUEST_TIMED_OUT.
pub const REQUEST_TIMED_OUT: i16 = 7;
/// MESSAGE_TOO_LARGE.
pub const MESSAGE_TOO_LARGE: i16 = 10;
/// INVALID_TOPIC_EXCEPTION.
pub const INVALID_TOPIC: i16 = 17;
/// ILLEGAL_GENERATION.
pub const ILLEGAL_GENERATION: i16 = 22;
/// INCONSISTENT_GROUP_PROTOCOL.
pub const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
/// INVALID_GROUP_ID.
pub const INVALID_GROUP_ID: i16 = 24;
/// UNKNOWN_MEMBER_ID.
pub const UNKNOWN_MEMBER_ID: i16 = 25;
/// INVALID_SESSION_TIMEOUT.
pub const INVALID_SESSION_TIMEOUT: i16 = 26;
/// REBALANCE_IN_PROGRESS.
pub const REBALANCE_IN_PROGRESS: i16 = 27;
/// COORDINATOR_NOT_AVAILABLE.
pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
/// UNSUPPORTED_VERSION.
pub const UNSUPPORTED_VERSION: i16 = 35;
/// TOPIC_ALREADY_EXISTS.
pub const TOPIC_ALREADY_EXISTS: i16 = 36;
/// INVALID_PARTITIONS.
pub const INVALID_PARTITIONS: i16 = 37;
/// INVALID_REPLICATION_FACTOR.
pub const INVALID_REPLICATION_FACTOR: i16 = 38;
/// INVALID_REQUIRED_ACKS.
pub const INVALID_REQUIRED_ACKS: i16 = 21;
/// INVALID_CONFIG.
pub const INVALID_CONFIG: i16 = 40;
/// INVALID_REQUEST.
pub const INVALID_REQUEST: i16 = 42;
/// OUT_OF_ORDER_SEQUENCE_NUMBER.
pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
/// INVALID_PRODUCER_EPOCH.
pub const INVALID_PRODUCER_EPOCH: i16 = 47;
/// KAFKA_STORAGE_ERROR.
pub const KAFKA_STORAGE_ERROR: i16 = 56;
/// NON_EMPTY_GROUP.
pub const NON_EMPTY_GROUP: i16 = 68;
/// GROUP_ID_NOT_FOUND.
pub const GROUP_ID_NOT_FOUND: i16 = 69;
/// MEMBER_ID_REQUIRED.
pub const MEMBER_ID_REQUIRED: i16 = 79;
/// GROUP_SUBSCRIBED_TO_TOPIC.
pub const GROUP_SUBSCRIBED_TO_TOPIC: i16 = 86;
/// FETCH_SESSION_ID_NOT_FOUND.
pub const FETCH_SESSION_ID_NOT_FOUND: i16 = 70;
/// INVALID_FETCH_SESSION_EPOCH.
pub const INVALID_FETCH_SESSION_EPOCH: i16 = 71;
/// TOPIC_AUTHORIZATION_FAILED: the principal may not do this to the topic.
pub const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
/// GROUP_AUTHORIZATION_FAILED: the principal may not do this to the group.
pub const GROUP_AUTHORIZATION_FAILED: i16 = 30;
/// CLUSTER_AUTHORIZATION_FAILED: the principal may not do this to the cluster.
pub const CLUSTER_AUTHORIZATION_FAILED: i16 = 31;
/// UNSUPPORTED_SASL_MECHANISM: the listener does not offer the mechanism.
pub const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
/// ILLEGAL_SASL_STATE: a SASL request out of turn.
pub const ILLEGAL_SASL_STATE: i16 = 34;
/// SASL_AUTHENTICATION_FAILED: wrong user or password.
pub const SASL_AUTHENTICATION_FAILED: i16 = 58;
/// RESOURCE_NOT_FOUND: no such user (DescribeUserScramCredentials).
pub const RESOURCE_NOT_FOUND: i16 = 91;
/// DUPLICATE_RESOURCE: a user named twice in one request.
pub const DUPLICATE_RESOURCE: i16 = 92;
/// UNACCEPTABLE_CREDENTIAL: an iteration count or user name the broker refuses.
pub const UNACCEPTABLE_CREDENTIAL: i16 = 93;
/// UNKNOWN_TOPIC_ID.
pub const UNKNOWN_TOPIC_ID: i16 = 100;

/// The Kafka error code a client should see for one of the broker's errors.
pub fn error_code(code: ErrorCode) -> i16 {
    match code {
        ErrorCode::None => NONE,
        ErrorCode::Unknown
        | ErrorCode::CorruptFrame
        | ErrorCode::TooManyConnections
        | ErrorCode::RecordNotHeld => UNKNOWN_SERVER_ERROR,
        ErrorCode::UnsupportedApi | ErrorCode::UnsupportedVersion => UNSUPPORTED_VERSION,
        ErrorCode::RequestTooLarge | ErrorCode::BatchTooLarge => MESSAGE_TOO_LARGE,
        ErrorCode::UnknownTopicOrPartition => UNKNOWN_TOPIC_OR_PARTITION,
        ErrorCode::TopicAlreadyExists => TOPIC_ALREADY_EXISTS,
        ErrorCode::InvalidTopic => INVALID_TOPIC,
        ErrorCode::InvalidPartitions => INVALID_PARTITIONS,
        ErrorCode::InvalidConfig => INVALID_CONFIG,
        ErrorCode::OffsetOutOfRange => OFFSET_OUT_OF_RANGE,
        ErrorCode::CorruptBatch => CORRUPT_MESSAGE,
        ErrorCode::InvalidRequest => INVALID_REQUEST,
        ErrorCode::NotEnoughDisk | ErrorCode::StorageError => KAFKA_STORAGE_ERROR,
        // Retriable: the client refreshes metadata and tries again (after a restart).
        ErrorCode::ShuttingDown => NOT_LEADER_OR_FOLLOWER,
        ErrorCode::Timeout => REQUEST_TIMED_OUT,
        ErrorCode::UnknownGroup => GROUP_ID_NOT_FOUND,
        ErrorCode::UnknownMember => UNKNOWN_MEMBER_ID,
        ErrorCode::StaleGeneration => ILLEGAL_GENERATION,
        ErrorCode::GroupNotEmpty => NON_EMPTY_GROUP,
        ErrorCode::InvalidSessionTimeout => INVALID_SESSION_TIMEOUT,
        ErrorCode::InconsistentGroup => INCONSISTENT_GROUP_PROTOCOL,
        ErrorCode::OutOfOrderSequence => OUT_OF_ORDER_SEQUENCE_NUMBER,
        ErrorCode::InvalidProducerEpoch => INVALID_PRODUCER_EPOCH,
        ErrorCode::AuthenticationRequired | ErrorCode::AuthenticationFailed => {
            SASL_AUTHENTICATION_FAILED
        }
        ErrorCode::UnsupportedSaslMechanism => UNSUPPORTED_SASL_MECHANISM,
        ErrorCode::IllegalSaslState => ILLEGAL_SASL_STATE,
        ErrorCode::NotAuthorized => CLUSTER_AUTHORIZATION_FAILED,
        ErrorCode::UnknownUser => RESOURCE_NOT_FOUND,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_path_errors_map_to_kafkas() {
        assert_eq!(error_code(ErrorCode::None), 0);
        assert_eq!(error_code(ErrorCode::UnknownTopicOrPartition), 3);
        assert_eq!(error_code(ErrorCode::CorruptBatch), 2);
        assert_eq!(error_code(ErrorCode::BatchTooLarge), 10);
        assert_eq!(error_code(ErrorCode::Timeout), 7);
        assert_eq!(error_code(ErrorCode::StorageError), 56);
        assert_eq!(error_code(ErrorCode::OffsetOutOfRange), 1);
        assert_eq!(error_code(ErrorCode::OutOfOrderSequence), 45);
        assert_eq!(error_code(ErrorCode::InvalidProducerEpoch), 47);
        for code in ErrorCode::ALL {
            if code != ErrorCode::None {
                assert_ne!(error_code(code), NONE, "{code:?}");
            }
        }
    }
}
