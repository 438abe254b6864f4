//! Sandboxes attacking the platform, through the real API and real containers: the
//! holes of issue 14, each reproduced as the attacker would, and refused.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{TestServer, container_of, docker, iptables_rules, random_hex, sh_in, unique};
use serde_json::{Value, json};

/// Runs `script` with `sh -c` in `vm` through the queued API, waiting for it.
async fn sh(server: &TestServer, vm: &str, script: &str) -> Value {
    sh_in(server, vm, script, 600).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_cannot_point_the_host_at_another_socket() {
    let server = TestServer::start().await;
    let victim = server.running_vm(&unique("victim")).await;
    let attacker = server.running_vm(&unique("attacker")).await;
    let marker = format!("victim-private-{}", random_hex());
    let done = sh(&server, &victim, &format!("echo {marker} > /root/private")).await;
    assert_eq!(done["exit_code"], 0, "{done}");

    // The attacker swaps its own agent.sock for a link to the victim's socket (the
    // host resolves the link) and asks the platform for "its own" files.
    let victim_socket = server
        .data_dir
        .path()
        .join("sockets")
        .join(&victim)
        .join("agent.sock");
    let swap = format!(
        "ln -s {} /.aetherium/run/x && mv -f /.aetherium/run/x /.aetherium/run/agent.sock && ls -l /.aetherium/run",
        victim_socket.display()
    );
    let swapped = sh(&server, &attacker, &swap).await;
    assert!(
        swapped["stdout"]
            .as_str()
            .unwrap()
            .contains("agent.sock ->"),
        "{swapped}"
    );

    let (status, body) = server
        .get(&format!("/vms/{attacker}/files?path=/root/private"))
        .await;
    assert_ne!(status, 200, "the victim's file came back: {body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("symbolic link"),
        "{status} {body}"
    );
    // A queued command does not run in the victim either.
    let (status, queued) = server
        .post(
            &format!("/vms/{attacker}/execute?wait=3s"),
            json!({"command": "cat", "args": ["/root/private"]}),
        )
        .await;
    assert!(
        !queued.to_string().contains(&marker),
        "{status}: the command ran in the victim: {queued}"
    );

    // Pointed at the Docker engine's socket, the platform does not talk to Docker.
    let other = server.running_vm(&unique("attacker2")).await;
    sh(
        &server,
        &other,
        "ln -s /var/run/docker.sock /.aetherium/run/x && mv -f /.aetherium/run/x /.aetherium/run/agent.sock",
    )
    .await;
    let (status, body) = server
        .get(&format!("/vms/{other}/files?path=/version"))
        .await;
    assert!(status >= 500, "{status} {body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("symbolic link"),
        "{body}"
    );

    // The victim itself is untouched.
    let (status, file) = server
        .request(
            reqwest::Method::GET,
            &format!("/vms/{victim}/files?path=/root/private"),
        )
        .send()
        .await
        .map(|r| (r.status().as_u16(), r))
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(file.text().await.unwrap().trim(), marker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_in_a_sandbox_cannot_use_the_agent_socket() {
    let server = TestServer::start().await;
    let vm = server.running_vm(&unique("inside")).await;
    let socket = "/.aetherium/run/agent.sock";
    let files = format!(
        "curl -s -o /dev/null -w '%{{http_code}}' --unix-socket {socket} 'http://agent/files?path=/etc/shadow'"
    );

    // Root inside the sandbox reaches the socket but has no token: 401.
    let as_root = sh(&server, &vm, &files).await;
    assert_eq!(as_root["stdout"], "401", "{as_root}");

    // An unprivileged user (a workspace's AI assistant) is refused at connect: no
    // HTTP answer at all, so not /etc/shadow either.
    let as_nobody = sh(
        &server,
        &vm,
        &format!("setpriv --reuid=65534 --regid=65534 --clear-groups {files}; echo \" rc=$?\""),
    )
    .await;
    let out = as_nobody["stdout"].as_str().unwrap();
    assert!(out.starts_with("000 "), "{as_nobody}");
    assert!(!out.contains("root:"), "{as_nobody}");

    // The token reached the agent by a file it has deleted, and no process inherits
    // it through the environment.
    let look = sh(
        &server,
        &vm,
        "ls -A /.aetherium/run; env | grep -c AETHERIUM_AGENT_ACCESS_TOKEN; true",
    )
    .await;
    assert_eq!(look["stdout"], "agent.sock\n0\n", "{look}");
    let inspect = docker(&["inspect", &container_of(&vm)]);
    let info = String::from_utf8_lossy(&inspect.stdout);
    assert!(info.contains("--access-token-file"), "{info}");
    assert!(!info.contains("AETHERIUM_AGENT_ACCESS_TOKEN="));

    // The platform itself still gets through (its calls carry the token).
    let (status, body) = server
        .request(
            reqwest::Method::GET,
            &format!("/vms/{vm}/files?path=/etc/hostname"),
        )
        .send()
        .await
        .map(|r| (r.status().as_u16(), r))
        .unwrap();
    assert_eq!(status, 200);
    assert!(!body.text().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_installations_with_one_worker_id_keep_their_sandboxes() {
    let first = TestServer::start().await;
    let mine = first.running_vm(&unique("first")).await;
    // A second `aetherium up` on this host (its own data dir) with the same worker
    // id: its reconcile runs with every heartbeat (1 s here).
    let second = TestServer::start_with_worker_id(&first.worker_id).await;
    let theirs = second.running_vm(&unique("second")).await;
    tokio::time::sleep(Duration::from_secs(4)).await;

    for (server, vm) in [(&first, &mine), (&second, &theirs)] {
        let (status, body) = server.get(&format!("/vms/{vm}")).await;
        assert_eq!(status, 200);
        assert_eq!(body["status"], "RUNNING", "{body}");
        let ran = sh(server, vm, "echo alive").await;
        assert_eq!(ran["stdout"], "alive\n", "{ran}");
    }
    // Each is labelled with its own installation.
    let label = |vm: &str| {
        let out = docker(&[
            "inspect",
            "-f",
            "{{index .Config.Labels \"io.aetherium.installation\"}}",
            &container_of(vm),
        ]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let (a, b) = (label(&mine), label(&theirs));
    assert!(a.starts_with("inst-") && b.starts_with("inst-"), "{a} {b}");
    assert_ne!(a, b);
    let kept = std::fs::read_to_string(first.data_dir.path().join("installation-id")).unwrap();
    assert_eq!(kept.trim(), a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_removed_by_someone_else_is_reported_as_such() {
    let server = TestServer::start().await;
    let vm = server.running_vm(&unique("removed")).await;
    assert!(docker(&["rm", "-f", &container_of(&vm)]).status.success());
    let (_, body) = server
        .wait_vm(&vm, 30, |_, b| b["status"] == "FAILED")
        .await;
    assert_eq!(body["status"], "FAILED", "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("removed outside Aetherium"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_for_many_names_from_one_address_are_bounded() {
    let server = TestServer::start().await;
    let url = format!("{}/api/v1/auth/login", server.url);
    let mut attempts = tokio::task::JoinSet::new();
    for i in 0..120 {
        let http = server.http.clone();
        let url = url.clone();
        attempts.spawn(async move {
            let resp = http
                .post(url)
                .json(&json!({"username": format!("nobody-{i}"), "password": "whatever12345"}))
                .send()
                .await
                .unwrap();
            resp.status().as_u16()
        });
    }
    let mut statuses = Vec::new();
    while let Some(status) = attempts.join_next().await {
        statuses.push(status.unwrap());
    }
    let hashed = statuses.iter().filter(|s| **s == 401).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(hashed + refused, 120, "{statuses:?}");
    // 10 a minute per name, 4 names' worth per address: at most 40 were hashed.
    assert!(hashed <= 40, "{hashed} password checks ran for one address");
    assert!(refused >= 80, "{statuses:?}");
    let health = server
        .http
        .get(format!("{}/health", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);

    // Guessed bearer tokens: audited, and limited per address.
    let mut statuses = Vec::new();
    for i in 0..70 {
        let (status, _) = server
            .call_as(
                &format!("ak_guess{i}"),
                reqwest::Method::GET,
                "/api/v1/vms",
                None,
            )
            .await;
        statuses.push(status);
    }
    assert!(statuses[..60].iter().all(|s| *s == 401), "{statuses:?}");
    assert!(statuses[60..].iter().all(|s| *s == 429), "{statuses:?}");
    let (_, audit) = server.get("/audit?action=auth.failed&limit=100").await;
    let failed = audit["entries"].as_array().unwrap();
    assert_eq!(failed.len(), 60, "{audit}");
    assert_eq!(failed[0]["route"], "/api/v1/vms");
    assert_eq!(failed[0]["remote_addr"], "127.0.0.1");
    assert!(
        !audit.to_string().contains("ak_guess"),
        "the token is never recorded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commands_env_is_neither_stored_nor_shown_in_clear() {
    let server = TestServer::start().await;
    let vm = server.running_vm(&unique("env")).await;
    let secret = format!("tok-{}", random_hex());
    let (status, ran) = server
        .post(
            &format!("/vms/{vm}/execute?wait=60s"),
            json!({"command": "sh", "args": ["-c", "test -n \"$API_TOKEN\" && echo has-token"], "env": {"API_TOKEN": secret}}),
        )
        .await;
    assert_eq!(status, 200, "{ran}");
    assert_eq!(ran["execution"]["stdout"], "has-token\n", "{ran}");
    let viewer = server.create_key("viewer").await;
    let task_id = ran["task_id"].as_str().unwrap();
    let (status, task) = server
        .call_as(
            &viewer,
            reqwest::Method::GET,
            &format!("/api/v1/tasks/{task_id}"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(task["payload"]["env"]["API_TOKEN"], "[REDACTED]", "{task}");
    assert!(!task.to_string().contains(&secret));
    let (_, tasks) = server
        .call_as(
            &viewer,
            reqwest::Method::GET,
            &format!("/api/v1/tasks?vm_id={vm}"),
            None,
        )
        .await;
    assert!(!tasks.to_string().contains(&secret));
    // A secret named after a variable that steers every process is refused.
    let (status, refused) = server
        .post(
            "/secrets",
            json!({"name": "LD_PRELOAD", "value": "/tmp/evil.so"}),
        )
        .await;
    assert_eq!(status, 400, "{refused}");
    assert!(
        refused["message"].as_str().unwrap().contains("reserved"),
        "{refused}"
    );
    // The database is its owner's alone.
    for file in ["aetherium.db", "aetherium.db-wal"] {
        let mode = std::fs::metadata(server.data_dir.path().join(file))
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
            .unwrap();
        assert_eq!(mode, 0o600, "{file}");
    }
    // Not on disk either: the database, its WAL, anything in the data dir.
    for path in walk(server.data_dir.path()) {
        let bytes = std::fs::read(&path).unwrap_or_default();
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{} holds the command's env in clear",
            path.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_secret_printed_by_a_command_is_redacted_in_its_record() {
    let server = TestServer::start().await;
    let suffix = &random_hex()[..8];
    let secret = format!("ws-secret-{}", random_hex());
    let (status, env) = server
        .post("/environments", json!({"name": format!("env-{suffix}")}))
        .await;
    assert_eq!(status, 201, "{env}");
    // Creations are audited with the id they made.
    let (_, audit) = server.get("/audit?action=environments.create").await;
    assert_eq!(audit["entries"][0]["resource_id"], env["id"], "{audit}");
    let (status, ws) = server
        .post(
            "/workspaces",
            json!({
                "name": format!("ws-{suffix}"),
                "environment_id": format!("env-{suffix}"),
                "secrets": [{"name": "DEPLOY_TOKEN", "value": secret, "type": "token"}],
            }),
        )
        .await;
    assert_eq!(status, 201, "{ws}");
    let id = ws["id"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let ws = loop {
        let (_, ws) = server.get(&format!("/workspaces/{id}")).await;
        if ws["status"] == "ready" || ws["status"] == "failed" {
            break ws;
        }
        assert!(std::time::Instant::now() < deadline, "{ws}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(ws["status"], "ready", "{ws}");
    let vm = ws["vm_id"].as_str().unwrap().to_string();

    // The secret is in the sandbox's environment; a command that prints it leaves a
    // record that a viewer may read, without the value.
    let ran = sh(&server, &vm, "echo \"token=$DEPLOY_TOKEN\"").await;
    assert_eq!(ran["stdout"], "token=[REDACTED:DEPLOY_TOKEN]\n", "{ran}");
    let viewer = server.create_key("viewer").await;
    let (_, executions) = server
        .call_as(
            &viewer,
            reqwest::Method::GET,
            &format!("/api/v1/vms/{vm}/executions"),
            None,
        )
        .await;
    assert!(!executions.to_string().contains(&secret), "{executions}");

    // Streamed commands are recorded redacted too.
    let streamed = server
        .request(reqwest::Method::POST, &format!("/vms/{vm}/exec/stream"))
        .json(&json!({"command": "sh", "args": ["-c", "echo \"again=$DEPLOY_TOKEN\""]}))
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.status().as_u16(), 200);
    let _ = streamed.text().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, list) = server.get(&format!("/vms/{vm}/executions")).await;
        let all = list["executions"].as_array().cloned().unwrap_or_default();
        if let Some(done) = all.iter().find(|e| {
            e["stdout"]
                .as_str()
                .unwrap_or_default()
                .starts_with("again=")
        }) {
            assert_eq!(done["stdout"], "again=[REDACTED:DEPLOY_TOKEN]\n", "{done}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{list}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Smart-execute without a VM name never lands in the workspace's VM.
    let (status, smart) = server
        .post(
            "/smart-execute?wait=60s",
            json!({"command": "echo \"smart=$DEPLOY_TOKEN\"", "prefer_existing": true}),
        )
        .await;
    assert!(status == 200 || status == 202, "{smart}");
    assert_ne!(smart["vm_id"].as_str(), Some(vm.as_str()), "{smart}");
    assert!(!smart.to_string().contains(&secret), "{smart}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// A network namespace with a listener on a private address, reachable from the
/// host through a veth pair: a stand-in for another host of the LAN. Removed (by
/// name) when dropped.
struct PrivateHost {
    netns: String,
    veth: String,
    ip: String,
    /// A second address of the same host.
    other_ip: String,
    port: u16,
    server: std::process::Child,
}

impl PrivateHost {
    /// A host on a private range, which the host routes to.
    fn start() -> PrivateHost {
        Self::start_in("10.251")
    }

    /// A host in `<net>.X.0/29` (X random): the host is `.1`, it answers on `.2`
    /// and `.3`.
    fn start_in(net: &str) -> PrivateHost {
        let tag = &random_hex()[..6];
        let third = u8::from_str_radix(&tag[..2], 16).unwrap();
        let netns = format!("aet-{tag}");
        let veth = format!("vaet{tag}");
        let peer = format!("vaep{tag}");
        let (host_ip, ip, other_ip) = (
            format!("{net}.{third}.1"),
            format!("{net}.{third}.2"),
            format!("{net}.{third}.3"),
        );
        let run = |args: &[&str]| {
            let out = std::process::Command::new(args[0])
                .args(&args[1..])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&["ip", "netns", "add", &netns]);
        run(&[
            "ip", "link", "add", &veth, "type", "veth", "peer", "name", &peer,
        ]);
        run(&["ip", "link", "set", &peer, "netns", &netns]);
        run(&["ip", "addr", "add", &format!("{host_ip}/29"), "dev", &veth]);
        run(&["ip", "link", "set", &veth, "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec!["ip", "netns", "exec", netns.as_str()];
            all.extend_from_slice(args);
            run(&all);
        };
        inside(&["ip", "addr", "add", &format!("{ip}/29"), "dev", &peer]);
        inside(&["ip", "addr", "add", &format!("{other_ip}/29"), "dev", &peer]);
        inside(&["ip", "link", "set", &peer, "up"]);
        inside(&["ip", "link", "set", "lo", "up"]);
        inside(&["ip", "route", "add", "default", "via", &host_ip]);
        let port = 18000 + u16::from(third);
        // Debian's perl (not a toolchain's python): a one-line HTTP answer.
        let script = format!(
            "$s=IO::Socket::INET->new(LocalPort=>{port},Listen=>5,ReuseAddr=>1) or die $!; \
             while($c=$s->accept){{print $c qq(HTTP/1.0 200 OK\r\n\r\nprivate-host\n); close $c}}"
        );
        let server = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &netns,
                "/usr/bin/perl",
                "-MIO::Socket::INET",
                "-e",
                &script,
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        PrivateHost {
            netns,
            veth,
            ip,
            other_ip,
            port,
            server,
        }
    }
}

impl Drop for PrivateHost {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.veth])
            .output();
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
    }
}

/// ACCEPT/RETURN rules tagged like a sandbox's openings for the first 253 addresses
/// of `subnet`, letting them reach the host and private ranges; removed (by tag)
/// when dropped.
struct StaleOpenings {
    tag: String,
}

impl StaleOpenings {
    fn plant(subnet: &str) -> StaleOpenings {
        let tag = format!("aetherium-vm:stale-{}", &random_hex()[..8]);
        let prefix: Vec<&str> = subnet.split('.').take(3).collect();
        let mut batch = String::from("*filter\n");
        for host in 2..=254 {
            let ip = format!("{}.{host}/32", prefix.join("."));
            batch.push_str(&format!(
                "-I INPUT 1 -s {ip} -i aeth-isolated -m comment --comment {tag} -j ACCEPT\n\
                 -I DOCKER-USER 1 -s {ip} -i aeth-isolated -m comment --comment {tag} -j RETURN\n"
            ));
        }
        batch.push_str("COMMIT\n");
        let mut restore = std::process::Command::new("iptables-restore")
            .args(["-w", "--noflush"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(restore.stdin.as_mut().unwrap(), batch.as_bytes()).unwrap();
        drop(restore.stdin.take());
        assert!(restore.wait().unwrap().success());
        StaleOpenings { tag }
    }
}

impl Drop for StaleOpenings {
    fn drop(&mut self) {
        for chain in ["INPUT", "DOCKER-USER"] {
            let out = std::process::Command::new("iptables")
                .args(["-w", "-S", chain])
                .output()
                .unwrap();
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if line.contains(&self.tag) && line.starts_with("-A ") {
                    let args: Vec<String> = line[3..]
                        .split_whitespace()
                        .map(|w| w.trim_matches('"').to_string())
                        .collect();
                    let _ = std::process::Command::new("iptables")
                        .args(["-w", "-D"])
                        .args(&args)
                        .output();
                }
            }
        }
    }
}

/// `curl` from inside `vm`; its output and exit code on one line.
async fn curl_from(server: &TestServer, vm: &str, url: &str) -> String {
    let ran = sh(server, vm, &format!("curl -s -m 3 {url}; echo \" rc=$?\"")).await;
    ran["stdout"].as_str().unwrap().to_string()
}

fn docker_format(args: &[&str]) -> String {
    String::from_utf8_lossy(&docker(args).stdout)
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_sandboxes_reach_neither_each_other_nor_the_host_nor_private_hosts() {
    let server = TestServer::start().await;
    let a = server.running_vm(&unique("net-a")).await;
    // Openings a dead sandbox left behind (one removed with `docker rm`, or whose
    // worker died) on every address B could get: B must not inherit them.
    let subnet = docker_format(&[
        "network",
        "inspect",
        "-f",
        "{{(index .IPAM.Config 0).Subnet}}",
        "aetherium-isolated",
    ]);
    let _stale = StaleOpenings::plant(&subnet);
    let b = server.running_vm(&unique("net-b")).await;

    // A listener in A, answering itself (so the refusals below mean something).
    sh(
        &server,
        &a,
        "setsid perl -MIO::Socket::INET -e '$s=IO::Socket::INET->new(LocalPort=>8000,Listen=>5,ReuseAddr=>1) or die; while($c=$s->accept){print $c qq(HTTP/1.0 200 OK\\r\\n\\r\\nfrom-a\\n); close $c}' >/dev/null 2>&1 </dev/null &",
    )
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !curl_from(&server, &a, "http://127.0.0.1:8000/")
        .await
        .contains("from-a")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the listener in A never answered"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let a_ip = docker_format(&[
        "inspect",
        "-f",
        "{{(index .NetworkSettings.Networks \"aetherium-isolated\").IPAddress}}",
        &container_of(&a),
    ]);
    assert!(!a_ip.is_empty());
    let from_b = curl_from(&server, &b, &format!("http://{a_ip}:8000/")).await;
    assert!(!from_b.contains("from-a"), "B reached A: {from_b}");

    // The host's own services, on the bridge's gateway and on docker0.
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let gateway = docker_format(&[
        "network",
        "inspect",
        "-f",
        "{{(index .IPAM.Config 0).Gateway}}",
        "aetherium-isolated",
    ]);
    for host in [
        gateway.as_str(),
        &aetherium_testkit::docker_gateway().to_string(),
    ] {
        let out = curl_from(&server, &b, &format!("http://{host}:{port}/")).await;
        assert!(!out.contains(" rc=0"), "reached the host at {host}: {out}");
    }
    // Whoever else connected (parallel tests probe freed ports), not B.
    let b_ip = docker_format(&[
        "inspect",
        "-f",
        "{{(index .NetworkSettings.Networks \"aetherium-isolated\").IPAddress}}",
        &container_of(&b),
    ]);
    while let Ok((_, peer)) = listener.accept() {
        assert_ne!(
            peer.ip().to_string(),
            b_ip,
            "the sandbox connected to the host's listener"
        );
    }
    // The listener itself works.
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());

    // Another host on a private range, which the host routes to.
    let private = PrivateHost::start();
    let url = format!("http://{}:{}/", private.ip, private.port);
    wait_answering(&url).await;
    let out = curl_from(&server, &b, &url).await;
    assert!(!out.contains(" rc=0"), "reached the private host: {out}");

    // No raw sockets: CAP_NET_RAW (bit 13) is not in the bounding set.
    let caps = sh(&server, &b, "grep CapBnd /proc/self/status | cut -f2").await;
    let bounding = u64::from_str_radix(caps["stdout"].as_str().unwrap().trim(), 16).unwrap();
    assert_eq!(bounding & (1 << 13), 0, "NET_RAW kept: {bounding:x}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_making_a_request_cannot_revoke_itself() {
    let server = TestServer::start().await;
    let admin = server.create_key("admin").await;
    let (_, me) = server
        .call_as(&admin, reqwest::Method::GET, "/api/v1/auth/me", None)
        .await;
    let own = me["principal"]["id"].as_str().unwrap().to_string();
    let revoke = format!("/api/v1/api-keys/{own}/revoke");
    let (status, refused) = server
        .call_as(&admin, reqwest::Method::POST, &revoke, Some(json!({})))
        .await;
    assert_eq!(status, 409, "{refused}");
    let (status, _) = server
        .call_as(&admin, reqwest::Method::GET, "/api/v1/vms", None)
        .await;
    assert_eq!(status, 200, "the key still works");
    // Another admin credential may revoke it.
    let (status, revoked) = server
        .post(&format!("/api-keys/{own}/revoke"), json!({}))
        .await;
    assert_eq!(status, 200, "{revoked}");
    let (status, _) = server
        .call_as(&admin, reqwest::Method::GET, "/api/v1/vms", None)
        .await;
    assert_eq!(status, 401);
}

/// Creates an operator key with `quota` (as the admin): its secret and id.
async fn key_with_quota(server: &TestServer, quota: Value) -> (String, String) {
    let (status, created) = server
        .post(
            "/api-keys",
            json!({"name": unique("quota"), "role": "operator", "quota": quota}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["api_key"]["quota"], quota, "{created}");
    (
        created["key"].as_str().unwrap().to_string(),
        created["api_key"]["id"].as_str().unwrap().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_keys_quota_bounds_what_its_live_sandboxes_take() {
    let server = TestServer::start().await;
    let (status, refused) = server
        .post(
            "/api-keys",
            json!({"name": "q", "role": "operator", "quota": {"max_vms": 1, "max_cpus": 2}}),
        )
        .await;
    assert_eq!(status, 400, "a misspelt limit: {refused}");

    // (vCPUs kept at most 2 a sandbox: a test host may have only 2 cores, and a
    // sandbox cannot have more vCPUs than its worker has cores.)
    let (key, key_id) = key_with_quota(&server, json!({"max_vms": 2, "max_vcpus": 2})).await;
    let create = |vcpus: u32| {
        server.call_as(
            &key,
            reqwest::Method::POST,
            "/api/v1/vms?wait=90s",
            Some(json!({"vcpus": vcpus})),
        )
    };
    let (status, first) = create(1).await;
    assert_eq!(status, 200, "{first}");
    let first = first["vm_id"].as_str().unwrap().to_string();
    let (status, refused) = create(2).await;
    assert_eq!(status, 429, "1 + 2 vCPUs: {refused}");
    assert!(
        refused["message"].as_str().unwrap().contains("max_vcpus"),
        "{refused}"
    );
    let (status, second) = create(1).await;
    assert_eq!(status, 200, "{second}");
    let (status, refused) = create(1).await;
    assert_eq!(status, 429, "a third sandbox: {refused}");
    let message = refused["message"].as_str().unwrap();
    assert!(
        message.contains("max_vms") && message.starts_with("this API key's quota"),
        "{refused}"
    );
    // The refused ones left nothing; the key's sandboxes are listed as its own.
    let (_, mine) = server.get(&format!("/vms?created_by={key_id}")).await;
    assert_eq!(mine["total"], 2, "{mine}");
    assert!(
        mine["vms"]
            .as_array()
            .unwrap()
            .iter()
            .all(|vm| vm["created_by"] == key_id.as_str())
    );

    // A deleted sandbox frees its share; a removed quota frees the key.
    let (status, _) = server.delete(&format!("/vms/{first}?wait=60s")).await;
    assert_eq!(status, 200);
    let (status, third) = create(1).await;
    assert_eq!(status, 200, "{third}");
    let (status, updated) = server
        .call(
            reqwest::Method::PATCH,
            &format!("/api-keys/{key_id}"),
            Some(json!({"quota": null})),
        )
        .await;
    assert_eq!(status, 200, "{updated}");
    assert!(updated.get("quota").is_none(), "{updated}");
    let (status, fourth) = create(1).await;
    assert_eq!(status, 200, "{fourth}");
    // Only admins set quotas.
    let (status, _) = server
        .call_as(
            &key,
            reqwest::Method::PATCH,
            &format!("/api/v1/api-keys/{key_id}"),
            Some(json!({"quota": null})),
        )
        .await;
    assert_eq!(status, 403);

    // Parallel creates never pass a quota together (at worst all are refused).
    // (Each waits until its sandbox runs, so that none is still being made when
    // the test server cleans up.)
    let (racer, racer_id) = key_with_quota(&server, json!({"max_vms": 2})).await;
    let answers = futures::future::join_all((0..5).map(|_| {
        server.call_as(
            &racer,
            reqwest::Method::POST,
            "/api/v1/vms?wait=90s",
            Some(json!({"vcpus": 1})),
        )
    }))
    .await;
    let accepted = answers.iter().filter(|(status, _)| *status == 200).count();
    let refused = answers.iter().filter(|(status, _)| *status == 429).count();
    assert_eq!(accepted + refused, 5, "{answers:?}");
    assert!(accepted <= 2, "{answers:?}");
    let (_, racers) = server.get(&format!("/vms?created_by={racer_id}")).await;
    assert_eq!(racers["total"], accepted, "{racers}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_keys_quota_bounds_its_running_commands() {
    let server = TestServer::start().await;
    let (key, key_id) = key_with_quota(&server, json!({"max_concurrent_executions": 1})).await;
    let (srv, key_ref) = (&server, key.as_str());
    let as_key = move |method: reqwest::Method, path: String, body: Option<Value>| async move {
        srv.call_as(key_ref, method, &format!("/api/v1{path}"), body)
            .await
    };
    let (status, vm) = as_key(
        reqwest::Method::POST,
        "/vms?wait=90s".into(),
        Some(json!({"vcpus": 1})),
    )
    .await;
    assert_eq!(status, 200, "{vm}");
    let vm = vm["vm_id"].as_str().unwrap().to_string();
    let exec = |script: &str, wait: &str| {
        as_key(
            reqwest::Method::POST,
            format!("/vms/{vm}/execute{wait}"),
            Some(json!({"command": "sh", "args": ["-c", script]})),
        )
    };

    // One command running: the next one, queued or streamed, is refused.
    let (status, long) = exec("sleep 4; echo first", "").await;
    assert_eq!(status, 202, "{long}");
    let long_id = long["execution_id"].as_str().unwrap().to_string();
    let (status, refused) = exec("echo second", "?wait=30s").await;
    assert_eq!(status, 429, "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("max_concurrent_executions"),
        "{refused}"
    );
    let (status, refused) = as_key(
        reqwest::Method::POST,
        format!("/vms/{vm}/exec/stream"),
        Some(json!({"command": "echo", "args": ["streamed"]})),
    )
    .await;
    assert_eq!(status, 429, "{refused}");
    // Another credential is not bound by this key's quota.
    let (status, admins) = server
        .post(
            &format!("/vms/{vm}/execute?wait=30s"),
            json!({"command": "echo", "args": ["admin"]}),
        )
        .await;
    assert_eq!(status, 200, "{admins}");
    // The refused ones were recorded nowhere; the accepted one is the key's.
    let (_, history) = server.get(&format!("/vms/{vm}/executions")).await;
    let commands: Vec<&Value> = history["executions"].as_array().unwrap().iter().collect();
    assert_eq!(commands.len(), 2, "{history}");
    let (_, first) = server.get(&format!("/executions/{long_id}")).await;
    assert_eq!(first["created_by"], key_id.as_str(), "{first}");

    // Once it ended, the key may run the next.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, first) = server.get(&format!("/executions/{long_id}")).await;
        if first["status"] == "completed" {
            assert_eq!(first["stdout"], "first\n", "{first}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{first}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, next) = exec("echo next", "?wait=30s").await;
    assert_eq!(status, 200, "{next}");
    assert_eq!(next["execution"]["stdout"], "next\n", "{next}");

    // Parallel commands never pass the quota together (at worst all are refused).
    let answers =
        futures::future::join_all((0..4).map(|_| exec("sleep 1; echo raced", "?wait=30s"))).await;
    let accepted = answers.iter().filter(|(status, _)| *status == 200).count();
    let refused = answers.iter().filter(|(status, _)| *status == 429).count();
    assert_eq!(accepted + refused, 4, "{answers:?}");
    assert!(accepted <= 1, "{answers:?}");
    let (_, history) = server.get(&format!("/vms/{vm}/executions")).await;
    assert_eq!(
        history["executions"].as_array().unwrap().len(),
        3 + accepted,
        "{history}"
    );
}

/// Waits until the host itself gets an answer from `url` (at most 10 s).
async fn wait_answering(url: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::process::Command::new("curl")
        .args(["-s", "-m", "1", "-o", "/dev/null", url])
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{url} never answered the host"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A host outside the private ranges (198.18.0.0/15 is set aside for network
/// tests), which the isolated network lets sandboxes reach, answering on two
/// addresses: the host and the URLs of both, once the host itself gets answers.
async fn public_host() -> (PrivateHost, String, String) {
    let remote = PrivateHost::start_in("198.18");
    let first = format!("http://{}:{}/", remote.ip, remote.port);
    let second = format!("http://{}:{}/", remote.other_ip, remote.port);
    wait_answering(&first).await;
    wait_answering(&second).await;
    (remote, first, second)
}

/// Asserts whether `vm` gets an answer from `url`.
async fn assert_reaches(server: &TestServer, vm: &str, url: &str, expected: bool) {
    let out = curl_from(server, vm, url).await;
    // The one-line server may reset the connection after its answer (curl's 56).
    let reached = out.contains("private-host");
    assert_eq!(reached, expected, "{vm} -> {url}: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_policy_limits_a_containers_egress_and_changes_while_it_runs() {
    let server = TestServer::start().await;
    let (remote, first, second) = public_host().await;

    for (body, needle) in [
        (
            json!({"network_policy": {"allow": ["exa_mple.com"]}}),
            "nor a domain name",
        ),
        (
            json!({"network_policy": {"deny": ["10.0.0.0/33"]}}),
            "network_policy.deny",
        ),
    ] {
        let (status, refused) = server.post("/vms", body).await;
        assert_eq!(status, 400, "{refused}");
        assert!(
            refused["message"].as_str().unwrap().contains(needle),
            "{refused}"
        );
    }

    let server = &server;
    let create = |policy: Value| async move {
        let (status, created) = server
            .post(
                "/vms?wait=90s",
                json!({"name": unique("policy"), "network_policy": policy}),
            )
            .await;
        assert_eq!(status, 200, "{created}");
        assert_eq!(created["vm"]["status"], "RUNNING", "{created}");
        created["vm"].clone()
    };
    let only_first = create(json!({"egress": "deny", "allow": [remote.ip]})).await;
    assert_eq!(
        only_first["network_policy"],
        json!({"egress": "deny", "allow": [format!("{}/32", remote.ip)]})
    );
    let not_second = create(json!({"deny": [remote.other_ip]})).await;
    let open = server.running_vm(&unique("open")).await;
    let only_first = only_first["id"].as_str().unwrap().to_string();
    let not_second = not_second["id"].as_str().unwrap().to_string();

    assert_reaches(server, &open, &first, true).await;
    assert_reaches(server, &open, &second, true).await;
    assert_reaches(server, &only_first, &first, true).await;
    assert_reaches(server, &only_first, &second, false).await;
    assert_reaches(server, &not_second, &first, true).await;
    assert_reaches(server, &not_second, &second, false).await;

    // Changed while it runs: at once, and the VM shows it.
    let (status, changed) = server
        .call(
            reqwest::Method::PUT,
            &format!("/vms/{only_first}/network-policy?wait=30s"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200, "{changed}");
    assert!(changed["vm"].get("network_policy").is_none(), "{changed}");
    assert_reaches(server, &only_first, &second, true).await;
    let (status, changed) = server
        .call(
            reqwest::Method::PUT,
            &format!("/vms/{not_second}/network-policy?wait=30s"),
            Some(json!({"egress": "deny"})),
        )
        .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["vm"]["network_policy"], json!({"egress": "deny"}));
    assert_reaches(server, &not_second, &first, false).await;
    // A viewer may not change it; a bad one changes nothing.
    let viewer = server.create_key("viewer").await;
    let (status, _) = server
        .call_as(
            &viewer,
            reqwest::Method::PUT,
            &format!("/api/v1/vms/{not_second}/network-policy"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = server
        .call(
            reqwest::Method::PUT,
            &format!("/vms/{not_second}/network-policy"),
            Some(json!({"allow": ["not_an_address"]})),
        )
        .await;
    assert_eq!(status, 400);
    assert_reaches(server, &not_second, &first, false).await;

    // Deleted: its rules and its chain go with it.
    for vm in [&only_first, &not_second] {
        let (status, _) = server.delete(&format!("/vms/{vm}?wait=60s")).await;
        assert_eq!(status, 200);
        let rules = iptables_rules();
        assert!(!rules.contains(vm.as_str()), "rules of {vm} left:\n{rules}");
        let chain = aetherium_core::net::guard::policy_chain(vm);
        assert!(!rules.contains(&chain), "chain of {vm} left:\n{rules}");
    }
}

/// An engine with `userns-remap`: a sandbox's root is an unprivileged uid on the
/// host, and the platform still reaches its agent (run dir and token owned by that
/// uid), runs commands, moves files and removes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remapped_engine_runs_sandboxes_as_an_unprivileged_host_user() {
    let engine =
        aetherium_testkit::remapped_docker::RemappedDocker::start(&aetherium_testkit::test_image());
    let host = engine.host();
    let server = TestServer::start_with(move |config| {
        config.vmm.docker.host = host.clone();
        // The second engine has no networking of its own (see RemappedDocker).
        config.vmm.docker.network_mode = "none".into();
    })
    .await;
    let vm = server.running_vm(&unique("remapped")).await;
    let inside = sh(&server, &vm, "id -u; cat /proc/self/uid_map").await;
    assert_eq!(inside["exit_code"], 0, "{inside}");
    let out = inside["stdout"].as_str().unwrap();
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("0"), "{inside}");
    let map: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(map.first(), Some(&"0"), "{inside}");
    let host_uid: u32 = map[1].parse().unwrap();
    assert_ne!(host_uid, 0, "container root is host root: {inside}");
    // Seen from the host, the sandbox's processes run as that uid.
    let pid = engine.docker(&["inspect", "-f", "{{.State.Pid}}", &container_of(&vm)]);
    let pid = String::from_utf8_lossy(&pid.stdout).trim().to_string();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid_line
            .split_whitespace()
            .skip(1)
            .all(|id| id == host_uid.to_string()),
        "{uid_line}"
    );
    // Files both ways through the agent.
    let put = server
        .request(
            reqwest::Method::PUT,
            &format!("/vms/{vm}/files?path=/root/in.txt"),
        )
        .body("remapped\n")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200, "{}", put.text().await.unwrap());
    let read = sh(&server, &vm, "cat /root/in.txt; stat -c %u /root/in.txt").await;
    assert_eq!(read["stdout"], "remapped\n0\n", "{read}");
    let (status, _) = server.delete(&format!("/vms/{vm}?wait=60s")).await;
    assert_eq!(status, 200);
    let left = engine.docker(&["ps", "-aq"]);
    assert!(String::from_utf8_lossy(&left.stdout).trim().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_containers_commands_run_under_a_seccomp_filter_beyond_the_engines() {
    let server = TestServer::start().await;
    let vm = server.running_vm(&unique("seccomp")).await;
    // io_uring_setup(1, NULL): the kernel would answer EFAULT (14) under Docker's
    // default profile alone; our filter refuses the call before it gets there.
    let probe = sh(
        &server,
        &vm,
        r#"perl -e 'syscall(425, 1, 0); print $!+0, "\n"'; grep '^Seccomp_filters' /proc/self/status"#,
    )
    .await;
    assert_eq!(probe["exit_code"], 0, "{probe}");
    let out = probe["stdout"].as_str().unwrap();
    let mut lines = out.lines();
    assert_eq!(
        lines.next(),
        Some("1"),
        "io_uring_setup was not refused with EPERM: {probe}"
    );
    // The engine's filter and ours, stacked.
    assert_eq!(
        lines
            .next()
            .map(|l| l.split_whitespace().collect::<Vec<_>>()),
        Some(vec!["Seccomp_filters:", "2"]),
        "{probe}"
    );
}

/// What `getent hosts <name>` prints in `vm` (empty: the name did not resolve).
async fn resolve_in(server: &TestServer, vm: &str, name: &str) -> String {
    let ran = sh(server, vm, &format!("getent hosts {name} | cut -d' ' -f1")).await;
    ran["stdout"].as_str().unwrap().trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_policy_by_name_resolves_only_allowed_names_and_opens_their_addresses() {
    let (remote, first, second) = public_host().await;
    let (ip, other_ip): (std::net::Ipv4Addr, std::net::Ipv4Addr) =
        (remote.ip.parse().unwrap(), remote.other_ip.parse().unwrap());
    // The upstream every sandbox's queries end at: a name it answers, or not,
    // shows whether the query got past the sandbox's resolver.
    let upstream = aetherium_testkit::dns::StandInDns::start(&[
        ("allowed.test", &[ip]),
        ("other.test", &[other_ip]),
        ("x.wild.test", &[other_ip]),
        ("y.blocked.wild.test", &[ip]),
    ]);
    let dns = upstream.addr().to_string();
    let mut restartable = TestServer::start_with(move |config| {
        config.network.dns_upstream = vec![dns.clone()];
    })
    .await;
    let server = &restartable;
    let port = remote.port;
    let url = |host: &str| format!("http://{host}:{port}/");

    let (status, created) = server
        .post(
            "/vms?wait=90s",
            json!({"name": unique("byname"), "network_policy": {
                "egress": "deny",
                "allow": ["Allowed.TEST", "*.wild.test"],
                "deny": ["*.blocked.wild.test"]}}),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    assert_eq!(
        created["vm"]["network_policy"],
        json!({"egress": "deny", "allow": ["allowed.test", "*.wild.test"],
               "deny": ["*.blocked.wild.test"]})
    );
    let vm = created["vm"]["id"].as_str().unwrap().to_string();

    // Nothing is open before a name opens it.
    assert_reaches(server, &vm, &first, false).await;
    assert_eq!(resolve_in(server, &vm, "allowed.test").await, remote.ip);
    assert_reaches(server, &vm, &url("allowed.test"), true).await;
    assert_reaches(server, &vm, &first, true).await;
    // A name not allowed neither resolves nor leaves the host, nor does its
    // address open; a wildcard opens the names below it, a denied one excepted.
    assert_eq!(resolve_in(server, &vm, "other.test").await, "");
    assert_reaches(server, &vm, &second, false).await;
    assert_eq!(resolve_in(server, &vm, "y.blocked.wild.test").await, "");
    assert_eq!(
        resolve_in(server, &vm, "x.wild.test").await,
        remote.other_ip
    );
    assert_reaches(server, &vm, &second, true).await;
    // Asking another server (root inside may change its resolv.conf) reaches the
    // same resolver: every query on port 53 goes there.
    let swapped = sh(
        server,
        &vm,
        "echo nameserver 203.0.113.53 > /etc/resolv.conf && getent hosts other.test; \
         getent hosts allowed.test | cut -d' ' -f1",
    )
    .await;
    assert_eq!(
        swapped["stdout"].as_str().unwrap().trim(),
        remote.ip,
        "{swapped}"
    );
    let asked = upstream.asked();
    for refused in ["other.test", "y.blocked.wild.test"] {
        assert!(
            !asked.iter().any(|n| n == refused),
            "{refused} left the host: {asked:?}"
        );
    }

    // A restarted server's resolver takes over its sandboxes (their rules named
    // the one before), policies and all.
    restartable.restart().await;
    let server = &restartable;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while resolve_in(server, &vm, "allowed.test").await != remote.ip {
        assert!(
            std::time::Instant::now() < deadline,
            "no DNS after a restart"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(resolve_in(server, &vm, "other.test").await, "");
    assert_reaches(server, &vm, &first, true).await;

    // A sandbox without a policy resolves every name.
    let open = server.running_vm(&unique("anyname")).await;
    assert_eq!(
        resolve_in(server, &open, "other.test").await,
        remote.other_ip
    );

    // Changed while it runs: a denied name stops resolving at once.
    let (status, changed) = server
        .call(
            reqwest::Method::PUT,
            &format!("/vms/{vm}/network-policy?wait=30s"),
            Some(json!({"deny": ["other.test"]})),
        )
        .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(resolve_in(server, &vm, "other.test").await, "");
    assert_eq!(resolve_in(server, &vm, "allowed.test").await, remote.ip);
    assert_eq!(resolve_in(server, &vm, "unknown.test").await, "");

    // Deleted: its redirection goes with its other rules.
    let (status, _) = server.delete(&format!("/vms/{vm}?wait=60s")).await;
    assert_eq!(status, 200);
    let rules = iptables_rules();
    assert!(!rules.contains(vm.as_str()), "rules of {vm} left:\n{rules}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_network_policy_is_the_one_its_sandboxes_get() {
    let server = TestServer::start().await;
    let (remote, first, second) = public_host().await;

    let (status, refused) = server
        .post(
            "/api-keys",
            json!({"name": unique("netkey"), "role": "operator",
                   "quota": {"network_policy": {"allow": ["not_an_address"]}}}),
        )
        .await;
    assert_eq!(status, 400, "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("quota.network_policy.allow"),
        "{refused}"
    );
    // Stored in CIDR form, as sandboxes get it.
    let (status, created) = server
        .post(
            "/api-keys",
            json!({"name": unique("netkey"), "role": "operator",
                   "quota": {"network_policy": {"egress": "deny", "allow": [remote.ip]}}}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let fixed = json!({"egress": "deny", "allow": [format!("{}/32", remote.ip)]});
    assert_eq!(
        created["api_key"]["quota"]["network_policy"], fixed,
        "{created}"
    );
    let key = created["key"].as_str().unwrap().to_string();
    let create_as_key = |body: Value| {
        let (server, key) = (&server, key.clone());
        async move {
            server
                .call_as(
                    &key,
                    reqwest::Method::POST,
                    "/api/v1/vms?wait=90s",
                    Some(body),
                )
                .await
        }
    };

    // Its sandbox gets the key's policy without asking, and it holds.
    let (status, made) = create_as_key(json!({"name": unique("keyvm")})).await;
    assert_eq!(status, 200, "{made}");
    assert_eq!(made["vm"]["network_policy"], fixed, "{made}");
    let vm = made["vm"]["id"].as_str().unwrap().to_string();
    assert_reaches(&server, &vm, &first, true).await;
    assert_reaches(&server, &vm, &second, false).await;

    // Another policy, or a change: refused, and nothing is left of the refused
    // creates.
    let (_, before) = server.get("/vms").await;
    for body in [
        json!({"name": unique("keyvm"), "network_policy": {}}),
        json!({"name": unique("keyvm"), "network_policy": {"egress": "allow"}}),
    ] {
        let (status, refused) = create_as_key(body.clone()).await;
        assert_eq!(status, 403, "{body}: {refused}");
        assert!(
            refused["message"]
                .as_str()
                .unwrap()
                .contains("fixes the network policy"),
            "{refused}"
        );
    }
    // Asking for the very same policy is fine (written either way).
    let (status, same) = create_as_key(json!({"name": unique("keyvm"),
        "network_policy": {"egress": "deny", "allow": [remote.ip]}}))
    .await;
    assert_eq!(status, 200, "{same}");
    let same = same["vm"]["id"].as_str().unwrap().to_string();
    let (_, after) = server.get("/vms").await;
    assert_eq!(
        after["vms"].as_array().unwrap().len(),
        before["vms"].as_array().unwrap().len() + 1,
        "{after}"
    );
    let (status, refused) = server
        .call_as(
            &key,
            reqwest::Method::PUT,
            &format!("/api/v1/vms/{vm}/network-policy"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 403, "{refused}");
    assert_reaches(&server, &vm, &second, false).await;

    // An admin (whose key fixes nothing) may still open it.
    let (status, changed) = server
        .call(
            reqwest::Method::PUT,
            &format!("/vms/{vm}/network-policy?wait=30s"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200, "{changed}");
    assert_reaches(&server, &vm, &second, true).await;
    for id in [&vm, &same] {
        let (status, _) = server.delete(&format!("/vms/{id}?wait=60s")).await;
        assert_eq!(status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_quota_bounds_what_their_sessions_create() {
    let server = TestServer::start().await;
    let name = unique("quser");
    let (status, user) = server
        .post(
            "/users",
            json!({"username": name, "password": "correct horse battery", "role": "operator",
                   "quota": {"max_vms": 1}}),
        )
        .await;
    assert_eq!(status, 201, "{user}");
    assert_eq!(user["quota"], json!({"max_vms": 1}), "{user}");
    let user_id = user["id"].as_str().unwrap().to_string();
    let login = server
        .http
        .post(format!("{}/api/v1/auth/login", server.url))
        .json(&json!({"username": name, "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status().as_u16(), 200);
    let session: Value = login.json().await.unwrap();
    let token = session["token"].as_str().unwrap().to_string();
    let create = |label: &str| {
        let body = json!({"name": unique(label)});
        let (server, token) = (&server, token.clone());
        async move {
            server
                .call_as(
                    &token,
                    reqwest::Method::POST,
                    "/api/v1/vms?wait=90s",
                    Some(body),
                )
                .await
        }
    };

    let (status, first) = create("uvm").await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["vm"]["created_by"], user_id.as_str(), "{first}");
    let (status, refused) = create("uvm").await;
    assert_eq!(status, 429, "{refused}");
    let message = refused["message"].as_str().unwrap();
    assert!(
        message.contains("max_vms") && message.starts_with("this user's quota"),
        "{refused}"
    );
    // Lifted by an admin, it applies from the session's next request.
    let (status, lifted) = server
        .call(
            reqwest::Method::PATCH,
            &format!("/users/{user_id}"),
            Some(json!({"quota": {}})),
        )
        .await;
    assert_eq!(status, 200, "{lifted}");
    assert!(lifted.get("quota").is_none(), "{lifted}");
    let (status, second) = create("uvm").await;
    assert_eq!(status, 200, "{second}");
    // A quota with a bad limit changes nothing.
    let (status, _) = server
        .call(
            reqwest::Method::PATCH,
            &format!("/users/{user_id}"),
            Some(json!({"quota": {"max_vms": 1, "max_cpus": 1}})),
        )
        .await;
    assert_eq!(status, 400);
    let (_, unchanged) = server.get(&format!("/users/{user_id}")).await;
    assert!(unchanged.get("quota").is_none(), "{unchanged}");
    for vm in [&first, &second] {
        let id = vm["vm"]["id"].as_str().unwrap();
        let (status, _) = server.delete(&format!("/vms/{id}?wait=60s")).await;
        assert_eq!(status, 200);
    }
}
