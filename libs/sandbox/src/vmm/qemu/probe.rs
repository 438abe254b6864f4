//! What this host offers the QEMU backend: the binaries' versions, whether TCG
//! works, and whether KVM can really run guests (not just open `/dev/kvm`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{
    CONSOLE_LOG, QEMU_LOG, QEMU_PID, QMP_SOCKET, QMP_TIMEOUT, QemuAccel, STARTUP_TIMEOUT,
    find_program, log_tail,
};
use crate::vmm::qmp::Qmp;
use crate::vmm::vmproc::{Spawn, VmmProcess};

/// What this host offers the QEMU backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuProbe {
    /// `qemu-system-x86_64 --version`'s first line, or why it cannot run.
    pub qemu_version: Result<String, String>,
    pub vhost_vsock_version: Result<String, String>,
    /// Whether QEMU starts a q35 machine with TCG.
    pub tcg: Result<(), String>,
    /// Whether KVM can run guests (see [`probe_with`] for how that is decided).
    pub kvm: Result<(), String>,
    /// The accelerator to use: KVM when it works, else TCG; `None` when neither.
    pub accel: Option<QemuAccel>,
}

/// How [`probe_with`] decides.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    pub qemu_bin: PathBuf,
    pub vhost_vsock_bin: PathBuf,
    /// Forces the accelerator (from configuration or `AETHERIUM_QEMU_ACCEL`).
    pub accel_override: Option<QemuAccel>,
    /// A kernel to boot under KVM as the decisive check. Without it KVM is never
    /// chosen unless forced.
    pub boot_check_kernel: Option<PathBuf>,
    pub boot_check_timeout: Duration,
}

impl ProbeOptions {
    /// Defaults, with the override from `AETHERIUM_QEMU_ACCEL` (`kvm` or `tcg`).
    pub fn new(qemu_bin: impl Into<PathBuf>, vhost_vsock_bin: impl Into<PathBuf>) -> Self {
        ProbeOptions {
            qemu_bin: qemu_bin.into(),
            vhost_vsock_bin: vhost_vsock_bin.into(),
            accel_override: std::env::var("AETHERIUM_QEMU_ACCEL")
                .ok()
                .and_then(|value| value.parse().ok()),
            boot_check_kernel: None,
            boot_check_timeout: Duration::from_secs(20),
        }
    }
}

/// [`probe_with`] with [`ProbeOptions::new`]: no boot check, so KVM only when forced.
pub async fn probe(qemu_bin: &Path, vhost_vsock_bin: &Path) -> QemuProbe {
    probe_with(&ProbeOptions::new(qemu_bin, vhost_vsock_bin)).await
}

/// Probes the host. The KVM heuristic, cheapest first:
/// 1. `/dev/kvm` opens read-write;
/// 2. QEMU starts a q35 machine with `-accel kvm -S` and answers on QMP;
/// 3. the decisive check: `boot_check_kernel` boots under KVM to its first console
///    line. Step 2 alone is not enough: some hosts (e.g. a software PVM module behind
///    `/dev/kvm`) start QEMU fine but abort on the first guest instruction.
///
/// Without a boot-check kernel, KVM is reported unverified and TCG is chosen. An
/// override skips the KVM checks (a forced TCG still checks that TCG works).
pub async fn probe_with(options: &ProbeOptions) -> QemuProbe {
    let qemu_version = program_version(&options.qemu_bin).await;
    let vhost_vsock_version = program_version(&options.vhost_vsock_bin).await;
    let tcg = match &qemu_version {
        Ok(_) => start_paused(&options.qemu_bin, QemuAccel::Tcg).await,
        Err(e) => Err(e.clone()),
    };
    let kvm = match (options.accel_override, &qemu_version) {
        (Some(QemuAccel::Kvm), _) => Ok(()),
        (Some(QemuAccel::Tcg), _) => Err("TCG forced by configuration".to_string()),
        (None, Err(e)) => Err(e.clone()),
        (None, Ok(_)) => probe_kvm(options).await,
    };
    let accel = if kvm.is_ok() {
        Some(QemuAccel::Kvm)
    } else if tcg.is_ok() {
        Some(QemuAccel::Tcg)
    } else {
        None
    };
    QemuProbe {
        qemu_version,
        vhost_vsock_version,
        tcg,
        kvm,
        accel,
    }
}

async fn probe_kvm(options: &ProbeOptions) -> Result<(), String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| format!("cannot open /dev/kvm read-write: {e}"))?;
    start_paused(&options.qemu_bin, QemuAccel::Kvm).await?;
    let Some(kernel) = &options.boot_check_kernel else {
        return Err(
            "QEMU starts with KVM, but no guest boot was tried (give a kernel for the boot \
             check, or force kvm with AETHERIUM_QEMU_ACCEL=kvm)"
                .into(),
        );
    };
    boot_check(&options.qemu_bin, kernel, options.boot_check_timeout).await
}

async fn program_version(program: &Path) -> Result<String, String> {
    let found = find_program(program)?;
    let output = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::process::Command::new(&found)
            .arg("--version")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| format!("{} --version timed out", found.display()))?
    .map_err(|e| format!("cannot run {}: {e}", found.display()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    match text.lines().next() {
        Some(line) if output.status.success() => Ok(line.trim().to_string()),
        _ => Err(format!(
            "{} --version failed: {}",
            found.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        )),
    }
}

/// A scratch directory for probe runs, removed on drop.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new() -> Result<ScratchDir, String> {
        let path =
            std::env::temp_dir().join(format!("aetherium-qemu-probe-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        Ok(ScratchDir(path))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts QEMU with `accel` and no guest running (`-S`), checks that QMP answers,
/// and quits it.
async fn start_paused(qemu_bin: &Path, accel: QemuAccel) -> Result<(), String> {
    let scratch = ScratchDir::new()?;
    let qmp_path = scratch.0.join(QMP_SOCKET);
    let args: Vec<OsString> = [
        "-accel".to_string(),
        accel.as_str().to_string(),
        "-machine".into(),
        "q35".into(),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-display".into(),
        "none".into(),
        "-S".into(),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", qmp_path.display()),
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    let process = VmmProcess::spawn(&Spawn {
        program: qemu_bin.to_path_buf(),
        args,
        log: scratch.0.join(QEMU_LOG),
        pid_file: scratch.0.join(QEMU_PID),
        cgroup_procs: Vec::new(),
    })
    .map_err(|e| e.to_string())?;
    let deadline = tokio::time::Instant::now() + STARTUP_TIMEOUT;
    let result = loop {
        if !process.is_alive() {
            break Err(format!(
                "qemu -accel {} exits at start: {}",
                accel.as_str(),
                log_tail(&scratch.0.join(QEMU_LOG))
            ));
        }
        match Qmp::connect(&qmp_path, QMP_TIMEOUT).await {
            Ok(mut qmp) => {
                let status = qmp.query_status().await.map_err(|e| e.to_string());
                let _ = qmp.quit().await;
                break status.map(drop);
            }
            Err(e) if tokio::time::Instant::now() >= deadline => {
                break Err(format!("qemu -accel {}: {e}", accel.as_str()));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    if !process.wait_exit(Duration::from_secs(2)).await {
        process.kill_and_wait().await;
    }
    result
}

/// Boots `kernel` under KVM without a root filesystem: it must print its banner on
/// the serial console (it then panics and, with `panic=-1`, QEMU exits).
async fn boot_check(qemu_bin: &Path, kernel: &Path, timeout: Duration) -> Result<(), String> {
    let scratch = ScratchDir::new()?;
    let console = scratch.0.join(CONSOLE_LOG);
    let args: Vec<OsString> = [
        "-machine".to_string(),
        "q35,accel=kvm".into(),
        "-cpu".into(),
        "host".into(),
        "-m".into(),
        "256M".into(),
        "-kernel".into(),
        kernel.display().to_string(),
        "-append".into(),
        "console=ttyS0 panic=-1".into(),
        "-serial".into(),
        format!("file:{}", console.display()),
        "-display".into(),
        "none".into(),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-no-reboot".into(),
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    let process = VmmProcess::spawn(&Spawn {
        program: qemu_bin.to_path_buf(),
        args,
        log: scratch.0.join(QEMU_LOG),
        pid_file: scratch.0.join(QEMU_PID),
        cgroup_procs: Vec::new(),
    })
    .map_err(|e| e.to_string())?;
    let deadline = tokio::time::Instant::now() + timeout;
    let booted = loop {
        let text = std::fs::read_to_string(&console).unwrap_or_default();
        if text.contains("Linux version") {
            break true;
        }
        if !process.is_alive() || tokio::time::Instant::now() >= deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    process.kill_and_wait().await;
    if booted {
        Ok(())
    } else {
        Err(format!(
            "a kernel does not boot under KVM here (QEMU starts, but the guest never \
             reached its console): {}",
            log_tail(&scratch.0.join(QEMU_LOG))
        ))
    }
}
