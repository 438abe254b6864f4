//! `aetherium up`: the whole platform in one process.

use std::io::{IsTerminal as _, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use aetherium_common::Config;
use aetherium_core::EmbeddedRuntime;
use aetherium_gateway::AppState;
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

/// The key to register as the bootstrap admin key if no API key exists yet: the
/// configured one, else one kept in the token file by an earlier version.
pub(crate) fn given_bootstrap_key(config: &Config) -> anyhow::Result<Option<String>> {
    if let Some(token) = &config.server.api_token {
        return Ok(Some(token.clone()));
    }
    let path = config.token_file();
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => Ok(Some(text.trim().to_string())),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Keeps a new bootstrap key for the CLI on this host (mode 0600, like ~/.ssh keys).
pub(crate) fn save_token_file(path: &Path, key: &str) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    writeln!(file, "{key}")?;
    Ok(())
}

pub(crate) async fn shutdown_signal() {
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

pub(crate) fn display_path(p: &Path) -> String {
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
    config.validate_for(aetherium_common::config::Role::Embedded)?;
    aetherium_common::telemetry::init(&config.logging);

    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create {}", config.data_dir.display()))?;
    let runtime = EmbeddedRuntime::start(&config).await?;
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
    println!("aetherium is up at http://{local}");
    if let Some(key) = &created_key {
        // Shown this once on a terminal; the database keeps only its hash. When stdout
        // is a log file (scripts/setup.sh), only the key file is named, so that the
        // key never lands in a log.
        if std::io::stdout().is_terminal() {
            println!("bootstrap admin API key (shown once): {key}");
        } else {
            println!("bootstrap admin API key created");
        }
        println!(
            "  saved for the CLI on this host in {} (mode 0600); create more with `aetherium apikey create`",
            display_path(&config.token_file())
        );
    }
    println!("data: {}", display_path(&config.data_dir));
    print_dashboard(&state, local);
    let _ = std::io::stdout().flush();
    tracing::info!(%local, worker = %config.worker.id, dashboard = ?state.dashboard_dir, "serving");
    aetherium_gateway::serve(listener, state, shutdown_signal()).await?;
    tracing::info!("shutting down");
    runtime.shutdown().await;
    Ok(())
}

/// Says where the web dashboard is served from, or how to get one.
pub(crate) fn print_dashboard(state: &AppState, local: std::net::SocketAddr) {
    match &state.dashboard_dir {
        Some(dir) => println!("dashboard: http://{local}/ (from {})", display_path(dir)),
        None => println!(
            "dashboard: not built (run scripts/setup.sh or `make dashboard`, or set server.dashboard_dir)"
        ),
    }
}
