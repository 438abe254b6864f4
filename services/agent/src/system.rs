//! What the agent reports about the sandbox: envd's `/metrics` and the load and
//! memory figures of our `/info`. Read from `/proc` and `statvfs`.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// envd's `/metrics` (`Metrics` in `envd.yaml`).
#[derive(Debug, Serialize)]
pub struct Metrics {
    pub ts: i64,
    pub cpu_count: usize,
    pub cpu_used_pct: f64,
    pub mem_total: u64,
    pub mem_used: u64,
    pub disk_used: u64,
    pub disk_total: u64,
}

#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Memory {
    pub total_bytes: u64,
    pub available_bytes: u64,
}

/// Busy and total jiffies of all CPUs, from `/proc/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    busy: u64,
    total: u64,
}

fn cpu_times() -> Option<CpuTimes> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = fields.iter().take(8).sum();
    // idle + iowait
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    Some(CpuTimes {
        busy: total.saturating_sub(idle),
        total,
    })
}

pub fn memory() -> Option<Memory> {
    let host = meminfo()?;
    match cgroup_memory(Path::new("/sys/fs/cgroup")) {
        // A container sees the host's /proc/meminfo: its own limit is what it has.
        Some((limit, used)) if limit < host.total_bytes => Some(Memory {
            total_bytes: limit,
            available_bytes: limit.saturating_sub(used),
        }),
        _ => Some(host),
    }
}

/// The kernel's view: a microVM's own memory, or the host's inside a container.
fn meminfo() -> Option<Memory> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| {
        meminfo
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    Some(Memory {
        total_bytes: field("MemTotal:")?,
        available_bytes: field("MemAvailable:").or_else(|| field("MemFree:"))?,
    })
}

/// The memory cgroup this process is in, as mounted under `root` (cgroup v2 at the
/// root, v1 under `memory/`): its limit and what it uses, less the page cache the
/// kernel can drop (`inactive_file`, as `docker stats` counts). `None` without one.
fn cgroup_memory(root: &Path) -> Option<(u64, u64)> {
    let number = |path: PathBuf| {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
    };
    let stat = |path: PathBuf, key: &str| {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|text| {
                text.lines().find_map(|line| {
                    let (name, value) = line.split_once(' ')?;
                    (name == key).then(|| value.trim().parse::<u64>().ok())?
                })
            })
            .unwrap_or(0)
    };
    // v2: `memory.max` is `max` when unlimited (no number: not a limit).
    if root.join("memory.max").exists() {
        let limit = number(root.join("memory.max"))?;
        let used = number(root.join("memory.current"))?;
        let cache = stat(root.join("memory.stat"), "inactive_file");
        return Some((limit, used.saturating_sub(cache)));
    }
    let v1 = root.join("memory");
    let limit = number(v1.join("memory.limit_in_bytes"))?;
    let used = number(v1.join("memory.usage_in_bytes"))?;
    let cache = stat(v1.join("memory.stat"), "total_inactive_file");
    Some((limit, used.saturating_sub(cache)))
}

/// The 1, 5 and 15 minute load averages.
pub fn load() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut fields = text.split_whitespace().map(|f| f.parse::<f64>().ok());
    Some([fields.next()??, fields.next()??, fields.next()??])
}

/// CPU use since the previous call (`previous`), or since boot on the first.
pub fn metrics(previous: &mut Option<CpuTimes>) -> Metrics {
    let now = cpu_times();
    let cpu_used_pct = match (now, *previous) {
        (Some(now), Some(before)) if now.total > before.total => {
            (now.busy - before.busy.min(now.busy)) as f64 / (now.total - before.total) as f64
        }
        (Some(now), _) if now.total > 0 => now.busy as f64 / now.total as f64,
        _ => 0.0,
    };
    if now.is_some() {
        *previous = now;
    }
    let memory = memory();
    let (disk_total, disk_used) = rustix::fs::statvfs("/")
        .map(|fs| {
            let total = fs.f_blocks * fs.f_frsize;
            (total, total.saturating_sub(fs.f_bfree * fs.f_frsize))
        })
        .unwrap_or((0, 0));
    Metrics {
        ts: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64),
        cpu_count: std::thread::available_parallelism().map_or(1, usize::from),
        cpu_used_pct: (cpu_used_pct * 10_000.0).round() / 100.0,
        mem_total: memory.map_or(0, |m| m.total_bytes),
        mem_used: memory.map_or(0, |m| m.total_bytes.saturating_sub(m.available_bytes)),
        disk_used,
        disk_total,
    }
}

/// `/init`'s `timestamp`: sets the clock when it is behind, as envd does after a
/// snapshot restore. Needs CAP_SYS_TIME; without it (containers) nothing changes.
pub fn sync_clock(timestamp: &str) {
    let parsed = serde_json::from_value::<aetherium_types::agent::Timestamp>(
        serde_json::Value::String(timestamp.to_string()),
    );
    let Ok(time) = parsed else {
        crate::log!("init: ignoring malformed timestamp");
        return;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if time.seconds <= now {
        return;
    }
    let spec = rustix::time::Timespec {
        tv_sec: time.seconds,
        tv_nsec: i64::from(time.nanos),
    };
    if let Err(e) = rustix::time::clock_settime(rustix::time::ClockId::Realtime, spec) {
        crate::log!("init: cannot set the clock: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc() {
        let mut previous = None;
        let first = metrics(&mut previous);
        assert!(previous.is_some());
        assert!(first.cpu_count >= 1);
        assert!(first.mem_total > 0 && first.mem_used <= first.mem_total);
        assert!(first.disk_total >= first.disk_used);
        assert!((0.0..=100.0).contains(&first.cpu_used_pct));
        let second = metrics(&mut previous);
        assert!((0.0..=100.0).contains(&second.cpu_used_pct));
        assert!(load().is_some());
        assert!(memory().is_some_and(|m| m.available_bytes <= m.total_bytes));
    }

    #[test]
    fn a_memory_cgroup_gives_the_limit_and_the_use_without_dropped_cache() {
        let dir = tempfile::tempdir().unwrap();
        let write = |path: &str, text: &str| {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        };
        assert_eq!(cgroup_memory(dir.path()), None);
        // v1, as Docker mounts it into a container.
        write("memory/memory.limit_in_bytes", "268435456\n");
        write("memory/memory.usage_in_bytes", "50000000\n");
        write(
            "memory/memory.stat",
            "cache 1\ninactive_file 7\ntotal_inactive_file 10000000\n",
        );
        assert_eq!(cgroup_memory(dir.path()), Some((268_435_456, 40_000_000)));
        // v2 wins where it is mounted; `max` is no limit.
        write("memory.max", "max\n");
        write("memory.current", "123\n");
        assert_eq!(cgroup_memory(dir.path()), None);
        write("memory.max", "1073741824\n");
        write("memory.stat", "anon 5\ninactive_file 23\n");
        assert_eq!(cgroup_memory(dir.path()), Some((1_073_741_824, 100)));
    }
}
