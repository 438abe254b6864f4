//! The agent client against the real agent binary, on unix sockets in temp dirs.
//!
//! The binary comes from `AETHERIUM_AGENT_BIN`, else `$CARGO_TARGET_DIR/agent/`
//! (`make agent`), else `$CARGO_TARGET_DIR/debug/` (`cargo build -p aetherium-agent`).

use aetherium_testkit::agent_bin;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use aetherium_core::agent_client::{AgentClient, AgentError, InitOptions};
use aetherium_types::agent::{
    Base64Bytes, DataEvent, FileType, ProcessConfig, ProcessEvent, ProcessInput, ProcessSelector,
    Pty, PtySize, Signal, StartRequest, code,
};
use bytes::Bytes;
use futures::StreamExt as _;

const WAIT: Duration = Duration::from_secs(10);

/// An agent process on a unix socket; killed through its own handle when dropped.
struct Agent {
    child: Child,
}

impl Agent {
    fn spawn(socket: &Path) -> Agent {
        Agent::spawn_with(socket, &[])
    }

    fn spawn_with(socket: &Path, args: &[&str]) -> Agent {
        let child = Command::new(agent_bin())
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .args(args)
            .env_remove("AETHERIUM_AGENT_ACCESS_TOKEN")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn the agent");
        Agent { child }
    }

    /// The agent's peak resident memory (`VmHWM`), in KiB.
    fn peak_rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running agent and a client for it.
async fn agent() -> (Agent, AgentClient, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("agent.sock");
    let agent = Agent::spawn(&socket);
    let client = AgentClient::unix(&socket);
    client.wait_ready(WAIT).await.expect("agent ready");
    (agent, client, dir)
}

fn sh(script: &str) -> StartRequest {
    StartRequest {
        process: ProcessConfig {
            cmd: "sh".into(),
            args: vec!["-c".into(), script.into()],
            ..ProcessConfig::default()
        },
        ..StartRequest::default()
    }
}

#[tokio::test]
async fn health_and_run() {
    let (_agent, client, _dir) = agent().await;
    client.health().await.expect("healthy");

    let output = client
        .run(&sh("echo out; echo err >&2; exit 3"), 1 << 20)
        .await
        .expect("run");
    assert!(output.pid > 0);
    assert_eq!(output.exit_code, Some(3));
    assert!(output.exited);
    assert_eq!(output.status, "exit status 3");
    assert_eq!(output.stdout, b"out\n");
    assert_eq!(output.stderr, b"err\n");
    assert!(!output.truncated);
    assert_eq!(output.error.as_deref(), Some("exit status 3"));

    let output = client.run(&sh("printf ok"), 1 << 20).await.expect("run");
    assert_eq!((output.exit_code, output.error), (Some(0), None));
    assert_eq!(output.stdout, b"ok");
}

#[tokio::test]
async fn run_caps_output() {
    let (_agent, client, _dir) = agent().await;
    let output = client
        .run(&sh("head -c 200000 /dev/zero; echo tail >&2"), 1000)
        .await
        .expect("run");
    assert_eq!(output.stdout.len(), 1000);
    assert!(output.truncated);
    assert_eq!(output.stderr, b"tail\n");
    assert_eq!(output.exit_code, Some(0));
}

#[tokio::test]
async fn spawn_errors_are_connect_errors() {
    let (_agent, client, _dir) = agent().await;
    let mut request = sh("true");
    request.process.cmd = "no-such-command-aetherium".into();
    match client.run(&request, 1000).await {
        Err(AgentError::Connect(e)) => assert_eq!(e.code, "not_found"),
        other => panic!("expected a not_found Connect error, got {other:?}"),
    }
}

#[tokio::test]
async fn stream_list_and_send_signal() {
    let (_agent, client, _dir) = agent().await;
    let mut request = sh("echo ready; exec sleep 60");
    request.tag = Some("sleeper".into());
    let mut stream = client.start(&request).await.expect("start");
    let pid = stream.pid();

    // Events come as they happen: the start event, then the output, long before
    // the process ends.
    let event = stream.next().await.expect("event").expect("ok");
    assert!(matches!(event, ProcessEvent::Start(start) if start.pid == pid));
    let event = tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("output in time")
        .expect("event")
        .expect("ok");
    assert_eq!(
        event,
        ProcessEvent::Data(DataEvent::Stdout(b"ready\n"[..].into()))
    );

    let processes = client.list().await.expect("list");
    assert_eq!(processes.len(), 1);
    assert_eq!(processes[0].pid, pid);
    assert_eq!(processes[0].tag.as_deref(), Some("sleeper"));
    assert_eq!(processes[0].config, request.process);

    client
        .send_signal(pid, Signal::Sigkill)
        .await
        .expect("signal");
    let mut end = None;
    while let Some(event) = tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("end in time")
    {
        if let ProcessEvent::End(event) = event.expect("ok") {
            end = Some(event);
        }
    }
    let end = end.expect("end event");
    assert_eq!((end.exited, end.status.as_str()), (false, "signal: killed"));

    assert!(client.list().await.expect("list").is_empty());
    match client.send_signal(pid, Signal::Sigkill).await {
        Err(AgentError::Connect(e)) => assert_eq!(e.code, "not_found"),
        other => panic!("expected not_found, got {other:?}"),
    }
}

#[tokio::test]
async fn wait_ready_waits_for_a_late_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("late/agent.sock");
    let client = AgentClient::unix(&socket);
    let late_socket = socket.clone();
    let starter = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        Agent::spawn(&late_socket)
    });
    let started = Instant::now();
    client
        .wait_ready(WAIT)
        .await
        .expect("ready once the agent is up");
    assert!(started.elapsed() >= Duration::from_millis(400));
    let _agent = starter.await.expect("starter");
    client.health().await.expect("healthy");
}

#[tokio::test]
async fn unavailable_without_an_agent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let client = AgentClient::unix(dir.path().join("nobody.sock"));
    assert!(matches!(
        client.health().await,
        Err(AgentError::Unavailable(_))
    ));
    assert!(matches!(
        client.list().await,
        Err(AgentError::Unavailable(_))
    ));
    let started = Instant::now();
    let waited = client.wait_ready(Duration::from_millis(300)).await;
    assert!(
        matches!(waited, Err(AgentError::Unavailable(_))),
        "{waited:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(matches!(
        client.run(&sh("true"), 10).await,
        Err(AgentError::Unavailable(_))
    ));
}

#[tokio::test]
async fn agent_dying_mid_stream_is_unavailable() {
    let (mut agent, client, _dir) = agent().await;
    let mut stream = client
        .start(&sh("echo ready; sleep 5"))
        .await
        .expect("start");
    assert!(matches!(
        stream.next().await,
        Some(Ok(ProcessEvent::Start(_)))
    ));
    assert!(matches!(
        stream.next().await,
        Some(Ok(ProcessEvent::Data(_)))
    ));
    agent.child.kill().expect("kill the agent");
    let next = tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("noticed in time");
    assert!(
        matches!(next, Some(Err(AgentError::Unavailable(_)))),
        "{next:?}"
    );
    assert!(stream.next().await.is_none(), "stream over after an error");
}

async fn next_output(stream: &mut aetherium_core::agent_client::ProcessStream) -> Vec<u8> {
    loop {
        match tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("output in time")
            .expect("event")
            .expect("ok")
        {
            ProcessEvent::Data(
                DataEvent::Stdout(bytes) | DataEvent::Stderr(bytes) | DataEvent::Pty(bytes),
            ) => return bytes.0.to_vec(),
            ProcessEvent::Keepalive(_) | ProcessEvent::Start(_) => continue,
            ProcessEvent::End(end) => panic!("ended early: {end:?}"),
        }
    }
}

#[tokio::test]
async fn reattach_input_and_close_stdin() {
    let (_agent, client, _dir) = agent().await;
    let mut request = sh("while read line; do echo got $line; done; echo eof");
    request.tag = Some("echoer".into());
    let first = client.start(&request).await.expect("start");
    let pid = first.pid();
    drop(first);

    let mut again = client
        .connect(ProcessSelector::Tag("echoer".into()))
        .await
        .expect("connect");
    assert_eq!(again.pid(), pid);
    client
        .send_input(
            ProcessSelector::Pid(pid),
            ProcessInput::Stdin(Base64Bytes(b"one\n".to_vec())),
        )
        .await
        .expect("send input");
    assert_eq!(next_output(&mut again).await, b"got one\n");
    let input = futures::stream::iter(["two\n", "three\n"])
        .map(|s| ProcessInput::Stdin(Base64Bytes(s.as_bytes().to_vec())));
    client
        .stream_input(ProcessSelector::Pid(pid), input)
        .await
        .expect("stream input");
    let mut got = Vec::new();
    while got != b"got two\ngot three\n" {
        got.extend(next_output(&mut again).await);
    }
    client
        .close_stdin(ProcessSelector::Pid(pid))
        .await
        .expect("close stdin");
    assert_eq!(next_output(&mut again).await, b"eof\n");
    match client.connect(ProcessSelector::Pid(u32::MAX)).await {
        Err(AgentError::Connect(e)) => assert_eq!(e.code, code::NOT_FOUND),
        other => panic!("expected not_found, got {other:?}"),
    }
}

#[tokio::test]
async fn pty_sessions_resize() {
    let (_agent, client, _dir) = agent().await;
    let mut request = sh("stty size; read x; stty size");
    request.pty = Some(Pty {
        size: PtySize { cols: 90, rows: 30 },
    });
    let mut stream = client.start(&request).await.expect("start");
    let pid = stream.pid();
    let mut screen = Vec::new();
    while !String::from_utf8_lossy(&screen).contains("30 90") {
        screen.extend(next_output(&mut stream).await);
    }
    client
        .update_pty(ProcessSelector::Pid(pid), 120, 50)
        .await
        .expect("resize");
    client
        .send_input(
            ProcessSelector::Pid(pid),
            ProcessInput::Pty(Base64Bytes(b"go\r".to_vec())),
        )
        .await
        .expect("type");
    while !String::from_utf8_lossy(&screen).contains("50 120") {
        screen.extend(next_output(&mut stream).await);
    }
}

#[tokio::test]
async fn files_and_directories() {
    let (_agent, client, dir) = agent().await;
    let root = dir.path().display().to_string();
    let path = format!("{root}/a dir/file.txt");
    let chunks = futures::stream::iter(["hello ", "world"])
        .map(|s| Ok::<_, std::io::Error>(Bytes::from_static(s.as_bytes())));
    client.upload(&path, chunks).await.expect("upload");
    let mut download = client.download(&path).await.expect("download");
    let mut content = Vec::new();
    while let Some(chunk) = download.next().await {
        content.extend_from_slice(&chunk.expect("chunk"));
    }
    assert_eq!(content, b"hello world");
    let entry = client.stat(&path).await.expect("stat");
    assert_eq!((entry.size, entry.r#type), (11, FileType::File as i32));
    client
        .make_dir(&format!("{root}/x/y"))
        .await
        .expect("mkdir");
    match client.make_dir(&format!("{root}/x/y")).await {
        Err(AgentError::Connect(e)) => assert_eq!(e.code, code::ALREADY_EXISTS),
        other => panic!("expected already_exists, got {other:?}"),
    }
    let names: Vec<String> = client
        .list_dir(&root, 2)
        .await
        .expect("list")
        .into_iter()
        .map(|e| e.path.trim_start_matches(&root).to_string())
        .collect();
    assert!(names.contains(&"/a dir/file.txt".to_string()), "{names:?}");
    assert!(names.contains(&"/x/y".to_string()), "{names:?}");
    client
        .remove(&format!("{root}/a dir"))
        .await
        .expect("remove");
    match client.download(&path).await {
        Err(AgentError::Connect(e)) => assert_eq!(e.code, code::NOT_FOUND),
        other => panic!("expected not_found, got {other:?}"),
    }
}

#[tokio::test]
async fn init_access_token_and_secrets() {
    let (_agent, client, _dir) = agent().await;
    client
        .init(&InitOptions {
            env_vars: BTreeMap::from([("FROM_INIT".into(), "yes".into())]),
            access_token: Some("tok".into()),
            ..InitOptions::default()
        })
        .await
        .expect("init");
    match client.list().await {
        Err(AgentError::Connect(e)) => assert_eq!(e.code, code::UNAUTHENTICATED),
        other => panic!("expected unauthenticated, got {other:?}"),
    }
    let client = client.with_access_token("tok");
    client
        .set_secrets(&BTreeMap::from([("TOKEN".into(), "hunter2".into())]))
        .await
        .expect("secrets");
    let output = client
        .run(&sh("echo $FROM_INIT $TOKEN"), 1024)
        .await
        .expect("run");
    assert_eq!(output.stdout, b"yes hunter2\n");
    client.delete_secrets(Some("TOKEN")).await.expect("delete");
    let output = client
        .run(&sh("echo \"[$TOKEN]\""), 1024)
        .await
        .expect("run");
    assert_eq!(output.stdout, b"[]\n");
    assert!(client.delete_secrets(Some("TOKEN")).await.is_err());
}

/// A fake VMM socket: answers the hybrid-vsock handshake, then proxies the
/// connection to the real agent's unix socket.
#[tokio::test]
async fn hybrid_vsock_through_a_fake_vmm() {
    let (_agent, _direct, dir) = agent().await;
    let agent_socket = dir.path().join("agent.sock");
    let vmm_socket = dir.path().join("vmm.sock");
    let listener = tokio::net::UnixListener::bind(&vmm_socket).expect("bind");
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let agent_socket = agent_socket.clone();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
                let mut line = Vec::new();
                loop {
                    let byte = conn.read_u8().await.expect("handshake byte");
                    if byte == b'\n' {
                        break;
                    }
                    line.push(byte);
                }
                let line = String::from_utf8(line).expect("utf8");
                let Some(port) = line.strip_prefix("CONNECT ") else {
                    let _ = conn.write_all(b"ERR bad request\n").await;
                    return;
                };
                assert_eq!(port, "10789");
                conn.write_all(b"OK 1073741824\n").await.expect("answer");
                let mut upstream = tokio::net::UnixStream::connect(&agent_socket)
                    .await
                    .expect("agent");
                let _ = tokio::io::copy_bidirectional(&mut conn, &mut upstream).await;
            });
        }
    });
    let client = AgentClient::hybrid_vsock(&vmm_socket, 10789);
    client.wait_ready(WAIT).await.expect("ready through vsock");
    let output = client.run(&sh("echo via vsock"), 1024).await.expect("run");
    assert_eq!(output.stdout, b"via vsock\n");
    let wrong = AgentClient::hybrid_vsock(dir.path().join("nobody.sock"), 1);
    assert!(matches!(
        wrong.health().await,
        Err(AgentError::Unavailable(_))
    ));
}

/// A deterministic, incompressible-looking byte stream of `len` bytes in 1 MiB
/// chunks, regenerated for checking (never held in memory whole).
fn generated(len: u64) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    const CHUNK: u64 = 1 << 20;
    futures::stream::iter(0..len.div_ceil(CHUNK)).map(move |i| {
        let size = CHUNK.min(len - i * CHUNK) as usize;
        let mut state = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut chunk = Vec::with_capacity(size);
        while chunk.len() < size {
            // xorshift64
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.extend_from_slice(&state.to_le_bytes());
        }
        chunk.truncate(size);
        Ok(Bytes::from(chunk))
    })
}

#[tokio::test]
async fn one_gib_in_and_out_in_constant_memory() {
    const SIZE: u64 = 1 << 30;
    let (agent, client, dir) = agent().await;
    let path = dir.path().join("big.bin").display().to_string();
    let started = Instant::now();
    client.upload(&path, generated(SIZE)).await.expect("upload");
    let uploaded = started.elapsed();
    assert_eq!(std::fs::metadata(&path).expect("file").len(), SIZE);

    let started = Instant::now();
    let mut download = client.download(&path).await.expect("download");
    let mut expected = Box::pin(generated(SIZE));
    let mut pending = Bytes::new();
    let mut total = 0u64;
    while let Some(chunk) = download.next().await {
        let mut chunk = chunk.expect("chunk");
        total += chunk.len() as u64;
        while !chunk.is_empty() {
            if pending.is_empty() {
                pending = expected.next().await.expect("more expected").expect("gen");
            }
            let n = pending.len().min(chunk.len());
            assert!(
                chunk[..n] == pending[..n],
                "content differs near byte {total}"
            );
            chunk = chunk.slice(n..);
            pending = pending.slice(n..);
        }
    }
    let downloaded = started.elapsed();
    assert_eq!(total, SIZE);
    assert!(pending.is_empty() && expected.next().await.is_none());
    let peak = agent.peak_rss_kib();
    eprintln!(
        "1 GiB: upload {uploaded:?} ({:.0} MB/s), download {downloaded:?} ({:.0} MB/s), agent peak RSS {} KiB",
        SIZE as f64 / 1e6 / uploaded.as_secs_f64(),
        SIZE as f64 / 1e6 / downloaded.as_secs_f64(),
        peak
    );
    assert!(peak < 64 * 1024, "agent peak RSS {peak} KiB");
    std::fs::remove_file(&path).expect("clean up");
}
