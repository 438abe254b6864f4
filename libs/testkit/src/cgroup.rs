//! Reading a process's cgroup limits where `/proc/<pid>/cgroup` says it is (v1: the
//! cpu and memory hierarchies; v2: the unified one), for tests of VMMs that must
//! never run unbounded.

use std::path::Path;

/// Asserts that process `pid` runs in a cgroup below `aetherium/` with `vcpus` of
/// CPU time (100 ms periods) and at most `memory_bytes` of memory.
pub fn assert_limits(pid: u32, vcpus: u64, memory_bytes: u64) {
    let memberships = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/cgroup: {e}"));
    let path_of = |controller: &str| -> Option<String> {
        memberships.lines().find_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            controllers
                .split(',')
                .any(|c| c == controller)
                .then(|| path.to_string())
        })
    };
    let read = |dir: std::path::PathBuf, file: &str| {
        std::fs::read_to_string(dir.join(file))
            .unwrap_or_else(|e| panic!("{}/{file}: {e}", dir.display()))
            .trim()
            .to_string()
    };
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        let unified = path_of("").expect("in the unified hierarchy");
        assert!(unified.starts_with("/aetherium/"), "{memberships}");
        let dir = root.join(unified.trim_start_matches('/'));
        assert_eq!(
            read(dir.clone(), "cpu.max"),
            format!("{} 100000", vcpus * 100_000)
        );
        assert_eq!(read(dir, "memory.max"), memory_bytes.to_string());
    } else {
        let cpu = path_of("cpu").expect("in a cpu cgroup");
        assert!(cpu.starts_with("/aetherium/"), "{memberships}");
        let cpu_dir = root.join("cpu").join(cpu.trim_start_matches('/'));
        assert_eq!(
            read(cpu_dir.clone(), "cpu.cfs_quota_us"),
            (vcpus * 100_000).to_string()
        );
        assert_eq!(read(cpu_dir, "cpu.cfs_period_us"), "100000");
        let mem = path_of("memory").expect("in a memory cgroup");
        assert!(mem.starts_with("/aetherium/"), "{memberships}");
        let mem_dir = root.join("memory").join(mem.trim_start_matches('/'));
        assert_eq!(
            read(mem_dir, "memory.limit_in_bytes"),
            memory_bytes.to_string()
        );
    }
}
