//! Work that talks to a sandbox directly, end to end against a real container and
//! the real agent: streamed exec (`POST /vms/{id}/exec/stream`), interactive exec
//! over a WebSocket (`GET /vms/{id}/exec/ws`) and files (`/vms/{id}/files`).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{OUTPUT_CAP_BYTES, TOKEN, TestServer, container_of, docker, random_hex};
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &random_hex()[..8])
}

/// Reads an NDJSON response line by line, noting when each line arrived.
struct Lines {
    response: reqwest::Response,
    buf: Vec<u8>,
}

impl Lines {
    fn new(response: reqwest::Response) -> Lines {
        Lines {
            response,
            buf: Vec::new(),
        }
    }

    async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Some(serde_json::from_slice(&line).unwrap());
            }
            let chunk = tokio::time::timeout(Duration::from_secs(30), self.response.chunk())
                .await
                .expect("no stream data for 30s")
                .unwrap()?;
            self.buf.extend_from_slice(&chunk);
        }
    }

    async fn all(mut self) -> Vec<Value> {
        let mut out = Vec::new();
        while let Some(v) = self.next().await {
            out.push(v);
        }
        out
    }
}

fn joined(events: &[Value], kind: &str) -> String {
    events
        .iter()
        .filter(|e| e["type"] == kind)
        .map(|e| e["data"].as_str().unwrap())
        .collect()
}

async fn stream(server: &TestServer, vm: &str, body: Value) -> reqwest::Response {
    server
        .request(reqwest::Method::POST, &format!("/vms/{vm}/exec/stream"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_delivers_output_as_it_happens_and_records_it() {
    let server = TestServer::start().await;
    let vm = server.running_vm(&unique("stream")).await;

    let sent = Instant::now();
    let response = stream(
        &server,
        &vm,
        json!({"command": "sh", "args": ["-c", "echo a; sleep 2; echo b >&2; exit 3"]}),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/x-ndjson"
    );
    let mut lines = Lines::new(response);
    let start = lines.next().await.unwrap();
    assert_eq!(start["type"], "start", "{start}");
    assert!(start["pid"].as_u64().unwrap() > 0);
    let execution_id = start["execution_id"].as_str().unwrap().to_string();
    let first = lines.next().await.unwrap();
    let first_at = sent.elapsed();
    assert_eq!(first, json!({"type": "stdout", "data": "a\n"}));
    assert!(
        first_at < Duration::from_millis(1500),
        "first output took {first_at:?}: not streamed"
    );
    let rest = lines.all().await;
    let end_at = sent.elapsed();
    assert!(end_at >= Duration::from_secs(2), "{end_at:?}");
    assert_eq!(joined(&rest, "stderr"), "b\n");
    let end = rest.last().unwrap();
    assert_eq!(end["type"], "end", "{end}");
    assert_eq!(end["exit_code"], 3);
    assert_eq!(end["status"], "completed");
    assert_eq!(end["execution_id"], execution_id.as_str());

    // Persisted like a queued execution, and listed with the VM's history.
    let (status, execution) = server.get(&format!("/executions/{execution_id}")).await;
    assert_eq!(status, 200);
    assert_eq!(execution["status"], "completed", "{execution}");
    assert_eq!(execution["exit_code"], 3);
    assert_eq!(execution["stdout"], "a\n");
    assert_eq!(execution["stderr"], "b\n");
    assert_eq!(execution["metadata"]["mode"], "stream");
    assert!(execution["duration_ms"].as_i64().unwrap() >= 2000);
    let (_, list) = server.get(&format!("/vms/{vm}/executions")).await;
    assert!(
        list["executions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["id"] == execution_id.as_str()),
        "{list}"
    );

    // Output beyond the cap still streams in full; the record keeps the cap.
    let big = OUTPUT_CAP_BYTES * 2;
    let events = Lines::new(
        stream(
            &server,
            &vm,
            json!({"command": "sh", "args": ["-c", format!("head -c {big} /dev/zero | tr '\\0' x")]}),
        )
        .await,
    )
    .all()
    .await;
    assert_eq!(joined(&events, "stdout").len(), big);
    let id = events[0]["execution_id"].as_str().unwrap();
    let (_, execution) = server.get(&format!("/executions/{id}")).await;
    assert_eq!(
        execution["stdout"].as_str().unwrap().len(),
        OUTPUT_CAP_BYTES
    );
    assert_eq!(execution["metadata"]["output_truncated"], true);

    // Bytes that are not UTF-8 come as base64, exactly.
    let events = Lines::new(
        stream(
            &server,
            &vm,
            json!({"command": "printf", "args": ["\\377\\000ok"]}),
        )
        .await,
    )
    .all()
    .await;
    assert_eq!(events[1]["data_b64"], "/wBvaw==", "{events:?}");

    // A command that cannot start is a result: 127, recorded as failed.
    let events = Lines::new(stream(&server, &vm, json!({"command": "no-such-binary"})).await)
        .all()
        .await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["type"], "end");
    assert_eq!(events[0]["exit_code"], 127);
    assert_eq!(events[0]["status"], "failed");
    let id = events[0]["execution_id"].as_str().unwrap();
    let (_, execution) = server.get(&format!("/executions/{id}")).await;
    assert_eq!(execution["exit_code"], 127);

    // Server-Sent Events on request, same events.
    let response = server
        .request(reqwest::Method::POST, &format!("/vms/{vm}/exec/stream"))
        .header("accept", "text/event-stream")
        .json(&json!({"command": "echo", "args": ["sse"], "env": {"A": "1"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let text = response.text().await.unwrap();
    assert!(text.contains("event: start\n"), "{text}");
    assert!(
        text.contains("event: stdout\ndata: {\"type\":\"stdout\",\"data\":\"sse\\n\"}"),
        "{text}"
    );
    assert!(text.contains("event: end\n"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_timeout_kills_and_disconnect_runs_on() {
    let server = TestServer::start().await;
    let vm = server.running_vm(&unique("stream-to")).await;

    let sent = Instant::now();
    let events = Lines::new(
        stream(
            &server,
            &vm,
            json!({"command": "sh", "args": ["-c", "echo go; exec sleep 60"], "timeout_seconds": 1}),
        )
        .await,
    )
    .all()
    .await;
    assert!(
        sent.elapsed() < Duration::from_secs(10),
        "{:?}",
        sent.elapsed()
    );
    let end = events.last().unwrap();
    assert_eq!(end["status"], "timed_out", "{events:?}");
    assert_eq!(end["exit_code"], Value::Null);
    let id = end["execution_id"].as_str().unwrap();
    let (_, execution) = server.get(&format!("/executions/{id}")).await;
    assert_eq!(execution["status"], "timed_out");
    assert_eq!(execution["stdout"], "go\n");
    // The process is gone from the sandbox.
    let ps = docker(&["exec", &container_of(&vm), "ps", "-eo", "args"]);
    let ps = String::from_utf8_lossy(&ps.stdout);
    assert!(!ps.contains("sleep 60"), "{ps}");

    // The client leaves after the first output: the command runs to its end and is
    // recorded.
    let mut lines = Lines::new(
        stream(
            &server,
            &vm,
            json!({"command": "sh", "args": ["-c", "echo first; sleep 1; echo second"]}),
        )
        .await,
    );
    let start = lines.next().await.unwrap();
    let id = start["execution_id"].as_str().unwrap().to_string();
    assert_eq!(lines.next().await.unwrap()["data"], "first\n");
    drop(lines);
    let (status, execution) = server.get(&format!("/executions/{id}?wait=20s")).await;
    assert_eq!(status, 200);
    assert_eq!(execution["status"], "completed", "{execution}");
    assert_eq!(execution["exit_code"], 0);
    assert_eq!(execution["stdout"], "first\nsecond\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_refuses_bad_requests_and_stopped_vms() {
    let server = TestServer::start().await;
    let vm = server.running_vm(&unique("stream-bad")).await;

    let response = stream(&server, &vm, json!({"command": ""})).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], 400);
    let response = stream(&server, "no-such-vm", json!({"command": "true"})).await;
    assert_eq!(response.status(), 404);
    let response = server
        .http
        .post(format!("{}/api/v1/vms/{vm}/exec/stream", server.url))
        .json(&json!({"command": "true"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    // The sandbox dies: the VM is no longer RUNNING, and streaming is refused.
    assert!(docker(&["kill", &container_of(&vm)]).status.success());
    let (_, body) = server
        .wait_vm(&vm, 30, |_, v| v["status"] != "RUNNING")
        .await;
    assert_ne!(body["status"], "RUNNING", "{body}");
    let response = stream(&server, &vm, json!({"command": "true"})).await;
    assert_eq!(response.status(), 409);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "Conflict", "{body}");
}

// ---- interactive exec over a WebSocket ------------------------------------------

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn ws_url(server: &TestServer, vm: &str, query: &str) -> String {
    format!(
        "{}/api/v1/vms/{vm}/exec/ws?{query}",
        server.url.replace("http://", "ws://")
    )
}

/// Opens a session with the bearer header; `Err` carries the HTTP status of a refusal.
async fn ws_connect(server: &TestServer, vm: &str, query: &str) -> Result<Socket, u16> {
    let mut request = ws_url(server, vm, query).into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => Ok(socket),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(e) => panic!("WebSocket connect failed: {e}"),
    }
}

/// What a session sent: output bytes and the JSON messages, in order.
#[derive(Default)]
struct Session {
    output: Vec<u8>,
    messages: Vec<Value>,
    closed: bool,
}

impl Session {
    /// Reads until `done` holds (or the socket closes), at most 20 s.
    async fn read_until(&mut self, socket: &mut Socket, done: impl Fn(&Session) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !done(self) {
            assert!(
                !self.closed,
                "closed before the expected output; got {:?} {:?}",
                String::from_utf8_lossy(&self.output),
                self.messages
            );
            let message = tokio::time::timeout_at(deadline, socket.next())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "timed out; output so far: {:?}, messages: {:?}",
                        String::from_utf8_lossy(&self.output),
                        self.messages
                    )
                });
            match message {
                Some(Ok(Message::Binary(b))) => self.output.extend_from_slice(&b),
                Some(Ok(Message::Text(t))) => self
                    .messages
                    .push(serde_json::from_str(t.as_str()).unwrap()),
                Some(Ok(Message::Close(_))) | None => self.closed = true,
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("socket error: {e}"),
            }
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.output).into_owned()
    }

    fn has_output(&self, s: &str) -> bool {
        self.text().contains(s)
    }

    fn message(&self, kind: &str) -> Option<&Value> {
        self.messages.iter().find(|m| m["type"] == kind)
    }
}

async fn send_text(socket: &mut Socket, value: Value) {
    socket
        .send(Message::Text(value.to_string().into()))
        .await
        .unwrap();
}

async fn type_in(socket: &mut Socket, bytes: &[u8]) {
    socket
        .send(Message::Binary(bytes.to_vec().into()))
        .await
        .unwrap();
}

/// Waits until a process with this command line runs in the VM's container.
async fn wait_for_process(vm: &str, args: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ps = docker(&["exec", &container_of(vm), "ps", "-eo", "args"]);
        if String::from_utf8_lossy(&ps.stdout)
            .lines()
            .any(|l| l.trim() == args)
        {
            return;
        }
        assert!(Instant::now() < deadline, "{args:?} never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_terminal_session() {
    let server = TestServer::start().await;
    let vm = server.running_vm(&unique("tty")).await;
    let mut socket = ws_connect(
        &server,
        &vm,
        "cmd=bash&arg=--norc&arg=--noprofile&tty=true&cols=80&rows=24",
    )
    .await
    .unwrap();
    let mut s = Session::default();
    s.read_until(&mut socket, |s| s.message("start").is_some())
        .await;
    let start = s.message("start").unwrap().clone();
    assert_eq!(start["tty"], true);
    assert!(start["pid"].as_u64().unwrap() > 0);

    // Typed input reaches the shell through the terminal, output comes back.
    type_in(&mut socket, b"echo hi-$((40+2))\r").await;
    s.read_until(&mut socket, |s| s.has_output("hi-42\r\n"))
        .await;
    type_in(&mut socket, b"stty size; echo $TERM\r").await;
    s.read_until(&mut socket, |s| s.has_output("24 80\r\nxterm\r\n"))
        .await;

    // Resize, then the terminal reports the new size.
    send_text(
        &mut socket,
        json!({"type": "resize", "cols": 100, "rows": 30}),
    )
    .await;
    type_in(&mut socket, b"stty size\r").await;
    s.read_until(&mut socket, |s| s.has_output("30 100\r\n"))
        .await;

    // Ctrl-C interrupts the foreground command; the shell survives. Twice: as a byte
    // and as a signal message.
    for interrupt in [
        Message::Binary(vec![0x03].into()),
        Message::Text(
            json!({"type": "signal", "signal": "SIGINT"})
                .to_string()
                .into(),
        ),
    ] {
        type_in(&mut socket, b"sleep 100\r").await;
        wait_for_process(&vm, "sleep 100").await;
        let started = Instant::now();
        socket.send(interrupt).await.unwrap();
        // The shell computes the marker, so its echo of the command line differs.
        let n = s.output.len();
        type_in(&mut socket, format!("echo alive-$(({n}+1))\r").as_bytes()).await;
        let expected = format!("alive-{}\r\n", n + 1);
        s.read_until(&mut socket, |s| s.has_output(&expected)).await;
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    // A refused control message is reported; the session goes on.
    send_text(&mut socket, json!({"type": "signal", "signal": "SIGUSR1"})).await;
    s.read_until(&mut socket, |s| s.message("error").is_some())
        .await;

    type_in(&mut socket, b"exit 3\r").await;
    s.read_until(&mut socket, |s| s.closed).await;
    let exit = s.message("exit").unwrap().clone();
    assert_eq!(exit["exit_code"], 3, "{exit}");
    assert_eq!(exit["status"], "completed");

    // Recorded, with the terminal's output.
    let id = exit["execution_id"].as_str().unwrap();
    assert_eq!(start["execution_id"], id);
    let (_, execution) = server.get(&format!("/executions/{id}")).await;
    assert_eq!(execution["status"], "completed");
    assert_eq!(execution["exit_code"], 3);
    assert_eq!(execution["metadata"]["mode"], "interactive");
    assert!(execution["stdout"].as_str().unwrap().contains("hi-42"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_pipes_auth_and_disconnect() {
    let server = TestServer::start().await;
    let vm = server.running_vm(&unique("pipe")).await;

    // Without a terminal: stdin streams in, stdout is binary, stderr comes apart,
    // and stdin_eof ends the input.
    let mut socket = ws_connect(
        &server,
        &vm,
        "cmd=sh&arg=-c&arg=cat;%20echo%20done%20%3E%262;%20exit%205",
    )
    .await
    .unwrap();
    let mut s = Session::default();
    type_in(&mut socket, b"hello\n").await;
    s.read_until(&mut socket, |s| s.has_output("hello\n")).await;
    type_in(&mut socket, &[0xff, 0x00]).await;
    send_text(&mut socket, json!({"type": "stdin_eof"})).await;
    s.read_until(&mut socket, |s| s.closed).await;
    assert_eq!(s.output, b"hello\n\xff\x00");
    let stderr = s.message("stderr").unwrap();
    assert_eq!(stderr["data"], "done\n");
    assert_eq!(s.message("exit").unwrap()["exit_code"], 5);
    // Resize without a terminal is refused, politely.
    let mut socket = ws_connect(&server, &vm, "cmd=cat").await.unwrap();
    send_text(
        &mut socket,
        json!({"type": "resize", "cols": 10, "rows": 10}),
    )
    .await;
    let mut s = Session::default();
    s.read_until(&mut socket, |s| s.message("error").is_some())
        .await;
    send_text(&mut socket, json!({"type": "signal", "signal": "SIGTERM"})).await;
    s.read_until(&mut socket, |s| s.closed).await;
    assert_eq!(s.message("exit").unwrap()["exit_code"], 128 + 15);

    // A session's own timeout kills the command.
    let mut socket = ws_connect(&server, &vm, "cmd=sleep&arg=30&timeout_seconds=1")
        .await
        .unwrap();
    let mut s = Session::default();
    s.read_until(&mut socket, |s| s.closed).await;
    let exit = s.message("exit").unwrap();
    assert_eq!(exit["status"], "timed_out", "{exit}");
    assert_eq!(exit["exit_code"], Value::Null);

    // A command that cannot start: an error, then exit 127.
    let mut socket = ws_connect(&server, &vm, "cmd=no-such-binary")
        .await
        .unwrap();
    let mut s = Session::default();
    s.read_until(&mut socket, |s| s.closed).await;
    assert!(s.message("error").is_some());
    assert_eq!(s.message("exit").unwrap()["exit_code"], 127);

    // Refusals before the upgrade, with HTTP statuses.
    assert_eq!(ws_connect(&server, &vm, "arg=x").await.err(), Some(400));
    assert_eq!(
        ws_connect(&server, &vm, "cmd=sh&tty=maybe").await.err(),
        Some(400)
    );
    assert_eq!(
        ws_connect(&server, "no-such-vm", "cmd=sh").await.err(),
        Some(404)
    );
    let unauthenticated = tokio_tungstenite::connect_async(ws_url(&server, &vm, "cmd=true")).await;
    assert!(matches!(
        unauthenticated,
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 401
    ));
    // Browsers cannot set headers: the token may come in the query instead.
    let (mut socket, _) =
        tokio_tungstenite::connect_async(ws_url(&server, &vm, &format!("cmd=true&token={TOKEN}")))
            .await
            .unwrap();
    let mut s = Session::default();
    s.read_until(&mut socket, |s| s.closed).await;
    assert_eq!(s.message("exit").unwrap()["exit_code"], 0);
    // Plain HTTP on the route is told to upgrade.
    let (status, body) = server.get(&format!("/vms/{vm}/exec/ws?cmd=true")).await;
    assert!(status == 400 || status == 426, "{status} {body}");
    assert_eq!(body["code"], status);

    // The client leaves mid-session: the command is killed and recorded as failed.
    let mut socket = ws_connect(&server, &vm, "cmd=sleep&arg=301").await.unwrap();
    let mut s = Session::default();
    s.read_until(&mut socket, |s| s.message("start").is_some())
        .await;
    let id = s.message("start").unwrap()["execution_id"]
        .as_str()
        .unwrap()
        .to_string();
    drop(socket);
    let (_, execution) = server.get(&format!("/executions/{id}?wait=20s")).await;
    assert_eq!(execution["status"], "failed", "{execution}");
    assert!(
        execution["error"]
            .as_str()
            .unwrap()
            .contains("disconnected")
    );
    let ps = docker(&["exec", &container_of(&vm), "ps", "-eo", "args"]);
    assert!(!String::from_utf8_lossy(&ps.stdout).contains("sleep 301"));

    // A VM that is not RUNNING: 409 before the upgrade.
    assert!(docker(&["kill", &container_of(&vm)]).status.success());
    server
        .wait_vm(&vm, 30, |_, v| v["status"] != "RUNNING")
        .await;
    assert_eq!(ws_connect(&server, &vm, "cmd=sh").await.err(), Some(409));
}

// ---- files ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_upload_download_stat() {
    let server = TestServer::start().await;
    let vm = server.running_vm(&unique("files")).await;

    // 20 MiB of pseudo-random bytes, far over the 1 MiB limit on JSON bodies.
    let mut data = vec![0u8; 20 * 1024 * 1024];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let digest = Sha256::digest(&data);
    let response = server
        .request(
            reqwest::Method::PUT,
            &format!("/vms/{vm}/files?path=/tmp/up/big.bin"),
        )
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["size"], data.len(), "{body}");
    drop(data);

    let response = server
        .request(
            reqwest::Method::GET,
            &format!("/vms/{vm}/files?path=/tmp/up/big.bin"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/octet-stream"
    );
    let back = response.bytes().await.unwrap();
    assert_eq!(back.len(), 20 * 1024 * 1024);
    assert_eq!(Sha256::digest(&back), digest);
    // What the sandbox itself sees.
    let out = docker(&["exec", &container_of(&vm), "sha256sum", "/tmp/up/big.bin"]);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&hex));

    let (status, stat) = server
        .get(&format!("/vms/{vm}/files/stat?path=/tmp/up/big.bin"))
        .await;
    assert_eq!(status, 200, "{stat}");
    assert_eq!(stat["type"], "file");
    assert_eq!(stat["size"], 20 * 1024 * 1024);
    assert_eq!(stat["name"], "big.bin");
    let (_, stat) = server
        .get(&format!("/vms/{vm}/files/stat?path=/tmp/up"))
        .await;
    assert_eq!(stat["type"], "dir", "{stat}");

    // Missing, relative, NUL, and unknown VM.
    let (status, body) = server
        .get(&format!("/vms/{vm}/files?path=/no/such/file"))
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["code"], 404);
    let (status, _) = server
        .get(&format!("/vms/{vm}/files/stat?path=/no/such/file"))
        .await;
    assert_eq!(status, 404);
    let (status, body) = server.get(&format!("/vms/{vm}/files?path=/tmp/up")).await;
    assert_eq!(status, 400, "a directory: {body}");
    let (status, body) = server.get(&format!("/vms/{vm}/files?path=tmp/x")).await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = server.get(&format!("/vms/{vm}/files?path=/tmp/%00x")).await;
    assert_eq!(status, 400);
    let (status, _) = server.get(&format!("/vms/{vm}/files")).await;
    assert_eq!(status, 400);
    let (status, _) = server.get("/vms/no-such-vm/files?path=/etc/hosts").await;
    assert_eq!(status, 404);
    let response = server
        .request(reqwest::Method::PUT, &format!("/vms/{vm}/files?path=rel"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    // Under a file, however deep, whatever the timing: 400, never a broken upload.
    for path in ["/etc/hostname/x", "/etc/hostname/a/b/c"] {
        let response = server
            .request(
                reqwest::Method::PUT,
                &format!("/vms/{vm}/files?path={path}"),
            )
            .body(vec![b'x'; 256 * 1024])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{path}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("not a directory"),
            "{body}"
        );
    }

    // A declared size over the upload limit is refused before any byte is sent.
    let address = server.url.trim_start_matches("http://").to_string();
    let mut tcp = tokio::net::TcpStream::connect(&address).await.unwrap();
    let request = format!(
        "PUT /api/v1/vms/{vm}/files?path=/tmp/huge HTTP/1.1\r\nhost: {address}\r\nauthorization: Bearer {TOKEN}\r\ncontent-length: {}\r\n\r\n",
        aetherium_gateway::DEFAULT_MAX_UPLOAD_BYTES + 1
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = vec![0u8; 12];
    tokio::time::timeout(Duration::from_secs(10), tcp.read_exact(&mut head))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&head, b"HTTP/1.1 413");

    // A VM that is not RUNNING: 409 both ways.
    assert!(docker(&["kill", &container_of(&vm)]).status.success());
    server
        .wait_vm(&vm, 30, |_, v| v["status"] != "RUNNING")
        .await;
    let (status, _) = server
        .get(&format!("/vms/{vm}/files?path=/etc/hosts"))
        .await;
    assert_eq!(status, 409);
    let response = server
        .request(
            reqwest::Method::PUT,
            &format!("/vms/{vm}/files?path=/tmp/x"),
        )
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_upload_limit_and_cut_off_uploads() {
    let server = TestServer::start_with_upload_limit(1024 * 1024).await;
    let vm = server.running_vm(&unique("limit")).await;
    let put = |path: &str, body: reqwest::Body| {
        server
            .request(
                reqwest::Method::PUT,
                &format!("/vms/{vm}/files?path={path}"),
            )
            .body(body)
            .send()
    };

    // At the limit: fine. A streamed body (no Content-Length) that grows past it is
    // cut off with 413.
    let response = put("/tmp/ok", vec![7u8; 1024 * 1024].into()).await.unwrap();
    assert_eq!(response.status(), 200);
    let chunks = futures::stream::iter(
        (0..8).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![1u8; 256 * 1024]))),
    );
    let response = put("/tmp/too-big", reqwest::Body::wrap_stream(chunks))
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], 413, "{body}");

    // A client that goes away mid-upload harms nothing: the next upload works.
    let address = server.url.trim_start_matches("http://").to_string();
    let mut tcp = tokio::net::TcpStream::connect(&address).await.unwrap();
    let head = format!(
        "PUT /api/v1/vms/{vm}/files?path=/tmp/cut HTTP/1.1\r\nhost: {address}\r\nauthorization: Bearer {TOKEN}\r\ncontent-length: 900000\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(&[5u8; 100_000]).await.unwrap();
    drop(tcp);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let response = put("/tmp/after", "still fine".into()).await.unwrap();
    assert_eq!(response.status(), 200);
    let (status, text) = server
        .get(&format!("/vms/{vm}/files?path=/tmp/after"))
        .await;
    assert_eq!((status, text), (200, Value::String("still fine".into())));
}
