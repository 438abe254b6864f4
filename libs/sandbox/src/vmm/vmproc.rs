//! The processes a microVM backend runs on the host (`firecracker`,
//! `qemu-system-x86_64`, `vhost-device-vsock`): started in their own process group so
//! that a Ctrl-C to the worker does not reach them and they outlive a worker restart,
//! and recorded in a pid file (pid + kernel start time) so that a restarted worker
//! finds exactly its own processes again and never signals a recycled pid.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::sync::watch;

/// How one process is started.
#[derive(Debug, Clone)]
pub struct Spawn {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// Receives the process's stdout and stderr (appended).
    pub log: PathBuf,
    pub pid_file: PathBuf,
    /// `cgroup.procs` files the process joins before it execs, so that it never
    /// runs outside its VM's limits ([`crate::vmm::cgroup::make`]).
    pub cgroup_procs: Vec<PathBuf>,
}

/// A VMM (or helper) process this host runs for one sandbox.
#[derive(Debug, Clone)]
pub struct VmmProcess {
    pid: u32,
    start_time: u64,
    /// Set for processes this process started: the exit status once reaped.
    exit: Option<watch::Receiver<Option<i32>>>,
}

/// Makes the child write `0` (itself) into each `cgroup.procs` file between fork
/// and exec; a failure fails the spawn.
#[allow(unsafe_code)]
fn join_cgroups_in_child(
    command: &mut tokio::process::Command,
    procs: &[PathBuf],
) -> std::io::Result<()> {
    if procs.is_empty() {
        return Ok(());
    }
    let paths = procs
        .iter()
        .map(|p| {
            std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
                .map_err(|_| std::io::Error::other(format!("{} holds a NUL", p.display())))
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    // SAFETY: `pre_exec` closures run in the forked child, where only
    // async-signal-safe calls are allowed: this one makes open(2), write(2) and
    // close(2) calls on paths converted before the fork, and allocates nothing
    // (`last_os_error` does not allocate).
    unsafe {
        command.pre_exec(move || {
            for path in &paths {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                let error = std::io::Error::last_os_error();
                libc::close(fd);
                if written != 1 {
                    return Err(error);
                }
            }
            Ok(())
        });
    }
    Ok(())
}

impl VmmProcess {
    /// Starts the process and writes its pid file. The child is reaped by a task of
    /// its own, which also makes its exit visible to [`VmmProcess::wait_exit`].
    pub fn spawn(spec: &Spawn) -> std::io::Result<VmmProcess> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log)?;
        let mut command = tokio::process::Command::new(&spec.program);
        command
            .args(&spec.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .kill_on_drop(false);
        join_cgroups_in_child(&mut command, &spec.cgroup_procs)?;
        let mut child = command.spawn().map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot start {}: {e}", spec.program.display()),
            )
        })?;
        let pid = child
            .id()
            .ok_or_else(|| std::io::Error::other("the process exited at once"))?;
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            let code = match child.wait().await {
                Ok(status) => exit_code(status),
                Err(_) => -1,
            };
            let _ = tx.send(Some(code));
        });
        let start_time = start_time(pid).unwrap_or(0);
        let process = VmmProcess {
            pid,
            start_time,
            exit: Some(rx),
        };
        if let Err(e) = std::fs::write(&spec.pid_file, format!("{pid} {start_time}\n")) {
            process.kill();
            return Err(e);
        }
        Ok(process)
    }

    /// The process a pid file names, if that very process is still alive.
    pub fn from_pid_file(path: &Path) -> Option<VmmProcess> {
        let text = std::fs::read_to_string(path).ok()?;
        let mut parts = text.split_whitespace();
        let pid: u32 = parts.next()?.parse().ok()?;
        let recorded: u64 = parts.next()?.parse().ok()?;
        let process = VmmProcess {
            pid,
            start_time: recorded,
            exit: None,
        };
        process.is_alive().then_some(process)
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the process runs (a zombie or a recycled pid counts as gone).
    pub fn is_alive(&self) -> bool {
        if let Some(exit) = &self.exit
            && exit.borrow().is_some()
        {
            return false;
        }
        match proc_stat(self.pid) {
            Some((state, start)) => state != 'Z' && state != 'X' && start == self.start_time,
            None => false,
        }
    }

    /// The exit code if this process started it and it has been reaped.
    pub fn exit_code(&self) -> Option<i32> {
        self.exit.as_ref().and_then(|rx| *rx.borrow())
    }

    /// Whether this process started it, it has died and its reaper has not yet
    /// recorded the status (a zombie for a moment): the exit code is coming.
    pub fn exit_pending(&self) -> bool {
        self.exit
            .as_ref()
            .is_some_and(|rx| rx.borrow().is_none() && rx.has_changed().is_ok())
    }

    /// Sends `signal` if the process is still the one recorded.
    #[allow(unsafe_code)]
    pub fn signal(&self, signal: i32) -> bool {
        if !self.is_alive() {
            return false;
        }
        let Ok(pid) = i32::try_from(self.pid) else {
            return false;
        };
        // SAFETY: kill(2) with a pid we checked is our (still running) process.
        unsafe { libc::kill(pid, signal) == 0 }
    }

    pub fn kill(&self) -> bool {
        self.signal(libc::SIGKILL)
    }

    /// Waits until the process is gone, at most `timeout`. True if it is gone.
    pub async fn wait_exit(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        if let Some(mut rx) = self.exit.clone() {
            let done = tokio::time::timeout_at(deadline, rx.wait_for(Option::is_some)).await;
            return matches!(done, Ok(Ok(_))) || !self.is_alive();
        }
        // Not our child (adopted after a restart): poll /proc.
        loop {
            if !self.is_alive() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL, then waits until it is gone.
    pub async fn kill_and_wait(&self) {
        self.kill();
        self.wait_exit(Duration::from_secs(10)).await;
    }
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// State letter and start time (clock ticks since boot) from `/proc/<pid>/stat`.
fn proc_stat(pid: u32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: parse after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    // Field 22 of the whole line is the 20th after the name.
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

fn start_time(pid: u32) -> Option<u64> {
    proc_stat(pid).map(|(_, start)| start)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spawn_sleep(dir: &Path, name: &str) -> VmmProcess {
        VmmProcess::spawn(&Spawn {
            program: "sleep".into(),
            args: vec!["30".into()],
            log: dir.join(format!("{name}.log")),
            pid_file: dir.join(format!("{name}.pid")),
            cgroup_procs: Vec::new(),
        })
        .unwrap()
    }

    #[tokio::test]
    async fn spawned_process_is_found_again_and_killed_by_pid_file() {
        let dir = tempfile::tempdir().unwrap();
        let process = spawn_sleep(dir.path(), "a");
        assert!(process.is_alive());
        let adopted = VmmProcess::from_pid_file(&dir.path().join("a.pid")).unwrap();
        assert_eq!(adopted.pid(), process.pid());
        assert!(adopted.kill());
        // A zombie whose reaper has not run yet (this runtime has one thread and we
        // have not yielded): dead, with its code still to come, never "exited with -1".
        while proc_stat(process.pid()).is_some_and(|(state, _)| state != 'Z') {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!process.is_alive());
        assert!(process.exit_pending());
        assert!(process.wait_exit(Duration::from_secs(5)).await);
        assert!(!process.exit_pending());
        assert_eq!(process.exit_code(), Some(128 + libc::SIGKILL));
        assert!(!adopted.is_alive());
        assert!(VmmProcess::from_pid_file(&dir.path().join("a.pid")).is_none());
    }

    #[tokio::test]
    async fn a_recycled_pid_is_never_signalled() {
        let dir = tempfile::tempdir().unwrap();
        let process = spawn_sleep(dir.path(), "b");
        // Same pid, another start time: a different process as far as we know.
        std::fs::write(
            dir.path().join("b.pid"),
            format!("{} {}\n", process.pid(), process.start_time + 1),
        )
        .unwrap();
        assert!(VmmProcess::from_pid_file(&dir.path().join("b.pid")).is_none());
        assert!(process.is_alive());
        process.kill_and_wait().await;
        assert!(!process.is_alive());
    }

    #[tokio::test]
    async fn a_missing_program_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = VmmProcess::spawn(&Spawn {
            program: dir.path().join("no-such-vmm"),
            args: vec![],
            log: dir.path().join("x.log"),
            pid_file: dir.path().join("x.pid"),
            cgroup_procs: Vec::new(),
        })
        .unwrap_err();
        assert!(err.to_string().contains("no-such-vmm"), "{err}");
        assert!(!dir.path().join("x.pid").exists());
    }
}
