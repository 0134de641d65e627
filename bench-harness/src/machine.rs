//! Facts about where a run happened, and CPU and memory readings from /proc.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// The machine a result came from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub cpu_model: String,
    /// CPUs this process may run on.
    pub cpus: usize,
    pub memory_gib: f64,
    pub kernel: String,
    /// Filesystem type under the broker's data directory (or the working directory).
    pub filesystem: String,
    /// The commit the harness was built from (`-dirty` when the checkout had changes).
    pub git_commit: String,
    /// The harness's clock: `tsc` (read directly) or `instant` (clock_gettime).
    #[serde(default)]
    pub clock: String,
}

impl Machine {
    /// Reads the facts; `data_dir` picks the filesystem to report.
    pub fn read(data_dir: Option<&Path>) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0);
        let here = std::env::current_dir().unwrap_or_else(|_| "/".into());
        Machine {
            cpu_model,
            cpus: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            memory_gib: (memory_kib / (1024.0 * 1024.0) * 10.0).round() / 10.0,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "unknown".into()),
            filesystem: filesystem_of(data_dir.unwrap_or(&here)),
            git_commit: env!("EVENTFLOW_BENCH_COMMIT").to_string(),
            clock: if crate::clock::uses_tsc() {
                "tsc"
            } else {
                "instant"
            }
            .to_string(),
        }
    }
}

/// The type of the mount holding `path` (longest mount point that prefixes it).
pub(crate) fn filesystem_of(path: &Path) -> String {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let mut fields = l.split_whitespace();
            let (_dev, point, fstype) = (fields.next()?, fields.next()?, fields.next()?);
            path.starts_with(point)
                .then(|| (point.len(), fstype.to_string()))
        })
        .max_by_key(|(len, _)| *len)
        .map_or_else(|| "unknown".into(), |(_, fstype)| fstype)
}

/// Clock ticks per second for /proc CPU times.
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf reads a constant of the running system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// User + system CPU seconds of a process (`self` or a PID), from /proc/PID/stat.
pub fn process_cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3 of the full line; utime and stime are 14 and 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks_per_second())
}

/// The machine's CPU time so far, all CPUs together, from the first line of /proc/stat:
/// (stolen, total) in seconds. "Stolen" is time a virtual CPU had work but the hypervisor
/// ran something else (another guest, or nothing, when the host caps the VM's share).
pub fn cpu_steal_seconds() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    steal_of(stat.lines().next()?)
}

/// (steal, total) of a `cpu  user nice system idle iowait irq softirq steal ...` line.
fn steal_of(line: &str) -> Option<(f64, f64)> {
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    // user nice system idle iowait irq softirq steal; guest time is already in user.
    let ticks: Vec<f64> = fields.take(8).map_while(|f| f.parse().ok()).collect();
    if ticks.len() < 8 {
        return None;
    }
    let hz = ticks_per_second();
    Some((ticks[7] / hz, ticks.iter().sum::<f64>() / hz))
}

/// The share of the machine's CPU time stolen between two [`cpu_steal_seconds`] readings,
/// in percent.
pub fn steal_percent(start: (f64, f64), end: (f64, f64)) -> f64 {
    let total = end.1 - start.1;
    if total <= 0.0 {
        return 0.0;
    }
    ((end.0 - start.0) / total * 100.0).max(0.0)
}

/// Requests the machine's disks have completed so far, from /proc/diskstats: every whole
/// device (those in /sys/block) but loop, RAM and zram devices, summed.
pub fn disk_requests() -> Option<DiskRequests> {
    let stats = std::fs::read_to_string("/proc/diskstats").ok()?;
    let mut total = DiskRequests::default();
    for (name, requests) in stats.lines().filter_map(disk_requests_of) {
        let virtual_device = ["loop", "ram", "zram"].iter().any(|p| name.starts_with(p));
        if !virtual_device && Path::new("/sys/block").join(name).exists() {
            total = total + requests;
        }
    }
    Some(total)
}

/// Completed requests of one device, as /proc/diskstats counts them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct DiskRequests {
    pub reads: f64,
    pub writes: f64,
    /// Cache flushes (what an fdatasync asks of a device with a volatile write cache);
    /// 0 on kernels before 5.5, which do not count them. The kernel counts an fdatasync's
    /// flush among the writes as well (as the empty write that asks for it).
    pub flushes: f64,
    /// Bytes read (sectors read × 512): whether a consume run read its backlog from the
    /// device or from memory. 0 in results saved before it was measured.
    #[serde(default)]
    pub read_bytes: f64,
}

impl std::ops::Add for DiskRequests {
    type Output = DiskRequests;
    fn add(self, o: DiskRequests) -> DiskRequests {
        DiskRequests {
            reads: self.reads + o.reads,
            writes: self.writes + o.writes,
            flushes: self.flushes + o.flushes,
            read_bytes: self.read_bytes + o.read_bytes,
        }
    }
}

impl DiskRequests {
    /// Requests (and bytes read) per second between two readings `seconds` apart.
    pub fn rate(start: DiskRequests, end: DiskRequests, seconds: f64) -> DiskRequests {
        let per_s = |a: f64, b: f64| ((b - a) / seconds.max(1e-9)).max(0.0);
        DiskRequests {
            reads: per_s(start.reads, end.reads),
            writes: per_s(start.writes, end.writes),
            flushes: per_s(start.flushes, end.flushes),
            read_bytes: per_s(start.read_bytes, end.read_bytes),
        }
    }
}

/// (device name, requests) of a /proc/diskstats line: `major minor name` and then reads
/// completed (1st), sectors read (3rd, always 512 bytes), writes completed (5th) and, since
/// Linux 5.5, flushes completed (16th).
fn disk_requests_of(line: &str) -> Option<(&str, DiskRequests)> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let count = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    Some((
        fields.get(2)?,
        DiskRequests {
            reads: count(3)?,
            writes: count(7)?,
            flushes: count(18).unwrap_or(0.0),
            read_bytes: count(5)? * 512.0,
        },
    ))
}

/// Resident set size of a process in KiB, from /proc/PID/status.
pub fn process_rss_kib(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stolen_time_is_read_from_the_cpu_line() {
        let hz = ticks_per_second();
        let (steal, total) = steal_of("cpu  100 0 50 800 10 0 20 20 0 0").unwrap();
        assert_eq!((steal * hz, total * hz), (20.0, 1000.0));
        assert_eq!(
            steal_of("cpu0 1 2 3 4 5 6 7 8"),
            None,
            "a single CPU's line"
        );
        assert_eq!(steal_of("cpu  1 2 3"), None, "an old kernel without steal");
        // 10 of 200 ticks stolen between the readings.
        let pct = steal_percent((20.0 / hz, 1000.0 / hz), (30.0 / hz, 1200.0 / hz));
        assert!((pct - 5.0).abs() < 1e-9, "{pct}");
        assert_eq!(steal_percent((1.0, 2.0), (1.0, 2.0)), 0.0);
        assert!(cpu_steal_seconds().is_some(), "this machine's /proc/stat");
    }

    #[test]
    fn disk_requests_are_read_from_diskstats() {
        let line = " 254       0 vda 3867642 122271 448712162 6794731 8518012 1046212 1268564952 \
                    16199671 0 2601804 24275541 1356447 101 1145409328 638848 2845755 642289";
        let (name, r) = disk_requests_of(line).unwrap();
        assert_eq!(name, "vda");
        assert_eq!(
            (r.reads, r.writes, r.flushes, r.read_bytes),
            (3867642.0, 8518012.0, 2845755.0, 448712162.0 * 512.0)
        );
        // A kernel before 5.5: no discard or flush fields.
        let old = "   8       0 sda 100 0 800 10 50 0 400 5 0 15 15";
        let (_, r) = disk_requests_of(old).unwrap();
        assert_eq!((r.reads, r.writes, r.flushes), (100.0, 50.0, 0.0));
        assert_eq!(disk_requests_of("   8 0 sda"), None);
        let rate = DiskRequests::rate(
            DiskRequests {
                reads: 10.0,
                writes: 100.0,
                flushes: 40.0,
                read_bytes: 4096.0,
            },
            DiskRequests {
                reads: 10.0,
                writes: 300.0,
                flushes: 140.0,
                read_bytes: 4096.0,
            },
            2.0,
        );
        assert_eq!(
            (rate.reads, rate.writes, rate.flushes, rate.read_bytes),
            (0.0, 100.0, 50.0, 0.0)
        );
        assert!(disk_requests().is_some(), "this machine's /proc/diskstats");
    }

    #[test]
    fn reads_this_machine_and_process() {
        let m = Machine::read(None);
        assert!(m.cpus >= 1);
        assert_ne!(m.kernel, "unknown");
        assert_ne!(m.filesystem, "unknown");
        // The kernel's own count, read around /proc's: a wrong field or scale falls outside.
        // /proc truncates user and system time to clock ticks each (two ticks of slack
        // below); the µs of slack above absorb float rounding.
        let before = rusage_cpu_seconds();
        let cpu = process_cpu_seconds("self").unwrap();
        let after = rusage_cpu_seconds();
        let tick = 1.0 / ticks_per_second();
        assert!(
            before - 2.0 * tick <= cpu && cpu <= after + 1e-6,
            "/proc says {cpu} s, getrusage {before}..{after} s"
        );
        assert!(process_rss_kib("self").unwrap() > 0);
        assert!(process_rss_kib("999999999").is_none());
    }

    fn rusage_cpu_seconds() -> f64 {
        // SAFETY: getrusage only writes the struct it is given.
        let usage = unsafe {
            let mut usage = std::mem::zeroed::<libc::rusage>();
            assert_eq!(libc::getrusage(libc::RUSAGE_SELF, &mut usage), 0);
            usage
        };
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        secs(usage.ru_utime) + secs(usage.ru_stime)
    }
}
