//! Each container's run directory on the host: a small tmpfs with the agent's
//! socket and token, owned by the remapped root under user namespaces.

use super::*;

/// Writes the agent's token for it to take at start (mode 0600: only root in the
/// container reads it, and the agent deletes it), owned by `owner` (the remapped
/// root) where the engine remaps user namespaces.
pub(super) fn write_token_file(
    path: &Path,
    token: &str,
    owner: Option<(u32, u32)>,
) -> Result<(), BackendError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(token.as_bytes()))
        .and_then(|()| match owner {
            Some((uid, gid)) => std::os::unix::fs::chown(path, Some(uid), Some(gid)),
            None => Ok(()),
        })
        .map_err(|e| BackendError::Other(format!("cannot write {}: {e}", path.display())))
}

/// The remapped uid and gid Docker names its root dir after under `userns-remap`
/// (`/var/lib/docker/100000.100000`).
pub(super) fn remapped_ids(root_dir: &str) -> Option<(u32, u32)> {
    let last = Path::new(root_dir).file_name()?.to_str()?;
    let (uid, gid) = last.split_once('.')?;
    Some((uid.parse().ok()?, gid.parse().ok()?))
}

/// Mounts a small tmpfs on a new run directory, so that what the container writes
/// there is bounded and never reaches the host's disk. Needs root; without it the
/// directory stays a plain one (and the disk watch does not see it).
#[allow(unsafe_code)]
pub(super) fn mount_run_dir(run_dir: &Path, owner: Option<(u32, u32)>) -> Result<(), BackendError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return match owner {
            Some((uid, gid)) => {
                std::os::unix::fs::chown(run_dir, Some(uid), Some(gid)).map_err(|e| {
                    BackendError::Other(format!(
                        "cannot hand {} to the remapped root: {e}",
                        run_dir.display()
                    ))
                })
            }
            None => Ok(()),
        };
    }
    let cstr = |s: &str| {
        std::ffi::CString::new(s)
            .map_err(|_| BackendError::Other(format!("NUL in mount argument {s:?}")))
    };
    let target = cstr(&run_dir.to_string_lossy())?;
    // Under user namespace remapping, the container's root is the owner.
    let options = match owner {
        Some((uid, gid)) => format!("{RUN_DIR_TMPFS},uid={uid},gid={gid}"),
        None => RUN_DIR_TMPFS.to_string(),
    };
    let (source, fstype, data) = (cstr("tmpfs")?, cstr("tmpfs")?, cstr(&options)?);
    // SAFETY: every pointer is a valid NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(BackendError::Other(format!(
            "cannot mount a tmpfs on {}: {}",
            run_dir.display(),
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// Unmounts a run directory's tmpfs, if it has one.
#[allow(unsafe_code)]
pub(super) fn unmount_run_dir(run_dir: &Path) {
    let Ok(target) = std::ffi::CString::new(run_dir.to_string_lossy().as_bytes()) else {
        return;
    };
    // SAFETY: a valid NUL-terminated path; EINVAL (not a mount point) and ENOENT are
    // the expected answers for a directory without one.
    unsafe {
        libc::umount2(target.as_ptr(), libc::MNT_DETACH);
    }
}
