//! Exec round trip and stdout throughput through the agent, side by side with
//! `docker exec` and with a raw unix-socket copy of the same bytes.
//!
//! Run: `make bench-agent` (or `cargo bench -p aetherium-core --bench agent_exec`).
//! Needs the Docker engine, the static agent (`make agent`) and the base image.
//! Options through the environment: `BENCH_ITERATIONS` (default 30),
//! `BENCH_MIB` (default 256), `AETHERIUM_TEST_IMAGE`, `AETHERIUM_AGENT_BIN`.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aetherium_core::agent_client::AgentClient;
use aetherium_core::vmm::docker::{DockerBackend, DockerBackendConfig};
use aetherium_core::vmm::{Backend, SandboxSpec};
use aetherium_types::agent::{DataEvent, ProcessConfig, ProcessEvent, StartRequest};
use futures::StreamExt;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn agent_bin() -> PathBuf {
    std::env::var_os("AETHERIUM_AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("target"))
                .join("agent/aetherium-agent")
        })
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
    let mut out = child.stdout.take().expect("stdout");
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = std::io::Read::read(&mut out, &mut buf).expect("read");
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    assert!(child.wait().expect("wait").success());
    total
}

/// The floor: the same `cat` on the host, its stdout a unix socket we read from —
/// what copying the file through a unix socket costs with no protocol at all.
fn raw_unix_copy(total: u64) -> Duration {
    let file = tempfile::NamedTempFile::new().expect("tempfile");
    {
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
    }
    let (mut reader, writer) = std::os::unix::net::UnixStream::pair().expect("pair");
    let start = Instant::now();
    let mut child = Command::new("cat")
        .arg(file.path())
        .stdout(Stdio::from(std::os::fd::OwnedFd::from(writer)))
        .spawn()
        .expect("cat");
    let mut buf = vec![0u8; 1 << 16];
    let mut seen = 0u64;
    loop {
        let n = std::io::Read::read(&mut reader, &mut buf).expect("read");
        if n == 0 {
            break;
        }
        seen += n as u64;
    }
    assert!(child.wait().expect("wait").success());
    assert_eq!(seen, total);
    start.elapsed()
}

#[tokio::main]
async fn main() {
    let iterations: usize = env_or("BENCH_ITERATIONS", 30);
    let mib: u64 = env_or("BENCH_MIB", 256);
    let image =
        std::env::var("AETHERIUM_TEST_IMAGE").unwrap_or_else(|_| "aetherium/base:latest".into());
    let dir = tempfile::tempdir().expect("tempdir");
    let worker_id = format!("bench-{}", std::process::id());
    let backend = DockerBackend::connect(DockerBackendConfig {
        host: "unix:///var/run/docker.sock".into(),
        worker_id,
        agent_path: agent_bin(),
        socket_dir: dir.path().to_path_buf(),
        pids_limit: 1024,
        network_mode: "none".into(),
    })
    .expect("backend");
    let vm_id = format!("bench-{}", std::process::id());
    let spec = SandboxSpec {
        vm_id: vm_id.clone(),
        name: vm_id.clone(),
        image,
        vcpus: 2,
        memory_mb: 1024,
    };
    backend.create(&spec).await.expect("create sandbox");
    let container = format!("aetherium-{vm_id}");
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
        let t = Instant::now();
        let (bytes, _) = run_counting(&agent, "cat", &["/tmp/big"]).await;
        let ours = t.elapsed();
        assert_eq!(bytes, size);
        let t = Instant::now();
        assert_eq!(docker_exec_counting(&container, &["cat", "/tmp/big"]), size);
        let docker = t.elapsed();
        let raw = raw_unix_copy(size);
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
        println!("stdout throughput (`cat` of {mib} MiB)");
        println!("  aetherium agent : {:8.1} MB/s", mbps(ours));
        println!("  docker exec cat : {:8.1} MB/s", mbps(docker));
        println!("  cat → unix sock : {:8.1} MB/s  (the same cat on the host, no protocol)", mbps(raw));
        println!(
            "  agent vs raw    : {:8.2}x slower  (target ≤ 2x)",
            ours.as_secs_f64() / raw.as_secs_f64()
        );
    };
    let outcome = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(result)).await;
    backend.delete(&vm_id).await.expect("remove sandbox");
    if let Err(e) = outcome {
        std::panic::resume_unwind(e);
    }
}
