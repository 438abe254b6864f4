//! Request and response bodies of the REST API (`/api/v1`), with the Go original's
//! snake_case names. Requests reject unknown fields so that typos fail loudly.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use crate::validate::{
    MAX_NAME_LEN, MIN_MEMORY_MB, object_only, validate_image_reference, validate_name,
};
use crate::{Execution, Task, Vm};

/// The error body of every failed request: `{error, message, code}`, where `error`
/// is the HTTP status text and `code` the HTTP status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorResponse {
    pub error: String,
    pub message: String,
    pub code: u16,
}

pub const MIN_DISK_MB: u64 = 64;
pub const MAX_DISK_MB: u64 = 16 * 1024 * 1024;

/// A sandbox's disk quota: from 64 MiB (room for a shell's temporary files) to 16 TiB.
pub fn validate_disk_mb(disk_mb: u64) -> Result<(), String> {
    if !(MIN_DISK_MB..=MAX_DISK_MB).contains(&disk_mb) {
        return Err(format!(
            "disk_mb must be between {MIN_DISK_MB} and {MAX_DISK_MB}, not {disk_mb}"
        ));
    }
    Ok(())
}

fn validate_size(vcpus: u32, memory_mb: u64) -> Result<(), String> {
    if vcpus < 1 {
        return Err("vcpus must be at least 1".into());
    }
    if vcpus > 64 {
        return Err("vcpus must be at most 64".into());
    }
    if memory_mb < MIN_MEMORY_MB {
        return Err(format!("memory_mb must be at least {MIN_MEMORY_MB}"));
    }
    if memory_mb > 1024 * 1024 {
        return Err("memory_mb must be at most 1048576".into());
    }
    Ok(())
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateVmRequest {
    /// Unique among live VMs. Generated when omitted.
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$", max_length = 63)
    )]
    #[serde(default)]
    pub name: Option<String>,
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 64))]
    #[serde(default)]
    pub vcpus: Option<u32>,
    #[cfg_attr(feature = "openapi", schema(minimum = 128, maximum = 1048576))]
    #[serde(default)]
    pub memory_mb: Option<u64>,
    /// Containers: how much the sandbox may write to its filesystem, in MiB (the
    /// worker's `vmm.docker.disk_mb` when omitted). A sandbox that writes more is
    /// stopped and FAILED saying so. MicroVM disks are sized by their image.
    #[cfg_attr(feature = "openapi", schema(minimum = 64, maximum = 16777216))]
    #[serde(default)]
    pub disk_mb: Option<u64>,
    /// Image to run (Docker backend). The configured default when omitted.
    #[cfg_attr(feature = "openapi", schema(pattern = r"^[!-~]{1,255}$"))]
    #[serde(default)]
    pub image: Option<String>,
    /// Backend; the configured default when omitted.
    #[serde(default)]
    pub orchestrator: Option<crate::Orchestrator>,
    /// MicroVMs: `nat` (default: a TAP on the host bridge, egress through NAT) or
    /// `none` (no network device at all). Containers use the configured Docker network.
    #[serde(default)]
    pub network: Option<crate::VmNetwork>,
    /// What it may reach besides its isolated network's defaults (containers and
    /// microVMs; changeable later with `PUT /vms/{id}/network-policy`).
    #[serde(default, deserialize_with = "object_only")]
    pub network_policy: Option<crate::NetworkPolicy>,
    /// Tools from the catalog to install (as root) before the VM is reported
    /// RUNNING: `name` or `name@version` (at most 64). A tool the catalog does not
    /// have is a 400 naming it, with nothing recorded; a failed install fails the VM.
    #[cfg_attr(feature = "openapi", schema(max_items = 64))]
    #[serde(default)]
    pub additional_tools: Vec<String>,
    /// Versions by tool name (at most 64): they override the version of a listed
    /// tool, and add a tool that is not listed.
    #[serde(default)]
    pub tool_versions: BTreeMap<String, String>,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// Where the VM may run: a zone and labels the chosen worker must have. Among
    /// the workers that fit, the one with the most free capacity is chosen.
    #[serde(
        default,
        deserialize_with = "object_only",
        skip_serializing_if = "Option::is_none"
    )]
    pub placement: Option<crate::Placement>,
    /// Variables every process in the sandbox gets (commands, terminals), set once
    /// its agent answers (at most 256). Kept encrypted in the queue; never shown back.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Delete the sandbox this many seconds after it is created (its `expires_at`;
    /// at most 7 days). Without it the sandbox lives until deleted.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 604800))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
}

/// Longest time to live a sandbox may be given: seven days.
pub const MAX_VM_TTL_SECONDS: u64 = 7 * 24 * 3600;

/// A sandbox's time to live: 1 s to [`MAX_VM_TTL_SECONDS`].
pub fn validate_ttl_seconds(ttl: u64) -> Result<(), String> {
    if ttl == 0 || ttl > MAX_VM_TTL_SECONDS {
        return Err(format!(
            "ttl_seconds must be between 1 and {MAX_VM_TTL_SECONDS} (7 days), not {ttl}"
        ));
    }
    Ok(())
}

impl CreateVmRequest {
    pub fn validate(&self) -> Result<(), String> {
        if let Some(name) = &self.name {
            validate_name(name)?;
        }
        validate_size(
            self.vcpus.unwrap_or(1),
            self.memory_mb.unwrap_or(MIN_MEMORY_MB),
        )?;
        if let Some(image) = &self.image {
            validate_image_reference(image)?;
        }
        if let Some(disk_mb) = self.disk_mb {
            validate_disk_mb(disk_mb)?;
        }
        if let Some(policy) = &self.network_policy {
            policy.normalized()?;
        }
        crate::validate::validate_tools(&self.additional_tools, &self.tool_versions)?;
        if let Some(placement) = &self.placement {
            placement.validate()?;
        }
        crate::validate::validate_env_vars(&self.env).map_err(|e| format!("env: {e}"))?;
        if let Some(ttl) = self.ttl_seconds {
            validate_ttl_seconds(ttl)?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateVmResponse {
    pub task_id: String,
    pub vm_id: String,
    pub status: String,
    /// The VM as it stands when the response is sent (after `wait`, if asked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm: Option<Vm>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ExecuteCommandRequest {
    #[cfg_attr(feature = "openapi", schema(pattern = r"^[^\x00]*[^\x00\s][^\x00]*$"))]
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub cwd: Option<String>,
    /// Kill the command after this many seconds (default and maximum: 600).
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 600))]
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
}

pub const MAX_EXEC_TIMEOUT_SECONDS: u64 = 600;

fn validate_command(
    command: &str,
    env: &BTreeMap<String, String>,
    timeout: Option<u64>,
) -> Result<(), String> {
    if command.trim().is_empty() {
        return Err("command must not be empty".into());
    }
    if command.contains('\0') {
        return Err("command must not contain NUL bytes".into());
    }
    for key in env.keys() {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(format!("invalid environment variable name {key:?}"));
        }
    }
    if let Some(t) = timeout
        && (t == 0 || t > MAX_EXEC_TIMEOUT_SECONDS)
    {
        return Err(format!(
            "timeout_seconds must be between 1 and {MAX_EXEC_TIMEOUT_SECONDS}"
        ));
    }
    Ok(())
}

impl ExecuteCommandRequest {
    pub fn validate(&self) -> Result<(), String> {
        validate_command(&self.command, &self.env, self.timeout_seconds)?;
        if self.args.iter().any(|a| a.contains('\0')) {
            return Err("args must not contain NUL bytes".into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExecuteResponse {
    pub task_id: String,
    pub vm_id: String,
    pub execution_id: String,
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub execution: Option<Execution>,
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SmartExecuteRequest {
    #[cfg_attr(feature = "openapi", schema(pattern = r"^[^\x00]*[^\x00\s][^\x00]*$"))]
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$", max_length = 63)
    )]
    #[serde(default)]
    pub vm_name: Option<String>,
    /// Refused unless empty: tool installation does not exist yet.
    #[cfg_attr(feature = "openapi", schema(max_items = 0))]
    #[serde(default)]
    pub required_tools: Vec<String>,
    #[cfg_attr(feature = "openapi", schema(default = true))]
    #[serde(default = "default_true")]
    pub prefer_existing: bool,
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 64))]
    #[serde(default)]
    pub vcpus: Option<u32>,
    #[cfg_attr(feature = "openapi", schema(minimum = 128, maximum = 1048576))]
    #[serde(default)]
    pub memory_mb: Option<u64>,
    /// Image to run, as for `POST /vms`.
    #[cfg_attr(feature = "openapi", schema(pattern = r"^[!-~]{1,255}$"))]
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 600))]
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
}

impl SmartExecuteRequest {
    pub fn validate(&self) -> Result<(), String> {
        validate_command(&self.command, &self.env, self.timeout_seconds)?;
        if self.args.iter().any(|a| a.contains('\0')) {
            return Err("args must not contain NUL bytes".into());
        }
        if let Some(name) = &self.vm_name {
            validate_name(name)?;
        }
        validate_size(self.vcpus.unwrap_or(1), self.memory_mb.unwrap_or(512))?;
        if !self.required_tools.is_empty() {
            return Err(
                "required_tools is not supported yet: tool installation comes with workspaces"
                    .into(),
            );
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SmartExecuteResponse {
    pub execution_id: String,
    pub task_id: String,
    pub vm_id: String,
    pub vm_name: String,
    pub vm_created: bool,
    pub vm_reused: bool,
    pub status: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub execution: Option<Execution>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeleteVmResponse {
    /// The delete task's id (the original's `id`).
    pub id: String,
    pub task_id: String,
    pub vm_id: String,
    #[serde(rename = "type")]
    pub task_type: String,
    pub status: String,
}

/// The answer to pause, resume and snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VmActionResponse {
    pub task_id: String,
    pub vm_id: String,
    #[serde(rename = "type")]
    pub task_type: String,
    /// The task's status: `completed` once done (with `?wait=`), else `pending`/`running`.
    pub status: String,
    /// The VM as it is now.
    pub vm: crate::Vm,
    /// What the task returned (a snapshot's directory on its worker).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VmList {
    pub vms: Vec<Vm>,
    /// How many rows match the filters (all pages together).
    pub total: u64,
    /// Pass as `?cursor=` to get the next page; `null` on the last page.
    #[serde(default)]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExecutionList {
    pub executions: Vec<Execution>,
    /// How many rows match the filters (all pages together).
    pub total: u64,
    /// Pass as `?cursor=` to get the next page; `null` on the last page.
    #[serde(default)]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskList {
    pub tasks: Vec<Task>,
    /// How many rows match the filters (all pages together).
    pub total: u64,
    /// Pass as `?cursor=` to get the next page; `null` on the last page.
    #[serde(default)]
    pub next_cursor: Option<String>,
}

/// Queue throughput per minute (`GET /queue/history`), from the task records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QueueHistory {
    /// The width of each bucket: 60.
    pub interval_seconds: u32,
    /// Oldest first; the last is the current (partial) minute.
    pub buckets: Vec<QueueHistoryBucket>,
}

/// Tasks of one minute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QueueHistoryBucket {
    /// The minute's start (UTC).
    pub start: DateTime<Utc>,
    /// Tasks created in this minute.
    pub created: u64,
    /// Tasks that completed in this minute.
    pub completed: u64,
    /// Tasks that failed for good in this minute (cancelled ones are not counted).
    pub failed: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ComponentHealth {
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// `GET /ready`: whether this instance can serve work now: its store and its queue
/// answer, and a live worker with a healthy backend can take work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReadyResponse {
    /// `ready`, or `not_ready` when a component is not healthy.
    pub status: String,
    /// `store`, `queue` and `workers`: each `healthy` or `unhealthy`, with a message.
    pub components: BTreeMap<String, ComponentHealth>,
    pub timestamp: DateTime<Utc>,
}

/// `POST /tasks/{id}/cancel`: the task, and whether its cancellation is complete.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CancelTaskResponse {
    /// `cancelled` once the task is cancelled; `cancelling` while the worker that
    /// runs it is still stopping it.
    pub status: String,
    pub task: Task,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HealthResponse {
    /// `healthy`, or `degraded` when a component is not.
    pub status: String,
    pub components: BTreeMap<String, ComponentHealth>,
    pub timestamp: DateTime<Utc>,
    pub version: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references_as_docker_reads_them() {
        for ok in [
            "alpine",
            "aetherium/base:latest",
            "aetherium/standin-agent:3f2a1b",
            "localhost:5000/team/app:v1.2.3",
            "registry.example.com/a/b-c_d.e:Tag_1",
            "ubuntu@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "my-image",
        ] {
            assert_eq!(validate_image_reference(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "has space",
            "UPPER/case",
            "tab\there",
            "-leading",
            "trailing-",
            "a//b",
            "repo:",
            "repo:-tag",
            "repo@sha256:short",
            "repo@nodigest",
            "héllo",
            "a..b",
            "registry.example.com:99999x/app",
        ] {
            assert!(
                validate_image_reference(bad).is_err(),
                "{bad:?} was accepted"
            );
        }
        assert!(validate_image_reference(&"a".repeat(256)).is_err());
    }

    #[test]
    fn create_vm_request_validation() {
        let ok = CreateVmRequest {
            name: Some("build-1".into()),
            vcpus: Some(2),
            memory_mb: Some(256),
            ..Default::default()
        };
        assert!(ok.validate().is_ok());
        let zero_cpu = CreateVmRequest {
            vcpus: Some(0),
            ..ok.clone()
        };
        assert!(
            zero_cpu
                .validate()
                .expect_err("zero vcpus")
                .contains("vcpus")
        );
        let small = CreateVmRequest {
            memory_mb: Some(127),
            ..ok.clone()
        };
        assert!(
            small
                .validate()
                .expect_err("small memory")
                .contains("memory_mb")
        );
        for disk_mb in [63, 16 * 1024 * 1024 + 1] {
            let disk = CreateVmRequest {
                disk_mb: Some(disk_mb),
                ..ok.clone()
            };
            assert!(disk.validate().expect_err("disk").contains("disk_mb"));
        }
        let bad_name = CreateVmRequest {
            name: Some("-x y".into()),
            ..ok.clone()
        };
        assert!(bad_name.validate().is_err());
        let long_name = CreateVmRequest {
            name: Some("a".repeat(64)),
            ..ok
        };
        assert!(long_name.validate().is_err());
    }

    #[test]
    fn requests_reject_unknown_fields() {
        let err = serde_json::from_str::<CreateVmRequest>(r#"{"name":"a","vcpu":1}"#)
            .expect_err("unknown field must fail");
        assert!(err.to_string().contains("vcpu"));
        assert!(serde_json::from_str::<ExecuteCommandRequest>(r#"{"cmd":"ls"}"#).is_err());
    }

    #[test]
    fn smart_execute_refuses_nul_in_args() {
        let mut req: SmartExecuteRequest =
            serde_json::from_str(r#"{"command": "echo", "args": ["a"]}"#).expect("parse");
        assert!(req.validate().is_ok());
        req.args.push("b\0c".into());
        assert!(req.validate().expect_err("NUL").contains("NUL"));
    }

    #[test]
    fn execute_request_validation() {
        let mut req = ExecuteCommandRequest {
            command: "ls".into(),
            ..Default::default()
        };
        assert!(req.validate().is_ok());
        req.timeout_seconds = Some(0);
        assert!(req.validate().is_err());
        req.timeout_seconds = None;
        req.env.insert("A=B".into(), "x".into());
        assert!(req.validate().is_err());
        let empty = ExecuteCommandRequest {
            command: "  ".into(),
            ..Default::default()
        };
        assert!(empty.validate().is_err());
    }
}
