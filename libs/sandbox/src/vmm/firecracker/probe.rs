//! What Firecracker can do on this host (for `aetherium doctor` and to decide whether
//! full-boot tests run): the binary and its version, `/dev/kvm`, and whether a guest
//! kernel really boots.
//!
//! The boot check boots the given kernel with no disk and watches its serial console:
//! a kernel that gets through its whole initialisation ends in "VFS: Unable to mount
//! root fs" (a panic, which reboots and so ends Firecracker). A `/dev/kvm` that opens
//! but cannot run the kernel (e.g. a PVM module: the vCPU spins silently, then dies
//! with KVM_EXIT_INTERNAL_ERROR after ~30 s) shows nothing at all.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt as _;

/// How long the test guest may take to reach its root mount.
pub const BOOT_PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Console lines that prove the kernel initialised completely.
const BOOTED_MARKERS: [&str; 3] = [
    "VFS: Unable to mount root",
    "Kernel panic - not syncing",
    "Run /init",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    /// `firecracker --version`, or why it cannot run.
    pub version: Result<String, String>,
    /// Whether `/dev/kvm` opens read-write.
    pub kvm: Result<(), String>,
    /// How long the test kernel took to initialise, or why it did not; `None` when
    /// not tried (no kernel given, or the binary or KVM is unusable).
    pub guest_boots: Option<Result<Duration, String>>,
}

impl ProbeResult {
    /// Whether guests boot here (the condition for full-boot tests).
    pub fn guests_boot(&self) -> bool {
        matches!(self.guest_boots, Some(Ok(_)))
    }

    /// One line per check, for doctor output and skip messages.
    pub fn summary(&self) -> String {
        let version = match &self.version {
            Ok(v) => format!("binary: {v}"),
            Err(e) => format!("binary: {e}"),
        };
        let kvm = match &self.kvm {
            Ok(()) => "/dev/kvm: opens read-write".to_string(),
            Err(e) => format!("/dev/kvm: {e}"),
        };
        let boots = match &self.guest_boots {
            Some(Ok(took)) => format!("guest boot: the kernel initialised in {took:.1?}"),
            Some(Err(e)) => format!("guest boot: no: {e}"),
            None => "guest boot: not tried".to_string(),
        };
        format!("{version}\n{kvm}\n{boots}")
    }
}

/// Probes the binary and KVM, and boots `kernel` (an uncompressed vmlinux) if given.
pub async fn probe(bin: &Path, kernel: Option<&Path>) -> ProbeResult {
    let version = version(bin).await;
    let kvm = open_kvm();
    let guest_boots = match (kernel, &version, &kvm) {
        (Some(kernel), Ok(_), Ok(())) => Some(boot_check(bin, kernel).await),
        _ => None,
    };
    ProbeResult {
        version,
        kvm,
        guest_boots,
    }
}

async fn version(bin: &Path) -> Result<String, String> {
    if !bin.is_file() {
        return Err(format!("{} not found", bin.display()));
    }
    let output = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::process::Command::new(bin)
            .arg("--version")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| format!("{} --version did not answer", bin.display()))?
    .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .find(|l| l.starts_with("Firecracker v"))
        .map(|l| l.trim().to_string())
        .ok_or_else(|| format!("{} is not firecracker: {:?}", bin.display(), text.trim()))
}

fn open_kvm() -> Result<(), String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(drop)
        .map_err(|e| format!("cannot open read-write: {e}"))
}

async fn boot_check(bin: &Path, kernel: &Path) -> Result<Duration, String> {
    if !kernel.is_file() {
        return Err(format!("test kernel {} not found", kernel.display()));
    }
    let dir = std::env::temp_dir().join(format!(
        "aetherium-fc-probe-{}-{:x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let result = boot_in(bin, kernel, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn boot_in(bin: &Path, kernel: &Path, dir: &Path) -> Result<Duration, String> {
    let config = serde_json::json!({
        "boot-source": {
            "kernel_image_path": kernel,
            "boot_args": "console=ttyS0 earlyprintk=serial,ttyS0 reboot=k panic=1 pci=off",
        },
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 128, "smt": false},
        "drives": [],
    });
    let config_path = dir.join("config.json");
    std::fs::write(&config_path, config.to_string()).map_err(|e| format!("{e}"))?;
    let mut child = tokio::process::Command::new(bin)
        .arg("--no-api")
        .arg("--config-file")
        .arg(&config_path)
        .arg("--id")
        .arg("aetherium-probe")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let started = Instant::now();
    let mut console = Vec::new();
    let watched = tokio::time::timeout(BOOT_PROBE_TIMEOUT, async {
        let mut buf = [0u8; 4096];
        loop {
            match stdout.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => console.extend_from_slice(&buf[..n]),
            }
            let text = String::from_utf8_lossy(&console);
            if BOOTED_MARKERS.iter().any(|m| text.contains(m)) {
                return true;
            }
        }
    })
    .await;
    let took = started.elapsed();
    let _ = child.kill().await;
    let text = String::from_utf8_lossy(&console);
    let printed_kernel = text.contains("Linux version");
    match watched {
        Ok(true) => Ok(took),
        Ok(false) => Err(format!(
            "firecracker ended before the kernel initialised; its last output: {}",
            last_lines(&text, 5)
        )),
        Err(_) if printed_kernel => Err(format!(
            "the kernel started but did not finish initialising within {BOOT_PROBE_TIMEOUT:?}"
        )),
        Err(_) => Err(format!(
            "the guest kernel printed nothing within {BOOT_PROBE_TIMEOUT:?}: KVM here cannot run it (e.g. a PVM module)"
        )),
    }
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}
