//! Direct work on a VM that another worker owns: a gateway whose platform routes
//! agents through `RemoteAgents` reaches the owner's tunnel endpoint, and streamed
//! exec, interactive exec and files work as on a local VM. The "other worker" is a
//! tunnel endpoint in front of a real agent process (no container), staged in the
//! store as a live worker advertising its address.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use aetherium_common::Config;
use aetherium_core::agent_client::AgentClient;
use aetherium_core::agents::RemoteAgents;
use aetherium_core::cluster_tls;
use aetherium_core::tunnel::{self, TunnelSecret};
use aetherium_gateway::AppState;
use aetherium_types::{Orchestrator, Vm, VmStatus, Worker, WorkerStatus, new_id};
use chrono::Utc;
use common::{TOKEN, TestServer, random_hex, static_agent_bin};
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

const SECRET: &str = "gateway-tunnel-secret-0123456789";

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn worker_row(id: &str, address: &str, age: Duration) -> Worker {
    let seen = Utc::now() - chrono::Duration::from_std(age).unwrap();
    Worker {
        id: id.to_string(),
        hostname: "remote".into(),
        address: address.to_string(),
        zone: "default".into(),
        status: WorkerStatus::Active,
        capabilities: vec!["docker".into()],
        labels: Default::default(),
        cpu_cores: 2,
        memory_mb: 0,
        // Full: nothing else gets placed on it.
        max_vms: 0,
        vm_count: 0,
        status_message: None,
        started_at: seen,
        last_seen: seen,
    }
}

fn vm_row(worker_id: &str) -> Vm {
    let id = new_id();
    Vm {
        name: format!("remote-{}", &id[..8]),
        id,
        status: VmStatus::Running,
        orchestrator: Orchestrator::Docker,
        image: "none".into(),
        vcpu_count: 1,
        memory_mb: 256,
        disk_mb: Some(256),
        created_by: None,
        network_policy: None,
        placement: None,
        kernel_path: None,
        rootfs_path: None,
        socket_path: None,
        worker_id: Some(worker_id.to_string()),
        error: None,
        created_at: Utc::now(),
        started_at: Some(Utc::now()),
        stopped_at: None,
        expires_at: None,
        metadata: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_terminal_and_files_reach_a_vm_on_another_worker() {
    let server = TestServer::start().await;
    let platform = server.platform();

    // The other worker: an agent and its tunnel endpoint.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let _agent = Agent(
        Command::new(static_agent_bin())
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .env_remove("AETHERIUM_AGENT_ACCESS_TOKEN")
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    AgentClient::unix(&socket)
        .wait_ready(Duration::from_secs(10))
        .await
        .unwrap();
    let worker_id = format!("remote-{}", &random_hex()[..8]);
    let vm = vm_row(&worker_id);
    let targets: BTreeMap<String, AgentClient> =
        [(vm.id.clone(), AgentClient::unix(&socket))].into();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tunnel_addr = listener.local_addr().unwrap().to_string();
    let (stop_tunnel, stop_rx) = tokio::sync::watch::channel(false);
    let secret = TunnelSecret::new(SECRET).unwrap();
    // Over TLS, as a cluster runs it: the worker's certificate names it.
    let pki = tempfile::tempdir().unwrap();
    let ca = cluster_tls::new_ca().unwrap();
    std::fs::write(pki.path().join("ca.pem"), &ca.cert_pem).unwrap();
    let files = |name: &str, holder: cluster_tls::Holder| {
        let issued = cluster_tls::issue(&ca.key_pem, &holder).unwrap();
        let (cert, key) = (
            pki.path().join(format!("{name}.pem")),
            pki.path().join(format!("{name}.key")),
        );
        std::fs::write(&cert, issued.cert_pem).unwrap();
        std::fs::write(&key, issued.key_pem).unwrap();
        cluster_tls::ClusterTls::load(cluster_tls::TlsFiles {
            ca: pki.path().join("ca.pem"),
            cert,
            key,
        })
        .unwrap()
    };
    let worker_tls = files("worker", cluster_tls::Holder::Worker(worker_id.clone()));
    let gateway_tls = files("gateway", cluster_tls::Holder::Gateway("gw".into()));
    tokio::spawn(tunnel::serve_with(
        listener,
        Arc::new(targets),
        secret.clone(),
        tunnel::TunnelOptions {
            tls: Some(worker_tls),
            ..Default::default()
        },
        stop_rx,
    ));
    // It heartbeats while the test runs (the embedded worker's sweep would declare
    // it offline otherwise).
    let store = platform.store.clone();
    store
        .upsert_worker(&worker_row(&worker_id, &tunnel_addr, Duration::ZERO))
        .await
        .unwrap();
    store.insert_vm(&vm).await.unwrap();
    let heartbeat = {
        let (store, worker_id, tunnel_addr) =
            (store.clone(), worker_id.clone(), tunnel_addr.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let _ = store
                    .upsert_worker(&worker_row(&worker_id, &tunnel_addr, Duration::ZERO))
                    .await;
            }
        })
    };

    // The embedded gateway cannot reach another worker's VM.
    let (status, body) = server
        .post(
            &format!("/vms/{}/exec/stream", vm.id),
            json!({"command": "true"}),
        )
        .await;
    assert_eq!(status, 503, "{body}");

    // A gateway routing through tunnels (sharing the store, bus and queue).
    let mut remote = platform.clone();
    remote.agents = Arc::new(RemoteAgents {
        local: None,
        store: store.clone(),
        secret,
        stale_after: platform.defaults.worker_stale_after,
        tls: Some(gateway_tls),
    });
    let mut state = AppState::from_config(remote, server.auth(), &Config::default());
    state.rate_limit_per_second = 0.0;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = aetherium_gateway::serve(listener, state, std::future::pending()).await;
    });
    let http = reqwest::Client::new();
    let api = |path: &str| format!("{url}/api/v1{path}");

    // Streamed exec.
    let response = http
        .post(api(&format!("/vms/{}/exec/stream", vm.id)))
        .bearer_auth(TOKEN)
        .json(&json!({"command": "sh", "args": ["-c", "echo a; echo b >&2; exit 3"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    let lines: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        lines.contains(&json!({"type": "stdout", "data": "a\n"})),
        "{body}"
    );
    assert!(
        lines.contains(&json!({"type": "stderr", "data": "b\n"})),
        "{body}"
    );
    let end = lines.last().unwrap();
    assert_eq!(
        (end["type"].as_str(), end["exit_code"].as_i64()),
        (Some("end"), Some(3))
    );

    // Files, both ways.
    let mut data = vec![0u8; 3 * 1024 * 1024];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let path = format!("{}/big.bin", dir.path().display());
    let response = http
        .put(api(&format!("/vms/{}/files?path={path}", vm.id)))
        .bearer_auth(TOKEN)
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    assert_eq!(std::fs::read(&path).unwrap(), data);
    let response = http
        .get(api(&format!("/vms/{}/files?path={path}", vm.id)))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let back = response.bytes().await.unwrap();
    assert_eq!(Sha256::digest(&back), Sha256::digest(&data));

    // An interactive terminal.
    let mut request = format!(
        "{}/vms/{}/exec/ws?cmd=sh&tty=true&cols=80&rows=24",
        api("").replace("http://", "ws://"),
        vm.id
    )
    .into_client_request()
    .unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    socket
        .send(Message::Binary(
            b"echo hi-$((40+2)); exit 3\r".to_vec().into(),
        ))
        .await
        .unwrap();
    let mut output = Vec::new();
    let mut exit = None;
    while let Some(message) = tokio::time::timeout(Duration::from_secs(20), socket.next())
        .await
        .expect("the session goes on")
    {
        match message.unwrap() {
            Message::Binary(b) => output.extend_from_slice(&b),
            Message::Text(t) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["type"] == "exit" {
                    exit = Some(v);
                }
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    assert!(
        String::from_utf8_lossy(&output).contains("hi-42"),
        "{:?}",
        String::from_utf8_lossy(&output)
    );
    assert_eq!(exit.expect("exit message")["exit_code"], 3);

    // The owner stops heartbeating: refused at once, not left to hang.
    heartbeat.abort();
    let _ = heartbeat.await;
    store
        .upsert_worker(&worker_row(
            &worker_id,
            &tunnel_addr,
            Duration::from_secs(3600),
        ))
        .await
        .unwrap();
    let response = tokio::time::timeout(
        Duration::from_secs(5),
        http.post(api(&format!("/vms/{}/exec/stream", vm.id)))
            .bearer_auth(TOKEN)
            .json(&json!({"command": "true"}))
            .send(),
    )
    .await
    .expect("answered at once")
    .unwrap();
    // 503 (owner offline); 409 if the embedded worker's sweep has already declared
    // it offline and the VM lost.
    assert!(
        matches!(response.status().as_u16(), 503 | 409),
        "{}",
        response.status()
    );
    let _ = stop_tunnel.send(true);
}
