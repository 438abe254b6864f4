//! The tunnel endpoint (`aetherium_core::tunnel`) in front of the real agent binary:
//! everything the gateway does with an agent (exec, streamed output, stdin, a pty,
//! files) works through it; wrong secrets, other workers' VMs and garbage are
//! refused without leaking sockets; `RemoteAgents` routes by the owner's row.
//!
//! The binary comes from `AETHERIUM_AGENT_BIN`, else `$CARGO_TARGET_DIR/agent/`
//! (`make agent`), else `$CARGO_TARGET_DIR/debug/` (`cargo build -p aetherium-agent`).
#![allow(clippy::unwrap_used)]

use aetherium_testkit::agent_bin;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aetherium_core::CoreError;
use aetherium_core::agent_client::{AgentClient, AgentError, ProcessStream};
use aetherium_core::agents::{AgentRouter, LocalAgents, OwnedAgents, RemoteAgents};
use aetherium_core::cluster_tls;
use aetherium_core::store::{SqliteStore, Store};
use aetherium_core::tunnel::{self, GREETING_PREFIX, TunnelOptions, TunnelSecret, TunnelTargets};
use aetherium_core::vmm::{
    Backend, BackendError, SandboxExit, SandboxInfo, SandboxSpec, SandboxState,
};
use aetherium_types::agent::{
    Base64Bytes, DataEvent, ProcessConfig, ProcessEvent, ProcessInput, ProcessSelector, Pty,
    PtySize, StartRequest,
};
use aetherium_types::{Orchestrator, Vm, VmStatus, Worker, WorkerStatus, new_id};
use bytes::Bytes;
use chrono::Utc;
use futures::StreamExt as _;
use futures::stream::BoxStream;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(10);
const SECRET: &str = "tunnel-test-secret-0123456789";

/// An agent process on a unix socket; killed through its own handle when dropped.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A real agent ("vm-a") behind a tunnel endpoint on loopback. "vm-dead" is
/// this worker's too, but its socket does not exist.
struct Fixture {
    _agent: Agent,
    dir: tempfile::TempDir,
    socket: PathBuf,
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    server: JoinHandle<()>,
}

impl Fixture {
    async fn start() -> Fixture {
        Fixture::start_with(TunnelOptions::default()).await
    }

    async fn start_with(options: TunnelOptions) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let child = Command::new(agent_bin())
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .env_remove("AETHERIUM_AGENT_ACCESS_TOKEN")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn the agent");
        let agent = Agent(child);
        let local = AgentClient::unix(&socket);
        local.wait_ready(WAIT).await.expect("agent ready");
        let targets: BTreeMap<String, AgentClient> = [
            ("vm-a".to_string(), local),
            (
                "vm-dead".to_string(),
                AgentClient::unix(dir.path().join("missing.sock")),
            ),
        ]
        .into();
        let (addr, stop, server) = serve(Arc::new(targets), options).await;
        Fixture {
            _agent: agent,
            dir,
            socket,
            addr,
            stop,
            server,
        }
    }

    fn client(&self, vm_id: &str) -> AgentClient {
        AgentClient::tunnel(self.addr.to_string(), vm_id, secret())
    }

    fn root(&self) -> String {
        self.dir.path().display().to_string()
    }
}

fn secret() -> TunnelSecret {
    TunnelSecret::new(SECRET).unwrap()
}

async fn serve(
    targets: Arc<dyn TunnelTargets>,
    options: TunnelOptions,
) -> (SocketAddr, watch::Sender<bool>, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stop_rx) = watch::channel(false);
    let server = tokio::spawn(tunnel::serve_with(
        listener,
        targets,
        secret(),
        options,
        stop_rx,
    ));
    (addr, stop, server)
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

async fn next_output(stream: &mut ProcessStream) -> Vec<u8> {
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

/// Sockets of this host with local port `port` that are not listening and still
/// belong to a process (TIME_WAIT ones have none): the endpoint's connections.
fn open_sockets_on(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields[1]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            local_port == Some(port) && fields[3] != "0A" && fields[9] != "0"
        })
        .count()
}

async fn assert_no_sockets_left(port: u16) {
    let deadline = Instant::now() + WAIT;
    loop {
        let open = open_sockets_on(port);
        if open == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{open} connections of the endpoint still open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn refusal(result: Result<impl std::fmt::Debug, AgentError>) -> String {
    match result {
        Err(AgentError::Unavailable(message)) => message,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

// ---- what works through a tunnel -----------------------------------------------------

#[tokio::test]
async fn exec_round_trip() {
    let f = Fixture::start_with(TunnelOptions {
        max_pending_handshakes: 8,
        ..TunnelOptions::default()
    })
    .await;
    let client = f.client("vm-a");
    client.health().await.expect("healthy through the tunnel");
    let output = client
        .run(&sh("echo out; echo err >&2; exit 3"), 1 << 20)
        .await
        .expect("run");
    assert_eq!(output.exit_code, Some(3));
    assert_eq!(output.stdout, b"out\n");
    assert_eq!(output.stderr, b"err\n");
    // Many calls, each its own connection (and handshake).
    for i in 0..20 {
        let output = client
            .run(&sh(&format!("printf {i}")), 1 << 20)
            .await
            .expect("run");
        assert_eq!(output.stdout, i.to_string().as_bytes());
    }
    // And at once: more than the handshakes allowed in progress at a time.
    let mut calls = Vec::new();
    for i in 0..40 {
        let client = client.clone();
        calls.push(tokio::spawn(async move {
            client.run(&sh(&format!("printf {i}")), 1024).await
        }));
    }
    for (i, call) in calls.into_iter().enumerate() {
        let output = call.await.unwrap().expect("run");
        assert_eq!(output.stdout, i.to_string().as_bytes());
    }
    assert_no_sockets_left(f.addr.port()).await;
}

#[tokio::test]
async fn output_streams_as_it_happens() {
    let f = Fixture::start().await;
    let client = f.client("vm-a");
    let flag = f.dir.path().join("go");
    // The command prints, then waits for the test to see that output first.
    let script = format!(
        "echo first; while [ ! -e '{}' ]; do sleep 0.02; done; echo second",
        flag.display()
    );
    let mut stream = client.start(&sh(&script)).await.expect("start");
    assert_eq!(next_output(&mut stream).await, b"first\n");
    std::fs::write(&flag, b"").unwrap();
    assert_eq!(next_output(&mut stream).await, b"second\n");
    let mut end = None;
    while let Some(event) = tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("end")
    {
        if let ProcessEvent::End(e) = event.expect("ok") {
            end = Some(e);
        }
    }
    assert_eq!(end.expect("end event").exit_code, 0);
}

#[tokio::test]
async fn stdin_reaches_the_process() {
    let f = Fixture::start().await;
    let client = f.client("vm-a");
    let mut stream = client
        .start(&sh("while read line; do echo got $line; done; echo eof"))
        .await
        .expect("start");
    let pid = stream.pid();
    client
        .send_input(
            ProcessSelector::Pid(pid),
            ProcessInput::Stdin(Base64Bytes(b"one\n".to_vec())),
        )
        .await
        .expect("send input");
    assert_eq!(next_output(&mut stream).await, b"got one\n");
    let input = futures::stream::iter(["two\n", "three\n"])
        .map(|s| ProcessInput::Stdin(Base64Bytes(s.as_bytes().to_vec())));
    client
        .stream_input(ProcessSelector::Pid(pid), input)
        .await
        .expect("stream input");
    client
        .close_stdin(ProcessSelector::Pid(pid))
        .await
        .expect("close stdin");
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("eof") {
        got.extend(next_output(&mut stream).await);
    }
    assert_eq!(got, b"got two\ngot three\neof\n");
}

#[tokio::test]
async fn pty_sessions_work() {
    let f = Fixture::start().await;
    let client = f.client("vm-a");
    let mut request = sh("stty size; read x; echo typed $x; stty size");
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
    assert!(String::from_utf8_lossy(&screen).contains("typed go"));
}

#[tokio::test]
async fn files_stream_both_ways() {
    let f = Fixture::start().await;
    let client = f.client("vm-a");
    // 5 MiB of a pattern that catches reordered or lost chunks.
    let content: Vec<u8> = (0..5u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let path = format!("{}/up/big.bin", f.root());
    let chunks: Vec<Result<Bytes, std::io::Error>> = content
        .chunks(100_000)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    client
        .upload(&path, futures::stream::iter(chunks))
        .await
        .expect("upload");
    assert_eq!(std::fs::read(&path).unwrap(), content, "the file on disk");
    let entry = client.stat(&path).await.expect("stat");
    assert_eq!(entry.size, content.len() as i64);
    let mut download = client.download(&path).await.expect("download");
    let mut got = Vec::with_capacity(content.len());
    while let Some(chunk) = download.next().await {
        got.extend_from_slice(&chunk.expect("chunk"));
    }
    assert!(got == content, "downloaded {} bytes, differing", got.len());
    let listing = client
        .list_dir(&format!("{}/up", f.root()), 1)
        .await
        .expect("ls");
    assert_eq!(listing.len(), 1);
    client.remove(&path).await.expect("remove");
    assert!(!Path::new(&path).exists());
}

// ---- refusals ------------------------------------------------------------------------

#[tokio::test]
async fn wrong_secret_unknown_vm_and_missing_agent_are_refused() {
    let f = Fixture::start().await;
    let wrong = AgentClient::tunnel(
        f.addr.to_string(),
        "vm-a",
        TunnelSecret::new("another-secret-0123456789").unwrap(),
    );
    let message = refusal(wrong.health().await);
    assert!(
        message.contains("refused by the VM's worker: auth"),
        "{message}"
    );

    // Authenticated, but not this worker's VM: nothing is reached.
    let message = refusal(f.client("vm-elsewhere").health().await);
    assert!(message.contains("not-owner"), "{message}");

    let message = refusal(f.client("vm-dead").health().await);
    assert!(message.contains("no-agent"), "{message}");

    // Ids that could not be a VM's are refused before anything is sent.
    assert!(matches!(
        f.client("vm a\n").health().await,
        Err(AgentError::Unavailable(_))
    ));
    // The agent still answers through the tunnel after all that.
    f.client("vm-a").health().await.expect("healthy");
    assert_no_sockets_left(f.addr.port()).await;
}

/// Connects raw, sends `payload` (then half-closes when asked), and returns all the
/// endpoint answered until it closed.
async fn raw_exchange(addr: SocketAddr, payload: &[u8], half_close: bool) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // The endpoint may refuse and close before reading all of a long payload.
    let _ = stream.write_all(payload).await;
    if half_close {
        let _ = stream.shutdown().await;
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut answer))
        .await
        .expect("the endpoint closes");
    answer
}

/// The answer after the greeting line.
fn after_greeting(answer: &[u8]) -> &[u8] {
    assert!(
        answer.starts_with(GREETING_PREFIX.as_bytes()),
        "{:?}",
        String::from_utf8_lossy(answer)
    );
    let end = answer
        .iter()
        .position(|&b| b == b'\n')
        .expect("greeting line");
    &answer[end + 1..]
}

#[tokio::test]
async fn garbage_handshakes_are_refused_without_leaks() {
    let f = Fixture::start_with(TunnelOptions {
        handshake_timeout: Duration::from_millis(300),
        ..TunnelOptions::default()
    })
    .await;
    let mac = "00".repeat(32);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            "ERR bad-request",
        ),
        (b"\n".to_vec(), "ERR bad-request"),
        (format!("CONNECT vm-a {mac}\n").into_bytes(), "ERR auth"),
        (
            format!("CONNECT vm-elsewhere {mac}\n").into_bytes(),
            "ERR auth",
        ),
        (
            format!("CONNECT ../etc {mac}\n").into_bytes(),
            "ERR bad-request",
        ),
        (vec![b'A'; 10_000], "ERR bad-request"),
        (vec![0xff; 300], "ERR bad-request"),
        // No newline: the peer waits, the endpoint does not.
        (b"CONNECT vm-a".to_vec(), "ERR timeout"),
        (Vec::new(), "ERR timeout"),
    ];
    for (payload, expected) in &cases {
        let answer = raw_exchange(f.addr, payload, false).await;
        let rest = String::from_utf8_lossy(after_greeting(&answer)).to_string();
        assert!(rest.starts_with(expected), "{payload:?}: {rest:?}");
        assert!(
            rest.ends_with('\n') && rest.lines().count() == 1,
            "{rest:?}"
        );
    }

    // Random bytes, cut off at random points: never an `OK`, never a panic.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut peers = Vec::new();
    for i in 0..60 {
        let len = (next() % 600) as usize;
        let mut payload: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if i % 3 == 0 {
            payload.insert((next() as usize) % (payload.len() + 1), b'\n');
        }
        let half_close = i % 2 == 0;
        let addr = f.addr;
        peers.push(tokio::spawn(async move {
            raw_exchange(addr, &payload, half_close).await
        }));
    }
    for peer in peers {
        let answer = peer.await.unwrap();
        let rest = after_greeting(&answer);
        assert!(
            rest.is_empty() || rest.starts_with(b"ERR "),
            "{:?}",
            String::from_utf8_lossy(rest)
        );
    }
    // A peer that connects and goes away at once.
    for _ in 0..20 {
        drop(TcpStream::connect(f.addr).await.unwrap());
    }
    assert_no_sockets_left(f.addr.port()).await;
    // Still serving.
    f.client("vm-a")
        .health()
        .await
        .expect("healthy after the garbage");
    assert!(!f.server.is_finished());
}

#[tokio::test]
async fn handshakes_in_progress_are_bounded() {
    let f = Fixture::start_with(TunnelOptions {
        handshake_timeout: Duration::from_secs(5),
        max_pending_handshakes: 2,
        ..TunnelOptions::default()
    })
    .await;
    let greeting = |mut stream: TcpStream| async move {
        let mut greeting = [0u8; 84];
        stream.read_exact(&mut greeting).await.map(|_| stream)
    };
    // Two peers that say nothing hold both slots.
    let mut idle = Vec::new();
    for _ in 0..2 {
        let stream = TcpStream::connect(f.addr).await.unwrap();
        idle.push(greeting(stream).await.unwrap());
    }
    // A third waits to be accepted: no greeting yet.
    let third = TcpStream::connect(f.addr).await.unwrap();
    let waiting = tokio::spawn(greeting(third));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "greeted past the limit");
    // One idle peer leaves: the third is served.
    drop(idle.pop());
    let third = tokio::time::timeout(WAIT, waiting)
        .await
        .expect("greeted once a slot is free")
        .unwrap()
        .unwrap();
    drop((idle, third));
    // Established tunnels do not count: two running streams, then a third call.
    let client = f.client("vm-a");
    let mut first = client.start(&sh("echo up; sleep 5")).await.expect("start");
    assert_eq!(next_output(&mut first).await, b"up\n");
    let mut second = client.start(&sh("echo up2; sleep 5")).await.expect("start");
    assert_eq!(next_output(&mut second).await, b"up2\n");
    tokio::time::timeout(WAIT, client.health())
        .await
        .expect("in time")
        .expect("a third connection");
}

#[tokio::test]
async fn shutdown_closes_the_endpoint_and_its_tunnels() {
    let f = Fixture::start().await;
    let client = f.client("vm-a");
    let mut stream = client.start(&sh("echo up; sleep 60")).await.expect("start");
    assert_eq!(next_output(&mut stream).await, b"up\n");
    // The leak check sees the endpoint's side of an open tunnel.
    assert_eq!(open_sockets_on(f.addr.port()), 1);
    f.stop.send(true).unwrap();
    tokio::time::timeout(WAIT, f.server)
        .await
        .expect("stopped")
        .unwrap();
    let next = tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("noticed");
    assert!(
        matches!(next, Some(Err(AgentError::Unavailable(_)))),
        "{next:?}"
    );
    assert!(
        TcpStream::connect(f.addr).await.is_err(),
        "no longer listening"
    );
    // The process belongs to the agent, not to the tunnel.
    let local = AgentClient::unix(&f.socket);
    let processes = local.list().await.expect("list");
    assert_eq!(processes.len(), 1);
    local
        .send_signal(processes[0].pid, aetherium_types::agent::Signal::Sigkill)
        .await
        .expect("kill");
    assert_no_sockets_left(f.addr.port()).await;
}

// ---- ownership and routing from the store ----------------------------------------------

/// A backend whose only use here is where agents are.
struct SocketsBackend {
    socket: PathBuf,
}

#[async_trait::async_trait]
impl Backend for SocketsBackend {
    fn kind(&self) -> Orchestrator {
        Orchestrator::Docker
    }
    async fn ping(&self) -> Result<(), BackendError> {
        Ok(())
    }
    async fn create(&self, _: &SandboxSpec) -> Result<(), BackendError> {
        Err(BackendError::Rejected("not in this test".into()))
    }
    async fn delete(&self, _: &str) -> Result<(), BackendError> {
        Ok(())
    }
    async fn status(&self, _: &str) -> Result<SandboxState, BackendError> {
        Ok(SandboxState::Running)
    }
    async fn list(&self) -> Result<Vec<SandboxInfo>, BackendError> {
        Ok(Vec::new())
    }
    fn watch_exits(&self) -> BoxStream<'static, Result<SandboxExit, BackendError>> {
        futures::stream::pending().boxed()
    }
    fn agent_socket(&self, _: &str) -> PathBuf {
        self.socket.clone()
    }
}

fn worker_row(id: &str, address: &str, status: WorkerStatus, age: Duration) -> Worker {
    let seen = Utc::now() - chrono::Duration::from_std(age).unwrap();
    Worker {
        id: id.into(),
        hostname: "h".into(),
        address: address.into(),
        zone: "z".into(),
        status,
        capabilities: vec!["docker".into()],
        labels: Default::default(),
        cpu_cores: 2,
        memory_mb: 1024,
        max_vms: 10,
        vm_count: 0,
        status_message: None,
        started_at: seen,
        last_seen: seen,
    }
}

fn vm_row(worker_id: &str, status: VmStatus) -> Vm {
    let id = new_id();
    Vm {
        name: format!("vm-{}", &id[..8]),
        id,
        status,
        orchestrator: Orchestrator::Docker,
        image: "i".into(),
        vcpu_count: 1,
        memory_mb: 128,
        disk_mb: None,
        created_by: None,
        network_policy: None,
        placement: None,
        kernel_path: None,
        rootfs_path: None,
        socket_path: None,
        worker_id: Some(worker_id.into()),
        error: None,
        created_at: Utc::now(),
        started_at: None,
        stopped_at: None,
        expires_at: None,
        metadata: Default::default(),
    }
}

#[tokio::test]
async fn remote_agents_route_by_the_owner_row() {
    // One real agent; worker "w-remote" serves it through its tunnel endpoint,
    // knowing its VMs from the shared store.
    let f = Fixture::start().await;
    let db = f.dir.path().join("store.db");
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap(),
    );
    let backend: Arc<dyn Backend> = Arc::new(SocketsBackend {
        socket: f.socket.clone(),
    });
    let owned = OwnedAgents {
        worker_id: "w-remote".into(),
        store: store.clone(),
        backend: backend.clone(),
    };
    let (addr, _stop, _server) = serve(Arc::new(owned), TunnelOptions::default()).await;
    let stale_after = Duration::from_secs(30);
    for w in [
        worker_row(
            "w-remote",
            &addr.to_string(),
            WorkerStatus::Active,
            Duration::ZERO,
        ),
        worker_row(
            "w-stale",
            "127.0.0.1:1",
            WorkerStatus::Active,
            Duration::from_secs(120),
        ),
        worker_row(
            "w-offline",
            "127.0.0.1:1",
            WorkerStatus::Offline,
            Duration::ZERO,
        ),
        worker_row("w-silent", "", WorkerStatus::Active, Duration::ZERO),
        worker_row("w-local", "", WorkerStatus::Active, Duration::ZERO),
    ] {
        store.upsert_worker(&w).await.unwrap();
    }
    let running = vm_row("w-remote", VmStatus::Running);
    let stopped = vm_row("w-remote", VmStatus::Stopped);
    let theirs = vm_row("w-stale", VmStatus::Running);
    for vm in [&running, &stopped, &theirs] {
        store.insert_vm(vm).await.unwrap();
    }

    // A gateway: no worker of its own.
    let router = RemoteAgents {
        local: None,
        store: store.clone(),
        secret: secret(),
        stale_after,
        tls: None,
    };
    let agent = router.agent_for(&running).await.expect("routed");
    let output = agent.run(&sh("echo remote"), 1024).await.expect("run");
    assert_eq!(output.stdout, b"remote\n");

    // The owner's endpoint refuses what it does not own or cannot reach, whatever
    // the caller believes.
    let mut forged = theirs.clone();
    forged.worker_id = Some("w-remote".into());
    let client = router.agent_for(&forged).await.expect("a client");
    assert!(refusal(client.health().await).contains("not-owner"));
    let mut not_running = stopped.clone();
    not_running.status = VmStatus::Running;
    let client = router.agent_for(&not_running).await.expect("a client");
    assert!(refusal(client.health().await).contains("no-agent"));

    // Owners that cannot be reached are refused at once, saying why.
    for (owner, why) in [
        ("w-stale", "offline"),
        ("w-offline", "offline"),
        ("w-silent", "no tunnel address"),
        ("w-unknown", "not registered"),
    ] {
        let vm = vm_row(owner, VmStatus::Running);
        match router.agent_for(&vm).await {
            Err(CoreError::Unavailable(m)) => assert!(m.contains(why), "{owner}: {m}"),
            other => panic!("{owner}: expected Unavailable, got {other:?}"),
        }
    }
    let mut unplaced = vm_row("x", VmStatus::Running);
    unplaced.worker_id = None;
    assert!(matches!(
        router.agent_for(&unplaced).await,
        Err(CoreError::Conflict(_))
    ));

    // A worker's own VMs are reached directly, even with no address advertised.
    let router = RemoteAgents {
        local: Some(LocalAgents {
            worker_id: "w-local".into(),
            backend,
        }),
        store: store.clone(),
        secret: secret(),
        stale_after,
        tls: None,
    };
    let mine = vm_row("w-local", VmStatus::Running);
    let agent = router.agent_for(&mine).await.expect("local");
    assert_eq!(agent, AgentClient::unix(&f.socket));
    let agent = router.agent_for(&running).await.expect("remote");
    // Carrying the VM's agent token, derived from the cluster secret.
    assert_eq!(
        agent,
        AgentClient::tunnel(addr.to_string(), running.id.clone(), secret())
            .with_access_token(secret().agent_tokens().for_vm(&running.id))
    );
    store.close().await;
}

// ---- TLS ---------------------------------------------------------------------------------

/// Writes a certificate and its key into `dir` as `<name>.pem` / `<name>.key`.
fn write_pair(dir: &Path, name: &str, issued: &cluster_tls::Issued) -> cluster_tls::TlsFiles {
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, &issued.cert_pem).unwrap();
    std::fs::write(&key, &issued.key_pem).unwrap();
    cluster_tls::TlsFiles {
        ca: dir.join("ca.pem"),
        cert,
        key,
    }
}

/// A cluster CA in `dir` (`ca.pem`, and its key, returned).
fn cluster_ca(dir: &Path) -> String {
    let ca = cluster_tls::new_ca().unwrap();
    std::fs::write(dir.join("ca.pem"), &ca.cert_pem).unwrap();
    ca.key_pem
}

#[tokio::test]
async fn the_tls_tunnel_authenticates_both_ends_by_the_cluster_ca() {
    let pki = tempfile::tempdir().unwrap();
    let ca_key = cluster_ca(pki.path());
    let issue = |holder: cluster_tls::Holder| cluster_tls::issue(&ca_key, &holder).unwrap();
    let worker_files = write_pair(
        pki.path(),
        "worker",
        &issue(cluster_tls::Holder::Worker("w-right".into())),
    );
    let gateway_files = write_pair(
        pki.path(),
        "gateway",
        &issue(cluster_tls::Holder::Gateway("gw-1".into())),
    );
    let worker_tls = cluster_tls::ClusterTls::load(worker_files.clone()).unwrap();
    let gateway_tls = cluster_tls::ClusterTls::load(gateway_files).unwrap();
    let f = Fixture::start_with(TunnelOptions {
        tls: Some(worker_tls),
        // A plaintext client never starts TLS: cut it off soon.
        handshake_timeout: Duration::from_secs(2),
        ..TunnelOptions::default()
    })
    .await;
    let through = |expected_worker: &str, tls: &cluster_tls::ClusterTls| {
        f.client("vm-a")
            .with_tunnel_tls(tls.clone(), expected_worker)
    };

    // The gateway reaches the worker it expects, and everything works inside.
    let out = through("w-right", &gateway_tls)
        .run(&sh("echo over-tls"), 1 << 20)
        .await
        .unwrap();
    assert_eq!(out.stdout, b"over-tls\n");

    // A worker answering with another id's certificate is refused by the gateway.
    let e = through("w-other", &gateway_tls).health().await.unwrap_err();
    assert!(matches!(e, AgentError::Unavailable(_)), "{e}");
    assert!(e.to_string().contains("certificate"), "{e}");

    // Plaintext against a TLS endpoint: no tunnel.
    assert!(f.client("vm-a").health().await.is_err());

    // A client whose certificate another CA signed: refused by the worker.
    let rogue = tempfile::tempdir().unwrap();
    let rogue_key = cluster_ca(rogue.path());
    let rogue_files = write_pair(
        rogue.path(),
        "gateway",
        &cluster_tls::issue(&rogue_key, &cluster_tls::Holder::Gateway("evil".into())).unwrap(),
    );
    // It trusts the real CA (so the server is accepted) but holds a foreign cert.
    std::fs::copy(pki.path().join("ca.pem"), rogue.path().join("ca.pem")).unwrap();
    let rogue_tls = cluster_tls::ClusterTls::load(rogue_files).unwrap();
    assert!(through("w-right", &rogue_tls).health().await.is_err());

    // Rotation without a restart: the worker's files are replaced (here by a
    // certificate naming "w-rotated"); new connections use the new one at once.
    let rotated = issue(cluster_tls::Holder::Worker("w-rotated".into()));
    // mtime granularity: make sure the change is seen.
    tokio::time::sleep(Duration::from_millis(20)).await;
    std::fs::write(&worker_files.key, &rotated.key_pem).unwrap();
    std::fs::write(&worker_files.cert, &rotated.cert_pem).unwrap();
    through("w-rotated", &gateway_tls).health().await.unwrap();
    assert!(through("w-right", &gateway_tls).health().await.is_err());
}
