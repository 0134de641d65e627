//! The [`Message`] trait and the pieces most messages are built from.
//!
//! Every request and response body implements [`Message`] right beside its struct, so a
//! message's layout lives in one place: adding a field means touching its struct, its
//! `encode` and its `decode`, which sit together, and nothing else. The API table in
//! `api.rs` only names which message belongs to which API.
//!
//! Most APIs address partitions as `topics: array<topic:string partitions:array<P>>`;
//! [`TopicEntry`] is that shape once, generic over the partition entry `P`.

use super::frame::{DecodeError, Decoder, Encoder};

/// A value with a wire layout: it writes itself to an [`Encoder`] and reads itself back from
/// a [`Decoder`]. Decoding reads exactly the bytes encoding wrote.
pub trait Message: Sized {
    /// The fewest bytes the value takes on the wire. Array decoders refuse a count that
    /// could not fit in the bytes left before allocating for it, so every message that is
    /// an array element sets this; the default only assumes one byte.
    const MIN_BYTES: usize = 1;

    /// Appends the value's fields.
    fn encode(&self, e: &mut Encoder);

    /// Reads the value's fields.
    fn decode(d: &mut Decoder) -> Result<Self, DecodeError>;

    /// Appends the value's fields, consuming it. A message that owns record bytes overrides
    /// this to hand them to the encoder as their own chunk instead of copying them.
    fn encode_owned(self, e: &mut Encoder) {
        self.encode(e);
    }
}

/// Reads an array of messages: a count, then each element.
pub(crate) fn decode_array<T: Message>(
    d: &mut Decoder,
    field: &'static str,
) -> Result<Vec<T>, DecodeError> {
    d.array(field, T::MIN_BYTES, T::decode)
}

/// Writes an array of messages: a count, then each element.
pub(crate) fn encode_array<T: Message>(e: &mut Encoder, items: &[T]) {
    e.put_array(items.iter(), |e, item| item.encode(e));
}

/// Writes an array of messages, consuming them (see [`Message::encode_owned`]).
pub(crate) fn encode_array_owned<T: Message>(e: &mut Encoder, items: Vec<T>) {
    e.put_array(items.into_iter(), |e, item| item.encode_owned(e));
}

/// Reads an array of strings; `field` names the array and its elements in errors.
pub(crate) fn decode_strings(
    d: &mut Decoder,
    field: &'static str,
) -> Result<Vec<String>, DecodeError> {
    d.array(field, 2, |d| d.string(field))
}

/// Writes an array of strings.
pub(crate) fn encode_strings(e: &mut Encoder, items: &[String]) {
    e.put_array(items.iter(), |e, s| e.put_string(s));
}

/// One topic's entries in a request or response: the topic name, then one `P` per
/// partition. Each API names its own instance (`FetchTopic = TopicEntry<FetchPartition>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicEntry<P> {
    /// Topic name.
    pub topic: String,
    /// One entry per partition.
    pub partitions: Vec<P>,
}

impl<P> TopicEntry<P> {
    /// Writes the entry, each partition with `partition`: for layouts that take something
    /// from outside the entry (a fetch response's spliced records).
    pub(crate) fn encode_each(&self, e: &mut Encoder, mut partition: impl FnMut(&mut Encoder, &P)) {
        e.put_string(&self.topic);
        e.put_array(self.partitions.iter(), |e, p| partition(e, p));
    }
}

impl<P: Message> Message for TopicEntry<P> {
    // topic length u16, partition count u32.
    const MIN_BYTES: usize = 6;

    fn encode(&self, e: &mut Encoder) {
        self.encode_each(e, |e, p| p.encode(e));
    }

    fn decode(d: &mut Decoder) -> Result<Self, DecodeError> {
        Ok(TopicEntry {
            topic: d.string("topic")?,
            partitions: decode_array(d, "partitions")?,
        })
    }

    fn encode_owned(self, e: &mut Encoder) {
        e.put_string(&self.topic);
        encode_array_owned(e, self.partitions);
    }
}

/// A bare partition index, the partition entry of an assignment
/// ([`TopicPartitions`](super::group::TopicPartitions)).
impl Message for u32 {
    const MIN_BYTES: usize = 4;

    fn encode(&self, e: &mut Encoder) {
        e.put_u32(*self);
    }

    fn decode(d: &mut Decoder) -> Result<Self, DecodeError> {
        d.u32("partition")
    }
}
