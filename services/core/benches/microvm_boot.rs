//! Boot-to-agent-ready time per backend, side by side with a bare
//! `qemu-system-x86_64` boot of the same kernel and initramfs to its init.
//!
//! - **bare QEMU**: `qemu-system-x86_64` with only the kernel and our initramfs (no
//!   disk, no vsock, no NIC), timed from spawn until the kernel's console says it runs
//!   `/init` — the floor any QEMU-based platform pays on this host.
//! - **qemu backend**: `QemuBackend::create` (rootfs copy, vhost-device-vsock, QEMU
//!   with virtio-blk and vsock) until the agent answers over the hybrid vsock; also
//!   when the kernel reached `/init` in that boot (from its console log), which splits
//!   our overhead into before-init (VMM set-up) and after-init (modules, switch_root,
//!   agent start).
//! - **docker backend**: container create until the agent answers, for scale.
//! - **firecracker backend**: only where its probe boots a guest (not under a PVM
//!   `/dev/kvm` like this machine's); otherwise the reason is printed.
//!
//! Run: `make bench-boot` (or `cargo bench -p aetherium-core --bench microvm_boot`).
//! Needs what `scripts/setup.sh` installs (QEMU, vhost-device-vsock, the guest kernel
//! in `AETHERIUM_KERNEL_DIR`, the base image, the static agent). `BENCH_RUNS`
//! (default 5) boots per backend; medians are printed.

use aetherium_testkit::{kernel_dir, static_agent_bin as agent_bin, test_images_dir};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use aetherium_core::image::{BuildRequest, BuildSource, ImageStore, VmImage};
use aetherium_core::vmm::docker::{DockerBackend, DockerBackendConfig};
use aetherium_core::vmm::firecracker::{FirecrackerBackend, FirecrackerConfig};
use aetherium_core::vmm::qemu::{QemuAccel, QemuBackend, QemuConfig, probe};
use aetherium_core::vmm::{Backend, SandboxSpec};
use aetherium_types::Orchestrator;
use tokio::io::{AsyncBufReadExt as _, BufReader};

/// What the kernel prints when it hands over to the initramfs's `/init`.
const INIT_MARKER: &str = "Run /init as init process";

fn env_path(name: &str, default: &str) -> PathBuf {
    std::env::var_os(name)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn spec(vm_id: &str, orchestrator: Orchestrator, image: &str) -> SandboxSpec {
    SandboxSpec {
        vm_id: vm_id.to_string(),
        orchestrator,
        name: vm_id.to_string(),
        image: image.to_string(),
        vcpus: 1,
        memory_mb: 512,
        disk_mb: None,
        network_policy: None,
        network: None,
        access_token: None,
    }
}

/// Spawn-to-`/init` of the kernel and initramfs alone.
async fn bare_boot(image: &VmImage, accel: QemuAccel) -> Duration {
    let start = Instant::now();
    let mut child = tokio::process::Command::new("qemu-system-x86_64")
        .args(["-machine", &format!("q35,accel={}", accel.as_str())])
        .args([
            "-cpu",
            if accel == QemuAccel::Kvm {
                "host"
            } else {
                "max"
            },
        ])
        .args(["-m", "512M", "-smp", "1"])
        .arg("-kernel")
        .arg(&image.bzimage)
        .arg("-initrd")
        .arg(&image.initramfs)
        .args(["-append", "console=ttyS0 reboot=k panic=1"])
        .args(["-serial", "stdio", "-display", "none", "-nodefaults"])
        .args(["-no-reboot", "-no-user-config"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start qemu-system-x86_64");
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let took = loop {
        match tokio::time::timeout(Duration::from_secs(120), lines.next_line()).await {
            Ok(Ok(Some(line))) if line.contains(INIT_MARKER) => break start.elapsed(),
            Ok(Ok(Some(_))) => {}
            other => panic!("the bare boot never reached /init: {other:?}"),
        }
    };
    let _ = child.kill().await;
    took
}

/// Create-to-agent-ready.
async fn backend_boot(backend: &dyn Backend, spec: &SandboxSpec) -> Duration {
    let start = Instant::now();
    backend.create(spec).await.expect("create");
    backend
        .agent(&spec.vm_id)
        .wait_ready(Duration::from_secs(300))
        .await
        .expect("agent ready");
    let ready = start.elapsed();
    backend.delete(&spec.vm_id).await.expect("delete");
    ready
}

/// Like [`backend_boot`] for QEMU, also timing `/init` from the VM's console log.
async fn qemu_boot(backend: &QemuBackend, spec: &SandboxSpec) -> (Duration, Option<Duration>) {
    let start = Instant::now();
    backend.create(spec).await.expect("create");
    let console = backend.vm_dir(&spec.vm_id).join("console.log");
    let agent = backend.agent(&spec.vm_id);
    let mut init_at = None;
    let ready = loop {
        if init_at.is_none() && seen(&console, INIT_MARKER) {
            init_at = Some(start.elapsed());
        }
        if tokio::time::timeout(Duration::from_millis(50), agent.health())
            .await
            .is_ok_and(|r| r.is_ok())
        {
            break start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "agent never answered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    if init_at.is_none() && seen(&console, INIT_MARKER) {
        init_at = Some(ready);
    }
    backend.delete(&spec.vm_id).await.expect("delete");
    (ready, init_at)
}

fn seen(path: &Path, marker: &str) -> bool {
    std::fs::read_to_string(path).is_ok_and(|s| s.contains(marker))
}

#[tokio::main]
async fn main() {
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5usize)
        .max(1);
    let image_ref =
        std::env::var("AETHERIUM_TEST_IMAGE").unwrap_or_else(|_| "aetherium/base:latest".into());
    let images = ImageStore::new(test_images_dir());
    let request = BuildRequest::new(
        BuildSource::Docker(image_ref.clone()),
        kernel_dir(),
        agent_bin(),
    );
    let image = images
        .build(&request, &|_| {})
        .await
        .expect("build the VM image");
    let run_root = tempfile::Builder::new()
        .prefix("aeb-")
        .tempdir()
        .expect("tempdir");

    let probe = probe(
        Path::new("qemu-system-x86_64"),
        Path::new("vhost-device-vsock"),
    )
    .await;
    let accel = probe
        .accel
        .expect("QEMU cannot run here (see `aetherium doctor`)");
    println!(
        "microVM boot, {runs} runs each, 1 vCPU / 512 MiB, QEMU accelerator {} (kernel {})",
        accel.as_str(),
        image.kernel_version
    );

    let mut bare = Vec::new();
    for _ in 0..runs {
        bare.push(bare_boot(&image, accel).await);
    }
    let bare = median(bare);

    let mut config = QemuConfig::new(run_root.path().join("qemu"), images.clone(), accel);
    config.boot_timeout = Duration::from_secs(300);
    let qemu = QemuBackend::new(config);
    let (mut ready, mut init) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let (r, at) = qemu_boot(
            &qemu,
            &spec(
                &format!("bq{}-{i}", std::process::id()),
                Orchestrator::Qemu,
                &image_ref,
            ),
        )
        .await;
        ready.push(r);
        init.extend(at);
    }
    let qemu_ready = median(ready);

    let docker = DockerBackend::connect(DockerBackendConfig {
        host: "unix:///var/run/docker.sock".into(),
        worker_id: format!("bench-{}", std::process::id()),
        installation_id: "test-installation".into(),
        agent_path: agent_bin(),
        socket_dir: run_root.path().join("docker"),
        pids_limit: 1024,
        network_mode: "none".into(),
        egress_allow: Vec::new(),
        dns_upstream: aetherium_core::net::dns::host_resolvers(),
    })
    .expect("docker backend");
    std::fs::create_dir_all(run_root.path().join("docker")).expect("socket dir");
    let mut docker_ready = Vec::new();
    for i in 0..runs {
        let r = backend_boot(
            &docker,
            &spec(
                &format!("bd{}-{i}", std::process::id()),
                Orchestrator::Docker,
                &image_ref,
            ),
        )
        .await;
        docker_ready.push(r);
    }
    let docker_ready = median(docker_ready);

    println!();
    println!("{:<44} {:>10}", "what", "median");
    println!(
        "{:<44} {:>10}",
        "bare qemu: spawn -> kernel runs /init",
        secs(bare)
    );
    if !init.is_empty() {
        println!(
            "{:<44} {:>10}",
            "qemu backend: create -> kernel runs /init",
            secs(median(init))
        );
    }
    println!(
        "{:<44} {:>10}",
        "qemu backend: create -> agent ready",
        secs(qemu_ready)
    );
    println!(
        "{:<44} {:>10}",
        "docker backend: create -> agent ready",
        secs(docker_ready)
    );
    let fc_bin = env_path("AETHERIUM_FIRECRACKER_BIN", "/usr/local/bin/firecracker");
    let fc = aetherium_core::vmm::firecracker::probe(&fc_bin, Some(&image.vmlinux)).await;
    if fc.guests_boot() {
        let backend = FirecrackerBackend::new(FirecrackerConfig::new(
            fc_bin,
            run_root.path().join("fc"),
            images.clone(),
        ));
        let mut ready = Vec::new();
        for i in 0..runs {
            let id = format!("bf{}-{i}", std::process::id());
            ready.push(
                backend_boot(&backend, &spec(&id, Orchestrator::Firecracker, &image_ref)).await,
            );
        }
        println!(
            "{:<44} {:>10}",
            "firecracker backend: create -> agent ready",
            secs(median(ready))
        );
    } else {
        println!(
            "firecracker backend: skipped, guests cannot boot here ({})",
            fc.summary().replace('\n', "; ")
        );
    }
    println!();
    println!(
        "qemu backend boot-to-agent-ready / bare boot-to-init = {:.2}x",
        qemu_ready.as_secs_f64() / bare.as_secs_f64()
    );
}
