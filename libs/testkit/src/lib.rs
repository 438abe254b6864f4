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

/// 12 random hex characters, for names tests make unique (containers, workers, VMs).
pub fn random_hex() -> String {
    let mut buf = [0u8; 6];
    let mut f = std::fs::File::open("/dev/urandom").expect("open /dev/urandom");
    std::io::Read::read_exact(&mut f, &mut buf).expect("read /dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}
