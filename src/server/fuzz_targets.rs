//! The fuzz targets that reach the broker's private decoders: what the broker runs on a
//! produced batch, and the internal logs' records read back from disk. The crate's
//! `fuzzing` module runs them under its allocation bound and lists them with the others.

use std::collections::HashMap;

use bytes::BytesMut;

use super::group_coordinator::{offset_key, parse_offset_key};
use super::internal_log;
use super::native::split_batches;
use crate::groups::share::SharePartition;
use crate::protocol::batch::{self, BatchHeader, Retained, ValidBatch, CRC_START};

/// Largest batch the targets accept (the broker's `--max-batch-bytes` is larger; inputs are
/// far smaller).
const MAX_BATCH_BYTES: usize = 1 << 20;

/// Record batches as a produce request's records field brings them, split and validated as
/// the broker does (header, length, CRC-32C); the same bytes walked as a fetch response's
/// records (what consumers and the internal logs' replay do); and the same again with the
/// CRC field fixed, so the fuzzer gets past the CRC to the checks and records behind it.
pub fn record_batch(data: &[u8]) {
    produced(data);
    walked(data);
    if let Some(fixed) = with_fixed_crc(data) {
        produced(&fixed);
        walked(&fixed);
    }
}

fn produced(data: &[u8]) {
    if let Ok(batches) = split_batches(BytesMut::from(data), MAX_BATCH_BYTES) {
        assert!(!batches.is_empty());
        assert_eq!(
            batches.iter().map(ValidBatch::len).sum::<usize>(),
            data.len()
        );
        for b in batches {
            check_valid_batch(b);
        }
    }
}

fn walked(data: &[u8]) {
    for b in batch::batches(data) {
        let Ok((start, header)) = b else { break };
        let bytes = &data[start..start + header.total_len()];
        if let Ok(valid) = ValidBatch::new(BytesMut::from(bytes), MAX_BATCH_BYTES) {
            check_valid_batch(valid);
        } else {
            check_records(bytes, &header);
        }
    }
}

/// The checks of a batch that passed validation: its CRC-32C is really the one it carries,
/// it validates again (also with another base offset, which the CRC does not cover), and
/// its records, when they decode, are exactly the offsets its header claims.
fn check_valid_batch(batch: ValidBatch) {
    let header = *batch.header();
    let bytes = batch.as_bytes();
    assert_eq!(bytes.len(), header.total_len());
    assert_eq!(
        crc32c::crc32c(&bytes[CRC_START..]),
        header.crc,
        "a valid batch's CRC"
    );
    assert_eq!(batch::validate(bytes, usize::MAX), Ok(header));
    check_records(bytes, &header);
    let mut moved = batch;
    moved.set_base_offset(header.base_offset.wrapping_add(1000));
    let header_moved = batch::validate(moved.as_bytes(), usize::MAX).expect("still valid");
    assert_eq!(&header_moved, moved.header());
}

/// Decodes the records of a batch whose header parsed; when all of them decode, their
/// offsets rise within the batch, up to at most the batch's last offset (compaction may
/// have removed the records after them); and compaction's rewrite of the batch
/// ([`batch::retain_records`]) keeps its offsets and the records it was told to keep, under a CRC
/// that checks.
fn check_records(batch: &[u8], header: &BatchHeader) {
    let Ok(records) = batch::records(batch) else {
        return;
    };
    let mut offsets = Vec::new();
    for record in records {
        match record {
            Ok(r) => offsets.push(r.offset),
            Err(_) => return,
        }
    }
    assert_eq!(offsets.len() as i64, i64::from(header.records_count));
    assert!(
        offsets.windows(2).all(|w| w[0] < w[1]),
        "record offsets rise"
    );
    // A batch of no records (validation refuses one; readers may meet it) has no offsets.
    if let (Some(&first), Some(&last)) = (offsets.first(), offsets.last()) {
        assert!(first >= header.base_offset);
        assert!(last <= header.last_offset());
    }
    check_retained(batch, header, &offsets);
}

/// Compaction's rewrite of a valid batch whose records all decode (compaction checks a
/// batch before it rewrites it), keeping every other record.
fn check_retained(batch: &[u8], header: &BatchHeader, offsets: &[i64]) {
    if batch::validate(&batch[..header.total_len().min(batch.len())], usize::MAX).is_err() {
        return;
    }
    let kept: Vec<i64> = offsets.iter().copied().step_by(2).collect();
    let keep = |r: &batch::Record<'_>| kept.contains(&r.offset);
    match batch::retain_records(batch, keep).expect("the records decoded once") {
        Retained::All => assert_eq!(kept.len(), offsets.len()),
        Retained::None => assert!(kept.is_empty()),
        Retained::Some(rewritten) => {
            let h = batch::validate(&rewritten, usize::MAX).expect("a rewritten batch is valid");
            assert_eq!(
                (h.base_offset, h.last_offset_delta, h.base_timestamp),
                (
                    header.base_offset,
                    header.last_offset_delta,
                    header.base_timestamp
                ),
                "a rewritten batch keeps its offsets and timestamps"
            );
            let left: Vec<i64> = batch::records(&rewritten)
                .expect("decodes")
                .map(|r| r.expect("a kept record decodes").offset)
                .collect();
            assert_eq!(left, kept);
        }
    }
}

/// A copy of `batch` with the CRC field set to the CRC of the bytes its header covers.
/// `None` if it is too short to hold a header.
fn with_fixed_crc(batch: &[u8]) -> Option<Vec<u8>> {
    let header = BatchHeader::parse(batch).ok()?;
    let end = header.total_len().min(batch.len());
    let mut fixed = batch.to_vec();
    let crc = crc32c::crc32c(&fixed[CRC_START..end]);
    fixed[CRC_START - 4..CRC_START].copy_from_slice(&crc.to_be_bytes());
    Some(fixed)
}

/// The internal logs' records as a replay reads them back (batches, records, the last value
/// of each key), then each key as a committed-offset key and each value as a share group's
/// state, as the coordinators read them; the raw input is tried as a key and a state too.
/// Offset keys and share states must encode back to what decoded.
pub fn internal_log(data: &[u8]) {
    let mut live = HashMap::new();
    let _ = internal_log::replay(data, &mut live);
    for (key, value) in &live {
        offset_record(key, value);
    }
    if let Some(fixed) = with_fixed_crc(data) {
        let _ = internal_log::replay(&fixed, &mut live);
    }
    offset_record(&bytes::Bytes::copy_from_slice(data), data);
}

fn offset_record(key: &bytes::Bytes, value: &[u8]) {
    if let Some((group, topic, partition)) = parse_offset_key(key) {
        assert_eq!(
            offset_key(&group, &topic, partition),
            &key[..],
            "offset key round trip"
        );
    }
    if let Ok(state) = SharePartition::decode_state(value) {
        let encoded = SharePartition::encode_state(&state);
        let again = SharePartition::decode_state(&encoded).expect("an encoded state decodes");
        assert_eq!(
            SharePartition::encode_state(&again),
            encoded,
            "share state round trip"
        );
    }
}
