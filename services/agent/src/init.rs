//! `aetherium-agent init -- <agent options>`: PID 1 of a microVM, started by the
//! initramfs after `switch_root`. It finishes the mounts a system needs, sets the
//! hostname, runs the ordinary agent as its child (orphaned processes then reparent
//! to init, which reaps them, not to the agent, whose runtime reaps only its own),
//! and ends the VM when the agent exits or the VMM asks to stop (SIGTERM, or
//! Ctrl-Alt-Del, which the kernel turns into SIGINT once init has asked for it).

use std::process::ExitCode;
use std::time::Duration;

use rustix::mount::MountFlags;
use rustix::process::{Pid, Signal, WaitOptions, WaitStatus};
use rustix::system::RebootCommand;
use tokio::signal::unix::{Signal as SignalStream, SignalKind, signal};

/// How long the agent gets to stop after SIGTERM before the VM reboots anyway.
const STOP_GRACE: Duration = Duration::from_secs(3);

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub fn run(agent_args: Vec<String>) -> ExitCode {
    if rustix::process::getpid() != Pid::INIT {
        log!("init: runs only as PID 1 of a microVM; start the agent with --listen instead");
        return ExitCode::from(2);
    }
    prepare_system();
    let outcome = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(supervise(agent_args)),
        Err(e) => format!("cannot start the async runtime: {e}"),
    };
    log!("init: {outcome}; rebooting");
    rustix::fs::sync();
    if let Err(e) = rustix::system::reboot(RebootCommand::Restart) {
        log!("init: reboot failed: {e}");
    }
    // PID 1 exiting panics the kernel, which (panic=1 reboot=k) ends the VM as well.
    ExitCode::FAILURE
}

/// Best effort: a failure is logged and the agent still starts.
fn prepare_system() {
    let nosuid_nodev = MountFlags::NOSUID | MountFlags::NODEV;
    let mounts: [(&str, &str, MountFlags, &std::ffi::CStr); 3] = [
        (
            "/dev/pts",
            "devpts",
            MountFlags::NOSUID | MountFlags::NOEXEC,
            c"gid=5,mode=0620,ptmxmode=0666",
        ),
        ("/dev/shm", "tmpfs", nosuid_nodev, c"mode=1777"),
        ("/run", "tmpfs", nosuid_nodev, c"mode=0755"),
    ];
    for (target, fs, flags, data) in mounts {
        if let Err(e) = std::fs::create_dir_all(target) {
            log!("init: cannot create {target}: {e}");
            continue;
        }
        if let Err(e) = rustix::mount::mount(fs, target, fs, flags, data) {
            log!("init: cannot mount {fs} on {target}: {e}");
        }
    }
    let hostname = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "aetherium".to_string());
    if let Err(e) = rustix::system::sethostname(hostname.as_bytes()) {
        log!("init: cannot set the hostname: {e}");
    }
    // Ctrl-Alt-Del (the VMM's graceful stop) then signals init instead of resetting.
    if let Err(e) = rustix::system::reboot(RebootCommand::CadOff) {
        log!("init: cannot trap Ctrl-Alt-Del: {e}");
    }
}

/// Runs the agent and reaps every child until the agent is gone or a stop is asked.
/// Returns why it ended.
async fn supervise(agent_args: Vec<String>) -> String {
    let streams = (
        signal(SignalKind::child()),
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    let (Ok(mut children), Ok(mut terminate), Ok(mut interrupt)) = streams else {
        return "cannot install signal handlers".into();
    };
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return format!("cannot find the agent's own binary: {e}"),
    };
    let mut command = std::process::Command::new(exe);
    command.args(&agent_args);
    if std::env::var_os("PATH").is_none() {
        command.env("PATH", DEFAULT_PATH);
    }
    let agent = match command.spawn() {
        Ok(child) => match i32::try_from(child.id()).ok().and_then(Pid::from_raw) {
            Some(pid) => pid,
            None => return "the agent has no valid pid".into(),
        },
        Err(e) => return format!("cannot start the agent: {e}"),
    };
    loop {
        if let Some(status) = reap_all(agent) {
            return format!("the agent exited ({})", describe(status));
        }
        tokio::select! {
            _ = children.recv() => {}
            _ = terminate.recv() => return stop(agent, &mut children, "SIGTERM").await,
            _ = interrupt.recv() => return stop(agent, &mut children, "Ctrl-Alt-Del").await,
        }
    }
}

/// Reaps every exited child; returns the agent's status if it was one of them.
fn reap_all(agent: Pid) -> Option<WaitStatus> {
    let mut agent_status = None;
    while let Ok(Some((pid, status))) = rustix::process::wait(WaitOptions::NOHANG) {
        if pid == agent {
            agent_status = Some(status);
        }
    }
    agent_status
}

async fn stop(agent: Pid, children: &mut SignalStream, why: &str) -> String {
    log!("init: {why}: stopping the agent");
    let _ = rustix::process::kill_process(agent, Signal::TERM);
    let deadline = tokio::time::Instant::now() + STOP_GRACE;
    loop {
        if let Some(status) = reap_all(agent) {
            return format!("{why}: the agent stopped ({})", describe(status));
        }
        if tokio::time::timeout_at(deadline, children.recv())
            .await
            .is_err()
        {
            return format!("{why}: the agent did not stop within {STOP_GRACE:?}");
        }
    }
}

fn describe(status: WaitStatus) -> String {
    if let Some(code) = status.exit_status() {
        format!("exit code {code}")
    } else if let Some(signal) = status.terminating_signal() {
        format!("killed by signal {signal}")
    } else {
        "unknown status".into()
    }
}
