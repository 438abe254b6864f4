//! The cgroup limits a jailed Firecracker runs under: the jailer puts the process
//! in `<controller>/aetherium/<instance id>/vm` and writes the limits before it
//! execs Firecracker, so the VM never runs unbounded; we remove those cgroups once
//! the process is gone.
//!
//! A VM gets its vCPUs' worth of CPU time (the VMM's own threads share it) and its
//! guest memory plus [`MEMORY_OVERHEAD_MB`] (Firecracker itself, page tables,
//! device buffers, and the page cache of its disk, which the kernel reclaims at the
//! limit). cgroup v2 when `/sys/fs/cgroup` is the unified hierarchy, else v1.

use std::path::{Path, PathBuf};

use super::layout;

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
    let files = match version {
        Version::V1 => vec![
            format!("cpu.cfs_period_us={PERIOD_US}"),
            format!("cpu.cfs_quota_us={}", limits.cpu_quota_us()),
            format!("memory.limit_in_bytes={}", limits.memory_bytes()),
        ],
        Version::V2 => vec![
            format!("cpu.max={} {PERIOD_US}", limits.cpu_quota_us()),
            format!("memory.max={}", limits.memory_bytes()),
        ],
    };
    for file in files {
        args.push("--cgroup".into());
        args.push(file);
    }
    args
}

/// `aetherium/<instance id>`: one parent per VM, since every VM's jail id is the same.
fn parent(vm_id: &str) -> String {
    format!("{PARENT}/{}", layout::instance_id(vm_id))
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
            [vm_parent.join(layout::JAIL_ID), vm_parent]
        })
        .collect()
}

/// Removes the VM's cgroups (its process must be gone; missing ones are fine).
pub fn remove(version: Version, vm_id: &str) {
    for dir in dirs(version, vm_id) {
        match std::fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a VM's cgroup")
            }
        }
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
