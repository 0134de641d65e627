//! The `consumer` protocol's embedded messages: a member's subscription (JoinGroup metadata)
//! and its assignment (SyncGroup), which Kafka clients encode inside the group requests. The
//! broker relays them untouched; it reads them only to describe a group (its members' topics
//! and partitions) and writes them only to show eventflow's native members to Kafka tools.
//!
//! Both start with an `int16` version; every later version only appends fields, so a reader
//! takes the fields it knows from any version, as Kafka's clients do. Hand-written rather than
//! through the codec so that a hostile length cannot make the broker allocate: every length
//! is checked against the bytes left.

use bytes::{BufMut, Bytes, BytesMut};

/// A reader over untrusted bytes: every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn i16(&mut self) -> Option<i16> {
        Some(i16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }

    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }

    fn string(&mut self) -> Option<String> {
        let len = usize::try_from(self.i16()?).ok()?;
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }

    /// An array's length, refused if even `min_item` bytes per item would not fit.
    fn array_len(&mut self, min_item: usize) -> Option<usize> {
        let len = usize::try_from(self.i32()?).ok()?;
        (len.checked_mul(min_item)? <= self.0.len()).then_some(len)
    }
}

/// The topics of a subscription; `None` if the bytes are not a subscription.
pub fn subscription_topics(metadata: &[u8]) -> Option<Vec<String>> {
    let mut r = Reader(metadata);
    if r.i16()? < 0 {
        return None;
    }
    let n = r.array_len(2)?;
    (0..n).map(|_| r.string()).collect()
}

/// The partitions of an assignment, by topic; `None` if the bytes are not an assignment.
/// An empty buffer is an empty assignment (what a member gets when the leader gave it none).
pub fn assignment_partitions(assignment: &[u8]) -> Option<Vec<(String, Vec<i32>)>> {
    if assignment.is_empty() {
        return Some(Vec::new());
    }
    let mut r = Reader(assignment);
    if r.i16()? < 0 {
        return None;
    }
    let n = r.array_len(6)?;
    (0..n)
        .map(|_| {
            let topic = r.string()?;
            let count = r.array_len(4)?;
            let partitions = (0..count).map(|_| r.i32()).collect::<Option<Vec<_>>>()?;
            Some((topic, partitions))
        })
        .collect()
}

fn put_string(buf: &mut BytesMut, s: &str) {
    // Topic names are at most 249 bytes, far below i16::MAX.
    buf.put_i16(s.len().min(i16::MAX as usize) as i16);
    buf.put_slice(&s.as_bytes()[..s.len().min(i16::MAX as usize)]);
}

/// A version 0 subscription to `topics`, without user data.
pub fn encode_subscription(topics: &[String]) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_i16(0);
    buf.put_i32(topics.len() as i32);
    for topic in topics {
        put_string(&mut buf, topic);
    }
    buf.put_i32(-1);
    buf.freeze()
}

/// A version 0 assignment of `partitions` by topic, without user data.
pub fn encode_assignment(partitions: &[(String, Vec<u32>)]) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_i16(0);
    buf.put_i32(partitions.len() as i32);
    for (topic, ps) in partitions {
        put_string(&mut buf, topic);
        buf.put_i32(ps.len() as i32);
        for &p in ps {
            buf.put_i32(p as i32);
        }
    }
    buf.put_i32(-1);
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::consumer_protocol_assignment::{
        ConsumerProtocolAssignment, TopicPartition as AssignedPartition,
    };
    use kafka_protocol::messages::consumer_protocol_subscription::{
        ConsumerProtocolSubscription, TopicPartition,
    };
    use kafka_protocol::messages::TopicName;
    use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

    fn versioned(version: i16, body: impl Encodable) -> Vec<u8> {
        let mut buf = BytesMut::new();
        buf.put_i16(version);
        body.encode(&mut buf, version).unwrap();
        buf.to_vec()
    }

    #[test]
    fn reads_what_kafka_clients_write_at_every_version() {
        for version in 0..=3 {
            let subscription = ConsumerProtocolSubscription::default()
                .with_topics(vec![StrBytes::from("orders"), StrBytes::from("audit")])
                .with_user_data(Some(Bytes::from_static(b"sticky")))
                .with_owned_partitions(vec![TopicPartition::default()
                    .with_topic(TopicName(StrBytes::from("orders")))
                    .with_partitions(vec![0, 2])]);
            assert_eq!(
                subscription_topics(&versioned(version, subscription)),
                Some(vec!["orders".to_string(), "audit".to_string()]),
                "v{version}"
            );
            let assignment = ConsumerProtocolAssignment::default().with_assigned_partitions(vec![
                AssignedPartition::default()
                    .with_topic(TopicName(StrBytes::from("orders")))
                    .with_partitions(vec![1, 3]),
            ]);
            assert_eq!(
                assignment_partitions(&versioned(version, assignment)),
                Some(vec![("orders".to_string(), vec![1, 3])]),
                "v{version}"
            );
        }
    }

    #[test]
    fn what_it_writes_kafka_clients_read() {
        let bytes = encode_subscription(&["orders".into()]);
        let mut body = bytes.slice(2..);
        let decoded = ConsumerProtocolSubscription::decode(&mut body, 0).unwrap();
        assert_eq!(decoded.topics, vec![StrBytes::from("orders")]);
        let bytes = encode_assignment(&[("orders".into(), vec![0, 5])]);
        let mut body = bytes.slice(2..);
        let decoded = ConsumerProtocolAssignment::decode(&mut body, 0).unwrap();
        assert_eq!(decoded.assigned_partitions[0].partitions, vec![0, 5]);
    }

    #[test]
    fn hostile_lengths_are_refused_without_allocating() {
        // A billion topics announced in eight bytes.
        assert_eq!(
            subscription_topics(&[0, 0, 0x3b, 0x9a, 0xca, 0, 0, 1]),
            None
        );
        assert_eq!(assignment_partitions(&[0, 0, 0x7f, 0xff, 0xff, 0xff]), None);
        assert_eq!(subscription_topics(&[0, 0, 0, 0, 0, 1, 0, 9, b'x']), None);
        assert_eq!(subscription_topics(&[0xff, 0xff]), None);
        assert_eq!(subscription_topics(&[]), None);
        assert_eq!(assignment_partitions(&[]), Some(Vec::new()));
    }
}
