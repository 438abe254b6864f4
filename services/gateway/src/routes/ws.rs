//! `GET /vms/{id}/exec/ws?cmd=bash&arg=-l&tty=true&cols=80&rows=24`: an interactive
//! command over a WebSocket, like `docker exec -it`.
//!
//! Client → server: binary frames are input (stdin, or keystrokes for a terminal);
//! text frames are JSON controls: `{"type":"resize","cols":..,"rows":..}`,
//! `{"type":"signal","signal":"SIGTERM"|"SIGKILL"|"SIGINT"}`, `{"type":"stdin_eof"}`.
//! Server → client: `{"type":"start",..}` first, then binary frames of output (the
//! terminal's, or stdout), `{"type":"stderr",..}` text frames (without a terminal),
//! `{"type":"error","message"}` for a refused control, and finally
//! `{"type":"exit","exit_code",..}` followed by a normal close.
//!
//! A session belongs to its client: when the client goes away before the command
//! ends, the command's process group is killed (nobody can type into it any more)
//! and the execution is recorded as failed.

use std::time::Duration;

use aetherium_core::agent_client::{AgentClient, AgentError};
use aetherium_types::agent::{
    Base64Bytes, DataEvent, ProcessEvent, ProcessInput, ProcessSelector, PtySize, Signal,
    StartRequest,
};
use aetherium_types::{ExecuteCommandRequest, ExecutionStatus};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{RawQuery, State};

use crate::extract::Path;
use axum::response::Response;
use futures::stream::SplitStream;
use futures::{SinkExt as _, StreamExt as _};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::direct::{Chunk, Utf8Chunker, record};
use super::{ApiResult, resolve_vm};
use crate::AppState;
use crate::error::ApiError;
use aetherium_core::services::engine::{Attach, Capture, Command, Outcome};

/// Longest `timeout_seconds` an interactive session may ask for (a day). Without
/// one, a session lasts as long as its client stays.
pub const MAX_SESSION_SECONDS: u64 = 24 * 60 * 60;
/// Largest client message: input arrives in keystrokes and pastes, not files.
const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// The byte a terminal's line discipline turns into SIGINT (VINTR, Ctrl-C).
const INTERRUPT: u8 = 0x03;

/// What the query string asks to run.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionParams {
    pub request: ExecuteCommandRequest,
    pub tty: Option<PtySize>,
}

fn parse_bool(key: &str, value: &str) -> Result<bool, ApiError> {
    match value {
        "true" | "1" | "" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(ApiError::bad_request(format!(
            "{key}={value:?}: expected true or false"
        ))),
    }
}

fn parse_number<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, ApiError> {
    value
        .parse()
        .map_err(|_| ApiError::bad_request(format!("{key}={value:?} is not a valid number")))
}

/// `cmd` (required), `arg` and `env` (`KEY=VALUE`, both repeatable), `cwd`, `tty`,
/// `cols`/`rows` (80×24 by default), `timeout_seconds`; `token` is the
/// authentication's.
pub fn parse_query(raw: Option<&str>) -> Result<SessionParams, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or_default())
        .map_err(|e| ApiError::bad_request(format!("malformed query string: {e}")))?;
    let mut command = None;
    let mut request = ExecuteCommandRequest {
        command: String::new(),
        args: Vec::new(),
        env: Default::default(),
        cwd: None,
        timeout_seconds: None,
    };
    let mut tty = false;
    let mut size = PtySize { cols: 80, rows: 24 };
    for (key, value) in pairs {
        match key.as_str() {
            "cmd" => command = Some(value),
            "arg" => request.args.push(value),
            "env" => {
                let (k, v) = value.split_once('=').ok_or_else(|| {
                    ApiError::bad_request(format!("env={value:?} is not KEY=VALUE"))
                })?;
                request.env.insert(k.to_string(), v.to_string());
            }
            "cwd" => request.cwd = Some(value),
            "tty" => tty = parse_bool(&key, &value)?,
            "cols" => size.cols = parse_number(&key, &value)?,
            "rows" => size.rows = parse_number(&key, &value)?,
            "timeout_seconds" => {
                let t: u64 = parse_number(&key, &value)?;
                if t == 0 || t > MAX_SESSION_SECONDS {
                    return Err(ApiError::bad_request(format!(
                        "timeout_seconds must be between 1 and {MAX_SESSION_SECONDS}"
                    )));
                }
                request.timeout_seconds = Some(t);
            }
            "token" => {}
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {other:?}"
                )));
            }
        }
    }
    request.command = command.ok_or_else(|| ApiError::bad_request("cmd is required"))?;
    let timeout = request.timeout_seconds.take();
    request.validate().map_err(ApiError::bad_request)?;
    request.timeout_seconds = timeout;
    validate_size(size.cols, size.rows)?;
    Ok(SessionParams {
        request,
        tty: tty.then_some(size),
    })
}

fn validate_size(cols: u32, rows: u32) -> Result<(), ApiError> {
    if !(1..=u32::from(u16::MAX)).contains(&cols) || !(1..=u32::from(u16::MAX)).contains(&rows) {
        return Err(ApiError::bad_request(format!(
            "terminal size {cols}x{rows}: cols and rows must be between 1 and 65535"
        )));
    }
    Ok(())
}

#[utoipa::path(
    get,
    path = "/api/v1/vms/{id}/exec/ws",
    tag = "executions",
    summary = "Interactive command over a WebSocket (like docker exec -it)",
    description = "A WebSocket upgrade (`Connection: Upgrade`, `Upgrade: websocket`). Client → server: binary frames are input; text frames are JSON controls `{\"type\":\"resize\",\"cols\",\"rows\"}`, `{\"type\":\"signal\",\"signal\":\"SIGTERM\"|\"SIGKILL\"|\"SIGINT\"}`, `{\"type\":\"stdin_eof\"}`. Server → client: `{\"type\":\"start\"}` first, binary output frames, `stderr`/`error` text frames, and `{\"type\":\"exit\"}` before a normal close. Authentication may also come as `?token=` on this route only. Not an HTTP request/response route: fuzzers should skip it.",
    params(
        ("id" = String, Path, description = "The VM's id or name"),
        ("cmd" = String, Query, description = "The command to run (required)"),
        ("arg" = Option<Vec<String>>, Query, explode = true, description = "An argument (repeatable, in order)"),
        ("env" = Option<Vec<String>>, Query, explode = true, description = "`KEY=VALUE` (repeatable)"),
        ("cwd" = Option<String>, Query, description = "Working directory"),
        ("tty" = Option<bool>, Query, description = "Run in a terminal"),
        ("cols" = Option<u16>, Query, minimum = 1, description = "Terminal columns (default 80)"),
        ("rows" = Option<u16>, Query, minimum = 1, description = "Terminal rows (default 24)"),
        ("timeout_seconds" = Option<u64>, Query, minimum = 1, maximum = 86400, description = "Kill the command after this many seconds; none: the session lasts as long as its client"),
        ("token" = Option<String>, Query, description = "The bearer token, for browsers (which cannot set headers on a WebSocket)"),
    ),
    responses(
        (status = 101, description = "Switching protocols: the WebSocket session"),
        (status = 400, description = "Bad parameters, or not a valid WebSocket upgrade request", body = aetherium_types::ErrorResponse),
        (status = 404, description = "No such VM", body = aetherium_types::ErrorResponse),
        (status = 409, description = "The VM is not RUNNING", body = aetherium_types::ErrorResponse),
        (status = 426, description = "The connection cannot be upgraded", body = aetherium_types::ErrorResponse),
        (status = 503, description = "The VM's agent did not answer", body = aetherium_types::ErrorResponse),
    ),
)]
pub async fn exec_ws(
    State(state): State<AppState>,
    axum::Extension(by): axum::Extension<aetherium_types::Principal>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let params = parse_query(query.as_deref())?;
    let vm = resolve_vm(&state, &id).await?;
    let (vm, agent) = state.platform.open_sandbox(&vm.id).await?;
    let upgrade = upgrade.map_err(|r| {
        ApiError::new(
            r.status(),
            format!("this route speaks WebSocket only: {}", r.body_text()),
        )
    })?;
    let session = Session {
        state,
        agent,
        vm_id: vm.id,
        params,
        by,
    };
    Ok(upgrade
        .max_message_size(MAX_MESSAGE_BYTES)
        .on_failed_upgrade(|e| tracing::debug!(error = %e, "WebSocket upgrade failed"))
        .on_upgrade(move |socket| session.run(socket)))
}

/// Server → client control messages.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ServerMessage<'a> {
    Start {
        execution_id: &'a str,
        pid: u32,
        tty: bool,
    },
    Stderr {
        #[serde(flatten)]
        chunk: Chunk,
    },
    Error {
        message: String,
    },
    Exit {
        execution_id: &'a str,
        exit_code: Option<i32>,
        status: ExecutionStatus,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

impl ServerMessage<'_> {
    fn to_message(&self) -> Message {
        let text = serde_json::to_string(self).unwrap_or_else(|e| {
            format!(r#"{{"type":"error","message":"cannot encode a message: {e}"}}"#)
        });
        Message::Text(text.into())
    }
}

/// Client → server control messages (text frames).
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum ClientMessage {
    Resize { cols: u32, rows: u32 },
    Signal { signal: String },
    StdinEof,
}

struct Session {
    state: AppState,
    agent: AgentClient,
    vm_id: String,
    params: SessionParams,
    /// Who opened the session (the execution is theirs; a key's quota counts it).
    by: aetherium_types::Principal,
}

impl Session {
    fn start_request(&self) -> StartRequest {
        Command::from(&self.params.request).start_request(Attach {
            tty: self.params.tty,
            stdin: true,
        })
    }

    async fn run(self, socket: WebSocket) {
        let (mut sink, source) = socket.split();
        let platform = self.state.platform.clone();
        // Recorded once the session exists, so a failed upgrade leaves no row behind.
        let request = &self.params.request;
        let mut execution = match platform
            .begin_direct_execution(
                &self.vm_id,
                &request.command,
                &request.args,
                "interactive",
                Some(&self.by),
            )
            .await
        {
            Ok(execution) => execution,
            Err(e) => {
                let _ = sink
                    .send(error_note(format!("cannot record the session: {e}")))
                    .await;
                let _ = sink
                    .send(Message::Close(Some(CloseFrame {
                        code: close_code::ERROR,
                        reason: "internal error".into(),
                    })))
                    .await;
                return;
            }
        };
        let mut capture = Capture::new(self.state.output_cap_bytes);
        let tty = self.params.tty.is_some();
        let execution_id = execution.id.clone();
        let outcome = match self.agent.start(&self.start_request()).await {
            Err(AgentError::Connect(e)) => Outcome::NotStarted {
                code: e.code,
                message: e.message,
            },
            Err(e) => Outcome::Failed(format!("the VM's agent did not answer: {e}")),
            Ok(mut process) => {
                let pid = process.pid();
                let start = ServerMessage::Start {
                    execution_id: &execution_id,
                    pid,
                    tty,
                };
                let _ = sink.send(start.to_message()).await;
                let (notes_tx, mut notes) = mpsc::channel::<Message>(16);
                let mut input = tokio::spawn(forward_input(
                    source,
                    self.agent.clone(),
                    pid,
                    tty,
                    notes_tx,
                ));
                let deadline = self
                    .params
                    .request
                    .timeout_seconds
                    .map(|t| Instant::now() + Duration::from_secs(t));
                let mut stderr = Utf8Chunker::default();
                let outcome = loop {
                    let timeout = async {
                        match deadline {
                            Some(at) => tokio::time::sleep_until(at).await,
                            None => std::future::pending().await,
                        }
                    };
                    let message = tokio::select! {
                        event = process.next() => match event {
                            Some(Ok(ProcessEvent::Data(DataEvent::Stdout(b) | DataEvent::Pty(b)))) => {
                                capture.stdout(&b.0);
                                Some(Message::Binary(b.0))
                            }
                            Some(Ok(ProcessEvent::Data(DataEvent::Stderr(b)))) => {
                                capture.stderr(&b.0);
                                stderr.push(&b.0).map(|chunk| ServerMessage::Stderr { chunk }.to_message())
                            }
                            Some(Ok(ProcessEvent::Start(_) | ProcessEvent::Keepalive(_))) => None,
                            Some(Ok(ProcessEvent::End(end))) => break Outcome::Ended(end),
                            Some(Err(e)) => break Outcome::Failed(format!("lost the command: {e}")),
                            None => break Outcome::Failed("the agent's stream ended without an end event".into()),
                        },
                        Some(note) = notes.recv() => Some(note),
                        _ = &mut input => {
                            kill(&self.agent, pid, &execution_id).await;
                            break Outcome::Failed("the client disconnected; the command was killed".into());
                        }
                        _ = timeout => {
                            kill(&self.agent, pid, &execution_id).await;
                            break Outcome::TimedOut { seconds: self.params.request.timeout_seconds.unwrap_or_default() };
                        }
                    };
                    if let Some(message) = message
                        && sink.send(message).await.is_err()
                    {
                        kill(&self.agent, pid, &execution_id).await;
                        break Outcome::Failed(
                            "the client disconnected; the command was killed".into(),
                        );
                    }
                };
                input.abort();
                if let Some(chunk) = stderr.flush() {
                    let _ = sink
                        .send(ServerMessage::Stderr { chunk }.to_message())
                        .await;
                }
                outcome
            }
        };
        record(&platform, &mut execution, &capture, &outcome).await;
        let (status, exit_code, error) = outcome.result();
        if let Outcome::NotStarted { message, .. } | Outcome::Failed(message) = &outcome {
            let error = ServerMessage::Error {
                message: message.clone(),
            };
            let _ = sink.send(error.to_message()).await;
        }
        let exit = ServerMessage::Exit {
            execution_id: &execution_id,
            exit_code,
            status,
            error,
        };
        let _ = sink.send(exit.to_message()).await;
        let _ = sink
            .send(Message::Close(Some(CloseFrame {
                code: close_code::NORMAL,
                reason: "exited".into(),
            })))
            .await;
    }
}

async fn kill(agent: &AgentClient, pid: u32, execution_id: &str) {
    if let Err(e) = agent.send_signal(pid, Signal::Sigkill).await {
        tracing::warn!(execution = %execution_id, pid, error = %e, "could not kill an interactive command");
    }
}

fn error_note(message: impl Into<String>) -> Message {
    ServerMessage::Error {
        message: message.into(),
    }
    .to_message()
}

/// Reads the client's messages and applies them to the process, in order, until the
/// client closes the socket (then returns).
async fn forward_input(
    mut source: SplitStream<WebSocket>,
    agent: AgentClient,
    pid: u32,
    tty: bool,
    notes: mpsc::Sender<Message>,
) {
    let selector = ProcessSelector::Pid(pid);
    while let Some(message) = source.next().await {
        let result = match message {
            Ok(Message::Binary(bytes)) => send_input(&agent, &selector, tty, bytes.to_vec()).await,
            Ok(Message::Text(text)) => match serde_json::from_str::<ClientMessage>(text.as_str()) {
                Ok(control) => apply(&agent, &selector, pid, tty, control).await,
                Err(e) => Err(format!("unknown control message: {e}")),
            },
            Ok(Message::Close(_)) | Err(_) => return,
            Ok(Message::Ping(_) | Message::Pong(_)) => Ok(()),
        };
        if let Err(message) = result {
            let _ = notes.send(error_note(message)).await;
        }
    }
}

async fn send_input(
    agent: &AgentClient,
    selector: &ProcessSelector,
    tty: bool,
    bytes: Vec<u8>,
) -> Result<(), String> {
    let input = if tty {
        ProcessInput::Pty(Base64Bytes(bytes))
    } else {
        ProcessInput::Stdin(Base64Bytes(bytes))
    };
    agent
        .send_input(selector.clone(), input)
        .await
        .map_err(|e| format!("input not delivered: {e}"))
}

async fn apply(
    agent: &AgentClient,
    selector: &ProcessSelector,
    pid: u32,
    tty: bool,
    control: ClientMessage,
) -> Result<(), String> {
    match control {
        ClientMessage::Resize { cols, rows } => {
            if !tty {
                return Err("resize needs a terminal session (tty=true)".into());
            }
            validate_size(cols, rows).map_err(|e| e.message)?;
            agent
                .update_pty(selector.clone(), cols, rows)
                .await
                .map_err(|e| format!("resize failed: {e}"))
        }
        ClientMessage::Signal { signal } => match signal.as_str() {
            "SIGTERM" | "TERM" => agent.send_signal(pid, Signal::Sigterm).await,
            "SIGKILL" | "KILL" => agent.send_signal(pid, Signal::Sigkill).await,
            // A terminal turns Ctrl-C into SIGINT for its foreground process group,
            // which is what a user pressing it means.
            "SIGINT" | "INT" if tty => {
                return send_input(agent, selector, tty, vec![INTERRUPT]).await;
            }
            "SIGINT" | "INT" => {
                return Err(
                    "SIGINT can be sent to terminal sessions only (tty=true); use SIGTERM or SIGKILL"
                        .into(),
                );
            }
            other => {
                return Err(format!(
                    "signal {other:?} is not supported: SIGTERM, SIGKILL or (with a terminal) SIGINT"
                ));
            }
        }
        .map_err(|e| format!("signal not delivered: {e}")),
        ClientMessage::StdinEof => {
            if tty {
                // A terminal has no end of input of its own: Ctrl-D at a line start.
                return send_input(agent, selector, tty, vec![0x04]).await;
            }
            agent
                .close_stdin(selector.clone())
                .await
                .map_err(|e| format!("closing stdin failed: {e}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_with_repeated_args_and_env() {
        let p = parse_query(Some(
            "cmd=bash&arg=-l&arg=-c&arg=echo%20hi&env=A%3D1&env=B=x%3Dy&tty=true&cols=100&rows=30&token=t",
        ))
        .expect("valid");
        assert_eq!(p.request.command, "bash");
        assert_eq!(p.request.args, ["-l", "-c", "echo hi"]);
        assert_eq!(p.request.env["A"], "1");
        assert_eq!(p.request.env["B"], "x=y");
        assert_eq!(
            p.tty,
            Some(PtySize {
                cols: 100,
                rows: 30
            })
        );
        let p = parse_query(Some("cmd=cat&timeout_seconds=3600")).expect("valid");
        assert_eq!(p.tty, None);
        assert_eq!(p.request.timeout_seconds, Some(3600));
    }

    #[test]
    fn bad_queries_are_400() {
        for q in [
            "",
            "arg=x",
            "cmd=",
            "cmd=sh&tty=maybe",
            "cmd=sh&cols=0&tty=1",
            "cmd=sh&rows=x",
            "cmd=sh&env=NOEQUALS",
            "cmd=sh&timeout_seconds=0",
            "cmd=sh&what=1",
        ] {
            let e = parse_query(Some(q)).expect_err(q);
            assert_eq!(e.status, http::StatusCode::BAD_REQUEST, "{q}");
        }
    }

    #[test]
    fn control_messages() {
        let m: ClientMessage =
            serde_json::from_str(r#"{"type":"resize","cols":120,"rows":40}"#).expect("resize");
        assert!(matches!(
            m,
            ClientMessage::Resize {
                cols: 120,
                rows: 40
            }
        ));
        let m: ClientMessage = serde_json::from_str(r#"{"type":"stdin_eof"}"#).expect("eof");
        assert!(matches!(m, ClientMessage::StdinEof));
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"resize"}"#).is_err());
    }
}
