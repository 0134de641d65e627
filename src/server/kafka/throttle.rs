//! A response's `throttle_time_ms`: how long the client is held back for going over a
//! quota (`server/quotas.rs`). Produce and Fetch set theirs where they are built; every
//! other response that has the field gets it here. A version without the field leaves it
//! out when encoded.

use kafka_protocol::messages::ResponseKind;

/// Sets the throttle time of `response` (a no-op for responses without one, such as the
/// SASL exchange's, which is never metered).
pub(super) fn set(response: &mut ResponseKind, ms: i32) {
    macro_rules! throttled {
        ($($kind:ident),* $(,)?) => {
            match response {
                $(ResponseKind::$kind(r) => r.throttle_time_ms = ms,)*
                _ => {}
            }
        };
    }
    if ms == 0 {
        return;
    }
    throttled!(
        Produce,
        Metadata,
        CreateTopics,
        DeleteTopics,
        DescribeConfigs,
        IncrementalAlterConfigs,
        DescribeCluster,
        CreatePartitions,
        FindCoordinator,
        ListOffsets,
        JoinGroup,
        SyncGroup,
        Heartbeat,
        LeaveGroup,
        OffsetCommit,
        OffsetFetch,
        ListGroups,
        DescribeGroups,
        DeleteGroups,
        OffsetDelete,
        InitProducerId,
        DescribeUserScramCredentials,
        AlterUserScramCredentials,
        CreateAcls,
        DescribeAcls,
        DeleteAcls,
        DescribeClientQuotas,
        AlterClientQuotas,
    );
}
