//! Frames: a 4-byte big-endian length, then that many bytes of payload.
//!
//! A request payload starts with [`RequestHeader`] (api key, api version, correlation id); a
//! response payload with [`ResponseHeader`] (correlation id, error code, error message).
//!
//! Decoding works on `BytesMut` and splits fields off it, so a produce request's record
//! batches come out as `BytesMut` handles into the buffer the socket read filled: no copy.
//! Encoding gathers small fields into one buffer and keeps large payloads (fetched record
//! batches) as separate `Bytes` chunks, so a response is written with one gathered write and
//! the stored batch bytes are never copied into it.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::error::ErrorCode;

/// Bytes of the length prefix.
pub const LENGTH_PREFIX: usize = 4;
/// Bytes of a request header: api key u16, api version u16, correlation id u32.
pub const REQUEST_HEADER_LEN: usize = 8;

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A frame announced more bytes than the limit allows.
    #[error("frame of {size} bytes exceeds the limit of {limit}")]
    FrameTooLarge {
        /// Announced payload size.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A field ran past the end of the frame.
    #[error("frame ends inside field `{0}`")]
    Truncated(&'static str),
    /// A string field is not UTF-8.
    #[error("field `{0}` is not valid utf-8")]
    BadUtf8(&'static str),
    /// Bytes were left over after the last field.
    #[error("{0} unexpected bytes after the last field")]
    TrailingBytes(usize),
    /// A field has a value outside its domain.
    #[error("field `{field}` has invalid value {value}")]
    InvalidValue {
        /// The field.
        field: &'static str,
        /// The offending value.
        value: i64,
    },
    /// The API key is not known.
    #[error("unknown api key {0}")]
    UnknownApi(u16),
    /// The API is known but not at this version.
    #[error("api {api} does not support version {version}")]
    UnsupportedVersion {
        /// The API key.
        api: u16,
        /// The requested version.
        version: u16,
    },
}

impl DecodeError {
    /// The wire error code a broker answers this decode error with.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::FrameTooLarge { .. } => ErrorCode::RequestTooLarge,
            DecodeError::UnknownApi(_) => ErrorCode::UnsupportedApi,
            DecodeError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            DecodeError::InvalidValue { .. } => ErrorCode::InvalidRequest,
            _ => ErrorCode::CorruptFrame,
        }
    }
}

/// Splits one complete frame payload off the front of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed (`buf` is left untouched), and an error when
/// the announced length exceeds `max_payload`: the caller cannot resynchronise and must close
/// the connection after answering.
pub fn split_frame(
    buf: &mut BytesMut,
    max_payload: usize,
) -> Result<Option<BytesMut>, DecodeError> {
    let Some(len) = peek_frame_len(buf) else {
        return Ok(None);
    };
    if len > max_payload {
        return Err(DecodeError::FrameTooLarge {
            size: len,
            limit: max_payload,
        });
    }
    if buf.len() < LENGTH_PREFIX + len {
        return Ok(None);
    }
    buf.advance(LENGTH_PREFIX);
    Ok(Some(buf.split_to(len)))
}

/// The payload length announced by the frame at the front of `buf`, if its prefix is there.
pub fn peek_frame_len(buf: &[u8]) -> Option<usize> {
    let prefix: [u8; 4] = buf.get(..LENGTH_PREFIX)?.try_into().ok()?;
    Some(u32::from_be_bytes(prefix) as usize)
}

/// The fixed header of every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    /// Which API (the number of an `ApiKey`).
    pub api_key: u16,
    /// Which version of it.
    pub api_version: u16,
    /// Echoed in the response so a pipelining client can match them.
    pub correlation_id: u32,
}

impl RequestHeader {
    /// Splits the header off the front of a request payload.
    pub fn decode(payload: &mut BytesMut) -> Result<RequestHeader, DecodeError> {
        if payload.len() < REQUEST_HEADER_LEN {
            return Err(DecodeError::Truncated("request header"));
        }
        Ok(RequestHeader {
            api_key: payload.get_u16(),
            api_version: payload.get_u16(),
            correlation_id: payload.get_u32(),
        })
    }

    /// Best-effort correlation id of a payload whose header may be incomplete (for error
    /// responses to frames that fail to decode).
    pub fn peek_correlation_id(payload: &[u8]) -> u32 {
        payload
            .get(4..8)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .unwrap_or(0)
    }
}

/// The fixed header of every response. When `error` is not [`ErrorCode::None`] the body is
/// empty and `message` explains the error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHeader {
    /// The request's correlation id.
    pub correlation_id: u32,
    /// Request-level outcome.
    pub error: ErrorCode,
    /// Explanation when `error` is set, else empty.
    pub message: String,
}

impl ResponseHeader {
    /// Decodes the header at the front of a response payload.
    pub fn decode(d: &mut Decoder) -> Result<ResponseHeader, DecodeError> {
        Ok(ResponseHeader {
            correlation_id: d.u32("correlation_id")?,
            error: ErrorCode::from_u16(d.u16("error_code")?),
            message: d.string("error_message")?,
        })
    }
}

/// Reads big-endian fields off the front of a frame payload.
pub struct Decoder {
    buf: BytesMut,
}

macro_rules! get_int {
    ($name:ident, $ty:ty, $get:ident) => {
        #[doc = concat!("Reads a big-endian `", stringify!($ty), "`.")]
        pub fn $name(&mut self, field: &'static str) -> Result<$ty, DecodeError> {
            if self.buf.len() < std::mem::size_of::<$ty>() {
                return Err(DecodeError::Truncated(field));
            }
            Ok(self.buf.$get())
        }
    };
}

impl Decoder {
    /// Wraps a payload.
    pub fn new(buf: BytesMut) -> Self {
        Decoder { buf }
    }

    get_int!(u8, u8, get_u8);
    get_int!(i8, i8, get_i8);
    get_int!(u16, u16, get_u16);
    get_int!(i16, i16, get_i16);
    get_int!(u32, u32, get_u32);
    get_int!(i32, i32, get_i32);
    get_int!(u64, u64, get_u64);
    get_int!(i64, i64, get_i64);

    /// Reads a string: u16 length, then UTF-8 bytes.
    pub fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let len = self.u16(field)? as usize;
        let bytes = self.take(len, field)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::BadUtf8(field))
    }

    /// Reads a byte field (u32 length, then bytes) as a handle into the payload, no copy.
    pub fn bytes(&mut self, field: &'static str) -> Result<BytesMut, DecodeError> {
        let len = self.u32(field)? as usize;
        self.take(len, field)
    }

    /// Splits the next `len` bytes off the payload, or fails if fewer are left.
    fn take(&mut self, len: usize, field: &'static str) -> Result<BytesMut, DecodeError> {
        if self.buf.len() < len {
            return Err(DecodeError::Truncated(field));
        }
        Ok(self.buf.split_to(len))
    }

    /// Reads an array count (u32) and checks it is plausible: every element takes at least
    /// `min_element_bytes`, so a count larger than the remaining bytes allow is rejected
    /// before anything is allocated for it.
    pub fn array_len(
        &mut self,
        field: &'static str,
        min_element_bytes: usize,
    ) -> Result<usize, DecodeError> {
        let n = self.u32(field)? as usize;
        if n.saturating_mul(min_element_bytes.max(1)) > self.buf.len() {
            return Err(DecodeError::Truncated(field));
        }
        Ok(n)
    }

    /// Reads an array: a count (checked with [`Decoder::array_len`]), then `element` once
    /// per element.
    pub fn array<T>(
        &mut self,
        field: &'static str,
        min_element_bytes: usize,
        mut element: impl FnMut(&mut Self) -> Result<T, DecodeError>,
    ) -> Result<Vec<T>, DecodeError> {
        let n = self.array_len(field, min_element_bytes)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(element(self)?);
        }
        Ok(out)
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Fails unless every byte was consumed.
    pub fn finish(self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes(self.buf.len()))
        }
    }
}

/// A piece of an encoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Bytes to write as they are.
    Bytes(Bytes),
    /// This many payload bytes that the writer takes from elsewhere (a file range).
    External(usize),
}

/// Builds one frame. Small fields go into a growing head buffer; large payloads added with
/// [`Encoder::put_shared`] become separate chunks so they are written without being copied.
pub struct Encoder {
    /// The first chunk, holding the length prefix, once a shared payload has split it off.
    /// Kept mutable so the prefix is patched in place at the end.
    head: Option<BytesMut>,
    /// Finished parts after the head, in order.
    chunks: Vec<Part>,
    /// The chunk being filled.
    current: BytesMut,
    /// Payload bytes so far (everything after the prefix).
    len: usize,
}

macro_rules! put_int {
    ($name:ident, $ty:ty) => {
        #[doc = concat!("Writes a big-endian `", stringify!($ty), "`.")]
        pub fn $name(&mut self, v: $ty) {
            self.current.$name(v);
            self.len += std::mem::size_of::<$ty>();
        }
    };
}

impl Default for Encoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Encoder {
    /// Starts a frame (reserving its length prefix).
    pub fn new() -> Self {
        Self::with_capacity(64)
    }

    /// Starts a frame with room for `capacity` bytes of small fields.
    pub fn with_capacity(capacity: usize) -> Self {
        let mut current = BytesMut::with_capacity(capacity.max(LENGTH_PREFIX));
        current.put_u32(0);
        Encoder {
            head: None,
            chunks: Vec::new(),
            current,
            len: 0,
        }
    }

    put_int!(put_u8, u8);
    put_int!(put_i8, i8);
    put_int!(put_u16, u16);
    put_int!(put_i16, i16);
    put_int!(put_u32, u32);
    put_int!(put_i32, i32);
    put_int!(put_u64, u64);
    put_int!(put_i64, i64);

    /// Writes a string (u16 length + UTF-8). Longer strings are cut at 65,535 bytes on a
    /// character boundary; names are validated far below that.
    pub fn put_string(&mut self, s: &str) {
        let mut end = s.len().min(u16::MAX as usize);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.put_u16(end as u16);
        self.current.put_slice(&s.as_bytes()[..end]);
        self.len += end;
    }

    /// Writes a byte field by copying (u32 length + bytes); for small payloads.
    pub fn put_bytes(&mut self, b: &[u8]) {
        self.put_u32(b.len() as u32);
        self.current.put_slice(b);
        self.len += b.len();
    }

    /// Writes a byte field whose payload is kept as its own chunk (u32 length + bytes),
    /// without copying it.
    pub fn put_shared(&mut self, b: Bytes) {
        self.put_part(b.len(), Part::Bytes(b));
    }

    /// Writes a byte field's length (u32) and leaves its `len` payload bytes to the caller:
    /// [`Encoder::finish_parts`] returns a [`Part::External`] where they belong. The broker
    /// uses it to send stored batches from the file with splice.
    pub fn put_external(&mut self, len: usize) {
        self.put_part(len, Part::External(len));
    }

    /// Writes a byte field's length (u32), then `part`, the field's `len` payload bytes, as
    /// a part of its own (none for an empty field).
    fn put_part(&mut self, len: usize, part: Part) {
        self.put_u32(len as u32);
        if len == 0 {
            return;
        }
        self.len += len;
        self.close_current();
        self.chunks.push(part);
    }

    /// Ends the chunk of small fields being filled (the first one keeps the prefix).
    fn close_current(&mut self) {
        let filled = self.current.split();
        if self.head.is_none() {
            self.head = Some(filled);
        } else if !filled.is_empty() {
            self.chunks.push(Part::Bytes(filled.freeze()));
        }
    }

    /// Writes an array count.
    pub fn put_array_len(&mut self, n: usize) {
        self.put_u32(n as u32);
    }

    /// Writes an array: its count, then `element` for each item.
    pub fn put_array<T>(
        &mut self,
        items: impl ExactSizeIterator<Item = T>,
        mut element: impl FnMut(&mut Self, T),
    ) {
        self.put_array_len(items.len());
        for item in items {
            element(self, item);
        }
    }

    /// Payload bytes written so far.
    pub fn payload_len(&self) -> usize {
        self.len
    }

    /// Finishes the frame: patches the length prefix and returns the parts to write in
    /// order, external payloads included as placeholders.
    pub fn finish_parts(mut self) -> Vec<Part> {
        let len = (self.len as u32).to_be_bytes();
        let mut out = Vec::with_capacity(self.chunks.len() + 2);
        match self.head {
            Some(mut head) => {
                head[..LENGTH_PREFIX].copy_from_slice(&len);
                out.push(Part::Bytes(head.freeze()));
                out.append(&mut self.chunks);
                if !self.current.is_empty() {
                    out.push(Part::Bytes(self.current.freeze()));
                }
            }
            None => {
                self.current[..LENGTH_PREFIX].copy_from_slice(&len);
                out.push(Part::Bytes(self.current.freeze()));
            }
        }
        out
    }

    /// Finishes a frame that has no external payload: patches the length prefix and returns
    /// the chunks to write in order.
    ///
    /// # Panics
    /// If [`Encoder::put_external`] was used (a bug in the caller: use `finish_parts`).
    pub fn finish(self) -> Vec<Bytes> {
        self.finish_parts()
            .into_iter()
            .map(|part| match part {
                Part::Bytes(b) => b,
                Part::External(_) => panic!("a frame with external parts needs finish_parts"),
            })
            .collect()
    }

    /// Finishes the frame into one contiguous buffer (copies shared chunks; for clients and
    /// tests).
    pub fn finish_contiguous(self) -> BytesMut {
        let chunks = self.finish();
        let mut out = BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
        for c in chunks {
            out.put_slice(&c);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn split_frame_waits_for_whole_frames() {
        let mut buf = BytesMut::new();
        assert_eq!(split_frame(&mut buf, 100), Ok(None));
        buf.put_u32(3);
        buf.put_slice(b"ab");
        assert_eq!(split_frame(&mut buf, 100), Ok(None));
        assert_eq!(buf.len(), 6, "an incomplete frame is left in place");
        buf.put_slice(b"cZ");
        assert_eq!(split_frame(&mut buf, 100).unwrap().unwrap(), &b"abc"[..]);
        assert_eq!(&buf[..], b"Z");
    }

    #[test]
    fn oversized_frame_is_rejected_before_its_bytes_arrive() {
        let mut buf = BytesMut::new();
        buf.put_u32(1_000_000);
        assert_eq!(
            split_frame(&mut buf, 1024),
            Err(DecodeError::FrameTooLarge {
                size: 1_000_000,
                limit: 1024
            })
        );
    }

    #[test]
    fn encoder_keeps_shared_payloads_as_chunks() {
        let payload = Bytes::from_static(b"stored batch bytes");
        let mut e = Encoder::new();
        e.put_u16(7);
        e.put_shared(payload.clone());
        e.put_i64(-1);
        let chunks = e.finish();
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks[1].as_ptr(), payload.as_ptr(), "payload not copied");
        let total: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        let mut buf = BytesMut::from(&total[..]);
        let mut d = Decoder::new(split_frame(&mut buf, 1 << 20).unwrap().unwrap());
        assert_eq!(d.u16("a").unwrap(), 7);
        assert_eq!(&d.bytes("b").unwrap()[..], b"stored batch bytes");
        assert_eq!(d.i64("c").unwrap(), -1);
        d.finish().unwrap();
    }

    #[test]
    fn external_parts_stand_where_their_payload_goes() {
        let mut e = Encoder::new();
        e.put_u16(1);
        e.put_external(5);
        e.put_u16(2);
        e.put_external(0);
        let parts = e.finish_parts();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[1], Part::External(5));
        // Filling the placeholder gives the frame a reader decodes.
        let mut wire = BytesMut::new();
        for part in parts {
            match part {
                Part::Bytes(b) => wire.extend_from_slice(&b),
                Part::External(n) => wire.extend_from_slice(&b"hello"[..n]),
            }
        }
        let mut d = Decoder::new(split_frame(&mut wire, 1 << 10).unwrap().unwrap());
        assert_eq!(d.u16("a").unwrap(), 1);
        assert_eq!(&d.bytes("b").unwrap()[..], b"hello");
        assert_eq!(d.u16("c").unwrap(), 2);
        assert!(d.bytes("d").unwrap().is_empty());
        d.finish().unwrap();
    }

    #[test]
    fn array_len_rejects_impossible_counts() {
        let mut buf = BytesMut::new();
        buf.put_u32(u32::MAX);
        buf.put_slice(&[0; 16]);
        let mut d = Decoder::new(buf);
        assert_eq!(d.array_len("xs", 4), Err(DecodeError::Truncated("xs")));
    }

    proptest! {
        #[test]
        fn fields_round_trip(a in any::<u32>(), b in any::<i64>(), s in "\\PC{0,40}", p in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut e = Encoder::new();
            e.put_u32(a);
            e.put_string(&s);
            e.put_shared(Bytes::from(p.clone()));
            e.put_i64(b);
            let mut buf = e.finish_contiguous();
            let frame = split_frame(&mut buf, usize::MAX).unwrap().unwrap();
            prop_assert!(buf.is_empty());
            let mut d = Decoder::new(frame);
            prop_assert_eq!(d.u32("a").unwrap(), a);
            prop_assert_eq!(d.string("s").unwrap(), s);
            prop_assert_eq!(&d.bytes("p").unwrap()[..], &p[..]);
            prop_assert_eq!(d.i64("b").unwrap(), b);
            d.finish().unwrap();
        }

        #[test]
        fn split_frame_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64), max in 0usize..128) {
            let mut buf = BytesMut::from(&bytes[..]);
            let _ = split_frame(&mut buf, max);
        }

        #[test]
        fn frames_split_at_any_read_boundary(sizes in proptest::collection::vec(0usize..50, 1..8), cut in 0usize..400) {
            let mut wire = BytesMut::new();
            for (i, n) in sizes.iter().enumerate() {
                wire.put_u32(*n as u32);
                wire.put_slice(&vec![i as u8; *n]);
            }
            let cut = cut.min(wire.len());
            let mut buf = BytesMut::from(&wire[..cut]);
            let mut got = Vec::new();
            while let Some(f) = split_frame(&mut buf, 1000).unwrap() { got.push(f); }
            buf.extend_from_slice(&wire[cut..]);
            while let Some(f) = split_frame(&mut buf, 1000).unwrap() { got.push(f); }
            prop_assert_eq!(got.len(), sizes.len());
            for (i, (f, n)) in got.iter().zip(&sizes).enumerate() {
                prop_assert_eq!(f.len(), *n);
                prop_assert!(f.iter().all(|b| *b == i as u8));
            }
        }
    }
}
