//! What the agent reports about the sandbox: envd's `/metrics` and the load and
//! memory figures of our `/info`. Read from `/proc` and `statvfs`.

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
}
