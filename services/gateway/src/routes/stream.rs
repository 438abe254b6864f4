//! `POST /vms/{id}/exec/stream`: run a command on a RUNNING VM and stream its output
//! as it happens, as NDJSON (default) or Server-Sent Events (`Accept:
//! text/event-stream`).
//!
//! The command is driven by a task of its own, not by the response: when the client
//! goes away, the command runs on to its end (or its timeout) and is recorded all the
//! same, like `nohup`. Scripts that lose their connection still find the result in
//! `GET /executions/{id}`.

use std::convert::Infallible;
use std::time::Duration;

use aetherium_core::Platform;
use aetherium_core::agent_client::{AgentClient, AgentError, ProcessStream};
use aetherium_types::agent::{DataEvent, ProcessEvent, Signal};
use aetherium_types::{ExecuteCommandRequest, Execution, ExecutionStatus};
use axum::body::Body;
use axum::extract::State;

use crate::extract::Path;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt as _;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::direct::{Chunk, Utf8Chunker, record};
use super::{ApiResult, resolve_vm};
use crate::AppState;
use crate::error::ApiError;
use crate::extract::Json;
use aetherium_core::services::engine::{Attach, Capture, Command, Outcome};

/// Events buffered between the command and a slow client before the command's
/// output waits (and, through the agent, the command itself).
const EVENT_BUFFER: usize = 64;

/// One line of the NDJSON stream (or one SSE event, named by `type`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamEvent {
    Start {
        execution_id: String,
        pid: u32,
    },
    Stdout {
        #[serde(flatten)]
        chunk: Chunk,
    },
    Stderr {
        #[serde(flatten)]
        chunk: Chunk,
    },
    End {
        execution_id: String,
        /// The exit code; 128+N when killed by signal N; 127/126 when it could not
        /// start; null on timeout.
        exit_code: Option<i32>,
        /// The execution's status: `completed`, `failed` or `timed_out`.
        status: ExecutionStatus,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    Error {
        message: String,
    },
}

impl StreamEvent {
    fn name(&self) -> &'static str {
        match self {
            StreamEvent::Start { .. } => "start",
            StreamEvent::Stdout { .. } => "stdout",
            StreamEvent::Stderr { .. } => "stderr",
            StreamEvent::End { .. } => "end",
            StreamEvent::Error { .. } => "error",
        }
    }

    fn end(execution: &Execution, outcome: &Outcome) -> StreamEvent {
        let (status, exit_code, error) = outcome.result();
        StreamEvent::End {
            execution_id: execution.id.clone(),
            exit_code,
            status,
            error,
        }
    }
}

fn wants_sse(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"))
}

#[utoipa::path(
    post,
    path = "/api/v1/vms/{id}/exec/stream",
    tag = "executions",
    summary = "Run a command and stream its output (NDJSON or SSE)",
    description = "Runs the command at once on the VM's agent (no queue) and answers with one `StreamEvent` JSON object per line (`application/x-ndjson`), written as the command produces output; with `Accept: text/event-stream` the same objects come as Server-Sent Events (`event: <type>`, `data: <object>`). The last line is `end`. If the client disconnects, the command runs on and is recorded.",
    params(
        ("id" = String, Path, description = "The VM's id or name"),
    ),
    request_body = ExecuteCommandRequest,
    responses(
        (status = 200, description = "The stream: one StreamEvent per line (NDJSON), or per SSE event", content(
            (StreamEvent = "application/x-ndjson"),
            (String = "text/event-stream"),
        )),
        (status = 404, description = "No such VM", body = aetherium_types::ErrorResponse),
        (status = 409, description = "The VM is not RUNNING", body = aetherium_types::ErrorResponse),
        (status = 503, description = "The VM's agent did not answer", body = aetherium_types::ErrorResponse),
    )
)]
pub async fn exec_stream(
    State(state): State<AppState>,
    axum::Extension(by): axum::Extension<aetherium_types::Principal>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(req): Json<ExecuteCommandRequest>,
) -> ApiResult<Response> {
    req.validate().map_err(ApiError::bad_request)?;
    let vm = resolve_vm(&state, &id).await?;
    let (vm, agent) = state.platform.open_sandbox(&vm.id).await?;
    let timeout_seconds = req
        .timeout_seconds
        .unwrap_or(state.platform.defaults.exec_timeout_seconds);
    let mut execution = state
        .platform
        .begin_direct_execution(&vm.id, &req.command, &req.args, "stream", Some(&by))
        .await?;
    let capture = Capture::new(state.output_cap_bytes);
    let (tx, rx) = mpsc::channel(EVENT_BUFFER);
    match agent
        .start(&Command::from(&req).start_request(Attach::default()))
        .await
    {
        Ok(process) => {
            let run = Run {
                platform: state.platform.clone(),
                agent,
                execution,
                capture,
                timeout_seconds,
                tx: Some(tx),
            };
            tokio::spawn(run.drive(process));
        }
        Err(AgentError::Connect(e)) => {
            // Not startable (unknown executable, bad cwd): a result, like a shell's 127.
            let outcome = Outcome::NotStarted {
                code: e.code,
                message: e.message,
            };
            record(&state.platform, &mut execution, &capture, &outcome).await;
            let _ = tx.try_send(StreamEvent::end(&execution, &outcome));
        }
        Err(e) => {
            let outcome = Outcome::Failed(e.to_string());
            record(&state.platform, &mut execution, &capture, &outcome).await;
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the VM's agent did not answer: {e}"),
            ));
        }
    }
    let events = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|event| (event, rx))
    });
    if wants_sse(&headers) {
        let events = events.map(|event| {
            let sse = SseEvent::default().event(event.name());
            Ok::<_, Infallible>(match sse.json_data(&event) {
                Ok(sse) => sse,
                Err(e) => SseEvent::default()
                    .event("error")
                    .data(format!("cannot encode an event: {e}")),
            })
        });
        return Ok(Sse::new(events)
            .keep_alive(KeepAlive::default())
            .into_response());
    }
    let lines = events.map(|event| {
        let mut line = serde_json::to_vec(&event).unwrap_or_else(|e| {
            format!(r#"{{"type":"error","message":"cannot encode an event: {e}"}}"#).into_bytes()
        });
        line.push(b'\n');
        Ok::<_, Infallible>(Bytes::from(line))
    });
    let mut response = Body::from_stream(lines).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    // Tell buffering proxies (nginx) to pass lines through as they come.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// A started command, followed to its end by a task of its own.
struct Run {
    platform: Platform,
    agent: AgentClient,
    execution: Execution,
    capture: Capture,
    timeout_seconds: u64,
    /// `None` once the client has gone.
    tx: Option<mpsc::Sender<StreamEvent>>,
}

impl Run {
    /// Sends an event unless the client has gone; gives up at `deadline`.
    async fn send(&mut self, event: StreamEvent, deadline: Instant) -> Result<(), TimedOut> {
        let Some(tx) = &self.tx else { return Ok(()) };
        tokio::select! {
            sent = tx.send(event) => {
                if sent.is_err() {
                    tracing::debug!(execution = %self.execution.id, "stream client gone; the command runs on");
                    self.tx = None;
                }
                Ok(())
            }
            _ = tokio::time::sleep_until(deadline) => Err(TimedOut),
        }
    }

    async fn drive(mut self, mut process: ProcessStream) {
        let pid = process.pid();
        let deadline = Instant::now() + Duration::from_secs(self.timeout_seconds.max(1));
        let mut stdout = Utf8Chunker::default();
        let mut stderr = Utf8Chunker::default();
        let outcome = loop {
            let next = tokio::select! {
                next = process.next() => next,
                _ = tokio::time::sleep_until(deadline) => break self.timed_out(pid).await,
            };
            let event = match next {
                Some(Ok(ProcessEvent::Start(start))) => Some(StreamEvent::Start {
                    execution_id: self.execution.id.clone(),
                    pid: start.pid,
                }),
                Some(Ok(ProcessEvent::Data(DataEvent::Stdout(bytes) | DataEvent::Pty(bytes)))) => {
                    self.capture.stdout(&bytes.0);
                    stdout
                        .push(&bytes.0)
                        .map(|chunk| StreamEvent::Stdout { chunk })
                }
                Some(Ok(ProcessEvent::Data(DataEvent::Stderr(bytes)))) => {
                    self.capture.stderr(&bytes.0);
                    stderr
                        .push(&bytes.0)
                        .map(|chunk| StreamEvent::Stderr { chunk })
                }
                Some(Ok(ProcessEvent::Keepalive(_))) => None,
                Some(Ok(ProcessEvent::End(end))) => break Outcome::Ended(end),
                Some(Err(e)) => break Outcome::Failed(format!("lost the command: {e}")),
                None => {
                    break Outcome::Failed("the agent's stream ended without an end event".into());
                }
            };
            if let Some(event) = event
                && self.send(event, deadline).await.is_err()
            {
                break self.timed_out(pid).await;
            }
        };
        // What was held back waiting for the rest of a character goes out as is.
        let far_future = Instant::now() + Duration::from_secs(5);
        if let Some(chunk) = stdout.flush() {
            let _ = self.send(StreamEvent::Stdout { chunk }, far_future).await;
        }
        if let Some(chunk) = stderr.flush() {
            let _ = self.send(StreamEvent::Stderr { chunk }, far_future).await;
        }
        let platform = self.platform.clone();
        record(&platform, &mut self.execution, &self.capture, &outcome).await;
        if let Outcome::Failed(message) = &outcome {
            let message = message.clone();
            let _ = self.send(StreamEvent::Error { message }, far_future).await;
        }
        let end = StreamEvent::end(&self.execution, &outcome);
        let _ = self.send(end, far_future).await;
    }

    async fn timed_out(&self, pid: u32) -> Outcome {
        if let Err(e) = self.agent.send_signal(pid, Signal::Sigkill).await {
            tracing::warn!(execution = %self.execution.id, pid, error = %e, "could not kill a timed-out command");
        }
        Outcome::TimedOut {
            seconds: self.timeout_seconds,
        }
    }
}

struct TimedOut;
