//! Test support for distributed mode: real PostgreSQL and Redis servers, each test
//! its own, on a free loopback port in a temp dir, stopped (by pid) when dropped.
//! Also [`standin::standin_agent_image`]: a Docker image with a stand-in coding-agent
//! CLI for workspace tests, and [`tls::TestPki`]: certificates for servers that
//! speak TLS, [`tools`]: tool tarballs and recipes for installer tests, and
//! [`dns::StandInDns`]: an upstream DNS server answering the names it is given.
//! Dev-dependency only.
//!
//! Requirements on the host:
//! - [`postgres::TempPostgres`]: PostgreSQL's server binaries (`initdb`, `postgres`,
//!   `pg_isready`, `psql`): Debian's `postgresql` package (`scripts/lib.sh` installs
//!   it), found through `$AETHERIUM_PG_BINDIR`, `pg_config --bindir` or
//!   `/usr/lib/postgresql/*/bin`. As root (CI), the server runs as the `postgres`
//!   system user (else `nobody`), since PostgreSQL refuses to run as root.

pub mod cgroup;
pub mod dns;
pub mod fileserver;
pub mod paths;
pub mod postgres;
pub mod redis;
pub mod remapped_docker;
pub mod standin;
pub mod tls;
pub mod tools;

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

/// Removes the firewall rules and the policy chain a Docker worker made for the
/// sandbox of each container (by id; read from its `io.aetherium.vm_id` label), for
/// a test that removes containers without deleting their sandboxes. Call it before
/// removing the containers.
pub fn remove_sandbox_rules(container_ids: &[String]) {
    if container_ids.is_empty() {
        return;
    }
    let Ok(labels) = std::process::Command::new("docker")
        .args([
            "inspect",
            "-f",
            "{{index .Config.Labels \"io.aetherium.vm_id\"}}",
        ])
        .args(container_ids)
        .output()
    else {
        return;
    };
    let vm_ids: Vec<String> = String::from_utf8_lossy(&labels.stdout)
        .lines()
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .map(str::to_string)
        .collect();
    let iptables = |args: &[&str]| {
        std::process::Command::new("iptables")
            .arg("-w")
            .args(args)
            .output()
            .ok()
    };
    // Their DNS redirections (nat) first, then their filter rules and chains.
    if let Some(nat) = iptables(&["-t", "nat", "-S", "PREROUTING"]) {
        let nat = String::from_utf8_lossy(&nat.stdout).into_owned();
        for vm_id in &vm_ids {
            let tag = format!("aetherium-vm:{vm_id}");
            for rule in nat
                .lines()
                .filter(|l| l.starts_with("-A ") && l.contains(&tag))
            {
                let mut args = vec!["-t", "nat", "-D"];
                args.extend(rule[3..].split_whitespace().map(|w| w.trim_matches('"')));
                iptables(&args);
            }
        }
    }
    let Some(listing) = iptables(&["-S"]) else {
        return;
    };
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    for vm_id in &vm_ids {
        let tag = format!("aetherium-vm:{vm_id}");
        // The sandbox's policy chain is the target of its tagged jump (its name is
        // the worker's business; it is read, not rebuilt, here).
        let mut chains = Vec::new();
        for rule in listing
            .lines()
            .filter(|l| l.starts_with("-A ") && l.contains(&tag))
        {
            let words: Vec<String> = rule[3..]
                .split_whitespace()
                .map(|w| w.trim_matches('"').to_string())
                .collect();
            if let Some(target) = words.windows(2).find(|w| w[0] == "-j").map(|w| &w[1])
                && target.starts_with("aeth-vm-")
            {
                chains.push(target.clone());
            }
            let mut args = vec!["-D"];
            args.extend(words.iter().map(String::as_str));
            iptables(&args);
        }
        for chain in chains {
            iptables(&["-F", &chain]);
            iptables(&["-X", &chain]);
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
