//! The `/api/v1` handlers: translate HTTP to the core's use cases and back.
//! Work that talks to a sandbox directly (streamed and interactive exec, files) lives
//! in the submodules.
//!
//! Over 800 lines: one handler per VM and task route, each with the OpenAPI annotation that documents it.

pub mod admin;
mod direct;
pub mod environments;
pub mod events;
mod feed;
pub mod files;
pub mod logs;
pub mod ops;
pub mod stream;
pub mod workers;
pub mod workspaces;
pub mod ws;

use std::time::Duration;

use aetherium_core::store::{Cursor, Page, TaskFilter, VmFilter};
use aetherium_types::task::QueueName;
use aetherium_types::{
    CreateVmRequest, CreateVmResponse, DeleteVmResponse, ExecuteCommandRequest, ExecuteResponse,
    Execution, ExecutionList, HealthResponse, SmartExecuteRequest, SmartExecuteResponse, Task,
    TaskList, Vm, VmActionResponse, VmList,
};
use axum::extract::State;

use crate::extract::Path;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Deserialize;

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{Json, Query, WaitQuery};

type ApiResult<T> = Result<T, ApiError>;

/// 200 once the awaited work is done, 202 while it is still under way.
fn accepted_or_done(done: bool) -> StatusCode {
    if done {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    }
}

async fn resolve_vm(state: &AppState, id_or_name: &str) -> ApiResult<Vm> {
    let platform = &state.platform;
    if let Some(vm) = platform
        .store
        .get_vm(id_or_name)
        .await
        .map_err(ApiError::from)?
    {
        return Ok(vm);
    }
    if let Some(vm) = platform
        .store
        .get_vm_by_name(id_or_name)
        .await
        .map_err(ApiError::from)?
    {
        return Ok(vm);
    }
    Err(ApiError::new(
        StatusCode::NOT_FOUND,
        format!("VM {id_or_name} not found"),
    ))
}

#[utoipa::path(
    get,
    path = "/api/v1/health",
    tag = "health",
    summary = "Health of the platform (no auth)",
    description = "Also served at `/health`. 200 when every component is healthy, 503 when one is not (e.g. the Docker engine is down).",
    security(()),
    responses(
        (status = 200, description = "Healthy", body = HealthResponse),
        (status = 503, description = "Degraded: a component is unhealthy", body = HealthResponse),
    )
)]
pub async fn health(State(state): State<AppState>) -> Response {
    let health: HealthResponse = state.platform.health().await;
    let status = if health.status == "healthy" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(health)).into_response()
}

#[utoipa::path(
    post,
    path = "/api/v1/vms",
    tag = "vms",
    summary = "Create a VM",
    description = "Queues a `vm:create` task. Answers 202 at once, or with `?wait=` 200 once the VM is RUNNING (or FAILED/STOPPED), 202 if the wait ran out.",
    params(WaitQuery),
    request_body = CreateVmRequest,
    responses(
        (status = 200, description = "Waited: the VM has settled", body = CreateVmResponse),
        (status = 202, description = "Queued (or the wait ran out)", body = CreateVmResponse),
        (status = 403, description = "The caller's API key fixes its sandboxes' network policy (its quota) and the request asks for another", body = aetherium_types::ErrorResponse),
        (status = 409, description = "The name is taken, or no worker with the backend matches `placement` at all (the message names each worker and why)", body = aetherium_types::ErrorResponse),
        (status = 429, description = "The API key's quota (sandboxes, vCPUs or memory at once) cannot hold it; nothing was recorded", body = aetherium_types::ErrorResponse),
        (status = 503, description = "No worker can take the VM now (none live and active with the backend, all draining or full; the message names each and why); nothing was recorded", body = aetherium_types::ErrorResponse),
    )
)]
pub async fn create_vm(
    State(state): State<AppState>,
    axum::Extension(by): axum::Extension<aetherium_types::Principal>,
    Query(q): Query<WaitQuery>,
    Json(req): Json<CreateVmRequest>,
) -> ApiResult<Response> {
    let wait = q.duration(state.max_wait)?;
    let (mut vm, task) = state.platform.create_vm(&req, Some(&by)).await?;
    let mut done = false;
    let mut status = task.status.as_str().to_string();
    if let Some(wait) = wait {
        let deadline = tokio::time::Instant::now() + wait;
        if let Some(current) = state.platform.wait_vm_settled(&vm.id, wait).await? {
            done = current.status.is_settled();
            vm = current;
        }
        // The worker marks the VM RUNNING first and its task completed just after.
        // (A FAILED VM may still have a retry coming: answer at once.)
        let running = vm.status == aetherium_types::VmStatus::Running;
        status = task_status_after(&state, &task.id, running, deadline).await?;
    }
    let body = CreateVmResponse {
        task_id: task.id,
        vm_id: vm.id.clone(),
        status,
        vm: Some(vm),
    };
    Ok((accepted_or_done(done), Json(body)).into_response())
}

/// The status of the task whose work was awaited. Workers finish the work (the VM
/// runs, or is gone) a moment before they record the task as done, so once the work
/// is `done`, the task is awaited too, within the same `deadline` (a few ms in
/// practice).
async fn task_status_after(
    state: &AppState,
    task_id: &str,
    done: bool,
    deadline: tokio::time::Instant,
) -> ApiResult<String> {
    let task = if done {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        state.platform.wait_task_finished(task_id, left).await?
    } else {
        state.platform.get_task(task_id).await?
    };
    Ok(task.status.to_string())
}

/// `?limit=&cursor=` of every list: a bad one is a 400.
fn parse_page(limit: Option<u32>, cursor: Option<&str>) -> ApiResult<Page> {
    Page::parse(limit, cursor).map_err(ApiError::bad_request)
}

fn parse_queue(text: &str) -> ApiResult<QueueName> {
    [
        QueueName::Critical,
        QueueName::High,
        QueueName::Default,
        QueueName::Low,
    ]
    .into_iter()
    .find(|q| q.as_str().eq_ignore_ascii_case(text))
    .ok_or_else(|| {
        ApiError::bad_request(format!(
            "unknown queue {text:?}: critical, high, default or low"
        ))
    })
}

fn parse_time(what: &str, text: &str) -> ApiResult<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| {
            ApiError::bad_request(format!(
                "{what} {text:?} is not an RFC 3339 time like 2026-01-31T12:00:00Z: {e}"
            ))
        })
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListVmsQuery {
    /// Only VMs in this state (case-insensitive).
    #[param(inline, value_type = Option<aetherium_types::VmStatus>)]
    status: Option<String>,
    /// Only the VM with this name.
    name: Option<String>,
    /// Only the VMs created by this API key or user (its id).
    created_by: Option<String>,
    /// At most this many (default 100, 1 to 1000; anything else is a 400).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// The `next_cursor` of the page before (a malformed one is a 400).
    cursor: Option<String>,
}

#[utoipa::path(
    get,
    path = "/api/v1/vms",
    tag = "vms",
    summary = "List VMs, newest first",
    params(ListVmsQuery),
    responses(
        (status = 200, description = "The VMs", body = VmList),
    )
)]
pub async fn list_vms(
    State(state): State<AppState>,
    Query(q): Query<ListVmsQuery>,
) -> ApiResult<Json<VmList>> {
    let filter = VmFilter {
        status: q
            .status
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(ApiError::bad_request)?,
        name: q.name,
        worker_id: None,
        created_by: q.created_by,
    };
    let page = parse_page(q.limit, q.cursor.as_deref())?;
    let (vms, total) = state.platform.list_vms(&filter, &page.probe()).await?;
    let (vms, next_cursor) = page.finish(vms, |v| Cursor::after(v.created_at, &v.id));
    Ok(Json(VmList {
        vms,
        total,
        next_cursor,
    }))
}

#[utoipa::path(
    get,
    path = "/api/v1/vms/{id}",
    tag = "vms",
    summary = "One VM",
    params(
        ("id" = String, Path, description = "The VM's id or name"),
    ),
    responses(
        (status = 200, description = "The VM", body = Vm),
        (status = 404, description = "No such VM", body = aetherium_types::ErrorResponse),
    )
)]
pub async fn get_vm(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Vm>> {
    Ok(Json(resolve_vm(&state, &id).await?))
}

#[utoipa::path(
    delete,
    path = "/api/v1/vms/{id}",
    tag = "vms",
    summary = "Delete a VM",
    description = "Queues a `vm:delete` task; the VM turns STOPPING, then disappears. With `?wait=`: 200 once it is gone.",
    params(
        ("id" = String, Path, description = "The VM's id or name"),
        WaitQuery,
    ),
    responses(
        (status = 200, description = "Waited: the VM is gone", body = DeleteVmResponse),
        (status = 202, description = "Queued (or the wait ran out)", body = DeleteVmResponse),
        (status = 404, description = "No such VM", body = aetherium_types::ErrorResponse),
        (status = 409, description = "The VM is already being deleted", body = aetherium_types::ErrorResponse),
        (status = 503, description = "No live worker with a healthy backend", body = aetherium_types::ErrorResponse),
    )
)]
pub async fn delete_vm(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<WaitQuery>,
) -> ApiResult<Response> {
    let wait = q.duration(state.max_wait)?;
    let vm = resolve_vm(&state, &id).await?;
    let task = state.platform.delete_vm(&vm.id).await?;
    let mut done = false;
    let mut status = task.status.to_string();
    if let Some(wait) = wait {
        let deadline = tokio::time::Instant::now() + wait;
        done = state
            .platform
            .wait_vm_settled(&vm.id, wait)
            .await?
            .is_none();
        // The worker removes the VM first and records its task as done just after.
        status = task_status_after(&state, &task.id, done, deadline).await?;
    }
    let body = DeleteVmResponse {
        id: task.id.clone(),
        task_id: task.id,
        vm_id: vm.id,
        task_type: task.task_type.to_string(),
        status,
    };
    Ok((accepted_or_done(done), Json(body)).into_response())
}

/// Shared by pause, resume and snapshot: queue, optionally wait, answer with the VM.
async fn vm_action(
    state: &AppState,
    id: &str,
    wait: &WaitQuery,
    action: aetherium_types::TaskType,
) -> ApiResult<Response> {
    let wait = wait.duration(state.max_wait)?;
    let vm = resolve_vm(state, id).await?;
    let platform = &state.platform;
    let task = match action {
        aetherium_types::TaskType::VmPause => platform.pause_vm(&vm.id).await?,
        aetherium_types::TaskType::VmResume => platform.resume_vm(&vm.id).await?,
        _ => platform.snapshot_vm(&vm.id).await?,
    };
    answer_vm_action(state, &vm.id, task, wait).await
}

/// The answer to a queued control task on a VM: at once (202), or once it is done
/// within `wait` (200; a failed task is a 409 with its error).
async fn answer_vm_action(
    state: &AppState,
    vm_id: &str,
    task: aetherium_types::Task,
    wait: Option<Duration>,
) -> ApiResult<Response> {
    let platform = &state.platform;
    let task = match wait {
        Some(wait) => platform.wait_task_finished(&task.id, wait).await?,
        None => task,
    };
    if task.status == aetherium_types::TaskStatus::Failed {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            task.error
                .unwrap_or_else(|| format!("{} failed", task.task_type)),
        ));
    }
    let done = task.status == aetherium_types::TaskStatus::Completed;
    let body = VmActionResponse {
        task_id: task.id.clone(),
        vm_id: vm_id.to_string(),
        task_type: task.task_type.to_string(),
        status: task.status.to_string(),
        vm: platform.get_vm(vm_id).await?,
        result: if done { task.result.clone() } else { None },
    };
    Ok((accepted_or_done(done), Json(body)).into_response())
}

#[utoipa::path(
    post,
    path = "/api/v1/vms/{id}/pause",
    tag = "vms",
    summary = "Pause a VM",
    description = "Freezes a RUNNING VM's vCPUs (microVMs) or processes (containers); it turns PAUSED and keeps its memory. Queued on its worker; with `?wait=` 200 once done.",
    params(("id" = String, Path, description = "The VM's id or name"), WaitQuery),
    responses(
        (status = 200, description = "Waited: the VM is PAUSED", body = VmActionResponse),
        (status = 202, description = "Queued (or the wait ran out)", body = VmActionResponse),
        (status = 404, description = "No such VM", body = aetherium_types::ErrorResponse),
        (status = 409, description = "The VM is not RUNNING, or the backend refused", body = aetherium_types::ErrorResponse),
        (status = 503, description = "The VM's worker is offline", body = aetherium_types::ErrorResponse),
    )
)]
pub async fn pause_vm(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<WaitQuery>,
) -> ApiResult<Response> {
    vm_action(&state, &id, &q, aetherium_types::TaskType::VmPause).await
}

#[utoipa::path(
    post,
    path = "/api/v1/vms/{id}/resume",
    tag = "vms",
    summary = "Resume a paused VM",
    description = "A PAUSED VM runs again (RUNNING). Queued on its worker; with `?wait=` 200 once done.",
    params(("id" = String, Path, description = "The VM's id or name"), WaitQuery),
    responses(
        (status = 200, description = "Waited: the VM is RUNNING", body = VmActionResponse),
        (status = 202, description = "Queued (or the wait ran out)", body = VmActionResponse),
        (status = 404, description = "No such VM", body = aetherium_types::ErrorResponse),
        (status = 409, description = "The VM is not PAUSED, or the backend refused", body = aetherium_types::ErrorResponse),
        (status = 503, description = "The VM's worker is offline", body = aetherium_types::ErrorResponse),
    )
)]
pub async fn resume_vm(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<WaitQuery>,
) -> ApiResult<Response> {
    vm_action(&state, &id, &q, aetherium_types::TaskType::VmResume).await
}

#[utoipa::path(
    post,
    path = "/api/v1/vms/{id}/snapshot",
    tag = "vms",
    summary = "Snapshot a paused microVM",
    description = "Writes the VM state and memory of a PAUSED Firecracker VM on its worker; the result names the directory. Other backends answer 409 saying they cannot.",
    params(("id" = String, Path, description = "The VM's id or name"), WaitQuery),
    responses(
        (status = 200, description = "Waited: the snapshot is written", body = VmActionResponse),
        (status = 202, description = "Queued (or the wait ran out)", body = VmActionResponse),
        (status = 404, description = "No such VM", body = aetherium_types::ErrorResponse),
        (status = 409, description = "The VM is not PAUSED, its backend cannot snapshot, or the backend refused", body = aetherium_types::ErrorResponse),
        (status = 503, description = "The VM's worker is offline", body = aetherium_types::ErrorResponse),
    )
)]
pub async fn snapshot_vm(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<WaitQuery>,
) -> ApiResult<Response> {
    vm_action(&state, &id, &q, aetherium_types::TaskType::VmSnapshot).await
}

#[utoipa::path(
    put,
    path = "/api/v1/vms/{id}/network-policy",
    tag = "vms",
    summary = "Change a sandbox's network policy",
    description = "Puts the policy in place of the sandbox's current one (a container's, or a microVM's on its TAP device), for new and open connections (`{}`: the isolated network's defaults). Queued on its worker; with `?wait=` 200 once in place, and the VM shows it.",
    params(("id" = String, Path, description = "The VM's id or name"), WaitQuery),
    request_body = aetherium_types::NetworkPolicy,
    responses(
        (status = 200, description = "Waited: the policy is in place", body = VmActionResponse),
        (status = 202, description = "Queued (or the wait ran out)", body = VmActionResponse),
        (status = 400, description = "An entry is not an IPv4 address or CIDR, or a list is too long", body = aetherium_types::ErrorResponse),
        (status = 403, description = "The caller's API key fixes its sandboxes' network policy (its quota)", body = aetherium_types::ErrorResponse),
        (status = 404, description = "No such VM", body = aetherium_types::ErrorResponse),
        (status = 409, description = "The VM is not RUNNING or PAUSED, or its worker refused (e.g. its Docker network is not isolated)", body = aetherium_types::ErrorResponse),
        (status = 503, description = "The VM's worker is offline", body = aetherium_types::ErrorResponse),
    )
)]
pub async fn set_network_policy(
    State(state): State<AppState>,
    axum::Extension(by): axum::Extension<aetherium_types::Principal>,
    Path(id): Path<String>,
    Query(q): Query<WaitQuery>,
    Json(policy): Json<aetherium_types::NetworkPolicy>,
) -> ApiResult<Response> {
    let wait = q.duration(state.max_wait)?;
    // A bad policy is a 400 whatever VM it names.
    policy.normalized().map_err(ApiError::bad_request)?;
    let vm = resolve_vm(&state, &id).await?;
    // The defaults need no policy of their own.
    let policy = (policy != aetherium_types::NetworkPolicy::default()).then_some(policy);
    let task = state
        .platform
        .set_network_policy(&vm.id, policy.as_ref(), Some(&by))
        .await?;
    answer_vm_action(&state, &vm.id, task, wait).await
}

async fn wait_for_execution(
    state: &AppState,
    execution: Execution,
    wait: Option<Duration>,
) -> ApiResult<(bool, Option<Execution>)> {
    match wait {
        None => Ok((false, None)),
        Some(wait) => {
            let e = state
                .platform
                .wait_execution_finished(&execution.id, wait)
                .await?;
            Ok((e.status.is_finished(), Some(e)))
        }
    }
}

#[utoipa::path(
    post,
    path = "/api/v1/vms/{id}/execute",
    tag = "executions",
    summary = "Run a command on a VM (queued)",
    description = "The command runs directly (no shell). Answers 202 at once, or with `?wait=` 200 with the finished execution.",
    params(
        ("id" = String, Path, description = "The VM's id or name"),
        WaitQuery,
    ),
    request_body = ExecuteCommandRequest,
    responses(
        (status = 200, description = "Waited: the execution has finished", body = ExecuteResponse),
        (status = 202, description = "Queued (or the wait ran out)", body = ExecuteResponse),
        (status = 404, description = "No such VM", body = aetherium_types::ErrorResponse),
        (status = 409, description = "The VM is not RUNNING", body = aetherium_types::ErrorResponse),
        (status = 503, description = "The VM's worker is offline (the message names it), or no live worker with a healthy backend", body = aetherium_types::ErrorResponse),
    )
)]
pub async fn execute(
    State(state): State<AppState>,
    axum::Extension(by): axum::Extension<aetherium_types::Principal>,
    Path(id): Path<String>,
    Query(q): Query<WaitQuery>,
    Json(req): Json<ExecuteCommandRequest>,
) -> ApiResult<Response> {
    let wait = q.duration(state.max_wait)?;
    // A bad request is a 400 whatever VM it names.
    req.validate().map_err(ApiError::bad_request)?;
    let vm = resolve_vm(&state, &id).await?;
    let (execution, task) = state.platform.execute(&vm.id, &req, Some(&by)).await?;
    let execution_id = execution.id.clone();
    let (done, execution) = wait_for_execution(&state, execution, wait).await?;
    let status = match &execution {
        Some(e) => e.status.to_string(),
        None => task.status.to_string(),
    };
    let body = ExecuteResponse {
        task_id: task.id,
        vm_id: vm.id,
        execution_id,
        status,
        execution,
    };
    Ok((accepted_or_done(done), Json(body)).into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// At most this many (default 100, 1 to 1000; anything else is a 400).
    #[param(minimum = 1, maximum = 1000)]
    pub(crate) limit: Option<u32>,
    /// The `next_cursor` of the page before (a malformed one is a 400).
    pub(crate) cursor: Option<String>,
}

#[utoipa::path(
    get,
    path = "/api/v1/vms/{id}/executions",
    tag = "executions",
    summary = "A VM's executions, newest first",
    description = "Executions outlive their VM: a deleted VM's id still lists them.",
    params(
        ("id" = String, Path, description = "The VM's id or name"),
        PageQuery,
    ),
    responses(
        (status = 200, description = "The executions", body = ExecutionList),
        (status = 404, description = "No such VM, and no executions recorded for this id", body = aetherium_types::ErrorResponse),
    )
)]
pub async fn list_executions(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<ExecutionList>> {
    let vm_id = match resolve_vm(&state, &id).await {
        Ok(vm) => vm.id,
        // Executions outlive their VM: a deleted VM's id still lists them.
        Err(_) => id,
    };
    let page = parse_page(q.limit, q.cursor.as_deref())?;
    let (executions, total) = state
        .platform
        .list_executions(&vm_id, &page.probe())
        .await?;
    let (executions, next_cursor) = page.finish(executions, |e| Cursor::after(e.created_at, &e.id));
    Ok(Json(ExecutionList {
        executions,
        total,
        next_cursor,
    }))
}

#[utoipa::path(
    get,
    path = "/api/v1/executions/{id}",
    tag = "executions",
    summary = "One execution",
    description = "With `?wait=`: blocks until the execution has finished or the wait ran out.",
    params(
        ("id" = String, Path, description = "The execution's id"),
        WaitQuery,
    ),
    responses(
        (status = 200, description = "The execution", body = Execution),
        (status = 404, description = "No such execution", body = aetherium_types::ErrorResponse),
    )
)]
/// `?wait=` blocks until the execution has finished (or the wait is over).
pub async fn get_execution(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<WaitQuery>,
) -> ApiResult<Json<Execution>> {
    let execution = match q.duration(state.max_wait)? {
        Some(wait) => state.platform.wait_execution_finished(&id, wait).await?,
        None => state.platform.get_execution(&id).await?,
    };
    Ok(Json(execution))
}

#[utoipa::path(
    post,
    path = "/api/v1/smart-execute",
    tag = "executions",
    summary = "Run a command on a suitable VM, creating one if needed",
    params(WaitQuery),
    request_body = SmartExecuteRequest,
    responses(
        (status = 200, description = "Waited: the execution has finished", body = SmartExecuteResponse),
        (status = 202, description = "Queued (or the wait ran out)", body = SmartExecuteResponse),
        (status = 409, description = "The named VM is not RUNNING or the name is taken", body = aetherium_types::ErrorResponse),
        (status = 429, description = "A new VM is needed and the API key's quota cannot hold it", body = aetherium_types::ErrorResponse),
        (status = 503, description = "No live worker with a healthy backend", body = aetherium_types::ErrorResponse),
    )
)]
pub async fn smart_execute(
    State(state): State<AppState>,
    axum::Extension(by): axum::Extension<aetherium_types::Principal>,
    Query(q): Query<WaitQuery>,
    Json(req): Json<SmartExecuteRequest>,
) -> ApiResult<Response> {
    let wait = q.duration(state.max_wait)?;
    let smart = state.platform.smart_execute(&req, Some(&by)).await?;
    let execution_id = smart.execution.id.clone();
    let (done, execution) = wait_for_execution(&state, smart.execution, wait).await?;
    let status = match &execution {
        Some(e) => e.status.to_string(),
        None => smart.task.status.to_string(),
    };
    let message = if smart.vm_created {
        format!("created VM {} and queued the command on it", smart.vm.name)
    } else {
        format!("queued the command on running VM {}", smart.vm.name)
    };
    let body = SmartExecuteResponse {
        execution_id,
        task_id: smart.task.id,
        vm_id: smart.vm.id,
        vm_name: smart.vm.name,
        vm_created: smart.vm_created,
        vm_reused: !smart.vm_created,
        status,
        message,
        execution,
    };
    Ok((accepted_or_done(done), Json(body)).into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListTasksQuery {
    /// Only tasks in this state (case-insensitive).
    #[param(inline, value_type = Option<aetherium_types::TaskStatus>)]
    status: Option<String>,
    /// Only tasks of this type (case-insensitive).
    #[serde(rename = "type")]
    #[param(inline, value_type = Option<aetherium_types::TaskType>)]
    task_type: Option<String>,
    /// Only tasks about this VM (its id).
    vm_id: Option<String>,
    /// Only tasks last leased by this worker.
    worker_id: Option<String>,
    /// Only tasks in this queue: `critical`, `high`, `default` or `low`.
    #[param(inline, value_type = Option<aetherium_types::task::QueueName>)]
    queue: Option<String>,
    /// Only tasks created at or after this time (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime)]
    created_after: Option<String>,
    /// Only tasks created before this time (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime)]
    created_before: Option<String>,
    /// `true`: only tasks in the archive of dead tasks (`archived_at` set, so they can
    /// be retried or deleted), the most recently archived first, at most `limit` in one
    /// page (no `cursor`).
    archived: Option<bool>,
    /// At most this many (default 100, 1 to 1000; anything else is a 400).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// The `next_cursor` of the page before (a malformed one is a 400).
    cursor: Option<String>,
}

#[utoipa::path(
    get,
    path = "/api/v1/tasks",
    tag = "tasks",
    summary = "List tasks, newest first",
    params(ListTasksQuery),
    responses(
        (status = 200, description = "The tasks", body = TaskList),
    )
)]
pub async fn list_tasks(
    State(state): State<AppState>,
    Query(q): Query<ListTasksQuery>,
) -> ApiResult<Json<TaskList>> {
    let filter = TaskFilter {
        status: q
            .status
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(ApiError::bad_request)?,
        task_type: q
            .task_type
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(ApiError::bad_request)?,
        vm_id: q.vm_id,
        worker_id: q.worker_id,
        queue: q.queue.as_deref().map(parse_queue).transpose()?,
        created_after: q
            .created_after
            .as_deref()
            .map(|t| parse_time("created_after", t))
            .transpose()?,
        created_before: q
            .created_before
            .as_deref()
            .map(|t| parse_time("created_before", t))
            .transpose()?,
    };
    let page = parse_page(q.limit, q.cursor.as_deref())?;
    if q.archived == Some(true) {
        // The archive is the queue's, ordered by when tasks died: one page of it.
        if q.cursor.is_some() {
            return Err(ApiError::bad_request(
                "archived=true lists one page (the most recently archived): no cursor",
            ));
        }
        let tasks: Vec<Task> = state
            .platform
            .list_archived_tasks(page.limit)
            .await?
            .into_iter()
            .filter(|t| filter.matches(t))
            .collect();
        return Ok(Json(TaskList {
            total: tasks.len() as u64,
            tasks,
            next_cursor: None,
        }));
    }
    let (tasks, total) = state.platform.list_tasks(&filter, &page.probe()).await?;
    let (tasks, next_cursor) = page.finish(tasks, |t| Cursor::after(t.created_at, &t.id));
    Ok(Json(TaskList {
        tasks,
        total,
        next_cursor,
    }))
}

#[utoipa::path(
    get,
    path = "/api/v1/tasks/{id}",
    tag = "tasks",
    summary = "One task",
    params(
        ("id" = String, Path, description = "The task's id"),
    ),
    responses(
        (status = 200, description = "The task", body = Task),
        (status = 404, description = "No such task", body = aetherium_types::ErrorResponse),
    )
)]
pub async fn get_task(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Task>> {
    Ok(Json(state.platform.get_task(&id).await?))
}

#[utoipa::path(
    get,
    path = "/api/v1/queue/stats",
    tag = "tasks",
    summary = "Task counts by state",
    responses(
        (status = 200, description = "The counts", body = aetherium_types::QueueStats),
    )
)]
pub async fn queue_stats(
    State(state): State<AppState>,
) -> ApiResult<Json<aetherium_types::QueueStats>> {
    Ok(Json(state.platform.queue_stats().await?))
}

pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such route")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this route",
    )
}
