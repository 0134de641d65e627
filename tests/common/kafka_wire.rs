//! A raw Kafka-protocol connection for tests that speak the protocol request by request,
//! with the `kafka-protocol` crate's client side encoding requests and decoding responses.
#![allow(dead_code)] // each test binary uses its own part of this module

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

/// One connection to a Kafka listener; correlation ids count up from 1.
pub(crate) struct KafkaConn {
    pub(crate) stream: TcpStream,
    next_id: i32,
}

impl KafkaConn {
    pub(crate) fn open(addr: SocketAddr) -> KafkaConn {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        KafkaConn { stream, next_id: 1 }
    }

    /// Sends `payload` as one length-prefixed frame, whatever it holds.
    pub(crate) fn send_raw(&mut self, payload: &[u8]) {
        let mut frame = (payload.len() as i32).to_be_bytes().to_vec();
        frame.extend_from_slice(payload);
        self.stream.write_all(&frame).unwrap();
    }

    /// Sends a request; returns its correlation id.
    pub(crate) fn send(&mut self, key: ApiKey, version: i16, body: &impl Encodable) -> i32 {
        let id = self.next_id;
        self.next_id += 1;
        let mut out = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(id)
            .with_client_id(Some(StrBytes::from("eventflow-test")))
            .encode(&mut out, key.request_header_version(version))
            .unwrap();
        body.encode(&mut out, version).unwrap();
        self.send_raw(&out);
        id
    }

    /// Reads one response frame; `None` if the broker closed the connection.
    pub(crate) fn receive(&mut self) -> Option<Bytes> {
        let mut len = [0u8; 4];
        if self.stream.read_exact(&mut len).is_err() {
            return None;
        }
        let mut buf = vec![0u8; i32::from_be_bytes(len) as usize];
        self.stream.read_exact(&mut buf).unwrap();
        Some(Bytes::from(buf))
    }

    /// Sends a request and decodes its response.
    pub(crate) fn call<R: Decodable>(
        &mut self,
        key: ApiKey,
        version: i16,
        body: &impl Encodable,
    ) -> R {
        let id = self.send(key, version, body);
        self.response(key, version, id)
    }

    /// Reads the response to the request sent with correlation id `id`.
    pub(crate) fn response<R: Decodable>(&mut self, key: ApiKey, version: i16, id: i32) -> R {
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
