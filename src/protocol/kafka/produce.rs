//! The Produce request (v0–v12), decoded by hand so that each partition's records stay a
//! `BytesMut` handle into the buffer the socket read filled: the batches go to the log
//! without a copy, and the owning shard writes their base offsets in place, as on the
//! native path. The crate's `ProduceRequest` (decoded from the same bytes) is the oracle
//! in the tests below.
//!
//! Layout (Kafka's ProduceRequest.json; v9 is the first flexible version, with compact
//! strings, arrays and bytes and a tagged-field section after every struct):
//!
//! ```text
//! transactional_id nullable string (v3+), acks i16, timeout_ms i32,
//! topic_data: [ name string, partition_data: [ index i32, records nullable bytes ] ]
//! ```

use bytes::{Buf, BytesMut};

/// First flexible version.
const FLEXIBLE: i16 = 9;

/// One partition's entry.
#[derive(Debug)]
pub struct ProducePartitionData {
    /// Partition index as sent.
    pub index: i32,
    /// The record batches, a handle into the request buffer (empty when null).
    pub records: BytesMut,
}

/// One topic's entries.
#[derive(Debug)]
pub struct ProduceTopicData {
    /// Topic name.
    pub name: String,
    /// Its partitions, in request order.
    pub partitions: Vec<ProducePartitionData>,
}

/// A decoded Produce request.
#[derive(Debug)]
pub struct ProduceData {
    /// Transactional id (v3+), if any.
    pub transactional_id: Option<String>,
    /// -1, 0 or 1 in a valid request (checked by the handler).
    pub acks: i16,
    /// How long the client waits for acknowledgements.
    pub timeout_ms: i32,
    /// Topics, in request order.
    pub topics: Vec<ProduceTopicData>,
}

struct Reader {
    buf: BytesMut,
    flexible: bool,
}

impl Reader {
    fn need(&self, n: usize, field: &str) -> Result<(), String> {
        if self.buf.len() < n {
            Err(format!("the request ends inside `{field}`"))
        } else {
            Ok(())
        }
    }

    fn i16(&mut self, field: &str) -> Result<i16, String> {
        self.need(2, field)?;
        Ok(self.buf.get_i16())
    }

    fn i32(&mut self, field: &str) -> Result<i32, String> {
        self.need(4, field)?;
        Ok(self.buf.get_i32())
    }

    fn uvarint(&mut self, field: &str) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..35).step_by(7) {
            self.need(1, field)?;
            let b = self.buf.get_u8();
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(format!("`{field}`: varint longer than 5 bytes"))
    }

    /// A length (`i16` for strings, `i32` for bytes and arrays, or compact); `None` is null.
    fn len(&mut self, wide: bool, field: &str) -> Result<Option<usize>, String> {
        let n = if self.flexible {
            self.uvarint(field)? as i64 - 1
        } else if wide {
            i64::from(self.i32(field)?)
        } else {
            i64::from(self.i16(field)?)
        };
        match n {
            -1 => Ok(None),
            n if n >= 0 => Ok(Some(n as usize)),
            n => Err(format!("`{field}`: negative length {n}")),
        }
    }

    fn nullable_string(&mut self, field: &str) -> Result<Option<String>, String> {
        let Some(n) = self.len(false, field)? else {
            return Ok(None);
        };
        self.need(n, field)?;
        let bytes = self.buf.split_to(n);
        String::from_utf8(bytes.to_vec())
            .map(Some)
            .map_err(|_| format!("`{field}` is not UTF-8"))
    }

    fn string(&mut self, field: &str) -> Result<String, String> {
        self.nullable_string(field)?
            .ok_or_else(|| format!("`{field}` is null"))
    }

    fn bytes(&mut self, field: &str) -> Result<BytesMut, String> {
        let n = self.len(true, field)?.unwrap_or(0);
        self.need(n, field)?;
        Ok(self.buf.split_to(n))
    }

    /// An array's element count, refused when the bytes left cannot hold that many
    /// elements of at least `min_element` bytes each, so nothing is sized from a count the
    /// frame cannot hold. (At one byte per element, a 16 MiB frame could make the topics'
    /// `Vec` ask for 768 MiB: found by fuzzing.)
    fn count(&mut self, field: &str, min_element: usize) -> Result<usize, String> {
        let n = self.len(true, field)?.unwrap_or(0);
        if n.saturating_mul(min_element) > self.buf.len() {
            return Err(format!(
                "`{field}` announces {n} elements with {} bytes left",
                self.buf.len()
            ));
        }
        Ok(n)
    }

    fn tags(&mut self) -> Result<(), String> {
        if !self.flexible {
            return Ok(());
        }
        let count = self.uvarint("tagged fields")?;
        for _ in 0..count {
            self.uvarint("tag")?;
            let size = self.uvarint("tag size")? as usize;
            self.need(size, "tagged field")?;
            self.buf.advance(size);
        }
        Ok(())
    }
}

/// Decodes a Produce body (after the request header) of `version`.
pub fn decode_produce(body: BytesMut, version: i16) -> Result<ProduceData, String> {
    let mut r = Reader {
        buf: body,
        flexible: version >= FLEXIBLE,
    };
    let transactional_id = if version >= 3 {
        r.nullable_string("transactional_id")?
    } else {
        None
    };
    let acks = r.i16("acks")?;
    let timeout_ms = r.i32("timeout_ms")?;
    // The smallest topic: an empty name and partition count (and its tag section); the
    // smallest partition: an index, empty records (and its tag section).
    let (min_topic, min_partition) = if r.flexible { (3, 6) } else { (6, 8) };
    let topic_count = r.count("topic_data", min_topic)?;
    let mut topics = Vec::with_capacity(topic_count);
    for _ in 0..topic_count {
        let name = r.string("name")?;
        let partition_count = r.count("partition_data", min_partition)?;
        let mut partitions = Vec::with_capacity(partition_count);
        for _ in 0..partition_count {
            let index = r.i32("index")?;
            let records = r.bytes("records")?;
            r.tags()?;
            partitions.push(ProducePartitionData { index, records });
        }
        r.tags()?;
        topics.push(ProduceTopicData { name, partitions });
    }
    r.tags()?;
    if !r.buf.is_empty() {
        return Err(format!("{} bytes after the last field", r.buf.len()));
    }
    Ok(ProduceData {
        transactional_id,
        acks,
        timeout_ms,
        topics,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ProduceRequest, TopicName};
    use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

    fn sample() -> ProduceRequest {
        ProduceRequest::default()
            .with_transactional_id(Some(StrBytes::from("txn").into()))
            .with_acks(-1)
            .with_timeout_ms(1500)
            .with_topic_data(vec![
                TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from("orders")))
                    .with_partition_data(vec![
                        PartitionProduceData::default()
                            .with_index(3)
                            .with_records(Some(Bytes::from_static(b"batch-bytes"))),
                        PartitionProduceData::default()
                            .with_index(4)
                            .with_records(None),
                    ]),
                TopicProduceData::default().with_name(TopicName(StrBytes::from("empty"))),
            ])
    }

    #[test]
    fn matches_the_crate_decoder_at_every_version() {
        for version in 3..=12 {
            let mut body = BytesMut::new();
            sample().encode(&mut body, version).unwrap();
            let oracle = ProduceRequest::decode(&mut body.clone().freeze(), version).unwrap();
            let ours = decode_produce(body, version).unwrap();
            assert_eq!(
                ours.transactional_id.as_deref(),
                oracle.transactional_id.as_ref().map(|t| t.0.as_str()),
                "v{version}"
            );
            assert_eq!(
                (ours.acks, ours.timeout_ms),
                (oracle.acks, oracle.timeout_ms)
            );
            assert_eq!(ours.topics.len(), oracle.topic_data.len());
            for (t, o) in ours.topics.iter().zip(&oracle.topic_data) {
                assert_eq!(t.name, o.name.0.as_str());
                assert_eq!(t.partitions.len(), o.partition_data.len());
                for (p, op) in t.partitions.iter().zip(&o.partition_data) {
                    assert_eq!(p.index, op.index);
                    assert_eq!(&p.records[..], &op.records.clone().unwrap_or_default()[..]);
                }
            }
        }
    }

    #[test]
    fn records_are_handles_into_the_request_buffer() {
        let mut body = BytesMut::new();
        sample().encode(&mut body, 9).unwrap();
        let range = body.as_ptr_range();
        let ours = decode_produce(body, 9).unwrap();
        let records = &ours.topics[0].partitions[0].records;
        assert!(range.contains(&records.as_ptr()), "no copy");
    }

    #[test]
    fn v2_has_no_transactional_id() {
        let mut body = BytesMut::new();
        sample()
            .with_transactional_id(None)
            .encode(&mut body, 3)
            .unwrap();
        let v2 = body.split_off(2); // v3 minus its null transactional id
        let ours = decode_produce(v2, 2).unwrap();
        assert_eq!(ours.topics[0].partitions[0].index, 3);
    }

    proptest::proptest! {
        /// Any bytes decode to a request or an error, never a panic.
        #[test]
        fn decode_never_panics(
            version in 0i16..13,
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
        ) {
            let _ = decode_produce(BytesMut::from(&body[..]), version);
        }
    }

    #[test]
    fn bad_bodies_are_errors() {
        let mut body = BytesMut::new();
        sample().encode(&mut body, 7).unwrap();
        for cut in 0..body.len() {
            assert!(
                decode_produce(body.clone().split_to(cut), 7).is_err(),
                "cut {cut}"
            );
        }
        let mut longer = body.clone();
        longer.extend_from_slice(&[0]);
        assert!(decode_produce(longer, 7).is_err());
        let mut huge = BytesMut::from(&[0xff, 0xff, 0, 1, 0, 0, 0, 0][..]);
        huge.extend_from_slice(&i32::MAX.to_be_bytes());
        assert!(decode_produce(huge, 3).unwrap_err().contains("announces"));
        // As many topics as bytes left: each takes at least 6, so the count is refused
        // before the topics' Vec is sized from it.
        let mut many = BytesMut::from(&[0xff, 0xff, 0, 1, 0, 0, 0, 0][..]);
        many.extend_from_slice(&1000i32.to_be_bytes());
        many.extend_from_slice(&[0; 1000]);
        assert!(decode_produce(many, 3).unwrap_err().contains("announces"));
    }
}
