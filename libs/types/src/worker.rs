use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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

/// Where a new VM may be placed (`CreateVmRequest.placement`): only on workers in
/// `zone` (when given) whose labels include every `labels` pair.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Placement {
    /// Only workers in this zone.
    #[cfg_attr(
        feature = "openapi",
        schema(max_length = 128, pattern = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
    )]
    #[serde(default)]
    pub zone: Option<String>,
    /// Only workers carrying every one of these labels with these values (at most
    /// 32; keys like `gpu` or `example.com/tier`, values at most 256 characters).
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// Most labels a placement may ask for.
pub const MAX_PLACEMENT_LABELS: usize = 32;

/// A zone: 1 to 128 of `A-Z a-z 0-9 _ . -`, starting with a letter or digit.
pub const ZONE_PATTERN: &str = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$";
/// A placement label key: like a zone, `/` allowed too.
pub const LABEL_KEY_PATTERN: &str = r"^[A-Za-z0-9][A-Za-z0-9_./-]{0,127}$";

fn plain_token(text: &str, extra: &[char]) -> bool {
    let mut chars = text.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && text.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c) || extra.contains(&c))
}

impl Placement {
    pub fn validate(&self) -> Result<(), String> {
        if let Some(zone) = &self.zone
            && !plain_token(zone, &[])
        {
            return Err(format!(
                "placement.zone {zone:?} must be 1 to 128 of A-Z a-z 0-9 _ . -, starting with a letter or digit"
            ));
        }
        if self.labels.len() > MAX_PLACEMENT_LABELS {
            return Err(format!(
                "placement.labels may hold at most {MAX_PLACEMENT_LABELS} labels"
            ));
        }
        for (k, v) in &self.labels {
            if !plain_token(k, &['/']) {
                return Err(format!(
                    "placement label key {k:?} must be 1 to 128 of A-Z a-z 0-9 _ . / -, starting with a letter or digit"
                ));
            }
            if v.chars().count() > 256 {
                return Err(format!(
                    "placement label {k:?} has a value over 256 characters"
                ));
            }
        }
        Ok(())
    }

    /// Whether `worker` satisfies this placement. A label value matches a worker's
    /// label that is the same string (or, for a number or boolean label, its JSON text).
    pub fn matches(&self, worker: &Worker) -> bool {
        if let Some(zone) = &self.zone
            && *zone != worker.zone
        {
            return false;
        }
        self.labels.iter().all(|(k, v)| match worker.labels.get(k) {
            Some(serde_json::Value::String(s)) => s == v,
            Some(other) => serde_json::from_str::<serde_json::Value>(v).is_ok_and(|v| v == *other),
            None => false,
        })
    }
}

/// What a worker's VMs take of it: VMs that hold resources (CREATED, STARTING,
/// RUNNING, STOPPING) and their sizes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkerUsage {
    /// VMs placed on the worker that hold resources.
    pub vms: u32,
    /// vCPUs of those VMs.
    pub vcpus: u64,
    /// Memory of those VMs, in MiB.
    pub memory_mb: u64,
}

/// A worker as the API shows it: what it reported in its last heartbeat, and what
/// the platform computes from it (liveness, what its VMs use, free slots).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkerView {
    pub id: String,
    pub hostname: String,
    pub address: String,
    pub zone: String,
    /// `active` (takes new VMs), `draining` (keeps serving its VMs, gets no new
    /// ones), `unhealthy` (its backend does not answer), `offline` (no heartbeat for
    /// too long: its VMs were marked FAILED).
    pub status: WorkerStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_message: Option<String>,
    /// Backends this worker can run (`docker`, `firecracker`, `qemu`).
    pub capabilities: Vec<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub labels: serde_json::Map<String, serde_json::Value>,
    pub cpu_cores: u32,
    /// Memory for sandboxes, in MiB; 0 when not limited.
    pub memory_mb: u64,
    /// Most VMs the worker takes.
    pub max_vms: u32,
    /// VMs the worker owned at its last heartbeat (any status).
    pub vm_count: u32,
    /// What the worker's VMs take now.
    pub used: WorkerUsage,
    /// `max_vms` minus the VMs that hold resources (never below 0).
    pub free_slots: u32,
    /// Heartbeating within the stale threshold.
    pub live: bool,
    pub started_at: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
}

impl WorkerView {
    pub fn new(worker: Worker, used: WorkerUsage, live: bool) -> WorkerView {
        WorkerView {
            free_slots: worker.max_vms.saturating_sub(used.vms),
            id: worker.id,
            hostname: worker.hostname,
            address: worker.address,
            zone: worker.zone,
            status: worker.status,
            status_message: worker.status_message,
            capabilities: worker.capabilities,
            labels: worker.labels,
            cpu_cores: worker.cpu_cores,
            memory_mb: worker.memory_mb,
            max_vms: worker.max_vms,
            vm_count: worker.vm_count,
            used,
            live,
            started_at: worker.started_at,
            last_seen: worker.last_seen,
        }
    }
}

/// `GET /workers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkerList {
    pub workers: Vec<WorkerView>,
    pub total: u64,
}

/// Workers by status (`GET /cluster/stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkerCounts {
    pub total: u64,
    pub active: u64,
    pub draining: u64,
    pub unhealthy: u64,
    pub offline: u64,
}

/// `GET /cluster/stats`: the cluster's capacity and what is used of it. Totals count
/// live workers that are not offline; `used` counts VMs that hold resources.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClusterStats {
    pub workers: WorkerCounts,
    pub cpu_cores_total: u64,
    /// vCPUs of the VMs that hold resources.
    pub cpu_cores_used: u64,
    pub memory_mb_total: u64,
    pub memory_mb_used: u64,
    /// Every VM, by status (`RUNNING`: 3, …).
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub vms: std::collections::BTreeMap<String, u64>,
    pub vms_total: u64,
    /// Sum of `max_vms` of live workers that are not offline.
    pub slots_total: u64,
    pub slots_used: u64,
    pub slots_free: u64,
    /// Zones of the workers, sorted.
    pub zones: Vec<String>,
    pub timestamp: DateTime<Utc>,
}

/// One zone in `GET /cluster/distribution`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ZoneDistribution {
    pub zone: String,
    pub workers: u64,
    pub active_workers: u64,
    /// VMs that hold resources on the zone's workers.
    pub vms: u64,
    pub slots_total: u64,
    pub slots_free: u64,
}

/// One worker in `GET /cluster/distribution`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkerDistribution {
    pub worker_id: String,
    pub zone: String,
    pub status: WorkerStatus,
    /// VMs that hold resources on it.
    pub vms: u64,
    pub max_vms: u32,
    /// Its share of all such VMs (0 to 1; 0 when there are none).
    pub share: f64,
}

/// `GET /cluster/distribution`: how VMs spread over zones and workers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClusterDistribution {
    /// VMs that hold resources, on any worker.
    pub total_vms: u64,
    pub zones: Vec<ZoneDistribution>,
    pub workers: Vec<WorkerDistribution>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(zone: &str, labels: serde_json::Value) -> Worker {
        Worker {
            id: "w".into(),
            hostname: "h".into(),
            address: String::new(),
            zone: zone.into(),
            status: WorkerStatus::Active,
            capabilities: vec!["docker".into()],
            labels: labels.as_object().cloned().unwrap_or_default(),
            cpu_cores: 2,
            memory_mb: 0,
            max_vms: 10,
            vm_count: 0,
            status_message: None,
            started_at: Utc::now(),
            last_seen: Utc::now(),
        }
    }

    #[test]
    fn placement_matches_zone_and_every_label() {
        let w = worker(
            "eu-1",
            serde_json::json!({"gpu": "true", "tier": "fast", "n": 3}),
        );
        let p = |zone: Option<&str>, labels: &[(&str, &str)]| Placement {
            zone: zone.map(str::to_string),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        assert!(p(None, &[]).matches(&w));
        assert!(p(Some("eu-1"), &[("gpu", "true")]).matches(&w));
        assert!(p(None, &[("gpu", "true"), ("tier", "fast"), ("n", "3")]).matches(&w));
        assert!(!p(Some("us-1"), &[]).matches(&w));
        assert!(!p(None, &[("gpu", "false")]).matches(&w));
        assert!(!p(None, &[("ssd", "true")]).matches(&w));
        assert!(p(Some("a b"), &[]).validate().is_err());
        assert!(p(None, &[("", "x")]).validate().is_err());
        assert!(p(None, &[("a b", "x")]).validate().is_err());
        assert!(p(None, &[("example.com/tier", "fast")]).validate().is_ok());
        assert!(
            p(None, &[("k", "é".repeat(256).as_str())])
                .validate()
                .is_ok()
        );
        assert!(
            p(None, &[("k", "é".repeat(257).as_str())])
                .validate()
                .is_err()
        );
        assert!(p(Some("eu-1"), &[("k", "v")]).validate().is_ok());
    }
}
