use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerStatus {
    /// Heartbeating, backend healthy, taking new work.
    Active,
    /// Heartbeating, but takes no new sandboxes.
    Draining,
    /// Heartbeating, but its backend does not answer.
    Unhealthy,
    /// No heartbeat for too long.
    Offline,
}

impl WorkerStatus {
    pub const ALL: [WorkerStatus; 4] = [
        WorkerStatus::Active,
        WorkerStatus::Draining,
        WorkerStatus::Unhealthy,
        WorkerStatus::Offline,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WorkerStatus::Active => "active",
            WorkerStatus::Draining => "draining",
            WorkerStatus::Unhealthy => "unhealthy",
            WorkerStatus::Offline => "offline",
        }
    }
}

wire_names!(WorkerStatus, "worker status");

/// A host that runs sandboxes, as it reports itself in its heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Worker {
    pub id: String,
    pub hostname: String,
    pub address: String,
    pub zone: String,
    pub status: WorkerStatus,
    /// Backends this worker can run (`docker`, `firecracker`, `qemu`).
    pub capabilities: Vec<String>,
    pub labels: serde_json::Map<String, serde_json::Value>,
    pub cpu_cores: u32,
    pub memory_mb: u64,
    pub max_vms: u32,
    pub vm_count: u32,
    /// Why the worker is unhealthy, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_message: Option<String>,
    pub started_at: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
}
