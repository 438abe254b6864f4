//! Host-side client of the in-sandbox agent (`services/agent`), which speaks E2B
//! envd's `process.Process` service over the Connect protocol with the JSON codec
//! (message types in [`aetherium_types::agent`]).
//!
//! One HTTP/1.1 connection per call. Calls carry no timeout of their own (a process
//! may legitimately run for hours); wrap them in `tokio::time::timeout` where needed.
//! [`AgentClient::wait_ready`] is the exception: it bounds itself.

use std::fmt;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use aetherium_types::agent::{
    CONNECT_END_STREAM_FLAG, CONNECT_STREAM_JSON, ConnectError, DataEvent, Empty, EndStreamMessage,
    ListResponse, MAX_ENVELOPE_BYTES, PROCESS_LIST_PATH, PROCESS_SEND_SIGNAL_PATH,
    PROCESS_START_PATH, ProcessEvent, ProcessInfo, ProcessSelector, SendSignalRequest, Signal,
    StartRequest, StartResponse, envelope, take_envelope,
};
use bytes::Bytes;
use futures::{Stream, StreamExt as _};
use http::header::{CONTENT_TYPE, HOST};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper::body::{Body as _, Incoming};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Content type of Connect unary calls with the JSON codec.
const CONNECT_UNARY_JSON: &str = "application/json";
/// Bound on unary response bodies and on error bodies (a process list is the largest).
const MAX_UNARY_RESPONSE_BYTES: usize = MAX_ENVELOPE_BYTES;
/// Envelope flag of a compressed message; we never ask for compression.
const COMPRESSED_FLAG: u8 = 0x01;

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

/// How to reach the agent. New transports (Firecracker's hybrid vsock: a unix socket
/// plus a `CONNECT <port>\n` / `OK <port>\n` handshake) become another variant here:
/// everything above `connect` only needs a byte stream.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Transport {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transport::Unix(path) => write!(f, "unix:{}", path.display()),
            Transport::Tcp(addr) => write!(f, "tcp:{addr}"),
        }
    }
}

/// A byte stream to the agent, whatever the transport.
trait AgentIo: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> AgentIo for T {}

impl Transport {
    async fn connect(&self) -> Result<Box<dyn AgentIo>, AgentError> {
        let unavailable =
            |e: std::io::Error| AgentError::Unavailable(format!("connecting to {self}: {e}"));
        Ok(match self {
            Transport::Unix(path) => Box::new(
                tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(unavailable)?,
            ),
            Transport::Tcp(addr) => {
                let stream = tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(unavailable)?;
                // Output events are small and should not wait for Nagle.
                stream.set_nodelay(true).map_err(unavailable)?;
                Box::new(stream)
            }
        })
    }
}

/// Keeps a call's HTTP connection alive; dropping it closes the connection.
struct Connection {
    _sender: http1::SendRequest<Full<Bytes>>,
    task: JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Client of one sandbox's agent. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentClient {
    transport: Transport,
}

impl AgentClient {
    /// An agent listening on a unix socket (containers: a bind-mounted directory).
    pub fn unix(path: impl Into<PathBuf>) -> Self {
        AgentClient {
            transport: Transport::Unix(path.into()),
        }
    }

    /// An agent listening on TCP (`aetherium-agent --listen tcp:IP:PORT`).
    pub fn tcp(addr: SocketAddr) -> Self {
        AgentClient {
            transport: Transport::Tcp(addr),
        }
    }

    /// `GET /health`: Ok when the agent answers 2xx.
    pub async fn health(&self) -> Result<(), AgentError> {
        let (response, _connection) = self.send(Method::GET, "/health", None).await?;
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
        let body = envelope(0, &to_json(request)?);
        let (response, connection) = self
            .send(
                Method::POST,
                PROCESS_START_PATH,
                Some((CONNECT_STREAM_JSON, body)),
            )
            .await?;
        let status = response.status();
        if status != StatusCode::OK {
            return Err(error_response(status, response.into_body()).await);
        }
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !content_type.starts_with(CONNECT_STREAM_JSON) {
            return Err(AgentError::Protocol(format!(
                "Start answered with content type {content_type:?}"
            )));
        }
        let mut stream = ProcessStream {
            body: response.into_body(),
            buf: Vec::new(),
            pending: None,
            pid: 0,
            finished: false,
            _connection: connection,
        };
        // The first message is the start event, or the end of the stream carrying
        // the spawn error.
        match poll_fn(|cx| stream.poll_message(cx)).await? {
            Message::Event(ProcessEvent::Start(start)) => {
                stream.pid = start.pid;
                stream.pending = Some(ProcessEvent::Start(start));
                Ok(stream)
            }
            Message::End(EndStreamMessage { error: Some(e) }) => Err(AgentError::Connect(e)),
            other => Err(AgentError::Protocol(format!(
                "Start stream began with {other:?} instead of a start event"
            ))),
        }
    }

    /// `process.Process/SendSignal` to the process group of `pid`.
    pub async fn send_signal(&self, pid: u32, signal: Signal) -> Result<(), AgentError> {
        let request = SendSignalRequest {
            process: ProcessSelector::Pid(pid),
            signal,
        };
        let Empty {} = self.unary(PROCESS_SEND_SIGNAL_PATH, &request).await?;
        Ok(())
    }

    /// `process.Process/List`: the processes started through the agent that still run.
    pub async fn list(&self) -> Result<Vec<ProcessInfo>, AgentError> {
        let response: ListResponse = self.unary(PROCESS_LIST_PATH, &Empty {}).await?;
        Ok(response.processes)
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

    /// A Connect unary call with the JSON codec.
    async fn unary<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        path: &str,
        request: &Req,
    ) -> Result<Resp, AgentError> {
        let body = to_json(request)?;
        let (response, _connection) = self
            .send(Method::POST, path, Some((CONNECT_UNARY_JSON, body)))
            .await?;
        let status = response.status();
        if status != StatusCode::OK {
            return Err(error_response(status, response.into_body()).await);
        }
        let body = read_body(response.into_body(), MAX_UNARY_RESPONSE_BYTES).await?;
        serde_json::from_slice(&body)
            .map_err(|e| AgentError::Protocol(format!("malformed {path} response: {e}")))
    }

    /// Opens a connection and sends one request on it.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(&'static str, Vec<u8>)>,
    ) -> Result<(Response<Incoming>, Connection), AgentError> {
        let unavailable =
            |e: hyper::Error| AgentError::Unavailable(format!("{} {path}: {e}", self.transport));
        let io = self.transport.connect().await?;
        let (mut sender, conn) = http1::handshake(TokioIo::new(io))
            .await
            .map_err(unavailable)?;
        let task = tokio::spawn(async move {
            // Errors surface through the request or the response body.
            let _ = conn.await;
        });
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            // HTTP/1.1 wants a Host; the agent does not look at it.
            .header(HOST, "localhost");
        let body = match body {
            Some((content_type, body)) => {
                request = request
                    .header(CONTENT_TYPE, content_type)
                    .header("connect-protocol-version", "1");
                body
            }
            None => Vec::new(),
        };
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| AgentError::Protocol(format!("building request: {e}")))?;
        let response = sender.send_request(request).await.map_err(unavailable)?;
        Ok((
            response,
            Connection {
                _sender: sender,
                task,
            },
        ))
    }
}

/// What [`AgentClient::run`] collected.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunOutput {
    pub pid: u32,
    /// The exit code; `None` when the process did not exit on its own (killed by a
    /// signal).
    pub exit_code: Option<i32>,
    pub exited: bool,
    /// envd's wording: `exit status 3`, `signal: killed`.
    pub status: String,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Whether output beyond the cap was discarded.
    pub truncated: bool,
    /// The end event's error (envd sets it for every non-zero exit).
    pub error: Option<String>,
}

#[derive(Debug)]
enum Message {
    Event(ProcessEvent),
    End(EndStreamMessage),
}

/// The events of a started process, parsed from the Start response as they arrive.
/// Ends after the end event; an error in the end-of-stream message becomes
/// [`AgentError::Connect`], a broken connection [`AgentError::Unavailable`].
pub struct ProcessStream {
    body: Incoming,
    /// Received bytes not yet split into envelopes; bounded by `take_envelope`'s
    /// size limit.
    buf: Vec<u8>,
    /// The start event, read by `start` and yielded first.
    pending: Option<ProcessEvent>,
    pid: u32,
    finished: bool,
    _connection: Connection,
}

impl fmt::Debug for ProcessStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessStream")
            .field("pid", &self.pid)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl ProcessStream {
    /// The pid the agent gave the process (also its process group).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Result<Message, AgentError>> {
        loop {
            match take_envelope(&mut self.buf) {
                Ok(Some((flags, message))) => return Poll::Ready(decode_message(flags, &message)),
                Ok(None) => {}
                Err(e) => return Poll::Ready(Err(AgentError::Protocol(e.to_string()))),
            }
            match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    // Trailers carry nothing in the Connect streaming protocol.
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => {
                    return Poll::Ready(Err(AgentError::Unavailable(format!(
                        "reading the Start stream: {e}"
                    ))));
                }
                None => {
                    return Poll::Ready(Err(AgentError::Unavailable(
                        "the Start stream was cut off before its end".into(),
                    )));
                }
            }
        }
    }
}

impl Stream for ProcessStream {
    type Item = Result<ProcessEvent, AgentError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(event) = this.pending.take() {
            return Poll::Ready(Some(Ok(event)));
        }
        if this.finished {
            return Poll::Ready(None);
        }
        let message = ready!(this.poll_message(cx));
        Poll::Ready(match message {
            Ok(Message::Event(event)) => Some(Ok(event)),
            Ok(Message::End(end)) => {
                this.finished = true;
                end.error.map(|e| Err(AgentError::Connect(e)))
            }
            Err(e) => {
                this.finished = true;
                Some(Err(e))
            }
        })
    }
}

fn decode_message(flags: u8, message: &[u8]) -> Result<Message, AgentError> {
    if flags & COMPRESSED_FLAG != 0 {
        return Err(AgentError::Protocol(
            "compressed message, but no compression was negotiated".into(),
        ));
    }
    let malformed =
        |e: serde_json::Error| AgentError::Protocol(format!("malformed Start message: {e}"));
    if flags & CONNECT_END_STREAM_FLAG != 0 {
        serde_json::from_slice(message)
            .map(Message::End)
            .map_err(malformed)
    } else {
        serde_json::from_slice::<StartResponse>(message)
            .map(|response| Message::Event(response.event))
            .map_err(malformed)
    }
}

fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>, AgentError> {
    serde_json::to_vec(value).map_err(|e| AgentError::Protocol(format!("encoding request: {e}")))
}

async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, AgentError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(AgentError::Protocol(format!(
            "response body over {limit} bytes"
        ))),
        Err(e) => Err(AgentError::Unavailable(format!("reading response: {e}"))),
    }
}

/// A non-200 answer: a Connect error when the body is one, else a protocol error.
async fn error_response(status: StatusCode, body: Incoming) -> AgentError {
    match read_body(body, MAX_UNARY_RESPONSE_BYTES).await {
        Ok(body) => match serde_json::from_slice::<ConnectError>(&body) {
            Ok(error) => AgentError::Connect(error),
            Err(_) => AgentError::Protocol(format!("agent answered HTTP {status}")),
        },
        Err(e) => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_events_and_end_of_stream() {
        let event = decode_message(0, br#"{"event":{"start":{"pid":7}}}"#).expect("event");
        assert!(matches!(event, Message::Event(ProcessEvent::Start(s)) if s.pid == 7));
        let end = decode_message(
            CONNECT_END_STREAM_FLAG,
            br#"{"error":{"code":"not_found","message":"x"}}"#,
        )
        .expect("end");
        assert!(
            matches!(end, Message::End(EndStreamMessage { error: Some(e) }) if e.code == "not_found")
        );
        assert!(matches!(
            decode_message(COMPRESSED_FLAG, b"{}"),
            Err(AgentError::Protocol(_))
        ));
        assert!(matches!(
            decode_message(0, b"{\"event\":"),
            Err(AgentError::Protocol(_))
        ));
    }
}
