//! The agent client against the real agent binary, on unix sockets in temp dirs.
//!
//! The binary comes from `AETHERIUM_AGENT_BIN`, else `$CARGO_TARGET_DIR/agent/`
//! (`make agent`), else `$CARGO_TARGET_DIR/debug/` (`cargo build -p aetherium-agent`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aetherium_core::agent_client::{AgentClient, AgentError};
use aetherium_types::agent::{DataEvent, ProcessConfig, ProcessEvent, Signal, StartRequest};
use futures::StreamExt as _;

const WAIT: Duration = Duration::from_secs(10);

/// Finds the agent binary; panics with what to do when there is none.
fn agent_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("AETHERIUM_AGENT_BIN") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "AETHERIUM_AGENT_BIN={} does not exist",
            path.display()
        );
        return path;
    }
    // The test executable lives in <target>/debug/deps/.
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            let exe = std::env::current_exe().ok()?;
            exe.ancestors().nth(3).map(Path::to_path_buf)
        })
        .expect("cannot tell the cargo target directory");
    let candidates = [
        target_dir.join("agent/aetherium-agent"),
        target_dir.join("debug/aetherium-agent"),
    ];
    candidates
        .iter()
        .find(|path| path.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "no aetherium-agent binary at {candidates:?}: run `make agent` \
                 (or set AETHERIUM_AGENT_BIN)"
            )
        })
}

/// An agent process on a unix socket; killed through its own handle when dropped.
struct Agent {
    child: Child,
}

impl Agent {
    fn spawn(socket: &Path) -> Agent {
        let child = Command::new(agent_bin())
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn the agent");
        Agent { child }
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
        ProcessEvent::Data(DataEvent::Stdout(aetherium_types::agent::Base64Bytes(
            b"ready\n".to_vec()
        )))
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
