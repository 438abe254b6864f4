//! The QEMU backend: one `qemu-system-x86_64` (q35, KVM or TCG) per sandbox, booting
//! the same guest image and agent as Firecracker. The guest's vsock device is served
//! by a `vhost-device-vsock` process per VM, which exposes Firecracker's hybrid-vsock
//! unix socket on the host, so the same agent client serves both backends.
//!
//! Everything of one VM lives in `<run_root>/<vm_id>/`: the rootfs copy, the sockets
//! (`vhost.sock` between QEMU and the vsock device, `vsock.sock` for the host side of
//! the agent, `qmp.sock`), logs and pid files. The directory *is* the record: a
//! restarted worker finds its VMs by scanning `run_root`, and delete removes it whole.
//!
//! Stop: Ctrl-Alt-Del over QMP (the guest reboots; `-no-reboot` turns that into
//! QEMU's exit), SIGKILL after a grace period. Pause: SIGSTOP of QEMU and the vsock
//! device rather than QMP `stop` (see `QemuBackend::freeze` for why). Snapshots
//! are not supported (they would need a qcow2 disk or migration to a file).

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aetherium_types::Orchestrator;
use async_trait::async_trait;
use futures::StreamExt as _;
use futures::stream::BoxStream;

mod exits;
mod launch;
mod probe;

use exits::*;
use launch::*;
pub use probe::{ProbeOptions, QemuProbe, probe, probe_with};

use super::cgroup;
use super::qmp::{Qmp, QmpError};
use super::vmproc::{Spawn, VmmProcess};
use super::{
    Backend, BackendError, GuestNetwork, SandboxExit, SandboxInfo, SandboxSpec, SandboxState,
};
use crate::agent_client::AgentClient;
use crate::image::{AGENT_VSOCK_PORT, ImageError, ImageStore};

const ROOTFS: &str = "rootfs.ext4";
const VHOST_SOCKET: &str = "vhost.sock";
const VSOCK_SOCKET: &str = "vsock.sock";
const QMP_SOCKET: &str = "qmp.sock";
const CONSOLE_LOG: &str = "console.log";
const QEMU_LOG: &str = "qemu.log";
const QEMU_PID: &str = "qemu.pid";
const VHOST_LOG: &str = "vhost.log";
const VHOST_PID: &str = "vhost.pid";

/// The guest's vsock context id. Each VM has its own vsock device process, so every
/// guest can use the same one.
const GUEST_CID: u32 = 3;
/// `sun_path` holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;
/// Bounds every QMP exchange (QEMU answers in milliseconds, also under TCG).
const QMP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long create waits for `vhost-device-vsock` to listen and for QEMU's QMP.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
const EXIT_POLL: Duration = Duration::from_millis(500);
/// Less does not boot the guest kernel and its initramfs.
const MIN_MEMORY_MB: u64 = 128;
/// What of a failing process's log an error message quotes.
const LOG_TAIL_BYTES: usize = 2000;

/// How QEMU runs the guest's vCPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QemuAccel {
    /// Hardware virtualisation through `/dev/kvm`.
    Kvm,
    /// QEMU's software emulation: slow, but works everywhere.
    Tcg,
}

impl QemuAccel {
    pub fn as_str(self) -> &'static str {
        match self {
            QemuAccel::Kvm => "kvm",
            QemuAccel::Tcg => "tcg",
        }
    }

    fn cpu_model(self) -> &'static str {
        match self {
            QemuAccel::Kvm => "host",
            QemuAccel::Tcg => "max",
        }
    }
}

impl std::str::FromStr for QemuAccel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "kvm" => Ok(QemuAccel::Kvm),
            "tcg" => Ok(QemuAccel::Tcg),
            other => Err(format!("unknown QEMU accelerator {other:?} (kvm or tcg)")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct QemuConfig {
    pub qemu_bin: PathBuf,
    pub vhost_vsock_bin: PathBuf,
    /// One directory per VM is made in here.
    pub run_root: PathBuf,
    pub images: ImageStore,
    /// Decided by the caller, usually from [`probe`].
    pub accel: QemuAccel,
    /// How long the worker should wait for the agent after `create` (TCG boots are
    /// slow). The backend itself does not wait for the guest.
    pub boot_timeout: Duration,
    /// How long delete lets the guest react to Ctrl-Alt-Del before SIGKILL.
    pub stop_grace: Duration,
}

impl QemuConfig {
    pub fn new(run_root: impl Into<PathBuf>, images: ImageStore, accel: QemuAccel) -> Self {
        QemuConfig {
            qemu_bin: "qemu-system-x86_64".into(),
            vhost_vsock_bin: "vhost-device-vsock".into(),
            run_root: run_root.into(),
            images,
            accel,
            boot_timeout: match accel {
                QemuAccel::Kvm => Duration::from_secs(30),
                QemuAccel::Tcg => Duration::from_secs(120),
            },
            stop_grace: Duration::from_secs(3),
        }
    }
}

/// The QEMU backend of one worker.
#[derive(Clone)]
pub struct QemuBackend {
    inner: Arc<Inner>,
}

struct Inner {
    config: QemuConfig,
    /// The host's cgroup hierarchy, for each VM's limits.
    cgroups: cgroup::Version,
    /// The QEMU processes this process started, which know their exit code.
    spawned: Mutex<HashMap<String, VmmProcess>>,
    /// QEMU serves one QMP client at a time: one exchange per VM at once.
    qmp_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// VMs whose `create` runs now (their directory exists, QEMU may not yet).
    creating: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for QemuBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QemuBackend")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl QemuBackend {
    pub fn new(config: QemuConfig) -> Self {
        QemuBackend {
            inner: Arc::new(Inner {
                config,
                cgroups: cgroup::Version::of_host(),
                spawned: Mutex::new(HashMap::new()),
                qmp_locks: Mutex::new(HashMap::new()),
                creating: Mutex::new(HashSet::new()),
            }),
        }
    }

    pub fn config(&self) -> &QemuConfig {
        &self.inner.config
    }

    /// The directory holding everything of one VM.
    pub fn vm_dir(&self, vm_id: &str) -> PathBuf {
        self.inner.config.run_root.join(vm_id)
    }

    /// The QEMU process of a VM, if it runs.
    pub fn qemu_process(&self, vm_id: &str) -> Option<VmmProcess> {
        self.inner.qemu_process(vm_id)
    }

    /// The `vhost-device-vsock` process of a VM, if it runs.
    pub fn vhost_process(&self, vm_id: &str) -> Option<VmmProcess> {
        VmmProcess::from_pid_file(&self.vm_dir(vm_id).join(VHOST_PID))
    }

    async fn start(&self, spec: &SandboxSpec, dir: &Path) -> Result<VmmProcess, BackendError> {
        let config = &self.inner.config;
        let image = config.images.require(&spec.image).map_err(image_error)?;
        let rootfs = dir.join(ROOTFS);
        crate::image::clone_rootfs(&image.rootfs, &rootfs)
            .await
            .map_err(image_error)?;

        // Both processes run in the VM's cgroups: its vCPUs' worth of CPU time,
        // its memory and some overhead.
        let limits = cgroup::Limits {
            vcpus: spec.vcpus,
            memory_mb: spec.memory_mb,
        };
        let cgroup_procs = cgroup::make_or_warn(self.inner.cgroups, &spec.vm_id, limits)
            .map_err(|e| BackendError::Other(format!("cannot make the VM's cgroups: {e}")))?;
        let vhost = VmmProcess::spawn(&Spawn {
            program: config.vhost_vsock_bin.clone(),
            args: vhost_args(dir),
            log: dir.join(VHOST_LOG),
            pid_file: dir.join(VHOST_PID),
            cgroup_procs: cgroup_procs.clone(),
        })
        .map_err(|e| BackendError::Other(format!("vhost-device-vsock: {e}")))?;
        wait_for_socket(&vhost, &dir.join(VHOST_SOCKET), &dir.join(VHOST_LOG)).await?;

        let cmdline = crate::image::kernel_cmdline(spec.network.as_ref());
        let args = qemu_args(&QemuArgs {
            vm_id: &spec.vm_id,
            dir,
            accel: config.accel,
            vcpus: spec.vcpus.max(1),
            memory_mb: spec.memory_mb,
            kernel: &image.bzimage,
            initramfs: &image.initramfs,
            cmdline: &cmdline,
            network: spec.network.as_ref(),
        });
        let qemu = VmmProcess::spawn(&Spawn {
            program: config.qemu_bin.clone(),
            args,
            log: dir.join(QEMU_LOG),
            pid_file: dir.join(QEMU_PID),
            cgroup_procs,
        })
        .map_err(|e| BackendError::Other(format!("qemu: {e}")))?;
        self.inner
            .spawned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(spec.vm_id.clone(), qemu.clone());
        self.wait_for_qmp(&spec.vm_id, &qemu).await?;
        Ok(qemu)
    }

    /// Waits until QEMU answers on QMP, which means it parsed its options and set up
    /// every device (the guest may still be booting).
    async fn wait_for_qmp(&self, vm_id: &str, qemu: &VmmProcess) -> Result<(), BackendError> {
        let dir = self.vm_dir(vm_id);
        let deadline = tokio::time::Instant::now() + STARTUP_TIMEOUT;
        loop {
            if !qemu.is_alive() {
                return Err(BackendError::Other(format!(
                    "qemu exited at start{}: {}",
                    qemu.exit_code()
                        .map(|code| format!(" with code {code}"))
                        .unwrap_or_default(),
                    log_tail(&dir.join(QEMU_LOG))
                )));
            }
            match self
                .with_qmp(vm_id, |qmp| Box::pin(qmp.query_status()))
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(BackendError::Other(format!(
                        "qemu does not answer on QMP after {STARTUP_TIMEOUT:?}: {e}"
                    )));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Runs `op` on a fresh QMP session of the VM, one at a time per VM.
    async fn with_qmp<T>(
        &self,
        vm_id: &str,
        op: impl for<'a> FnOnce(&'a mut Qmp) -> futures::future::BoxFuture<'a, Result<T, QmpError>>,
    ) -> Result<T, QmpError> {
        let lock = {
            let mut locks = self
                .inner
                .qmp_locks
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            locks.entry(vm_id.to_string()).or_default().clone()
        };
        let _guard = lock.lock().await;
        let mut qmp = Qmp::connect(&self.vm_dir(vm_id).join(QMP_SOCKET), QMP_TIMEOUT).await?;
        op(&mut qmp).await
    }

    /// Stops and removes everything of one VM. Absent parts are fine.
    async fn teardown(&self, vm_id: &str, graceful: bool) -> Result<(), BackendError> {
        let dir = self.vm_dir(vm_id);
        if let Some(qemu) = self.inner.qemu_process(vm_id) {
            if graceful {
                self.stop_gracefully(vm_id, &qemu).await;
            }
            if !qemu.wait_exit(Duration::ZERO).await {
                qemu.kill_and_wait().await;
            }
        }
        if let Some(vhost) = VmmProcess::from_pid_file(&dir.join(VHOST_PID)) {
            vhost.kill_and_wait().await;
        }
        self.inner
            .spawned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(vm_id);
        self.inner
            .qmp_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(vm_id);
        cgroup::remove_when_empty(self.inner.cgroups, vm_id).await;
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(BackendError::Other(format!(
                "cannot remove {}: {e}",
                dir.display()
            ))),
        }
    }

    /// Ctrl-Alt-Del, then up to the grace period for QEMU to exit on its own (the
    /// guest reboots; `-no-reboot` turns that into an exit). A paused guest cannot
    /// react, so it is not asked.
    async fn stop_gracefully(&self, vm_id: &str, qemu: &VmmProcess) {
        let grace = self.inner.config.stop_grace;
        if grace.is_zero() || self.is_frozen(vm_id) {
            return;
        }
        let asked = self
            .with_qmp(vm_id, |qmp| {
                Box::pin(async move {
                    if qmp.query_status().await?.running {
                        qmp.send_ctrl_alt_delete().await?;
                        Ok(true)
                    } else {
                        Ok(false)
                    }
                })
            })
            .await;
        match asked {
            Ok(true) => {
                if qemu.wait_exit(grace).await {
                    tracing::debug!(vm_id, "qemu exited after Ctrl-Alt-Del");
                } else {
                    tracing::debug!(vm_id, "qemu still runs after the grace period: killing");
                }
            }
            Ok(false) => {}
            Err(e) => tracing::debug!(vm_id, error = %e, "no graceful stop"),
        }
    }

    fn state(&self, vm_id: &str) -> VmPresence {
        self.inner.presence(vm_id)
    }
}

/// Whether a VM directory exists and its QEMU runs.
enum VmPresence {
    Missing,
    /// `create` is under way.
    Creating,
    Exited(i64),
    Alive,
}

/// Marks a VM as being created; if the create is abandoned half-way (its future
/// dropped), kills what it started and removes its directory.
struct CreateGuard {
    inner: Arc<Inner>,
    vm_id: String,
    /// Set once the VM directory exists: from then on, dropping cleans up.
    dir_made: bool,
    finished: bool,
}

impl CreateGuard {
    fn new(inner: &Arc<Inner>, vm_id: &str) -> Result<CreateGuard, BackendError> {
        let fresh = inner
            .creating
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(vm_id.to_string());
        if !fresh {
            return Err(BackendError::Rejected(format!(
                "the QEMU VM {vm_id} is being created already"
            )));
        }
        Ok(CreateGuard {
            inner: inner.clone(),
            vm_id: vm_id.to_string(),
            dir_made: false,
            finished: false,
        })
    }
}

impl Drop for CreateGuard {
    fn drop(&mut self) {
        if self.dir_made && !self.finished {
            let dir = self.inner.config.run_root.join(&self.vm_id);
            for pid_file in [QEMU_PID, VHOST_PID] {
                if let Some(process) = VmmProcess::from_pid_file(&dir.join(pid_file)) {
                    process.kill();
                }
            }
            let _ = std::fs::remove_dir_all(&dir);
            // The killed processes leave their cgroups once reaped.
            let (version, vm_id) = (self.inner.cgroups, self.vm_id.clone());
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(async move { cgroup::remove_when_empty(version, &vm_id).await });
                }
                Err(_) => cgroup::remove(version, &vm_id),
            }
            self.inner
                .spawned
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&self.vm_id);
            tracing::warn!(vm_id = %self.vm_id, "create abandoned: killed what it started");
        }
        self.inner
            .creating
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.vm_id);
    }
}

impl Inner {
    fn qemu_process(&self, vm_id: &str) -> Option<VmmProcess> {
        let spawned = self
            .spawned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(vm_id)
            .cloned();
        match spawned {
            Some(process) => process.is_alive().then_some(process),
            None => VmmProcess::from_pid_file(&self.config.run_root.join(vm_id).join(QEMU_PID)),
        }
    }

    fn presence(&self, vm_id: &str) -> VmPresence {
        if self
            .creating
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(vm_id)
        {
            return VmPresence::Creating;
        }
        self.presence_on_disk(vm_id)
    }

    /// Like `Inner::presence`, from the directory and processes alone.
    fn presence_on_disk(&self, vm_id: &str) -> VmPresence {
        if !self.config.run_root.join(vm_id).is_dir() {
            return VmPresence::Missing;
        }
        if self.qemu_process(vm_id).is_some() {
            return VmPresence::Alive;
        }
        let spawned = self
            .spawned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(vm_id)
            .cloned();
        if spawned.as_ref().is_some_and(VmmProcess::exit_pending) {
            // Dead in /proc a moment before the reaper has its status: the next look
            // reports the real code instead of -1.
            return VmPresence::Alive;
        }
        let code = spawned.as_ref().and_then(VmmProcess::exit_code);
        VmPresence::Exited(code.map_or(-1, i64::from))
    }

    /// The VM ids under `run_root` (directories with a valid id as name).
    fn vm_ids(&self) -> std::io::Result<Vec<String>> {
        let entries = match std::fs::read_dir(&self.config.run_root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut ids = Vec::new();
        for entry in entries {
            let entry = entry?;
            if !entry.file_type()?.is_dir() {
                continue;
            }
            if let Some(name) = entry.file_name().to_str()
                && check_vm_id(name).is_ok()
            {
                ids.push(name.to_string());
            }
        }
        ids.sort();
        Ok(ids)
    }
}

#[async_trait]
impl Backend for QemuBackend {
    fn kind(&self) -> Orchestrator {
        Orchestrator::Qemu
    }

    fn boot_timeout(&self, _vm_id: &str) -> Option<Duration> {
        Some(self.inner.config.boot_timeout)
    }

    fn failure_context(&self, vm_id: &str) -> Option<String> {
        let dir = self.vm_dir(vm_id);
        dir.is_dir().then(|| {
            format!(
                "--- guest console ---\n{}\n--- qemu ---\n{}",
                log_tail(&dir.join(CONSOLE_LOG)),
                log_tail(&dir.join(QEMU_LOG))
            )
        })
    }

    async fn ping(&self) -> Result<(), BackendError> {
        let config = &self.inner.config;
        for program in [&config.qemu_bin, &config.vhost_vsock_bin] {
            find_program(program).map_err(BackendError::Unavailable)?;
        }
        Ok(())
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<(), BackendError> {
        check_vm_id(&spec.vm_id).map_err(BackendError::Rejected)?;
        if let Some(network) = &spec.network {
            check_network(network).map_err(BackendError::Rejected)?;
        }
        let config = &self.inner.config;
        let dir = self.vm_dir(&spec.vm_id);
        check_dir(&dir).map_err(BackendError::Rejected)?;
        for program in [&config.qemu_bin, &config.vhost_vsock_bin] {
            find_program(program).map_err(BackendError::Unavailable)?;
        }
        if spec.memory_mb < MIN_MEMORY_MB {
            return Err(BackendError::Rejected(format!(
                "a QEMU VM needs at least {MIN_MEMORY_MB} MiB of memory, not {}",
                spec.memory_mb
            )));
        }
        let mut guard = CreateGuard::new(&self.inner, &spec.vm_id)?;
        match self.inner.presence_on_disk(&spec.vm_id) {
            VmPresence::Alive => {
                return Err(BackendError::Rejected(format!(
                    "a QEMU VM {} already runs",
                    spec.vm_id
                )));
            }
            // Left over by a crash: start afresh.
            VmPresence::Exited(_) => self.teardown(&spec.vm_id, false).await?,
            VmPresence::Missing | VmPresence::Creating => {}
        }
        tokio::fs::create_dir_all(&config.run_root)
            .await
            .map_err(|e| {
                BackendError::Other(format!("cannot create {}: {e}", config.run_root.display()))
            })?;
        tokio::fs::create_dir(&dir)
            .await
            .map_err(|e| BackendError::Other(format!("cannot create {}: {e}", dir.display())))?;
        guard.dir_made = true;
        let started = self.start(spec, &dir).await;
        if started.is_err()
            && let Err(cleanup) = self.teardown(&spec.vm_id, false).await
        {
            tracing::warn!(vm_id = %spec.vm_id, error = %cleanup, "cleanup after a failed create");
        }
        guard.finished = true;
        match started {
            Ok(qemu) => {
                tracing::info!(vm_id = %spec.vm_id, pid = qemu.pid(), accel = config.accel.as_str(), "qemu started");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    async fn delete(&self, vm_id: &str) -> Result<(), BackendError> {
        check_vm_id(vm_id).map_err(BackendError::Rejected)?;
        self.teardown(vm_id, true).await
    }

    async fn status(&self, vm_id: &str) -> Result<SandboxState, BackendError> {
        check_vm_id(vm_id).map_err(BackendError::Rejected)?;
        match self.state(vm_id) {
            VmPresence::Missing => Ok(SandboxState::Missing),
            VmPresence::Creating => Ok(SandboxState::Starting),
            VmPresence::Exited(exit_code) => Ok(SandboxState::Exited {
                exit_code,
                killed_for: None,
            }),
            VmPresence::Alive if self.is_frozen(vm_id) => Ok(SandboxState::Paused),
            VmPresence::Alive => {
                match self
                    .with_qmp(vm_id, |qmp| Box::pin(qmp.query_status()))
                    .await
                {
                    Ok(status) => Ok(run_state(&status.status)),
                    // Alive but not answering yet: still setting up.
                    Err(e) => {
                        tracing::debug!(vm_id, error = %e, "QMP does not answer");
                        Ok(SandboxState::Starting)
                    }
                }
            }
        }
    }

    async fn list(&self) -> Result<Vec<SandboxInfo>, BackendError> {
        let ids = self.inner.vm_ids().map_err(|e| {
            BackendError::Other(format!(
                "cannot read {}: {e}",
                self.inner.config.run_root.display()
            ))
        })?;
        let mut infos = Vec::with_capacity(ids.len());
        for vm_id in ids {
            let state = self.status(&vm_id).await?;
            if state != SandboxState::Missing {
                infos.push(SandboxInfo { vm_id, state });
            }
        }
        Ok(infos)
    }

    fn watch_exits(&self) -> BoxStream<'static, Result<SandboxExit, BackendError>> {
        let watcher = ExitWatcher {
            inner: self.inner.clone(),
            seen_alive: HashSet::new(),
            reported: HashSet::new(),
        };
        futures::stream::unfold(watcher, |mut watcher| async move {
            loop {
                let exits = watcher.poll();
                if !exits.is_empty() {
                    return Some((futures::stream::iter(exits), watcher));
                }
                tokio::time::sleep(EXIT_POLL).await;
            }
        })
        .flatten()
        .boxed()
    }

    fn agent_socket(&self, vm_id: &str) -> PathBuf {
        self.vm_dir(vm_id).join(VSOCK_SOCKET)
    }

    fn agent(&self, vm_id: &str) -> AgentClient {
        AgentClient::hybrid_vsock(self.agent_socket(vm_id), AGENT_VSOCK_PORT)
    }

    /// Freezes QEMU and the vsock device with SIGSTOP (not QMP `stop`: see
    /// `QemuBackend::freeze`).
    async fn pause(&self, vm_id: &str) -> Result<(), BackendError> {
        self.require_alive(vm_id)?;
        self.freeze(vm_id).await
    }

    async fn resume(&self, vm_id: &str) -> Result<(), BackendError> {
        self.require_alive(vm_id)?;
        self.thaw(vm_id).await
    }

    async fn snapshot(&self, vm_id: &str, dir: &Path) -> Result<(), BackendError> {
        let _ = (vm_id, dir);
        Err(BackendError::Unsupported(
            "the qemu backend cannot snapshot sandboxes: QEMU snapshots need a qcow2 disk \
             or migration to a file, which this backend does not use; use the firecracker \
             backend for snapshots"
                .into(),
        ))
    }
}

impl QemuBackend {
    /// Pauses by stopping both processes. QMP `stop` would be the natural way, but
    /// it stops the vhost-user rings, and vhost-device-vsock (0.3.0) loses its
    /// worker thread for good when a host connection arrives while they are stopped
    /// (its RX handler fails on the stopped queue): every later agent connection
    /// then hangs. Frozen processes keep the rings as they are; host connections
    /// wait in the socket's backlog and go through on resume. The vsock device is
    /// frozen first and thawed last, so it never works while QEMU is frozen. The
    /// guest's clock jumps forward by the paused time on resume.
    async fn freeze(&self, vm_id: &str) -> Result<(), BackendError> {
        let (qemu, vhost) = self.processes(vm_id)?;
        vhost.signal(libc::SIGSTOP);
        qemu.signal(libc::SIGSTOP);
        for process in [&vhost, &qemu] {
            wait_stopped(process, true).await.map_err(|e| {
                // Leave it running rather than half frozen.
                qemu.signal(libc::SIGCONT);
                vhost.signal(libc::SIGCONT);
                BackendError::Other(format!("VM {vm_id}: {e}"))
            })?;
        }
        Ok(())
    }

    async fn thaw(&self, vm_id: &str) -> Result<(), BackendError> {
        let (qemu, vhost) = self.processes(vm_id)?;
        qemu.signal(libc::SIGCONT);
        wait_stopped(&qemu, false)
            .await
            .map_err(|e| BackendError::Other(format!("VM {vm_id}: {e}")))?;
        vhost.signal(libc::SIGCONT);
        wait_stopped(&vhost, false)
            .await
            .map_err(|e| BackendError::Other(format!("VM {vm_id}: {e}")))
    }

    /// Whether the VM's QEMU is frozen by `QemuBackend::freeze`.
    fn is_frozen(&self, vm_id: &str) -> bool {
        self.inner
            .qemu_process(vm_id)
            .is_some_and(|qemu| is_stopped(qemu.pid()))
    }

    fn processes(&self, vm_id: &str) -> Result<(VmmProcess, VmmProcess), BackendError> {
        let qemu = self
            .inner
            .qemu_process(vm_id)
            .ok_or_else(|| BackendError::Rejected(format!("the QEMU VM {vm_id} is not running")))?;
        let vhost = self.vhost_process(vm_id).ok_or_else(|| {
            BackendError::Other(format!(
                "the vsock device (vhost-device-vsock) of VM {vm_id} is gone"
            ))
        })?;
        Ok((qemu, vhost))
    }

    fn require_alive(&self, vm_id: &str) -> Result<(), BackendError> {
        check_vm_id(vm_id).map_err(BackendError::Rejected)?;
        match self.state(vm_id) {
            VmPresence::Alive => Ok(()),
            VmPresence::Missing => Err(BackendError::Rejected(format!("no QEMU VM {vm_id}"))),
            VmPresence::Creating => Err(BackendError::Rejected(format!(
                "the QEMU VM {vm_id} is still being created"
            ))),
            VmPresence::Exited(code) => Err(BackendError::Rejected(format!(
                "the QEMU VM {vm_id} has exited (code {code})"
            ))),
        }
    }
}

#[cfg(test)]
mod tests;
