//! The fuzz targets that reach the storage engine's private decoders: the files a broker
//! reads back from its data directory. The crate's `fuzzing` module runs them under its
//! allocation bound and lists them with the others.

use super::catalog::{validate_topic_name, Catalog};
use super::config::LogConfig;
use super::index::{OffsetIndex, TimeIndex, OFFSET_ENTRY_LEN, TIME_ENTRY_LEN};
use super::producer_ids::decode_mark;
use super::producers::ProducerTable;

/// `meta/topics.json` (the catalog), `meta/producer_ids.json` (the producer-id counter),
/// `meta/users.json`, `meta/acls.json` and `meta/quotas.json` as the broker reads them at
/// start. A catalog that loads must write and load back the same, and each topic's configs
/// apply without a panic however they were edited; users, ACLs and quotas that load must
/// write and load back the same.
pub fn metadata_files(data: &[u8]) {
    if let Ok(catalog) = serde_json::from_slice::<Catalog>(data) {
        let written = serde_json::to_vec(&catalog).expect("a catalog serialises");
        let again: Catalog = serde_json::from_slice(&written).expect("a written catalog loads");
        assert_eq!(again, catalog, "catalog round trip");
        let defaults = LogConfig::default();
        for (name, topic) in &catalog.topics {
            let _ = validate_topic_name(name);
            let _ = topic.log_config(&defaults);
        }
    }
    if let Ok(next) = decode_mark(data) {
        assert!(next >= 0);
        let written = format!("{{\"next_unreserved\":{next}}}");
        assert_eq!(
            decode_mark(written.as_bytes()),
            Ok(next),
            "producer id mark round trip"
        );
    }
    if let Ok(users) = super::users::decode(data) {
        let again = super::users::decode(&super::users::encode(&users)).expect("users load");
        assert_eq!(again, users, "users round trip");
    }
    if let Ok(acls) = super::acls::decode(data) {
        let again = super::acls::decode(&super::acls::encode(&acls)).expect("ACLs load");
        assert_eq!(again, acls, "ACL round trip");
    }
    if let Ok(quotas) = super::quotas::decode(data) {
        let again = super::quotas::decode(&super::quotas::encode(&quotas)).expect("quotas load");
        assert_eq!(again, quotas, "quota round trip");
    }
}

/// A partition's producer-state snapshot (`<offset>.producers`) as recovery reads it, as
/// it is and with its trailing CRC-32C made right (so the fuzzer reaches the fields behind
/// the checksum). A snapshot that decodes must encode to bytes that decode to the same
/// table, and encode the same again.
pub fn producer_snapshot(data: &[u8]) {
    snapshot_round_trip(data);
    let mut fixed = data.to_vec();
    fixed.extend_from_slice(&crc32c::crc32c(data).to_be_bytes());
    snapshot_round_trip(&fixed);
}

fn snapshot_round_trip(bytes: &[u8]) {
    let Ok((offset, table)) = ProducerTable::decode_snapshot(bytes) else {
        return;
    };
    let encoded = table.encode_snapshot(offset);
    let (offset_again, again) =
        ProducerTable::decode_snapshot(&encoded).expect("an encoded snapshot decodes");
    assert_eq!(offset_again, offset);
    assert_eq!(again.len(), table.len());
    assert_eq!(
        again.encode_snapshot(offset),
        encoded,
        "snapshot round trip"
    );
}

/// A segment's `.index` and `.timeindex` files as recovery and the read path load them:
/// the first 8 bytes are the log's length, the rest the file. An index that loads must
/// encode to the same bytes, and its lookups must agree with a scan of its entries.
pub fn index_files(data: &[u8]) {
    let Some((head, file)) = data.split_first_chunk::<8>() else {
        return;
    };
    let log_len = u64::from_be_bytes(*head);
    if let Ok(index) = OffsetIndex::decode(file, log_len) {
        assert_eq!(index.encode(), file, "offset index round trip");
        let entries: Vec<(u32, u32)> = file
            .chunks_exact(OFFSET_ENTRY_LEN)
            .map(|c| {
                let [a, b, c, d, e, f, g, h] = c.try_into().expect("whole entries");
                (
                    u32::from_be_bytes([a, b, c, d]),
                    u32::from_be_bytes([e, f, g, h]),
                )
            })
            .collect();
        // Probe each entry's offset, the offsets beside it, and the ends.
        let mut probes = vec![0, u32::MAX];
        for &(offset, _) in &entries {
            probes.extend([offset.wrapping_sub(1), offset, offset.wrapping_add(1)]);
        }
        for probe in probes {
            let expected = entries.iter().rev().find(|(o, _)| *o <= probe);
            let found = index.lookup(probe).map(|e| (e.relative_offset, e.position));
            assert_eq!(found.as_ref(), expected, "offset lookup of {probe}");
        }
    }
    if let Ok(index) = TimeIndex::decode(file) {
        assert_eq!(index.encode(), file, "time index round trip");
        let entries: Vec<(i64, u32)> = file
            .chunks_exact(TIME_ENTRY_LEN)
            .map(|c| {
                let (ts, rel) = c.split_at(8);
                (
                    i64::from_be_bytes(ts.try_into().expect("8 bytes")),
                    u32::from_be_bytes(rel.try_into().expect("4 bytes")),
                )
            })
            .collect();
        let mut probes = vec![i64::MIN, i64::MAX];
        for &(ts, _) in &entries {
            probes.extend([ts.wrapping_sub(1), ts, ts.wrapping_add(1)]);
        }
        for probe in probes {
            let expected = entries.iter().rev().find(|(t, _)| *t < probe);
            let found = index
                .lookup_below(probe)
                .map(|e| (e.timestamp, e.relative_offset));
            assert_eq!(found.as_ref(), expected, "time lookup below {probe}");
        }
    }
}

/// A partition directory after a crash, as recovery finds it: one segment (base offset 0)
/// whose `.log`, `.index` and `.timeindex` come from the input, with or without the clean
/// stop marker. Input: a flags byte (bit 0: clean stop; bit 1: no index files; bit 2: the
/// clean stop marked the way earlier versions did), the offset
/// and time index lengths (u16 each), the two indexes, then the log. The files are written
/// under `dir` (emptied first). After recovery the log holds whole batches with dense
/// offsets from the base, CRC-valid when the stop was unclean; every index entry points at
/// the start of the batch with its offset; and a second recovery changes nothing.
pub fn recovery(data: &[u8], dir: &std::path::Path) {
    use super::recovery::{recover_dir, CLEAN_STOP_MARKER, LEGACY_CLEAN_STOP_MARKER};
    use super::runs::{self, Runs};
    use super::segment::SegmentFiles;

    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Some((lens, rest)) = rest.split_first_chunk::<4>() else {
        return;
    };
    let index_len = usize::from(u16::from_be_bytes([lens[0], lens[1]])).min(rest.len());
    let (index_bytes, rest) = rest.split_at(index_len);
    let time_len = usize::from(u16::from_be_bytes([lens[2], lens[3]])).min(rest.len());
    let (time_bytes, log_bytes) = rest.split_at(time_len);
    let clean_stop = flags & 1 != 0;

    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("the fuzz directory can be made");
    let files = SegmentFiles::new(dir, 0);
    std::fs::write(&files.log, log_bytes).expect("writes the log");
    if flags & 2 == 0 {
        std::fs::write(&files.index, index_bytes).expect("writes the index");
        std::fs::write(&files.time_index, time_bytes).expect("writes the time index");
    }
    // The start after the run that left the marker.
    let runs = Runs {
        previous: Some(7),
        current: Some(8),
    };
    let mark = || {
        let (name, bytes) = if flags & 4 == 0 {
            (CLEAN_STOP_MARKER, runs::encode(7))
        } else {
            (LEGACY_CLEAN_STOP_MARKER, Vec::new())
        };
        std::fs::write(dir.join(name), bytes).expect("writes the marker");
    };
    if clean_stop {
        mark();
    }

    let config = LogConfig::default();
    let Ok(segments) = recover_dir(dir, &config, runs) else {
        return;
    };
    let [segment] = &segments[..] else {
        panic!("one log file, {} segments", segments.len());
    };
    let log = std::fs::read(&files.log).expect("reads the log back");
    assert_eq!(
        log.len() as u64,
        segment.size,
        "the log is cut to its whole batches"
    );
    // After a clean stop recovery trusts the log up to the last index entry (everything was
    // synced; the scrubber checks sealed data), so a forged index can make it keep what the
    // checks below refuse: only the size and idempotence are checked then.
    if !clean_stop {
        check_recovered(&log, segment);
    }

    // A legacy marker went with the first recovery: put it back so the second sees the same
    // stop (a marker naming the previous run stays).
    if clean_stop {
        mark();
    }
    let again = recover_dir(dir, &config, runs).expect("a recovered directory recovers");
    let [second] = &again[..] else {
        panic!("one segment recovered, then {}", again.len());
    };
    assert_eq!(
        (second.size, second.next_offset),
        (segment.size, segment.next_offset),
        "recovery is idempotent"
    );
    assert_eq!(std::fs::read(&files.log).expect("reads the log"), log);
}

/// After an unclean stop: the log holds whole, CRC-valid batches with dense offsets from
/// the segment's base to its next offset, and every index entry points at the start of the
/// batch with its offset.
fn check_recovered(log: &[u8], segment: &super::segment::RecoveredSegment) {
    use crate::protocol::batch;

    let mut next = segment.base_offset;
    let mut starts = std::collections::HashMap::new();
    for b in batch::batches(log) {
        let (start, header) = b.expect("recovery leaves only whole batches");
        assert_eq!(header.base_offset, next, "offsets are dense");
        batch::validate(&log[start..start + header.total_len()], usize::MAX)
            .expect("after an unclean stop every batch kept is CRC-valid");
        starts.insert(start as u64, header.base_offset);
        next = header.last_offset() + 1;
    }
    assert_eq!(
        next, segment.next_offset,
        "the next offset follows the batches"
    );
    for entry in segment.index.encode().chunks_exact(OFFSET_ENTRY_LEN) {
        let relative = u32::from_be_bytes(entry[..4].try_into().expect("4 bytes"));
        let position = u32::from_be_bytes(entry[4..].try_into().expect("4 bytes"));
        assert_eq!(
            starts.get(&u64::from(position)),
            Some(&(segment.base_offset + i64::from(relative))),
            "index entry ({relative}, {position}) points at its batch"
        );
    }
}
