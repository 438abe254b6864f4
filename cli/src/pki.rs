//! `aetherium cluster init` / `aetherium cluster issue`: the cluster CA and the
//! certificates of the tunnel between gateways and workers (files in a directory,
//! keys mode 0600; nothing is sent anywhere).

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use aetherium_core::cluster_tls::{self, Holder};
use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};

#[derive(Subcommand)]
pub enum ClusterAction {
    /// Make the cluster CA: DIR/ca.pem (give it to every process) and DIR/ca.key
    /// (keep it offline; it issues the certificates).
    Init {
        /// Where to write them (created; existing files are never replaced).
        #[arg(long, default_value = "cluster-pki")]
        dir: PathBuf,
    },
    /// Issue a certificate signed by DIR/ca.key: DIR/worker-ID.pem/.key for a
    /// worker (the certificate names it), DIR/gateway-NAME.pem/.key for a gateway.
    Issue(IssueArgs),
}

#[derive(Args)]
pub struct IssueArgs {
    #[arg(long, default_value = "cluster-pki")]
    dir: PathBuf,
    /// The worker's id (`worker.id`): lowercase letters, digits and '-'.
    #[arg(long, conflicts_with = "gateway", required_unless_present = "gateway")]
    worker: Option<String>,
    /// A name for the gateway (shown in its certificate).
    #[arg(long)]
    gateway: Option<String>,
}

/// Writes `contents` to a new file with `mode`; an existing file is an error.
fn write_new(path: &Path, contents: &str, mode: u32) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {} (it is never replaced)", path.display()))?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

pub fn run(action: ClusterAction) -> anyhow::Result<u8> {
    match action {
        ClusterAction::Init { dir } => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let ca = cluster_tls::new_ca()?;
            write_new(&dir.join("ca.key"), &ca.key_pem, 0o600)?;
            write_new(&dir.join("ca.pem"), &ca.cert_pem, 0o644)?;
            println!("cluster CA: {}", dir.join("ca.pem").display());
            println!(
                "its key:    {} (keep it safe: it issues every certificate)",
                dir.join("ca.key").display()
            );
            Ok(0)
        }
        ClusterAction::Issue(args) => {
            let key = std::fs::read_to_string(args.dir.join("ca.key")).with_context(|| {
                format!(
                    "cannot read {} (run `aetherium cluster init` first)",
                    args.dir.join("ca.key").display()
                )
            })?;
            let (holder, stem) = match (args.worker, args.gateway) {
                (Some(id), None) => (Holder::Worker(id.clone()), format!("worker-{id}")),
                (None, Some(name)) => (Holder::Gateway(name.clone()), format!("gateway-{name}")),
                _ => bail!("give --worker ID or --gateway NAME"),
            };
            if stem.contains('/') || stem.contains("..") {
                bail!("the name must not contain '/' or '..'");
            }
            let issued = cluster_tls::issue(&key, &holder)?;
            let (cert, key) = (
                args.dir.join(format!("{stem}.pem")),
                args.dir.join(format!("{stem}.key")),
            );
            write_new(&key, &issued.key_pem, 0o600)?;
            write_new(&cert, &issued.cert_pem, 0o644)?;
            println!("certificate: {}", cert.display());
            println!("key:         {}", key.display());
            println!(
                "use: cluster.tls {{ca: {}, cert: {}, key: {}}}",
                args.dir.join("ca.pem").display(),
                cert.display(),
                key.display()
            );
            Ok(0)
        }
    }
}
