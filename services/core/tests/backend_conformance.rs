//! One behaviour for every sandbox `Backend`, run on each real one this host has:
//! Docker (the engine), QEMU (under TCG, a guest image built from
//! `aetherium/base:latest`) and Firecracker where its probe shows guests boot (on
//! hosts whose KVM cannot run guests it is skipped, saying why). Each case:
//! create → exec → files → pause/resume → delete leaves nothing; a VMM killed from
//! outside is reported and cleaned up; a restarted worker (a new backend on the same
//! state) adopts a running sandbox; an unknown image is refused and leaves nothing.
//! What is backend-specific (QMP, vsock devices, the jailer, Docker's network) stays
//! in tests/qemu.rs, tests/firecracker.rs and the gateway's tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aetherium_core::agent_client::AgentClient;
use aetherium_core::image::{BuildRequest, BuildSource, ImageStore};
use aetherium_core::vmm::docker::{DockerBackend, DockerBackendConfig};
use aetherium_core::vmm::firecracker::{FirecrackerBackend, FirecrackerConfig};
use aetherium_core::vmm::qemu::{QemuAccel, QemuBackend, QemuConfig};
use aetherium_core::vmm::vmproc::VmmProcess;
use aetherium_core::vmm::{Backend, SandboxSpec, SandboxState};
use aetherium_testkit::{kernel_dir, static_agent_bin, test_images_dir};
use aetherium_types::Orchestrator;
use aetherium_types::agent::{ProcessConfig, StartRequest};
use bytes::Bytes;
use futures::StreamExt as _;

const BASE_IMAGE: &str = "aetherium/base:latest";
/// Two TCG guests may boot at once on two busy cores.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// A backend under test: how to make one (again, on the same state, as a restarted
/// worker would), and what only the test can do to it.
struct Fixture {
    kind: Orchestrator,
    /// The backend's state on disk (run root or socket dir); removed at the end.
    root: tempfile::TempDir,
    worker_id: String,
    make: fn(&Fixture) -> Arc<dyn Backend>,
}

impl Fixture {
    fn backend(&self) -> Arc<dyn Backend> {
        (self.make)(self)
    }

    fn spec(&self, vm_id: &str, image: &str) -> SandboxSpec {
        SandboxSpec {
            vm_id: vm_id.into(),
            orchestrator: self.kind,
            name: vm_id.into(),
            image: image.into(),
            vcpus: 1,
            memory_mb: 512,
            disk_mb: None,
            network_policy: None,
            network: None,
            access_token: None,
        }
    }

    /// Kills the sandbox's VMM (or container) from outside, as a crash would.
    fn kill(&self, vm_id: &str) {
        match self.kind {
            Orchestrator::Docker => {
                let out = std::process::Command::new("docker")
                    .args(["kill", &docker_container(vm_id)])
                    .output()
                    .unwrap();
                assert!(out.status.success(), "docker kill: {out:?}");
            }
            _ => {
                let pid_file = self.root.path().join(vm_id).join(match self.kind {
                    Orchestrator::Qemu => "qemu.pid",
                    _ => "firecracker.pid",
                });
                let process = VmmProcess::from_pid_file(&pid_file).expect("the VMM's pid file");
                assert!(process.kill(), "could not kill the VMM");
            }
        }
    }

    /// What is left on the host of `vm_id`: containers, directories, processes.
    fn leftovers(&self, vm_id: &str) -> Vec<String> {
        let mut left = Vec::new();
        if self.kind == Orchestrator::Docker {
            let out = std::process::Command::new("docker")
                .args([
                    "ps",
                    "-aq",
                    "--filter",
                    &format!("label=io.aetherium.vm_id={vm_id}"),
                ])
                .output()
                .unwrap();
            let ids = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if !ids.is_empty() {
                left.push(format!("containers {ids}"));
            }
        }
        let dir = self.root.path().join(vm_id);
        if dir.exists() {
            left.push(format!("directory {}", dir.display()));
        }
        for pid in processes_mentioning(vm_id) {
            left.push(format!("process {pid}"));
        }
        left
    }
}

fn docker_container(vm_id: &str) -> String {
    format!("aetherium-{vm_id}")
}

/// Live processes whose command line names `needle` (zombies excluded).
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let zombie = stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
        if !zombie && String::from_utf8_lossy(&cmdline).contains(needle) {
            found.push(pid);
        }
    }
    found
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

fn docker_fixture() -> Fixture {
    Fixture {
        kind: Orchestrator::Docker,
        root: tempfile::tempdir().unwrap(),
        worker_id: unique("conformance"),
        make: |f| {
            Arc::new(
                DockerBackend::connect(DockerBackendConfig {
                    host: "unix:///var/run/docker.sock".into(),
                    worker_id: f.worker_id.clone(),
                    installation_id: "backend-conformance".into(),
                    agent_path: static_agent_bin(),
                    socket_dir: f.root.path().to_path_buf(),
                    pids_limit: 1024,
                    network_mode: "none".into(),
                    egress_allow: Vec::new(),
                    dns_upstream: Vec::new(),
                })
                .expect("docker backend"),
            )
        },
    }
}

/// The guest image for the microVM backends, built once per test process.
async fn guest_images() -> ImageStore {
    static BUILT: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    BUILT
        .get_or_init(|| async {
            let request = BuildRequest::new(
                BuildSource::Docker(BASE_IMAGE.into()),
                kernel_dir(),
                static_agent_bin(),
            );
            ImageStore::new(test_images_dir())
                .build(&request, &|_| {})
                .await
                .unwrap_or_else(|e| panic!("building the guest image from {BASE_IMAGE}: {e}"));
        })
        .await;
    ImageStore::new(test_images_dir())
}

fn qemu_fixture() -> Fixture {
    Fixture {
        kind: Orchestrator::Qemu,
        root: tempfile::tempdir().unwrap(),
        worker_id: String::new(),
        make: |f| {
            let mut config = QemuConfig::new(
                f.root.path(),
                ImageStore::new(test_images_dir()),
                QemuAccel::Tcg,
            );
            config.boot_timeout = BOOT_TIMEOUT;
            Arc::new(QemuBackend::new(config))
        },
    }
}

fn firecracker_binary() -> PathBuf {
    std::env::var_os("AETHERIUM_FIRECRACKER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/local/bin/firecracker"))
}

fn firecracker_fixture() -> Fixture {
    Fixture {
        kind: Orchestrator::Firecracker,
        root: tempfile::tempdir().unwrap(),
        worker_id: String::new(),
        make: |f| {
            let mut config = FirecrackerConfig::new(
                firecracker_binary(),
                f.root.path().to_path_buf(),
                ImageStore::new(test_images_dir()),
            );
            config.boot_timeout = BOOT_TIMEOUT;
            Arc::new(FirecrackerBackend::new(config))
        },
    }
}

/// The fixtures whose sandboxes boot here. Firecracker joins only where its probe
/// boots a guest kernel (not on hosts whose KVM cannot run guests).
async fn booting_fixtures() -> Vec<Fixture> {
    let images = guest_images().await;
    let mut fixtures = vec![docker_fixture(), qemu_fixture()];
    let kernel = images
        .resolve(BASE_IMAGE)
        .ok()
        .flatten()
        .map(|image| image.vmlinux);
    let probe =
        aetherium_core::vmm::firecracker::probe(&firecracker_binary(), kernel.as_deref()).await;
    if probe.guests_boot() {
        fixtures.push(firecracker_fixture());
    } else {
        eprintln!(
            "firecracker skipped: guests do not boot here ({})",
            probe.summary().replace('\n', "; ")
        );
    }
    fixtures
}

fn command(cmd: &str, args: &[&str]) -> StartRequest {
    StartRequest {
        process: ProcessConfig {
            cmd: cmd.into(),
            args: args.iter().map(|a| (*a).to_string()).collect(),
            ..ProcessConfig::default()
        },
        ..StartRequest::default()
    }
}

async fn run_ok(kind: Orchestrator, agent: &AgentClient, cmd: &str, args: &[&str]) -> String {
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        agent.run(&command(cmd, args), 1 << 20),
    )
    .await
    .unwrap_or_else(|_| panic!("{kind}: {cmd} {args:?} timed out"))
    .unwrap_or_else(|e| panic!("{kind}: {cmd} {args:?}: {e}"));
    assert_eq!(
        output.exit_code,
        Some(0),
        "{kind}: {cmd} {args:?}: {output:?}"
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Creates `vm_id` and waits until its agent answers.
async fn create_ready(f: &Fixture, backend: &dyn Backend, vm_id: &str) {
    backend
        .create(&f.spec(vm_id, BASE_IMAGE))
        .await
        .unwrap_or_else(|e| panic!("{}: create: {e}", f.kind));
    backend
        .agent(vm_id)
        .wait_ready(BOOT_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{}: the agent never answered: {e}", f.kind));
}

/// Deletes `vm_id` and checks that nothing of it is left.
async fn delete_clean(f: &Fixture, backend: &dyn Backend, vm_id: &str) {
    backend
        .delete(vm_id)
        .await
        .unwrap_or_else(|e| panic!("{}: delete: {e}", f.kind));
    assert_eq!(
        backend.status(vm_id).await.unwrap(),
        SandboxState::Missing,
        "{}",
        f.kind
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = f.leftovers(vm_id);
        if left.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}: left behind: {left:?}",
            f.kind
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn create_exec_files_pause_resume_delete() {
    for f in booting_fixtures().await {
        let backend = f.backend();
        let vm_id = unique("life");
        create_ready(&f, &*backend, &vm_id).await;
        assert_eq!(
            backend.status(&vm_id).await.unwrap(),
            SandboxState::Running,
            "{}",
            f.kind
        );
        let agent = backend.agent(&vm_id);
        assert_eq!(run_ok(f.kind, &agent, "echo", &["hello"]).await, "hello\n");

        // Files both ways through the agent.
        let body = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(
            b"conformance\n",
        ))]);
        agent.upload("/tmp/conformance.txt", body).await.unwrap();
        assert_eq!(
            run_ok(f.kind, &agent, "cat", &["/tmp/conformance.txt"]).await,
            "conformance\n"
        );
        let mut download = agent.download("/tmp/conformance.txt").await.unwrap();
        let mut got = Vec::new();
        while let Some(chunk) = download.next().await {
            got.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(got, b"conformance\n", "{}", f.kind);

        backend.pause(&vm_id).await.unwrap();
        assert_eq!(
            backend.status(&vm_id).await.unwrap(),
            SandboxState::Paused,
            "{}",
            f.kind
        );
        backend.resume(&vm_id).await.unwrap();
        assert_eq!(
            backend.status(&vm_id).await.unwrap(),
            SandboxState::Running,
            "{}",
            f.kind
        );
        assert_eq!(run_ok(f.kind, &agent, "echo", &["again"]).await, "again\n");

        delete_clean(&f, &*backend, &vm_id).await;
        // Deleting what is gone is fine.
        backend.delete(&vm_id).await.unwrap();
    }
}

#[tokio::test]
async fn a_killed_vmm_is_reported_and_delete_cleans_up() {
    for f in booting_fixtures().await {
        let backend = f.backend();
        let vm_id = unique("killed");
        create_ready(&f, &*backend, &vm_id).await;
        // Watched from before the kill on, as a worker watches all the time (the
        // stream subscribes when first polled: Docker's events are not replayed).
        let (tx, mut exits) = tokio::sync::mpsc::unbounded_channel();
        let mut stream = backend.watch_exits();
        let watcher = tokio::spawn(async move {
            while let Some(exit) = stream.next().await {
                if tx.send(exit).is_err() {
                    break;
                }
            }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        f.kill(&vm_id);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let exit = loop {
            let exit = tokio::time::timeout_at(deadline, exits.recv())
                .await
                .unwrap_or_else(|_| panic!("{}: no exit reported", f.kind))
                .expect("watch_exits ended")
                .expect("watch_exits failed");
            if exit.vm_id == vm_id {
                break exit;
            }
        };
        assert_ne!(exit.exit_code, 0, "{}: a kill is not a clean exit", f.kind);
        assert!(
            matches!(
                backend.status(&vm_id).await.unwrap(),
                SandboxState::Exited { .. }
            ),
            "{}",
            f.kind
        );
        watcher.abort();
        delete_clean(&f, &*backend, &vm_id).await;
    }
}

#[tokio::test]
async fn a_restarted_worker_adopts_a_running_sandbox() {
    for f in booting_fixtures().await {
        let first = f.backend();
        let vm_id = unique("adopt");
        create_ready(&f, &*first, &vm_id).await;
        drop(first);

        let second = f.backend();
        let listed = second.list().await.unwrap();
        let found = listed.iter().find(|s| s.vm_id == vm_id);
        assert!(
            found.is_some_and(|s| s.state == SandboxState::Running),
            "{}: {listed:?}",
            f.kind
        );
        let agent = second.agent(&vm_id);
        assert_eq!(
            run_ok(f.kind, &agent, "echo", &["adopted"]).await,
            "adopted\n"
        );
        delete_clean(&f, &*second, &vm_id).await;
    }
}

#[tokio::test]
async fn an_unknown_image_is_refused_and_leaves_nothing() {
    // No boot needed: every backend, Firecracker included.
    guest_images().await;
    for f in [docker_fixture(), qemu_fixture(), firecracker_fixture()] {
        let backend = f.backend();
        let vm_id = unique("noimage");
        let err = backend
            .create(&f.spec(&vm_id, "aetherium/no-such-image:never"))
            .await
            .expect_err("an unknown image must be refused");
        assert!(
            err.to_string().contains("no-such-image"),
            "{}: the error should name the image: {err}",
            f.kind
        );
        assert!(
            f.leftovers(&vm_id).is_empty(),
            "{}: {:?}",
            f.kind,
            f.leftovers(&vm_id)
        );
        assert_eq!(
            backend.status(&vm_id).await.unwrap(),
            SandboxState::Missing,
            "{}",
            f.kind
        );
    }
}
