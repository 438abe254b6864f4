//! `aetherium up`: the whole platform in one process.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aetherium_common::Config;
use aetherium_core::EmbeddedRuntime;
use aetherium_gateway::{AppState, token_digest};
use anyhow::Context as _;
use clap::Args;

#[derive(Args)]
pub struct UpArgs {
    /// YAML config file (every key optional; AETHERIUM_* variables override it).
    #[arg(long, short = 'c', env = "AETHERIUM_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long)]
    host: Option<String>,
    /// Port to listen on (0 picks a free one).
    #[arg(long)]
    port: Option<u16>,
    /// Where the database, token and sockets live.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Largest file `PUT /vms/{id}/files` (`aetherium vm cp` into a sandbox) accepts.
    #[arg(long, env = "AETHERIUM_MAX_UPLOAD_BYTES", default_value_t = aetherium_gateway::DEFAULT_MAX_UPLOAD_BYTES)]
    max_upload_bytes: u64,
}

/// Reads the admin token, or makes one on first start (mode 0600, never logged).
fn ensure_token(config: &Config) -> anyhow::Result<String> {
    if let Some(token) = &config.server.api_token {
        return Ok(token.clone());
    }
    let path = config.token_file();
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let bytes: [u8; 32] = rand_bytes()?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    writeln!(file, "{token}")?;
    Ok(token)
}

fn rand_bytes() -> anyhow::Result<[u8; 32]> {
    let mut buf = [0u8; 32];
    let mut f = std::fs::File::open("/dev/urandom").context("open /dev/urandom")?;
    std::io::Read::read_exact(&mut f, &mut buf).context("read /dev/urandom")?;
    Ok(buf)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

fn display_path(p: &Path) -> String {
    p.display().to_string()
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(host) = args.host {
        config.server.host = host;
    }
    if let Some(port) = args.port {
        config.server.port = port;
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    config.validate()?;
    aetherium_common::telemetry::init(&config.logging);

    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create {}", config.data_dir.display()))?;
    let token = ensure_token(&config)?;
    let runtime = EmbeddedRuntime::start(&config).await?;
    let address = format!("{}:{}", config.server.host, config.server.port);
    let listener = tokio::net::TcpListener::bind(&address)
        .await
        .with_context(|| format!("cannot listen on {address}"))?;
    let local = listener.local_addr()?;
    let mut state = AppState::new(
        runtime.platform.clone(),
        token_digest(&token),
        Duration::from_secs(config.server.max_wait_seconds),
    );
    state.output_cap_bytes = config.vmm.output_cap_bytes;
    state.max_upload_bytes = args.max_upload_bytes;
    // Scripts wait for this line; it carries no secret.
    println!("aetherium is up at http://{local}");
    if config.server.api_token.is_none() {
        println!("admin token: {}", display_path(&config.token_file()));
    }
    println!("data: {}", display_path(&config.data_dir));
    let _ = std::io::stdout().flush();
    tracing::info!(%local, worker = %config.worker.id, "serving");
    aetherium_gateway::serve(listener, state, shutdown_signal()).await?;
    tracing::info!("shutting down");
    runtime.shutdown().await;
    Ok(())
}
