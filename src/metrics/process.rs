//! The process's own figures, read from `/proc/self` when scraped.

use std::time::{SystemTime, UNIX_EPOCH};

/// The process as the kernel accounts it.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessInfo {
    /// Resident set size, in bytes.
    pub resident_bytes: u64,
    /// User and system CPU time, in seconds.
    pub cpu_seconds: f64,
    /// Open file descriptors.
    pub open_fds: u64,
    /// Threads.
    pub threads: u64,
}

/// Reads `/proc/self/stat` and `/proc/self/fd`; a figure that cannot be read is 0.
pub fn read() -> ProcessInfo {
    let mut info = ProcessInfo::default();
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        if let Some(parsed) = parse_stat(&stat, page_size(), clock_ticks()) {
            info = parsed;
        }
    }
    info.open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    info
}

fn page_size() -> u64 {
    // SAFETY: sysconf reads a system constant; no memory is touched.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).unwrap_or(4096)
}

fn clock_ticks() -> u64 {
    // SAFETY: as above.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|&t| t > 0).unwrap_or(100)
}

/// Parses `/proc/self/stat`: the fields after the command name (which is in parentheses and
/// may hold spaces) — utime (14), stime (15), num_threads (20), rss in pages (24).
fn parse_stat(stat: &str, page_size: u64, ticks: u64) -> Option<ProcessInfo> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // Fields from 3 (state) on.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
    let cpu_ticks = field(14)? + field(15)?;
    Some(ProcessInfo {
        resident_bytes: field(24)? * page_size,
        cpu_seconds: cpu_ticks as f64 / ticks as f64,
        open_fds: 0,
        threads: field(20)?,
    })
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_found_after_a_command_name_with_spaces() {
        let stat = "4242 (event flow) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 \
                    7 0 12345 1000000 300 18446744073709551615";
        let info = parse_stat(stat, 4096, 100).unwrap();
        assert_eq!(info.cpu_seconds, 3.0);
        assert_eq!(info.threads, 7);
        assert_eq!(info.resident_bytes, 300 * 4096);
    }

    #[test]
    fn this_process_is_read() {
        let info = read();
        assert!(info.resident_bytes > 0 && info.threads >= 1 && info.open_fds > 0);
    }
}
