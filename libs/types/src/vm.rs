use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Lifecycle of a sandbox. Names and spelling follow the Go original.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "UPPERCASE")]
pub enum VmStatus {
    Created,
    Starting,
    Running,
    /// vCPUs frozen (microVMs, containers); memory kept. Resume makes it RUNNING.
    Paused,
    Stopping,
    Stopped,
    Failed,
}

impl VmStatus {
    pub const ALL: [VmStatus; 7] = [
        VmStatus::Created,
        VmStatus::Starting,
        VmStatus::Running,
        VmStatus::Paused,
        VmStatus::Stopping,
        VmStatus::Stopped,
        VmStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            VmStatus::Created => "CREATED",
            VmStatus::Starting => "STARTING",
            VmStatus::Running => "RUNNING",
            VmStatus::Paused => "PAUSED",
            VmStatus::Stopping => "STOPPING",
            VmStatus::Stopped => "STOPPED",
            VmStatus::Failed => "FAILED",
        }
    }

    /// A VM in one of these states will not change again without a new request.
    pub fn is_settled(self) -> bool {
        matches!(
            self,
            VmStatus::Running | VmStatus::Paused | VmStatus::Stopped | VmStatus::Failed
        )
    }
}

wire_names!(VmStatus, "VM status");

/// Which backend runs a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Orchestrator {
    Docker,
    Firecracker,
    Qemu,
}

impl Orchestrator {
    pub const ALL: [Orchestrator; 3] = [
        Orchestrator::Docker,
        Orchestrator::Firecracker,
        Orchestrator::Qemu,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Orchestrator::Docker => "docker",
            Orchestrator::Firecracker => "firecracker",
            Orchestrator::Qemu => "qemu",
        }
    }
}

wire_names!(Orchestrator, "orchestrator");

/// A microVM's network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum VmNetwork {
    /// A TAP device on the host bridge; egress through NAT.
    Nat,
    /// No network device.
    None,
}

/// A sandbox, as stored and as returned by the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Vm {
    pub id: String,
    pub name: String,
    pub status: VmStatus,
    pub orchestrator: Orchestrator,
    pub image: String,
    pub vcpu_count: u32,
    pub memory_mb: u64,
    /// The container's disk quota in MiB (`None`: not limited, as for microVMs,
    /// whose disk is their image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mb: Option<u64>,
    /// The id of the API key or user that created it (counts against a key's quota).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rootfs_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_path: Option<String>,
    /// The worker that owns this VM; VM-bound work is routed to it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
    /// Why the VM is FAILED (or how it stopped), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<DateTime<Utc>>,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub metadata: serde_json::Map<String, serde_json::Value>,
}
