//! Rows of the core tables (`vms`, `executions`, `tasks`, `workers`) and their
//! domain types. JSON documents are read leniently, as they always were: a document
//! of the wrong shape reads as empty.

use aetherium_types::{Execution, NetworkPolicy, Placement, Task, Vm, Worker};
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{FromRow, Row};

use super::dialect::Model;
use super::{from_ms, parse_enum};
use crate::error::CoreResult;

pub(super) type JsonValue = Json<serde_json::Value>;

pub(super) fn opt_from_ms(ms: Option<i64>) -> Option<DateTime<Utc>> {
    ms.map(from_ms)
}

pub(super) fn json_map(value: JsonValue) -> serde_json::Map<String, serde_json::Value> {
    match value.0 {
        serde_json::Value::Object(map) => map,
        _ => serde_json::Map::new(),
    }
}

pub(super) fn json_or_default<T: serde::de::DeserializeOwned + Default>(value: JsonValue) -> T {
    serde_json::from_value(value.0).unwrap_or_default()
}

#[derive(FromRow)]
pub struct VmRow {
    id: String,
    name: String,
    status: String,
    orchestrator: String,
    image: String,
    vcpu_count: i64,
    memory_mb: i64,
    disk_mb: Option<i64>,
    created_by: Option<String>,
    network_policy: Option<Json<NetworkPolicy>>,
    placement: Option<Json<Placement>>,
    kernel_path: Option<String>,
    rootfs_path: Option<String>,
    socket_path: Option<String>,
    worker_id: Option<String>,
    error: Option<String>,
    created_at: i64,
    started_at: Option<i64>,
    stopped_at: Option<i64>,
    expires_at: Option<i64>,
    metadata: JsonValue,
}

impl Model for Vm {
    type Row = VmRow;
    fn from_row(row: VmRow) -> CoreResult<Vm> {
        Ok(Vm {
            id: row.id,
            name: row.name,
            status: parse_enum(&row.status)?,
            orchestrator: parse_enum(&row.orchestrator)?,
            image: row.image,
            vcpu_count: row.vcpu_count as u32,
            memory_mb: row.memory_mb as u64,
            disk_mb: row.disk_mb.map(|mb| mb as u64),
            created_by: row.created_by,
            network_policy: row.network_policy.map(|p| p.0),
            placement: row.placement.map(|p| p.0),
            kernel_path: row.kernel_path,
            rootfs_path: row.rootfs_path,
            socket_path: row.socket_path,
            worker_id: row.worker_id,
            error: row.error,
            created_at: from_ms(row.created_at),
            started_at: opt_from_ms(row.started_at),
            stopped_at: opt_from_ms(row.stopped_at),
            expires_at: opt_from_ms(row.expires_at),
            metadata: json_map(row.metadata),
        })
    }
}

#[derive(FromRow)]
pub struct ExecutionRow {
    id: String,
    vm_id: String,
    task_id: Option<String>,
    command: String,
    args: JsonValue,
    status: String,
    exit_code: Option<i64>,
    stdout: String,
    stderr: String,
    error: Option<String>,
    created_at: i64,
    started_at: Option<i64>,
    completed_at: Option<i64>,
    duration_ms: Option<i64>,
    metadata: JsonValue,
    created_by: Option<String>,
}

impl Model for Execution {
    type Row = ExecutionRow;
    fn from_row(row: ExecutionRow) -> CoreResult<Execution> {
        Ok(Execution {
            id: row.id,
            vm_id: row.vm_id,
            task_id: row.task_id,
            command: row.command,
            args: json_or_default(row.args),
            status: parse_enum(&row.status)?,
            exit_code: row.exit_code.map(|c| c as i32),
            stdout: row.stdout,
            stderr: row.stderr,
            error: row.error,
            created_at: from_ms(row.created_at),
            started_at: opt_from_ms(row.started_at),
            completed_at: opt_from_ms(row.completed_at),
            duration_ms: row.duration_ms,
            metadata: json_map(row.metadata),
            created_by: row.created_by,
        })
    }
}

/// A `tasks` row (all columns, `SELECT *` or `RETURNING *`).
#[derive(FromRow)]
pub struct TaskRow {
    id: String,
    #[sqlx(rename = "type")]
    task_type: String,
    status: String,
    payload: JsonValue,
    result: Option<JsonValue>,
    error: Option<String>,
    priority: i64,
    retry_count: i64,
    max_retries: i64,
    timeout_seconds: i64,
    worker_id: Option<String>,
    target_worker_id: Option<String>,
    vm_id: Option<String>,
    created_at: i64,
    scheduled_at: i64,
    started_at: Option<i64>,
    completed_at: Option<i64>,
}

impl Model for Task {
    type Row = TaskRow;
    fn from_row(row: TaskRow) -> CoreResult<Task> {
        Ok(Task {
            id: row.id,
            task_type: parse_enum(&row.task_type)?,
            status: parse_enum(&row.status)?,
            payload: row.payload.0,
            result: row.result.map(|r| r.0),
            error: row.error,
            priority: row.priority as i32,
            retry_count: row.retry_count as u32,
            max_retries: row.max_retries as u32,
            timeout_seconds: row.timeout_seconds as u64,
            worker_id: row.worker_id,
            target_worker_id: row.target_worker_id,
            vm_id: row.vm_id,
            created_at: from_ms(row.created_at),
            scheduled_at: from_ms(row.scheduled_at),
            started_at: opt_from_ms(row.started_at),
            completed_at: opt_from_ms(row.completed_at),
            // The archive is the queue's state: the platform fills it in.
            archived_at: None,
        })
    }
}

/// A `tasks` row read by hand (the embedded queue runs its own statements on the
/// SQLite pool) as a [`Task`].
pub fn task_from_row<R: Row>(row: &R) -> CoreResult<Task>
where
    TaskRow: for<'r> FromRow<'r, R>,
{
    Task::from_row(TaskRow::from_row(row)?)
}

#[derive(FromRow)]
pub struct WorkerRow {
    id: String,
    hostname: String,
    address: String,
    zone: String,
    status: String,
    status_message: Option<String>,
    capabilities: JsonValue,
    labels: JsonValue,
    cpu_cores: i64,
    memory_mb: i64,
    max_vms: i64,
    vm_count: i64,
    started_at: i64,
    last_seen: i64,
}

impl Model for Worker {
    type Row = WorkerRow;
    fn from_row(row: WorkerRow) -> CoreResult<Worker> {
        Ok(Worker {
            id: row.id,
            hostname: row.hostname,
            address: row.address,
            zone: row.zone,
            status: parse_enum(&row.status)?,
            status_message: row.status_message,
            capabilities: json_or_default(row.capabilities),
            labels: json_map(row.labels),
            cpu_cores: row.cpu_cores as u32,
            memory_mb: row.memory_mb as u64,
            max_vms: row.max_vms as u32,
            vm_count: row.vm_count as u32,
            started_at: from_ms(row.started_at),
            last_seen: from_ms(row.last_seen),
        })
    }
}
