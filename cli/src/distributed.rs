//! `aetherium gateway` and `aetherium worker run`: the two processes of distributed mode
//! (docs/distributed.md). They share PostgreSQL and Redis; `aetherium up` stays the
//! one-process embedded mode.

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;

use aetherium_common::Config;
use aetherium_common::config::Role;
use aetherium_core::{DistributedRole, DistributedRuntime};
use aetherium_gateway::AppState;
use anyhow::Context as _;
use clap::Args;

use crate::up::{display_path, given_bootstrap_key, save_token_file, shutdown_signal};

#[derive(Args)]
pub struct GatewayArgs {
    /// YAML config file (every key optional; AETHERIUM_* variables override it).
    #[arg(long, short = 'c', env = "AETHERIUM_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long)]
    host: Option<String>,
    /// Port to listen on (0 picks a free one).
    #[arg(long)]
    port: Option<u16>,
    /// Where the admin key file is kept for the CLI on this host.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Largest file `PUT /vms/{id}/files` accepts.
    #[arg(long, env = "AETHERIUM_MAX_UPLOAD_BYTES", default_value_t = aetherium_gateway::DEFAULT_MAX_UPLOAD_BYTES)]
    max_upload_bytes: u64,
}

#[derive(Args)]
pub struct WorkerRunArgs {
    /// YAML config file (every key optional; AETHERIUM_* variables override it).
    #[arg(long, short = 'c', env = "AETHERIUM_CONFIG")]
    config: Option<PathBuf>,
    /// This worker's id (containers are labelled with it: keep it stable).
    #[arg(long)]
    id: Option<String>,
    /// Where the sandboxes' agent sockets live (`<data-dir>/sockets`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

fn load(config: Option<&std::path::Path>, role: Role) -> anyhow::Result<Config> {
    let config = Config::load(config)?;
    config.validate_for(role)?;
    Ok(config)
}

/// Serves the API on PostgreSQL + Redis, with no worker of its own.
pub async fn gateway(args: GatewayArgs) -> anyhow::Result<()> {
    let mut config = load(args.config.as_deref(), Role::Gateway)?;
    if let Some(host) = args.host {
        config.server.host = host;
    }
    if let Some(port) = args.port {
        config.server.port = port;
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    config.validate_for(Role::Gateway)?;
    aetherium_common::telemetry::init(&config.logging);
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create {}", config.data_dir.display()))?;
    let runtime = DistributedRuntime::start(&config, DistributedRole::Gateway, None).await?;
    // Every gateway tries; the database registers the bootstrap key once (the first
    // gateway to start on an empty database creates it).
    let created_key = runtime
        .auth
        .bootstrap_admin_key(given_bootstrap_key(&config)?.as_deref())
        .await?;
    if let Some(key) = &created_key {
        save_token_file(&config.token_file(), key)?;
    }
    let address = format!("{}:{}", config.server.host, config.server.port);
    let listener = tokio::net::TcpListener::bind(&address)
        .await
        .with_context(|| format!("cannot listen on {address}"))?;
    let local = listener.local_addr()?;
    let mut state = AppState::from_config(runtime.platform.clone(), runtime.auth.clone(), &config);
    state.max_upload_bytes = args.max_upload_bytes;
    // Scripts wait for this line; it carries no secret.
    println!("aetherium gateway is up at http://{local}");
    if let Some(key) = &created_key {
        if std::io::stdout().is_terminal() {
            println!("bootstrap admin API key (shown once): {key}");
        } else {
            println!("bootstrap admin API key created");
        }
        println!(
            "  saved for the CLI on this host in {} (mode 0600)",
            display_path(&config.token_file())
        );
    }
    crate::up::print_dashboard(&state, local);
    let _ = std::io::stdout().flush();
    tracing::info!(%local, dashboard = ?state.dashboard_dir, "gateway serving");
    aetherium_gateway::serve(listener, state, shutdown_signal()).await?;
    tracing::info!("gateway shutting down");
    runtime.shutdown().await;
    Ok(())
}

/// Runs tasks and sandboxes on this host until SIGTERM / Ctrl-C, then drains:
/// running tasks get a grace period, the rest are released to the queue, and the
/// worker is marked offline.
pub async fn worker(args: WorkerRunArgs) -> anyhow::Result<()> {
    let mut config = load(args.config.as_deref(), Role::Worker)?;
    if let Some(id) = args.id {
        config.worker.id = id;
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    config.validate_for(Role::Worker)?;
    aetherium_common::telemetry::init(&config.logging);
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create {}", config.data_dir.display()))?;
    let runtime = DistributedRuntime::start(&config, DistributedRole::Worker, None).await?;
    // Scripts wait for this line.
    println!("aetherium worker {} is up", config.worker.id);
    let _ = std::io::stdout().flush();
    shutdown_signal().await;
    tracing::info!(worker = %config.worker.id, "worker shutting down");
    runtime.shutdown().await;
    Ok(())
}
