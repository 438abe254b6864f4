//! Environments (`/environments`: reusable workspace templates) and global secrets
//! (`/secrets`: encrypted at rest; values are write-only and never come back).

use aetherium_core::store::Cursor;
use aetherium_types::{
    AddSecretRequest, CreateEnvironmentRequest, Environment, EnvironmentList, ErrorResponse,
    Secret, SecretList, SecretScope, UpdateEnvironmentRequest,
};
use axum::extract::State;

use crate::extract::Path;
use axum::response::{IntoResponse, Response};
use http::StatusCode;

use super::{ApiResult, PageQuery, parse_page};
use crate::AppState;
use crate::extract::{Json, Query};

#[utoipa::path(
    post,
    path = "/api/v1/environments",
    tag = "environments",
    summary = "Create an environment",
    description = "A reusable template for workspaces: image, size, tools, env vars, git repository, working directory, MCP servers and idle timeout. Names are unique.",
    request_body = CreateEnvironmentRequest,
    responses(
        (status = 201, description = "Created", body = Environment),
        (status = 400, description = "A field is invalid (the message names it)", body = ErrorResponse),
        (status = 409, description = "The name is taken", body = ErrorResponse),
    )
)]
pub async fn create_environment(
    State(state): State<AppState>,
    Json(req): Json<CreateEnvironmentRequest>,
) -> ApiResult<Response> {
    let environment = state.platform.create_environment(req).await?;
    Ok((StatusCode::CREATED, Json(environment)).into_response())
}

#[utoipa::path(
    get,
    path = "/api/v1/environments",
    tag = "environments",
    summary = "List environments, newest first",
    params(PageQuery),
    responses(
        (status = 200, description = "The environments", body = EnvironmentList),
        (status = 400, description = "A bad limit or cursor", body = ErrorResponse),
    )
)]
pub async fn list_environments(
    State(state): State<AppState>,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<EnvironmentList>> {
    let page = parse_page(q.limit, q.cursor.as_deref())?;
    let (environments, total) = state.platform.list_environments(&page).await?;
    let (environments, next_cursor) =
        page.finish(environments, |e| Cursor::after(e.created_at, &e.id));
    Ok(Json(EnvironmentList {
        environments,
        total,
        next_cursor,
    }))
}

#[utoipa::path(
    get,
    path = "/api/v1/environments/{id}",
    tag = "environments",
    summary = "One environment",
    params(("id" = String, Path, description = "The environment's id or name")),
    responses(
        (status = 200, description = "The environment", body = Environment),
        (status = 404, description = "No such environment", body = ErrorResponse),
    )
)]
pub async fn get_environment(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Environment>> {
    Ok(Json(state.platform.get_environment(&id).await?))
}

#[utoipa::path(
    put,
    path = "/api/v1/environments/{id}",
    tag = "environments",
    summary = "Change an environment",
    description = "Fields left out stay as they are; an empty string clears `image`, `git_repo_url` or `git_branch`. Workspaces made before keep what they were made with.",
    params(("id" = String, Path, description = "The environment's id or name")),
    request_body = UpdateEnvironmentRequest,
    responses(
        (status = 200, description = "The environment as changed", body = Environment),
        (status = 400, description = "A field is invalid", body = ErrorResponse),
        (status = 404, description = "No such environment", body = ErrorResponse),
        (status = 409, description = "The new name is taken", body = ErrorResponse),
    )
)]
pub async fn update_environment(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(req): Json<UpdateEnvironmentRequest>,
) -> ApiResult<Json<Environment>> {
    Ok(Json(state.platform.update_environment(&id, req).await?))
}

#[utoipa::path(
    delete,
    path = "/api/v1/environments/{id}",
    tag = "environments",
    summary = "Delete an environment",
    params(("id" = String, Path, description = "The environment's id or name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such environment", body = ErrorResponse),
    )
)]
pub async fn delete_environment(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state.platform.delete_environment(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    post,
    path = "/api/v1/secrets",
    tag = "environments",
    summary = "Set a global secret",
    description = "Encrypted at rest (AES-256-GCM, with the id of the key that sealed it); setting a name again replaces its value. Global secrets reach every workspace, whose own secrets of the same name win. The value is never returned by any route.",
    request_body = AddSecretRequest,
    responses(
        (status = 201, description = "Stored: its metadata", body = Secret),
        (status = 400, description = "A field is invalid, or scope is `workspace` (use /workspaces/{id}/secrets)", body = ErrorResponse),
        (status = 503, description = "No encryption key is configured", body = ErrorResponse),
    )
)]
pub async fn put_global_secret(
    State(state): State<AppState>,
    Json(req): Json<AddSecretRequest>,
) -> ApiResult<Response> {
    let secret = state.platform.put_secret(None, &req).await?;
    Ok((StatusCode::CREATED, Json(secret)).into_response())
}

#[utoipa::path(
    get,
    path = "/api/v1/secrets",
    tag = "environments",
    summary = "List global secrets (names and types, never values)",
    responses(
        (status = 200, description = "The secrets' metadata", body = SecretList),
    )
)]
pub async fn list_global_secrets(State(state): State<AppState>) -> ApiResult<Json<SecretList>> {
    let secrets = state
        .platform
        .list_secrets(SecretScope::Global, None)
        .await?;
    Ok(Json(SecretList { secrets }))
}

#[utoipa::path(
    delete,
    path = "/api/v1/secrets/{id}",
    tag = "environments",
    summary = "Delete a global secret",
    params(("id" = String, Path, description = "The secret's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such global secret", body = ErrorResponse),
    )
)]
pub async fn delete_global_secret(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state.platform.delete_secret(None, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
