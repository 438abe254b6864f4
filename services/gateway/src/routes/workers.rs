//! Workers and the cluster: `GET /workers[?zone=&status=]`, `/workers/{id}`,
//! `/workers/{id}/vms`, `POST /workers/{id}/drain|activate`, `GET /cluster/stats`,
//! `/cluster/distribution`.

use aetherium_core::services::cluster::WorkerQuery;
use aetherium_core::store::Cursor;
use aetherium_types::{
    ClusterDistribution, ClusterStats, ErrorResponse, VmList, WorkerList, WorkerStatus, WorkerView,
};
use axum::extract::State;

use crate::extract::Path;
use serde::Deserialize;

use super::{ApiResult, PageQuery, parse_page};
use crate::AppState;
use crate::error::ApiError;
use crate::extract::{Json, Query};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListWorkersQuery {
    /// Only workers in this zone.
    zone: Option<String>,
    /// Only workers in this status (case-insensitive). A worker past the stale
    /// threshold counts as `offline` even before the sweep marks it so.
    #[param(inline, value_type = Option<WorkerStatus>)]
    status: Option<String>,
}

#[utoipa::path(
    get,
    path = "/api/v1/workers",
    tag = "workers",
    summary = "List workers, by id",
    description = "Each worker as it reported itself in its last heartbeat, with what its VMs use, its free slots and whether it is live.",
    params(ListWorkersQuery),
    responses(
        (status = 200, description = "The workers", body = WorkerList),
    )
)]
pub async fn list_workers(
    State(state): State<AppState>,
    Query(q): Query<ListWorkersQuery>,
) -> ApiResult<Json<WorkerList>> {
    let query = WorkerQuery {
        zone: q.zone,
        status: q
            .status
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(ApiError::bad_request)?,
    };
    let workers = state.platform.list_worker_views(&query).await?;
    Ok(Json(WorkerList {
        total: workers.len() as u64,
        workers,
    }))
}

#[utoipa::path(
    get,
    path = "/api/v1/workers/{id}",
    tag = "workers",
    summary = "One worker",
    params(("id" = String, Path, description = "The worker's id")),
    responses(
        (status = 200, description = "The worker", body = WorkerView),
        (status = 404, description = "No such worker", body = ErrorResponse),
    )
)]
pub async fn get_worker(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<WorkerView>> {
    Ok(Json(state.platform.worker_view(&id).await?))
}

#[utoipa::path(
    get,
    path = "/api/v1/workers/{id}/vms",
    tag = "workers",
    summary = "The VMs placed on a worker, newest first",
    params(
        ("id" = String, Path, description = "The worker's id"),
        PageQuery,
    ),
    responses(
        (status = 200, description = "The worker's VMs", body = VmList),
        (status = 404, description = "No such worker", body = ErrorResponse),
    )
)]
pub async fn list_worker_vms(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<VmList>> {
    let page = parse_page(q.limit, q.cursor.as_deref())?;
    let (vms, total) = state.platform.list_worker_vms(&id, &page.probe()).await?;
    let (vms, next_cursor) = page.finish(vms, |v| Cursor::after(v.created_at, &v.id));
    Ok(Json(VmList {
        vms,
        total,
        next_cursor,
    }))
}

#[utoipa::path(
    post,
    path = "/api/v1/workers/{id}/drain",
    tag = "workers",
    summary = "Drain a worker: no new VMs are placed on it",
    description = "The worker keeps running and serving the VMs it has (executions, files, deletes); new VMs go to other workers. Lasts until `activate`, across heartbeats (a worker that restarts comes back active). Idempotent.",
    params(("id" = String, Path, description = "The worker's id")),
    responses(
        (status = 200, description = "The worker, draining", body = WorkerView),
        (status = 404, description = "No such worker", body = ErrorResponse),
        (status = 409, description = "The worker is offline", body = ErrorResponse),
    )
)]
pub async fn drain_worker(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<WorkerView>> {
    state.platform.drain_worker(&id).await?;
    Ok(Json(state.platform.worker_view(&id).await?))
}

#[utoipa::path(
    post,
    path = "/api/v1/workers/{id}/activate",
    tag = "workers",
    summary = "End a worker's drain: it takes new VMs again",
    description = "Idempotent on an active worker. A worker whose backend does not answer stays `unhealthy` (its heartbeat says so).",
    params(("id" = String, Path, description = "The worker's id")),
    responses(
        (status = 200, description = "The worker", body = WorkerView),
        (status = 404, description = "No such worker", body = ErrorResponse),
        (status = 409, description = "The worker is offline", body = ErrorResponse),
    )
)]
pub async fn activate_worker(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<WorkerView>> {
    state.platform.activate_worker(&id).await?;
    Ok(Json(state.platform.worker_view(&id).await?))
}

#[utoipa::path(
    get,
    path = "/api/v1/cluster/stats",
    tag = "workers",
    summary = "The cluster's capacity and use",
    description = "Workers by status; CPU, memory and slot totals of the workers that are not offline, and what the VMs holding resources (CREATED, STARTING, RUNNING, STOPPING) use; every VM by status; the zones.",
    responses(
        (status = 200, description = "Cluster totals", body = ClusterStats),
    )
)]
pub async fn cluster_stats(State(state): State<AppState>) -> ApiResult<Json<ClusterStats>> {
    Ok(Json(state.platform.cluster_stats().await?))
}

#[utoipa::path(
    get,
    path = "/api/v1/cluster/distribution",
    tag = "workers",
    summary = "How VMs spread over zones and workers",
    responses(
        (status = 200, description = "VMs per zone and per worker", body = ClusterDistribution),
    )
)]
pub async fn cluster_distribution(
    State(state): State<AppState>,
) -> ApiResult<Json<ClusterDistribution>> {
    Ok(Json(state.platform.cluster_distribution().await?))
}
