//! A running agent binary and a bare Connect client for it (hyper, no Aetherium
//! client code), speaking either codec, the way E2B's SDKs or the host do.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aetherium_types::agent::{
    CONNECT_END_STREAM_FLAG, Codec, ConnectError, DataEvent, EndEvent, EndStreamMessage,
    ProcessConfig, ProcessEvent, StartRequest, StartResponse, WireMessage, envelope, take_envelope,
};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

pub const WAIT: Duration = Duration::from_secs(10);

/// An agent on its own socket in its own temp dir; killed through its own handle
/// when dropped.
pub struct Agent {
    pub child: Child,
    pub socket: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Agent {
    pub async fn spawn() -> Agent {
        Agent::spawn_with(&[]).await
    }

    pub async fn spawn_with(args: &[&str]) -> Agent {
        let dir = tempfile::tempdir().expect("tempdir");
        // A parent directory that does not exist yet: the agent creates it.
        let socket = dir.path().join("run/agent.sock");
        Agent::spawn_at(dir, socket, args).await
    }

    pub async fn spawn_at(dir: tempfile::TempDir, socket: PathBuf, args: &[&str]) -> Agent {
        let child = Command::new(env!("CARGO_BIN_EXE_aetherium-agent"))
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .args(["--keepalive-interval-ms", "200"])
            .args(args)
            .env_remove("AETHERIUM_AGENT_ACCESS_TOKEN")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn agent");
        let agent = Agent { child, socket, dir };
        let deadline = Instant::now() + WAIT;
        while UnixStream::connect(&agent.socket).await.is_err() {
            assert!(Instant::now() < deadline, "agent did not come up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        agent
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Open file descriptors of the agent process.
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("agent fds")
            .count()
    }

    /// A path inside the agent's temp dir.
    pub fn path(&self, rel: &str) -> String {
        self.dir.path().join(rel).display().to_string()
    }

    pub async fn send(&self, request: Request<Full<Bytes>>) -> http::Response<Incoming> {
        let stream = UnixStream::connect(&self.socket).await.expect("connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        sender.send_request(request).await.expect("response")
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> http::Response<Incoming> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost");
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        self.send(request.body(Full::new(Bytes::from(body))).expect("request"))
            .await
    }

    /// A unary Connect call: the decoded response, or the status and Connect error.
    pub async fn unary<Req: WireMessage, Resp: WireMessage>(
        &self,
        codec: Codec,
        path: &str,
        message: &Req,
    ) -> Result<Resp, (StatusCode, ConnectError)> {
        self.unary_with(codec, path, message, &[]).await
    }

    pub async fn unary_with<Req: WireMessage, Resp: WireMessage>(
        &self,
        codec: Codec,
        path: &str,
        message: &Req,
        headers: &[(&str, &str)],
    ) -> Result<Resp, (StatusCode, ConnectError)> {
        let mut all = vec![("content-type", codec.unary_content_type())];
        all.extend_from_slice(headers);
        let response = self
            .request(Method::POST, path, &all, codec.encode(message))
            .await;
        let status = response.status();
        let body = collect(response).await;
        if status == StatusCode::OK {
            Ok(codec.decode(&body).expect("response message"))
        } else {
            let error: ConnectError = serde_json::from_slice(&body).expect("Connect error JSON");
            Err((status, error))
        }
    }

    pub async fn stream<Req: WireMessage>(
        &self,
        codec: Codec,
        path: &str,
        message: &Req,
    ) -> Stream {
        self.stream_with(codec, path, message, &[]).await
    }

    pub async fn stream_with<Req: WireMessage>(
        &self,
        codec: Codec,
        path: &str,
        message: &Req,
        headers: &[(&str, &str)],
    ) -> Stream {
        let mut all = vec![("content-type", codec.stream_content_type())];
        all.extend_from_slice(headers);
        let body = envelope(0, &codec.encode(message));
        let response = self.request(Method::POST, path, &all, body).await;
        Stream::new(response, codec)
    }

    pub async fn start(&self, request: &StartRequest) -> Stream {
        self.stream(
            Codec::Json,
            aetherium_types::agent::PROCESS_START_PATH,
            request,
        )
        .await
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn collect(response: http::Response<Incoming>) -> Bytes {
    response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
}

#[derive(Debug)]
pub enum Message {
    Data(Vec<u8>),
    EndOfStream(EndStreamMessage),
}

/// A streaming response, split into envelopes as they arrive.
pub struct Stream {
    pub status: StatusCode,
    pub content_type: String,
    body: Incoming,
    buf: Vec<u8>,
    codec: Codec,
}

impl Stream {
    pub fn new(response: http::Response<Incoming>, codec: Codec) -> Stream {
        Stream {
            status: response.status(),
            content_type: response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string(),
            body: response.into_body(),
            buf: Vec::new(),
            codec,
        }
    }

    /// The next message; `None` at the end of the body.
    pub async fn next(&mut self) -> Option<Message> {
        loop {
            if let Some((flags, message)) = take_envelope(&mut self.buf).expect("bounded") {
                return Some(if flags & CONNECT_END_STREAM_FLAG != 0 {
                    Message::EndOfStream(serde_json::from_slice(&message).expect("end JSON"))
                } else {
                    Message::Data(message)
                });
            }
            let frame = tokio::time::timeout(WAIT, self.body.frame())
                .await
                .expect("stream stalled");
            match frame {
                Some(frame) => {
                    if let Ok(data) = frame.expect("body frame").into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                None => {
                    assert!(self.buf.is_empty(), "body ended inside an envelope");
                    return None;
                }
            }
        }
    }

    pub async fn next_message<M: WireMessage>(&mut self) -> Result<M, Option<ConnectError>> {
        match self.next().await {
            Some(Message::Data(bytes)) => Ok(self.codec.decode(&bytes).expect("message")),
            Some(Message::EndOfStream(end)) => Err(end.error),
            None => Err(None),
        }
    }

    pub async fn next_event(&mut self) -> ProcessEvent {
        match self.next_message::<StartResponse>().await {
            Ok(response) => response.event.expect("event"),
            Err(e) => panic!("expected an event, got the end of the stream: {e:?}"),
        }
    }

    /// The next event that is not a keepalive.
    pub async fn next_real(&mut self) -> ProcessEvent {
        loop {
            match self.next_event().await {
                ProcessEvent::Keepalive(_) => continue,
                event => return event,
            }
        }
    }

    pub async fn pid(&mut self) -> u32 {
        match self.next_event().await {
            ProcessEvent::Start(start) => start.pid,
            other => panic!("expected the start event, got {other:?}"),
        }
    }

    /// Everything up to the end of the stream.
    pub async fn finish(mut self) -> Finished {
        let mut finished = Finished::default();
        loop {
            match self.next_message::<StartResponse>().await {
                Ok(response) => match response.event.expect("event") {
                    ProcessEvent::Start(start) => finished.pid = Some(start.pid),
                    ProcessEvent::Data(DataEvent::Stdout(bytes)) => finished.stdout.extend(bytes.0),
                    ProcessEvent::Data(DataEvent::Stderr(bytes)) => finished.stderr.extend(bytes.0),
                    ProcessEvent::Data(DataEvent::Pty(bytes)) => finished.pty.extend(bytes.0),
                    ProcessEvent::Keepalive(_) => finished.keepalives += 1,
                    ProcessEvent::End(end) => {
                        assert!(finished.end.is_none(), "two end events");
                        finished.end = Some(end);
                    }
                },
                Err(error) => {
                    finished.error = error;
                    finished.ended = true;
                    assert!(self.next().await.is_none(), "data after the end of stream");
                    return finished;
                }
            }
        }
    }
}

#[derive(Debug, Default)]
pub struct Finished {
    pub pid: Option<u32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub pty: Vec<u8>,
    pub keepalives: usize,
    pub end: Option<EndEvent>,
    /// Whether an end-of-stream message came.
    pub ended: bool,
    pub error: Option<ConnectError>,
}

impl Finished {
    pub fn code(&self) -> Option<&str> {
        self.error.as_ref().map(|e| e.code.as_str())
    }
}

pub fn command(cmd: &str, args: &[&str]) -> StartRequest {
    StartRequest {
        process: ProcessConfig {
            cmd: cmd.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            ..ProcessConfig::default()
        },
        ..StartRequest::default()
    }
}

pub fn sh(script: &str) -> StartRequest {
    command("sh", &["-c", script])
}
