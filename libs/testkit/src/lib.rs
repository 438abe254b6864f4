//! Test support for distributed mode: real PostgreSQL and Redis servers, each test
//! its own, on a free loopback port in a temp dir, stopped (by pid) when dropped.
//! Also [`standin::standin_agent_image`]: a Docker image with a stand-in coding-agent
//! CLI for workspace tests. Dev-dependency only.
//!
//! Requirements on the host:
//! - [`postgres::TempPostgres`]: PostgreSQL's server binaries (`initdb`, `postgres`,
//!   `pg_isready`, `psql`): Debian's `postgresql` package (`scripts/lib.sh` installs
//!   it), found through `$AETHERIUM_PG_BINDIR`, `pg_config --bindir` or
//!   `/usr/lib/postgresql/*/bin`. As root (CI), the server runs as the `postgres`
//!   system user (else `nobody`), since PostgreSQL refuses to run as root.

pub mod fileserver;
pub mod paths;
pub mod postgres;
pub mod redis;
pub mod standin;

pub use fileserver::{FileServer, docker_gateway};
pub use paths::{agent_bin, kernel_dir, static_agent_bin, test_image, test_images_dir};
pub use standin::standin_agent_image;

/// Lazily unmounts every mount point below `dir` (the tmpfs a Docker worker puts on
/// each sandbox's run directory), for a test that stops a worker without deleting
/// its sandboxes: the temp dir can then go, and the host's mount table stays clean.
pub fn unmount_below(dir: &std::path::Path) {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let prefix = format!("{}/", dir.display());
    for point in mounts.lines().filter_map(|line| line.split(' ').nth(4)) {
        if point.starts_with(&prefix) {
            let _ = std::process::Command::new("umount")
                .args(["-l", point])
                .status();
        }
    }
}

/// 12 random hex characters, for names tests make unique (containers, workers, VMs).
pub fn random_hex() -> String {
    let mut buf = [0u8; 6];
    let mut f = std::fs::File::open("/dev/urandom").expect("open /dev/urandom");
    std::io::Read::read_exact(&mut f, &mut buf).expect("read /dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}
