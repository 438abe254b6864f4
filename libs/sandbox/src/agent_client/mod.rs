//! Host-side client of the in-sandbox agent (`services/agent`), which speaks E2B
//! envd's API: the Connect services `process.Process` and `filesystem.Filesystem`
//! (here with the protobuf codec; message types in [`aetherium_types::agent`]) and
//! the HTTP routes `/files`, `/init`, plus our `/secrets`.
//!
//! One HTTP/1.1 connection per call, over a unix socket (containers), TCP,
//! Firecracker's hybrid vsock (a unix socket plus a `CONNECT <port>` handshake), or
//! another worker's tunnel endpoint (TCP plus an authenticated `CONNECT <vm>`
//! handshake: [`crate::tunnel`]), for a sandbox that lives on another host.
//! Calls carry no timeout of their own (a process may legitimately run for hours);
//! wrap them in `tokio::time::timeout` where needed. [`AgentClient::wait_ready`] is
//! the exception: it bounds itself.

mod transport;
mod wire;

use std::collections::BTreeMap;
use std::fmt;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use aetherium_types::agent::{
    CONNECT_END_STREAM_FLAG, CONNECT_STREAM_PROTO, CloseStdinRequest, Codec, ConnectError,
    ConnectRequest, DataEvent, Empty, EndStreamMessage, EntryInfo, EntryResponse,
    FILESYSTEM_LIST_DIR_PATH, FILESYSTEM_MAKE_DIR_PATH, FILESYSTEM_REMOVE_PATH,
    FILESYSTEM_STAT_PATH, ListDirRequest, ListDirResponse, ListResponse, MAX_ENVELOPE_BYTES,
    PROCESS_CLOSE_STDIN_PATH, PROCESS_CONNECT_PATH, PROCESS_LIST_PATH, PROCESS_SEND_INPUT_PATH,
    PROCESS_SEND_SIGNAL_PATH, PROCESS_START_PATH, PROCESS_STREAM_INPUT_PATH, PROCESS_UPDATE_PATH,
    PathRequest, ProcessEvent, ProcessInfo, ProcessInput, ProcessSelector, Pty, PtySize,
    SendInputRequest, SendSignalRequest, Signal, StartRequest, StartResponse, StreamInputData,
    StreamInputRequest, StreamInputStart, UpdateRequest, WireMessage, code, envelope,
    envelope_header, split_envelope,
};
use bytes::{Buf, Bytes, BytesMut};
use futures::{Stream, StreamExt as _};
use http::header::{CONTENT_TYPE, HOST};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited, StreamBody};
use hyper::body::{Body as _, Frame, Incoming};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::cluster_tls::ClusterTls;
use crate::tunnel::{self, TunnelSecret};
pub use crate::tunnel::{AgentIo, AgentStream};
use transport::*;
use wire::*;
pub use wire::{Download, Forwarded, ProcessStream, RunOutput};

/// Bound on unary response bodies and on error bodies (a process list is the largest).
const MAX_UNARY_RESPONSE_BYTES: usize = MAX_ENVELOPE_BYTES;
/// Envelope flag of a compressed message; we never ask for compression.
const COMPRESSED_FLAG: u8 = 0x01;
/// The codec of our Connect calls (smaller and faster than JSON).
const CODEC: Codec = Codec::Proto;
/// Longest line the hybrid-vsock handshake may answer.
const MAX_HANDSHAKE_LINE: usize = 64;

/// Every request body this client sends.
type RequestBody = UnsyncBoxBody<Bytes, std::io::Error>;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The agent could not be reached, or the connection broke (socket missing,
    /// connection refused, agent died mid-stream).
    #[error("agent unavailable: {0}")]
    Unavailable(String),
    /// The agent refused the call with a Connect error (e.g. `not_found` for an
    /// unknown executable or pid).
    #[error("agent error: {0}")]
    Connect(ConnectError),
    /// The agent answered something this client cannot make sense of.
    #[error("agent protocol error: {0}")]
    Protocol(String),
}

/// An access token, never printed.
#[derive(Clone, PartialEq, Eq)]
struct Token(String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Client of one sandbox's agent. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentClient {
    transport: Transport,
    access_token: Option<Token>,
    /// The user requests run as (`None`: the agent's default user).
    user: Option<String>,
}

/// `POST /init`: what the host tells a fresh agent (envd's fields).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InitOptions {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub env_vars: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
    /// RFC 3339; the agent sets its clock forward to it when it can (microVMs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_workdir: Option<String>,
}

impl AgentClient {
    fn new(transport: Transport) -> Self {
        AgentClient {
            transport,
            access_token: None,
            user: None,
        }
    }

    /// An agent listening on a unix socket (containers: a bind-mounted directory).
    pub fn unix(path: impl Into<PathBuf>) -> Self {
        AgentClient::new(Transport::Unix(path.into()))
    }

    /// An agent listening on TCP (`aetherium-agent --listen tcp:IP:PORT`).
    pub fn tcp(addr: SocketAddr) -> Self {
        AgentClient::new(Transport::Tcp(addr))
    }

    /// An agent in a microVM, reached through the VMM's hybrid-vsock unix socket
    /// and the guest port the agent listens on.
    pub fn hybrid_vsock(uds_path: impl Into<PathBuf>, port: u32) -> Self {
        AgentClient::new(Transport::HybridVsock(uds_path.into(), port))
    }

    /// An agent on another worker, reached through that worker's tunnel endpoint
    /// (`addr`: its advertised `host:port`, [`aetherium_types::Worker::address`]),
    /// which checks that it owns `vm_id` and authenticates this side with `secret`
    /// (the cluster's shared tunnel secret) before splicing the connection to the
    /// VM's agent. See [`crate::tunnel`]; [`crate::tunnel::RemoteAgents`] builds these.
    pub fn tunnel(addr: impl Into<String>, vm_id: impl Into<String>, secret: TunnelSecret) -> Self {
        AgentClient::new(Transport::Tunnel {
            addr: addr.into(),
            vm_id: vm_id.into(),
            secret,
            tls: None,
        })
    }

    /// Speaks TLS to a tunnel endpoint, whose certificate must name `worker_id`
    /// (the VM's owner) and chain to the cluster CA; presents this process's own.
    /// No effect on other transports.
    pub fn with_tunnel_tls(mut self, tls: ClusterTls, worker_id: impl Into<String>) -> Self {
        if let Transport::Tunnel { tls: slot, .. } = &mut self.transport {
            *slot = Some((tls, worker_id.into()));
        }
        self
    }

    /// A raw byte stream to the agent, past the transport's handshake (hybrid
    /// vsock, tunnel): the tunnel server splices it to a remote client. The agent
    /// expects HTTP/1.1 or h2c on it. Access tokens are not involved: they are HTTP
    /// headers, sent by whoever speaks HTTP on the stream.
    pub async fn open_stream(&self) -> Result<AgentStream, AgentError> {
        self.transport.connect().await
    }

    /// Sends `X-Access-Token` with every call (agents started with `--access-token`
    /// or initialised with one).
    pub fn with_access_token(mut self, token: impl Into<String>) -> Self {
        self.access_token = Some(Token(token.into()));
        self
    }

    /// The token this client presents (`X-Access-Token`), if the agent has one:
    /// what E2B's SDKs present as `envdAccessToken` when they reach the agent
    /// through the gateway.
    pub fn access_token(&self) -> Option<&str> {
        self.access_token.as_ref().map(|Token(t)| t.as_str())
    }

    /// Sends `request` (any method, path and body, e.g. an envd call relayed for an
    /// SDK) on a connection of its own, with this client's access token in place of
    /// whatever `X-Access-Token` it carried, and answers with the agent's response as
    /// it arrives. Both bodies stream: the request's is read as the agent takes it,
    /// the response's as the caller reads it; dropping the response (the caller went
    /// away) closes the connection.
    pub async fn forward<B>(&self, request: Request<B>) -> Result<Response<Forwarded>, AgentError>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (mut parts, body) = request.into_parts();
        parts.headers.remove("x-access-token");
        if let Some(Token(token)) = &self.access_token {
            let value = http::HeaderValue::from_str(token)
                .map_err(|e| AgentError::Protocol(format!("access token: {e}")))?;
            parts.headers.insert("x-access-token", value);
        }
        // HTTP/1.1 wants a Host; the agent does not look at it.
        parts
            .headers
            .insert(HOST, http::HeaderValue::from_static("localhost"));
        let body = body
            .map_err(|e| std::io::Error::other(e.into()))
            .boxed_unsync();
        let (response, connection) = self
            .exchange(Request::from_parts(parts, body), Drive::Task)
            .await?;
        Ok(response.map(|body| Forwarded {
            body,
            _connection: connection,
        }))
    }

    /// `GET /metrics`: what the sandbox uses now (CPU, memory, disk).
    pub async fn usage(&self) -> Result<aetherium_types::agent::SandboxUsage, AgentError> {
        let (response, _connection) = self.send(Method::GET, "/metrics", None, empty()).await?;
        let status = response.status();
        if status != StatusCode::OK {
            return Err(error_response(status, response.into_body()).await);
        }
        let body = read_body(response.into_body(), MAX_UNARY_RESPONSE_BYTES).await?;
        serde_json::from_slice(&body)
            .map_err(|e| AgentError::Protocol(format!("malformed /metrics response: {e}")))
    }

    /// Hands the agent this client's access token (`POST /init`), so that it
    /// requires the token from now on: microVM agents start without one. An agent
    /// that already has this token accepts it again; one with another answers 409.
    /// Does nothing for a client without a token.
    pub async fn claim(&self) -> Result<(), AgentError> {
        let Some(Token(token)) = &self.access_token else {
            return Ok(());
        };
        self.init(&InitOptions {
            access_token: Some(token.clone()),
            ..InitOptions::default()
        })
        .await
    }

    /// Runs every process and file operation as `user` (envd's way: HTTP Basic
    /// `user:` on Connect calls, `?username=` on `/files`) instead of the agent's
    /// default user. The user must exist in the sandbox.
    pub fn with_user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// The `&username=` of `/files` calls.
    fn username_query(&self) -> String {
        match &self.user {
            Some(user) => format!("&username={}", percent_encode(user)),
            None => String::new(),
        }
    }

    /// `GET /health`: Ok when the agent answers 2xx.
    pub async fn health(&self) -> Result<(), AgentError> {
        let (response, _connection) = self.send(Method::GET, "/health", None, empty()).await?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(AgentError::Unavailable(format!(
                "agent at {} is unhealthy: HTTP {status}",
                self.transport
            )))
        }
    }

    /// Polls [`health`](Self::health) until it succeeds or `timeout` passes. Meant for
    /// right after a sandbox starts, while the socket may not exist yet. Only
    /// unavailability is retried; any other error is returned at once.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), AgentError> {
        let deadline = Instant::now() + timeout;
        let mut backoff = Duration::from_millis(10);
        loop {
            let last_error = match tokio::time::timeout_at(deadline, self.health()).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(AgentError::Unavailable(e))) => e,
                Ok(Err(e)) => return Err(e),
                Err(_) => "health check timed out".to_string(),
            };
            if Instant::now() + backoff >= deadline {
                return Err(AgentError::Unavailable(format!(
                    "agent not ready after {timeout:?}: {last_error}"
                )));
            }
            tracing::trace!(agent = %self.transport, error = %last_error, "agent not ready yet");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(250));
        }
    }

    /// `process.Process/Start`. A process that cannot be spawned (unknown
    /// executable, bad cwd) fails here with [`AgentError::Connect`]; otherwise the
    /// returned stream yields the start event, output, keepalives and the end event.
    /// The process keeps running if the stream is dropped.
    pub async fn start(&self, request: &StartRequest) -> Result<ProcessStream, AgentError> {
        self.server_stream(PROCESS_START_PATH, request).await
    }

    /// `process.Process/Connect`: a new stream of a running process's events (the
    /// start event, then its output from now on, then its end), by pid or tag.
    pub async fn connect(&self, selector: ProcessSelector) -> Result<ProcessStream, AgentError> {
        let request = ConnectRequest {
            process: Some(selector),
        };
        self.server_stream(PROCESS_CONNECT_PATH, &request).await
    }

    async fn server_stream<M: WireMessage>(
        &self,
        path: &str,
        message: &M,
    ) -> Result<ProcessStream, AgentError> {
        let body = envelope(0, &CODEC.encode(message));
        let (response, mut connection) = self
            .send_driven(
                Method::POST,
                path,
                Some(CODEC.stream_content_type()),
                full(body),
                Drive::Inline,
            )
            .await?;
        let status = response.status();
        if status != StatusCode::OK {
            connection.detach();
            return Err(error_response(status, response.into_body()).await);
        }
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !content_type.starts_with(CONNECT_STREAM_PROTO) {
            return Err(AgentError::Protocol(format!(
                "{path} answered with content type {content_type:?}"
            )));
        }
        let mut stream = ProcessStream {
            body: response.into_body(),
            buf: BytesMut::new(),
            pending: None,
            pid: 0,
            finished: false,
            connection,
        };
        // The first message is the start event, or the end of the stream carrying
        // the error.
        match poll_fn(|cx| stream.poll_message(cx)).await? {
            Message::Event(ProcessEvent::Start(start)) => {
                stream.pid = start.pid;
                stream.pending = Some(ProcessEvent::Start(start));
                Ok(stream)
            }
            Message::End(EndStreamMessage { error: Some(e) }) => Err(AgentError::Connect(e)),
            other => Err(AgentError::Protocol(format!(
                "{path} stream began with {other:?} instead of a start event"
            ))),
        }
    }

    /// `process.Process/SendSignal` to the process group of `pid`.
    pub async fn send_signal(&self, pid: u32, signal: Signal) -> Result<(), AgentError> {
        self.signal(ProcessSelector::Pid(pid), signal).await
    }

    /// `process.Process/SendSignal` to the process group a selector names.
    pub async fn signal(
        &self,
        selector: ProcessSelector,
        signal: Signal,
    ) -> Result<(), AgentError> {
        let request = SendSignalRequest {
            process: Some(selector),
            signal: signal as i32,
        };
        let Empty {} = self.unary(PROCESS_SEND_SIGNAL_PATH, &request).await?;
        Ok(())
    }

    /// `process.Process/List`: the processes started through the agent that still run.
    pub async fn list(&self) -> Result<Vec<ProcessInfo>, AgentError> {
        let response: ListResponse = self.unary(PROCESS_LIST_PATH, &Empty {}).await?;
        Ok(response.processes)
    }

    /// `process.Process/SendInput`: bytes to a process's stdin pipe or terminal.
    /// Returns once the process has taken them.
    pub async fn send_input(
        &self,
        selector: ProcessSelector,
        input: ProcessInput,
    ) -> Result<(), AgentError> {
        let request = SendInputRequest {
            process: Some(selector),
            input: Some(input),
        };
        let Empty {} = self.unary(PROCESS_SEND_INPUT_PATH, &request).await?;
        Ok(())
    }

    /// `process.Process/StreamInput`: a client stream of input for one process,
    /// delivered in order; returns once `input` ends and the agent has written it
    /// all.
    pub async fn stream_input<S>(
        &self,
        selector: ProcessSelector,
        input: S,
    ) -> Result<(), AgentError>
    where
        S: Stream<Item = ProcessInput> + Send + 'static,
    {
        let start = StreamInputRequest::Start(StreamInputStart {
            process: Some(selector),
        });
        let messages = futures::stream::iter([start]).chain(
            input.map(|input| StreamInputRequest::Data(StreamInputData { input: Some(input) })),
        );
        let frames = messages.map(|message| {
            Ok::<_, std::io::Error>(Frame::data(Bytes::from(envelope(
                0,
                &CODEC.encode(&message),
            ))))
        });
        let body = StreamBody::new(frames).boxed_unsync();
        let (response, connection) = self
            .send(
                Method::POST,
                PROCESS_STREAM_INPUT_PATH,
                Some(CODEC.stream_content_type()),
                body,
            )
            .await?;
        let status = response.status();
        if status != StatusCode::OK {
            return Err(error_response(status, response.into_body()).await);
        }
        // The response is a stream: the (empty) response message, then the end.
        let mut stream = ProcessStream {
            body: response.into_body(),
            buf: BytesMut::new(),
            pending: None,
            pid: 0,
            finished: false,
            connection,
        };
        loop {
            match poll_fn(|cx| stream.poll_raw(cx)).await? {
                (flags, _) if flags & CONNECT_END_STREAM_FLAG == 0 => continue,
                (_, mut message) => {
                    let message = message.copy_to_bytes(message.remaining());
                    let end: EndStreamMessage = serde_json::from_slice(&message).map_err(|e| {
                        AgentError::Protocol(format!("malformed end of stream: {e}"))
                    })?;
                    return match end.error {
                        Some(e) => Err(AgentError::Connect(e)),
                        None => Ok(()),
                    };
                }
            }
        }
    }

    /// `process.Process/CloseStdin`: EOF on a process's stdin pipe.
    pub async fn close_stdin(&self, selector: ProcessSelector) -> Result<(), AgentError> {
        let request: CloseStdinRequest = ConnectRequest {
            process: Some(selector),
        };
        let Empty {} = self.unary(PROCESS_CLOSE_STDIN_PATH, &request).await?;
        Ok(())
    }

    /// `process.Process/Update`: resizes a process's terminal.
    pub async fn update_pty(
        &self,
        selector: ProcessSelector,
        cols: u32,
        rows: u32,
    ) -> Result<(), AgentError> {
        let request = UpdateRequest {
            process: Some(selector),
            pty: Some(Pty {
                size: PtySize { cols, rows },
            }),
        };
        let Empty {} = self.unary(PROCESS_UPDATE_PATH, &request).await?;
        Ok(())
    }

    /// `filesystem.Filesystem/Stat`.
    pub async fn stat(&self, path: &str) -> Result<EntryInfo, AgentError> {
        let response: EntryResponse = self
            .unary(FILESYSTEM_STAT_PATH, &PathRequest { path: path.into() })
            .await?;
        response
            .entry
            .ok_or_else(|| AgentError::Protocol("Stat answered without an entry".into()))
    }

    /// `filesystem.Filesystem/ListDir`, `depth` levels down (0 means 1).
    pub async fn list_dir(&self, path: &str, depth: u32) -> Result<Vec<EntryInfo>, AgentError> {
        let request = ListDirRequest {
            path: path.into(),
            depth,
        };
        let response: ListDirResponse = self.unary(FILESYSTEM_LIST_DIR_PATH, &request).await?;
        Ok(response.entries)
    }

    /// `filesystem.Filesystem/MakeDir` (with parents). An existing directory is
    /// [`AgentError::Connect`] with `already_exists`.
    pub async fn make_dir(&self, path: &str) -> Result<EntryInfo, AgentError> {
        let response: EntryResponse = self
            .unary(FILESYSTEM_MAKE_DIR_PATH, &PathRequest { path: path.into() })
            .await?;
        response
            .entry
            .ok_or_else(|| AgentError::Protocol("MakeDir answered without an entry".into()))
    }

    /// `filesystem.Filesystem/Remove`: a file or a directory with its contents;
    /// nothing to remove is fine.
    pub async fn remove(&self, path: &str) -> Result<(), AgentError> {
        let Empty {} = self
            .unary(FILESYSTEM_REMOVE_PATH, &PathRequest { path: path.into() })
            .await?;
        Ok(())
    }

    /// `POST /files?path=` with the raw body: streams `body` into the file (parent
    /// directories created, an existing file overwritten), in constant memory on
    /// both sides.
    pub async fn upload<S>(&self, path: &str, body: S) -> Result<(), AgentError>
    where
        S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    {
        let body = StreamBody::new(body.map(|chunk| chunk.map(Frame::data))).boxed_unsync();
        let (response, _connection) = self
            .send(
                Method::POST,
                &format!(
                    "/files?path={}{}",
                    percent_encode(path),
                    self.username_query()
                ),
                Some("application/octet-stream"),
                body,
            )
            .await?;
        let status = response.status();
        if status != StatusCode::OK {
            return Err(error_response(status, response.into_body()).await);
        }
        // The list of written files; read to complete the exchange.
        read_body(response.into_body(), MAX_UNARY_RESPONSE_BYTES).await?;
        Ok(())
    }

    /// `GET /files?path=`: the file's bytes as they arrive.
    pub async fn download(&self, path: &str) -> Result<Download, AgentError> {
        let (response, mut connection) = self
            .send_driven(
                Method::GET,
                &format!(
                    "/files?path={}{}",
                    percent_encode(path),
                    self.username_query()
                ),
                None,
                empty(),
                Drive::Inline,
            )
            .await?;
        let status = response.status();
        if status != StatusCode::OK {
            connection.detach();
            return Err(error_response(status, response.into_body()).await);
        }
        Ok(Download {
            body: response.into_body(),
            connection,
        })
    }

    /// `POST /init`.
    pub async fn init(&self, options: &InitOptions) -> Result<(), AgentError> {
        let body = serde_json::to_vec(options)
            .map_err(|e| AgentError::Protocol(format!("encoding /init: {e}")))?;
        self.plain(Method::POST, "/init", Some(body)).await
    }

    /// Our `POST /secrets`: variables injected into every process from now on, kept
    /// in the agent's memory only.
    pub async fn set_secrets(&self, secrets: &BTreeMap<String, String>) -> Result<(), AgentError> {
        let body = serde_json::to_vec(secrets)
            .map_err(|e| AgentError::Protocol(format!("encoding secrets: {e}")))?;
        self.plain(Method::POST, "/secrets", Some(body)).await
    }

    /// Our `DELETE /secrets[?name=]`: one secret, or all.
    pub async fn delete_secrets(&self, name: Option<&str>) -> Result<(), AgentError> {
        let path = match name {
            Some(name) => format!("/secrets?name={}", percent_encode(name)),
            None => "/secrets".to_string(),
        };
        self.plain(Method::DELETE, &path, None).await
    }

    /// A plain HTTP call whose success is any 2xx.
    async fn plain(
        &self,
        method: Method,
        path: &str,
        json: Option<Vec<u8>>,
    ) -> Result<(), AgentError> {
        let (content_type, body) = match json {
            Some(json) => (Some("application/json"), full(json)),
            None => (None, empty()),
        };
        let (response, _connection) = self.send(method, path, content_type, body).await?;
        let status = response.status();
        if status.is_success() {
            read_body(response.into_body(), MAX_UNARY_RESPONSE_BYTES).await?;
            Ok(())
        } else {
            Err(error_response(status, response.into_body()).await)
        }
    }

    /// Starts a process and collects its output, keeping at most `output_cap_bytes`
    /// of stdout and of stderr each (the rest is read and discarded, and `truncated`
    /// set).
    pub async fn run(
        &self,
        request: &StartRequest,
        output_cap_bytes: usize,
    ) -> Result<RunOutput, AgentError> {
        let mut stream = self.start(request).await?;
        let mut output = RunOutput {
            pid: stream.pid(),
            ..RunOutput::default()
        };
        let mut end = None;
        while let Some(event) = stream.next().await {
            let (sink, bytes) = match event? {
                ProcessEvent::Data(DataEvent::Stdout(bytes) | DataEvent::Pty(bytes)) => {
                    (&mut output.stdout, bytes.0)
                }
                ProcessEvent::Data(DataEvent::Stderr(bytes)) => (&mut output.stderr, bytes.0),
                ProcessEvent::End(event) => {
                    end = Some(event);
                    continue;
                }
                ProcessEvent::Start(_) | ProcessEvent::Keepalive(_) => continue,
            };
            let room = output_cap_bytes.saturating_sub(sink.len());
            sink.extend_from_slice(&bytes[..room.min(bytes.len())]);
            output.truncated |= bytes.len() > room;
        }
        let end = end.ok_or_else(|| {
            AgentError::Protocol("Start stream ended without an end event".into())
        })?;
        output.exit_code = end.exited.then_some(end.exit_code);
        output.exited = end.exited;
        output.status = end.status;
        output.error = end.error;
        Ok(output)
    }

    /// A Connect unary call with the protobuf codec.
    async fn unary<Req: WireMessage, Resp: WireMessage>(
        &self,
        path: &str,
        request: &Req,
    ) -> Result<Resp, AgentError> {
        let body = full(CODEC.encode(request));
        let (response, _connection) = self
            .send(Method::POST, path, Some(CODEC.unary_content_type()), body)
            .await?;
        let status = response.status();
        if status != StatusCode::OK {
            return Err(error_response(status, response.into_body()).await);
        }
        let body = read_body(response.into_body(), MAX_UNARY_RESPONSE_BYTES).await?;
        CODEC
            .decode(&body)
            .map_err(|e| AgentError::Protocol(format!("malformed {path} response: {e}")))
    }

    /// Opens a connection and sends one request on it, the connection driven by a
    /// task of its own.
    async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&'static str>,
        body: RequestBody,
    ) -> Result<(Response<Incoming>, Connection), AgentError> {
        self.send_driven(method, path, content_type, body, Drive::Task)
            .await
    }

    /// Opens a connection and sends one request on it.
    async fn send_driven(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&'static str>,
        body: RequestBody,
        drive_by: Drive,
    ) -> Result<(Response<Incoming>, Connection), AgentError> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            // HTTP/1.1 wants a Host; the agent does not look at it.
            .header(HOST, "localhost");
        if let Some(content_type) = content_type {
            request = request
                .header(CONTENT_TYPE, content_type)
                .header("connect-protocol-version", "1");
        }
        if let Some(Token(token)) = &self.access_token {
            request = request.header("x-access-token", token.as_str());
        }
        if let Some(user) = &self.user {
            use base64::Engine as _;
            let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:"));
            request = request.header(hyper::header::AUTHORIZATION, format!("Basic {encoded}"));
        }
        let request = request
            .body(body)
            .map_err(|e| AgentError::Protocol(format!("building request: {e}")))?;
        self.exchange(request, drive_by).await
    }

    /// Opens a connection and sends `request` on it.
    async fn exchange(
        &self,
        request: Request<RequestBody>,
        drive_by: Drive,
    ) -> Result<(Response<Incoming>, Connection), AgentError> {
        let path = request.uri().path().to_string();
        let unavailable =
            |e: hyper::Error| AgentError::Unavailable(format!("{} {path}: {e}", self.transport));
        let io = self.transport.connect().await?;
        let (mut sender, conn) = http1::handshake(TokioIo::new(io))
            .await
            .map_err(unavailable)?;
        match drive_by {
            Drive::Task => {
                let task = tokio::spawn(async move {
                    // Errors surface through the request or the response body.
                    let _ = conn.await;
                });
                let response = sender.send_request(request).await.map_err(unavailable)?;
                let connection = Connection {
                    _sender: sender,
                    driver: Driver::Task(task),
                };
                Ok((response, connection))
            }
            Drive::Inline => {
                let mut conn = Some(Box::pin(conn));
                let response = {
                    let mut response = std::pin::pin!(sender.send_request(request));
                    poll_fn(|cx| {
                        drive(&mut conn, cx);
                        response.as_mut().poll(cx)
                    })
                    .await
                    .map_err(unavailable)?
                };
                let connection = Connection {
                    _sender: sender,
                    driver: Driver::Inline(conn),
                };
                Ok((response, connection))
            }
        }
    }
}

#[cfg(test)]
mod tests;
