//! Abuse drills against a real `aetherium up` platform and real containers: each
//! asserts that the hostile sandbox was stopped or refused *and* that the host, the
//! API and a neighbouring sandbox stayed healthy.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{TestServer, container_of, docker, sh_in, unique};
use serde_json::json;

async fn vm_sized(server: &TestServer, name: &str, memory_mb: u64) -> String {
    let (status, body) = server
        .post(
            "/vms?wait=90s",
            json!({"name": name, "vcpus": 1, "memory_mb": memory_mb}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["vm_id"].as_str().unwrap().to_string()
}

/// The API answers quickly and a neighbouring sandbox still runs commands.
async fn platform_healthy(server: &TestServer, neighbour: &str) {
    let started = Instant::now();
    let health = server
        .http
        .get(format!("{}/health", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let ran = sh_in(server, neighbour, "echo neighbour-ok", 30).await;
    assert_eq!(ran["stdout"], "neighbour-ok\n", "{ran}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_hits_the_pid_limit_and_is_stopped() {
    let server = TestServer::start().await;
    let neighbour = server.running_vm(&unique("neighbour")).await;
    let bomb = server.running_vm(&unique("bomb")).await;
    // Forks until the sandbox's pid limit; the command's timeout kills its group.
    let ran = sh_in(
        &server,
        &bomb,
        "bomb() { bomb | bomb & }; bomb; sleep 30",
        8,
    )
    .await;
    // Killed by its timeout, or ended early when even `sleep` could not fork.
    assert!(
        ran["status"] != "completed" || ran["exit_code"] != 0,
        "{ran}"
    );
    // The pid limit held: the container never had more processes than allowed.
    let pids = docker(&[
        "inspect",
        "-f",
        "{{.HostConfig.PidsLimit}}",
        &container_of(&bomb),
    ]);
    assert_eq!(String::from_utf8_lossy(&pids.stdout).trim(), "1024");
    platform_healthy(&server, &neighbour).await;
    // What the bomb left is removed with its sandbox.
    let (status, deleted) = server.delete(&format!("/vms/{bomb}?wait=60s")).await;
    assert_eq!(status, 200, "{deleted}");
    assert!(!docker(&["inspect", &container_of(&bomb)]).status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_hog_is_killed_inside_its_limit() {
    let server = TestServer::start().await;
    let neighbour = server.running_vm(&unique("neighbour")).await;
    let hog = vm_sized(&server, &unique("hog"), 128).await;
    // Half a gigabyte in a 128 MiB sandbox: the kernel kills the hog (or the
    // sandbox), never the host.
    let (status, body) = server
        .post(
            &format!("/vms/{hog}/execute?wait=120s"),
            json!({"command": "perl", "args": ["-e", "$x = 'a' x (512*1024*1024); print length($x)"], "timeout_seconds": 60}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let execution = &body["execution"];
    assert!(
        execution["exit_code"] != 0 || execution["status"] == "failed",
        "the hog got its memory: {execution}"
    );
    assert!(
        !execution["stdout"]
            .as_str()
            .unwrap_or_default()
            .contains("536870912")
    );
    platform_healthy(&server, &neighbour).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_ignoring_sigterm_does_not_hold_up_a_delete() {
    let server = TestServer::start().await;
    let vm = server.running_vm(&unique("stubborn")).await;
    sh_in(
        &server,
        &vm,
        "setsid sh -c 'trap \"\" TERM INT HUP; while :; do sleep 1; done' >/dev/null 2>&1 </dev/null &",
        30,
    )
    .await;
    let started = Instant::now();
    let (status, deleted) = server.delete(&format!("/vms/{vm}?wait=60s")).await;
    assert_eq!(status, 200, "{deleted}");
    assert_eq!(deleted["status"], "completed", "{deleted}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert!(!docker(&["inspect", &container_of(&vm)]).status.success());
    assert!(!server.data_dir.path().join("sockets").join(&vm).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_filler_is_stopped_at_its_quota_and_the_run_dir_holds_nothing_more() {
    let server = TestServer::start().await;
    let neighbour = server.running_vm(&unique("neighbour")).await;
    // Without disk_mb a container gets the configured default; a microVM cannot
    // take one (its disk is its image), nor can a quota be absurd.
    let (_, shown) = server.get(&format!("/vms/{neighbour}")).await;
    assert_eq!(shown["disk_mb"], 10240, "{shown}");
    for (body, needle) in [
        (
            json!({"orchestrator": "firecracker", "disk_mb": 512}),
            "image",
        ),
        (json!({"disk_mb": 10}), "disk_mb"),
    ] {
        let (status, refused) = server.post("/vms", body).await;
        assert_eq!(status, 400, "{refused}");
        assert!(
            refused["message"].as_str().unwrap().contains(needle),
            "{refused}"
        );
    }

    let (status, created) = server
        .post(
            "/vms?wait=90s",
            json!({"name": unique("filler"), "disk_mb": 128}),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["vm"]["disk_mb"], 128, "{created}");
    let filler = created["vm_id"].as_str().unwrap().to_string();

    // The agent's run directory is a tiny filesystem of its own on the host: the
    // sandbox cannot use it to write to the host's disk.
    let ran = sh_in(
        &server,
        &filler,
        "dd if=/dev/zero of=/.aetherium/run/fill bs=1M count=64 2>&1; rm -f /.aetherium/run/fill",
        30,
    )
    .await;
    assert!(
        ran["stdout"]
            .as_str()
            .unwrap()
            .contains("No space left on device"),
        "{ran}"
    );

    // Writing past the quota stops the sandbox, which says why.
    let (status, _) = server
        .post(
            &format!("/vms/{filler}/execute?wait=120s"),
            json!({"command": "dd", "args": ["if=/dev/zero", "of=/tmp/fill", "bs=1M", "count=2048"], "timeout_seconds": 90}),
        )
        .await;
    assert_eq!(status, 200);
    let (_, vm) = server
        .wait_vm(&filler, 60, |_, vm| vm["status"] == "FAILED")
        .await;
    assert_eq!(vm["status"], "FAILED", "{vm}");
    assert!(vm["error"].as_str().unwrap().contains("disk quota"), "{vm}");
    platform_healthy(&server, &neighbour).await;
    let (status, deleted) = server.delete(&format!("/vms/{filler}?wait=60s")).await;
    assert_eq!(status, 200, "{deleted}");
    assert!(
        !docker(&["inspect", &container_of(&filler)])
            .status
            .success()
    );
    assert!(
        !server
            .data_dir
            .path()
            .join("sockets")
            .join(&filler)
            .exists()
    );
}

/// `n` authenticated API reads (`GET /vms`, a database query), one after the
/// other; their latencies, sorted.
async fn api_latencies(server: &TestServer, n: usize) -> Vec<Duration> {
    let mut latencies = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let (status, _) = server.get("/vms?limit=20").await;
        latencies.push(started.elapsed());
        assert_eq!(status, 200);
    }
    latencies.sort();
    latencies
}

fn p99(sorted: &[Duration]) -> Duration {
    sorted[(sorted.len() * 99).div_ceil(100) - 1]
}

/// Inside a sandbox: `usage_usec` (its CPU time so far) and `nr_throttled` lines
/// from its own cgroup, v2 or v1 (a container sees its cgroup as the root).
const CPU_STAT: &str = "if [ -f /sys/fs/cgroup/cpu.max ]; then cat /sys/fs/cgroup/cpu.stat; \
    else echo \"usage_usec $(( $(cat /sys/fs/cgroup/cpuacct/cpuacct.usage) / 1000 ))\"; \
    grep nr_throttled /sys/fs/cgroup/cpu/cpu.stat; fi";

/// Inside a sandbox: its CPU bandwidth limit as `<quota> <period>` (cgroup v2's
/// `cpu.max`), from v2 or v1.
const CPU_MAX: &str = "if [ -f /sys/fs/cgroup/cpu.max ]; then cat /sys/fs/cgroup/cpu.max; \
    else echo \"$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us) $(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us)\"; fi";

/// The sandbox's CPU time so far in µs, and how often it was throttled.
async fn cpu_stat(server: &TestServer, vm: &str) -> (u64, u64) {
    let ran = sh_in(server, vm, CPU_STAT, 30).await;
    let text = ran["stdout"].as_str().unwrap().to_string();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in cpu.stat: {text}"))
    };
    (field("usage_usec "), field("nr_throttled "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cpu_hog_on_every_core_is_held_to_its_vcpu_and_the_api_stays_fast() {
    let server = TestServer::start().await;
    let neighbour = server.running_vm(&unique("neighbour")).await;
    let hog = vm_sized(&server, &unique("cpuhog"), 256).await;
    let limit = sh_in(&server, &hog, CPU_MAX, 30).await;
    assert_eq!(limit["stdout"], "100000 100000\n", "one vCPU: {limit}");
    let before = api_latencies(&server, 200).await;

    // A busy loop on every CPU the sandbox sees (all of the host's), detached.
    let started = sh_in(
        &server,
        &hog,
        "for i in $(seq $(nproc)); do setsid sh -c 'while :; do :; done' >/dev/null 2>&1 </dev/null & done; nproc",
        30,
    )
    .await;
    let cores: u64 = started["stdout"].as_str().unwrap().trim().parse().unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (usage_start, _) = cpu_stat(&server, &hog).await;
    let window = Instant::now();
    let during = api_latencies(&server, 300).await;
    let (usage_end, throttled) = cpu_stat(&server, &hog).await;
    let cpus_used = (usage_end - usage_start) as f64 / window.elapsed().as_micros() as f64;

    let (p99_before, p99_during) = (p99(&before), p99(&during));
    eprintln!(
        "API p99 {p99_before:?} before, {p99_during:?} with {cores} busy loops; the hog used {cpus_used:.2} CPUs, throttled {throttled} times"
    );
    // Held to its one vCPU, however many loops it runs.
    assert!(cpus_used < 1.15, "the hog used {cpus_used:.2} CPUs");
    if cores > 1 {
        assert!(throttled > 0, "never throttled");
    }
    // The API keeps answering fast: p99 under 100 ms. These machines run other
    // tests at the same time; when the API was already slower than 50 ms before
    // the hog, the bound is twice what it was then.
    let bound = if p99_before > Duration::from_millis(50) {
        p99_before * 2
    } else {
        Duration::from_millis(100)
    };
    assert!(
        p99_during < bound,
        "API p99 {p99_during:?} with the hog (bound {bound:?}; {p99_before:?} before)"
    );
    platform_healthy(&server, &neighbour).await;

    // Deleting it ends every loop.
    let (status, deleted) = server.delete(&format!("/vms/{hog}?wait=60s")).await;
    assert_eq!(status, 200, "{deleted}");
    assert!(!docker(&["inspect", &container_of(&hog)]).status.success());
}
