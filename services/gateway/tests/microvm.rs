//! MicroVMs end to end through the API: a real guest (Debian's cloud kernel, our
//! initramfs, the base image's rootfs with our agent as PID 1) boots under QEMU —
//! with KVM where it works, else software emulation (TCG), as here — and is driven
//! over real virtio-vsock (vhost-device-vsock, hybrid-vsock socket): queued and
//! streamed exec, files both ways, pause/resume, its network through a TAP on a
//! bridge of its own, and a delete that leaves nothing behind.
//!
//! Needs: qemu-system-x86_64, vhost-device-vsock, the guest kernel package in
//! `AETHERIUM_KERNEL_DIR` (default /var/lib/aetherium/kernel), /bin/busybox and
//! root (TAP devices). `scripts/setup.sh` installs all of them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use aetherium_core::image::{BuildRequest, BuildSource, ImageStore};
use aetherium_testkit::{kernel_dir, static_agent_bin, test_images_dir as images_dir};
use common::{TestServer, random_hex, test_image};
use serde_json::{Value, json};

async fn build_base_image() {
    let request = BuildRequest::new(
        BuildSource::Docker(test_image()),
        kernel_dir(),
        static_agent_bin(),
    );
    ImageStore::new(images_dir())
        .build(&request, &|_| {})
        .await
        .expect("build the VM image of the base image");
}

/// Whatever a failed test leaves: its VMs' processes (by the pids in their run
/// directories), its bridge (and with it any TAP on it) and its NAT rules.
struct BridgeGuard {
    bridge: String,
    run_dir: PathBuf,
    /// The guests' upstream DNS server: `allowed.test` and `other.test` resolve.
    dns: aetherium_testkit::dns::StandInDns,
}

impl Drop for BridgeGuard {
    fn drop(&mut self) {
        if let Ok(vms) = std::fs::read_dir(&self.run_dir) {
            for vm in vms.flatten() {
                for pid in pids_in(&vm.path()) {
                    if alive(pid) {
                        let _ = std::process::Command::new("kill")
                            .args(["-KILL", &pid.to_string()])
                            .status();
                    }
                }
            }
        }
        if let Some(root) = self.run_dir.parent() {
            let _ = std::fs::remove_dir_all(root);
        }
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
        // Every rule naming this bridge: NAT and the fence (the network module tags
        // them with it; a guest's rules match on it).
        for (table, chain) in [
            ("nat", "POSTROUTING"),
            ("filter", "FORWARD"),
            ("filter", "INPUT"),
            ("filter", aetherium_core::net::guard::MICROVM_FORWARD),
        ] {
            let Ok(out) = std::process::Command::new("iptables")
                .args(["-w", "-t", table, "-S", chain])
                .output()
            else {
                continue;
            };
            for rule in String::from_utf8_lossy(&out.stdout).lines() {
                if rule.contains(&self.bridge) && rule.starts_with("-A ") {
                    let args: Vec<&str> = rule[3..].split_whitespace().collect();
                    let mut cmd = std::process::Command::new("iptables");
                    cmd.args(["-w", "-t", table, "-D"])
                        .args(args.iter().map(|a| a.trim_matches('"')).collect::<Vec<_>>());
                    let _ = cmd.output();
                }
            }
        }
    }
}

fn links_on(bridge: &str) -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["-j", "link", "show", "master", bridge])
        .output()
        .unwrap();
    let links: Value = serde_json::from_slice(&out.stdout).unwrap_or(json!([]));
    links
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|l| l["ifname"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn pids_in(dir: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "pid"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|t| t.split_whitespace().next()?.parse().ok())
        .collect()
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let state = s[s.rfind(')').unwrap() + 1..].split_whitespace().next();
            !matches!(state, Some("Z") | Some("X"))
        })
        .unwrap_or(false)
}

async fn exec(server: &TestServer, vm: &str, command: &str, args: &[&str]) -> Value {
    let (status, body) = server
        .post(
            &format!("/vms/{vm}/execute?wait=60s"),
            json!({"command": command, "args": args}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["execution"].clone()
}

/// A server offering QEMU beside Docker, with a bridge and subnet of its own.
async fn microvm_server() -> (TestServer, BridgeGuard, Ipv4Addr) {
    build_base_image().await;
    let bridge = format!("aetb{}", &random_hex()[..8]);
    let hex = random_hex();
    let (a, b) = (
        u8::from_str_radix(&hex[..2], 16).unwrap(),
        u8::from_str_radix(&hex[2..4], 16).unwrap(),
    );
    let gateway = Ipv4Addr::new(10, 200u8.wrapping_add(a % 50), b, 1);
    let cidr = format!("{gateway}/24");
    let run_dir = tempfile::Builder::new()
        .prefix("aevm-")
        .tempdir()
        .unwrap()
        .keep();
    let dns = aetherium_testkit::dns::StandInDns::start(&[
        ("allowed.test", &[Ipv4Addr::new(198, 18, 7, 7)]),
        ("other.test", &[Ipv4Addr::new(198, 18, 7, 8)]),
    ]);
    let upstream = dns.addr().to_string();
    let guard = BridgeGuard {
        bridge: bridge.clone(),
        run_dir: run_dir.join("qemu"),
        dns,
    };
    let server = TestServer::start_with(move |config| {
        config.network.dns_upstream = vec![upstream.clone()];
        config.vmm.run_dir = Some(run_dir.clone());
        config.vmm.backends = vec!["docker".into(), "qemu".into()];
        config.vmm.images_dir = Some(images_dir());
        config.vmm.boot_timeout_seconds = 240;
        config.network.bridge = bridge.clone();
        config.network.gateway_cidr = cidr.clone();
    })
    .await;
    (server, guard, gateway)
}

async fn leases_left(server: &TestServer, bridge: &str) -> Vec<aetherium_core::store::IpLease> {
    let store = aetherium_core::store::SqliteStore::connect(&format!(
        "sqlite://{}",
        server.data_dir.path().join("aetherium.db").display()
    ))
    .await
    .unwrap();
    aetherium_core::store::IpLeases::list_leases(&store, &format!("{}/{bridge}", server.worker_id))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qemu_microvm_boots_runs_commands_is_fenced_and_leaves_nothing() {
    let (server, guard, gateway) = microvm_server().await;
    let bridge = guard.bridge.clone();

    // The worker offers QEMU beside Docker.
    let (_, worker) = server.get(&format!("/workers/{}", server.worker_id)).await;
    let caps = worker["capabilities"].to_string();
    assert!(caps.contains("qemu") && caps.contains("docker"), "{worker}");

    let name = format!("mvm-{}", &random_hex()[..8]);
    let (status, created) = server
        .post(
            "/vms?wait=300s",
            json!({"name": name, "orchestrator": "qemu", "vcpus": 1, "memory_mb": 512}),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    let vm = created["vm"].clone();
    assert_eq!(vm["status"], "RUNNING", "{created}");
    assert_eq!(vm["orchestrator"], "qemu");
    let id = vm["id"].as_str().unwrap().to_string();
    let run_dir = guard.run_dir.join(&id);
    assert!(run_dir.is_dir(), "{}", run_dir.display());
    let pids = pids_in(&run_dir);
    assert!(
        !pids.is_empty() && pids.iter().all(|p| alive(*p)),
        "{pids:?}"
    );

    // It is a real guest: Debian's cloud kernel, booted with our command line.
    let uname = exec(&server, &id, "uname", &["-r"]).await;
    assert_eq!(uname["exit_code"], 0, "{uname}");
    assert!(
        uname["stdout"].as_str().unwrap().contains("cloud-amd64"),
        "{uname}"
    );
    let cmdline = exec(&server, &id, "cat", &["/proc/cmdline"]).await;
    assert!(
        cmdline["stdout"]
            .as_str()
            .unwrap()
            .contains("root=/dev/vda"),
        "{cmdline}"
    );

    // Streamed output over the vsock, as it happens.
    let response = server
        .request(reqwest::Method::POST, &format!("/vms/{id}/exec/stream"))
        .json(&json!({"command": "sh", "args": ["-c", "echo one; sleep 1; echo two >&2; exit 4"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let events: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        events.contains(&json!({"type": "stdout", "data": "one\n"})),
        "{text}"
    );
    assert!(
        events.contains(&json!({"type": "stderr", "data": "two\n"})),
        "{text}"
    );
    assert_eq!(events.last().unwrap()["exit_code"], 4, "{text}");

    // Files both ways.
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let response = server
        .request(
            reqwest::Method::PUT,
            &format!("/vms/{id}/files?path=/tmp/in/data.bin"),
        )
        .body(payload.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    let sum = exec(&server, &id, "sha256sum", &["/tmp/in/data.bin"]).await;
    assert_eq!(sum["exit_code"], 0, "{sum}");
    let back = server
        .request(
            reqwest::Method::GET,
            &format!("/vms/{id}/files?path=/tmp/in/data.bin"),
        )
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(back.as_ref(), payload.as_slice());

    // Its network: a TAP on our bridge, an isolated port, an address leased from
    // our subnet; the network is fenced (isolated by default): the guest does not
    // reach the host's own services (a listener on the bridge address).
    let taps = links_on(&bridge);
    assert_eq!(taps.len(), 1, "one TAP on {bridge}: {taps:?}");
    let port_flags = String::from_utf8_lossy(
        &std::process::Command::new("bridge")
            .args(["-d", "link", "show", "dev", &taps[0]])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(port_flags.contains("isolated on"), "{port_flags}");
    let listener = tokio::net::TcpListener::bind((gateway, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = tokio::spawn(async move { listener.accept().await.is_ok() });
    let sent = exec(
        &server,
        &id,
        "bash",
        &[
            "-c",
            &format!("timeout 10 bash -c 'echo hello-from-guest >/dev/tcp/{gateway}/{port}'"),
        ],
    )
    .await;
    assert_ne!(sent["exit_code"], 0, "the guest reached the host: {sent}");
    assert!(
        !accepted.is_finished(),
        "the host's listener got a connection"
    );
    accepted.abort();
    // Its DNS: the gateway, where the bridge's resolver answers.
    let resolv = exec(&server, &id, "cat", &["/etc/resolv.conf"]).await;
    assert_eq!(
        resolv["stdout"].as_str().unwrap().trim(),
        format!("nameserver {gateway}"),
        "{resolv}"
    );
    let resolve = |name: &'static str| {
        let (server, id) = (&server, id.clone());
        async move {
            let out = exec(
                server,
                &id,
                "sh",
                &["-c", &format!("getent hosts {name} | cut -d' ' -f1")],
            )
            .await;
            out["stdout"].as_str().unwrap().trim().to_string()
        }
    };
    assert_eq!(resolve("other.test").await, "198.18.7.8");
    let asked_for_other = || {
        let asked = guard.dns.asked();
        asked.iter().filter(|n| *n == "other.test").count()
    };
    let asked_before = asked_for_other();
    // Its network policy is the guest's TAP rules, changed while it runs.
    let (status, changed) = server
        .call(
            reqwest::Method::PUT,
            &format!("/vms/{id}/network-policy?wait=60s"),
            Some(json!({"egress": "deny", "allow": ["198.18.0.0/15", "allowed.test"]})),
        )
        .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(
        changed["vm"]["network_policy"],
        json!({"egress": "deny", "allow": ["198.18.0.0/15", "allowed.test"]})
    );
    assert_eq!(resolve("allowed.test").await, "198.18.7.7");
    assert_eq!(
        resolve("other.test").await,
        "",
        "a name not allowed resolved"
    );
    assert_eq!(
        asked_for_other(),
        asked_before,
        "a refused name left the host"
    );
    let rules = common::iptables_rules();
    let chain = aetherium_core::net::guard::policy_chain(&id);
    assert!(
        rules.contains(&format!("-A {chain} -d 198.18.0.0/15 -j RETURN")),
        "{rules}"
    );

    // Pause freezes the vCPUs; resume thaws them. Snapshots are Firecracker's (409 elsewhere).
    let (status, paused) = server
        .post(&format!("/vms/{id}/pause?wait=60s"), json!({}))
        .await;
    assert_eq!(status, 200, "{paused}");
    assert_eq!(paused["vm"]["status"], "PAUSED", "{paused}");
    let (status, refused) = server
        .post(&format!("/vms/{id}/execute"), json!({"command": "true"}))
        .await;
    assert_eq!(status, 409, "{refused}");
    let (status, snap) = server.post(&format!("/vms/{id}/snapshot"), json!({})).await;
    assert_eq!(status, 409, "{snap}");
    assert!(
        snap["message"]
            .as_str()
            .unwrap()
            .contains("cannot be snapshotted"),
        "{snap}"
    );
    let (status, resumed) = server
        .post(&format!("/vms/{id}/resume?wait=60s"), json!({}))
        .await;
    assert_eq!(status, 200, "{resumed}");
    assert_eq!(resumed["vm"]["status"], "RUNNING", "{resumed}");
    let after = exec(&server, &id, "echo", &["still-here"]).await;
    assert_eq!(after["stdout"], "still-here\n", "{after}");

    // Delete: no process, no directory, no TAP, no lease left.
    let (status, deleted) = server.delete(&format!("/vms/{id}?wait=120s")).await;
    assert_eq!(status, 200, "{deleted}");
    assert!(!run_dir.exists(), "{} left behind", run_dir.display());
    for pid in &pids {
        assert!(!alive(*pid), "process {pid} left running");
    }
    assert!(links_on(&bridge).is_empty(), "TAP left on {bridge}");
    let left = leases_left(&server, &bridge).await;
    assert!(left.is_empty(), "leases left: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn microvm_faults_end_failed_and_leave_nothing() {
    let (server, guard, _) = microvm_server().await;
    let bridge = guard.bridge.clone();

    // An image nobody built: FAILED at once, saying how to build it; nothing left.
    let (status, created) = server
        .post(
            "/vms?wait=60s",
            json!({"orchestrator": "qemu", "image": "no-such/image:1"}),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    let vm = &created["vm"];
    assert_eq!(vm["status"], "FAILED", "{created}");
    let error = vm["error"].as_str().unwrap();
    assert!(
        error.contains("aetherium image build no-such/image:1"),
        "{error}"
    );
    let id = vm["id"].as_str().unwrap();
    assert!(!guard.run_dir.join(id).exists());
    assert!(links_on(&bridge).is_empty(), "TAP left on {bridge}");
    assert!(leases_left(&server, &bridge).await.is_empty());

    // The VMM killed with SIGKILL: the VM turns FAILED by itself; delete cleans up.
    let (status, created) = server
        .post(
            "/vms?wait=300s",
            json!({"orchestrator": "qemu", "network": "none"}),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["vm"]["status"], "RUNNING", "{created}");
    let id = created["vm"]["id"].as_str().unwrap().to_string();
    assert!(links_on(&bridge).is_empty(), "network none: no TAP");
    let run_dir = guard.run_dir.join(&id);
    let pids = pids_in(&run_dir);
    let qemu_pid: u32 = std::fs::read_to_string(run_dir.join("qemu.pid"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        std::process::Command::new("kill")
            .args(["-KILL", &qemu_pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let (_, vm) = server
        .wait_vm(&id, 30, |_, vm| vm["status"] == "FAILED")
        .await;
    assert_eq!(vm["status"], "FAILED", "{vm}");
    assert!(vm["error"].as_str().unwrap().contains("137"), "{vm}");
    let (status, deleted) = server.delete(&format!("/vms/{id}?wait=60s")).await;
    assert_eq!(status, 200, "{deleted}");
    assert!(!run_dir.exists(), "{} left behind", run_dir.display());
    for pid in &pids {
        assert!(!alive(*pid), "process {pid} left running");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_microvm_backend_the_worker_does_not_offer_is_refused_clearly() {
    let server = TestServer::start().await;
    // This server runs Docker only: no live worker can take it (503: one may join).
    let (status, body) = server
        .post("/vms", json!({"orchestrator": "firecracker"}))
        .await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("firecracker"),
        "{body}"
    );
    // An unknown backend is a 400 naming the choices.
    let (status, body) = server.post("/vms", json!({"orchestrator": "xen"})).await;
    assert_eq!(status, 400, "{body}");
    // Containers pause too; snapshots are for Firecracker only.
    let vm = server
        .running_vm(&format!("pz-{}", &random_hex()[..8]))
        .await;
    // Two pauses asked at once both pass the API's check (the VM is still RUNNING)
    // and both end done: the second finds the state it wants.
    twice_at_once(&server, &vm, "pause", "only a RUNNING VM can be paused").await;
    let (_, body) = server.get(&format!("/vms/{vm}")).await;
    assert_eq!(body["status"], "PAUSED", "{body}");
    let (status, body) = server.post(&format!("/vms/{vm}/pause"), json!({})).await;
    assert_eq!(status, 409, "pausing twice: {body}");
    let (status, body) = server.post(&format!("/vms/{vm}/snapshot"), json!({})).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("cannot be snapshotted"),
        "{body}"
    );
    twice_at_once(&server, &vm, "resume", "only a PAUSED VM can be resumed").await;
    let (_, body) = server.get(&format!("/vms/{vm}")).await;
    assert_eq!(body["status"], "RUNNING", "{body}");
    let (status, body) = server.delete(&format!("/vms/{vm}?wait=60s")).await;
    assert_eq!(status, 200, "{body}");
}

/// `POST /vms/{vm}/{action}` twice at once, each waiting: both done, or a 409 from
/// the API's own state check (`refusal`) when the other got there first.
async fn twice_at_once(server: &TestServer, vm: &str, action: &str, refusal: &str) {
    let path = format!("/vms/{vm}/{action}?wait=30s");
    let (first, second) =
        tokio::join!(server.post(&path, json!({})), server.post(&path, json!({})));
    for (status, body) in [first, second] {
        if status == 409 {
            let message = body["message"].as_str().unwrap_or_default();
            assert!(message.contains(refusal), "{action}: {body}");
        } else {
            assert_eq!(status, 200, "{action}: {body}");
            assert_eq!(body["status"], "completed", "{action}: {body}");
        }
    }
}
