//! The Firecracker backend: one `firecracker` process per sandbox, configured over its
//! API socket, everything of a VM in one directory `<run_root>/<vm_id>/` — so that
//! removing that directory (after the process) removes every trace, also after a
//! crash of the worker. Optionally under the `jailer`: then the files Firecracker
//! opens live in a chroot inside that directory and it runs as an unprivileged user.
//!
//! Over 800 lines: one `Backend` implementation whose create and cleanup steps must be read together (each undoes the ones before it).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aetherium_types::Orchestrator;
use async_trait::async_trait;
use futures::StreamExt as _;
use futures::stream::BoxStream;

use super::api::{
    self, ActionType, ApiError, BootSource, Drive, FirecrackerApi, InstanceState, Logger,
    MachineConfiguration, MemoryBackend, MemoryBackendType, Metrics, NetworkInterface,
    SnapshotCreateParams, SnapshotLoadParams, SnapshotType, VmState, Vsock,
};
use super::layout::{self, VmDir};
use crate::agent_client::AgentClient;
use crate::image::{self, ImageStore, VmImage};
use crate::vmm::cgroup;
use crate::vmm::vmproc::{Spawn, VmmProcess};
use crate::vmm::{Backend, BackendError, SandboxExit, SandboxInfo, SandboxSpec, SandboxState};

/// The guest's vsock context id (any id ≥ 3 works; each VM has its own socket).
pub const GUEST_CID: u32 = 3;
/// How long a fresh process may take to open its API socket.
const API_SOCKET_TIMEOUT: Duration = Duration::from_secs(5);
/// How often `watch_exits` looks at the processes.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);
/// Lines of the VMM's logs quoted in errors.
const TAIL_LINES: usize = 8;

#[derive(Debug, Clone)]
pub struct FirecrackerConfig {
    pub firecracker_bin: PathBuf,
    /// Run Firecracker under this `jailer` (chroot in the VM's directory, then as
    /// `jailer_uid`/`jailer_gid`). TAP devices must then belong to that user.
    pub jailer_bin: Option<PathBuf>,
    pub jailer_uid: u32,
    pub jailer_gid: u32,
    /// Holds one directory per VM; only this backend writes there.
    pub run_root: PathBuf,
    pub images: ImageStore,
    /// How long a new VM may take until its agent answers.
    pub boot_timeout: Duration,
    /// How long `delete` waits after Ctrl-Alt-Del before it kills the VMM.
    pub stop_grace: Duration,
    pub log_level: api::LogLevel,
}

impl FirecrackerConfig {
    pub fn new(firecracker_bin: PathBuf, run_root: PathBuf, images: ImageStore) -> Self {
        FirecrackerConfig {
            firecracker_bin,
            jailer_bin: None,
            jailer_uid: 65534,
            jailer_gid: 65534,
            run_root,
            images,
            boot_timeout: Duration::from_secs(30),
            stop_grace: Duration::from_secs(3),
            log_level: api::LogLevel::Info,
        }
    }
}

pub struct FirecrackerBackend {
    config: FirecrackerConfig,
    /// The host's cgroup hierarchy, for a jailed VM's limits.
    cgroups: cgroup::Version,
    /// Processes this process started (they know their exit code once reaped);
    /// others are found by their pid file.
    started: Arc<Mutex<HashMap<String, VmmProcess>>>,
}

fn other(e: impl std::fmt::Display) -> BackendError {
    BackendError::Other(e.to_string())
}

/// Firecracker's refusals are final (bad kernel, bad device); the rest may pass.
fn api_error(e: ApiError) -> BackendError {
    match e {
        ApiError::Fault { .. } => BackendError::Rejected(e.to_string()),
        ApiError::Unavailable { .. } => BackendError::Unavailable(e.to_string()),
        ApiError::Protocol { .. } => BackendError::Other(e.to_string()),
    }
}

fn image_error(e: image::ImageError) -> BackendError {
    match e {
        image::ImageError::Io { .. } => BackendError::Other(e.to_string()),
        _ => BackendError::Rejected(e.to_string()),
    }
}

impl FirecrackerBackend {
    pub fn new(config: FirecrackerConfig) -> Self {
        FirecrackerBackend {
            config,
            cgroups: cgroup::Version::of_host(),
            started: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    pub fn config(&self) -> &FirecrackerConfig {
        &self.config
    }

    /// The VM's directory and files. Errors for ids that cannot be a directory name
    /// or whose sockets would not fit a unix socket address.
    pub fn vm_dir(&self, vm_id: &str) -> Result<VmDir, BackendError> {
        VmDir::new(&self.config.run_root, vm_id, self.jail_exec().as_deref())
            .map_err(BackendError::Rejected)
    }

    /// The file name the jailer gives Firecracker (its chroot's path has it), if jailed.
    fn jail_exec(&self) -> Option<String> {
        self.config.jailer_bin.as_ref()?;
        Some(self.config.firecracker_bin.file_name().map_or_else(
            || "firecracker".into(),
            |n| n.to_string_lossy().into_owned(),
        ))
    }

    /// The API client of a VM's Firecracker process.
    pub fn api(&self, vm_id: &str) -> Result<FirecrackerApi, BackendError> {
        Ok(FirecrackerApi::new(self.vm_dir(vm_id)?.api_socket()))
    }

    /// The last lines of Firecracker's own log and of the console (its stdout: the
    /// guest's serial output and Firecracker's messages before the logger was set).
    pub fn log_tail(&self, vm_id: &str, lines: usize) -> String {
        let Ok(dir) = self.vm_dir(vm_id) else {
            return String::new();
        };
        let mut tail = String::new();
        for (name, path) in [("log", dir.log()), ("console", dir.console())] {
            let text = layout::tail_lines(&path, lines);
            if !text.is_empty() {
                tail.push_str(&format!(
                    "\n--- firecracker {name} ({}) ---\n{text}",
                    path.display()
                ));
            }
        }
        tail
    }

    /// Asks Firecracker to write its metrics now and returns the latest record.
    pub async fn metrics(&self, vm_id: &str) -> Result<serde_json::Value, BackendError> {
        let dir = self.vm_dir(vm_id)?;
        FirecrackerApi::new(dir.api_socket())
            .action(ActionType::FlushMetrics)
            .await
            .map_err(api_error)?;
        let text = layout::tail_lines(&dir.metrics(), 1);
        serde_json::from_str(text.trim()).map_err(|e| {
            BackendError::Other(format!("unreadable firecracker metrics {text:?}: {e}"))
        })
    }

    /// The VM's process: ours if we started it, else the one its pid file names.
    fn process(&self, vm_id: &str, dir: &VmDir) -> Option<VmmProcess> {
        let ours = self.started.lock().ok()?.get(vm_id).cloned();
        ours.or_else(|| VmmProcess::from_pid_file(&dir.pid_file()))
    }

    /// Creates and starts a VM from an image already at hand (`create` resolves the
    /// spec's image first). Leaves nothing behind on error.
    pub async fn create_with_image(
        &self,
        spec: &SandboxSpec,
        image: &VmImage,
    ) -> Result<(), BackendError> {
        let dir = self.prepare(&spec.vm_id)?;
        let result = async {
            image::clone_rootfs(&image.rootfs, &dir.rootfs())
                .await
                .map_err(image_error)?;
            let kernel = stage(&dir, &image.vmlinux, "vmlinux")?;
            let initrd = stage(&dir, &image.initramfs, "initramfs")?;
            let limits = cgroup::Limits {
                vcpus: spec.vcpus,
                memory_mb: spec.memory_mb,
            };
            std::fs::write(dir.limits(), limits.to_file_text())
                .map_err(|e| other(format!("cannot write {}: {e}", dir.limits().display())))?;
            let api = self.start_process(&spec.vm_id, &dir, Some(limits)).await?;
            self.configure(&api, &dir, spec, kernel, initrd).await?;
            api.action(ActionType::InstanceStart)
                .await
                .map_err(api_error)
        }
        .await;
        self.undo_on_error(&spec.vm_id, &dir, result).await
    }

    /// Starts a VM from a snapshot written by [`Backend::snapshot`]. A snapshot holds
    /// the paths of its VM's disk and vsock socket (absolute ones unless jailed), so
    /// it comes back as the VM it was taken from (`vm_id`), which must not exist any
    /// more (its TAP device, if it had one, must). `resume`: run it at once;
    /// otherwise it stays paused.
    pub async fn restore(
        &self,
        vm_id: &str,
        snapshot: &Path,
        resume: bool,
    ) -> Result<(), BackendError> {
        let files = layout::SnapshotFiles::new(snapshot);
        let taken_from = files.read_vm_id().map_err(BackendError::Rejected)?;
        if taken_from != vm_id {
            return Err(BackendError::Rejected(format!(
                "snapshot {} was taken from VM {taken_from}: it can only come back as that VM",
                snapshot.display()
            )));
        }
        let dir = self.prepare(vm_id)?;
        let result = async {
            image::clone_rootfs(&files.rootfs(), &dir.rootfs())
                .await
                .map_err(image_error)?;
            let vmstate = stage(&dir, &files.vmstate(), "snapshot.vmstate")?;
            let memory = stage(&dir, &files.memory(), "snapshot.memory")?;
            // The size it had when taken bounds it again (older snapshots lack it).
            let limits = std::fs::read_to_string(files.limits())
                .ok()
                .and_then(|text| cgroup::Limits::from_file_text(&text));
            if let Some(limits) = limits {
                std::fs::write(dir.limits(), limits.to_file_text())
                    .map_err(|e| other(format!("cannot write {}: {e}", dir.limits().display())))?;
            }
            let api = self.start_process(vm_id, &dir, limits).await?;
            self.configure_observability(&api, &dir).await?;
            api.load_snapshot(&SnapshotLoadParams {
                snapshot_path: vmstate,
                mem_backend: MemoryBackend {
                    backend_type: MemoryBackendType::File,
                    backend_path: memory,
                },
                resume_vm: resume,
            })
            .await
            .map_err(api_error)
        }
        .await;
        self.undo_on_error(vm_id, &dir, result).await
    }

    /// Makes the VM's directory, refusing a VM that exists.
    fn prepare(&self, vm_id: &str) -> Result<VmDir, BackendError> {
        let dir = self.vm_dir(vm_id)?;
        std::fs::create_dir_all(&self.config.run_root).map_err(|e| {
            other(format!(
                "cannot create {}: {e}",
                self.config.run_root.display()
            ))
        })?;
        match std::fs::create_dir(dir.path()) {
            Ok(()) => {
                // The jailer takes the chroot as it finds it: the files go in first.
                if let Some(root) = dir.jail_root()
                    && let Err(e) = std::fs::create_dir_all(root)
                {
                    let _ = std::fs::remove_dir_all(dir.path());
                    return Err(other(format!("cannot create {}: {e}", root.display())));
                }
                Ok(dir)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(BackendError::Rejected(format!(
                    "a firecracker VM {vm_id} exists already ({})",
                    dir.path().display()
                )))
            }
            Err(e) => Err(other(format!(
                "cannot create {}: {e}",
                dir.path().display()
            ))),
        }
    }

    /// On error: kills the process and removes the directory, and quotes the VMM's
    /// last log lines in the error.
    async fn undo_on_error(
        &self,
        vm_id: &str,
        dir: &VmDir,
        result: Result<(), BackendError>,
    ) -> Result<(), BackendError> {
        let Err(error) = result else {
            return Ok(());
        };
        let tail = self.log_tail(vm_id, TAIL_LINES);
        self.remove(vm_id, dir, Duration::ZERO).await;
        Err(match error {
            BackendError::Rejected(m) => BackendError::Rejected(format!("{m}{tail}")),
            BackendError::Unavailable(m) => BackendError::Other(format!("{m}{tail}")),
            BackendError::Other(m) => BackendError::Other(format!("{m}{tail}")),
            unsupported @ BackendError::Unsupported(_) => unsupported,
        })
    }

    /// Spawns `firecracker` and waits until its API answers, in cgroups bounded by
    /// `limits` (the jailer's, else ours).
    async fn start_process(
        &self,
        vm_id: &str,
        dir: &VmDir,
        limits: Option<cgroup::Limits>,
    ) -> Result<FirecrackerApi, BackendError> {
        let bin = &self.config.firecracker_bin;
        if !bin.is_file() {
            return Err(BackendError::Rejected(format!(
                "firecracker binary {} not found: install it (scripts/setup.sh) or set its path in the configuration",
                bin.display()
            )));
        }
        // Firecracker opens (never creates) its log and metrics files.
        for file in [dir.log(), dir.metrics()] {
            std::fs::File::create(&file)
                .map_err(|e| other(format!("cannot create {}: {e}", file.display())))?;
        }
        let mut cgroup_procs = Vec::new();
        let (program, args) = match &self.config.jailer_bin {
            None => {
                // No jailer to make its cgroups: ours, joined before it execs.
                if let Some(limits) = limits {
                    cgroup_procs = crate::vmm::cgroup::make_or_warn(self.cgroups, vm_id, limits)
                        .map_err(|e| other(format!("cannot make the VM's cgroups: {e}")))?;
                }
                (
                    bin.clone(),
                    vec![
                        "--api-sock".into(),
                        dir.api_socket().into(),
                        "--id".into(),
                        layout::instance_id(vm_id).into(),
                    ],
                )
            }
            Some(jailer) => {
                if !jailer.is_file() {
                    return Err(BackendError::Rejected(format!(
                        "jailer binary {} not found",
                        jailer.display()
                    )));
                }
                // What Firecracker writes must belong to the user it runs as.
                let (uid, gid) = (self.config.jailer_uid, self.config.jailer_gid);
                for file in [dir.rootfs(), dir.log(), dir.metrics()] {
                    std::os::unix::fs::chown(&file, Some(uid), Some(gid)).map_err(|e| {
                        other(format!("cannot hand {} to uid {uid}: {e}", file.display()))
                    })?;
                }
                let mut args: Vec<std::ffi::OsString> = vec![
                    "--id".into(),
                    layout::JAIL_ID.into(),
                    "--exec-file".into(),
                    bin.into(),
                    "--uid".into(),
                    uid.to_string().into(),
                    "--gid".into(),
                    gid.to_string().into(),
                    "--chroot-base-dir".into(),
                    dir.jail_base().into(),
                ];
                if let Some(limits) = limits {
                    args.extend(
                        cgroup::jailer_args(self.cgroups, vm_id, limits)
                            .into_iter()
                            .map(Into::into),
                    );
                }
                args.extend([
                    "--".into(),
                    "--api-sock".into(),
                    dir.vmm_path(&dir.api_socket()).into(),
                ]);
                (jailer.clone(), args)
            }
        };
        let process = VmmProcess::spawn(&Spawn {
            program,
            args,
            log: dir.console(),
            pid_file: dir.pid_file(),
            cgroup_procs,
        })
        .map_err(|e| BackendError::Rejected(e.to_string()))?;
        if let Ok(mut started) = self.started.lock() {
            started.insert(vm_id.to_string(), process.clone());
        }
        let api = FirecrackerApi::new(dir.api_socket());
        let deadline = tokio::time::Instant::now() + API_SOCKET_TIMEOUT;
        loop {
            match api.instance_info().await {
                Ok(_) => return Ok(api),
                Err(e) => {
                    if !process.is_alive() {
                        return Err(other(format!(
                            "firecracker exited at start (code {})",
                            process.exit_code().unwrap_or(-1)
                        )));
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Err(other(format!(
                            "firecracker did not open its API socket within {API_SOCKET_TIMEOUT:?}: {e}"
                        )));
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn configure_observability(
        &self,
        api: &FirecrackerApi,
        dir: &VmDir,
    ) -> Result<(), BackendError> {
        api.put_logger(&Logger {
            log_path: dir.vmm_path(&dir.log()),
            level: self.config.log_level,
            show_level: true,
            show_log_origin: false,
        })
        .await
        .map_err(api_error)?;
        api.put_metrics(&Metrics {
            metrics_path: dir.vmm_path(&dir.metrics()),
        })
        .await
        .map_err(api_error)
    }

    async fn configure(
        &self,
        api: &FirecrackerApi,
        dir: &VmDir,
        spec: &SandboxSpec,
        kernel: PathBuf,
        initrd: PathBuf,
    ) -> Result<(), BackendError> {
        self.configure_observability(api, dir).await?;
        api.put_boot_source(&BootSource {
            kernel_image_path: kernel,
            boot_args: Some(image::kernel_cmdline(spec.network.as_ref())),
            initrd_path: Some(initrd),
        })
        .await
        .map_err(api_error)?;
        api.put_machine_config(&MachineConfiguration {
            vcpu_count: spec.vcpus,
            mem_size_mib: spec.memory_mb,
            smt: false,
        })
        .await
        .map_err(api_error)?;
        api.put_drive(&Drive {
            drive_id: "rootfs".into(),
            path_on_host: dir.vmm_path(&dir.rootfs()),
            is_root_device: true,
            is_read_only: false,
        })
        .await
        .map_err(api_error)?;
        if let Some(network) = &spec.network {
            api.put_network_interface(&NetworkInterface {
                iface_id: "eth0".into(),
                host_dev_name: network.tap.clone(),
                guest_mac: Some(network.mac.clone()),
            })
            .await
            .map_err(api_error)?;
        }
        api.put_vsock(&Vsock {
            guest_cid: GUEST_CID,
            uds_path: dir.vmm_path(&dir.vsock_socket()),
        })
        .await
        .map_err(api_error)
    }

    /// Stops the VMM (Ctrl-Alt-Del, `grace`, then SIGKILL) and removes the directory.
    async fn remove(&self, vm_id: &str, dir: &VmDir, grace: Duration) {
        if let Some(process) = self.process(vm_id, dir)
            && process.is_alive()
        {
            let mut gone = false;
            if !grace.is_zero() {
                let api = FirecrackerApi::new(dir.api_socket());
                if api.action(ActionType::SendCtrlAltDel).await.is_ok() {
                    gone = process.wait_exit(grace).await;
                }
            }
            if !gone {
                process.kill_and_wait().await;
            }
        }
        if let Ok(mut started) = self.started.lock() {
            started.remove(vm_id);
        }
        cgroup::remove_when_empty(self.cgroups, vm_id).await;
        let _ = std::fs::remove_dir_all(dir.path());
    }

    /// The VMs whose process runs.
    fn live_vm_ids(run_root: &Path, jail_exec: Option<&str>) -> HashSet<String> {
        Self::vm_ids(run_root)
            .unwrap_or_default()
            .into_iter()
            .filter(|vm_id| {
                VmDir::new(run_root, vm_id, jail_exec)
                    .is_ok_and(|dir| VmmProcess::from_pid_file(&dir.pid_file()).is_some())
            })
            .collect()
    }

    /// The VM ids with a directory under the run root.
    fn vm_ids(run_root: &Path) -> Result<Vec<String>, BackendError> {
        let entries = match std::fs::read_dir(run_root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(BackendError::Unavailable(format!(
                    "cannot read {}: {e}",
                    run_root.display()
                )));
            }
        };
        let mut ids: Vec<String> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|id| layout::valid_vm_id(id).is_ok())
            .collect();
        ids.sort();
        Ok(ids)
    }
}

#[async_trait]
impl Backend for FirecrackerBackend {
    fn kind(&self) -> Orchestrator {
        Orchestrator::Firecracker
    }

    fn boot_timeout(&self, _vm_id: &str) -> Option<Duration> {
        Some(self.config.boot_timeout)
    }

    fn failure_context(&self, vm_id: &str) -> Option<String> {
        Some(self.log_tail(vm_id, TAIL_LINES)).filter(|t| !t.is_empty())
    }

    async fn ping(&self) -> Result<(), BackendError> {
        if !self.config.firecracker_bin.is_file() {
            return Err(BackendError::Unavailable(format!(
                "firecracker binary {} not found",
                self.config.firecracker_bin.display()
            )));
        }
        std::fs::create_dir_all(&self.config.run_root).map_err(|e| {
            BackendError::Unavailable(format!(
                "cannot create {}: {e}",
                self.config.run_root.display()
            ))
        })
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<(), BackendError> {
        // Checked before resolving the image so a bad id is reported as such.
        self.vm_dir(&spec.vm_id)?;
        let image = self
            .config
            .images
            .require(&spec.image)
            .map_err(image_error)?;
        self.create_with_image(spec, &image).await
    }

    async fn delete(&self, vm_id: &str) -> Result<(), BackendError> {
        // No valid id, no directory: nothing to remove.
        let Ok(dir) = self.vm_dir(vm_id) else {
            return Ok(());
        };
        if !dir.path().exists() {
            return Ok(());
        }
        self.remove(vm_id, &dir, self.config.stop_grace).await;
        match std::fs::symlink_metadata(dir.path()) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            _ => Err(other(format!("cannot remove {}", dir.path().display()))),
        }
    }

    async fn status(&self, vm_id: &str) -> Result<SandboxState, BackendError> {
        let Ok(dir) = self.vm_dir(vm_id) else {
            return Ok(SandboxState::Missing);
        };
        if !dir.path().is_dir() {
            return Ok(SandboxState::Missing);
        }
        let Some(process) = self.process(vm_id, &dir).filter(VmmProcess::is_alive) else {
            if !dir.pid_file().exists() {
                // Being created: the process is not spawned yet.
                return Ok(SandboxState::Starting);
            }
            return Ok(SandboxState::Exited {
                exit_code: exit_code(&self.started, vm_id, &dir).await,
                killed_for: None,
            });
        };
        let _ = process;
        Ok(
            match FirecrackerApi::new(dir.api_socket()).instance_info().await {
                Ok(info) => match info.state {
                    InstanceState::Paused => SandboxState::Paused,
                    InstanceState::NotStarted => SandboxState::Starting,
                    InstanceState::Running => SandboxState::Running,
                },
                // Alive but busy (e.g. writing a snapshot): still running.
                Err(_) => SandboxState::Running,
            },
        )
    }

    async fn list(&self) -> Result<Vec<SandboxInfo>, BackendError> {
        let mut infos = Vec::new();
        for vm_id in Self::vm_ids(&self.config.run_root)? {
            let state = self.status(&vm_id).await?;
            if state != SandboxState::Missing {
                infos.push(SandboxInfo { vm_id, state });
            }
        }
        Ok(infos)
    }

    fn watch_exits(&self) -> BoxStream<'static, Result<SandboxExit, BackendError>> {
        // Polls the pid files: a VMM's exit has no event to subscribe to that also
        // covers processes started before a worker restart.
        struct Watch {
            started: Arc<Mutex<HashMap<String, VmmProcess>>>,
            run_root: PathBuf,
            jail_exec: Option<String>,
            alive: HashSet<String>,
            pending: Vec<SandboxExit>,
            failed: bool,
        }
        // Seen alive now, so that an exit before the first poll is reported too.
        let jail_exec = self.jail_exec();
        let alive = FirecrackerBackend::live_vm_ids(&self.config.run_root, jail_exec.as_deref());
        let watch = Watch {
            started: Arc::clone(&self.started),
            run_root: self.config.run_root.clone(),
            jail_exec,
            alive,
            pending: Vec::new(),
            failed: false,
        };
        futures::stream::unfold(watch, |mut watch| async move {
            loop {
                if let Some(exit) = watch.pending.pop() {
                    return Some((Ok(exit), watch));
                }
                if watch.failed {
                    return None;
                }
                let ids = match FirecrackerBackend::vm_ids(&watch.run_root) {
                    Ok(ids) => ids,
                    Err(e) => {
                        watch.failed = true;
                        return Some((Err(e), watch));
                    }
                };
                let mut alive = HashSet::new();
                for vm_id in ids {
                    let Ok(dir) = VmDir::new(&watch.run_root, &vm_id, watch.jail_exec.as_deref())
                    else {
                        continue;
                    };
                    if VmmProcess::from_pid_file(&dir.pid_file()).is_some() {
                        alive.insert(vm_id);
                    } else if watch.alive.contains(&vm_id) && dir.path().is_dir() {
                        let exit_code = exit_code(&watch.started, &vm_id, &dir).await;
                        watch.pending.push(SandboxExit { vm_id, exit_code });
                    }
                }
                watch.alive = alive;
                if watch.pending.is_empty() {
                    tokio::time::sleep(WATCH_INTERVAL).await;
                }
            }
        })
        .boxed()
    }

    fn agent_socket(&self, vm_id: &str) -> PathBuf {
        match self.vm_dir(vm_id) {
            Ok(dir) => dir.vsock_socket(),
            Err(_) => self.config.run_root.join(vm_id).join(layout::VSOCK_SOCKET),
        }
    }

    fn agent(&self, vm_id: &str) -> AgentClient {
        AgentClient::hybrid_vsock(self.agent_socket(vm_id), image::AGENT_VSOCK_PORT)
    }

    async fn pause(&self, vm_id: &str) -> Result<(), BackendError> {
        self.running_api(vm_id)
            .await?
            .patch_vm(VmState::Paused)
            .await
            .map_err(api_error)
    }

    async fn resume(&self, vm_id: &str) -> Result<(), BackendError> {
        self.running_api(vm_id)
            .await?
            .patch_vm(VmState::Resumed)
            .await
            .map_err(api_error)
    }

    async fn snapshot(&self, vm_id: &str, snapshot: &Path) -> Result<(), BackendError> {
        let api = self.running_api(vm_id).await?;
        let info = api.instance_info().await.map_err(api_error)?;
        if info.state != InstanceState::Paused {
            return Err(BackendError::Rejected(format!(
                "VM {vm_id} must be paused for a snapshot (it is {:?})",
                info.state
            )));
        }
        let dir = self.vm_dir(vm_id)?;
        let files = layout::SnapshotFiles::new(snapshot);
        // A jailed Firecracker writes inside its chroot; the files move out after.
        let (vmstate, memory) = match dir.jail_root() {
            Some(root) => (root.join("snapshot.vmstate"), root.join("snapshot.memory")),
            None => (files.vmstate(), files.memory()),
        };
        let result = async {
            files.create(vm_id).map_err(other)?;
            api.create_snapshot(&SnapshotCreateParams {
                snapshot_type: SnapshotType::Full,
                snapshot_path: dir.vmm_path(&vmstate),
                mem_file_path: dir.vmm_path(&memory),
            })
            .await
            .map_err(api_error)?;
            if dir.jail_root().is_some() {
                move_file(&vmstate, &files.vmstate()).await?;
                move_file(&memory, &files.memory()).await?;
            }
            // Its size, so that a restore bounds it the same (absent: not jailed
            // before this was recorded; the restore then runs without limits).
            if dir.limits().exists() {
                std::fs::copy(dir.limits(), files.limits()).map_err(|e| {
                    other(format!("cannot write {}: {e}", files.limits().display()))
                })?;
            }
            // The disk as it is now belongs to the memory image: keep a copy.
            image::clone_rootfs(&dir.rootfs(), &files.rootfs())
                .await
                .map_err(image_error)
        }
        .await;
        if result.is_err() {
            files.remove();
            if dir.jail_root().is_some() {
                let _ = std::fs::remove_file(&vmstate);
                let _ = std::fs::remove_file(&memory);
            }
        }
        result
    }
}

/// The exit code of a VM whose process is gone: ours from the reaper, else the one
/// Firecracker logged while exiting, else -1.
async fn exit_code(started: &Mutex<HashMap<String, VmmProcess>>, vm_id: &str, dir: &VmDir) -> i64 {
    let ours = started
        .lock()
        .ok()
        .and_then(|started| started.get(vm_id).cloned());
    let mut reaped = None;
    if let Some(process) = ours {
        // Dead in /proc a moment before the reaper has its status.
        process.wait_exit(Duration::from_secs(1)).await;
        reaped = process.exit_code();
    }
    reaped
        .map(i64::from)
        .or_else(|| layout::logged_exit_code(&dir.log()))
        .or_else(|| layout::logged_exit_code(&dir.console()))
        .unwrap_or(-1)
}

/// Makes `src` visible to Firecracker and returns the path it knows it by: as is,
/// or hard-linked (else copied) into the jail's chroot. A missing `src` is left for
/// Firecracker to report.
fn stage(dir: &VmDir, src: &Path, name: &str) -> Result<PathBuf, BackendError> {
    let Some(root) = dir.jail_root() else {
        return Ok(src.to_path_buf());
    };
    let dst = root.join(name);
    if src.exists()
        && std::fs::hard_link(src, &dst).is_err()
        && let Err(e) = std::fs::copy(src, &dst)
    {
        let _ = std::fs::remove_file(&dst);
        return Err(other(format!(
            "cannot copy {} into the jail: {e}",
            src.display()
        )));
    }
    Ok(dir.vmm_path(&dst))
}

/// Renames, or copies across filesystems.
async fn move_file(src: &Path, dst: &Path) -> Result<(), BackendError> {
    if tokio::fs::rename(src, dst).await.is_ok() {
        return Ok(());
    }
    let copied = tokio::fs::copy(src, dst).await;
    let _ = tokio::fs::remove_file(src).await;
    copied.map(drop).map_err(|e| {
        other(format!(
            "cannot move {} to {}: {e}",
            src.display(),
            dst.display()
        ))
    })
}

impl FirecrackerBackend {
    /// The API of a VM whose process runs; a clear error otherwise.
    async fn running_api(&self, vm_id: &str) -> Result<FirecrackerApi, BackendError> {
        let dir = self.vm_dir(vm_id)?;
        match self.status(vm_id).await? {
            SandboxState::Missing => {
                Err(BackendError::Rejected(format!("no firecracker VM {vm_id}")))
            }
            SandboxState::Exited { exit_code, .. } => Err(BackendError::Rejected(format!(
                "firecracker VM {vm_id} has exited (code {exit_code}){}",
                self.log_tail(vm_id, TAIL_LINES)
            ))),
            _ => Ok(FirecrackerApi::new(dir.api_socket())),
        }
    }
}
