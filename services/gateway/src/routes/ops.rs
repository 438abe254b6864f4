//! Operations: readiness, task cancellation, retry and deletion, queue history. (Liveness is `routes::health`;
//! Prometheus metrics are in `crate::metrics`.)

use aetherium_types::{CancelTaskResponse, QueueHistory, ReadyResponse, Task, TaskStatus};
use axum::extract::State;

use crate::extract::Path;
use axum::response::{IntoResponse, Response};
use http::StatusCode;

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{Json, Query, WaitQuery};

/// `GET /ready` and `GET /api/v1/ready` (no auth): 200 when the store and the queue
/// answer and a live worker with a healthy backend can take work, else 503; the body
/// says which component is not ready and why.
#[utoipa::path(
    get,
    path = "/api/v1/ready",
    tag = "operations",
    summary = "Readiness: can this instance take work now?",
    description = "Public (no token), like health. 200 when the store and the queue answer and a live worker with a healthy backend can take work; 503 otherwise, with each component's status. Also served at `/ready`.",
    security(()),
    responses(
        (status = 200, description = "Ready", body = ReadyResponse),
        (status = 503, description = "Not ready: a component is unhealthy", body = ReadyResponse),
    )
)]
pub async fn ready(State(state): State<AppState>) -> Response {
    let ready = state.platform.ready().await;
    let status = if ready.status == "ready" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(ready)).into_response()
}

/// `POST /api/v1/tasks/{id}/cancel[?wait=]`.
#[utoipa::path(
    post,
    path = "/api/v1/tasks/{id}/cancel",
    tag = "tasks",
    summary = "Cancel a task",
    description = "A task that has not started (pending, scheduled, waiting for a retry) is cancelled at once (200); what it was for is marked so (the VM of a vm:create ends FAILED, the execution of a vm:execute ends failed). A running task is stopped by its worker, which kills the command (vm:execute) or removes the half-made sandbox (vm:create): 202 with status `cancelling` until then, or, with `?wait=`, 200 once it is cancelled. vm:delete cannot be cancelled (409); a finished task is a 409.",
    params(
        ("id" = String, Path, description = "The task's id"),
        WaitQuery,
    ),
    responses(
        (status = 200, description = "Cancelled (or, after a wait, finished before it could be stopped)", body = CancelTaskResponse),
        (status = 202, description = "Running: its worker is stopping it", body = CancelTaskResponse),
        (status = 400, description = "Bad `wait`", body = aetherium_types::ErrorResponse),
        (status = 404, description = "No such task", body = aetherium_types::ErrorResponse),
        (status = 409, description = "The task has finished, or is a vm:delete", body = aetherium_types::ErrorResponse),
    )
)]
pub async fn cancel_task(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<WaitQuery>,
) -> Result<Response, ApiError> {
    let wait = q.duration(state.max_wait)?;
    let cancelled = state.platform.cancel_task(&id).await?;
    let mut task = cancelled.task;
    let mut done = cancelled.done;
    if !done && let Some(wait) = wait {
        task = state.platform.wait_task_finished(&id, wait).await?;
        done = task.status.is_finished();
    }
    let status = match task.status {
        TaskStatus::Cancelled => "cancelled".to_string(),
        _ if !done => "cancelling".to_string(),
        // It finished before its worker could stop it.
        other => other.to_string(),
    };
    let code = if done {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((code, Json(CancelTaskResponse { status, task })).into_response())
}

/// `POST /api/v1/tasks/{id}/retry`.
#[utoipa::path(
    post,
    path = "/api/v1/tasks/{id}/retry",
    tag = "tasks",
    summary = "Retry an archived task",
    description = "A task in the archive of dead tasks (it failed for good: retries used up, a permanent error or its deadline passed; `archived_at` is set) goes back in line with no retries used: it is `pending` again, and `task.created` is published with `retried: true`. Any other task is a 409.",
    params(("id" = String, Path, description = "The task's id")),
    responses(
        (status = 200, description = "Back in line (pending)", body = Task),
        (status = 404, description = "No such task", body = aetherium_types::ErrorResponse),
        (status = 409, description = "The task is not archived (the message says what it is)", body = aetherium_types::ErrorResponse),
    )
)]
pub async fn retry_task(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Task>, ApiError> {
    Ok(Json(state.platform.retry_task(&id).await?))
}

/// `DELETE /api/v1/tasks/{id}`.
#[utoipa::path(
    delete,
    path = "/api/v1/tasks/{id}",
    tag = "tasks",
    summary = "Delete an archived task",
    description = "Removes a task in the archive of dead tasks (`archived_at` is set) and its record (`task.deleted` is published); it is a 404 afterwards. Other tasks cannot be deleted (409): cancel a live one; finished ones are kept as history.",
    params(("id" = String, Path, description = "The task's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such task", body = aetherium_types::ErrorResponse),
        (status = 409, description = "The task is not archived (the message says what it is)", body = aetherium_types::ErrorResponse),
    )
)]
pub async fn delete_task(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.platform.delete_task(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct QueueHistoryQuery {
    /// How many minutes, the current one last (default 30, 1 to 180; anything else
    /// is a 400).
    #[param(minimum = 1, maximum = 180)]
    minutes: Option<u32>,
}

/// `GET /api/v1/queue/history?minutes=N`.
#[utoipa::path(
    get,
    path = "/api/v1/queue/history",
    tag = "tasks",
    summary = "Tasks created, completed and failed per minute",
    description = "Exactly `minutes` one-minute buckets, oldest first, the last being the current (partial) minute, counted from the task records: `created` by creation time, `completed` and `failed` (for good; cancelled tasks are not counted) by completion time.",
    params(QueueHistoryQuery),
    responses(
        (status = 200, description = "The buckets", body = QueueHistory),
        (status = 400, description = "`minutes` is not 1 to 180", body = aetherium_types::ErrorResponse),
    )
)]
pub async fn queue_history(
    State(state): State<AppState>,
    Query(q): Query<QueueHistoryQuery>,
) -> Result<Json<QueueHistory>, ApiError> {
    let minutes = q.minutes.unwrap_or(30);
    if !(1..=180).contains(&minutes) {
        return Err(ApiError::bad_request(format!(
            "minutes must be 1 to 180, not {minutes}"
        )));
    }
    Ok(Json(QueueHistory {
        interval_seconds: 60,
        buckets: state.platform.task_history(minutes).await?,
    }))
}
