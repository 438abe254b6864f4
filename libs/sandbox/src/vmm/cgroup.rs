//! The cgroup limits a microVM's processes run under, in
//! `<controller>/aetherium/<instance id>/vm`: a jailed Firecracker's are made by
//! the jailer before it execs Firecracker ([`jailer_args`]); QEMU's and an unjailed
//! Firecracker's by us ([`make`]), and each process joins them before it execs
//! ([`crate::vmm::vmproc::Spawn::cgroup_procs`]). So no VM ever runs unbounded; we
//! remove those cgroups once its processes are gone ([`remove`]).
//!
//! A VM gets its vCPUs' worth of CPU time (the VMM's own threads share it) and its
//! guest memory plus [`MEMORY_OVERHEAD_MB`] (the VMM itself, page tables, device
//! buffers, and the page cache of its disk, which the kernel reclaims at the
//! limit). cgroup v2 when `/sys/fs/cgroup` is the unified hierarchy, else v1.

use std::path::{Path, PathBuf};

/// What a VM may take besides its guest memory, in MiB.
pub const MEMORY_OVERHEAD_MB: u64 = 128;
/// The CPU bandwidth period, in µs (the kernel's default).
const PERIOD_US: u64 = 100_000;
/// Our subtree in every hierarchy.
const PARENT: &str = "aetherium";
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// A VM's size, which its limits follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub vcpus: u32,
    pub memory_mb: u64,
}

impl Limits {
    /// As written into a VM's directory and its snapshots: `<vcpus> <memory_mb>`.
    pub fn to_file_text(self) -> String {
        format!("{} {}\n", self.vcpus, self.memory_mb)
    }

    pub fn from_file_text(text: &str) -> Option<Limits> {
        let mut words = text.split_whitespace();
        let vcpus = words.next()?.parse().ok().filter(|v| *v > 0)?;
        let memory_mb = words.next()?.parse().ok().filter(|m| *m > 0)?;
        words
            .next()
            .is_none()
            .then_some(Limits { vcpus, memory_mb })
    }

    fn memory_bytes(self) -> u64 {
        (self.memory_mb + MEMORY_OVERHEAD_MB) << 20
    }

    fn cpu_quota_us(self) -> u64 {
        u64::from(self.vcpus) * PERIOD_US
    }
}

/// Which cgroup hierarchy this host has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

impl Version {
    pub fn of_host() -> Version {
        if Path::new(CGROUP_ROOT).join("cgroup.controllers").exists() {
            Version::V2
        } else {
            Version::V1
        }
    }
}

/// The jailer's arguments for `limits`: the version, our parent cgroup for the VM
/// and each limit (`--cgroup <file>=<value>`).
pub fn jailer_args(version: Version, vm_id: &str, limits: Limits) -> Vec<String> {
    let mut args = vec![
        "--cgroup-version".to_string(),
        match version {
            Version::V1 => "1",
            Version::V2 => "2",
        }
        .to_string(),
        "--parent-cgroup".to_string(),
        parent(vm_id),
    ];
    for (_, file, value) in limit_files(version, limits) {
        args.push("--cgroup".into());
        args.push(format!("{file}={value}"));
    }
    args
}

/// The files that bound a VM, with their controller (v1's hierarchy) and value.
fn limit_files(version: Version, limits: Limits) -> Vec<(&'static str, &'static str, String)> {
    match version {
        Version::V1 => vec![
            ("cpu", "cpu.cfs_period_us", PERIOD_US.to_string()),
            ("cpu", "cpu.cfs_quota_us", limits.cpu_quota_us().to_string()),
            (
                "memory",
                "memory.limit_in_bytes",
                limits.memory_bytes().to_string(),
            ),
        ],
        Version::V2 => vec![
            (
                "",
                "cpu.max",
                format!("{} {PERIOD_US}", limits.cpu_quota_us()),
            ),
            ("", "memory.max", limits.memory_bytes().to_string()),
        ],
    }
}

/// `aetherium/<instance id>`: one parent per VM, since every VM's jail id is the same
/// (the instance id is Firecracker's `--id`: the VM id with `_` as `-`).
fn parent(vm_id: &str) -> String {
    format!("{PARENT}/{}", vm_id.replace('_', "-"))
}

/// The leaf cgroup of a VM, below its parent (the jailer names it after its jail
/// id, `vm`; ours are named the same, so that [`dirs`] and [`remove`] serve both).
pub const LEAF: &str = "vm";

/// Makes a VM's cgroups with `limits` written (for the VMMs we start ourselves)
/// and returns the `cgroup.procs` files its processes are to join. Leaves nothing
/// on error.
pub fn make(version: Version, vm_id: &str, limits: Limits) -> std::io::Result<Vec<PathBuf>> {
    let made = make_dirs(version, vm_id, limits);
    if made.is_err() {
        remove(version, vm_id);
    }
    made
}

/// [`make`], except where this worker may not make cgroups (not root): then the
/// VM runs without limits, said once in the log.
pub fn make_or_warn(
    version: Version,
    vm_id: &str,
    limits: Limits,
) -> std::io::Result<Vec<PathBuf>> {
    match make(version, vm_id, limits) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
            ) =>
        {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                tracing::warn!(error = %e, "cannot make cgroups (run the worker as root): microVMs run without CPU and memory limits");
            });
            Ok(Vec::new())
        }
        made => made,
    }
}

fn make_dirs(version: Version, vm_id: &str, limits: Limits) -> std::io::Result<Vec<PathBuf>> {
    let root = Path::new(CGROUP_ROOT);
    let write = |path: PathBuf, value: &str| {
        std::fs::write(&path, value)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
    };
    let files = limit_files(version, limits);
    match version {
        Version::V1 => {
            let mut procs = Vec::new();
            for controller in ["cpu", "memory"] {
                let leaf = root.join(controller).join(parent(vm_id)).join(LEAF);
                std::fs::create_dir_all(&leaf)?;
                for (_, file, value) in files.iter().filter(|(c, ..)| *c == controller) {
                    write(leaf.join(file), value)?;
                }
                procs.push(leaf.join("cgroup.procs"));
            }
            Ok(procs)
        }
        Version::V2 => {
            // Each level hands the cpu and memory controllers down to the next.
            let vm_parent = root.join(parent(vm_id));
            std::fs::create_dir_all(&vm_parent)?;
            let mut level = root.to_path_buf();
            for name in Path::new(&parent(vm_id)).iter() {
                let delegated = std::fs::read_to_string(level.join("cgroup.subtree_control"))?;
                if !(delegated.contains("cpu") && delegated.contains("memory")) {
                    write(level.join("cgroup.subtree_control"), "+cpu +memory")?;
                }
                level = level.join(name);
            }
            write(level.join("cgroup.subtree_control"), "+cpu +memory")?;
            let leaf = vm_parent.join(LEAF);
            std::fs::create_dir_all(&leaf)?;
            for (_, file, value) in &files {
                write(leaf.join(file), value)?;
            }
            Ok(vec![leaf.join("cgroup.procs")])
        }
    }
}

/// The directories the jailer made for `vm_id`, leaf first (v1: per controller).
pub fn dirs(version: Version, vm_id: &str) -> Vec<PathBuf> {
    let hierarchies: Vec<PathBuf> = match version {
        Version::V2 => vec![PathBuf::from(CGROUP_ROOT)],
        Version::V1 => ["cpu", "memory"]
            .iter()
            .map(|c| Path::new(CGROUP_ROOT).join(c))
            .collect(),
    };
    hierarchies
        .iter()
        .flat_map(|h| {
            let vm_parent = h.join(parent(vm_id));
            [vm_parent.join(LEAF), vm_parent]
        })
        .collect()
}

/// Removes the VM's cgroups (its process must be gone; missing ones are fine).
pub fn remove(version: Version, vm_id: &str) {
    for dir in dirs(version, vm_id) {
        if let Err(e) = remove_dir(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a VM's cgroup")
        }
    }
}

/// [`remove`], once the VM's processes have left: a killed process stays in its
/// cgroup (busy) until its parent has reaped it, which may take a moment when the
/// parent is another process (a VM adopted after a restart). Up to a second.
pub async fn remove_when_empty(version: Version, vm_id: &str) {
    for dir in dirs(version, vm_id) {
        let mut tries = 0;
        loop {
            match remove_dir(&dir) {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 40 => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(25)).await;
                }
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a VM's cgroup");
                    break;
                }
                Ok(()) => break,
            }
        }
    }
}

/// Removes one cgroup directory; a missing one is fine.
fn remove_dir(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_follow_the_vm_size_in_either_version() {
        let limits = Limits {
            vcpus: 2,
            memory_mb: 512,
        };
        let v1 = jailer_args(Version::V1, "vm_1", limits).join(" ");
        assert_eq!(
            v1,
            "--cgroup-version 1 --parent-cgroup aetherium/vm-1 \
             --cgroup cpu.cfs_period_us=100000 --cgroup cpu.cfs_quota_us=200000 \
             --cgroup memory.limit_in_bytes=671088640"
        );
        let v2 = jailer_args(Version::V2, "vm-1", limits);
        assert!(v2.contains(&"cpu.max=200000 100000".to_string()), "{v2:?}");
        assert!(v2.contains(&"memory.max=671088640".to_string()), "{v2:?}");
        assert_eq!(
            dirs(Version::V1, "vm-1")[0],
            Path::new("/sys/fs/cgroup/cpu/aetherium/vm-1/vm")
        );
        assert_eq!(Limits::from_file_text(&limits.to_file_text()), Some(limits));
        for bad in ["", "2", "0 512", "2 x", "2 512 9"] {
            assert_eq!(Limits::from_file_text(bad), None, "{bad:?}");
        }
    }
}
