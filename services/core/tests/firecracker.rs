//! The Firecracker backend against the real `firecracker` binary
//! (`AETHERIUM_FIRECRACKER_BIN`, default `/usr/local/bin/firecracker`).
//!
//! Every API call we use is exercised for real and checked against what Firecracker
//! reports back (`GET /vm/config`, `GET /`, its log). Most tests boot a tiny guest
//! written here (a few bytes of x86-64 that print a line on the serial port and halt),
//! so they behave the same on every host with `/dev/kvm` — including hosts like this
//! one, whose KVM (a PVM module) runs such code but not a stock Linux kernel: there,
//! `InstanceStart` succeeds, the vCPU spins without any console output, and after
//! ~30 s the VMM exits (code 0) with `KVM_EXIT_INTERNAL_ERROR`
//! (`real_kernel_start_behaves_as_the_probe_says` pins that down). Full boots to the
//! agent run only when [`probe`] says guests boot here, and say why they skip otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use aetherium_core::image::{
    BuildProgress, BuildRequest, BuildSource, ImageStore, VmImage, kernel_cmdline,
};
use aetherium_core::vmm::cgroup;
use aetherium_core::vmm::firecracker::api::{
    ActionType, ApiError, FirecrackerApi, InstanceState, LogLevel,
};
use aetherium_core::vmm::firecracker::layout::{self, VmDir};
use aetherium_core::vmm::firecracker::{FirecrackerBackend, FirecrackerConfig, probe};
use aetherium_core::vmm::{Backend, BackendError, GuestNetwork, SandboxSpec, SandboxState};
use aetherium_types::Orchestrator;
use aetherium_types::agent::{ProcessConfig, StartRequest};
use futures::StreamExt as _;

const GUEST_MARKER: &str = "AETHERIUM-TEST-GUEST";
const GRACE: Duration = Duration::from_millis(500);

fn firecracker_bin() -> PathBuf {
    let path = std::env::var_os("AETHERIUM_FIRECRACKER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/local/bin/firecracker"));
    assert!(
        path.is_file(),
        "no firecracker binary at {}: install it with scripts/setup.sh or set AETHERIUM_FIRECRACKER_BIN",
        path.display()
    );
    path
}

/// The Debian cloud kernel as an ELF vmlinux (`AETHERIUM_FC_KERNEL`).
fn real_kernel() -> Option<PathBuf> {
    let path = std::env::var_os("AETHERIUM_FC_KERNEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root/.cache/aetherium/dl/vmlinux"));
    path.is_file().then_some(path)
}

fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{:x}{}",
        std::process::id() & 0x00ff_ffff,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// An ELF "kernel" Firecracker boots in 64-bit mode: writes [`GUEST_MARKER`] to the
/// serial port (0x3f8), then halts for good.
fn tiny_guest_elf() -> Vec<u8> {
    let message = format!("{GUEST_MARKER}\n\0");
    let mut code: Vec<u8> = vec![0x66, 0xBA, 0xF8, 0x03]; // mov dx, 0x3f8
    let lea = code.len();
    code.extend([0x48, 0x8D, 0x35, 0, 0, 0, 0]); // lea rsi, [rip + message]
    // loop: lodsb; test al, al; jz done; out dx, al; jmp loop
    code.extend([0xAC, 0x84, 0xC0, 0x74, 0x03, 0xEE, 0xEB, 0xF8]);
    // done: cli; hlt; jmp hlt
    code.extend([0xFA, 0xF4, 0xEB, 0xFD]);
    let rel = i32::try_from(code.len() - (lea + 7)).unwrap();
    code[lea + 3..lea + 7].copy_from_slice(&rel.to_le_bytes());
    code.extend(message.as_bytes());

    let base: u64 = 0x10_0000; // Firecracker loads kernels at or above 1 MiB.
    let (ehdr, phdr) = (64u16, 56u16);
    let offset = u64::from(ehdr + phdr);
    let size = code.len() as u64;
    let mut elf = Vec::new();
    elf.extend(b"\x7fELF\x02\x01\x01\0");
    elf.extend([0u8; 8]);
    elf.extend(2u16.to_le_bytes()); // ET_EXEC
    elf.extend(0x3Eu16.to_le_bytes()); // x86-64
    elf.extend(1u32.to_le_bytes());
    elf.extend(base.to_le_bytes()); // entry
    elf.extend(u64::from(ehdr).to_le_bytes()); // program headers
    elf.extend(0u64.to_le_bytes()); // no section headers
    elf.extend(0u32.to_le_bytes());
    for half in [ehdr, phdr, 1, 0, 0, 0] {
        elf.extend(half.to_le_bytes());
    }
    elf.extend(1u32.to_le_bytes()); // PT_LOAD
    elf.extend(5u32.to_le_bytes()); // R+X
    for word in [offset, base, base, size, size, 0x1000] {
        elf.extend(word.to_le_bytes());
    }
    elf.extend(code);
    elf
}

/// A newc cpio archive (the initramfs format) of `(path, mode, data)` entries.
fn cpio(entries: &[(&str, u32, &[u8])]) -> Vec<u8> {
    fn entry(out: &mut Vec<u8>, ino: usize, name: &str, mode: u32, data: &[u8]) {
        let header = format!(
            "070701{ino:08X}{mode:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        out.extend(header.as_bytes());
        out.extend(name.as_bytes());
        out.push(0);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
        out.extend(data);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
    }
    let mut out = Vec::new();
    for (i, (name, mode, data)) in entries.iter().enumerate() {
        entry(&mut out, i + 1, name, *mode, data);
    }
    entry(&mut out, 0, "TRAILER!!!", 0, &[]);
    out
}

/// The files of a test image, in a temp dir.
struct TestImage {
    _dir: tempfile::TempDir,
    image: VmImage,
}

fn test_image(kernel: Option<&Path>) -> TestImage {
    let dir = tempfile::tempdir().unwrap();
    let vmlinux = match kernel {
        Some(kernel) => kernel.to_path_buf(),
        None => {
            let path = dir.path().join("vmlinux");
            std::fs::write(&path, tiny_guest_elf()).unwrap();
            path
        }
    };
    // An init that says hello and stays (used only where a real kernel boots).
    let busybox = std::fs::read("/bin/busybox").unwrap_or_default();
    let init = format!(
        "#!/bin/busybox sh\n/bin/busybox echo {GUEST_MARKER}\nexec /bin/busybox sleep 3600\n"
    );
    let initramfs = dir.path().join("initramfs.cpio");
    std::fs::write(
        &initramfs,
        cpio(&[
            ("bin", 0o040755, b""),
            ("bin/busybox", 0o100755, &busybox),
            ("init", 0o100755, init.as_bytes()),
        ]),
    )
    .unwrap();
    let rootfs = dir.path().join("rootfs.ext4");
    std::fs::File::create(&rootfs)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&rootfs)
        .output()
        .expect("mkfs.ext4 (e2fsprogs) is needed");
    assert!(out.status.success(), "{out:?}");
    let image = VmImage {
        reference: "test/tiny:latest".into(),
        digest: "sha256:test".into(),
        rootfs,
        bzimage: vmlinux.clone(),
        vmlinux,
        initramfs,
        kernel_version: "test".into(),
        rootfs_bytes: 8 << 20,
        has_shell: false,
        created_at: chrono::Utc::now(),
    };
    TestImage { _dir: dir, image }
}

struct Setup {
    dir: tempfile::TempDir,
    backend: FirecrackerBackend,
}

impl Setup {
    fn new() -> Setup {
        Setup::with_bin(firecracker_bin())
    }

    fn with_bin(bin: PathBuf) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let backend = FirecrackerBackend::new(Setup::config(dir.path(), bin));
        Setup { dir, backend }
    }

    fn config(dir: &Path, bin: PathBuf) -> FirecrackerConfig {
        let mut config =
            FirecrackerConfig::new(bin, dir.join("run"), ImageStore::new(dir.join("images")));
        config.stop_grace = GRACE;
        config.log_level = LogLevel::Debug;
        config
    }

    fn run_root(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    fn vm_dir(&self, vm_id: &str) -> VmDir {
        self.backend.vm_dir(vm_id).unwrap()
    }
}

fn spec(vm_id: &str, network: Option<GuestNetwork>) -> SandboxSpec {
    SandboxSpec {
        vm_id: vm_id.to_string(),
        orchestrator: Orchestrator::Firecracker,
        name: vm_id.to_string(),
        image: "test/tiny:latest".into(),
        vcpus: 1,
        memory_mb: 32,
        disk_mb: None,
        network_policy: None,
        network,
        access_token: None,
    }
}

/// Processes whose command line mentions `needle` (our per-test directories).
fn processes_mentioning(needle: &Path) -> Vec<u32> {
    let needle = needle.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                .unwrap_or(false)
        })
        .collect()
}

fn pid_of(dir: &VmDir) -> u32 {
    let text = std::fs::read_to_string(dir.pid_file()).unwrap();
    text.split_whitespace().next().unwrap().parse().unwrap()
}

fn sigkill(pid: u32) {
    let status = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

async fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TAP device made for one test, removed by name when dropped.
struct Tap(String);

impl Tap {
    fn new() -> Tap {
        Tap::owned_by(0)
    }

    /// A TAP that user `uid` may open (a jailed Firecracker runs as that user).
    fn owned_by(uid: u32) -> Tap {
        let name = unique("fct");
        assert!(name.len() <= 15);
        let out = Command::new("ip")
            .args([
                "tuntap",
                "add",
                &name,
                "mode",
                "tap",
                "user",
                &uid.to_string(),
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "ip tuntap add {name}: {out:?}");
        let tap = Tap(name);
        let out = Command::new("ip")
            .args(["link", "set", &tap.0, "up"])
            .output()
            .unwrap();
        assert!(out.status.success(), "ip link set up: {out:?}");
        tap
    }

    /// An up TAP has carrier exactly while a process holds it open.
    fn attached(&self) -> bool {
        std::fs::read_to_string(format!("/sys/class/net/{}/carrier", self.0))
            .is_ok_and(|c| c.trim() == "1")
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).output();
    }
}

fn assert_gone(setup: &Setup, vm_id: &str) {
    let dir = setup.vm_dir(vm_id);
    assert!(!dir.path().exists(), "{} is left", dir.path().display());
    let left = processes_mentioning(dir.path());
    assert!(left.is_empty(), "processes left: {left:?}");
}

#[tokio::test]
async fn lifecycle_drives_every_api_call() {
    let setup = Setup::new();
    let image = test_image(None);
    let tap = Tap::new();
    let network = GuestNetwork {
        tap: tap.0.clone(),
        mac: "52:54:00:12:34:56".into(),
        ip: Ipv4Addr::new(10, 99, 0, 2),
        gateway: Ipv4Addr::new(10, 99, 0, 1),
        prefix_len: 24,
        dns: None,
    };
    assert!(!tap.attached());
    let vm_id = unique("vm-");
    let spec = spec(&vm_id, Some(network.clone()));
    setup
        .backend
        .create_with_image(&spec, &image.image)
        .await
        .expect("create");
    let dir = setup.vm_dir(&vm_id);
    let api = FirecrackerApi::new(dir.api_socket());
    // Without the jailer, in cgroups of ours, joined before it ran.
    assert_cgroup_limits(pid_of(&dir), 1, 32);
    let cgroups = cgroup::dirs(cgroup::Version::of_host(), &vm_id);

    // What Firecracker took is what we sent.
    let info = api.instance_info().await.unwrap();
    assert_eq!(info.id, layout::instance_id(&vm_id));
    assert_eq!(info.state, InstanceState::Running);
    assert!(info.vmm_version.starts_with("1."), "{info:?}");
    let config = api.vm_config().await.unwrap();
    let boot = config.boot_source.unwrap();
    assert_eq!(boot.kernel_image_path, image.image.vmlinux);
    assert_eq!(boot.initrd_path.as_ref(), Some(&image.image.initramfs));
    assert_eq!(
        boot.boot_args.as_deref(),
        Some(kernel_cmdline(Some(&network)).as_str())
    );
    assert!(
        boot.boot_args
            .unwrap()
            .contains("ip=10.99.0.2::10.99.0.1:255.255.255.0::eth0:off")
    );
    let machine = config.machine_config.unwrap();
    assert_eq!(
        (machine.vcpu_count, machine.mem_size_mib, machine.smt),
        (1, 32, false)
    );
    assert_eq!(config.drives.len(), 1);
    assert_eq!(config.drives[0].drive_id, "rootfs");
    assert_eq!(config.drives[0].path_on_host, dir.rootfs());
    assert!(config.drives[0].is_root_device && !config.drives[0].is_read_only);
    assert_eq!(config.network_interfaces.len(), 1);
    assert_eq!(config.network_interfaces[0].host_dev_name, tap.0);
    assert_eq!(
        config.network_interfaces[0].guest_mac.as_deref(),
        Some("52:54:00:12:34:56")
    );
    let vsock = config.vsock.unwrap();
    assert_eq!((vsock.guest_cid, vsock.uds_path), (3, dir.vsock_socket()));
    assert!(dir.vsock_socket().exists(), "vsock socket not bound");
    assert!(tap.attached(), "firecracker did not open TAP {}", tap.0);
    assert_eq!(setup.backend.agent_socket(&vm_id), dir.vsock_socket());

    // The rootfs is the VM's own copy; the guest really ran; the logger is ours.
    assert_eq!(
        std::fs::read(dir.rootfs()).unwrap(),
        std::fs::read(&image.image.rootfs).unwrap()
    );
    wait_for("the guest's serial output", Duration::from_secs(5), || {
        std::fs::read_to_string(dir.console()).is_ok_and(|c| c.contains(GUEST_MARKER))
    })
    .await;
    let log = std::fs::read_to_string(dir.log()).unwrap();
    assert!(log.contains("DEBUG"), "log level not applied: {log}");
    assert!(log.contains("InstanceStart"), "{log}");
    let metrics = setup.backend.metrics(&vm_id).await.expect("metrics");
    assert!(metrics.get("api_server").is_some(), "{metrics}");
    assert!(metrics.get("vcpu").is_some(), "{metrics}");

    assert_eq!(
        setup.backend.status(&vm_id).await.unwrap(),
        SandboxState::Running
    );
    let list = setup.backend.list().await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(
        (list[0].vm_id.as_str(), &list[0].state),
        (vm_id.as_str(), &SandboxState::Running)
    );

    // Snapshots need a paused VM.
    let snapshot = setup.dir.path().join("snap-running");
    let err = setup.backend.snapshot(&vm_id, &snapshot).await.unwrap_err();
    assert!(err.to_string().contains("must be paused"), "{err}");
    assert!(!snapshot.exists());

    setup.backend.pause(&vm_id).await.expect("pause");
    assert_eq!(
        setup.backend.status(&vm_id).await.unwrap(),
        SandboxState::Paused
    );
    assert_eq!(
        api.instance_info().await.unwrap().state,
        InstanceState::Paused
    );
    setup.backend.resume(&vm_id).await.expect("resume");
    assert_eq!(
        setup.backend.status(&vm_id).await.unwrap(),
        SandboxState::Running
    );

    // Firecracker's own refusal comes back verbatim.
    let err = api
        .put_machine_config(
            &aetherium_core::vmm::firecracker::api::MachineConfiguration {
                vcpu_count: 2,
                mem_size_mib: 64,
                smt: false,
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ApiError::Fault { status, .. } if status.as_u16() == 400),
        "{err}"
    );
    assert!(!err.fault_message().unwrap().is_empty(), "{err}");

    // Stop: Ctrl-Alt-Del (our guest ignores it), the grace period, then SIGKILL.
    api.action(ActionType::SendCtrlAltDel)
        .await
        .expect("SendCtrlAltDel");
    let pid = pid_of(&dir);
    let started = Instant::now();
    setup.backend.delete(&vm_id).await.expect("delete");
    assert!(
        started.elapsed() >= GRACE,
        "deleted without the grace period"
    );
    assert!(
        std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
            .map_or(true, |c| !c.contains("firecracker"))
    );
    assert_gone(&setup, &vm_id);
    assert!(!tap.attached(), "TAP still held after delete");
    for dir in &cgroups {
        assert!(!dir.exists(), "{} left", dir.display());
    }
    assert_eq!(
        setup.backend.status(&vm_id).await.unwrap(),
        SandboxState::Missing
    );
    assert!(setup.backend.list().await.unwrap().is_empty());
    // Absent is fine.
    setup.backend.delete(&vm_id).await.expect("delete again");
}

#[tokio::test]
async fn a_paused_vm_snapshots_and_restores() {
    let setup = Setup::new();
    let image = test_image(None);
    let vm_id = unique("snap-");
    setup
        .backend
        .create_with_image(&spec(&vm_id, None), &image.image)
        .await
        .expect("create");
    setup.backend.pause(&vm_id).await.expect("pause");
    let snapshot = setup.dir.path().join("snapshot");
    setup
        .backend
        .snapshot(&vm_id, &snapshot)
        .await
        .expect("snapshot");
    let memory = std::fs::metadata(snapshot.join("memory")).unwrap();
    assert_eq!(memory.len(), 32 << 20);
    assert!(std::fs::metadata(snapshot.join("vmstate")).unwrap().len() > 0);
    assert!(snapshot.join(layout::ROOTFS).is_file());
    // The snapshot's paths are the VM's: it comes back only as the same VM.
    let err = setup
        .backend
        .restore("other-vm", &snapshot, true)
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&vm_id), "{err}");
    assert!(!setup.run_root().join("other-vm").exists());
    // ... and not while the VM still exists.
    let err = setup
        .backend
        .restore(&vm_id, &snapshot, true)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("exists already"), "{err}");
    setup.backend.delete(&vm_id).await.expect("delete");
    assert_gone(&setup, &vm_id);

    setup
        .backend
        .restore(&vm_id, &snapshot, false)
        .await
        .expect("restore");
    let api = FirecrackerApi::new(setup.vm_dir(&vm_id).api_socket());
    assert_eq!(
        api.instance_info().await.unwrap().state,
        InstanceState::Paused
    );
    assert_eq!(
        setup.backend.status(&vm_id).await.unwrap(),
        SandboxState::Paused
    );
    setup.backend.resume(&vm_id).await.expect("resume");
    assert_eq!(
        setup.backend.status(&vm_id).await.unwrap(),
        SandboxState::Running
    );
    let log = std::fs::read_to_string(setup.vm_dir(&vm_id).log()).unwrap();
    assert!(log.contains("snapshot/load"), "{log}");
    setup.backend.delete(&vm_id).await.expect("delete");
    assert_gone(&setup, &vm_id);
}

#[tokio::test]
async fn a_missing_kernel_is_firecrackers_fault_and_leaves_nothing() {
    let setup = Setup::new();
    let mut image = test_image(None);
    image.image.vmlinux = setup.dir.path().join("no-such-vmlinux");
    let vm_id = unique("nokernel-");
    let err = setup
        .backend
        .create_with_image(&spec(&vm_id, None), &image.image)
        .await
        .unwrap_err();
    assert!(matches!(err, BackendError::Rejected(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("The kernel file cannot be opened: No such file or directory"),
        "{text}"
    );
    assert!(text.contains("/boot-source"), "{text}");
    println!("{text}");
    assert_gone(&setup, &vm_id);
}

#[tokio::test]
async fn a_missing_binary_is_a_clear_error_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-firecracker");
    let setup = Setup::with_bin(missing.clone());
    let image = test_image(None);
    let vm_id = unique("nobin-");
    let err = setup
        .backend
        .create_with_image(&spec(&vm_id, None), &image.image)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("no-such-firecracker") && text.contains("not found"),
        "{text}"
    );
    assert_gone(&setup, &vm_id);
    assert!(setup.backend.ping().await.is_err());
}

#[tokio::test]
async fn a_socket_path_too_long_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let run_root = dir.path().join("r".repeat(100));
    let mut config = Setup::config(dir.path(), firecracker_bin());
    config.run_root = run_root.clone();
    let backend = FirecrackerBackend::new(config);
    let image = test_image(None);
    let err = backend
        .create_with_image(&spec("long-path", None), &image.image)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unix socket"), "{err}");
    assert!(!run_root.exists());
}

#[tokio::test]
async fn an_unknown_image_is_rejected_and_leaves_nothing() {
    let setup = Setup::new();
    let vm_id = unique("noimg-");
    let mut spec = spec(&vm_id, None);
    spec.image = "no/such-image:latest".into();
    let err = setup.backend.create(&spec).await.unwrap_err();
    assert!(matches!(err, BackendError::Rejected(_)), "{err:?}");
    assert!(err.to_string().contains("no/such-image"), "{err}");
    assert_gone(&setup, &vm_id);
}

#[tokio::test]
async fn a_killed_vmm_shows_as_exited_and_delete_cleans_up() {
    let setup = Setup::new();
    let image = test_image(None);
    let vm_id = unique("kill-");
    setup
        .backend
        .create_with_image(&spec(&vm_id, None), &image.image)
        .await
        .expect("create");
    let mut exits = setup.backend.watch_exits();
    // Let the watcher see it alive first.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let dir = setup.vm_dir(&vm_id);
    sigkill(pid_of(&dir));
    let exit = tokio::time::timeout(Duration::from_secs(5), exits.next())
        .await
        .expect("no exit reported")
        .unwrap()
        .unwrap();
    assert_eq!(
        (exit.vm_id.as_str(), exit.exit_code),
        (vm_id.as_str(), 128 + 9)
    );
    let state = setup.backend.status(&vm_id).await.unwrap();
    assert_eq!(
        state,
        SandboxState::Exited {
            exit_code: 128 + 9,
            killed_for: None
        }
    );
    let err = setup.backend.pause(&vm_id).await.unwrap_err();
    assert!(err.to_string().contains("has exited"), "{err}");
    assert!(
        dir.api_socket().exists(),
        "a stale socket is expected before delete"
    );
    setup.backend.delete(&vm_id).await.expect("delete");
    assert_gone(&setup, &vm_id);
}

#[tokio::test]
async fn a_restarted_worker_adopts_live_vms_and_cleans_stale_ones() {
    let setup = Setup::new();
    let image = test_image(None);
    let live = unique("live-");
    setup
        .backend
        .create_with_image(&spec(&live, None), &image.image)
        .await
        .expect("create");
    // A VM of a crashed worker: pid file of a dead process, leftover sockets.
    let stale = unique("stale-");
    let stale_dir = setup.vm_dir(&stale);
    std::fs::create_dir_all(stale_dir.path()).unwrap();
    let dead = Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    let _ = dead.wait_with_output();
    std::fs::write(stale_dir.pid_file(), format!("{dead_pid} 1\n")).unwrap();
    for socket in [stale_dir.api_socket(), stale_dir.vsock_socket()] {
        let _listener = std::os::unix::net::UnixListener::bind(socket).unwrap();
    }
    std::fs::write(
        stale_dir.log(),
        "[x:main] Firecracker exiting with error. exit_code=1\n",
    )
    .unwrap();

    // A new backend instance knows nothing but the run directory.
    let restarted = FirecrackerBackend::new(Setup::config(setup.dir.path(), firecracker_bin()));
    let mut list = restarted.list().await.unwrap();
    list.sort_by(|a, b| a.vm_id.cmp(&b.vm_id));
    let states: Vec<(&str, &SandboxState)> =
        list.iter().map(|i| (i.vm_id.as_str(), &i.state)).collect();
    assert!(
        states.contains(&(live.as_str(), &SandboxState::Running)),
        "{states:?}"
    );
    assert!(
        states.contains(&(
            stale.as_str(),
            &SandboxState::Exited {
                exit_code: 1,
                killed_for: None
            }
        )),
        "{states:?}"
    );
    restarted.pause(&live).await.expect("pause an adopted VM");
    assert_eq!(restarted.status(&live).await.unwrap(), SandboxState::Paused);
    restarted.delete(&stale).await.expect("delete stale");
    assert_gone(&setup, &stale);
    restarted.delete(&live).await.expect("delete adopted");
    assert_gone(&setup, &live);
    assert!(restarted.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn the_probe_reports_binary_kvm_and_guest_boot() {
    let bin = firecracker_bin();
    let result = probe(&bin, None).await;
    println!("{}", result.summary());
    assert!(
        result
            .version
            .as_ref()
            .is_ok_and(|v| v.starts_with("Firecracker v")),
        "{result:?}"
    );
    assert_eq!(result.guest_boots, None, "no kernel given, no boot check");
    let missing = probe(Path::new("/nonexistent/firecracker"), None).await;
    assert!(
        missing
            .version
            .as_ref()
            .unwrap_err()
            .contains("/nonexistent/firecracker")
    );
    assert!(!missing.guests_boot());
}

/// The Debian kernel: `InstanceStart` succeeds and the VMM stays up; whether the
/// kernel then prints anything is what the probe predicts.
#[tokio::test]
async fn real_kernel_start_behaves_as_the_probe_says() {
    let Some(kernel) = real_kernel() else {
        println!("SKIP: no vmlinux (set AETHERIUM_FC_KERNEL)");
        return;
    };
    let bin = firecracker_bin();
    let probed = probe(&bin, Some(&kernel)).await;
    println!("{}", probed.summary());
    assert!(
        probed.guest_boots.is_some() || probed.kvm.is_err(),
        "{probed:?}"
    );
    if probed.kvm.is_err() {
        println!("SKIP: /dev/kvm unusable");
        return;
    }
    let setup = Setup::new();
    let image = test_image(Some(&kernel));
    let vm_id = unique("linux-");
    let mut spec = spec(&vm_id, None);
    spec.memory_mb = 256;
    setup
        .backend
        .create_with_image(&spec, &image.image)
        .await
        .expect("create with the real kernel");
    let dir = setup.vm_dir(&vm_id);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        setup.backend.status(&vm_id).await.unwrap(),
        SandboxState::Running
    );
    // A spinning vCPU pauses and resumes like any other.
    setup.backend.pause(&vm_id).await.expect("pause");
    assert_eq!(
        setup.backend.status(&vm_id).await.unwrap(),
        SandboxState::Paused
    );
    setup.backend.resume(&vm_id).await.expect("resume");
    assert_eq!(
        setup.backend.status(&vm_id).await.unwrap(),
        SandboxState::Running
    );
    let console = std::fs::read_to_string(dir.console()).unwrap();
    if probed.guests_boot() {
        wait_for("the guest's init", Duration::from_secs(20), || {
            std::fs::read_to_string(dir.console()).is_ok_and(|c| c.contains(GUEST_MARKER))
        })
        .await;
    } else {
        // This host: the vCPU spins, the kernel prints nothing.
        let reason = probed.guest_boots.clone().unwrap().unwrap_err();
        assert!(
            reason.contains("printed nothing") || reason.contains("did not finish"),
            "the probe failed for another reason: {reason}"
        );
        assert!(!console.contains("Linux version"), "{console}");
        println!("the kernel printed nothing, as the probe said");
    }
    setup.backend.delete(&vm_id).await.expect("delete");
    assert_gone(&setup, &vm_id);
}

/// The base guest image built by `ImageStore::build` (as the QEMU tests do:
/// `AETHERIUM_TEST_IMAGE_DIR`, the kernel package, the static agent).
async fn base_image() -> VmImage {
    let store = ImageStore::new(aetherium_testkit::test_images_dir());
    let request = BuildRequest::new(
        BuildSource::Docker(aetherium_testkit::test_image()),
        aetherium_testkit::kernel_dir(),
        aetherium_testkit::static_agent_bin(),
    );
    store
        .build(&request, &|_: BuildProgress| {})
        .await
        .expect("building the base guest image")
}

/// A real guest booted to its agent, over Firecracker's hybrid vsock. Runs only
/// where the probe says guests boot.
#[tokio::test]
async fn full_boot_reaches_the_agent() {
    let bin = firecracker_bin();
    // Probe with the dev kernel if there is one, so hosts that cannot boot skip
    // without building an image.
    let early = match real_kernel() {
        Some(kernel) => Some(probe(&bin, Some(&kernel)).await),
        None => None,
    };
    if let Some(probed) = early.as_ref().filter(|p| !p.guests_boot()) {
        println!(
            "SKIP: guests do not boot under firecracker here:\n{}",
            probed.summary()
        );
        return;
    }
    let image = base_image().await;
    if early.is_none() {
        let probed = probe(&bin, Some(&image.vmlinux)).await;
        if !probed.guests_boot() {
            println!(
                "SKIP: guests do not boot under firecracker here:\n{}",
                probed.summary()
            );
            return;
        }
    }
    let setup = Setup::new();
    let vm_id = unique("boot-");
    let mut spec = spec(&vm_id, None);
    spec.memory_mb = 512;
    let started = Instant::now();
    setup
        .backend
        .create_with_image(&spec, &image)
        .await
        .expect("create");
    let agent = setup.backend.agent(&vm_id);
    if let Err(e) = agent.wait_ready(Duration::from_secs(60)).await {
        let tail = setup.backend.log_tail(&vm_id, 30);
        setup.backend.delete(&vm_id).await.unwrap();
        panic!("agent not ready: {e}{tail}");
    }
    println!("boot to agent: {:?}", started.elapsed());
    let request = StartRequest {
        process: ProcessConfig {
            cmd: "uname".into(),
            args: vec!["-r".into()],
            ..ProcessConfig::default()
        },
        ..StartRequest::default()
    };
    let output = agent.run(&request, 4096).await.expect("run uname");
    assert_eq!(output.exit_code, Some(0), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        image.kernel_version
    );
    setup.backend.pause(&vm_id).await.expect("pause");
    setup.backend.resume(&vm_id).await.expect("resume");
    setup.backend.delete(&vm_id).await.expect("delete");
    assert_gone(&setup, &vm_id);
}

fn jailer_bin() -> PathBuf {
    let path = std::env::var_os("AETHERIUM_JAILER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| firecracker_bin().with_file_name("jailer"));
    assert!(
        path.is_file(),
        "no jailer binary at {}: install it with scripts/setup.sh or set AETHERIUM_JAILER_BIN",
        path.display()
    );
    path
}

/// Asserts the cgroup limits of a Firecracker (`pid`): `vcpus` of CPU time and
/// `memory_mb` plus the overhead.
fn assert_cgroup_limits(pid: u32, vcpus: u64, memory_mb: u64) {
    aetherium_testkit::cgroup::assert_limits(
        pid,
        vcpus,
        (memory_mb + cgroup::MEMORY_OVERHEAD_MB) << 20,
    );
}

/// The same lifecycle under the jailer: chroot-relative paths, an unprivileged
/// user, snapshot files moved out of and back into the chroot, cgroup limits.
#[tokio::test]
async fn the_jailer_runs_the_same_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Setup::config(dir.path(), firecracker_bin());
    config.jailer_bin = Some(jailer_bin());
    let uid = config.jailer_uid;
    let backend = FirecrackerBackend::new(config);
    let setup = Setup { dir, backend };
    let image = test_image(None);
    let tap = Tap::owned_by(uid);
    let network = GuestNetwork {
        tap: tap.0.clone(),
        mac: "52:54:00:12:34:57".into(),
        ip: Ipv4Addr::new(10, 99, 1, 2),
        gateway: Ipv4Addr::new(10, 99, 1, 1),
        prefix_len: 24,
        dns: None,
    };
    let vm_id = unique("jail-");
    setup
        .backend
        .create_with_image(&spec(&vm_id, Some(network)), &image.image)
        .await
        .expect("create under the jailer");
    let vm_dir = setup.vm_dir(&vm_id);
    let root = vm_dir.jail_root().unwrap().to_path_buf();
    assert!(root.starts_with(vm_dir.path()));
    let api = FirecrackerApi::new(vm_dir.api_socket());
    assert_eq!(api.instance_info().await.unwrap().id, layout::JAIL_ID);
    let config = api.vm_config().await.unwrap();
    let boot = config.boot_source.unwrap();
    assert_eq!(boot.kernel_image_path, Path::new("/vmlinux"));
    assert_eq!(boot.initrd_path.as_deref(), Some(Path::new("/initramfs")));
    assert_eq!(config.drives[0].path_on_host, Path::new("/rootfs.ext4"));
    assert_eq!(config.vsock.unwrap().uds_path, Path::new("/vsock.sock"));
    assert!(
        tap.attached(),
        "the jailed firecracker did not open its TAP"
    );
    assert_eq!(setup.backend.agent_socket(&vm_id), root.join("vsock.sock"));
    assert!(root.join("vsock.sock").exists());
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid_of(&vm_dir))).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid_line.split_whitespace().nth(1) == Some(uid.to_string().as_str()),
        "not running as {uid}: {uid_line}"
    );
    // Bounded by its size: one vCPU of CPU time, its memory and the overhead.
    assert_cgroup_limits(pid_of(&vm_dir), 1, 32);
    let cgroups = cgroup::dirs(cgroup::Version::of_host(), &vm_id);
    wait_for("the guest's serial output", Duration::from_secs(5), || {
        std::fs::read_to_string(vm_dir.console()).is_ok_and(|c| c.contains(GUEST_MARKER))
    })
    .await;
    assert!(
        std::fs::read_to_string(vm_dir.log())
            .unwrap()
            .contains("InstanceStart")
    );

    setup.backend.pause(&vm_id).await.expect("pause");
    let snapshot = setup.dir.path().join("jail-snapshot");
    setup
        .backend
        .snapshot(&vm_id, &snapshot)
        .await
        .expect("snapshot");
    assert_eq!(
        std::fs::metadata(snapshot.join("memory")).unwrap().len(),
        32 << 20
    );
    assert!(
        !root.join("snapshot.memory").exists(),
        "snapshot left in the jail"
    );
    setup.backend.resume(&vm_id).await.expect("resume");
    setup.backend.delete(&vm_id).await.expect("delete");
    assert_gone(&setup, &vm_id);
    for dir in &cgroups {
        assert!(!dir.exists(), "{} left", dir.display());
    }

    setup
        .backend
        .restore(&vm_id, &snapshot, false)
        .await
        .expect("restore under the jailer");
    // The snapshot brought its size along.
    assert_cgroup_limits(pid_of(&vm_dir), 1, 32);
    assert_eq!(
        setup.backend.status(&vm_id).await.unwrap(),
        SandboxState::Paused
    );
    setup.backend.resume(&vm_id).await.expect("resume");
    assert_eq!(
        setup.backend.status(&vm_id).await.unwrap(),
        SandboxState::Running
    );
    assert!(tap.attached());
    setup.backend.delete(&vm_id).await.expect("delete");
    assert_gone(&setup, &vm_id);
    assert!(!tap.attached());
    for dir in &cgroups {
        assert!(!dir.exists(), "{} left", dir.display());
    }
}
