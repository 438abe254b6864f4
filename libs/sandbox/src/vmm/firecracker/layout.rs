//! Where a Firecracker VM's files live, and reading them back (log tails, the exit
//! code Firecracker logs). Kept apart from the backend so the rules (id syntax, the
//! unix socket length limit) are in one place.

use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};

pub const API_SOCKET: &str = "api.sock";
pub const VSOCK_SOCKET: &str = "vsock.sock";
pub const ROOTFS: &str = "rootfs.ext4";
pub const LOG: &str = "firecracker.log";
pub const METRICS: &str = "metrics.json";
pub const CONSOLE: &str = "console.log";
pub const PID_FILE: &str = "firecracker.pid";

/// `sun_path` holds 108 bytes including the terminating NUL.
pub const MAX_SOCKET_PATH: usize = 107;
/// Bytes read from the end of a log for a tail.
const TAIL_BYTES: u64 = 64 * 1024;

/// Ids become directory names and Firecracker instance ids.
pub fn valid_vm_id(vm_id: &str) -> Result<(), String> {
    let ok = !vm_id.is_empty()
        && vm_id.len() <= 64
        && vm_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid VM id {vm_id:?} for firecracker: 1-64 characters of A-Z, a-z, 0-9, '-', '_'"
        ))
    }
}

/// Firecracker's `--id` takes letters, digits and '-'.
pub fn instance_id(vm_id: &str) -> String {
    vm_id.replace('_', "-")
}

/// The jail id under the jailer: each VM has a chroot base of its own, so a short
/// constant keeps the socket paths short.
pub const JAIL_ID: &str = crate::vmm::cgroup::LEAF;
/// The jailer's chroot base inside a VM's directory.
pub const JAIL_BASE: &str = "jail";

/// The directory of one VM. Under the jailer, the files Firecracker opens live in
/// its chroot (`jail/<exec name>/vm/root/`) and it sees them as `/<name>`.
#[derive(Debug, Clone)]
pub struct VmDir {
    path: PathBuf,
    /// The chroot, when jailed.
    root: Option<PathBuf>,
}

impl VmDir {
    /// `jail_exec`: the file name of the binary the jailer runs, when jailed.
    pub fn new(run_root: &Path, vm_id: &str, jail_exec: Option<&str>) -> Result<VmDir, String> {
        valid_vm_id(vm_id)?;
        let path = run_root.join(vm_id);
        let root = jail_exec.map(|exec| path.join(JAIL_BASE).join(exec).join(JAIL_ID).join("root"));
        let dir = VmDir { path, root };
        for socket in [dir.api_socket(), dir.vsock_socket()] {
            let len = socket.as_os_str().len();
            if len > MAX_SOCKET_PATH {
                return Err(format!(
                    "socket path {} is {len} bytes, more than a unix socket allows ({MAX_SOCKET_PATH}): choose a shorter firecracker run directory",
                    socket.display()
                ));
            }
        }
        Ok(dir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    /// The jail's chroot, if jailed.
    pub fn jail_root(&self) -> Option<&Path> {
        self.root.as_deref()
    }
    /// The jailer's `--chroot-base-dir`.
    pub fn jail_base(&self) -> PathBuf {
        self.path.join(JAIL_BASE)
    }
    /// Where the files Firecracker opens live on the host.
    pub fn vmm_files(&self) -> &Path {
        self.root.as_deref().unwrap_or(&self.path)
    }
    /// A host path in [`VmDir::vmm_files`] as Firecracker sees it.
    pub fn vmm_path(&self, host: &Path) -> PathBuf {
        match &self.root {
            Some(root) => match host.strip_prefix(root) {
                Ok(inside) => Path::new("/").join(inside),
                Err(_) => host.to_path_buf(),
            },
            None => host.to_path_buf(),
        }
    }
    pub fn api_socket(&self) -> PathBuf {
        self.vmm_files().join(API_SOCKET)
    }
    pub fn vsock_socket(&self) -> PathBuf {
        self.vmm_files().join(VSOCK_SOCKET)
    }
    pub fn rootfs(&self) -> PathBuf {
        self.vmm_files().join(ROOTFS)
    }
    pub fn log(&self) -> PathBuf {
        self.vmm_files().join(LOG)
    }
    pub fn metrics(&self) -> PathBuf {
        self.vmm_files().join(METRICS)
    }
    pub fn console(&self) -> PathBuf {
        self.path.join(CONSOLE)
    }
    pub fn pid_file(&self) -> PathBuf {
        self.path.join(PID_FILE)
    }
    /// The VM's size, which its cgroup limits follow (`cgroup::Limits`).
    pub fn limits(&self) -> PathBuf {
        self.path.join(LIMITS)
    }
}

const LIMITS: &str = "limits";

/// The files of one snapshot: Firecracker's VM state and memory, a copy of the disk
/// as it was, and the id of the VM it was taken from.
#[derive(Debug, Clone)]
pub struct SnapshotFiles {
    dir: PathBuf,
}

const SNAPSHOT_VM_ID: &str = "vm_id";

impl SnapshotFiles {
    pub fn new(dir: &Path) -> Self {
        SnapshotFiles {
            dir: dir.to_path_buf(),
        }
    }
    pub fn vmstate(&self) -> PathBuf {
        self.dir.join("vmstate")
    }
    pub fn memory(&self) -> PathBuf {
        self.dir.join("memory")
    }
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join(ROOTFS)
    }
    /// The VM's size when it was taken (absent in snapshots of older versions).
    pub fn limits(&self) -> PathBuf {
        self.dir.join(LIMITS)
    }

    /// Makes the directory (refusing one that holds a snapshot) and records the VM.
    pub fn create(&self, vm_id: &str) -> Result<(), String> {
        if self.dir.join(SNAPSHOT_VM_ID).exists() {
            return Err(format!("{} holds a snapshot already", self.dir.display()));
        }
        std::fs::create_dir_all(&self.dir)
            .and_then(|()| std::fs::write(self.dir.join(SNAPSHOT_VM_ID), vm_id))
            .map_err(|e| format!("cannot write snapshot {}: {e}", self.dir.display()))
    }

    pub fn read_vm_id(&self) -> Result<String, String> {
        let id = std::fs::read_to_string(self.dir.join(SNAPSHOT_VM_ID))
            .map_err(|e| format!("{} is not a firecracker snapshot: {e}", self.dir.display()))?;
        for file in [self.vmstate(), self.memory(), self.rootfs()] {
            if !file.is_file() {
                return Err(format!("snapshot file {} is missing", file.display()));
            }
        }
        Ok(id.trim().to_string())
    }

    /// Removes what a failed snapshot wrote (only our files: `dir` may be shared).
    pub fn remove(&self) {
        for file in [
            self.vmstate(),
            self.memory(),
            self.rootfs(),
            self.limits(),
            self.dir.join(SNAPSHOT_VM_ID),
        ] {
            let _ = std::fs::remove_file(file);
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// The last `lines` lines of a text file (empty if unreadable).
pub fn tail_lines(path: &Path, lines: usize) -> String {
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(TAIL_BYTES);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut bytes = Vec::new();
    if file.read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The code of Firecracker's last "… exit_code=N" line, if it logged one.
pub fn logged_exit_code(path: &Path) -> Option<i64> {
    let tail = tail_lines(path, 20);
    tail.lines()
        .rev()
        .find_map(|line| line.split("exit_code=").nth(1))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches(|c: char| !c.is_ascii_digit())
                .parse()
                .ok()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_socket_lengths_are_checked() {
        assert!(VmDir::new(Path::new("/run/fc"), "vm-1_a", None).is_ok());
        for bad in ["", "../x", "a/b", "a b", &"x".repeat(65)] {
            assert!(
                VmDir::new(Path::new("/run/fc"), bad, None).is_err(),
                "{bad:?}"
            );
        }
        let deep = PathBuf::from("/").join("d".repeat(100));
        let err = VmDir::new(&deep, "vm-1", None).unwrap_err();
        assert!(err.contains("unix socket"), "{err}");
        assert_eq!(instance_id("a_b"), "a-b");
        let jailed = VmDir::new(Path::new("/run/fc"), "v1", Some("firecracker")).unwrap();
        let root = PathBuf::from("/run/fc/v1/jail/firecracker/vm/root");
        assert_eq!(jailed.api_socket(), root.join(API_SOCKET));
        assert_eq!(jailed.vmm_path(&jailed.rootfs()), Path::new("/rootfs.ext4"));
        assert_eq!(jailed.console(), Path::new("/run/fc/v1/console.log"));
    }

    #[test]
    fn tails_and_exit_codes_are_read_from_logs() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("fc.log");
        std::fs::write(
            &log,
            "a\nb\n\n[x:main] Firecracker exiting with error. exit_code=1\n",
        )
        .unwrap();
        assert_eq!(
            tail_lines(&log, 2),
            "b\n[x:main] Firecracker exiting with error. exit_code=1"
        );
        assert_eq!(logged_exit_code(&log), Some(1));
        assert_eq!(logged_exit_code(&dir.path().join("none")), None);
    }
}
