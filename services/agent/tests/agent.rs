//! Drives the real agent binary over a unix socket with raw HTTP/1.1 (a bare hyper
//! client; no Aetherium client code), the way a host or an E2B SDK would.

use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aetherium_types::agent::{
    CONNECT_END_STREAM_FLAG, CONNECT_STREAM_JSON, ConnectError, DataEvent, EndEvent,
    EndStreamMessage, ListResponse, PROCESS_LIST_PATH, PROCESS_SEND_SIGNAL_PATH,
    PROCESS_START_PATH, ProcessConfig, ProcessEvent, StartRequest, StartResponse, envelope,
    take_envelope,
};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::UnixStream;

const WAIT: Duration = Duration::from_secs(10);

/// An agent on its own socket in its own temp dir; killed through its own handle
/// when dropped.
struct Agent {
    child: Child,
    socket: PathBuf,
    dir: tempfile::TempDir,
}

impl Agent {
    async fn spawn() -> Agent {
        let dir = tempfile::tempdir().expect("tempdir");
        // A parent directory that does not exist yet: the agent creates it.
        let socket = dir.path().join("run/agent.sock");
        Agent::spawn_at(dir, socket).await
    }

    async fn spawn_at(dir: tempfile::TempDir, socket: PathBuf) -> Agent {
        let child = Command::new(env!("CARGO_BIN_EXE_aetherium-agent"))
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .args(["--keepalive-interval-ms", "200"])
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

    async fn request(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> http::Response<Incoming> {
        let stream = UnixStream::connect(&self.socket).await.expect("connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost");
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let request = request.body(Full::new(Bytes::from(body))).expect("request");
        sender.send_request(request).await.expect("response")
    }

    /// A unary Connect call: status and JSON body.
    async fn unary(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let response = self
            .request(
                Method::POST,
                path,
                Some("application/json"),
                body.to_string().into_bytes(),
            )
            .await;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (status, serde_json::from_slice(&body).expect("JSON body"))
    }

    async fn start_raw(&self, body: Vec<u8>) -> EventStream {
        let response = self
            .request(
                Method::POST,
                PROCESS_START_PATH,
                Some(CONNECT_STREAM_JSON),
                body,
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], CONNECT_STREAM_JSON);
        EventStream {
            body: response.into_body(),
            buf: Vec::new(),
        }
    }

    async fn start(&self, request: &StartRequest) -> EventStream {
        let json = serde_json::to_vec(request).expect("serialize");
        self.start_raw(envelope(0, &json)).await
    }

    async fn list(&self) -> Vec<u32> {
        let (status, body) = self.unary(PROCESS_LIST_PATH, json!({})).await;
        assert_eq!(status, StatusCode::OK);
        let list: ListResponse = serde_json::from_value(body).expect("ListResponse");
        list.processes.iter().map(|p| p.pid).collect()
    }

    async fn wait_until_gone(&self, pid: u32) {
        let deadline = Instant::now() + WAIT;
        while self.list().await.contains(&pid) {
            assert!(Instant::now() < deadline, "pid {pid} still listed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
enum Message {
    Event(ProcessEvent),
    EndOfStream(EndStreamMessage),
}

/// A Start response body, split into envelopes as they arrive.
struct EventStream {
    body: Incoming,
    buf: Vec<u8>,
}

impl EventStream {
    /// The next message; `None` at the end of the body.
    async fn next(&mut self) -> Option<Message> {
        loop {
            if let Some((flags, message)) = take_envelope(&mut self.buf).expect("bounded") {
                return Some(if flags & CONNECT_END_STREAM_FLAG != 0 {
                    Message::EndOfStream(serde_json::from_slice(&message).expect("end JSON"))
                } else {
                    let response: StartResponse =
                        serde_json::from_slice(&message).expect("event JSON");
                    Message::Event(response.event)
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

    async fn next_event(&mut self) -> ProcessEvent {
        match self.next().await {
            Some(Message::Event(event)) => event,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    async fn pid(&mut self) -> u32 {
        match self.next_event().await {
            ProcessEvent::Start(start) => start.pid,
            other => panic!("expected the start event, got {other:?}"),
        }
    }

    /// Everything up to the end of the stream.
    async fn finish(mut self) -> Finished {
        let mut finished = Finished::default();
        while let Some(message) = self.next().await {
            match message {
                Message::Event(ProcessEvent::Start(start)) => finished.pid = Some(start.pid),
                Message::Event(ProcessEvent::Data(DataEvent::Stdout(bytes))) => {
                    finished.stdout.extend(bytes.0)
                }
                Message::Event(ProcessEvent::Data(DataEvent::Stderr(bytes))) => {
                    finished.stderr.extend(bytes.0)
                }
                Message::Event(ProcessEvent::Data(DataEvent::Pty(_))) => panic!("pty data"),
                Message::Event(ProcessEvent::Keepalive(_)) => finished.keepalives += 1,
                Message::Event(ProcessEvent::End(end)) => {
                    assert!(finished.end.is_none(), "two end events");
                    finished.end = Some(end);
                }
                Message::EndOfStream(end) => {
                    assert!(
                        finished.end_of_stream.is_none(),
                        "two end-of-stream messages"
                    );
                    finished.end_of_stream = Some(end);
                }
            }
        }
        finished
    }
}

#[derive(Debug, Default)]
struct Finished {
    pid: Option<u32>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    keepalives: usize,
    end: Option<EndEvent>,
    end_of_stream: Option<EndStreamMessage>,
}

impl Finished {
    fn error(&self) -> Option<&ConnectError> {
        self.end_of_stream.as_ref().and_then(|e| e.error.as_ref())
    }
}

fn command(cmd: &str, args: &[&str]) -> StartRequest {
    StartRequest {
        process: ProcessConfig {
            cmd: cmd.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            ..ProcessConfig::default()
        },
        ..StartRequest::default()
    }
}

fn sh(script: &str) -> StartRequest {
    command("sh", &["-c", script])
}

#[tokio::test]
async fn health_routes_and_socket_setup() {
    let agent = Agent::spawn().await;
    let mode = std::fs::metadata(&agent.socket)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o666, "socket connectable by any user");

    let health = agent
        .request(Method::GET, "/health", None, Vec::new())
        .await;
    assert_eq!(health.status(), StatusCode::NO_CONTENT);
    let unknown = agent.request(Method::GET, "/nope", None, Vec::new()).await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    let wrong_method = agent
        .request(Method::GET, PROCESS_LIST_PATH, None, Vec::new())
        .await;
    assert_eq!(wrong_method.status(), StatusCode::METHOD_NOT_ALLOWED);
    let wrong_method = agent
        .request(Method::POST, "/health", None, Vec::new())
        .await;
    assert_eq!(wrong_method.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn replaces_a_stale_socket_and_exits_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("agent.sock");
    // A socket file nobody listens on, as a crashed agent leaves behind.
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("stale socket"));
    let mut agent = Agent::spawn_at(dir, socket.clone()).await;
    let health = agent
        .request(Method::GET, "/health", None, Vec::new())
        .await;
    assert_eq!(health.status(), StatusCode::NO_CONTENT);

    let pid = rustix::process::Pid::from_child(&agent.child);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = agent.child.try_wait().expect("try_wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "agent ignored SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}");
    assert!(!socket.exists(), "socket removed on shutdown");
}

#[tokio::test]
async fn start_streams_output_and_exit_code() {
    let agent = Agent::spawn().await;
    let finished = agent
        .start(&sh("echo out; echo err >&2; exit 3"))
        .await
        .finish()
        .await;
    assert!(finished.pid.is_some_and(|pid| pid > 0));
    assert_eq!(finished.stdout, b"out\n");
    assert_eq!(finished.stderr, b"err\n");
    let end = finished.end.as_ref().expect("end event");
    assert_eq!(
        (end.exit_code, end.exited, end.status.as_str()),
        (3, true, "exit status 3")
    );
    assert_eq!(finished.error(), None);
    assert!(finished.end_of_stream.is_some());

    // Many chunks, each stream in order.
    let finished = agent
        .start(&sh(
            "i=0; while [ $i -lt 200 ]; do echo o$i; echo e$i >&2; i=$((i+1)); done",
        ))
        .await
        .finish()
        .await;
    let expected = |prefix: &str| -> Vec<u8> {
        (0..200)
            .map(|i| format!("{prefix}{i}\n"))
            .collect::<String>()
            .into_bytes()
    };
    assert_eq!(finished.stdout, expected("o"));
    assert_eq!(finished.stderr, expected("e"));
    assert_eq!(finished.end.map(|e| e.exit_code), Some(0));
}

#[tokio::test]
async fn output_streams_before_exit() {
    let agent = Agent::spawn().await;
    let started = Instant::now();
    let mut stream = agent.start(&sh("echo first; sleep 3; echo second")).await;
    stream.pid().await;
    loop {
        match stream.next_event().await {
            ProcessEvent::Keepalive(_) => continue,
            ProcessEvent::Data(DataEvent::Stdout(bytes)) => {
                assert_eq!(bytes.0, b"first\n");
                break;
            }
            other => panic!("expected stdout, got {other:?}"),
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "output was held back until exit"
    );
    let rest = stream.finish().await;
    assert_eq!(rest.stdout, b"second\n");
    // The agent was started with a 200 ms keepalive interval.
    assert!(rest.keepalives >= 3, "{} keepalives", rest.keepalives);
}

#[tokio::test]
async fn envs_and_cwd_apply() {
    let agent = Agent::spawn().await;
    let cwd = agent.dir.path().canonicalize().expect("canonical dir");
    let mut request = sh("echo \"$GREETING\"; pwd");
    request
        .process
        .envs
        .insert("GREETING".into(), "hello there".into());
    request.process.cwd = Some(cwd.display().to_string());
    let finished = agent.start(&request).await.finish().await;
    assert_eq!(
        String::from_utf8_lossy(&finished.stdout),
        format!("hello there\n{}\n", cwd.display())
    );

    // Without a cwd, processes start in /. Stdin is /dev/null: `cat` sees EOF at once.
    let finished = agent.start(&sh("pwd; cat")).await.finish().await;
    assert_eq!(finished.stdout, b"/\n");
    assert_eq!(finished.end.map(|e| e.exit_code), Some(0));
}

#[tokio::test]
async fn spawn_failures_are_connect_errors() {
    let agent = Agent::spawn().await;
    let finished = agent
        .start(&command("definitely-not-a-command-aetherium", &[]))
        .await
        .finish()
        .await;
    assert_eq!(finished.pid, None, "no start event");
    assert_eq!(finished.error().map(|e| e.code.as_str()), Some("not_found"));

    let mut request = command("true", &[]);
    request.process.cwd = Some(agent.dir.path().join("missing").display().to_string());
    let finished = agent.start(&request).await.finish().await;
    assert_eq!(finished.pid, None);
    assert_eq!(
        finished.error().map(|e| e.code.as_str()),
        Some("invalid_argument")
    );
}

#[tokio::test]
async fn malformed_requests_get_connect_errors() {
    let agent = Agent::spawn().await;
    // JSON without an envelope.
    let finished = agent
        .start_raw(br#"{"process":{"cmd":"true"}}"#.to_vec())
        .await
        .finish()
        .await;
    assert_eq!(
        finished.error().map(|e| e.code.as_str()),
        Some("invalid_argument")
    );
    // An envelope around broken JSON.
    let finished = agent
        .start_raw(envelope(0, b"{\"process\":"))
        .await
        .finish()
        .await;
    assert_eq!(
        finished.error().map(|e| e.code.as_str()),
        Some("invalid_argument")
    );
    // A header announcing 2 GiB: refused without reading (or allocating) it.
    let finished = agent
        .start_raw(vec![0, 0x7f, 0xff, 0xff, 0xff, b'{'])
        .await
        .finish()
        .await;
    assert_eq!(
        finished.error().map(|e| e.code.as_str()),
        Some("resource_exhausted")
    );
    // Wrong content type.
    let response = agent
        .request(
            Method::POST,
            PROCESS_START_PATH,
            Some("application/json"),
            b"{}".to_vec(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // Unary calls: bad JSON is a 400 with a Connect error body.
    let response = agent
        .request(
            Method::POST,
            PROCESS_SEND_SIGNAL_PATH,
            Some("application/json"),
            b"{nope".to_vec(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let error: ConnectError = serde_json::from_slice(&body).expect("ConnectError");
    assert_eq!(error.code, "invalid_argument");
    // The agent is still fine.
    let health = agent
        .request(Method::GET, "/health", None, Vec::new())
        .await;
    assert_eq!(health.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn send_signal_kills_the_process_group() {
    let agent = Agent::spawn().await;
    let mut stream = agent.start(&sh("sleep 60 & sleep 60; echo never")).await;
    let pid = stream.pid().await;
    assert_eq!(agent.list().await, vec![pid]);

    let (status, body) = agent
        .unary(
            PROCESS_SEND_SIGNAL_PATH,
            json!({"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"}),
        )
        .await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));
    let finished = stream.finish().await;
    assert_eq!(finished.stdout, b"");
    let end = finished.end.expect("end event");
    assert_eq!(
        (end.exit_code, end.exited, end.status.as_str()),
        (-1, false, "signal: killed")
    );
    assert!(agent.list().await.is_empty());

    // By tag, with SIGTERM.
    let mut request = command("sleep", &["60"]);
    request.tag = Some("napper".into());
    let mut stream = agent.start(&request).await;
    stream.pid().await;
    let (status, _) = agent
        .unary(
            PROCESS_SEND_SIGNAL_PATH,
            json!({"process": {"tag": "napper"}, "signal": "SIGNAL_SIGTERM"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let end = stream.finish().await.end.expect("end event");
    assert_eq!(end.status, "signal: terminated");

    // Unknown pid: 404 with a Connect error.
    let (status, body) = agent
        .unary(
            PROCESS_SEND_SIGNAL_PATH,
            json!({"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["code"], "not_found");
}

#[tokio::test]
async fn survives_clients_that_disconnect_mid_stream() {
    let agent = Agent::spawn().await;

    // A flood of output: after the client leaves, the agent must keep draining it or
    // the process would block forever on a full pipe.
    let mut request = sh("head -c 50000000 /dev/zero; echo done");
    request.tag = Some("flood".into());
    let mut stream = agent.start(&request).await;
    let flood = stream.pid().await;
    assert!(matches!(stream.next_event().await, ProcessEvent::Data(_)));
    drop(stream);

    // A quiet process outlives its connection too.
    let mut stream = agent.start(&sh("sleep 0.5; echo late")).await;
    let quiet = stream.pid().await;
    drop(stream);
    assert!(agent.list().await.contains(&quiet));

    agent.wait_until_gone(flood).await;
    agent.wait_until_gone(quiet).await;
    let finished = agent.start(&sh("echo still here")).await.finish().await;
    assert_eq!(finished.stdout, b"still here\n");
}

#[tokio::test]
async fn a_background_grandchild_does_not_hold_the_stream_open() {
    let agent = Agent::spawn().await;
    let started = Instant::now();
    // The backgrounded sleep inherits stdout and stderr and keeps them open.
    let finished = agent.start(&sh("sleep 30 & echo hi")).await.finish().await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(finished.stdout, b"hi\n");
    assert_eq!(finished.end.map(|e| e.exit_code), Some(0));
    // Clean up the sleep: it is in the group the agent made for sh.
    let pgid = finished
        .pid
        .and_then(|pid| rustix::process::Pid::from_raw(pid as i32))
        .expect("pid");
    let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
}

#[tokio::test]
async fn list_shows_running_processes_with_their_config() {
    let agent = Agent::spawn().await;
    let mut request = command("sleep", &["60"]);
    request.tag = Some("listed".into());
    let mut stream = agent.start(&request).await;
    let pid = stream.pid().await;
    let (status, body) = agent.unary(PROCESS_LIST_PATH, json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let list: ListResponse = serde_json::from_value(body).expect("ListResponse");
    assert_eq!(list.processes.len(), 1);
    assert_eq!(list.processes[0].pid, pid);
    assert_eq!(list.processes[0].tag.as_deref(), Some("listed"));
    assert_eq!(list.processes[0].config, request.process);
    let (status, _) = agent
        .unary(
            PROCESS_SEND_SIGNAL_PATH,
            json!({"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    stream.finish().await;
}
