//! A seccomp filter for the processes the agent starts, on top of the engine's own
//! (`--syscall-filter`; the Docker backend asks for it). Docker's default profile
//! leaves open some of the kernel's favourite attack surfaces: io_uring (refused by
//! Docker only from 25.0 on) and userfaultfd (it lets an exploit pause the kernel
//! in the middle of a copy). Those, and the kernel keyring, bpf and perf events
//! (which Docker refuses without privileges, refused here whatever the profile),
//! fail with EPERM. Filters stack: sandbox code can add its own, never remove ours.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

/// The refused system calls.
const REFUSED: [(&str, libc::c_long); 9] = [
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("add_key", libc::SYS_add_key),
    ("keyctl", libc::SYS_keyctl),
    ("request_key", libc::SYS_request_key),
];

static FILTER: OnceLock<BpfProgram> = OnceLock::new();

/// Compiles the filter every process started from now on gets.
pub fn enable() -> Result<(), String> {
    let arch = if cfg!(target_arch = "x86_64") {
        TargetArch::x86_64
    } else if cfg!(target_arch = "aarch64") {
        TargetArch::aarch64
    } else {
        return Err("--syscall-filter: not available on this architecture".into());
    };
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> = REFUSED
        .iter()
        .map(|(_, number)| (*number, Vec::new()))
        .collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(|e| format!("--syscall-filter: {e}"))?;
    let program = BpfProgram::try_from(filter).map_err(|e| format!("--syscall-filter: {e}"))?;
    let _ = FILTER.set(program);
    Ok(())
}

/// Names of the refused system calls (for the log line at start).
pub fn refused_names() -> Vec<&'static str> {
    REFUSED.iter().map(|(name, _)| *name).collect()
}

/// Makes `command`'s process install the filter just before it executes, once it
/// runs as its user (no-op without [`enable`]).
#[allow(unsafe_code)]
pub fn apply_in_child(command: &mut tokio::process::Command) {
    let Some(program) = FILTER.get() else {
        return;
    };
    // SAFETY: `pre_exec` closures run in the forked child between fork and exec,
    // where only async-signal-safe operations are allowed. `apply_filter` makes two
    // system calls, prctl(PR_SET_NO_NEW_PRIVS) and seccomp(SECCOMP_SET_MODE_FILTER),
    // on a program compiled before the fork (borrowed, never allocated here); its
    // error values wrap `io::Error::last_os_error`, which does not allocate.
    unsafe {
        command.pre_exec(move || {
            seccompiler::apply_filter(program).map_err(|e| match e {
                seccompiler::Error::Prctl(e) | seccompiler::Error::Seccomp(e) => e,
                _ => std::io::Error::from_raw_os_error(libc::EINVAL),
            })
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_compiles_and_lists_io_uring_and_userfaultfd() {
        enable().unwrap();
        assert!(!FILTER.get().unwrap().is_empty());
        let names = refused_names();
        assert!(names.contains(&"io_uring_setup") && names.contains(&"userfaultfd"));
    }
}
