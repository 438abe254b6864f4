//! `PUT|GET /vms/{id}/files?path=` and `GET /vms/{id}/files/stat?path=`: files in
//! and out of a RUNNING VM, streamed through the agent's envd `/files` API in both
//! directions, so memory does not grow with the file.

use aetherium_core::agent_client::{AgentClient, AgentError};
use aetherium_types::agent::filesystem::{EntryInfo, FileType};
use axum::body::Body;
use axum::extract::State;

use crate::extract::Path;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{Stream, StreamExt as _};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::{ApiResult, resolve_vm};
use crate::AppState;
use crate::error::ApiError;
use crate::extract::{Json, Query};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PathQuery {
    /// Absolute path in the sandbox, without NUL bytes.
    #[param(pattern = r"^/[^\x00]*$")]
    path: String,
}

impl PathQuery {
    /// The path, if it is one the sandbox can take: absolute, no NUL byte.
    fn validated(&self) -> ApiResult<&str> {
        let path = self.path.as_str();
        if path.contains('\0') {
            return Err(ApiError::bad_request("path must not contain NUL bytes"));
        }
        if !path.starts_with('/') {
            return Err(ApiError::bad_request(format!(
                "path {path:?} must be absolute (start with /)"
            )));
        }
        Ok(path)
    }
}

/// A file's metadata as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FileInfo {
    pub path: String,
    pub name: String,
    /// `file`, `dir`, `symlink` or `other`.
    #[serde(rename = "type")]
    #[schema(value_type = String, pattern = "^(file|dir|symlink|other)$")]
    pub file_type: &'static str,
    pub size: i64,
    /// Permission bits, e.g. 420 (0o644).
    pub mode: u32,
    /// As `ls -l` shows them: `-rw-r--r--`.
    pub permissions: String,
    pub owner: String,
    pub group: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub modified_at: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub symlink_target: Option<String>,
}

impl From<EntryInfo> for FileInfo {
    fn from(e: EntryInfo) -> FileInfo {
        let file_type = match FileType::try_from(e.r#type) {
            Ok(FileType::File) => "file",
            Ok(FileType::Directory) => "dir",
            Ok(FileType::Symlink) => "symlink",
            _ => "other",
        };
        FileInfo {
            modified_at: e.modified_time.and_then(|t| {
                chrono::DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).ok()?)
            }),
            path: e.path,
            name: e.name,
            file_type,
            size: e.size,
            mode: e.mode,
            permissions: e.permissions,
            owner: e.owner,
            group: e.group,
            symlink_target: e.symlink_target,
        }
    }
}

/// What an upload answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UploadResponse {
    pub path: String,
    /// Bytes written.
    pub size: u64,
}

/// The agent's refusal as the API's error: its Connect code decides the status
/// (`not_found` 404, `invalid_argument` 400, `permission_denied` 403, …).
fn agent_error(e: AgentError) -> ApiError {
    match e {
        // A full disk in the sandbox: not the client's rate (429) but its storage.
        AgentError::Connect(c) if c.code == aetherium_types::agent::code::RESOURCE_EXHAUSTED => {
            ApiError::new(StatusCode::INSUFFICIENT_STORAGE, c.message)
        }
        AgentError::Connect(c) => {
            let status =
                StatusCode::from_u16(c.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let status = if status.is_server_error() {
                StatusCode::BAD_GATEWAY
            } else {
                status
            };
            // The agent's messages name the path already.
            ApiError::new(status, c.message)
        }
        AgentError::Unavailable(m) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the VM's agent did not answer: {m}"),
        ),
        AgentError::Protocol(m) => {
            ApiError::new(StatusCode::BAD_GATEWAY, format!("the VM's agent: {m}"))
        }
    }
}

async fn sandbox(state: &AppState, id: &str) -> ApiResult<AgentClient> {
    let vm = resolve_vm(state, id).await?;
    let (_, agent) = state.platform.open_sandbox(&vm.id).await?;
    Ok(agent)
}

/// Counts an upload's bytes as they pass, and says whether it went over the limit.
#[derive(Debug, Default)]
struct Tally {
    bytes: AtomicU64,
    over: AtomicBool,
}

/// The request body, cut off with an error once it passes `limit` bytes.
fn limited(
    body: Body,
    limit: u64,
    tally: Arc<Tally>,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    body.into_data_stream().map(move |chunk| {
        let chunk = chunk.map_err(std::io::Error::other)?;
        let seen = tally
            .bytes
            .fetch_add(chunk.len() as u64, Ordering::Relaxed)
            .saturating_add(chunk.len() as u64);
        if seen > limit {
            tally.over.store(true, Ordering::Relaxed);
            return Err(std::io::Error::other(format!(
                "the upload is over the {limit}-byte limit"
            )));
        }
        Ok(chunk)
    })
}

fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the upload is over the {limit}-byte limit"),
    )
}

#[utoipa::path(
    put,
    path = "/api/v1/vms/{id}/files",
    tag = "files",
    summary = "Write a file into a VM",
    description = "The request body (any content type) becomes the file, created or replaced, with parent directories made as needed. Streamed: exempt from the 1 MiB body limit, limited by `--max-upload-bytes` instead.",
    params(
        ("id" = String, Path, description = "The VM's id or name"),
        PathQuery,
    ),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The file's bytes"),
    responses(
        (status = 200, description = "Written", body = UploadResponse),
        (status = 400, description = "Bad path, or the agent refused the path as invalid (e.g. a parent is a file)", body = aetherium_types::ErrorResponse),
        (status = 403, description = "The agent refused: permission denied", body = aetherium_types::ErrorResponse),
        (status = 404, description = "No such VM, or no such file", body = aetherium_types::ErrorResponse),
        (status = 409, description = "The VM is not RUNNING", body = aetherium_types::ErrorResponse),
        (status = 502, description = "The VM's agent failed or answered something unexpected", body = aetherium_types::ErrorResponse),
        (status = 507, description = "The sandbox's disk is full", body = aetherium_types::ErrorResponse),
        (status = 503, description = "The VM's agent did not answer", body = aetherium_types::ErrorResponse),
        (status = 413, description = "The upload is over the limit", body = aetherium_types::ErrorResponse),
    )
)]
pub async fn upload(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<PathQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<UploadResponse>> {
    let path = q.validated()?;
    let limit = state.max_upload_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large(limit));
    }
    if path.ends_with('/') {
        return Err(ApiError::bad_request(format!(
            "path {path:?} names a directory, not a file"
        )));
    }
    let agent = sandbox(&state, &id).await?;
    // The agent refuses a directory before it reads the body, and a refusal while the
    // body is still being sent can surface as a broken connection (503) instead of
    // its answer: ask first, so the answer is a 400 whatever the timing.
    if let Ok(entry) = agent.stat(path).await
        && FileInfo::from(entry).file_type == "dir"
    {
        return Err(ApiError::bad_request(format!(
            "path is a directory: {path}"
        )));
    }
    refuse_non_directory_ancestor(&agent, path).await?;
    let tally = Arc::new(Tally::default());
    let result = agent
        .upload(path, limited(body, limit, tally.clone()))
        .await;
    if tally.over.load(Ordering::Relaxed) {
        return Err(too_large(limit));
    }
    result.map_err(agent_error)?;
    let size = tally.bytes.load(Ordering::Relaxed);
    Ok(Json(UploadResponse {
        path: path.to_string(),
        size,
    }))
}

/// The same early-refusal race for a path under a file (`/etc/hostname/x`): the
/// nearest existing ancestor must be a directory. Missing ones the agent creates.
async fn refuse_non_directory_ancestor(agent: &AgentClient, path: &str) -> ApiResult<()> {
    let mut ancestor = std::path::Path::new(path).parent();
    while let Some(dir) = ancestor.and_then(|d| d.to_str()) {
        if dir == "/" || dir.is_empty() {
            return Ok(());
        }
        match agent.stat(dir).await {
            Ok(entry) => {
                if FileInfo::from(entry).file_type == "dir" {
                    return Ok(());
                }
                return Err(ApiError::bad_request(format!(
                    "{dir} is not a directory, so {path} cannot be created"
                )));
            }
            // Missing, or itself under a file (ENOTDIR): look one level up.
            Err(AgentError::Connect(_)) => ancestor = std::path::Path::new(dir).parent(),
            // An unreachable agent is the upload's to report.
            Err(_) => return Ok(()),
        }
    }
    Ok(())
}

#[utoipa::path(
    get,
    path = "/api/v1/vms/{id}/files",
    tag = "files",
    summary = "Read a file from a VM",
    description = "The file's bytes, streamed (chunked).",
    params(
        ("id" = String, Path, description = "The VM's id or name"),
        PathQuery,
    ),
    responses(
        (status = 200, description = "The file's bytes", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, description = "Bad path, or the path is a directory", body = aetherium_types::ErrorResponse),
        (status = 403, description = "The agent refused: permission denied", body = aetherium_types::ErrorResponse),
        (status = 404, description = "No such VM, or no such file", body = aetherium_types::ErrorResponse),
        (status = 409, description = "The VM is not RUNNING", body = aetherium_types::ErrorResponse),
        (status = 502, description = "The VM's agent failed or answered something unexpected", body = aetherium_types::ErrorResponse),
        (status = 507, description = "The sandbox's disk is full", body = aetherium_types::ErrorResponse),
        (status = 503, description = "The VM's agent did not answer", body = aetherium_types::ErrorResponse),
    )
)]
pub async fn download(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<PathQuery>,
) -> ApiResult<Response> {
    let path = q.validated()?;
    let agent = sandbox(&state, &id).await?;
    let download = agent.download(path).await.map_err(agent_error)?;
    // Chunked: a length taken from a stat beforehand could be stale by the time the
    // bytes flow, and a wrong Content-Length breaks the response.
    let body = Body::from_stream(download.map(|chunk| chunk.map_err(std::io::Error::other)));
    let mut response = body.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Ok(response)
}

#[utoipa::path(
    get,
    path = "/api/v1/vms/{id}/files/stat",
    tag = "files",
    summary = "A file's metadata",
    params(
        ("id" = String, Path, description = "The VM's id or name"),
        PathQuery,
    ),
    responses(
        (status = 200, description = "The file's metadata", body = FileInfo),
        (status = 400, description = "Bad path", body = aetherium_types::ErrorResponse),
        (status = 403, description = "The agent refused: permission denied", body = aetherium_types::ErrorResponse),
        (status = 404, description = "No such VM, or no such file", body = aetherium_types::ErrorResponse),
        (status = 409, description = "The VM is not RUNNING", body = aetherium_types::ErrorResponse),
        (status = 502, description = "The VM's agent failed or answered something unexpected", body = aetherium_types::ErrorResponse),
        (status = 507, description = "The sandbox's disk is full", body = aetherium_types::ErrorResponse),
        (status = 503, description = "The VM's agent did not answer", body = aetherium_types::ErrorResponse),
    )
)]
pub async fn stat(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<PathQuery>,
) -> ApiResult<Json<FileInfo>> {
    let path = q.validated()?;
    let agent = sandbox(&state, &id).await?;
    let entry = agent.stat(path).await.map_err(agent_error)?;
    Ok(Json(FileInfo::from(entry)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(path: &str) -> PathQuery {
        PathQuery { path: path.into() }
    }

    #[test]
    fn paths_must_be_absolute_without_nul() {
        assert!(q("/tmp/x").validated().is_ok());
        assert!(q("tmp/x").validated().is_err());
        assert!(q("").validated().is_err());
        assert!(q("/tmp/\0x").validated().is_err());
    }
}
