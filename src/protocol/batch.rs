//! Kafka's RecordBatch v2 (magic 2): the unit the broker receives, stores and serves.
//!
//! The broker treats a batch as opaque bytes on its hot path. It checks the header and the
//! CRC once, when the batch arrives ([`validate`], kept with its header as a [`ValidBatch`]),
//! rewrites the base offset in place ([`set_base_offset`]) and writes the bytes to the log
//! unchanged. That rewrite is cheap
//! because the CRC starts at [`CRC_START`], after the base offset, batch length, leader
//! epoch and magic, so assigning offsets never forces a re-checksum.
//!
//! Records are only decoded by clients and tests ([`records`]); building batches is the
//! client's job ([`BatchBuilder`]). Every decoder here returns a [`BatchError`] on malformed
//! input and never panics, because the bytes come straight from the network or the disk.
//!
//! All integers are big-endian. Record fields use zigzag varints, as protobuf's `sint32` and
//! `sint64` do.

use bytes::{BufMut, BytesMut};
use std::mem::MaybeUninit;

/// Length of the fixed batch header, up to the first record.
pub const BATCH_HEADER_LEN: usize = 61;

/// The only batch format version this module understands.
pub const MAGIC: i8 = 2;

/// Offset of the first byte covered by the CRC.
pub const CRC_START: usize = 21;

/// Bytes before the end of the batch length field; `batch_length` counts what follows them.
const LENGTH_PREFIX: usize = 12;

/// Smallest valid `batch_length`: a header with no records.
const MIN_BATCH_LENGTH: i32 = (BATCH_HEADER_LEN - LENGTH_PREFIX) as i32;

/// Attribute bits selecting the compression codec.
const COMPRESSION_MASK: i16 = 0x07;

/// Attribute bit of a batch written inside a transaction.
pub const TRANSACTIONAL_FLAG: i16 = 0x10;

/// Attribute bit of a control batch (a transaction marker, written by a broker).
pub const CONTROL_FLAG: i16 = 0x20;

/// Field offsets within the header.
mod field {
    pub(super) const BASE_OFFSET: usize = 0;
    pub(super) const BATCH_LENGTH: usize = 8;
    pub(super) const PARTITION_LEADER_EPOCH: usize = 12;
    pub(super) const MAGIC: usize = 16;
    pub(super) const CRC: usize = 17;
    pub(super) const ATTRIBUTES: usize = 21;
    pub(super) const LAST_OFFSET_DELTA: usize = 23;
    pub(super) const BASE_TIMESTAMP: usize = 27;
    pub(super) const MAX_TIMESTAMP: usize = 35;
    pub(super) const PRODUCER_ID: usize = 43;
    pub(super) const PRODUCER_EPOCH: usize = 51;
    pub(super) const BASE_SEQUENCE: usize = 53;
    pub(super) const RECORDS_COUNT: usize = 57;
}

/// Why a batch was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// The buffer ends before the batch (or its header) does.
    #[error("batch truncated: need {needed} bytes, have {available}")]
    Truncated {
        /// Bytes the batch needs.
        needed: usize,
        /// Bytes actually present.
        available: usize,
    },
    /// The magic byte is not 2.
    #[error("unsupported batch magic {0}, only 2 is supported")]
    BadMagic(i8),
    /// The batch length field is too small, or disagrees with the buffer.
    #[error("batch length field {0} is invalid")]
    BadLength(i32),
    /// The batch is larger than the configured limit.
    #[error("batch of {size} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Total size of the batch.
        size: usize,
        /// The limit it was checked against.
        limit: usize,
    },
    /// The CRC field does not match the bytes it covers.
    #[error("batch crc mismatch: header says {expected:#010x}, content has {actual:#010x}")]
    CrcMismatch {
        /// The CRC stored in the header.
        expected: u32,
        /// The CRC computed over the batch.
        actual: u32,
    },
    /// A header field holds an impossible value.
    #[error("invalid batch header: {0}")]
    InvalidHeader(&'static str),
    /// A record could not be decoded.
    #[error("invalid record: {0}")]
    InvalidRecord(&'static str),
    /// The batch is compressed, and decoding compressed records is not implemented.
    #[error("compressed batches are not supported yet (codec {0})")]
    UnsupportedCompression(i16),
}

/// The fixed 61-byte header of a v2 batch, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Offset of the first record; assigned by the broker on append.
    pub base_offset: i64,
    /// Bytes after the batch length field, so the batch is `12 + batch_length` bytes long.
    pub batch_length: i32,
    /// Leader epoch of the partition when the batch was appended.
    pub partition_leader_epoch: i32,
    /// Format version; always [`MAGIC`] once parsed.
    pub magic: i8,
    /// CRC-32C of the bytes from [`CRC_START`] to the end of the batch.
    pub crc: u32,
    /// Compression codec (bits 0-2), timestamp type (bit 3), transactional (bit 4) and
    /// control (bit 5) flags.
    pub attributes: i16,
    /// Offset delta of the last record in the batch.
    pub last_offset_delta: i32,
    /// Timestamp of the first record; record timestamps are deltas from it.
    pub base_timestamp: i64,
    /// Largest timestamp in the batch.
    pub max_timestamp: i64,
    /// Idempotent producer id, or -1.
    pub producer_id: i64,
    /// Idempotent producer epoch, or -1.
    pub producer_epoch: i16,
    /// Sequence number of the first record, or -1.
    pub base_sequence: i32,
    /// Number of records in the batch.
    pub records_count: i32,
}

impl BatchHeader {
    /// Parses the 61-byte header at the start of `buf` (buf may be longer). Checks: len >= 61,
    /// magic == 2, batch_length >= 49 (61-12). Does NOT check the CRC.
    pub fn parse(buf: &[u8]) -> Result<BatchHeader, BatchError> {
        if buf.len() < BATCH_HEADER_LEN {
            return Err(BatchError::Truncated {
                needed: BATCH_HEADER_LEN,
                available: buf.len(),
            });
        }
        let magic = buf[field::MAGIC] as i8;
        if magic != MAGIC {
            return Err(BatchError::BadMagic(magic));
        }
        let batch_length = read_i32(buf, field::BATCH_LENGTH);
        if batch_length < MIN_BATCH_LENGTH {
            return Err(BatchError::BadLength(batch_length));
        }
        Ok(BatchHeader {
            base_offset: read_i64(buf, field::BASE_OFFSET),
            batch_length,
            partition_leader_epoch: read_i32(buf, field::PARTITION_LEADER_EPOCH),
            magic,
            crc: read_i32(buf, field::CRC) as u32,
            attributes: read_i16(buf, field::ATTRIBUTES),
            last_offset_delta: read_i32(buf, field::LAST_OFFSET_DELTA),
            base_timestamp: read_i64(buf, field::BASE_TIMESTAMP),
            max_timestamp: read_i64(buf, field::MAX_TIMESTAMP),
            producer_id: read_i64(buf, field::PRODUCER_ID),
            producer_epoch: read_i16(buf, field::PRODUCER_EPOCH),
            base_sequence: read_i32(buf, field::BASE_SEQUENCE),
            records_count: read_i32(buf, field::RECORDS_COUNT),
        })
    }

    /// Parses the header at the start of `buf` ([`BatchHeader::parse`]) and checks that the
    /// whole batch it declares is there ([`BatchError::Truncated`] if not); `buf` may be
    /// longer.
    fn parse_whole(buf: &[u8]) -> Result<BatchHeader, BatchError> {
        let header = BatchHeader::parse(buf)?;
        let size = header.total_len();
        if buf.len() < size {
            return Err(BatchError::Truncated {
                needed: size,
                available: buf.len(),
            });
        }
        Ok(header)
    }

    /// 12 + batch_length, as usize: the size of the whole batch.
    ///
    /// A negative `batch_length` (which [`BatchHeader::parse`] never returns) counts as 0.
    pub fn total_len(&self) -> usize {
        LENGTH_PREFIX + usize::try_from(self.batch_length).unwrap_or(0)
    }

    /// base_offset + last_offset_delta: the offset of the batch's last record.
    ///
    /// Wraps rather than panicking if a corrupt header makes the sum overflow.
    pub fn last_offset(&self) -> i64 {
        self.base_offset
            .wrapping_add(i64::from(self.last_offset_delta))
    }

    /// Encodes the header, with its `crc` field as is.
    fn encode(&self) -> [u8; BATCH_HEADER_LEN] {
        let mut out = [0u8; BATCH_HEADER_LEN];
        let mut put = |at: usize, bytes: &[u8]| out[at..at + bytes.len()].copy_from_slice(bytes);
        put(field::BASE_OFFSET, &self.base_offset.to_be_bytes());
        put(field::BATCH_LENGTH, &self.batch_length.to_be_bytes());
        put(
            field::PARTITION_LEADER_EPOCH,
            &self.partition_leader_epoch.to_be_bytes(),
        );
        put(field::MAGIC, &self.magic.to_be_bytes());
        put(field::CRC, &self.crc.to_be_bytes());
        put(field::ATTRIBUTES, &self.attributes.to_be_bytes());
        put(
            field::LAST_OFFSET_DELTA,
            &self.last_offset_delta.to_be_bytes(),
        );
        put(field::BASE_TIMESTAMP, &self.base_timestamp.to_be_bytes());
        put(field::MAX_TIMESTAMP, &self.max_timestamp.to_be_bytes());
        put(field::PRODUCER_ID, &self.producer_id.to_be_bytes());
        put(field::PRODUCER_EPOCH, &self.producer_epoch.to_be_bytes());
        put(field::BASE_SEQUENCE, &self.base_sequence.to_be_bytes());
        put(field::RECORDS_COUNT, &self.records_count.to_be_bytes());
        out
    }
}

/// Fully validates exactly one batch occupying all of `batch`, without decoding its records.
///
/// Checks, in order: the header parses ([`BatchHeader::parse`]); `batch.len()` equals the
/// length the header declares ([`BatchError::Truncated`] if shorter, [`BatchError::BadLength`]
/// if longer); that length is at most `max_batch_bytes` ([`BatchError::TooLarge`]);
/// `records_count >= 1`, `last_offset_delta >= 0` and `max_timestamp >= -1`
/// ([`BatchError::InvalidHeader`]); and the CRC-32C over `batch[21..]` equals the crc field
/// ([`BatchError::CrcMismatch`]). Never panics on any input.
pub fn validate(batch: &[u8], max_batch_bytes: usize) -> Result<BatchHeader, BatchError> {
    check(batch, BatchHeader::parse(batch)?, max_batch_bytes)
}

/// [`validate`]'s checks after the header parsed: `header` is `batch`'s own.
fn check(
    batch: &[u8],
    header: BatchHeader,
    max_batch_bytes: usize,
) -> Result<BatchHeader, BatchError> {
    let size = header.total_len();
    if batch.len() < size {
        return Err(BatchError::Truncated {
            needed: size,
            available: batch.len(),
        });
    }
    if batch.len() > size {
        return Err(BatchError::BadLength(header.batch_length));
    }
    if size > max_batch_bytes {
        return Err(BatchError::TooLarge {
            size,
            limit: max_batch_bytes,
        });
    }
    if header.records_count < 1 {
        return Err(BatchError::InvalidHeader(
            "records count must be at least 1",
        ));
    }
    if header.last_offset_delta < 0 {
        return Err(BatchError::InvalidHeader("last offset delta is negative"));
    }
    if header.max_timestamp < -1 {
        return Err(BatchError::InvalidHeader("max timestamp is below -1"));
    }
    let actual = crc32c::crc32c(&batch[CRC_START..]);
    if actual != header.crc {
        return Err(BatchError::CrcMismatch {
            expected: header.crc,
            actual,
        });
    }
    Ok(header)
}

/// One record batch that passed [`validate`], with its parsed header.
///
/// The broker checks a batch once, when it arrives, and from then on carries this type: the
/// log takes offsets, lengths and timestamps from [`ValidBatch::header`] instead of parsing
/// the bytes again. The only way to make one is through the checks, and the only change it
/// allows afterwards is the base offset, which the CRC does not cover, so a `ValidBatch`
/// always holds a batch that would pass [`validate`] again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidBatch {
    bytes: BytesMut,
    header: BatchHeader,
}

// A valid batch is never empty (it has at least a header), so `is_empty` would be noise.
#[allow(clippy::len_without_is_empty)]
impl ValidBatch {
    /// Validates `bytes` as exactly one batch, as [`validate`] does (header checks and
    /// CRC-32C), keeping the parsed header.
    pub fn new(bytes: BytesMut, max_batch_bytes: usize) -> Result<ValidBatch, BatchError> {
        let header = validate(&bytes, max_batch_bytes)?;
        Ok(ValidBatch { bytes, header })
    }

    /// Splits the first batch off the front of `buf` (a produce request's records field,
    /// say) and validates it, parsing its header once. On an error, what was split off is
    /// dropped and the rest of `buf` is left as it is: the caller refuses the whole buffer.
    pub fn split_from(
        buf: &mut BytesMut,
        max_batch_bytes: usize,
    ) -> Result<ValidBatch, BatchError> {
        let header = BatchHeader::parse(buf)?;
        let size = header.total_len();
        if size > max_batch_bytes {
            return Err(BatchError::TooLarge {
                size,
                limit: max_batch_bytes,
            });
        }
        if size > buf.len() {
            return Err(BatchError::Truncated {
                needed: size,
                available: buf.len(),
            });
        }
        let bytes = buf.split_to(size);
        let header = check(&bytes, header, max_batch_bytes)?;
        Ok(ValidBatch { bytes, header })
    }

    /// The batch's header as parsed (with the base offset last set).
    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// The batch's size in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// The batch's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Writes the base offset in place ([`set_base_offset`]); the batch stays valid.
    pub fn set_base_offset(&mut self, base_offset: i64) {
        set_base_offset(&mut self.bytes, base_offset);
        self.header.base_offset = base_offset;
    }

    /// The batch's bytes, to write or send.
    pub fn into_bytes(self) -> BytesMut {
        self.bytes
    }
}

/// Writes base_offset (bytes 0..8). Not covered by the CRC, so a validated batch stays valid.
///
/// # Panics
///
/// If `batch` is shorter than 8 bytes; callers pass batches they have validated.
pub fn set_base_offset(batch: &mut [u8], base_offset: i64) {
    batch[field::BASE_OFFSET..field::BASE_OFFSET + 8].copy_from_slice(&base_offset.to_be_bytes());
}

/// Reads the base offset field.
///
/// # Panics
///
/// If `batch` is shorter than 8 bytes; callers pass batches they have validated.
pub fn base_offset(batch: &[u8]) -> i64 {
    read_i64(batch, field::BASE_OFFSET)
}

/// Walks a buffer holding zero or more concatenated batches (e.g. a produce request's records
/// field); see [`BatchIter`].
pub fn batches(buf: &[u8]) -> BatchIter<'_> {
    BatchIter {
        buf,
        pos: 0,
        failed: false,
    }
}

/// Iterator over the batches of a buffer, returned by [`batches`].
///
/// Yields `Ok((start, header))` for each batch whose full length is present, where `start` is
/// the batch's position in the buffer; the header is parsed but the CRC is not checked. On
/// the first malformed or partial batch (a trailing partial batch gives
/// [`BatchError::Truncated`]) it yields that error once and then stops.
#[derive(Debug, Clone)]
pub struct BatchIter<'a> {
    buf: &'a [u8],
    pos: usize,
    failed: bool,
}

impl Iterator for BatchIter<'_> {
    type Item = Result<(usize, BatchHeader), BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.buf.len() {
            return None;
        }
        let header = match BatchHeader::parse_whole(&self.buf[self.pos..]) {
            Ok(header) => header,
            Err(err) => {
                self.failed = true;
                return Some(Err(err));
            }
        };
        let start = self.pos;
        self.pos += header.total_len();
        Some(Ok((start, header)))
    }
}

impl std::iter::FusedIterator for BatchIter<'_> {}

/// One record of a batch, borrowing from the batch bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    /// Absolute offset: the batch's base offset plus the record's offset delta.
    pub offset: i64,
    /// Absolute timestamp: the batch's base timestamp plus the record's timestamp delta.
    pub timestamp: i64,
    /// The key, or `None` for a null key.
    pub key: Option<&'a [u8]>,
    /// The value, or `None` for a null value (a tombstone).
    pub value: Option<&'a [u8]>,
    /// Headers in wire order: raw key bytes (UTF-8 by convention, not checked) and value.
    pub headers: Vec<(&'a [u8], Option<&'a [u8]>)>,
}

/// Decodes the records of one validated batch (offset = base_offset + offsetDelta, timestamp =
/// base_timestamp + delta). Used by clients and tests, never by the broker's hot path.
///
/// The batch is the first `total_len()` bytes of `batch`; anything after them is ignored. The
/// CRC is not checked here (that is [`validate`]'s job). Returns
/// [`BatchError::UnsupportedCompression`] if `attributes & 7 != 0`, and
/// [`BatchError::InvalidHeader`] if its last offset would pass `i64::MAX`; malformed varints and
/// lengths come out of the iterator as errors, never as panics.
pub fn records(batch: &[u8]) -> Result<RecordIter<'_>, BatchError> {
    let header = BatchHeader::parse_whole(batch)?;
    let size = header.total_len();
    let codec = header.attributes & COMPRESSION_MASK;
    if codec != 0 {
        return Err(BatchError::UnsupportedCompression(codec));
    }
    let remaining = u32::try_from(header.records_count)
        .map_err(|_| BatchError::InvalidHeader("records count is negative"))?;
    // Offsets past i64::MAX would wrap to negative ones (found by fuzzing).
    if header
        .base_offset
        .checked_add(i64::from(header.last_offset_delta))
        .is_none()
    {
        return Err(BatchError::InvalidHeader("the batch's offsets overflow"));
    }
    Ok(RecordIter {
        cursor: Cursor::new(&batch[BATCH_HEADER_LEN..size]),
        remaining,
        base_offset: header.base_offset,
        base_timestamp: header.base_timestamp,
        last_offset_delta: header.last_offset_delta,
        previous_delta: None,
        failed: false,
    })
}

/// Iterator over the records of a batch, returned by [`records`].
///
/// Yields exactly `records_count` records. If a record is malformed, or bytes are left over
/// after the last one, it yields that error once and then stops. Offset deltas must rise
/// strictly and stay within `0..=last_offset_delta`: a record is never handed out under an
/// offset its batch does not cover. They need not be dense, nor reach `last_offset_delta`:
/// a batch that compaction rewrote keeps its offsets and lost some of its records
/// ([`retain_records`]).
#[derive(Debug, Clone)]
pub struct RecordIter<'a> {
    cursor: Cursor<'a>,
    remaining: u32,
    base_offset: i64,
    base_timestamp: i64,
    last_offset_delta: i32,
    previous_delta: Option<i64>,
    failed: bool,
}

impl<'a> RecordIter<'a> {
    fn decode_next(&mut self) -> Result<Record<'a>, BatchError> {
        let length = self.cursor.varint()?;
        let length = usize::try_from(length)
            .map_err(|_| BatchError::InvalidRecord("negative record length"))?;
        let body = self
            .cursor
            .take(length)
            .map_err(|_| BatchError::InvalidRecord("record length runs past the batch"))?;
        let mut body = Cursor::new(body);
        let record = decode_record_body(&mut body, self.base_offset, self.base_timestamp)?;
        if !body.is_empty() {
            return Err(BatchError::InvalidRecord(
                "record length is longer than its fields",
            ));
        }
        let delta = record.offset.wrapping_sub(self.base_offset);
        if delta < 0 || delta > i64::from(self.last_offset_delta) {
            return Err(BatchError::InvalidRecord(
                "record offset delta is outside the batch's offsets",
            ));
        }
        if self
            .previous_delta
            .is_some_and(|previous| delta <= previous)
        {
            return Err(BatchError::InvalidRecord(
                "record offset deltas do not rise",
            ));
        }
        self.previous_delta = Some(delta);
        Ok(record)
    }
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = Result<Record<'a>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if self.remaining == 0 {
            if self.cursor.is_empty() {
                return None;
            }
            self.failed = true;
            return Some(Err(BatchError::InvalidRecord(
                "bytes left over after the last record",
            )));
        }
        self.remaining -= 1;
        let item = self.decode_next();
        self.failed = item.is_err();
        Some(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.failed {
            (0, Some(0))
        } else {
            // One more item is possible: the error for trailing bytes.
            (0, Some(self.remaining as usize + 1))
        }
    }
}

impl std::iter::FusedIterator for RecordIter<'_> {}

/// What [`retain_records`] made of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retained {
    /// Every record stays: the batch is kept byte for byte.
    All,
    /// No record stays: the batch goes.
    None,
    /// Some records stay, in this rewritten batch.
    Some(BytesMut),
}

/// Keeps the records of one uncompressed batch for which `keep` says yes, for log
/// compaction. A rewritten batch keeps its header (base offset, last offset delta, so the
/// offset after it is unchanged; timestamps; producer fields) but for its length and record
/// count, and its records' bytes as they were (their offset and timestamp deltas are relative
/// to the unchanged base); its CRC is computed again. Errors as [`records`] does, before
/// anything is decided.
pub fn retain_records(
    batch: &[u8],
    mut keep: impl FnMut(&Record<'_>) -> bool,
) -> Result<Retained, BatchError> {
    let mut iter = records(batch)?;
    let header = BatchHeader::parse(batch)?;
    let size = header.total_len();
    // Where the iterator is in `batch`: records are read from a cursor over their bytes.
    let at = |iter: &RecordIter<'_>| size - iter.cursor.remaining();
    let mut kept: Vec<std::ops::Range<usize>> = Vec::new();
    let mut dropped = false;
    loop {
        let start = at(&iter);
        let Some(record) = iter.next() else { break };
        let record = record?;
        if keep(&record) {
            kept.push(start..at(&iter));
        } else {
            dropped = true;
        }
    }
    if !dropped {
        return Ok(Retained::All);
    }
    if kept.is_empty() {
        return Ok(Retained::None);
    }
    let records_len: usize = kept.iter().map(ExactSizeIterator::len).sum();
    let mut out = BytesMut::with_capacity(BATCH_HEADER_LEN + records_len);
    out.put_bytes(0, BATCH_HEADER_LEN);
    for range in &kept {
        out.put_slice(&batch[range.clone()]);
    }
    let rewritten = BatchHeader {
        batch_length: wire_len(out.len() - LENGTH_PREFIX),
        crc: 0,
        records_count: wire_len(kept.len()),
        ..header
    };
    out[..BATCH_HEADER_LEN].copy_from_slice(&rewritten.encode());
    let crc = crc32c::crc32c(&out[CRC_START..]);
    out[field::CRC..field::CRC + 4].copy_from_slice(&crc.to_be_bytes());
    Ok(Retained::Some(out))
}

/// Decodes the fields after a record's length prefix.
fn decode_record_body<'a>(
    body: &mut Cursor<'a>,
    base_offset: i64,
    base_timestamp: i64,
) -> Result<Record<'a>, BatchError> {
    let _attributes = body.byte()?;
    let timestamp_delta = body.varlong()?;
    let offset_delta = body.varint()?;
    let key = body.nullable_bytes("key length is below -1")?;
    let value = body.nullable_bytes("value length is below -1")?;
    let header_count = usize::try_from(body.varint()?)
        .map_err(|_| BatchError::InvalidRecord("negative header count"))?;
    // Each header takes at least two bytes, so a corrupt count cannot force a huge allocation.
    let mut headers = Vec::with_capacity(header_count.min(body.remaining() / 2));
    for _ in 0..header_count {
        let key_len = usize::try_from(body.varint()?)
            .map_err(|_| BatchError::InvalidRecord("header key is null or has negative length"))?;
        let header_key = body.take(key_len)?;
        let header_value = body.nullable_bytes("header value length is below -1")?;
        headers.push((header_key, header_value));
    }
    Ok(Record {
        offset: base_offset.wrapping_add(i64::from(offset_delta)),
        timestamp: base_timestamp.wrapping_add(timestamp_delta),
        key,
        value,
        headers,
    })
}

/// Builds an uncompressed v2 batch, encoding records into one growing buffer.
///
/// The batch gets base offset 0 (the broker assigns the real one), partition leader epoch -1,
/// attributes 0 (no compression, create time), and producer id -1, producer epoch -1 and base
/// sequence -1 unless [`BatchBuilder::set_producer`] sets them. The base timestamp is the
/// first record's timestamp and the max timestamp the largest pushed. The CRC is computed
/// by [`BatchBuilder::finish`].
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    buf: BytesMut,
    count: i32,
    base_timestamp: i64,
    max_timestamp: i64,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl BatchBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::with_capacity(0)
    }

    /// An empty builder whose buffer has room for `bytes` bytes (header included) before it
    /// has to grow.
    pub fn with_capacity(bytes: usize) -> Self {
        let mut buf = BytesMut::with_capacity(bytes.max(BATCH_HEADER_LEN));
        buf.put_bytes(0, BATCH_HEADER_LEN);
        BatchBuilder {
            buf,
            count: 0,
            base_timestamp: -1,
            max_timestamp: -1,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
        }
    }

    /// Marks the batch as an idempotent producer's: its producer id and epoch, and the
    /// sequence number of its first record (the broker checks them per partition, see
    /// docs/KAFKA.md).
    pub fn set_producer(&mut self, producer_id: i64, producer_epoch: i16, base_sequence: i32) {
        self.producer_id = producer_id;
        self.producer_epoch = producer_epoch;
        self.base_sequence = base_sequence;
    }

    /// Appends a record. `None` encodes a null key, value or header value.
    ///
    /// Timestamps are milliseconds since the epoch, or -1 for none; [`validate`] rejects a
    /// batch whose max timestamp is below -1.
    ///
    /// # Panics
    ///
    /// If the batch already holds `i32::MAX` records, or a key, value or header is longer
    /// than `i32::MAX` bytes: the wire format cannot express either.
    pub fn push(
        &mut self,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&[u8], Option<&[u8]>)],
    ) {
        assert!(
            self.count < i32::MAX,
            "a batch holds at most i32::MAX records"
        );
        if self.count == 0 {
            self.base_timestamp = timestamp;
            self.max_timestamp = timestamp;
        } else {
            self.max_timestamp = self.max_timestamp.max(timestamp);
        }
        let timestamp_delta = timestamp.wrapping_sub(self.base_timestamp);
        let header_count = wire_len(headers.len());
        let mut headers_len = 0;
        for (header_key, header_value) in headers {
            headers_len += nullable_bytes_len(Some(header_key)) + nullable_bytes_len(*header_value);
        }
        // The body's size if the attributes byte and each of its five varints take one byte,
        // and the most the varints can add to that: 9 more bytes for the timestamp delta,
        // 4 for each of the other four.
        let least_body =
            6 + key.map_or(0, <[u8]>::len) + value.map_or(0, <[u8]>::len) + headers_len;
        let most = 5 + least_body + 9 + 4 * 4; // the length itself takes at most 5

        // Written straight into the buffer after one `reserve`, without sizing every field
        // first: each small field is a byte store or two, and only the key and value are
        // copied. The length prefix goes in last, into room as wide as the least body's
        // length takes; the body moves only in the rare case its varints widen the length.
        append_in_place(&mut self.buf, most, |out| {
            out.put_varint(wire_len(least_body)); // room for the length
            let room = out.at;
            out.put_u8(0); // record attributes: unused
            out.put_varlong(timestamp_delta);
            out.put_varint(self.count); // offset delta
            out.put_nullable_bytes(key);
            out.put_nullable_bytes(value);
            out.put_varint(header_count);
            for (header_key, header_value) in headers {
                out.put_nullable_bytes(Some(header_key));
                out.put_nullable_bytes(*header_value);
            }
            let body_len = out.at - room;
            out.put_length_prefix(room, wire_len(body_len));
        });
        self.count += 1;
    }

    /// Number of records pushed.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether no record has been pushed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Encoded size of the batch so far, header included.
    pub fn size_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Writes the header and CRC and returns the complete batch.
    ///
    /// A builder with no records yields a header-only batch (records count 0, timestamps -1),
    /// which [`validate`] rejects.
    ///
    /// # Panics
    ///
    /// If the batch is larger than the format allows (`i32::MAX` bytes after the length
    /// field).
    pub fn finish(mut self) -> BytesMut {
        let batch_length = wire_len(self.buf.len() - LENGTH_PREFIX);
        let header = BatchHeader {
            base_offset: 0,
            batch_length,
            partition_leader_epoch: -1,
            magic: MAGIC,
            crc: 0,
            attributes: 0,
            last_offset_delta: (self.count - 1).max(0),
            base_timestamp: self.base_timestamp,
            max_timestamp: self.max_timestamp,
            producer_id: self.producer_id,
            producer_epoch: self.producer_epoch,
            base_sequence: self.base_sequence,
            records_count: self.count,
        };
        self.buf[..BATCH_HEADER_LEN].copy_from_slice(&header.encode());
        let crc = crc32c::crc32c(&self.buf[CRC_START..]);
        self.buf[field::CRC..field::CRC + 4].copy_from_slice(&crc.to_be_bytes());
        self.buf
    }
}

/// A length or count as the wire's i32.
fn wire_len(len: usize) -> i32 {
    i32::try_from(len).expect("length exceeds the wire format's i32::MAX limit")
}

fn read_i16(buf: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([buf[at], buf[at + 1]])
}

fn read_i32(buf: &[u8], at: usize) -> i32 {
    let mut bytes = [0u8; 4];
    bytes.copy_from_slice(&buf[at..at + 4]);
    i32::from_be_bytes(bytes)
}

fn read_i64(buf: &[u8], at: usize) -> i64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&buf[at..at + 8]);
    i64::from_be_bytes(bytes)
}

fn zigzag32(value: i32) -> u32 {
    ((value << 1) ^ (value >> 31)) as u32
}

fn zigzag64(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn unzigzag32(value: u32) -> i32 {
    ((value >> 1) as i32) ^ -((value & 1) as i32)
}

fn unzigzag64(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

/// Bytes taken by `value` as an unsigned LEB128 varint: its significant bits divided by 7,
/// rounded up. `(bits * 9 + 64) / 64` is that quotient for every `bits` from 1 to 64 (checked
/// by `varint_lengths_match_their_encoding`) in a multiply and a shift, where `div_ceil(7)`
/// took a dozen instructions: `push` sizes six varints per record.
#[inline]
fn uvarint_len(value: u64) -> usize {
    let bits = 64 - (value | 1).leading_zeros() as usize;
    (bits * 9 + 64) >> 6
}

fn varint_len(value: i32) -> usize {
    uvarint_len(u64::from(zigzag32(value)))
}

fn nullable_bytes_len(bytes: Option<&[u8]>) -> usize {
    match bytes {
        None => varint_len(-1),
        Some(bytes) => varint_len(wire_len(bytes.len())) + bytes.len(),
    }
}

/// Appends what `write` writes through its cursor, at most `most` bytes, to `buf`, in place
/// in spare capacity reserved for them: no zero-fill first and no capacity check per field.
///
/// # Panics
///
/// If `write` writes past `most` bytes.
fn append_in_place(buf: &mut BytesMut, most: usize, write: impl FnOnce(&mut InPlace<'_>)) {
    buf.reserve(most);
    let start = buf.len();
    let mut out = InPlace {
        dst: &mut buf.spare_capacity_mut()[..most],
        at: 0,
    };
    write(&mut out);
    let written = out.at;
    // SAFETY: `dst[..at]` is initialised (`InPlace`'s invariant), and `at <= most`, within
    // the capacity just reserved.
    unsafe { buf.set_len(start + written) };
}

/// A cursor that writes into the uninitialised spare capacity of a buffer, front to back.
///
/// Invariant: `dst[..at]` is initialised. Every method keeps it (writes land at `at` before
/// it moves past them, and are bounds-checked against `dst`); code in this module changes
/// the fields only through them.
struct InPlace<'a> {
    dst: &'a mut [MaybeUninit<u8>],
    at: usize,
}

impl InPlace<'_> {
    /// Writes `length` as a varint at the front, over the `room` bytes written there first
    /// as a placeholder, and moves what follows them if the varint is narrower or wider.
    fn put_length_prefix(&mut self, room: usize, length: i32) {
        let width = varint_len(length);
        if width != room {
            // `dst[..at]` is initialised: the copy fills `dst[width..]` up to the new `at`
            // from it, and whatever of `dst[..width]` it does not cover was written before.
            self.dst.copy_within(room..self.at, width);
            self.at = self.at - room + width;
        }
        let mut rest = u64::from(zigzag32(length));
        for (i, byte) in self.dst[..width].iter_mut().enumerate() {
            let more = if i + 1 < width { 0x80 } else { 0 };
            byte.write((rest as u8 & 0x7f) | more);
            rest >>= 7;
        }
    }

    fn put_u8(&mut self, byte: u8) {
        self.dst[self.at].write(byte);
        self.at += 1;
    }

    fn put_slice(&mut self, bytes: &[u8]) {
        self.dst[self.at..self.at + bytes.len()].write_copy_of_slice(bytes);
        self.at += bytes.len();
    }

    fn put_uvarint(&mut self, mut value: u64) {
        while value >= 0x80 {
            self.put_u8((value as u8) | 0x80);
            value >>= 7;
        }
        self.put_u8(value as u8);
    }

    fn put_varint(&mut self, value: i32) {
        self.put_uvarint(u64::from(zigzag32(value)));
    }

    fn put_varlong(&mut self, value: i64) {
        self.put_uvarint(zigzag64(value));
    }

    /// A nullable byte string: its varint length (-1 for null), then its bytes.
    #[inline(always)]
    fn put_nullable_bytes(&mut self, bytes: Option<&[u8]>) {
        match bytes {
            None => self.put_varint(-1),
            Some(bytes) => {
                self.put_varint(wire_len(bytes.len()));
                self.put_slice(bytes);
            }
        }
    }
}

/// A bounds-checked reader over record bytes; every read fails cleanly at the end.
#[derive(Debug, Clone)]
struct Cursor<'a> {
    buf: &'a [u8],
}

const END_OF_RECORD: BatchError = BatchError::InvalidRecord("record ends in the middle of a field");

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Cursor { buf }
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn remaining(&self) -> usize {
        self.buf.len()
    }

    fn byte(&mut self) -> Result<u8, BatchError> {
        let (&first, rest) = self.buf.split_first().ok_or(END_OF_RECORD)?;
        self.buf = rest;
        Ok(first)
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], BatchError> {
        if len > self.buf.len() {
            return Err(END_OF_RECORD);
        }
        let (taken, rest) = self.buf.split_at(len);
        self.buf = rest;
        Ok(taken)
    }

    /// Reads an unsigned LEB128 varint of at most `bits` bits, rejecting overlong encodings
    /// and values that do not fit.
    fn uvarint(&mut self, bits: u32) -> Result<u64, BatchError> {
        let mut value = 0u64;
        let mut shift = 0u32;
        loop {
            let byte = self.byte()?;
            let group = u64::from(byte & 0x7f);
            if group.checked_shr(bits - shift).unwrap_or(0) != 0 {
                return Err(BatchError::InvalidRecord("varint overflows its type"));
            }
            value |= group << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
            shift += 7;
            if shift >= bits {
                return Err(BatchError::InvalidRecord("varint is too long"));
            }
        }
    }

    fn varint(&mut self) -> Result<i32, BatchError> {
        // uvarint(32) never returns more than u32::MAX.
        Ok(unzigzag32(self.uvarint(32)? as u32))
    }

    fn varlong(&mut self) -> Result<i64, BatchError> {
        Ok(unzigzag64(self.uvarint(64)?))
    }

    /// Reads a varint length and that many bytes; -1 means null.
    fn nullable_bytes(&mut self, bad_length: &'static str) -> Result<Option<&'a [u8]>, BatchError> {
        match self.varint()? {
            -1 => Ok(None),
            len => {
                let len =
                    usize::try_from(len).map_err(|_| BatchError::InvalidRecord(bad_length))?;
                self.take(len).map(Some)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMIT: usize = 1 << 20;

    #[test]
    fn records_round_trip_at_every_width_of_their_length_field() {
        // Records whose body is just below and at each width's limit of the length varint
        // (63/64 bytes take one/two bytes once zigzagged, and so on), with timestamp
        // deltas of every width: the record's size is counted before it is written.
        let mut records = Vec::new();
        for limit in [64, 8192, 1_048_576] {
            for value_len in limit - 12..limit + 3 {
                records.push(OwnedRecord {
                    timestamp: 1_000 + records.len() as i64 * 1_000_003,
                    key: (value_len % 2 == 0).then(|| b"key".to_vec()),
                    value: Some(vec![value_len as u8; value_len]),
                    headers: Vec::new(),
                });
            }
        }
        records.push(OwnedRecord {
            timestamp: i64::MAX,
            key: None,
            value: None,
            headers: vec![(b"h".to_vec(), None), (Vec::new(), Some(vec![1; 200]))],
        });
        let batch = build(&records);
        validate(&batch, usize::MAX).unwrap();
        let decoded = decode(&batch);
        assert_eq!(decoded.len(), records.len());
        for (got, want) in decoded.iter().zip(&records) {
            assert_eq!(got.timestamp, want.timestamp);
            assert_eq!(got.key, want.key.as_deref());
            assert_eq!(got.value, want.value.as_deref());
            let headers: Vec<(&[u8], Option<&[u8]>)> = want
                .headers
                .iter()
                .map(|(k, v)| (k.as_slice(), v.as_deref()))
                .collect();
            assert_eq!(got.headers, headers);
        }
    }

    type OwnedHeader = (Vec<u8>, Option<Vec<u8>>);

    #[derive(Debug, Clone)]
    struct OwnedRecord {
        timestamp: i64,
        key: Option<Vec<u8>>,
        value: Option<Vec<u8>>,
        headers: Vec<OwnedHeader>,
    }

    fn build(records: &[OwnedRecord]) -> BytesMut {
        let mut builder = BatchBuilder::new();
        for record in records {
            let headers: Vec<(&[u8], Option<&[u8]>)> = record
                .headers
                .iter()
                .map(|(k, v)| (k.as_slice(), v.as_deref()))
                .collect();
            builder.push(
                record.timestamp,
                record.key.as_deref(),
                record.value.as_deref(),
                &headers,
            );
        }
        assert_eq!(builder.len(), records.len());
        let expected_size = builder.size_bytes();
        let batch = builder.finish();
        assert_eq!(batch.len(), expected_size);
        batch
    }

    fn decode(batch: &[u8]) -> Vec<Record<'_>> {
        records(batch)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
    }

    fn sample_batch() -> BytesMut {
        let mut builder = BatchBuilder::new();
        builder.push(1_000, Some(b"a"), Some(b"one"), &[]);
        builder.push(999, None, None, &[(b"h1", Some(b"x")), (b"h2", None)]);
        builder.push(1_005, Some(b""), Some(b"three"), &[]);
        builder.finish()
    }

    /// Rewrites the CRC so that only the mutated content, not the checksum, is under test.
    fn fix_crc(batch: &mut [u8]) {
        let crc = crc32c::crc32c(&batch[CRC_START..]);
        batch[17..21].copy_from_slice(&crc.to_be_bytes());
    }

    #[test]
    fn record_offsets_must_match_the_batch_header() {
        let batch = sample_batch();
        // Record 0: length at 61, attributes at 62, timestamp delta at 63, offset delta at 64.
        assert_eq!(batch[64], 0);
        let errors = |batch: &[u8]| -> Vec<BatchError> {
            records(batch).unwrap().filter_map(Result::err).collect()
        };
        assert!(errors(&batch).is_empty());
        // Delta 2 (zigzag 4) for the first record: the second's delta 1 no longer rises.
        let mut bad = batch.clone();
        bad[64] = 4;
        fix_crc(&mut bad);
        assert_eq!(
            errors(&bad),
            vec![BatchError::InvalidRecord(
                "record offset deltas do not rise"
            )]
        );
        // Delta 3 is past the batch's last offset delta (2).
        bad[64] = 6;
        fix_crc(&mut bad);
        assert_eq!(
            errors(&bad),
            vec![BatchError::InvalidRecord(
                "record offset delta is outside the batch's offsets"
            )]
        );
        // A header whose last offset delta is past its last record's, as compaction leaves
        // a batch whose last record it removed: the records keep their own offsets.
        let mut compacted = batch.clone();
        compacted[field::LAST_OFFSET_DELTA + 3] = 5;
        assert!(errors(&compacted).is_empty());
        let offsets: Vec<i64> = records(&compacted)
            .unwrap()
            .map(|r| r.unwrap().offset)
            .collect();
        assert_eq!(offsets, vec![0, 1, 2]);
    }

    #[test]
    fn retain_records_keeps_offsets_and_recomputes_the_crc() {
        let mut batch = sample_batch();
        set_base_offset(&mut batch, 100);
        assert_eq!(retain_records(&batch, |_| true).unwrap(), Retained::All);
        assert_eq!(retain_records(&batch, |_| false).unwrap(), Retained::None);
        // Drop the last record: the batch still ends at offset 102.
        let Retained::Some(kept) = retain_records(&batch, |r| r.offset != 102).unwrap() else {
            panic!("expected a rewritten batch");
        };
        let header = validate(&kept, usize::MAX).unwrap();
        assert_eq!((header.base_offset, header.last_offset()), (100, 102));
        assert_eq!(header.records_count, 2);
        let kept_records = decode(&kept);
        let original = decode(&batch);
        assert_eq!(kept_records, original[..2].to_vec());
        // Drop the first: the second keeps its offset and timestamp.
        let Retained::Some(kept) = retain_records(&batch, |r| r.offset != 100).unwrap() else {
            panic!("expected a rewritten batch");
        };
        validate(&kept, usize::MAX).unwrap();
        assert_eq!(decode(&kept), original[1..].to_vec());
    }

    #[test]
    fn crc_is_castagnoli() {
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn varints_match_the_wire() {
        let cases: &[(i32, &[u8])] = &[
            (0, &[0x00]),
            (-1, &[0x01]),
            (1, &[0x02]),
            (-64, &[0x7f]),
            (64, &[0x80, 0x01]),
            (300, &[0xd8, 0x04]),
            (i32::MAX, &[0xfe, 0xff, 0xff, 0xff, 0x0f]),
            (i32::MIN, &[0xff, 0xff, 0xff, 0xff, 0x0f]),
        ];
        for &(value, wire) in cases {
            let mut buf = BytesMut::new();
            append_in_place(&mut buf, varint_len(value), |out| out.put_varint(value));
            assert_eq!(&buf[..], wire, "encoding {value}");
            let mut cursor = Cursor::new(wire);
            assert_eq!(cursor.varint(), Ok(value));
            assert!(cursor.is_empty());
        }
        let mut buf = BytesMut::new();
        append_in_place(&mut buf, 10, |out| out.put_varlong(i64::MIN));
        assert_eq!(Cursor::new(&buf).varlong(), Ok(i64::MIN));
    }

    #[test]
    fn varint_lengths_match_their_encoding() {
        for bits in 0..=64u32 {
            // The smallest and largest values of `bits` significant bits.
            let values = match bits {
                0 => vec![0],
                64 => vec![1 << 63, u64::MAX],
                _ => vec![1 << (bits - 1), (1 << bits) - 1],
            };
            for value in values {
                let mut buf = BytesMut::new();
                append_in_place(&mut buf, 10, |out| {
                    out.put_uvarint(value);
                    while out.at < 10 {
                        out.put_u8(0xff);
                    }
                });
                let encoded = buf.iter().position(|b| b & 0x80 == 0).unwrap() + 1;
                assert_eq!(uvarint_len(value), encoded, "{value:#x}");
                assert_eq!(uvarint_len(value), (bits.max(1) as usize).div_ceil(7));
            }
        }
    }

    #[test]
    fn a_length_prefix_wider_than_its_room_moves_what_follows() {
        for body_len in [0, 1, 63, 64, 200, 8191, 8192] {
            let body: Vec<u8> = (0..body_len).map(|i| i as u8).collect();
            let mut buf = BytesMut::new();
            append_in_place(&mut buf, 5 + body_len, |out| {
                out.put_u8(0xee); // one byte of room, whatever the length needs
                out.put_slice(&body);
                out.put_length_prefix(1, wire_len(body_len));
            });
            let mut cursor = Cursor::new(&buf);
            assert_eq!(cursor.varint(), Ok(wire_len(body_len)));
            assert_eq!(cursor.take(body_len), Ok(&body[..]));
            assert!(cursor.is_empty(), "{body_len}");
        }
    }

    #[test]
    fn malformed_varints_are_errors() {
        // Six bytes for a 32-bit varint.
        let too_long = [0x80, 0x80, 0x80, 0x80, 0x80, 0x00];
        assert!(Cursor::new(&too_long).varint().is_err());
        // Five bytes whose last group sets bits above 32.
        let overflow = [0xff, 0xff, 0xff, 0xff, 0x1f];
        assert!(Cursor::new(&overflow).varint().is_err());
        // Eleven bytes for a varlong; ten bytes with bits above 64.
        assert!(Cursor::new(&[0x80; 11]).varlong().is_err());
        let mut overflow64 = [0xff; 10];
        overflow64[9] = 0x02;
        assert!(Cursor::new(&overflow64).varlong().is_err());
        // A continuation bit with nothing after it.
        assert!(Cursor::new(&[0x80]).varint().is_err());
        assert!(Cursor::new(&[]).varint().is_err());
    }

    #[test]
    fn known_batch_bytes() {
        const TS: i64 = 1_700_000_000_000; // 0x0000_018b_cfe5_6800
        let mut builder = BatchBuilder::new();
        builder.push(TS, Some(b"k"), Some(b"hello"), &[(b"h", Some(b"v"))]);
        let batch = builder.finish();

        #[rustfmt::skip]
        let mut expected: Vec<u8> = vec![
            0, 0, 0, 0, 0, 0, 0, 0,             // 0: base offset
            0, 0, 0, 66,                        // 8: batch length = 78 - 12
            0xff, 0xff, 0xff, 0xff,             // 12: partition leader epoch -1
            2,                                  // 16: magic
            0, 0, 0, 0,                         // 17: crc, filled in below
            0, 0,                               // 21: attributes
            0, 0, 0, 0,                         // 23: last offset delta
            0, 0, 0x01, 0x8b, 0xcf, 0xe5, 0x68, 0x00, // 27: base timestamp
            0, 0, 0x01, 0x8b, 0xcf, 0xe5, 0x68, 0x00, // 35: max timestamp
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // 43: producer id -1
            0xff, 0xff,                         // 51: producer epoch -1
            0xff, 0xff, 0xff, 0xff,             // 53: base sequence -1
            0, 0, 0, 1,                         // 57: records count
            // 61: the record
            0x20,                               // length 16
            0x00,                               // attributes
            0x00,                               // timestamp delta 0
            0x00,                               // offset delta 0
            0x02, b'k',                         // key length 1, key
            0x0a, b'h', b'e', b'l', b'l', b'o', // value length 5, value
            0x02,                               // 1 header
            0x02, b'h',                         // header key
            0x02, b'v',                         // header value
        ];
        assert_eq!(expected.len(), 78);
        let crc = crc32c::crc32c(&expected[21..]);
        expected[17..21].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(&batch[..], &expected[..]);

        let header = validate(&expected, LIMIT).unwrap();
        assert_eq!(
            header,
            BatchHeader {
                base_offset: 0,
                batch_length: 66,
                partition_leader_epoch: -1,
                magic: 2,
                crc,
                attributes: 0,
                last_offset_delta: 0,
                base_timestamp: TS,
                max_timestamp: TS,
                producer_id: -1,
                producer_epoch: -1,
                base_sequence: -1,
                records_count: 1,
            }
        );
        assert_eq!(header.total_len(), 78);
        assert_eq!(header.encode()[..], expected[..BATCH_HEADER_LEN]);
    }

    #[test]
    fn header_field_offsets() {
        // Give every field a distinct value, then check each lands at its documented offset.
        let header = BatchHeader {
            base_offset: 0x0102_0304_0506_0708,
            batch_length: 0x1112_1314,
            partition_leader_epoch: 0x2122_2324,
            magic: 2,
            crc: 0x3132_3334,
            attributes: 0x4142,
            last_offset_delta: 0x5152_5354,
            base_timestamp: 0x6162_6364_6566_6768,
            max_timestamp: 0x7172_7374_7576_7778,
            producer_id: 0x0a0b_0c0d_0e0f_1a1b,
            producer_epoch: 0x2a2b,
            base_sequence: 0x3a3b_3c3d,
            records_count: 0x4a4b_4c4d,
        };
        let bytes = header.encode();
        let at = |offset: usize, len: usize| &bytes[offset..offset + len];
        assert_eq!(at(0, 8), 0x0102_0304_0506_0708i64.to_be_bytes());
        assert_eq!(at(8, 4), 0x1112_1314i32.to_be_bytes());
        assert_eq!(at(12, 4), 0x2122_2324i32.to_be_bytes());
        assert_eq!(at(16, 1), [2]);
        assert_eq!(at(17, 4), 0x3132_3334u32.to_be_bytes());
        assert_eq!(at(21, 2), 0x4142i16.to_be_bytes());
        assert_eq!(at(23, 4), 0x5152_5354i32.to_be_bytes());
        assert_eq!(at(27, 8), 0x6162_6364_6566_6768i64.to_be_bytes());
        assert_eq!(at(35, 8), 0x7172_7374_7576_7778i64.to_be_bytes());
        assert_eq!(at(43, 8), 0x0a0b_0c0d_0e0f_1a1bi64.to_be_bytes());
        assert_eq!(at(51, 2), 0x2a2bi16.to_be_bytes());
        assert_eq!(at(53, 4), 0x3a3b_3c3di32.to_be_bytes());
        assert_eq!(at(57, 4), 0x4a4b_4c4di32.to_be_bytes());
        assert_eq!(BatchHeader::parse(&bytes), Ok(header));
        assert_eq!(base_offset(&bytes), 0x0102_0304_0506_0708);
        assert_eq!(header.last_offset(), 0x0102_0304_0506_0708 + 0x5152_5354);
    }

    #[test]
    fn round_trip_with_offsets_and_timestamps() {
        let mut batch = sample_batch();
        let header = validate(&batch, LIMIT).unwrap();
        assert_eq!(header.records_count, 3);
        assert_eq!(header.last_offset_delta, 2);
        assert_eq!(header.base_timestamp, 1_000);
        assert_eq!(header.max_timestamp, 1_005);
        assert_eq!(header.producer_id, -1);

        set_base_offset(&mut batch, 42);
        let header = validate(&batch, LIMIT).expect("base offset is outside the crc");
        assert_eq!(header.base_offset, 42);
        assert_eq!(header.last_offset(), 44);
        assert_eq!(base_offset(&batch), 42);

        let records = decode(&batch);
        assert_eq!(
            records,
            vec![
                Record {
                    offset: 42,
                    timestamp: 1_000,
                    key: Some(&b"a"[..]),
                    value: Some(&b"one"[..]),
                    headers: vec![],
                },
                Record {
                    offset: 43,
                    timestamp: 999,
                    key: None,
                    value: None,
                    headers: vec![(&b"h1"[..], Some(&b"x"[..])), (&b"h2"[..], None)],
                },
                Record {
                    offset: 44,
                    timestamp: 1_005,
                    key: Some(&b""[..]),
                    value: Some(&b"three"[..]),
                    headers: vec![],
                },
            ]
        );
    }

    #[test]
    fn builder_bookkeeping() {
        let mut builder = BatchBuilder::default();
        assert!(builder.is_empty());
        assert_eq!(builder.len(), 0);
        assert_eq!(builder.size_bytes(), BATCH_HEADER_LEN);
        builder.push(5, None, Some(b"v"), &[]);
        assert!(!builder.is_empty());
        assert_eq!(builder.len(), 1);
        // length, attributes, ts delta, offset delta, null key, value length, value, headers
        assert_eq!(builder.size_bytes(), BATCH_HEADER_LEN + 8);

        let empty = BatchBuilder::with_capacity(1024).finish();
        assert_eq!(empty.len(), BATCH_HEADER_LEN);
        assert_eq!(
            validate(&empty, LIMIT),
            Err(BatchError::InvalidHeader(
                "records count must be at least 1"
            ))
        );
        assert_eq!(records(&empty).unwrap().count(), 0);
    }

    #[test]
    fn a_valid_batch_cannot_be_made_from_a_bad_crc() {
        let batch = sample_batch();
        let mut corrupt = batch.clone();
        corrupt[BATCH_HEADER_LEN + 2] ^= 0x40;
        assert!(matches!(
            ValidBatch::new(corrupt.clone(), LIMIT),
            Err(BatchError::CrcMismatch { .. })
        ));
        let mut buf = corrupt;
        assert!(matches!(
            ValidBatch::split_from(&mut buf, LIMIT),
            Err(BatchError::CrcMismatch { .. })
        ));
        // Every other check of `validate` applies too.
        assert_eq!(
            ValidBatch::new(batch.clone(), batch.len() - 1).map(drop),
            validate(&batch, batch.len() - 1).map(drop)
        );
        let mut short = batch.clone();
        short.truncate(batch.len() - 1);
        assert!(matches!(
            ValidBatch::new(short.clone(), LIMIT),
            Err(BatchError::Truncated { .. })
        ));
        assert!(matches!(
            ValidBatch::split_from(&mut short, LIMIT),
            Err(BatchError::Truncated { .. })
        ));
    }

    #[test]
    fn a_valid_batch_keeps_its_header_and_offset_in_step() {
        let bytes = sample_batch();
        let mut valid = ValidBatch::new(bytes.clone(), LIMIT).unwrap();
        assert_eq!(*valid.header(), validate(&bytes, LIMIT).unwrap());
        assert_eq!(valid.len(), bytes.len());
        assert_eq!(valid.header().last_offset_delta, 2);
        valid.set_base_offset(40);
        assert_eq!(valid.header().base_offset, 40);
        assert_eq!(validate(valid.as_bytes(), LIMIT), Ok(*valid.header()));
        let stored = valid.into_bytes();
        assert_eq!(base_offset(&stored), 40);
        assert_eq!(&stored[CRC_START..], &bytes[CRC_START..]);
    }

    #[test]
    fn split_from_takes_one_batch_at_a_time() {
        let one = sample_batch();
        let mut two = BatchBuilder::new();
        two.push(7, None, Some(b"second"), &[]);
        let two = two.finish();
        let mut buf = one.clone();
        buf.extend_from_slice(&two);
        let first = ValidBatch::split_from(&mut buf, LIMIT).unwrap();
        assert_eq!(first.as_bytes(), &one[..]);
        assert_eq!(&buf[..], &two[..]);
        let second = ValidBatch::split_from(&mut buf, LIMIT).unwrap();
        assert_eq!(second.header().records_count, 1);
        assert!(buf.is_empty());
        // The size limit is checked from the header, before the bytes are split off.
        let mut buf = one.clone();
        assert!(matches!(
            ValidBatch::split_from(&mut buf, one.len() - 1),
            Err(BatchError::TooLarge { .. })
        ));
        assert_eq!(buf.len(), one.len());
    }

    #[test]
    fn every_flipped_byte_in_crc_region_is_caught() {
        let batch = sample_batch();
        for at in CRC_START..batch.len() {
            let mut corrupt = batch.to_vec();
            corrupt[at] ^= 0x01;
            assert!(
                validate(&corrupt, LIMIT).is_err(),
                "flip at {at} went unnoticed"
            );
        }
        // Bytes in the records region are only covered by the crc.
        let mut corrupt = batch.to_vec();
        corrupt[BATCH_HEADER_LEN + 2] ^= 0x40;
        assert!(matches!(
            validate(&corrupt, LIMIT),
            Err(BatchError::CrcMismatch { .. })
        ));
        // So is the crc field itself.
        let mut corrupt = batch.to_vec();
        corrupt[17] ^= 0x80;
        assert!(matches!(
            validate(&corrupt, LIMIT),
            Err(BatchError::CrcMismatch { .. })
        ));
    }

    #[test]
    fn validate_rejects_bad_headers() {
        let batch = sample_batch();
        let len = batch.len();

        assert_eq!(
            validate(&batch[..10], LIMIT),
            Err(BatchError::Truncated {
                needed: BATCH_HEADER_LEN,
                available: 10
            })
        );
        assert_eq!(
            validate(&batch[..len - 1], LIMIT),
            Err(BatchError::Truncated {
                needed: len,
                available: len - 1
            })
        );
        let mut longer = batch.to_vec();
        longer.push(0);
        assert!(matches!(
            validate(&longer, LIMIT),
            Err(BatchError::BadLength(_))
        ));
        assert_eq!(
            validate(&batch, len - 1),
            Err(BatchError::TooLarge {
                size: len,
                limit: len - 1
            })
        );
        assert!(validate(&batch, len).is_ok());

        let mut bad_magic = batch.to_vec();
        bad_magic[16] = 1;
        assert_eq!(validate(&bad_magic, LIMIT), Err(BatchError::BadMagic(1)));

        let mut short_length = batch.to_vec();
        short_length[8..12].copy_from_slice(&48i32.to_be_bytes());
        assert_eq!(
            validate(&short_length, LIMIT),
            Err(BatchError::BadLength(48))
        );
        short_length[8..12].copy_from_slice(&(-1i32).to_be_bytes());
        assert_eq!(
            validate(&short_length, LIMIT),
            Err(BatchError::BadLength(-1))
        );

        let with_field = |at: usize, bytes: &[u8]| {
            let mut corrupt = batch.to_vec();
            corrupt[at..at + bytes.len()].copy_from_slice(bytes);
            fix_crc(&mut corrupt);
            validate(&corrupt, LIMIT)
        };
        assert!(matches!(
            with_field(57, &0i32.to_be_bytes()),
            Err(BatchError::InvalidHeader(_))
        ));
        assert!(matches!(
            with_field(23, &(-1i32).to_be_bytes()),
            Err(BatchError::InvalidHeader(_))
        ));
        assert!(matches!(
            with_field(35, &(-2i64).to_be_bytes()),
            Err(BatchError::InvalidHeader(_))
        ));
        assert!(with_field(35, &(-1i64).to_be_bytes()).is_ok());
    }

    #[test]
    fn garbage_is_rejected() {
        assert!(validate(&[], LIMIT).is_err());
        assert!(validate(&[0xff; 100], LIMIT).is_err());
        assert!(records(&[0u8; 30]).is_err());
        assert_eq!(batches(&[]).count(), 0);
        let found: Vec<_> = batches(&[0u8; 5]).collect();
        assert_eq!(
            found,
            vec![Err(BatchError::Truncated {
                needed: BATCH_HEADER_LEN,
                available: 5
            })]
        );
    }

    #[test]
    fn batches_finds_each_and_reports_a_partial_tail() {
        let first = sample_batch();
        let mut second = BatchBuilder::new();
        second.push(7, Some(b"k"), Some(&[9u8; 300]), &[]);
        let second = second.finish();

        let mut buf = first.to_vec();
        buf.extend_from_slice(&second);
        let found: Vec<_> = batches(&buf).collect::<Result<_, _>>().unwrap();
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].0, 0);
        assert_eq!(found[0].1.records_count, 3);
        assert_eq!(found[1].0, first.len());
        assert_eq!(found[1].1.total_len(), second.len());

        buf.extend_from_slice(&first[..BATCH_HEADER_LEN + 1]);
        let mut iter = batches(&buf);
        assert!(iter.next().unwrap().is_ok());
        assert!(iter.next().unwrap().is_ok());
        assert_eq!(
            iter.next(),
            Some(Err(BatchError::Truncated {
                needed: first.len(),
                available: BATCH_HEADER_LEN + 1
            }))
        );
        assert_eq!(iter.next(), None);
    }

    #[test]
    fn records_refuses_offsets_past_i64_max() {
        let mut batch = sample_batch();
        set_base_offset(&mut batch, i64::MAX - 1);
        let header = BatchHeader::parse(&batch).unwrap();
        assert!(header.last_offset_delta >= 2, "the sample holds 3 records");
        assert_eq!(
            records(&batch).err(),
            Some(BatchError::InvalidHeader("the batch's offsets overflow"))
        );
        set_base_offset(&mut batch, i64::MAX - i64::from(header.last_offset_delta));
        assert!(records(&batch).unwrap().all(|r| r.is_ok()));
    }

    #[test]
    fn records_rejects_compression_and_malformed_records() {
        let batch = sample_batch();

        let mut compressed = batch.to_vec();
        compressed[21..23].copy_from_slice(&3i16.to_be_bytes()); // lz4
        assert_eq!(
            records(&compressed).err(),
            Some(BatchError::UnsupportedCompression(3))
        );

        // Claim one more record than the batch holds.
        let mut too_many = batch.to_vec();
        too_many[57..61].copy_from_slice(&4i32.to_be_bytes());
        let decoded: Vec<_> = records(&too_many).unwrap().collect();
        assert_eq!(decoded.len(), 4);
        assert!(decoded[..3].iter().all(Result::is_ok));
        assert!(decoded[3].is_err());

        // Claim one fewer: two records decode, and the third's bytes are left over.
        let mut too_few = batch.to_vec();
        too_few[57..61].copy_from_slice(&2i32.to_be_bytes());
        let decoded: Vec<_> = records(&too_few).unwrap().collect();
        assert_eq!(decoded.len(), 3);
        assert!(decoded[..2].iter().all(Result::is_ok));
        assert_eq!(
            decoded[2],
            Err(BatchError::InvalidRecord(
                "bytes left over after the last record"
            ))
        );

        let mut negative = batch.to_vec();
        negative[57..61].copy_from_slice(&(-1i32).to_be_bytes());
        assert!(matches!(
            records(&negative).err(),
            Some(BatchError::InvalidHeader(_))
        ));

        // A record length that runs past the batch.
        let mut long_record = batch.to_vec();
        long_record[BATCH_HEADER_LEN] = 0x7e;
        let first = records(&long_record).unwrap().next().unwrap();
        assert!(matches!(first, Err(BatchError::InvalidRecord(_))));

        // A record length that is longer than its fields (the next record's bytes).
        let mut padded = batch.to_vec();
        padded[BATCH_HEADER_LEN] += 2;
        let first = records(&padded).unwrap().next().unwrap();
        assert!(matches!(first, Err(BatchError::InvalidRecord(_))));

        assert!(matches!(
            records(&batch[..batch.len() - 1]).err(),
            Some(BatchError::Truncated { .. })
        ));
    }

    fn bytes_strategy(max: usize) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..max)
    }

    fn record_strategy() -> impl Strategy<Value = OwnedRecord> {
        (
            // validate() accepts -1 (no timestamp) and up; deltas may still wrap around i64.
            -1i64..=i64::MAX,
            proptest::option::of(bytes_strategy(40)),
            proptest::option::of(bytes_strategy(200)),
            proptest::collection::vec(
                (bytes_strategy(10), proptest::option::of(bytes_strategy(20))),
                0..4,
            ),
        )
            .prop_map(|(timestamp, key, value, headers)| OwnedRecord {
                timestamp,
                key,
                value,
                headers,
            })
    }

    fn records_strategy() -> impl Strategy<Value = Vec<OwnedRecord>> {
        proptest::collection::vec(record_strategy(), 1..20)
    }

    proptest! {
        #[test]
        fn prop_round_trip(input in records_strategy(), base in any::<i64>()) {
            let mut batch = build(&input);
            set_base_offset(&mut batch, base);
            let header = validate(&batch, LIMIT).unwrap();
            prop_assert_eq!(header.base_offset, base);
            prop_assert_eq!(header.records_count as usize, input.len());
            prop_assert_eq!(header.last_offset_delta as usize, input.len() - 1);
            prop_assert_eq!(header.base_timestamp, input[0].timestamp);
            let max = input.iter().map(|r| r.timestamp).max().unwrap();
            prop_assert_eq!(header.max_timestamp, max);

            let decoded = decode(&batch);
            prop_assert_eq!(decoded.len(), input.len());
            for (i, (got, want)) in decoded.iter().zip(&input).enumerate() {
                prop_assert_eq!(got.offset, base.wrapping_add(i as i64));
                prop_assert_eq!(got.timestamp, want.timestamp);
                prop_assert_eq!(got.key, want.key.as_deref());
                prop_assert_eq!(got.value, want.value.as_deref());
                let want_headers: Vec<(&[u8], Option<&[u8]>)> = want
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_slice(), v.as_deref()))
                    .collect();
                prop_assert_eq!(&got.headers, &want_headers);
            }
        }

        #[test]
        fn prop_garbage_never_panics(bytes in bytes_strategy(300)) {
            let _ = validate(&bytes, LIMIT);
            let _ = batches(&bytes).count();
            if let Ok(iter) = records(&bytes) {
                let _ = iter.count();
            }
        }

        #[test]
        fn prop_garbage_after_a_valid_header_never_panics(
            input in records_strategy(),
            tail in bytes_strategy(300),
            records_count in 0i32..50,
        ) {
            // A well-formed header in front of random record bytes reaches the record decoder.
            let mut batch = build(&input)[..BATCH_HEADER_LEN].to_vec();
            batch.extend_from_slice(&tail);
            let batch_length = (batch.len() - LENGTH_PREFIX) as i32;
            batch[8..12].copy_from_slice(&batch_length.to_be_bytes());
            batch[57..61].copy_from_slice(&records_count.to_be_bytes());
            fix_crc(&mut batch);
            let _ = validate(&batch, LIMIT);
            let _ = batches(&batch).count();
            let _ = records(&batch).unwrap().count();
        }

        #[test]
        fn prop_mutated_records_never_panic(
            input in records_strategy(),
            at in any::<prop::sample::Index>(),
            mask in 1u8..,
        ) {
            let mut batch = build(&input).to_vec();
            let at = BATCH_HEADER_LEN + at.index(batch.len() - BATCH_HEADER_LEN);
            batch[at] ^= mask;
            fix_crc(&mut batch);
            if let Ok(iter) = records(&batch) {
                let _ = iter.count();
            }
        }

        #[test]
        fn prop_flipped_byte_fails_validation(
            input in records_strategy(),
            at in any::<prop::sample::Index>(),
            mask in 1u8..,
        ) {
            let mut batch = build(&input).to_vec();
            let at = CRC_START + at.index(batch.len() - CRC_START);
            batch[at] ^= mask;
            prop_assert!(validate(&batch, LIMIT).is_err());
        }

        #[test]
        fn prop_batches_finds_every_batch(
            inputs in proptest::collection::vec(records_strategy(), 0..5),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut buf = Vec::new();
            let mut starts = Vec::new();
            for input in &inputs {
                starts.push(buf.len());
                buf.extend_from_slice(&build(input));
            }
            let found: Vec<_> = batches(&buf).collect::<Result<_, _>>().unwrap();
            let found_starts: Vec<usize> = found.iter().map(|(start, _)| *start).collect();
            prop_assert_eq!(&found_starts, &starts);
            for (start, header) in &found {
                let batch = &buf[*start..*start + header.total_len()];
                prop_assert_eq!(validate(batch, LIMIT), Ok(*header));
            }

            // Cutting the buffer inside its last batch leaves a truncated tail.
            if let Some(&last) = starts.last() {
                let cut = last + cut.index(buf.len() - last);
                let results: Vec<_> = batches(&buf[..cut]).collect();
                prop_assert_eq!(results.len(), starts.len() - usize::from(cut == last));
                if cut > last {
                    let is_truncated = matches!(
                        results.last(),
                        Some(Err(BatchError::Truncated { .. }))
                    );
                    prop_assert!(is_truncated);
                }
            }
        }
    }
}
