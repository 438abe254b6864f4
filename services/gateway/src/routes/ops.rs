//! Operations: readiness and task cancellation. (Liveness is `routes::health`;
//! Prometheus metrics are in `crate::metrics`.)

use aetherium_types::{CancelTaskResponse, ReadyResponse, TaskStatus};
use axum::extract::{Path, State};
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
