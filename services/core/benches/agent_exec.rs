//! Exec round trip and stdout throughput through the agent, side by side with
//! `docker exec` and with raw unix-socket copies of the same bytes (no protocol).
//!
//! Throughput is `cat` of a file of random bytes, four ways:
//! - through the agent: `Start` of `cat /tmp/big` in the sandbox, its stdout streamed
//!   to us (timed from the request to the end event);
//! - `docker exec <sandbox> cat /tmp/big`;
//! - the floor in the sandbox: the same `cat` of the same file in the sandbox, its
//!   stdout a unix socket in the bind-mounted run dir that we read (perl connects and
//!   execs `cat`; timed from our accept to EOF, so perl's start is not counted);
//! - the floor on the host: `cat` of a same-sized host file into a socketpair.
//!
//! Each is run `BENCH_RUNS` times; medians are printed.
//!
//! Run: `make bench-agent` (or `cargo bench -p aetherium-core --bench agent_exec`).
//! Needs the Docker engine, the static agent (`make agent`) and the base image.
//! Options through the environment: `BENCH_ITERATIONS` (round trips, default 30),
//! `BENCH_MIB` (default 256), `BENCH_RUNS` (throughput runs, default 5),
//! `AETHERIUM_TEST_IMAGE`, `AETHERIUM_AGENT_BIN`.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aetherium_core::agent_client::AgentClient;
use aetherium_core::vmm::docker::{DockerBackend, DockerBackendConfig};
use aetherium_core::vmm::{Backend, SandboxSpec};
use aetherium_testkit::static_agent_bin;
use aetherium_types::agent::{DataEvent, ProcessConfig, ProcessEvent, StartRequest};
use futures::StreamExt;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median_duration(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn request(cmd: &str, args: &[&str]) -> StartRequest {
    StartRequest {
        process: ProcessConfig {
            cmd: cmd.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            ..Default::default()
        },
        stdin: Some(false),
        ..Default::default()
    }
}

/// Runs a command through the agent; returns the stdout bytes seen and the exit code.
async fn run_counting(agent: &AgentClient, cmd: &str, args: &[&str]) -> (u64, i32) {
    let mut stream = agent.start(&request(cmd, args)).await.expect("start");
    let mut bytes = 0u64;
    while let Some(event) = stream.next().await {
        match event.expect("event") {
            ProcessEvent::Data(DataEvent::Stdout(b)) => bytes += b.0.len() as u64,
            ProcessEvent::End(end) => return (bytes, end.exit_code),
            _ => {}
        }
    }
    panic!("stream ended without an end event");
}

fn docker_exec_counting(container: &str, args: &[&str]) -> u64 {
    let mut child = Command::new("docker")
        .arg("exec")
        .arg(container)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("docker exec");
    let total = drain(child.stdout.take().expect("stdout"));
    assert!(child.wait().expect("wait").success());
    total
}

/// Reads a stream to its end with 64 KiB reads; returns the byte count.
fn drain(mut reader: impl std::io::Read) -> u64 {
    let mut buf = vec![0u8; 1 << 16];
    let mut seen = 0u64;
    loop {
        let n = reader.read(&mut buf).expect("read");
        if n == 0 {
            return seen;
        }
        seen += n as u64;
    }
}

/// A host file of `total` pseudo-random bytes.
fn host_file(total: u64) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().expect("tempfile");
    let mut w = std::io::BufWriter::new(file.as_file());
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut chunk = vec![0u8; 1 << 16];
    let mut left = total;
    while left > 0 {
        for b in chunk.iter_mut() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *b = state as u8;
        }
        let n = left.min(chunk.len() as u64) as usize;
        std::io::Write::write_all(&mut w, &chunk[..n]).expect("write");
        left -= n as u64;
    }
    drop(w);
    file
}

/// The host floor: the same `cat` on the host, its stdout a unix socket we read from:
/// what copying the file through a unix socket costs with no protocol at all.
fn raw_unix_copy(file: &Path, total: u64) -> Duration {
    let (reader, writer) = std::os::unix::net::UnixStream::pair().expect("pair");
    let start = Instant::now();
    let mut child = Command::new("cat")
        .arg(file)
        .stdout(Stdio::from(std::os::fd::OwnedFd::from(writer)))
        .spawn()
        .expect("cat");
    let seen = drain(reader);
    assert!(child.wait().expect("wait").success());
    assert_eq!(seen, total);
    start.elapsed()
}

/// The floor in the sandbox: `cat /tmp/big` inside it writing into a unix socket of
/// the bind-mounted run dir, which we read. Started through the agent (its output
/// does not go through the protocol); timed from our accept to EOF.
async fn sandbox_unix_copy(agent: &AgentClient, run_dir: &Path, total: u64) -> Duration {
    let path = run_dir.join("floor.sock");
    let _ = std::fs::remove_file(&path);
    let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind floor socket");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let reader = std::thread::spawn(move || {
        let (stream, _) = listener.accept().expect("accept");
        let start = Instant::now();
        let seen = drain(stream);
        (seen, start.elapsed())
    });
    let script = "use IO::Socket::UNIX; \
        my $s = IO::Socket::UNIX->new(Peer => '/.aetherium/run/floor.sock') or die \"connect: $!\"; \
        open(STDOUT, '>&', $s) or die \"dup: $!\"; close($s); \
        exec('cat', '/tmp/big') or die \"exec: $!\";";
    let (_, code) = run_counting(agent, "perl", &["-e", script]).await;
    assert_eq!(code, 0, "perl | cat into the floor socket");
    let (seen, elapsed) = reader.join().expect("reader");
    let _ = std::fs::remove_file(&path);
    assert_eq!(seen, total);
    elapsed
}

#[tokio::main]
async fn main() {
    let iterations: usize = env_or("BENCH_ITERATIONS", 30);
    let mib: u64 = env_or("BENCH_MIB", 256);
    let runs: usize = env_or::<usize>("BENCH_RUNS", 5).max(1);
    let image =
        std::env::var("AETHERIUM_TEST_IMAGE").unwrap_or_else(|_| "aetherium/base:latest".into());
    let dir = tempfile::tempdir().expect("tempdir");
    let worker_id = format!("bench-{}", std::process::id());
    let backend = DockerBackend::connect(DockerBackendConfig {
        host: "unix:///var/run/docker.sock".into(),
        worker_id,
        installation_id: "bench-installation".into(),
        agent_path: static_agent_bin(),
        socket_dir: dir.path().to_path_buf(),
        pids_limit: 1024,
        network_mode: "none".into(),
        egress_allow: Vec::new(),
        dns_upstream: aetherium_core::net::dns::host_resolvers(),
    })
    .expect("backend");
    let vm_id = format!("bench-{}", std::process::id());
    let spec = SandboxSpec {
        orchestrator: aetherium_types::Orchestrator::Docker,
        vm_id: vm_id.clone(),
        name: vm_id.clone(),
        image,
        vcpus: 2,
        memory_mb: 1024,
        disk_mb: None,
        network_policy: None,
        network: None,
        access_token: None,
    };
    backend.create(&spec).await.expect("create sandbox");
    let container = format!("aetherium-{vm_id}");
    let run_dir = dir.path().join(&vm_id);
    let agent = backend.agent(&vm_id);
    agent
        .wait_ready(Duration::from_secs(30))
        .await
        .expect("agent ready");

    let result = async {
        // Round trip: start `true`, wait for its end event.
        run_counting(&agent, "true", &[]).await;
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        for _ in 0..iterations {
            let t = Instant::now();
            let (_, code) = run_counting(&agent, "true", &[]).await;
            assert_eq!(code, 0);
            ours.push(t.elapsed().as_secs_f64() * 1000.0);
            let t = Instant::now();
            assert!(
                Command::new("docker")
                    .args(["exec", &container, "true"])
                    .status()
                    .expect("docker")
                    .success()
            );
            theirs.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        let (rtt_ours, rtt_docker) = (median(ours), median(theirs));

        // Throughput: `cat` of a file of BENCH_MIB MiB inside the sandbox.
        let size = mib * 1024 * 1024;
        let (_, code) = run_counting(
            &agent,
            "sh",
            &["-c", &format!("head -c {size} /dev/urandom > /tmp/big")],
        )
        .await;
        assert_eq!(code, 0);
        let host_big = host_file(size);
        let (mut ours, mut docker, mut floor, mut host) = (vec![], vec![], vec![], vec![]);
        for _ in 0..runs {
            let t = Instant::now();
            let (bytes, _) = run_counting(&agent, "cat", &["/tmp/big"]).await;
            ours.push(t.elapsed());
            assert_eq!(bytes, size);
            let t = Instant::now();
            assert_eq!(docker_exec_counting(&container, &["cat", "/tmp/big"]), size);
            docker.push(t.elapsed());
            floor.push(sandbox_unix_copy(&agent, &run_dir, size).await);
            host.push(raw_unix_copy(host_big.path(), size));
        }
        let ours = median_duration(ours);
        let docker = median_duration(docker);
        let floor = median_duration(floor);
        let host = median_duration(host);
        let mbps = |d: Duration| size as f64 / 1e6 / d.as_secs_f64();

        println!();
        println!("exec round trip (median of {iterations}, `true`)");
        println!("  aetherium agent : {rtt_ours:8.2} ms");
        println!("  docker exec     : {rtt_docker:8.2} ms");
        println!(
            "  speed-up        : {:8.1}x  (target ≥ 20x)",
            rtt_docker / rtt_ours
        );
        println!();
        println!("stdout throughput (`cat` of {mib} MiB, median of {runs})");
        println!("  aetherium agent : {:8.1} MB/s", mbps(ours));
        println!("  docker exec cat : {:8.1} MB/s", mbps(docker));
        println!(
            "  cat → unix sock : {:8.1} MB/s  (the same cat in the sandbox into a socket we read, no protocol)",
            mbps(floor)
        );
        println!(
            "  host cat → sock : {:8.1} MB/s  (cat of a host file into a socketpair, no container)",
            mbps(host)
        );
        println!(
            "  agent vs raw    : {:8.2}x slower  (vs the sandbox floor; target ≤ 2x)",
            ours.as_secs_f64() / floor.as_secs_f64()
        );
        println!(
            "  agent vs host   : {:8.2}x slower  (vs the host floor)",
            ours.as_secs_f64() / host.as_secs_f64()
        );
    };
    let outcome = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(result)).await;
    backend.delete(&vm_id).await.expect("remove sandbox");
    if let Err(e) = outcome {
        std::panic::resume_unwind(e);
    }
}
