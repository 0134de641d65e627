//! The [`Message`] trait and the pieces most messages are built from.
//!
//! Every request and response body implements [`Message`] right beside its struct, so a
//! message's layout lives in one place. Most are declared with `message!`, which writes
//! the struct and its field-by-field `Message` impl from one definition: adding a field
//! means adding it to the struct, and nothing else. Messages with a field that needs more
//! than its type's [`Field`] layout (records sent without a copy, a value checked while
//! decoding) implement `Message` by hand. The API table in `api.rs` only names which
//! message belongs to which API.
//!
//! Most APIs address partitions as `topics: array<topic:string partitions:array<P>>`;
//! [`TopicEntry`] is that shape once, generic over the partition entry `P`.

use bytes::Bytes;

use super::error::ErrorCode;
use super::frame::{DecodeError, Decoder, Encoder};

/// A value with a wire layout: it writes itself to an [`Encoder`] and reads itself back from
/// a [`Decoder`]. Decoding reads exactly the bytes encoding wrote.
pub trait Message: Sized {
    /// The fewest bytes the value takes on the wire. Array decoders refuse a count that
    /// could not fit in the bytes left before allocating for it, so every message that is
    /// an array element sets this (`message!` sums its fields'); the default only assumes
    /// one byte.
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

/// The wire layout of one field type: how a message declared with `message!` writes a
/// field of this type and reads it back. `name` is the field's name in decode errors.
pub trait Field: Sized {
    /// The fewest bytes a value takes on the wire (see [`Message::MIN_BYTES`]).
    const MIN_BYTES: usize;

    /// Appends the value.
    fn put(&self, e: &mut Encoder);

    /// Reads a value.
    fn get(d: &mut Decoder, name: &'static str) -> Result<Self, DecodeError>;
}

/// Declares a message struct and its [`Message`] impl from one definition: the fields go on
/// the wire in the order they are declared, each in its type's [`Field`] layout, and
/// `MIN_BYTES` is the sum of theirs. A decode error names a field by its Rust name, or by
/// the wire name of a `#[wire = "…"]` line written after the field's doc comment (where
/// docs/PROTOCOL.md names it otherwise). The message is a [`Field`] too, so another message
/// can hold it. `FetchPartition` in `api.rs` shows a `#[wire]` line.
macro_rules! message {
    (@name $field:ident) => {
        stringify!($field)
    };
    (@name $field:ident $wire:literal) => {
        $wire
    };
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $(
                $(#[doc = $doc:literal])*
                $(#[wire = $wire:literal])?
                $field_vis:vis $field:ident: $ty:ty,
            )*
        }
    ) => {
        $(#[$meta])*
        $vis struct $name {
            $( $(#[doc = $doc])* $field_vis $field: $ty, )*
        }

        impl $crate::protocol::message::Message for $name {
            const MIN_BYTES: usize =
                0 $(+ <$ty as $crate::protocol::message::Field>::MIN_BYTES)*;

            fn encode(&self, e: &mut $crate::protocol::frame::Encoder) {
                $( $crate::protocol::message::Field::put(&self.$field, e); )*
            }

            fn decode(
                d: &mut $crate::protocol::frame::Decoder,
            ) -> Result<Self, $crate::protocol::frame::DecodeError> {
                Ok($name {
                    $(
                        $field: $crate::protocol::message::Field::get(
                            d,
                            $crate::protocol::message::message!(@name $field $($wire)?),
                        )?,
                    )*
                })
            }
        }

        impl $crate::protocol::message::Field for $name {
            const MIN_BYTES: usize = <$name as $crate::protocol::message::Message>::MIN_BYTES;

            fn put(&self, e: &mut $crate::protocol::frame::Encoder) {
                $crate::protocol::message::Message::encode(self, e);
            }

            fn get(
                d: &mut $crate::protocol::frame::Decoder,
                _name: &'static str,
            ) -> Result<Self, $crate::protocol::frame::DecodeError> {
                $crate::protocol::message::Message::decode(d)
            }
        }
    };
}

pub(crate) use message;

/// Big-endian integers, as [`Encoder`] writes them and [`Decoder`] reads them.
macro_rules! int_fields {
    ($($ty:ident => $put:ident;)*) => {$(
        impl Field for $ty {
            const MIN_BYTES: usize = size_of::<$ty>();

            fn put(&self, e: &mut Encoder) {
                e.$put(*self);
            }

            fn get(d: &mut Decoder, name: &'static str) -> Result<Self, DecodeError> {
                d.$ty(name)
            }
        }
    )*};
}

int_fields! {
    u8 => put_u8;
    i8 => put_i8;
    u16 => put_u16;
    i16 => put_i16;
    u32 => put_u32;
    i32 => put_i32;
    u64 => put_u64;
    i64 => put_i64;
}

/// A string: u16 length, then UTF-8 bytes.
impl Field for String {
    const MIN_BYTES: usize = 2;

    fn put(&self, e: &mut Encoder) {
        e.put_string(self);
    }

    fn get(d: &mut Decoder, name: &'static str) -> Result<Self, DecodeError> {
        d.string(name)
    }
}

/// An error code, as its u16.
impl Field for ErrorCode {
    const MIN_BYTES: usize = 2;

    fn put(&self, e: &mut Encoder) {
        e.put_u16(self.as_u16());
    }

    fn get(d: &mut Decoder, name: &'static str) -> Result<Self, DecodeError> {
        Ok(ErrorCode::from_u16(d.u16(name)?))
    }
}

/// Record bytes: u32 length, then the bytes, written as their own chunk of the frame
/// ([`Encoder::put_shared`]) and read as a handle into the frame's buffer: no copy either way.
impl Field for Bytes {
    const MIN_BYTES: usize = 4;

    fn put(&self, e: &mut Encoder) {
        e.put_shared(self.clone());
    }

    fn get(d: &mut Decoder, name: &'static str) -> Result<Self, DecodeError> {
        Ok(d.bytes(name)?.freeze())
    }
}

/// An array of messages: a count, then each element.
impl<T: Message> Field for Vec<T> {
    const MIN_BYTES: usize = 4;

    fn put(&self, e: &mut Encoder) {
        encode_array(e, self);
    }

    fn get(d: &mut Decoder, name: &'static str) -> Result<Self, DecodeError> {
        decode_array(d, name)
    }
}

/// An array of strings; `name` names the array and its elements in errors.
impl Field for Vec<String> {
    const MIN_BYTES: usize = 4;

    fn put(&self, e: &mut Encoder) {
        e.put_array(self.iter(), |e, s| e.put_string(s));
    }

    fn get(d: &mut Decoder, name: &'static str) -> Result<Self, DecodeError> {
        d.array(name, 2, |d| d.string(name))
    }
}

/// An array of u16 (a topic's partition owners). `name` names the array and its elements
/// in errors; an element cannot run short, as the count is checked against the bytes left.
impl Field for Vec<u16> {
    const MIN_BYTES: usize = 4;

    fn put(&self, e: &mut Encoder) {
        e.put_array(self.iter(), |e, v| e.put_u16(*v));
    }

    fn get(d: &mut Decoder, name: &'static str) -> Result<Self, DecodeError> {
        d.array(name, 2, |d| d.u16(name))
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
    /// One entry per topic of `(topic, partition entry)` pairs, topics in the order they
    /// first appear and each topic's partitions in the order given.
    pub fn group<T: AsRef<str>>(pairs: impl IntoIterator<Item = (T, P)>) -> Vec<TopicEntry<P>> {
        let mut topics: Vec<TopicEntry<P>> = Vec::new();
        for (topic, partition) in pairs {
            let topic = topic.as_ref();
            match topics.iter_mut().find(|t| t.topic == topic) {
                Some(t) => t.partitions.push(partition),
                None => topics.push(TopicEntry {
                    topic: topic.to_string(),
                    partitions: vec![partition],
                }),
            }
        }
        topics
    }

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
/// (`TopicPartitions` in `group.rs`).
impl Message for u32 {
    const MIN_BYTES: usize = 4;

    fn encode(&self, e: &mut Encoder) {
        e.put_u32(*self);
    }

    fn decode(d: &mut Decoder) -> Result<Self, DecodeError> {
        d.u32("partition")
    }
}
