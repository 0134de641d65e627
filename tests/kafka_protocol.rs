//! The Kafka listener at the byte level: requests encoded with the `kafka-protocol` crate's
//! client side over a plain socket, for what a well-behaved client never sends (unknown
//! APIs and versions) and for exact response fields.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use common::Broker;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, MetadataRequest, MetadataResponse,
    RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

struct Conn {
    stream: TcpStream,
    next_id: i32,
}

impl Conn {
    fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Conn { stream, next_id: 1 }
    }

    fn send_raw(&mut self, payload: &[u8]) {
        let mut frame = (payload.len() as i32).to_be_bytes().to_vec();
        frame.extend_from_slice(payload);
        self.stream.write_all(&frame).unwrap();
    }

    /// Sends a request; returns its correlation id.
    fn send(&mut self, key: ApiKey, version: i16, body: &impl Encodable) -> i32 {
        let id = self.next_id;
        self.next_id += 1;
        let mut out = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(id)
            .with_client_id(Some(StrBytes::from("kafka-protocol-test")))
            .encode(&mut out, key.request_header_version(version))
            .unwrap();
        body.encode(&mut out, version).unwrap();
        self.send_raw(&out);
        id
    }

    /// Reads one response frame; `None` if the broker closed the connection.
    fn receive(&mut self) -> Option<Bytes> {
        let mut len = [0u8; 4];
        if self.stream.read_exact(&mut len).is_err() {
            return None;
        }
        let mut buf = vec![0u8; i32::from_be_bytes(len) as usize];
        self.stream.read_exact(&mut buf).unwrap();
        Some(Bytes::from(buf))
    }

    fn call<R: Decodable>(&mut self, key: ApiKey, version: i16, body: &impl Encodable) -> R {
        let id = self.send(key, version, body);
        let mut frame = self.receive().expect("a response");
        let header =
            ResponseHeader::decode(&mut frame, key.response_header_version(version)).unwrap();
        assert_eq!(header.correlation_id, id);
        let response = R::decode(&mut frame, version).unwrap();
        assert!(
            !frame.has_remaining(),
            "{} bytes left over",
            frame.remaining()
        );
        response
    }
}

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

    // An API key nobody knows, and a known one outside the advertised range: closed.
    let mut unknown = BytesMut::new();
    unknown.put_i16(9999);
    unknown.put_i16(0);
    unknown.put_i32(6);
    c.send_raw(&unknown);
    assert!(c.receive().is_none(), "closed");
    let mut c = kafka(&broker);
    c.send(ApiKey::Metadata, 13, &MetadataRequest::default());
    assert!(c.receive().is_none(), "closed");
    // A body that does not parse: closed.
    let mut c = kafka(&broker);
    let mut bad = BytesMut::new();
    bad.put_i16(ApiKey::Metadata as i16);
    bad.put_i16(9);
    bad.put_i32(7);
    bad.put_u8(0x80);
    c.send_raw(&bad);
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
