//! The `/api/v1` handlers: translate HTTP to the core's use cases and back.
//! Work that talks to a sandbox directly (streamed and interactive exec, files) lives
//! in the submodules.

mod direct;
pub mod files;
pub mod stream;
pub mod ws;

use std::time::Duration;

use aetherium_core::store::{Page, TaskFilter, VmFilter};
use aetherium_types::{
    CreateVmRequest, CreateVmResponse, DeleteVmResponse, ExecuteCommandRequest, ExecuteResponse,
    Execution, ExecutionList, HealthResponse, SmartExecuteRequest, SmartExecuteResponse, Task,
    TaskList, Vm, VmList,
};
use axum::extract::{Path, State};
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

pub async fn health(State(state): State<AppState>) -> Response {
    let health: HealthResponse = state.platform.health().await;
    let status = if health.status == "healthy" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(health)).into_response()
}

pub async fn create_vm(
    State(state): State<AppState>,
    Query(q): Query<WaitQuery>,
    Json(req): Json<CreateVmRequest>,
) -> ApiResult<Response> {
    let wait = q.duration(state.max_wait)?;
    let (mut vm, task) = state.platform.create_vm(&req).await?;
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListVmsQuery {
    status: Option<String>,
    name: Option<String>,
    limit: Option<u32>,
    offset: Option<u32>,
}

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
    };
    let (vms, total) = state
        .platform
        .list_vms(&filter, &Page::new(q.limit, q.offset))
        .await?;
    Ok(Json(VmList { vms, total }))
}

pub async fn get_vm(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Vm>> {
    Ok(Json(resolve_vm(&state, &id).await?))
}

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

pub async fn execute(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<WaitQuery>,
    Json(req): Json<ExecuteCommandRequest>,
) -> ApiResult<Response> {
    let wait = q.duration(state.max_wait)?;
    // A bad request is a 400 whatever VM it names.
    req.validate().map_err(ApiError::bad_request)?;
    let vm = resolve_vm(&state, &id).await?;
    let (execution, task) = state.platform.execute(&vm.id, &req).await?;
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    limit: Option<u32>,
    offset: Option<u32>,
}

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
    let (executions, total) = state
        .platform
        .list_executions(&vm_id, &Page::new(q.limit, q.offset))
        .await?;
    Ok(Json(ExecutionList { executions, total }))
}

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

pub async fn smart_execute(
    State(state): State<AppState>,
    Query(q): Query<WaitQuery>,
    Json(req): Json<SmartExecuteRequest>,
) -> ApiResult<Response> {
    let wait = q.duration(state.max_wait)?;
    let smart = state.platform.smart_execute(&req).await?;
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListTasksQuery {
    status: Option<String>,
    #[serde(rename = "type")]
    task_type: Option<String>,
    vm_id: Option<String>,
    limit: Option<u32>,
    offset: Option<u32>,
}

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
    };
    let (tasks, total) = state
        .platform
        .list_tasks(&filter, &Page::new(q.limit, q.offset))
        .await?;
    Ok(Json(TaskList { tasks, total }))
}

pub async fn get_task(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Task>> {
    Ok(Json(state.platform.get_task(&id).await?))
}

pub async fn queue_stats(
    State(state): State<AppState>,
) -> ApiResult<Json<aetherium_core::queue::QueueStats>> {
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
