//! The Fetch response (v4–v12), encoded by hand so that record bytes are never copied into
//! it: each partition's records are either a shared `Bytes` (read on another shard) or a
//! hole of known length ([`Part::External`]) that the connection's writer fills by splicing
//! the segment file. The crate's `FetchResponse::encode` is the oracle in the tests below.
//!
//! Layout (Kafka's FetchResponse.json; v12 is the first flexible version, with compact
//! arrays, strings and bytes, and a tagged-field section after every struct):
//!
//! ```text
//! size i32, correlation_id i32, [v12: header tags]
//! throttle_time_ms i32, error_code i16 (v7+), session_id i32 (v7+)
//! responses: [ topic string, partitions: [ partition_index i32, error_code i16,
//!              high_watermark i64, last_stable_offset i64, log_start_offset i64 (v5+),
//!              aborted_transactions (always empty), preferred_read_replica i32 (v11+),
//!              records bytes, [v12: tags] ], [v12: tags] ]
//! [v12: tags]
//! ```

use bytes::{BufMut, Bytes, BytesMut};

use crate::protocol::frame::Part;

/// Lowest version encoded here.
pub const MIN_VERSION: i16 = 4;
/// Highest version encoded here (v13 names topics by id).
pub const MAX_VERSION: i16 = 12;

/// One partition's records in a response.
#[derive(Debug, Clone)]
pub enum Records {
    /// Bytes in memory.
    Shared(Bytes),
    /// This many bytes the writer takes from elsewhere (a file range).
    External(usize),
}

impl Records {
    /// How many bytes of record batches.
    pub fn len(&self) -> usize {
        match self {
            Records::Shared(b) => b.len(),
            Records::External(n) => *n,
        }
    }

    /// Whether there are no record bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One partition of a fetch response.
#[derive(Debug, Clone)]
pub struct PartitionData {
    /// Partition index.
    pub index: i32,
    /// Kafka error code.
    pub error: i16,
    /// Offset after the last committed record.
    pub high_watermark: i64,
    /// Equal to the high watermark: there are no transactions.
    pub last_stable_offset: i64,
    /// First offset still in the log.
    pub log_start_offset: i64,
    /// Whole or partial record batches, as stored.
    pub records: Records,
}

/// One topic of a fetch response.
#[derive(Debug, Clone)]
pub struct TopicData {
    /// Topic name.
    pub name: String,
    /// Its partitions, in request order.
    pub partitions: Vec<PartitionData>,
}

/// The top level of a fetch response.
#[derive(Debug, Clone)]
pub struct FetchResponseData {
    /// How long the client is held back for going over a quota (0: not).
    pub throttle_time_ms: i32,
    /// Request-level error code (v7+).
    pub error: i16,
    /// Fetch session id (v7+); 0 when the fetch is answered without a session.
    pub session_id: i32,
    /// Topics: a full fetch's in request order, an incremental fetch's those with news.
    pub topics: Vec<TopicData>,
}

/// Gathers a frame as parts: small fields in a growing buffer, records as their own parts,
/// the length prefix patched in at the end.
struct PartsWriter {
    head: Option<BytesMut>,
    current: BytesMut,
    parts: Vec<Part>,
    len: usize,
}

impl PartsWriter {
    fn new() -> Self {
        let mut current = BytesMut::with_capacity(256);
        current.put_i32(0);
        PartsWriter {
            head: None,
            current,
            parts: Vec::new(),
            len: 0,
        }
    }

    fn buf(&mut self, additional: usize) -> &mut BytesMut {
        self.len += additional;
        &mut self.current
    }

    fn i16(&mut self, v: i16) {
        self.buf(2).put_i16(v);
    }

    fn i32(&mut self, v: i32) {
        self.buf(4).put_i32(v);
    }

    fn i64(&mut self, v: i64) {
        self.buf(8).put_i64(v);
    }

    fn uvarint(&mut self, mut v: u64) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.buf(1).put_u8(byte);
                return;
            }
            self.buf(1).put_u8(byte | 0x80);
        }
    }

    /// An array or bytes length: compact (varint of len + 1) or i32.
    fn len_prefix(&mut self, n: usize, compact: bool) {
        if compact {
            self.uvarint(n as u64 + 1);
        } else {
            self.i32(n as i32);
        }
    }

    fn string(&mut self, s: &str, compact: bool) {
        if compact {
            self.uvarint(s.len() as u64 + 1);
        } else {
            self.i16(s.len() as i16);
        }
        self.buf(s.len()).put_slice(s.as_bytes());
    }

    fn close_current(&mut self) {
        let filled = self.current.split();
        if self.head.is_none() {
            self.head = Some(filled);
        } else if !filled.is_empty() {
            self.parts.push(Part::Bytes(filled.freeze()));
        }
    }

    fn records(&mut self, records: &Records) {
        let len = records.len();
        self.len += len;
        if len == 0 {
            return;
        }
        self.close_current();
        self.parts.push(match records {
            Records::Shared(b) => Part::Bytes(b.clone()),
            Records::External(n) => Part::External(*n),
        });
    }

    fn finish(mut self) -> Vec<Part> {
        let prefix = (self.len as i32).to_be_bytes();
        let mut out = Vec::with_capacity(self.parts.len() + 2);
        let rest = self.current.split();
        match self.head.take() {
            Some(mut head) => {
                head[..4].copy_from_slice(&prefix);
                out.push(Part::Bytes(head.freeze()));
                out.append(&mut self.parts);
                if !rest.is_empty() {
                    out.push(Part::Bytes(rest.freeze()));
                }
            }
            None => {
                let mut all = rest;
                all[..4].copy_from_slice(&prefix);
                out.push(Part::Bytes(all.freeze()));
            }
        }
        out
    }
}

/// Encodes a whole response frame (length prefix, header, body) at `version` (4..=12).
pub fn encode_fetch_response(
    correlation_id: i32,
    version: i16,
    response: &FetchResponseData,
) -> Vec<Part> {
    debug_assert!((MIN_VERSION..=MAX_VERSION).contains(&version));
    let flexible = version >= 12;
    let mut w = PartsWriter::new();
    w.i32(correlation_id);
    if flexible {
        w.uvarint(0); // response header tags
    }
    w.i32(response.throttle_time_ms);
    if version >= 7 {
        w.i16(response.error);
        w.i32(response.session_id);
    }
    w.len_prefix(response.topics.len(), flexible);
    for topic in &response.topics {
        w.string(&topic.name, flexible);
        w.len_prefix(topic.partitions.len(), flexible);
        for p in &topic.partitions {
            w.i32(p.index);
            w.i16(p.error);
            w.i64(p.high_watermark);
            w.i64(p.last_stable_offset);
            if version >= 5 {
                w.i64(p.log_start_offset);
            }
            w.len_prefix(0, flexible); // aborted_transactions
            if version >= 11 {
                w.i32(-1); // preferred_read_replica: none
            }
            w.len_prefix(p.records.len(), flexible);
            w.records(&p.records);
            if flexible {
                w.uvarint(0);
            }
        }
        if flexible {
            w.uvarint(0);
        }
    }
    if flexible {
        w.uvarint(0);
    }
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData as P};
    use kafka_protocol::messages::{ApiKey, BrokerId, FetchResponse, ResponseHeader, TopicName};
    use kafka_protocol::protocol::{Encodable, StrBytes};

    fn sample(records: &[Records]) -> FetchResponseData {
        FetchResponseData {
            throttle_time_ms: 0,
            error: 0,
            session_id: 0,
            topics: vec![
                TopicData {
                    name: "orders".into(),
                    partitions: records
                        .iter()
                        .enumerate()
                        .map(|(i, r)| PartitionData {
                            index: i as i32,
                            error: if i == 1 { 3 } else { 0 },
                            high_watermark: 100 + i as i64,
                            last_stable_offset: 100 + i as i64,
                            log_start_offset: i as i64,
                            records: r.clone(),
                        })
                        .collect(),
                },
                TopicData {
                    name: "empty".into(),
                    partitions: vec![],
                },
            ],
        }
    }

    fn oracle(
        correlation_id: i32,
        version: i16,
        data: &FetchResponseData,
        files: &[u8],
    ) -> Vec<u8> {
        let mut files = files.iter().copied();
        let topics = data
            .topics
            .iter()
            .map(|t| {
                FetchableTopicResponse::default()
                    .with_topic(TopicName(StrBytes::from_string(t.name.clone())))
                    .with_partitions(
                        t.partitions
                            .iter()
                            .map(|p| {
                                let records = match &p.records {
                                    Records::Shared(b) => b.clone(),
                                    Records::External(n) => {
                                        Bytes::from(files.by_ref().take(*n).collect::<Vec<_>>())
                                    }
                                };
                                P::default()
                                    .with_partition_index(p.index)
                                    .with_error_code(p.error)
                                    .with_high_watermark(p.high_watermark)
                                    .with_last_stable_offset(p.last_stable_offset)
                                    .with_log_start_offset(p.log_start_offset)
                                    .with_aborted_transactions(Some(vec![]))
                                    .with_preferred_read_replica(BrokerId(-1))
                                    .with_records(Some(records))
                            })
                            .collect(),
                    )
            })
            .collect();
        let body = FetchResponse::default()
            .with_error_code(data.error)
            .with_session_id(data.session_id)
            .with_responses(topics);
        let mut out = BytesMut::new();
        out.put_i32(0);
        ResponseHeader::default()
            .with_correlation_id(correlation_id)
            .encode(&mut out, ApiKey::Fetch.response_header_version(version))
            .unwrap();
        body.encode(&mut out, version).unwrap();
        let len = (out.len() - 4) as i32;
        out[..4].copy_from_slice(&len.to_be_bytes());
        out.to_vec()
    }

    /// The parts with each external hole filled from `files`, in order.
    fn flatten(parts: Vec<Part>, files: &[u8]) -> Vec<u8> {
        let mut files = files.iter().copied();
        let mut out = Vec::new();
        for part in parts {
            match part {
                Part::Bytes(b) => out.extend_from_slice(&b),
                Part::External(n) => out.extend(files.by_ref().take(n)),
            }
        }
        out
    }

    #[test]
    fn matches_the_crate_encoder_at_every_version() {
        let file: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        let cases = [
            vec![],
            vec![Records::Shared(Bytes::new())],
            vec![
                Records::Shared(Bytes::from_static(b"batch-bytes")),
                Records::Shared(Bytes::new()),
                Records::External(200),
            ],
            vec![
                Records::External(100),
                Records::Shared(Bytes::from(vec![7u8; 130])),
            ],
        ];
        for version in MIN_VERSION..=MAX_VERSION {
            for (i, case) in cases.iter().enumerate() {
                let mut data = sample(case);
                if i == 3 {
                    data.error = 70;
                }
                let ours = flatten(encode_fetch_response(77, version, &data), &file);
                assert_eq!(
                    ours,
                    oracle(77, version, &data, &file),
                    "v{version} case {i}"
                );
            }
        }
    }

    #[test]
    fn records_stay_separate_parts() {
        let shared = Bytes::from(vec![1u8; 64]);
        let data = sample(&[Records::Shared(shared.clone()), Records::External(10)]);
        let parts = encode_fetch_response(1, 12, &data);
        assert!(parts
            .iter()
            .any(|p| matches!(p, Part::Bytes(b) if b.as_ptr() == shared.as_ptr())));
        assert_eq!(
            parts
                .iter()
                .filter(|p| matches!(p, Part::External(10)))
                .count(),
            1
        );
    }
}
