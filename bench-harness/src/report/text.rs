//! Numbers as people read them, and plain-text tables with aligned columns for the terminal.

use std::time::{Duration, UNIX_EPOCH};

/// `850 µs`, `1.25 ms`, `42.0 ms`, `3.20 s`: three significant digits, the unit always shown.
pub(super) fn latency(us: u64) -> String {
    let us = us as f64;
    if us < 1e3 {
        format!("{us:.0} µs")
    } else if us < 1e6 {
        format!("{} ms", three_digits(us / 1e3))
    } else {
        format!("{} s", three_digits(us / 1e6))
    }
}

fn three_digits(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2}")
    } else if v < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// A resident set in KiB as MiB or GiB.
pub(super) fn memory(kib: f64) -> String {
    let mib = kib / 1024.0;
    if mib < 1024.0 {
        format!("{mib:.0} MiB")
    } else {
        format!("{:.2} GiB", mib / 1024.0)
    }
}

/// `2024-11-22 13:29:00 UTC`; the raw number for a time humantime cannot format.
pub(super) fn date(unix_s: u64) -> String {
    // humantime's formatter fails (and `to_string` would panic) from year 10000 on.
    if unix_s >= 253_402_300_800 {
        return format!("{unix_s} s after the Unix epoch");
    }
    let stamp = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix_s));
    stamp.to_string().replace('T', " ").replace('Z', " UTC")
}

/// `3 errors, 1 missing`; `None` when all are zero.
pub(super) fn faults((errors, missing, duplicates): (u64, u64, u64)) -> Option<String> {
    let parts: Vec<String> = [
        (errors, "errors"),
        (missing, "missing"),
        (duplicates, "duplicates"),
    ]
    .iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{n} {what}"))
    .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// Rows of cells printed with every column padded to its widest cell: the first column
/// left-aligned (names), the others right-aligned (numbers).
pub(super) fn aligned(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|row| row.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (cell, &w))| match c {
                0 => format!("{cell:<w$}"),
                _ => format!("{cell:>w$}"),
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `name  value` lines with the values lined up, left-aligned (they are phrases).
pub(super) fn facts(facts: &[(&str, String)]) -> String {
    let width = facts
        .iter()
        .map(|(name, _)| name.chars().count())
        .max()
        .unwrap_or(0);
    facts
        .iter()
        .map(|(name, value)| format!("{name:<width$}  {value}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_keep_their_unit() {
        assert_eq!(latency(850), "850 µs");
        assert_eq!(latency(1_250), "1.25 ms");
        assert_eq!(latency(42_000), "42.0 ms");
        assert_eq!(latency(3_200_000), "3.20 s");
    }

    #[test]
    fn dates_are_utc() {
        assert_eq!(date(0), "1970-01-01 00:00:00 UTC");
        assert!(date(u64::MAX).contains("after the Unix epoch"));
    }

    #[test]
    fn columns_line_up() {
        let rows = vec![
            vec!["p50".to_string(), "850 µs".to_string()],
            vec!["latency".to_string(), "1.25 ms".to_string()],
        ];
        assert_eq!(aligned(&rows), "p50       850 µs\nlatency  1.25 ms\n");
    }
}
