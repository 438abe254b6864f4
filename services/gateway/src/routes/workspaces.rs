//! Workspaces for coding agents (`/workspaces`): create (prepared on a worker:
//! tools, git clone, scripts), inspect their preparation steps, queue prompts to the
//! agent, manage their own secrets (write-only), and follow them live over the
//! session WebSocket (`/workspaces/{id}/session`, see
//! [`aetherium_types::workspace`] for its wire protocol).

use std::collections::HashSet;
use std::time::Duration;

use aetherium_core::store::Cursor;
use aetherium_types::{
    AddSecretRequest, CreateWorkspaceRequest, ErrorResponse, Event, EventType, PrepStepRun, Prompt,
    PromptList, Secret, SecretList, SessionClientMessage, SessionServerMessage, SessionStream,
    SubmitPromptRequest, Workspace, WorkspaceList, WorkspaceStatus,
};
use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};

use crate::extract::Path;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::{ApiResult, PageQuery, parse_page};
use crate::AppState;
use crate::error::ApiError;
use crate::extract::{Json, Query};

/// Largest client message on the session: a prompt is at most 256 KiB.
const MAX_SESSION_MESSAGE_BYTES: usize = 1024 * 1024;
/// WebSocket ping interval of the session.
const SESSION_KEEPALIVE: Duration = Duration::from_secs(15);

/// `GET /workspaces/{id}/steps`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PrepStepList {
    /// In the order they run.
    pub steps: Vec<PrepStepRun>,
}

#[utoipa::path(
    post,
    path = "/api/v1/workspaces",
    tag = "workspaces",
    summary = "Create a workspace",
    description = "Records the workspace (`creating`) with its secrets (encrypted, never returned) and preparation steps, creates its sandbox and queues its preparation (tools, git clone, scripts, env vars) on the sandbox's worker: it turns `preparing`, then `ready` or `failed` (see `GET /workspaces/{id}/steps`). An `environment_id` (id or name) fills what the request leaves out.",
    request_body = CreateWorkspaceRequest,
    responses(
        (status = 201, description = "Created, in `creating`", body = Workspace),
        (status = 400, description = "A field is invalid (the message names it), or an unknown tool", body = ErrorResponse),
        (status = 404, description = "No such environment", body = ErrorResponse),
        (status = 409, description = "The name is taken, or no worker can take the sandbox", body = ErrorResponse),
        (status = 429, description = "The API key's quota cannot hold the workspace's sandbox", body = ErrorResponse),
        (status = 503, description = "No encryption key is configured (secrets given), or no worker is available now", body = ErrorResponse),
    )
)]
pub async fn create_workspace(
    State(state): State<AppState>,
    axum::Extension(by): axum::Extension<aetherium_types::Principal>,
    Json(req): Json<CreateWorkspaceRequest>,
) -> ApiResult<Response> {
    // The use case validates the request before it touches anything.
    let workspace = state.platform.create_workspace(req, Some(&by)).await?;
    Ok((StatusCode::CREATED, Json(workspace)).into_response())
}

#[utoipa::path(
    get,
    path = "/api/v1/workspaces",
    tag = "workspaces",
    summary = "List workspaces, newest first",
    params(PageQuery),
    responses(
        (status = 200, description = "The workspaces", body = WorkspaceList),
        (status = 400, description = "A bad limit or cursor", body = ErrorResponse),
    )
)]
pub async fn list_workspaces(
    State(state): State<AppState>,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<WorkspaceList>> {
    let page = parse_page(q.limit, q.cursor.as_deref())?;
    let (workspaces, total) = state.platform.list_workspaces(&page).await?;
    let (workspaces, next_cursor) = page.finish(workspaces, |w| Cursor::after(w.created_at, &w.id));
    Ok(Json(WorkspaceList {
        workspaces,
        total,
        next_cursor,
    }))
}

#[utoipa::path(
    get,
    path = "/api/v1/workspaces/{id}",
    tag = "workspaces",
    summary = "One workspace",
    params(("id" = String, Path, description = "The workspace's id or name")),
    responses(
        (status = 200, description = "The workspace", body = Workspace),
        (status = 404, description = "No such workspace", body = ErrorResponse),
    )
)]
pub async fn get_workspace(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Workspace>> {
    Ok(Json(state.platform.get_workspace(&id).await?))
}

#[utoipa::path(
    delete,
    path = "/api/v1/workspaces/{id}",
    tag = "workspaces",
    summary = "Delete a workspace",
    description = "Removes its sandbox (queued on its worker), secrets, steps, prompts and the workspace itself.",
    params(("id" = String, Path, description = "The workspace's id or name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such workspace", body = ErrorResponse),
        (status = 409, description = "The workspace cannot be deleted now", body = ErrorResponse),
    )
)]
pub async fn delete_workspace(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state.platform.delete_workspace(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get,
    path = "/api/v1/workspaces/{id}/steps",
    tag = "workspaces",
    summary = "A workspace's preparation steps",
    description = "In the order they run, each with its status, exit code and (capped, secret-redacted) output.",
    params(("id" = String, Path, description = "The workspace's id or name")),
    responses(
        (status = 200, description = "The steps", body = PrepStepList),
        (status = 404, description = "No such workspace", body = ErrorResponse),
    )
)]
pub async fn list_steps(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<PrepStepList>> {
    let steps = state.platform.workspace_steps(&id).await?;
    Ok(Json(PrepStepList { steps }))
}

#[utoipa::path(
    post,
    path = "/api/v1/workspaces/{id}/prompts",
    tag = "workspaces",
    summary = "Queue a prompt to the workspace's agent",
    description = "Prompts of a workspace run one at a time, highest priority first, then oldest. Follow it with `GET /workspaces/{id}/prompts/{prompt_id}`, the session WebSocket or `GET /events?resource_id=<workspace id>&types=prompt.*`.",
    params(("id" = String, Path, description = "The workspace's id or name")),
    request_body = SubmitPromptRequest,
    responses(
        (status = 202, description = "Queued (`pending`)", body = Prompt),
        (status = 400, description = "A field is invalid", body = ErrorResponse),
        (status = 404, description = "No such workspace", body = ErrorResponse),
        (status = 409, description = "The workspace is not ready (the message says what it is doing)", body = ErrorResponse),
    )
)]
pub async fn submit_prompt(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(req): Json<SubmitPromptRequest>,
) -> ApiResult<Response> {
    // The use case validates the request before it touches anything.
    let prompt = state.platform.submit_prompt(&id, &req).await?;
    Ok((StatusCode::ACCEPTED, Json(prompt)).into_response())
}

#[utoipa::path(
    get,
    path = "/api/v1/workspaces/{id}/prompts",
    tag = "workspaces",
    summary = "A workspace's prompts, newest first, with their outputs",
    params(("id" = String, Path, description = "The workspace's id or name")),
    responses(
        (status = 200, description = "The prompts", body = PromptList),
        (status = 404, description = "No such workspace", body = ErrorResponse),
    )
)]
pub async fn list_prompts(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<PromptList>> {
    let prompts = state.platform.list_prompts(&id).await?;
    let total = prompts.len() as u64;
    Ok(Json(PromptList { prompts, total }))
}

#[utoipa::path(
    get,
    path = "/api/v1/workspaces/{id}/prompts/{prompt_id}",
    tag = "workspaces",
    summary = "One prompt, with its output",
    params(
        ("id" = String, Path, description = "The workspace's id or name"),
        ("prompt_id" = String, Path, description = "The prompt's id"),
    ),
    responses(
        (status = 200, description = "The prompt", body = Prompt),
        (status = 404, description = "No such workspace or prompt", body = ErrorResponse),
    )
)]
pub async fn get_prompt(
    State(state): State<AppState>,
    Path((id, prompt_id)): Path<(String, String)>,
) -> ApiResult<Json<Prompt>> {
    Ok(Json(state.platform.get_prompt(&id, &prompt_id).await?))
}

#[utoipa::path(
    post,
    path = "/api/v1/workspaces/{id}/prompts/{prompt_id}/cancel",
    tag = "workspaces",
    summary = "Cancel a prompt",
    description = "A pending prompt is cancelled at once; a running one is stopped (its process killed in the sandbox) and ends `cancelled`.",
    params(
        ("id" = String, Path, description = "The workspace's id or name"),
        ("prompt_id" = String, Path, description = "The prompt's id"),
    ),
    responses(
        (status = 200, description = "The prompt, cancelled or being stopped", body = Prompt),
        (status = 404, description = "No such workspace or prompt", body = ErrorResponse),
        (status = 409, description = "The prompt has already finished", body = ErrorResponse),
    )
)]
pub async fn cancel_prompt(
    State(state): State<AppState>,
    Path((id, prompt_id)): Path<(String, String)>,
) -> ApiResult<Json<Prompt>> {
    Ok(Json(state.platform.cancel_prompt(&id, &prompt_id).await?))
}

#[utoipa::path(
    post,
    path = "/api/v1/workspaces/{id}/secrets",
    tag = "workspaces",
    summary = "Set a secret of the workspace",
    description = "Encrypted at rest; setting a name again replaces its value; `scope: global` sets a global secret instead. It reaches the workspace's agent and later steps as an environment variable and is redacted from every output. The value is never returned by any route.",
    params(("id" = String, Path, description = "The workspace's id or name")),
    request_body = AddSecretRequest,
    responses(
        (status = 201, description = "Stored: its metadata", body = Secret),
        (status = 400, description = "A field is invalid", body = ErrorResponse),
        (status = 404, description = "No such workspace", body = ErrorResponse),
        (status = 503, description = "No encryption key is configured", body = ErrorResponse),
    )
)]
pub async fn put_secret(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(req): Json<AddSecretRequest>,
) -> ApiResult<Response> {
    let secret = state.platform.put_workspace_secret(&id, &req).await?;
    Ok((StatusCode::CREATED, Json(secret)).into_response())
}

#[utoipa::path(
    get,
    path = "/api/v1/workspaces/{id}/secrets",
    tag = "workspaces",
    summary = "The workspace's own secrets (names and types, never values)",
    params(("id" = String, Path, description = "The workspace's id or name")),
    responses(
        (status = 200, description = "The secrets' metadata", body = SecretList),
        (status = 404, description = "No such workspace", body = ErrorResponse),
    )
)]
pub async fn list_secrets(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<SecretList>> {
    let secrets = state.platform.list_workspace_secrets(&id).await?;
    Ok(Json(SecretList { secrets }))
}

#[utoipa::path(
    delete,
    path = "/api/v1/workspaces/{id}/secrets/{secret_id}",
    tag = "workspaces",
    summary = "Delete a secret of the workspace",
    params(
        ("id" = String, Path, description = "The workspace's id or name"),
        ("secret_id" = String, Path, description = "The secret's id"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such workspace or secret", body = ErrorResponse),
    )
)]
pub async fn delete_secret(
    State(state): State<AppState>,
    Path((id, secret_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    state
        .platform
        .delete_workspace_secret(&id, &secret_id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get,
    path = "/api/v1/workspaces/{id}/session",
    tag = "workspaces",
    summary = "The workspace's live session (WebSocket)",
    description = "A WebSocket upgrade. Server → client: `{\"type\":\"status\",\"workspace_status\"}` first and on every change, `prompt_queued`, `output` (`prompt_id`, `stream`, `data`: secrets redacted), `prompt_done`, and `error` for a message it could not act on (the session stays open). Client → server: `{\"type\":\"prompt\",\"prompt\":\"…\",\"priority\":5}` and `{\"type\":\"cancel\",\"prompt_id\":\"…\"}`. Authentication may also come as `?token=` on this route. Not an HTTP request/response route: fuzzers should skip it.",
    params(
        ("id" = String, Path, description = "The workspace's id or name"),
        ("token" = Option<String>, Query, description = "The bearer token, for browsers (which cannot set headers on a WebSocket)"),
    ),
    responses(
        (status = 101, description = "Switching protocols: the session"),
        (status = 400, description = "Not a valid WebSocket upgrade request", body = ErrorResponse),
        (status = 404, description = "No such workspace", body = ErrorResponse),
        (status = 426, description = "The connection cannot be upgraded", body = ErrorResponse),
    )
)]
pub async fn session(
    State(state): State<AppState>,
    Path(id): Path<String>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let workspace = state.platform.get_workspace(&id).await?;
    let upgrade = upgrade.map_err(|r| {
        ApiError::new(
            r.status(),
            format!("this route speaks WebSocket only: {}", r.body_text()),
        )
    })?;
    // Subscribed before the upgrade completes and before the status is read, so
    // no change falls in between.
    let live = state.platform.subscribe_events();
    Ok(upgrade
        .max_message_size(MAX_SESSION_MESSAGE_BYTES)
        .on_failed_upgrade(|e| tracing::debug!(error = %e, "WebSocket upgrade failed"))
        .on_upgrade(move |socket| run_session(state, workspace.id, live, socket)))
}

/// What a bus event means to a session of `workspace_id`, if anything.
pub fn session_message(workspace_id: &str, event: &Event) -> Option<SessionServerMessage> {
    if event.resource_id != workspace_id {
        return None;
    }
    let data = &event.data;
    match event.event_type {
        EventType::WorkspaceStatus => {
            let status: WorkspaceStatus = serde_json::from_value(data["status"].clone()).ok()?;
            Some(SessionServerMessage::Status {
                workspace_status: status,
            })
        }
        EventType::PromptQueued => {
            let prompt: Prompt = serde_json::from_value(prompt_of(data)).ok()?;
            Some(SessionServerMessage::PromptQueued { prompt })
        }
        EventType::PromptOutput => {
            let prompt_id = data["prompt_id"].as_str()?.to_string();
            let stream: SessionStream =
                serde_json::from_value(data["stream"].clone()).unwrap_or(SessionStream::Stdout);
            let text = data["data"].as_str()?.to_string();
            Some(SessionServerMessage::Output {
                prompt_id,
                stream,
                data: text,
            })
        }
        EventType::PromptDone => {
            let prompt: Prompt = serde_json::from_value(prompt_of(data)).ok()?;
            Some(SessionServerMessage::PromptDone { prompt })
        }
        _ => None,
    }
}

/// The prompt in an event's data: the data itself, or under `prompt`.
fn prompt_of(data: &serde_json::Value) -> serde_json::Value {
    match data.get("prompt") {
        Some(p) if p.is_object() => p.clone(),
        _ => data.clone(),
    }
}

async fn send(socket: &mut WebSocket, msg: &SessionServerMessage) -> bool {
    let Ok(text) = serde_json::to_string(msg) else {
        return true;
    };
    socket.send(Message::Text(text.into())).await.is_ok()
}

fn error_message(message: impl Into<String>) -> SessionServerMessage {
    SessionServerMessage::Error {
        message: message.into(),
    }
}

async fn run_session(
    state: AppState,
    workspace_id: String,
    mut live: broadcast::Receiver<Event>,
    mut socket: WebSocket,
) {
    let status = match state.platform.get_workspace(&workspace_id).await {
        Ok(w) => w.status,
        Err(e) => {
            let _ = send(&mut socket, &error_message(e.to_string())).await;
            let _ = socket.send(Message::Close(None)).await;
            return;
        }
    };
    if !send(
        &mut socket,
        &SessionServerMessage::Status {
            workspace_status: status,
        },
    )
    .await
    {
        return;
    }
    // Prompts this session queued and already announced: their `prompt.queued`
    // event is not sent twice.
    let mut announced: HashSet<String> = HashSet::new();
    let mut ping = tokio::time::interval(SESSION_KEEPALIVE);
    ping.tick().await;
    loop {
        tokio::select! {
            event = live.recv() => match event {
                Ok(event) => {
                    let Some(msg) = session_message(&workspace_id, &event) else { continue };
                    if let SessionServerMessage::PromptQueued { prompt } = &msg
                        && announced.remove(&prompt.id)
                    {
                        continue;
                    }
                    if !send(&mut socket, &msg).await {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    let note = format!(
                        "the session fell behind and skipped {missed} events; GET /workspaces/{workspace_id}/prompts has every output"
                    );
                    if !send(&mut socket, &error_message(note)).await {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    let reply = handle_client_message(&state, &workspace_id, text.as_str()).await;
                    if let Some(SessionServerMessage::PromptQueued { prompt }) = &reply {
                        announced.insert(prompt.id.clone());
                    }
                    if let Some(reply) = reply
                        && !send(&mut socket, &reply).await
                    {
                        return;
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    let msg = error_message("the session takes JSON text messages only");
                    if !send(&mut socket, &msg).await {
                        return;
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
            _ = ping.tick() => {
                if socket.send(Message::Ping(Default::default())).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = socket.send(Message::Close(None)).await;
}

/// Acts on one client message; the reply to send, if any.
async fn handle_client_message(
    state: &AppState,
    workspace_id: &str,
    text: &str,
) -> Option<SessionServerMessage> {
    let msg: SessionClientMessage = match serde_json::from_str(text) {
        Ok(msg) => msg,
        Err(e) => {
            return Some(error_message(format!(
                "malformed message (expected {{\"type\":\"prompt\",\"prompt\":\"…\"}} or {{\"type\":\"cancel\",\"prompt_id\":\"…\"}}): {e}"
            )));
        }
    };
    if let Err(e) = msg.validate() {
        return Some(error_message(e));
    }
    match msg {
        SessionClientMessage::Prompt { prompt, priority } => {
            let mut req = SubmitPromptRequest::new(&prompt);
            if let Some(priority) = priority {
                req.priority = priority;
            }
            match state.platform.submit_prompt(workspace_id, &req).await {
                Ok(prompt) => Some(SessionServerMessage::PromptQueued { prompt }),
                Err(e) => Some(error_message(e.to_string())),
            }
        }
        SessionClientMessage::Cancel { prompt_id } => {
            match state.platform.cancel_prompt(workspace_id, &prompt_id).await {
                // Its `prompt_done` follows from the bus.
                Ok(_) => None,
                Err(e) => Some(error_message(e.to_string())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    #[test]
    fn bus_events_become_session_messages() {
        let status = Event::new(
            EventType::WorkspaceStatus,
            "w1",
            json!({"status": "ready", "message": null}),
        );
        assert_eq!(
            session_message("w1", &status),
            Some(SessionServerMessage::Status {
                workspace_status: WorkspaceStatus::Ready
            })
        );
        assert_eq!(session_message("w2", &status), None);
        let output = Event::new(
            EventType::PromptOutput,
            "w1",
            json!({"prompt_id": "p1", "stream": "stderr", "data": "hi"}),
        );
        assert_eq!(
            session_message("w1", &output),
            Some(SessionServerMessage::Output {
                prompt_id: "p1".into(),
                stream: SessionStream::Stderr,
                data: "hi".into()
            })
        );
        let prompt = Prompt::pending("w1", &SubmitPromptRequest::new("go"), chrono::Utc::now());
        let queued = Event::new(
            EventType::PromptQueued,
            "w1",
            serde_json::to_value(&prompt).unwrap(),
        );
        assert_eq!(
            session_message("w1", &queued),
            Some(SessionServerMessage::PromptQueued {
                prompt: prompt.clone()
            })
        );
        let done = Event::new(EventType::PromptDone, "w1", json!({ "prompt": prompt }));
        assert!(matches!(
            session_message("w1", &done),
            Some(SessionServerMessage::PromptDone { .. })
        ));
        let step = Event::new(EventType::WorkspaceStep, "w1", json!({}));
        assert_eq!(session_message("w1", &step), None);
    }
}
