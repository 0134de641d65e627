//! The Kafka listener at the byte level: requests encoded with the `kafka-protocol` crate's
//! client side over a plain socket, for what a well-behaved client never sends (unknown
//! APIs and versions) and for exact response fields.

mod common;

use std::io::Write;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use common::Broker;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic, ForgottenTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    create_partitions_request, describe_configs_request, incremental_alter_configs_request,
};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, CreatePartitionsRequest,
    CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest,
    DeleteTopicsResponse, DescribeClusterRequest, DescribeClusterResponse, DescribeConfigsRequest,
    DescribeConfigsResponse, FetchRequest, FetchResponse, FindCoordinatorRequest,
    FindCoordinatorResponse, GroupId, IncrementalAlterConfigsRequest,
    IncrementalAlterConfigsResponse, ListOffsetsRequest, ListOffsetsResponse,
    ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse, ListTransactionsRequest,
    ListTransactionsResponse, MetadataRequest, MetadataResponse, OffsetCommitRequest,
    OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse, ProduceRequest, ProduceResponse,
    ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use common::kafka_wire::KafkaConn as Conn;

fn kafka(broker: &Broker) -> Conn {
    Conn::open(broker.kafka.expect("kafka listener"))
}

#[test]
fn api_versions_lists_what_is_served_at_every_version() {
    let broker = Broker::start(&["--cores", "1"]);
    let mut c = kafka(&broker);
    for version in 0..=4 {
        let r: ApiVersionsResponse =
            c.call(ApiKey::ApiVersions, version, &ApiVersionsRequest::default());
        assert_eq!(r.error_code, 0);
        let keys: Vec<i16> = r.api_keys.iter().map(|k| k.api_key).collect();
        assert!(keys.contains(&(ApiKey::ApiVersions as i16)), "{keys:?}");
        assert!(keys.contains(&(ApiKey::Metadata as i16)), "{keys:?}");
        let metadata = r
            .api_keys
            .iter()
            .find(|k| k.api_key == ApiKey::Metadata as i16)
            .unwrap();
        assert_eq!((metadata.min_version, metadata.max_version), (0, 12));
    }
}

#[test]
fn unknown_versions_and_apis_are_refused_and_others_go_on() {
    let broker = Broker::start(&["--cores", "1"]);
    // ApiVersions at a version from the future: v0 layout, UNSUPPORTED_VERSION, its range.
    let mut c = kafka(&broker);
    let mut future = BytesMut::new();
    future.put_i16(ApiKey::ApiVersions as i16);
    future.put_i16(77);
    future.put_i32(5);
    future.put_i16(-1);
    c.send_raw(&future);
    let mut frame = c.receive().expect("an answer");
    assert_eq!(
        ResponseHeader::decode(&mut frame, 0)
            .unwrap()
            .correlation_id,
        5
    );
    let r = ApiVersionsResponse::decode(&mut frame, 0).unwrap();
    assert_eq!(r.error_code, 35);
    assert_eq!(r.api_keys.len(), 1);
    assert_eq!(
        (
            r.api_keys[0].api_key,
            r.api_keys[0].min_version,
            r.api_keys[0].max_version
        ),
        (18, 0, 4)
    );
    // The connection goes on.
    let _: ApiVersionsResponse = c.call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());

    // An API key nobody knows, and a known one outside the advertised range whose response
    // has no top-level error code (Metadata v13): closed, as Kafka closes it.
    let mut unknown = BytesMut::new();
    unknown.put_i16(9999);
    unknown.put_i16(0);
    unknown.put_i32(6);
    c.send_raw(&unknown);
    assert!(c.receive().is_none(), "closed");
    let mut c = kafka(&broker);
    c.send(ApiKey::Metadata, 13, &MetadataRequest::default());
    assert!(c.receive().is_none(), "closed");
    // An API the broker does not serve, whose response has a top-level error code
    // (ListTransactions, ListPartitionReassignments), and a served one at a version past
    // the advertised range whose layout has one (Fetch v13): UNSUPPORTED_VERSION, and the
    // connection goes on.
    let mut c = kafka(&broker);
    let transactions: ListTransactionsResponse = c.call(
        ApiKey::ListTransactions,
        0,
        &ListTransactionsRequest::default(),
    );
    assert_eq!(transactions.error_code, 35);
    let reassignments: ListPartitionReassignmentsResponse = c.call(
        ApiKey::ListPartitionReassignments,
        0,
        &ListPartitionReassignmentsRequest::default(),
    );
    assert_eq!(reassignments.error_code, 35);
    let fetch: FetchResponse = c.call(ApiKey::Fetch, 13, &FetchRequest::default());
    assert_eq!(fetch.error_code, 35);
    let _: MetadataResponse = c.call(ApiKey::Metadata, 12, &MetadataRequest::default());
    // A body that does not parse: closed.
    let mut c = kafka(&broker);
    let mut bad = BytesMut::new();
    bad.put_i16(ApiKey::Metadata as i16);
    bad.put_i16(9);
    bad.put_i32(7);
    bad.put_u8(0x80);
    c.send_raw(&bad);
    assert!(c.receive().is_none(), "closed");
    // An array announcing 2^31 - 1 elements in a 14-byte frame: refused before anything
    // is sized from it (the codec would ask for hundreds of GiB and abort the broker).
    let mut c = kafka(&broker);
    let mut huge = BytesMut::new();
    huge.put_i16(ApiKey::Metadata as i16);
    huge.put_i16(1);
    huge.put_i32(8);
    huge.put_i16(-1);
    huge.put_i32(i32::MAX);
    c.send_raw(&huge);
    assert!(c.receive().is_none(), "closed");
    assert!(broker.log().contains("closing a Kafka connection"));

    // Everyone else is served as before, on both protocols.
    let mut c = kafka(&broker);
    let _: MetadataResponse = c.call(ApiKey::Metadata, 12, &MetadataRequest::default());
    broker.client().create_topic("still-here", 1, &[]).unwrap();
}

#[test]
fn metadata_advertises_one_broker_leading_every_partition() {
    let broker = Broker::start(&["--cores", "2"]);
    broker.client().create_topic("orders", 4, &[]).unwrap();
    let addr = broker.kafka.unwrap();
    let mut c = kafka(&broker);
    for version in [0, 1, 4, 9, 12] {
        // Every topic: an empty list in v0, a null one from v1.
        let all = MetadataRequest::default().with_topics((version == 0).then(Vec::new));
        let r: MetadataResponse = c.call(ApiKey::Metadata, version, &all);
        assert_eq!(r.brokers.len(), 1);
        assert_eq!(r.brokers[0].node_id.0, 0);
        assert_eq!(r.brokers[0].host.as_str(), addr.ip().to_string());
        assert_eq!(r.brokers[0].port, i32::from(addr.port()));
        assert_eq!(r.topics.len(), 1, "v{version}");
        let t = &r.topics[0];
        assert_eq!(t.error_code, 0);
        assert_eq!(t.name.as_ref().unwrap().0.as_str(), "orders");
        assert_eq!(t.partitions.len(), 4);
        for (i, p) in t.partitions.iter().enumerate() {
            assert_eq!(p.partition_index, i as i32);
            assert_eq!(p.leader_id.0, 0);
            assert_eq!(p.replica_nodes.len(), 1);
        }
    }
    // A named topic that does not exist: UNKNOWN_TOPIC_OR_PARTITION, never created.
    let request = MetadataRequest::default().with_topics(Some(vec![
        kafka_protocol::messages::metadata_request::MetadataRequestTopic::default().with_name(
            Some(kafka_protocol::messages::TopicName(StrBytes::from("nope"))),
        ),
    ]));
    let r: MetadataResponse = c.call(ApiKey::Metadata, 12, &request);
    assert_eq!(r.topics.len(), 1);
    assert_eq!(r.topics[0].error_code, 3);
    let all = MetadataRequest::default().with_topics(None);
    let r: MetadataResponse = c.call(ApiKey::Metadata, 12, &all);
    assert_eq!(r.topics.len(), 1);
}

fn produce_request(topic: &str, partition: i32, records: Bytes, acks: i16) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(5000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(records))])])
}

fn produce_errors(r: &ProduceResponse) -> Vec<(i32, i16, i64)> {
    r.responses
        .iter()
        .flat_map(|t| t.partition_responses.iter())
        .map(|p| (p.index, p.error_code, p.base_offset))
        .collect()
}

#[test]
fn produce_answers_offsets_and_kafka_error_codes() {
    let broker = Broker::start(&["--cores", "2"]);
    broker.client().create_topic("p", 2, &[]).unwrap();
    let mut c = kafka(&broker);
    let batch = common::batch("a", 3, 10, common::now_ms()).freeze();
    for version in [3, 7, 9, 12] {
        let r: ProduceResponse = c.call(
            ApiKey::Produce,
            version,
            &produce_request("p", 1, batch.clone(), -1),
        );
        let base = produce_errors(&r)[0].2;
        assert_eq!(produce_errors(&r), vec![(1, 0, base)], "v{version}");
    }
    let r: ProduceResponse = c.call(
        ApiKey::Produce,
        9,
        &produce_request("p", 1, batch.clone(), 1),
    );
    assert_eq!(produce_errors(&r), vec![(1, 0, 12)]);
    // Unknown partition and topic, a corrupt batch, a bad acks value.
    let r: ProduceResponse = c.call(
        ApiKey::Produce,
        9,
        &produce_request("p", 7, batch.clone(), 1),
    );
    assert_eq!(produce_errors(&r), vec![(7, 3, -1)]);
    let r: ProduceResponse = c.call(
        ApiKey::Produce,
        9,
        &produce_request("nope", 0, batch.clone(), 1),
    );
    assert_eq!(produce_errors(&r), vec![(0, 3, -1)]);
    let mut corrupt = batch.to_vec();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff;
    let r: ProduceResponse = c.call(
        ApiKey::Produce,
        9,
        &produce_request("p", 0, Bytes::from(corrupt), -1),
    );
    assert_eq!(produce_errors(&r), vec![(0, 2, -1)]);
    let r: ProduceResponse = c.call(
        ApiKey::Produce,
        9,
        &produce_request("p", 0, batch.clone(), 2),
    );
    assert_eq!(produce_errors(&r), vec![(0, 21, -1)]);
    // acks = 0: no response; the next request's answer comes next and sees the append.
    c.send(
        ApiKey::Produce,
        9,
        &produce_request("p", 0, batch.clone(), 0),
    );
    let r: ProduceResponse = c.call(
        ApiKey::Produce,
        9,
        &produce_request("p", 0, batch.clone(), -1),
    );
    assert_eq!(produce_errors(&r), vec![(0, 0, 3)]);
    // v0-2 are advertised (so librdkafka compresses) but refused per partition.
    let mut body = BytesMut::new();
    produce_request("p", 0, batch.clone(), 1)
        .encode(&mut body, 3)
        .unwrap();
    let v2_body = &body[2..]; // v3 without its (null) transactional id is v2
    let mut frame = BytesMut::new();
    frame.put_i16(ApiKey::Produce as i16);
    frame.put_i16(2);
    frame.put_i32(99);
    frame.put_i16(-1); // no client id
    frame.put_slice(v2_body);
    c.send_raw(&frame);
    let mut answer = c.receive().expect("an answer");
    assert_eq!(answer.get_i32(), 99);
    assert_eq!(answer.get_i32(), 1, "one topic");
    let name_len = answer.get_i16() as usize;
    assert_eq!(&answer.split_to(name_len)[..], b"p");
    assert_eq!(answer.get_i32(), 1, "one partition");
    assert_eq!(answer.get_i32(), 0);
    assert_eq!(answer.get_i16(), 35);
    assert_eq!(answer.get_i64(), -1);
    assert_eq!(answer.get_i64(), -1);
    assert_eq!(answer.get_i32(), 0, "throttle");
    assert!(answer.is_empty());
    // What was appended: 3 + 3 + 3 + 3 + 3 on partition 1, 3 + 3 on partition 0.
    let mut client = broker.client();
    let offsets = |client: &mut eventflow::client::Client, p: u32| {
        common::read_all(client, "p", p, 0)
            .iter()
            .map(|b| {
                eventflow::protocol::batch::BatchHeader::parse(b)
                    .unwrap()
                    .base_offset
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(offsets(&mut client, 1), vec![0, 3, 6, 9, 12]);
    assert_eq!(offsets(&mut client, 0), vec![0, 3]);
}

fn fetch_request(topic: &str, partitions: &[(i32, i64)], max_wait_ms: i32) -> FetchRequest {
    FetchRequest::default()
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partitions(
                partitions
                    .iter()
                    .map(|&(p, offset)| {
                        FetchPartition::default()
                            .with_partition(p)
                            .with_fetch_offset(offset)
                            .with_partition_max_bytes(1 << 20)
                    })
                    .collect(),
            )])
}

/// (partition, error, high watermark, base offsets of the batches returned).
fn fetched(r: &FetchResponse) -> Vec<(i32, i16, i64, Vec<i64>)> {
    r.responses
        .iter()
        .flat_map(|t| t.partitions.iter())
        .map(|p| {
            let records = p.records.clone().unwrap_or_default();
            let bases = eventflow::client::split_batches(&records)
                .iter()
                .map(|b| {
                    eventflow::protocol::batch::BatchHeader::parse(b)
                        .unwrap()
                        .base_offset
                })
                .collect();
            (p.partition_index, p.error_code, p.high_watermark, bases)
        })
        .collect()
}

#[test]
fn fetch_returns_stored_batches_at_every_version() {
    // Two shards: a connection lands on one of them, so of the two partitions one is read
    // on the connection's shard (spliced from the file) and one through the other shard.
    let broker = Broker::start(&["--cores", "2"]);
    broker.client().create_topic("f", 2, &[]).unwrap();
    let mut native = broker.client();
    for p in 0..2 {
        for i in 0..3 {
            native
                .produce(
                    "f",
                    p,
                    common::batch(&format!("b{i}"), 2, 20, common::now_ms()),
                    eventflow::protocol::api::Acks::All,
                )
                .unwrap();
        }
    }
    let stored: Vec<Bytes> = common::read_all(&mut native, "f", 1, 0);
    for version in 4..=12 {
        for _ in 0..2 {
            let mut c = kafka(&broker);
            let r: FetchResponse = c.call(
                ApiKey::Fetch,
                version,
                &fetch_request("f", &[(0, 0), (1, 2), (5, 0)], 0),
            );
            assert_eq!(r.error_code, 0);
            assert_eq!(r.session_id, 0);
            assert_eq!(
                fetched(&r),
                vec![
                    (0, 0, 6, vec![0, 2, 4]),
                    (1, 0, 6, vec![2, 4]),
                    (5, 3, -1, vec![]),
                ],
                "v{version}"
            );
            // Byte for byte what the native fetch returns.
            let p1 = r.responses[0].partitions[1].records.clone().unwrap();
            assert_eq!(p1, Bytes::from(stored[1..].concat()), "v{version}");
        }
    }
    // Past the end: OFFSET_OUT_OF_RANGE.
    let mut c = kafka(&broker);
    let r: FetchResponse = c.call(ApiKey::Fetch, 11, &fetch_request("f", &[(0, 99)], 0));
    assert_eq!(fetched(&r)[0].1, 1);
}

/// A fetch in session `id` at `epoch` naming `partitions` of `topic` (none: an incremental
/// fetch with no change) and forgetting `forget`.
fn session_fetch(
    topic: &str,
    id: i32,
    epoch: i32,
    partitions: &[(i32, i64)],
    forget: &[i32],
    max_wait_ms: i32,
) -> FetchRequest {
    let mut request = fetch_request(topic, partitions, max_wait_ms)
        .with_session_id(id)
        .with_session_epoch(epoch);
    if partitions.is_empty() {
        request.topics.clear();
    }
    if !forget.is_empty() {
        request.forgotten_topics_data = vec![ForgottenTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partitions(forget.to_vec())];
    }
    request
}

fn produce_batch(broker: &Broker, topic: &str, partition: u32, records: usize) {
    broker
        .client()
        .produce(
            topic,
            partition,
            common::batch("s", records, 0, common::now_ms()),
            eventflow::protocol::api::Acks::All,
        )
        .unwrap();
}

#[test]
fn fetch_sessions_answer_only_what_is_new() {
    // Two shards: of the three partitions, some are read on the connection's shard
    // (spliced from the file) and some through the other shard.
    let broker = Broker::start(&["--cores", "2"]);
    for version in [7, 12] {
        let topic = format!("sessions-v{version}");
        broker.client().create_topic(&topic, 3, &[]).unwrap();
        produce_batch(&broker, &topic, 0, 2);
        produce_batch(&broker, &topic, 1, 3);
        let mut c = kafka(&broker);
        let call = |c: &mut Conn, request: &FetchRequest| -> FetchResponse {
            c.call(ApiKey::Fetch, version, request)
        };

        // A full fetch asking for a session (id 0, epoch 0) gets one, and every partition.
        let full = session_fetch(&topic, 0, 0, &[(0, 0), (1, 0), (2, 0)], &[], 0);
        let r = call(&mut c, &full);
        assert_eq!(r.error_code, 0);
        let id = r.session_id;
        assert!(id > 0, "v{version}: a session id");
        assert_eq!(
            fetched(&r),
            vec![(0, 0, 2, vec![0]), (1, 0, 3, vec![0]), (2, 0, 0, vec![])],
            "v{version}"
        );

        // The client moves its positions to the ends: nothing is new, so after the
        // long-poll the response names no partition.
        let started = std::time::Instant::now();
        let r = call(
            &mut c,
            &session_fetch(&topic, id, 1, &[(0, 2), (1, 3)], &[], 300),
        );
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "v{version}"
        );
        assert_eq!((r.error_code, r.session_id), (0, id));
        assert!(fetched(&r).is_empty(), "v{version}: {:?}", fetched(&r));

        // An incremental fetch naming nothing long-polls over the whole session and wakes
        // for the partition that gets data; only that one is in the response.
        let sent = c.send(
            ApiKey::Fetch,
            version,
            &session_fetch(&topic, id, 2, &[], &[], 20_000),
        );
        produce_batch(&broker, &topic, 2, 4);
        let r: FetchResponse = c.response(ApiKey::Fetch, version, sent);
        assert_eq!((r.error_code, r.session_id), (0, id));
        assert_eq!(fetched(&r), vec![(2, 0, 4, vec![0])], "v{version}");

        // Partition 2 is not moved on by the client, so its records are sent again;
        // partition 0, forgotten, is not sent although it has new records.
        produce_batch(&broker, &topic, 0, 1);
        let r = call(&mut c, &session_fetch(&topic, id, 3, &[], &[0], 0));
        assert_eq!(fetched(&r), vec![(2, 0, 4, vec![0])], "v{version}");
        let started = std::time::Instant::now();
        let r = call(&mut c, &session_fetch(&topic, id, 4, &[(2, 4)], &[], 300));
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "v{version}"
        );
        assert!(fetched(&r).is_empty(), "v{version}: {:?}", fetched(&r));
        // Byte for byte what the native fetch returns, whichever shard reads it.
        produce_batch(&broker, &topic, 1, 2);
        let r = call(&mut c, &session_fetch(&topic, id, 5, &[], &[], 5_000));
        assert_eq!(fetched(&r), vec![(1, 0, 5, vec![3])], "v{version}");
        let stored = common::read_all(&mut broker.client(), &topic, 1, 3);
        assert_eq!(
            r.responses[0].partitions[0].records.clone().unwrap(),
            Bytes::from(stored.concat())
        );

        // A wrong epoch is refused (the session stays); an unknown id is not found.
        let r = call(&mut c, &session_fetch(&topic, id, 9, &[], &[], 0));
        assert_eq!((r.error_code, r.session_id), (71, 0), "v{version}");
        assert!(r.responses.is_empty());
        let r = call(
            &mut c,
            &session_fetch(&topic, id.wrapping_add(2), 1, &[], &[], 0),
        );
        assert_eq!(r.error_code, 70, "v{version}");
        let r = call(&mut c, &session_fetch(&topic, id, 6, &[(1, 5)], &[], 0));
        assert_eq!((r.error_code, r.session_id), (0, id), "v{version}");

        // Epoch 0 with the id closes the session and opens another.
        let r = call(&mut c, &session_fetch(&topic, id, 0, &[(1, 0)], &[], 0));
        let second = r.session_id;
        assert!(
            second > 0 && second != id,
            "v{version}: {second} after {id}"
        );
        assert_eq!(fetched(&r), vec![(1, 0, 5, vec![0, 3])], "v{version}");
        let r = call(&mut c, &session_fetch(&topic, id, 7, &[], &[], 0));
        assert_eq!(r.error_code, 70, "v{version}: the first session is closed");

        // Epoch -1 closes it too, and is answered in full without a session.
        let r = call(
            &mut c,
            &session_fetch(&topic, second, -1, &[(0, 0), (2, 4)], &[], 0),
        );
        assert_eq!((r.error_code, r.session_id), (0, 0), "v{version}");
        assert_eq!(
            fetched(&r),
            vec![(0, 0, 3, vec![0, 2]), (2, 0, 4, vec![])],
            "v{version}"
        );
        let r = call(&mut c, &session_fetch(&topic, second, 1, &[], &[], 0));
        assert_eq!(r.error_code, 70, "v{version}: closed by epoch -1");

        // Forgetting every partition closes a session; that fetch is answered without one.
        let r = call(&mut c, &session_fetch(&topic, 0, 0, &[(0, 3)], &[], 0));
        let third = r.session_id;
        assert!(third > 0);
        let r = call(&mut c, &session_fetch(&topic, third, 1, &[], &[0], 0));
        assert_eq!((r.error_code, r.session_id), (0, 0), "v{version}");
        assert!(r.responses.is_empty());
        let r = call(&mut c, &session_fetch(&topic, third, 2, &[], &[], 0));
        assert_eq!(r.error_code, 70, "v{version}");
    }
}

#[test]
fn a_session_is_kept_by_the_shard_that_made_it() {
    // Connections land on either shard; a session id used on a connection of the other
    // shard is unknown there, so the client starts over with a full fetch.
    let broker = Broker::start(&["--cores", "2"]);
    broker.client().create_topic("kept", 1, &[]).unwrap();
    let mut first = kafka(&broker);
    let r: FetchResponse = first.call(
        ApiKey::Fetch,
        12,
        &session_fetch("kept", 0, 0, &[(0, 0)], &[], 0),
    );
    let id = r.session_id;
    assert!(id > 0);
    let mut epochs = 1..;
    let mut same_shard = 0;
    let mut other_shard = 0;
    for _ in 0..40 {
        let mut c = kafka(&broker);
        let epoch = epochs.next().unwrap();
        let r: FetchResponse = c.call(
            ApiKey::Fetch,
            12,
            &session_fetch("kept", id, epoch, &[], &[], 0),
        );
        match r.error_code {
            0 => same_shard += 1,
            70 => {
                other_shard += 1;
                // Not moved on: the epoch is expected again.
                epochs = epoch..;
            }
            other => panic!("error {other}"),
        }
        if same_shard > 0 && other_shard > 0 {
            break;
        }
    }
    assert!(
        same_shard > 0 && other_shard > 0,
        "connections reached both shards ({same_shard} found it, {other_shard} did not)"
    );
}

#[test]
fn fetch_at_the_end_waits_for_data() {
    let broker = Broker::start(&["--cores", "2"]);
    broker.client().create_topic("w", 1, &[]).unwrap();
    let mut c = kafka(&broker);
    let id = c.send(ApiKey::Fetch, 12, &fetch_request("w", &[(0, 0)], 30_000));
    // No answer while there is nothing to read.
    c.stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut byte = [0u8; 1];
    let err = c.stream.peek(&mut byte).unwrap_err();
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "{err}"
    );
    c.stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    broker
        .client()
        .produce(
            "w",
            0,
            common::batch("x", 1, 0, common::now_ms()),
            eventflow::protocol::api::Acks::All,
        )
        .unwrap();
    let mut frame = c.receive().expect("the fetch answers");
    let header = ResponseHeader::decode(&mut frame, 1).unwrap();
    assert_eq!(header.correlation_id, id);
    let r = FetchResponse::decode(&mut frame, 12).unwrap();
    assert_eq!(fetched(&r), vec![(0, 0, 1, vec![0])]);
}

#[test]
fn list_offsets_earliest_latest_and_by_time() {
    let broker = Broker::start(&["--cores", "2"]);
    broker.client().create_topic("o", 1, &[]).unwrap();
    let mut native = broker.client();
    for ts in [1_000, 2_000, 3_000] {
        native
            .produce(
                "o",
                0,
                common::batch("t", 2, 0, ts),
                eventflow::protocol::api::Acks::All,
            )
            .unwrap();
    }
    let mut c = kafka(&broker);
    for version in [1, 4, 7, 8] {
        for (spec, want) in [
            (-2, 0),
            (-1, 6),
            (-4, 0),
            (1_500, 2),
            (3_000, 4),
            (9_000, -1),
        ] {
            let request =
                ListOffsetsRequest::default().with_topics(vec![ListOffsetsTopic::default()
                    .with_name(TopicName(StrBytes::from("o")))
                    .with_partitions(vec![ListOffsetsPartition::default()
                        .with_partition_index(0)
                        .with_timestamp(spec)])]);
            if spec == -4 && version < 8 {
                continue;
            }
            let r: ListOffsetsResponse = c.call(ApiKey::ListOffsets, version, &request);
            let p = &r.topics[0].partitions[0];
            assert_eq!(
                (p.error_code, p.offset),
                (0, want),
                "v{version} spec {spec}"
            );
        }
    }
    let request = ListOffsetsRequest::default().with_topics(vec![ListOffsetsTopic::default()
        .with_name(TopicName(StrBytes::from("nope")))
        .with_partitions(vec![ListOffsetsPartition::default().with_timestamp(-1)])]);
    let r: ListOffsetsResponse = c.call(ApiKey::ListOffsets, 5, &request);
    assert_eq!(r.topics[0].partitions[0].error_code, 3);
}

fn creatable(name: &str, partitions: i32, replication: i16) -> CreatableTopic {
    CreatableTopic::default()
        .with_name(TopicName(StrBytes::from_string(name.to_string())))
        .with_num_partitions(partitions)
        .with_replication_factor(replication)
}

fn created(r: &CreateTopicsResponse) -> Vec<(String, i16)> {
    r.topics
        .iter()
        .map(|t| (t.name.0.to_string(), t.error_code))
        .collect()
}

#[test]
fn create_and_delete_topics() {
    let broker = Broker::start(&["--cores", "2"]);
    let mut c = kafka(&broker);
    let mut native = broker.client();
    for version in 2..=7 {
        let name = format!("v{version}");
        let with_config = creatable(&format!("{name}-cfg"), 3, 1).with_configs(vec![
            CreatableTopicConfig::default()
                .with_name(StrBytes::from("retention.ms"))
                .with_value(Some(StrBytes::from("60000"))),
        ]);
        let request = CreateTopicsRequest::default()
            .with_timeout_ms(5000)
            .with_topics(vec![
                creatable(&name, -1, -1),
                with_config,
                creatable(&name, 1, 1),
                creatable(&format!("{name}-rf"), 1, 3),
                creatable(&format!("{name}-zero"), 0, 1),
                creatable(&format!("{name}-bad/name"), 1, 1),
            ]);
        let r: CreateTopicsResponse = c.call(ApiKey::CreateTopics, version, &request);
        assert_eq!(
            created(&r),
            vec![
                (name.clone(), 0),
                (format!("{name}-cfg"), 0),
                (name.clone(), 36),
                (format!("{name}-rf"), 38),
                (format!("{name}-zero"), 37),
                (format!("{name}-bad/name"), 17),
            ],
            "v{version}"
        );
        if version >= 5 {
            assert_eq!(r.topics[1].num_partitions, 3);
        }
        assert_eq!(native.describe_topic(&name).unwrap().partitions.len(), 1);
        let described = native.describe_topic(&format!("{name}-cfg")).unwrap();
        assert_eq!(described.partitions.len(), 3);
        assert!(
            described
                .configs
                .iter()
                .any(|(k, v)| k == "retention.ms" && v == "60000"),
            "{:?}",
            described.configs
        );
    }
    for version in 1..=6 {
        let name = TopicName(StrBytes::from_string(format!("v{}", version + 1)));
        let request = if version >= 6 {
            DeleteTopicsRequest::default().with_topics(vec![
                DeleteTopicState::default().with_name(Some(name)),
                DeleteTopicState::default().with_name(Some(TopicName(StrBytes::from("nope")))),
                DeleteTopicState::default(), // by id only
            ])
        } else {
            DeleteTopicsRequest::default()
                .with_topic_names(vec![name, TopicName(StrBytes::from("nope"))])
        };
        let r: DeleteTopicsResponse = c.call(ApiKey::DeleteTopics, version, &request);
        let codes: Vec<i16> = r.responses.iter().map(|t| t.error_code).collect();
        let want = if version >= 6 {
            vec![0, 3, 100]
        } else {
            vec![0, 3]
        };
        assert_eq!(codes, want, "v{version}");
        assert!(native.describe_topic(&format!("v{}", version + 1)).is_err());
    }
}

#[test]
fn responses_leave_in_request_order() {
    // Kafka answers the requests of a connection in the order they came (the Java client
    // depends on it): a quick ApiVersions behind a long-polling fetch waits for it.
    let broker = Broker::start(&["--cores", "2"]);
    broker.client().create_topic("q", 1, &[]).unwrap();
    let mut c = kafka(&broker);
    let fetch = c.send(ApiKey::Fetch, 12, &fetch_request("q", &[(0, 0)], 1_000));
    let versions = c.send(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
    let mut first = c.receive().expect("a response");
    let header =
        ResponseHeader::decode(&mut first, ApiKey::Fetch.response_header_version(12)).unwrap();
    assert_eq!(header.correlation_id, fetch, "the fetch's answer first");
    let r = FetchResponse::decode(&mut first, 12).unwrap();
    assert_eq!(fetched(&r), vec![(0, 0, 0, vec![])]);
    let mut second = c.receive().expect("a response");
    let header = ResponseHeader::decode(&mut second, 0).unwrap();
    assert_eq!(header.correlation_id, versions);
    // acks = 0 produces have no response and hold nothing back.
    let batch = common::batch("z", 1, 0, common::now_ms()).freeze();
    c.send(
        ApiKey::Produce,
        9,
        &produce_request("q", 0, batch.clone(), 0),
    );
    let r: ProduceResponse = c.call(ApiKey::Produce, 9, &produce_request("q", 0, batch, -1));
    assert_eq!(produce_errors(&r), vec![(0, 0, 1)]);
}

#[test]
fn an_oversize_frame_closes_only_its_connection() {
    let broker = Broker::start(&["--cores", "1", "--max-request-bytes", "1024"]);
    let mut other = kafka(&broker);
    let mut c = kafka(&broker);
    // Refused from the length prefix alone.
    c.stream.write_all(&(1_i32 << 20).to_be_bytes()).unwrap();
    assert!(c.receive().is_none(), "closed");
    assert!(
        broker.log().contains("exceeds the limit"),
        "{}",
        broker.log()
    );
    let _: ApiVersionsResponse = other.call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
}

/// Kafka's OffsetCommit stores any offset, negative ones included, and OffsetFetch returns it
/// as stored (clients read a negative one as "nothing committed"). kafkajs depends on it: a
/// consumer that seeks to the earliest or latest offset commits -2 or -1.
#[test]
fn negative_committed_offsets_are_stored_as_sent() {
    let broker = Broker::start(&["--cores", "2"]);
    broker.client().create_topic("resets", 2, &[]).unwrap();
    let mut c = kafka(&broker);
    for (version, earliest_or_latest) in [(2, -2), (5, -1), (8, -2)] {
        let group = format!("resets-v{version}");
        // A commit from outside any generation (generation -1, no member id), as admin tools
        // make them; kafkajs's resetOffsets commits as a member, which the same store serves.
        let request = OffsetCommitRequest::default()
            .with_group_id(GroupId(StrBytes::from(group.clone())))
            .with_generation_id_or_member_epoch(-1)
            .with_topics(vec![OffsetCommitRequestTopic::default()
                .with_name(TopicName(StrBytes::from("resets")))
                .with_partitions(vec![
                    OffsetCommitRequestPartition::default()
                        .with_partition_index(0)
                        .with_committed_offset(earliest_or_latest),
                    OffsetCommitRequestPartition::default()
                        .with_partition_index(1)
                        .with_committed_offset(7),
                ])]);
        let r: OffsetCommitResponse = c.call(ApiKey::OffsetCommit, version, &request);
        let codes: Vec<(i32, i16)> = r.topics[0]
            .partitions
            .iter()
            .map(|p| (p.partition_index, p.error_code))
            .collect();
        assert_eq!(codes, [(0, 0), (1, 0)], "v{version}");

        let request = OffsetFetchRequest::default()
            .with_group_id(GroupId(StrBytes::from(group.clone())))
            .with_topics(Some(vec![OffsetFetchRequestTopic::default()
                .with_name(TopicName(StrBytes::from("resets")))
                .with_partition_indexes(vec![0, 1])]));
        let r: OffsetFetchResponse = c.call(ApiKey::OffsetFetch, 4, &request);
        let committed: Vec<(i32, i64, i16)> = r.topics[0]
            .partitions
            .iter()
            .map(|p| (p.partition_index, p.committed_offset, p.error_code))
            .collect();
        assert_eq!(
            committed,
            [(0, earliest_or_latest, 0), (1, 7, 0)],
            "v{version}"
        );
        // The native protocol sees the same committed offsets.
        let native = broker
            .client()
            .fetch_offsets(&group, &[("resets", 0), ("resets", 1)])
            .unwrap();
        assert_eq!(
            native,
            [
                ("resets".to_string(), 0, earliest_or_latest),
                ("resets".to_string(), 1, 7)
            ],
            "v{version}"
        );
    }
}

#[test]
fn find_coordinator_answers_groups_and_refuses_transactions_at_every_version() {
    let broker = Broker::start(&["--cores", "2"]);
    let addr = broker.kafka.unwrap();
    let mut c = kafka(&broker);
    for version in 0..=6 {
        for key_type in [0i8, 1] {
            if version == 0 && key_type == 1 {
                continue; // v0 has no key type: groups only
            }
            let mut request = FindCoordinatorRequest::default().with_key_type(key_type);
            request = if version >= 4 {
                request.with_coordinator_keys(vec![StrBytes::from("g1"), StrBytes::from("g2")])
            } else {
                request.with_key(StrBytes::from("g1"))
            };
            let r: FindCoordinatorResponse = c.call(ApiKey::FindCoordinator, version, &request);
            let answers: Vec<(i16, i32, String, i32)> = if version >= 4 {
                assert_eq!(r.coordinators.len(), 2, "v{version}");
                r.coordinators
                    .iter()
                    .map(|k| (k.error_code, k.node_id.0, k.host.to_string(), k.port))
                    .collect()
            } else {
                vec![(r.error_code, r.node_id.0, r.host.to_string(), r.port)]
            };
            for (code, node, host, port) in answers {
                if key_type == 0 {
                    assert_eq!(
                        (code, node, host, port),
                        (0, 0, addr.ip().to_string(), i32::from(addr.port())),
                        "v{version}"
                    );
                } else {
                    assert_eq!(code, 15, "v{version}: COORDINATOR_NOT_AVAILABLE");
                }
            }
        }
    }
}

#[test]
fn admin_apis_at_every_version() {
    use create_partitions_request::CreatePartitionsTopic;
    use describe_configs_request::DescribeConfigsResource;
    use incremental_alter_configs_request::{AlterConfigsResource, AlterableConfig};
    let broker = Broker::start(&["--cores", "2"]);
    broker.client().create_topic("conf", 2, &[]).unwrap();
    let addr = broker.kafka.unwrap();
    let mut c = kafka(&broker);
    for version in 0..=2 {
        let r: DescribeClusterResponse = c.call(
            ApiKey::DescribeCluster,
            version,
            &DescribeClusterRequest::default(),
        );
        assert_eq!(r.error_code, 0);
        assert_eq!(r.cluster_id.as_str(), "eventflow");
        assert_eq!(r.controller_id.0, 0);
        assert_eq!(r.brokers.len(), 1);
        assert_eq!(r.brokers[0].port, i32::from(addr.port()));
    }
    for version in 1..=4 {
        let request = DescribeConfigsRequest::default().with_resources(vec![
            DescribeConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(StrBytes::from("conf"))
                .with_configuration_keys(Some(vec![StrBytes::from("segment.bytes")])),
            DescribeConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(StrBytes::from("nope")),
        ]);
        let r: DescribeConfigsResponse = c.call(ApiKey::DescribeConfigs, version, &request);
        assert_eq!(r.results[0].error_code, 0, "v{version}");
        let names: Vec<&str> = r.results[0]
            .configs
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        assert_eq!(names, ["segment.bytes"], "v{version}");
        assert_eq!(r.results[1].error_code, 3, "v{version}");
    }
    for version in 0..=1 {
        let retention = format!("{}", 1000 + i32::from(version));
        let request = IncrementalAlterConfigsRequest::default().with_resources(vec![
            AlterConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(StrBytes::from("conf"))
                .with_configs(vec![AlterableConfig::default()
                    .with_name(StrBytes::from("retention.ms"))
                    .with_value(Some(StrBytes::from(retention.clone())))]),
        ]);
        let r: IncrementalAlterConfigsResponse =
            c.call(ApiKey::IncrementalAlterConfigs, version, &request);
        assert_eq!(r.responses[0].error_code, 0, "v{version}");
        let described = broker.client().describe_topic("conf").unwrap();
        assert!(described
            .configs
            .contains(&("retention.ms".to_string(), retention)));
        // validate_only is refused, and nothing changes.
        let r: IncrementalAlterConfigsResponse = c.call(
            ApiKey::IncrementalAlterConfigs,
            version,
            &request.with_validate_only(true),
        );
        assert_eq!(r.responses[0].error_code, 42, "v{version}");
    }
    for version in 0..=3 {
        let request = CreatePartitionsRequest::default().with_topics(vec![
            CreatePartitionsTopic::default()
                .with_name(TopicName(StrBytes::from("conf")))
                .with_count(3),
            CreatePartitionsTopic::default()
                .with_name(TopicName(StrBytes::from("nope")))
                .with_count(3),
        ]);
        let r: CreatePartitionsResponse = c.call(ApiKey::CreatePartitions, version, &request);
        assert_eq!(r.results[0].error_code, 37, "v{version}");
        assert_eq!(
            r.results[0].error_message.as_deref(),
            Some("eventflow cannot add partitions to an existing topic yet")
        );
        assert_eq!(r.results[1].error_code, 3, "v{version}");
    }
    assert_eq!(
        broker
            .client()
            .describe_topic("conf")
            .unwrap()
            .partitions
            .len(),
        2
    );
}
