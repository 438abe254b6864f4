//! Noticing that a QEMU process ended or stopped, and the guest's run state.

use super::*;

/// Polls `run_root` for VMs whose QEMU died since this watcher saw them alive (or
/// that this process started). Each exit is reported once.
pub(super) struct ExitWatcher {
    pub(super) inner: Arc<Inner>,
    pub(super) seen_alive: HashSet<String>,
    pub(super) reported: HashSet<String>,
}

impl ExitWatcher {
    pub(super) fn poll(&mut self) -> Vec<Result<SandboxExit, BackendError>> {
        let ids = match self.inner.vm_ids() {
            Ok(ids) => ids,
            Err(e) => {
                return vec![Err(BackendError::Other(format!(
                    "cannot read {}: {e}",
                    self.inner.config.run_root.display()
                )))];
            }
        };
        let present: HashSet<&String> = ids.iter().collect();
        self.seen_alive.retain(|id| present.contains(id));
        self.reported.retain(|id| present.contains(id));
        let mut exits = Vec::new();
        for vm_id in &ids {
            match self.inner.presence(vm_id) {
                VmPresence::Alive => {
                    self.seen_alive.insert(vm_id.clone());
                }
                VmPresence::Exited(exit_code) => {
                    let ours = self
                        .inner
                        .spawned
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .contains_key(vm_id);
                    if (ours || self.seen_alive.contains(vm_id))
                        && self.reported.insert(vm_id.clone())
                    {
                        exits.push(Ok(SandboxExit {
                            vm_id: vm_id.clone(),
                            exit_code,
                        }));
                    }
                }
                VmPresence::Missing | VmPresence::Creating => {}
            }
        }
        exits
    }
}

/// Whether a process is stopped by a signal (`T` in `/proc/<pid>/stat`).
pub(super) fn is_stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let (_, rest) = stat.rsplit_once(')')?;
            rest.trim_start().chars().next()
        })
        .is_some_and(|state| state == 'T')
}

/// Waits (briefly) until a process is stopped (`stopped`) or runs again.
pub(super) async fn wait_stopped(process: &VmmProcess, stopped: bool) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        if !process.is_alive() {
            return Err(format!("process {} is gone", process.pid()));
        }
        if is_stopped(process.pid()) == stopped {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            let what = if stopped { "stop" } else { "continue" };
            return Err(format!("process {} did not {what}", process.pid()));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub(super) fn run_state(status: &str) -> SandboxState {
    match status {
        "running" => SandboxState::Running,
        "paused" | "suspended" => SandboxState::Paused,
        "prelaunch" | "inmigrate" | "restore-vm" | "finish-migrate" => SandboxState::Starting,
        // shutdown, guest-panicked, internal-error, …: QEMU is about to exit or stuck;
        // it still exists, and the next look reports the exit.
        _ => SandboxState::Running,
    }
}
