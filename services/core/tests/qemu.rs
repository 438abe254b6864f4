//! The QEMU backend against the real `qemu-system-x86_64` (TCG), the real
//! `vhost-device-vsock` and a guest image built by `ImageStore::build` from the
//! Docker image `aetherium/base:latest` with the real agent inside.
//!
//! Needs: qemu-system-x86_64 and vhost-device-vsock on PATH, the Docker engine with
//! `aetherium/base:latest`, an extracted Debian cloud kernel package
//! (`AETHERIUM_KERNEL_DIR`) and the static agent (`make agent`, or
//! `AETHERIUM_AGENT_BIN`). Built images are cached in `AETHERIUM_TEST_IMAGE_DIR`
//! (default `<tmp>/aetherium-test-images`), shared by test runs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use aetherium_testkit::{kernel_dir, static_agent_bin as agent_bin, test_images_dir};
use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};

use aetherium_core::agent_client::AgentClient;
use aetherium_core::image::{BuildProgress, BuildRequest, BuildSource, ImageStore, VmImage};
use aetherium_core::vmm::qemu::{
    ProbeOptions, QemuAccel, QemuBackend, QemuConfig, probe, probe_with,
};
use aetherium_core::vmm::qmp::{Qmp, QmpError};
use aetherium_core::vmm::vmproc::{Spawn, VmmProcess};
use aetherium_core::vmm::{Backend, BackendError, SandboxSpec, SandboxState};
use aetherium_types::Orchestrator;
use aetherium_types::agent::{ProcessConfig, StartRequest};
use bytes::Bytes;
use futures::StreamExt as _;

const BASE_IMAGE: &str = "aetherium/base:latest";
/// Two TCG guests may boot at once on two busy cores.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

fn image_store() -> ImageStore {
    ImageStore::new(test_images_dir())
}

/// The base image, built once per test process (concurrent builds of the same
/// digest by other processes are safe: the store renames atomically).
async fn base_image() -> VmImage {
    static IMAGE: tokio::sync::OnceCell<VmImage> = tokio::sync::OnceCell::const_new();
    IMAGE
        .get_or_init(|| async {
            let request = BuildRequest::new(
                BuildSource::Docker(BASE_IMAGE.into()),
                kernel_dir(),
                agent_bin(),
            );
            let started = Instant::now();
            let progress = |p: BuildProgress| {
                if !matches!(p, BuildProgress::Bytes { .. }) {
                    eprintln!("image build: {p:?}");
                }
            };
            let image = image_store()
                .build(&request, &progress)
                .await
                .unwrap_or_else(|e| panic!("building the guest image from {BASE_IMAGE}: {e}"));
            eprintln!("guest image ready in {:?}", started.elapsed());
            image
        })
        .await
        .clone()
}

/// A run root that kills the VM processes left in it when dropped: a failing test
/// panics before its delete.
struct RunRoot(tempfile::TempDir);

impl RunRoot {
    fn new() -> RunRoot {
        RunRoot(tempfile::tempdir().expect("temp dir"))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for RunRoot {
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir(self.0.path()) else {
            return;
        };
        for entry in entries.flatten() {
            for pid_file in ["qemu.pid", "vhost.pid"] {
                if let Some(process) = VmmProcess::from_pid_file(&entry.path().join(pid_file)) {
                    process.kill();
                }
            }
        }
    }
}

fn qemu_config(run_root: &Path, images: ImageStore) -> QemuConfig {
    let mut config = QemuConfig::new(run_root, images, QemuAccel::Tcg);
    config.boot_timeout = BOOT_TIMEOUT;
    config
}

fn spec(vm_id: &str) -> SandboxSpec {
    SandboxSpec {
        vm_id: vm_id.into(),
        orchestrator: Orchestrator::Qemu,
        name: vm_id.into(),
        image: BASE_IMAGE.into(),
        vcpus: 1,
        memory_mb: 512,
        disk_mb: None,
        network_policy: None,
        network: None,
        access_token: None,
    }
}

fn unique_id(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
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

async fn run_ok(agent: &AgentClient, cmd: &str, args: &[&str]) -> String {
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        agent.run(&command(cmd, args), 1 << 20),
    )
    .await
    .unwrap_or_else(|_| panic!("{cmd} {args:?} timed out"))
    .unwrap_or_else(|e| panic!("{cmd} {args:?}: {e}"));
    assert_eq!(
        output.exit_code,
        Some(0),
        "{cmd} {args:?}: {output:?} stderr {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The console log of a VM, for failure messages.
fn console(backend: &QemuBackend, vm_id: &str) -> String {
    std::fs::read_to_string(backend.vm_dir(vm_id).join("console.log")).unwrap_or_default()
}

fn pid_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // A zombie waiting for its reaper counts as gone.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

async fn wait_pid_gone(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if pid_gone(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// QMP against a real QEMU that was started without running its guest (`-S`).
#[tokio::test]
async fn qmp_drives_a_real_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let qmp_path = dir.path().join("qmp.sock");
    let args: Vec<OsString> = [
        "-accel",
        "tcg",
        "-machine",
        "q35",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-S",
        "-qmp",
    ]
    .iter()
    .map(OsString::from)
    .chain([format!("unix:{},server=on,wait=off", qmp_path.display()).into()])
    .collect();
    let qemu = VmmProcess::spawn(&Spawn {
        program: "qemu-system-x86_64".into(),
        args,
        log: dir.path().join("qemu.log"),
        pid_file: dir.path().join("qemu.pid"),
        cgroup_procs: Vec::new(),
    })
    .expect("start qemu-system-x86_64");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut qmp = loop {
        match Qmp::connect(&qmp_path, Duration::from_secs(5)).await {
            Ok(qmp) => break qmp,
            Err(e) if Instant::now() > deadline => panic!("QMP never answered: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let status = qmp.query_status().await.unwrap();
    assert_eq!(status.status, "prelaunch");
    assert!(!status.running);
    // cont and stop emit RESUME / STOP events, which must be skipped.
    qmp.cont().await.unwrap();
    assert!(qmp.query_status().await.unwrap().running);
    qmp.stop().await.unwrap();
    assert_eq!(qmp.query_status().await.unwrap().status, "paused");
    let err = qmp.execute("no-such-command", None).await.unwrap_err();
    assert!(
        matches!(&err, QmpError::Command { desc, .. } if desc.contains("no-such-command")),
        "{err}"
    );
    qmp.quit().await.unwrap();
    assert!(
        qemu.wait_exit(Duration::from_secs(10)).await,
        "qemu did not quit"
    );
    assert_eq!(qemu.exit_code(), Some(0));
}

#[tokio::test]
async fn probe_reports_the_binaries_and_tcg() {
    let result = probe(
        Path::new("qemu-system-x86_64"),
        Path::new("vhost-device-vsock"),
    )
    .await;
    eprintln!("{result:#?}");
    assert!(
        result
            .qemu_version
            .as_ref()
            .is_ok_and(|v| v.contains("QEMU")),
        "{result:?}"
    );
    assert!(
        result
            .vhost_vsock_version
            .as_ref()
            .is_ok_and(|v| v.contains("vhost-device-vsock")),
        "{result:?}"
    );
    assert_eq!(result.tcg, Ok(()));
    assert!(result.accel.is_some());

    // The decisive KVM check boots a kernel; whatever its verdict, it is explained.
    let mut options = ProbeOptions::new("qemu-system-x86_64", "vhost-device-vsock");
    options.accel_override = None;
    options.boot_check_kernel = std::fs::read_dir(kernel_dir().join("boot"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz"))
        });
    assert!(
        options.boot_check_kernel.is_some(),
        "no vmlinuz in the kernel dir"
    );
    let checked = probe_with(&options).await;
    eprintln!(
        "with a boot check: kvm {:?}, accel {:?}",
        checked.kvm, checked.accel
    );
    match &checked.kvm {
        Ok(()) => assert_eq!(checked.accel, Some(QemuAccel::Kvm)),
        Err(reason) => {
            assert!(!reason.is_empty());
            assert_eq!(checked.accel, Some(QemuAccel::Tcg));
        }
    }

    let missing = probe(
        Path::new("/nonexistent/qemu"),
        Path::new("vhost-device-vsock"),
    )
    .await;
    assert!(
        missing
            .qemu_version
            .as_ref()
            .is_err_and(|e| e.contains("/nonexistent/qemu")),
        "{missing:?}"
    );
    assert_eq!(missing.accel, None);
}

/// The whole life of a guest under TCG: boot to the agent, commands, files,
/// pause/resume, delete.
#[tokio::test]
async fn a_guest_boots_under_tcg_and_serves_the_agent() {
    let image = base_image().await;
    let run_root = RunRoot::new();
    let backend = QemuBackend::new(qemu_config(run_root.path(), image_store()));
    let vm_id = unique_id("boot");

    let started = Instant::now();
    backend.create(&spec(&vm_id)).await.expect("create");
    eprintln!("create returned after {:?}", started.elapsed());
    let qemu_pid = backend.qemu_process(&vm_id).expect("qemu runs").pid();
    let vhost_pid = backend.vhost_process(&vm_id).expect("vhost runs").pid();
    // Both run in the VM's cgroups from their first instruction on: one vCPU of
    // CPU time, its memory and the overhead.
    let memory = (512 + aetherium_core::vmm::cgroup::MEMORY_OVERHEAD_MB) << 20;
    for pid in [qemu_pid, vhost_pid] {
        aetherium_testkit::cgroup::assert_limits(pid, 1, memory);
    }
    let agent = backend.agent(&vm_id);
    if let Err(e) = agent.wait_ready(BOOT_TIMEOUT).await {
        let log = console(&backend, &vm_id);
        backend.delete(&vm_id).await.unwrap();
        panic!("the agent never answered: {e}\nconsole:\n{log}");
    }
    let boot = started.elapsed();
    eprintln!("QEMU/TCG boot to agent ready: {boot:?}");
    assert!(matches!(
        backend.status(&vm_id).await.unwrap(),
        SandboxState::Running
    ));
    let listed = backend.list().await.unwrap();
    assert!(listed.iter().any(|info| info.vm_id == vm_id), "{listed:?}");

    let release = run_ok(&agent, "uname", &["-r"]).await;
    assert_eq!(release.trim(), image.kernel_version, "uname -r");
    let cmdline = run_ok(&agent, "cat", &["/proc/cmdline"]).await;
    assert!(cmdline.contains("root=/dev/vda"), "{cmdline}");
    assert!(cmdline.contains("console=ttyS0"), "{cmdline}");

    // Files both ways.
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let body = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from(payload.clone()))]);
    agent
        .upload("/tmp/in/data.bin", body)
        .await
        .expect("upload");
    let sum = run_ok(&agent, "sh", &["-c", "wc -c < /tmp/in/data.bin"]).await;
    assert_eq!(sum.trim(), payload.len().to_string());
    let mut download = agent.download("/tmp/in/data.bin").await.expect("download");
    let mut back = Vec::new();
    while let Some(chunk) = download.next().await {
        back.extend_from_slice(&chunk.expect("download chunk"));
    }
    assert_eq!(back, payload, "downloaded bytes differ");

    // Paused: a command does not complete; resumed: it does.
    backend.pause(&vm_id).await.expect("pause");
    assert_eq!(backend.status(&vm_id).await.unwrap(), SandboxState::Paused);
    let pending = tokio::spawn({
        let agent = agent.clone();
        async move { agent.run(&command("echo", &["after-pause"]), 4096).await }
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !pending.is_finished(),
        "a command completed in a paused guest"
    );
    backend.resume(&vm_id).await.expect("resume");
    assert_eq!(backend.status(&vm_id).await.unwrap(), SandboxState::Running);
    let output = tokio::time::timeout(Duration::from_secs(60), pending)
        .await
        .expect("the command did not complete after resume")
        .unwrap()
        .expect("run after resume");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "after-pause"
    );

    let snapshot = backend.snapshot(&vm_id, run_root.path()).await.unwrap_err();
    assert!(
        matches!(snapshot, BackendError::Unsupported(_)),
        "{snapshot}"
    );

    let qemu = backend.qemu_process(&vm_id).expect("qemu runs");
    let deleting = Instant::now();
    backend.delete(&vm_id).await.expect("delete");
    eprintln!("delete took {:?}", deleting.elapsed());
    // Ctrl-Alt-Del made the guest reboot, which ends QEMU (-no-reboot) by itself.
    assert_eq!(
        qemu.exit_code(),
        Some(0),
        "qemu did not exit on Ctrl-Alt-Del"
    );
    assert!(!backend.vm_dir(&vm_id).exists(), "the VM directory is left");
    assert!(wait_pid_gone(qemu_pid).await, "qemu {qemu_pid} still runs");
    assert!(
        wait_pid_gone(vhost_pid).await,
        "vhost-device-vsock {vhost_pid} still runs"
    );
    assert_eq!(backend.status(&vm_id).await.unwrap(), SandboxState::Missing);
    let cgroups =
        aetherium_core::vmm::cgroup::dirs(aetherium_core::vmm::cgroup::Version::of_host(), &vm_id);
    assert!(
        cgroups.iter().all(|dir| !dir.exists()),
        "cgroups left: {cgroups:?}"
    );
    // Deleting again is fine.
    backend.delete(&vm_id).await.expect("second delete");
}

#[tokio::test]
async fn a_missing_qemu_binary_is_a_clear_error_and_leaves_nothing() {
    let run_root = RunRoot::new();
    let mut config = qemu_config(run_root.path(), image_store());
    config.qemu_bin = run_root.path().join("no-such-qemu");
    let backend = QemuBackend::new(config);
    let vm_id = unique_id("noqemu");
    let err = backend.create(&spec(&vm_id)).await.unwrap_err();
    assert!(err.to_string().contains("no-such-qemu"), "{err}");
    assert!(backend.ping().await.is_err());
    assert_eq!(std::fs::read_dir(run_root.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn a_qemu_that_fails_at_start_takes_its_vsock_device_along() {
    base_image().await;
    let run_root = RunRoot::new();
    let mut config = qemu_config(run_root.path(), image_store());
    // A real program that exits at once with an error, in place of QEMU.
    config.qemu_bin = "false".into();
    let backend = QemuBackend::new(config);
    let vm_id = unique_id("badqemu");
    let err = backend.create(&spec(&vm_id)).await.unwrap_err();
    assert!(err.to_string().contains("qemu exited at start"), "{err}");
    assert_eq!(std::fs::read_dir(run_root.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn an_unknown_image_is_rejected_and_leaves_nothing() {
    let run_root = RunRoot::new();
    let images = tempfile::tempdir().unwrap();
    let backend = QemuBackend::new(qemu_config(run_root.path(), ImageStore::new(images.path())));
    let err = backend
        .create(&spec(&unique_id("noimage")))
        .await
        .unwrap_err();
    assert!(matches!(err, BackendError::Rejected(_)), "{err}");
    assert!(err.to_string().contains("image build"), "{err}");
    assert_eq!(std::fs::read_dir(run_root.path()).unwrap().count(), 0);
}

/// A store holding one image that boots the real kernel with a broken initramfs,
/// made by linking the base image's files (the store's on-disk layout:
/// `refs/<escaped ref>` → digest, `<hex>/manifest.json` and the files).
fn broken_image_store(base: &VmImage, root: &Path) -> ImageStore {
    let hex = "0".repeat(63) + "1";
    let image_dir = root.join(&hex);
    std::fs::create_dir_all(&image_dir).unwrap();
    std::fs::create_dir_all(root.join("refs")).unwrap();
    let base_dir = base.rootfs.parent().unwrap();
    let manifest = std::fs::read_to_string(base_dir.join("manifest.json")).unwrap();
    let mut manifest: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    manifest["digest"] = format!("sha256:{hex}").into();
    std::fs::write(image_dir.join("manifest.json"), manifest.to_string()).unwrap();
    for file in [&base.rootfs, &base.bzimage, &base.vmlinux] {
        std::os::unix::fs::symlink(file, image_dir.join(file.file_name().unwrap())).unwrap();
    }
    std::fs::write(
        image_dir.join(base.initramfs.file_name().unwrap()),
        b"not an initramfs",
    )
    .unwrap();
    std::fs::write(root.join("refs").join("broken"), format!("sha256:{hex}\n")).unwrap();
    let store = ImageStore::new(root);
    assert!(
        store.require("broken").is_ok(),
        "the broken test image does not resolve"
    );
    store
}

#[tokio::test]
async fn a_guest_that_never_reaches_the_agent_times_out_and_delete_cleans() {
    let base = base_image().await;
    let images = tempfile::tempdir().unwrap();
    let store = broken_image_store(&base, images.path());
    let run_root = RunRoot::new();
    let backend = QemuBackend::new(qemu_config(run_root.path(), store));
    let vm_id = unique_id("noagent");
    let mut spec = spec(&vm_id);
    spec.image = "broken".into();
    backend.create(&spec).await.expect("create");
    let vhost_pid = backend.vhost_process(&vm_id).expect("vhost runs").pid();
    let err = backend
        .agent(&vm_id)
        .wait_ready(Duration::from_secs(8))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not ready"), "{err}");
    backend.delete(&vm_id).await.expect("delete");
    assert!(!backend.vm_dir(&vm_id).exists());
    assert!(
        wait_pid_gone(vhost_pid).await,
        "vhost-device-vsock still runs"
    );
}

#[tokio::test]
async fn a_killed_qemu_is_reported_and_cleaned_up() {
    base_image().await;
    let run_root = RunRoot::new();
    let backend = QemuBackend::new(qemu_config(run_root.path(), image_store()));
    let vm_id = unique_id("killed");
    backend.create(&spec(&vm_id)).await.expect("create");
    let mut exits = backend.watch_exits();
    let qemu = backend.qemu_process(&vm_id).expect("qemu runs");
    let vhost_pid = backend.vhost_process(&vm_id).expect("vhost runs").pid();
    // Let the guest get going, then kill QEMU from outside.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(qemu.kill());
    assert!(qemu.wait_exit(Duration::from_secs(10)).await);

    let exit = tokio::time::timeout(Duration::from_secs(10), exits.next())
        .await
        .expect("watch_exits did not report the killed VM")
        .expect("watch_exits ended")
        .expect("watch_exits failed");
    assert_eq!(exit.vm_id, vm_id);
    assert_eq!(exit.exit_code, i64::from(128 + libc::SIGKILL));
    assert_eq!(
        backend.status(&vm_id).await.unwrap(),
        SandboxState::Exited {
            exit_code: i64::from(128 + libc::SIGKILL),
            killed_for: None
        }
    );
    // The vsock device outlives QEMU until delete.
    assert!(!pid_gone(vhost_pid));

    // After a worker restart, the leftovers (stale sockets, a dead pid file) read
    // as an exited VM of unknown code, and a create of the same id starts afresh.
    let restarted = QemuBackend::new(qemu_config(run_root.path(), image_store()));
    assert_eq!(
        restarted.status(&vm_id).await.unwrap(),
        SandboxState::Exited {
            exit_code: -1,
            killed_for: None
        }
    );
    restarted
        .create(&spec(&vm_id))
        .await
        .expect("create over leftovers");
    assert!(
        wait_pid_gone(vhost_pid).await,
        "the old vsock device still runs"
    );
    let new_vhost_pid = restarted.vhost_process(&vm_id).expect("new vhost").pid();
    assert!(restarted.qemu_process(&vm_id).is_some());

    restarted.delete(&vm_id).await.expect("delete");
    assert!(!backend.vm_dir(&vm_id).exists());
    assert!(
        wait_pid_gone(new_vhost_pid).await,
        "vhost-device-vsock still runs"
    );
}

/// A restarted worker (a new backend on the same run root) finds the VM by its
/// directory and pid files, and delete removes it although it never started it.
#[tokio::test]
async fn a_new_backend_adopts_and_deletes_a_running_vm() {
    base_image().await;
    let run_root = RunRoot::new();
    let first = QemuBackend::new(qemu_config(run_root.path(), image_store()));
    let vm_id = unique_id("adopt");
    first.create(&spec(&vm_id)).await.expect("create");
    let qemu_pid = first.qemu_process(&vm_id).unwrap().pid();

    let second = QemuBackend::new(qemu_config(run_root.path(), image_store()));
    let listed = second.list().await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].vm_id, vm_id);
    assert!(matches!(
        listed[0].state,
        SandboxState::Running | SandboxState::Starting
    ));
    second.pause(&vm_id).await.unwrap();
    assert_eq!(second.status(&vm_id).await.unwrap(), SandboxState::Paused);
    second.delete(&vm_id).await.unwrap();
    assert!(wait_pid_gone(qemu_pid).await);
    assert_eq!(first.status(&vm_id).await.unwrap(), SandboxState::Missing);
    // Its cgroups too, although its processes were the first backend's children.
    let cgroups =
        aetherium_core::vmm::cgroup::dirs(aetherium_core::vmm::cgroup::Version::of_host(), &vm_id);
    assert!(
        cgroups.iter().all(|dir| !dir.exists()),
        "cgroups left: {cgroups:?}"
    );
}

/// Removes a test's bridge and TAP device by name when dropped.
struct LinkGuard(Vec<String>);

impl Drop for LinkGuard {
    fn drop(&mut self) {
        for link in &self.0 {
            if Path::new("/sys/class/net").join(link).exists() {
                let _ = std::process::Command::new("ip")
                    .args(["link", "del", "dev", link])
                    .output();
            }
        }
    }
}

/// A 10.x.y.0/24 subnet that no address or route of this host uses.
fn free_subnet() -> (u8, u8) {
    let ip = |args: &[&str]| {
        let out = std::process::Command::new("ip")
            .args(args)
            .output()
            .expect("run ip");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let used = ip(&["-4", "route", "show", "table", "all"]) + &ip(&["-4", "addr"]);
    loop {
        let (x, y) = (rand::random_range(64..=250u8), rand::random::<u8>());
        if !used.contains(&format!("10.{x}.{y}.")) {
            return (x, y);
        }
    }
}

/// A guest on a TAP device of its own bridge (no NAT) reaches the bridge's address:
/// it connects to a TCP listener of the test there.
#[tokio::test]
async fn a_networked_guest_reaches_its_bridge() {
    use aetherium_core::net::{HostNetwork, HostNetworkConfig, tap_name};
    use aetherium_core::store::SqliteStore;

    base_image().await;
    let bridge = format!("aeq{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let vm_id = unique_id("net");
    let _links = LinkGuard(vec![tap_name(&vm_id), bridge.clone()]);
    let (x, y) = free_subnet();
    let config = HostNetworkConfig {
        bridge: bridge.clone(),
        gateway: std::net::Ipv4Addr::new(10, x, y, 1),
        prefix_len: 24,
        nat: false,
        // This test is about the device plumbing: the guest reaches the host.
        isolated: false,
        egress_allow: Vec::new(),
        dns_upstream: Vec::new(),
    };
    let state = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite://{}", state.path().join("state.db").display());
    let leases = std::sync::Arc::new(SqliteStore::connect(&db_url).await.unwrap());
    let net = HostNetwork::new(config.clone(), leases, format!("qemu-test/{bridge}")).unwrap();
    net.ensure().await.expect("make the bridge");
    let network = net.attach(&vm_id, None).await.expect("make the TAP device");

    let listener = tokio::net::TcpListener::bind((config.gateway, 0))
        .await
        .expect("listen on the bridge address");
    let port = listener.local_addr().unwrap().port();

    let run_root = RunRoot::new();
    let backend = QemuBackend::new(qemu_config(run_root.path(), image_store()));
    let mut spec = spec(&vm_id);
    spec.network = Some(network.clone());
    backend.create(&spec).await.expect("create");
    let agent = backend.agent(&vm_id);
    if let Err(e) = agent.wait_ready(BOOT_TIMEOUT).await {
        let log = console(&backend, &vm_id);
        backend.delete(&vm_id).await.unwrap();
        panic!("the agent never answered: {e}\nconsole:\n{log}");
    }
    let mac = run_ok(&agent, "cat", &["/sys/class/net/eth0/address"]).await;
    assert_eq!(mac.trim(), network.mac);
    let accept = tokio::spawn(async move {
        let (mut stream, peer) = listener.accept().await.expect("accept");
        let mut text = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut text)
            .await
            .expect("read");
        (peer.ip(), text)
    });
    let script = format!("echo hello-from-guest > /dev/tcp/{}/{port}", config.gateway);
    run_ok(&agent, "bash", &["-c", &script]).await;
    let (peer, text) = tokio::time::timeout(Duration::from_secs(30), accept)
        .await
        .expect("the guest never connected")
        .unwrap();
    assert_eq!(peer, std::net::IpAddr::V4(network.ip));
    assert_eq!(text.trim(), "hello-from-guest");

    backend.delete(&vm_id).await.expect("delete");
    net.detach(&vm_id).await.expect("detach");
    net.teardown().await.expect("teardown");
    assert!(!Path::new("/sys/class/net").join(&network.tap).exists());
}

/// A create whose caller gives up half-way (the future is dropped) leaves no
/// process and no directory behind, wherever it was cut off.
#[tokio::test]
async fn an_abandoned_create_leaves_nothing() {
    base_image().await;
    let run_root = RunRoot::new();
    let backend = QemuBackend::new(qemu_config(run_root.path(), image_store()));
    let mut vm_ids = Vec::new();
    for cut_ms in [5, 60, 250, 450] {
        let vm_id = unique_id("cut");
        vm_ids.push(vm_id.clone());
        let cut =
            tokio::time::timeout(Duration::from_millis(cut_ms), backend.create(&spec(&vm_id)))
                .await;
        eprintln!(
            "create cut at {cut_ms} ms: {}",
            if cut.is_ok() {
                "finished first"
            } else {
                "abandoned"
            }
        );
        if cut.is_ok() {
            // It finished in time: a normal delete then.
            backend.delete(&vm_id).await.unwrap();
        }
        assert!(
            !backend.vm_dir(&vm_id).exists(),
            "cut at {cut_ms} ms: dir left"
        );
        assert_eq!(backend.status(&vm_id).await.unwrap(), SandboxState::Missing);
    }
    // Every process the creates started is gone: the run root is empty, and
    // RunRoot would have nothing to kill.
    assert_eq!(std::fs::read_dir(run_root.path()).unwrap().count(), 0);
    // Their cgroups go once the killed processes are reaped.
    let version = aetherium_core::vmm::cgroup::Version::of_host();
    let deadline = Instant::now() + Duration::from_secs(5);
    for vm_id in &vm_ids {
        let cgroups = aetherium_core::vmm::cgroup::dirs(version, vm_id);
        while cgroups.iter().any(|dir| dir.exists()) {
            assert!(Instant::now() < deadline, "cgroups left: {cgroups:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn too_little_memory_is_rejected() {
    let run_root = RunRoot::new();
    let backend = QemuBackend::new(qemu_config(run_root.path(), image_store()));
    let mut spec = spec(&unique_id("tiny"));
    spec.memory_mb = 16;
    let err = backend.create(&spec).await.unwrap_err();
    assert!(matches!(err, BackendError::Rejected(_)), "{err}");
    assert!(err.to_string().contains("128 MiB"), "{err}");
}
