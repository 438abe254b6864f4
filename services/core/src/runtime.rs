//! Assembles embedded mode: one process holding the store (SQLite), the embedded
//! queue, the in-process event bus, this host's backends ([`crate::host`]) and one
//! worker.

use std::sync::Arc;
use std::time::Duration;

use aetherium_common::Config;
use aetherium_types::Orchestrator;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::agents::LocalAgents;
use crate::auth::{Auth, AuthSettings};
use crate::error::{CoreError, CoreResult};
use crate::feed::{self, LogFeed, PersistentEventBus, Retention};
use crate::queue::EmbeddedQueue;
use crate::services::{Platform, PlatformDefaults};
use crate::store::{SqliteStore, Store};
use crate::vmm::Backend;
use crate::worker::{Worker, WorkerSettings};

pub struct EmbeddedRuntime {
    pub platform: Platform,
    /// API keys, users, sessions and the audit log (same database as the platform).
    pub auth: Auth,
    pub worker: Arc<Worker>,
    shutdown: watch::Sender<bool>,
    worker_task: Option<JoinHandle<()>>,
    bus: Arc<PersistentEventBus>,
    background_stop: watch::Sender<bool>,
    /// The log writer and the pruner: they stop with the worker.
    background: Vec<JoinHandle<()>>,
}

/// The use cases' defaults, from the configuration.
pub fn platform_defaults(config: &Config) -> PlatformDefaults {
    PlatformDefaults {
        vcpus: config.vmm.default_vcpus,
        memory_mb: config.vmm.default_memory_mb,
        disk_mb: Some(config.vmm.docker.disk_mb).filter(|&mb| mb > 0),
        image: config.vmm.docker.default_image.clone(),
        orchestrator: config
            .vmm
            .default_backend
            .parse()
            .unwrap_or(Orchestrator::Docker),
        exec_timeout_seconds: aetherium_types::MAX_EXEC_TIMEOUT_SECONDS,
        worker_stale_after: Duration::from_secs(config.worker.heartbeat_interval_seconds) * 3,
    }
}

/// The worker's identity, capacity and timings, from the configuration.
pub fn worker_settings(config: &Config) -> WorkerSettings {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    WorkerSettings {
        id: config.worker.id.clone(),
        hostname,
        address: config.worker.address.clone(),
        zone: config.worker.zone.clone(),
        labels: config
            .worker
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into()))
            .collect(),
        cpu_cores: config.worker.cpu_cores,
        memory_mb: config.worker.memory_mb,
        max_vms: config.worker.max_vms,
        concurrency: config.worker.concurrency,
        heartbeat_interval: Duration::from_secs(config.worker.heartbeat_interval_seconds),
        lease: Duration::from_secs(config.queue.lease_seconds),
        poll_interval: Duration::from_millis(config.queue.poll_interval_ms),
        output_cap_bytes: config.vmm.output_cap_bytes,
        agent_ready_timeout: Duration::from_secs(30),
        shutdown_grace: Duration::from_secs(10),
        snapshot_dir: config.data_dir.join("snapshots"),
        workspaces: config.workspaces.clone(),
    }
}

pub(crate) fn retired_keys(config: &Config) -> Vec<&str> {
    config
        .workspaces
        .retired_keys
        .iter()
        .map(String::as_str)
        .collect()
}

/// Re-encrypts secrets still under a retired key with the current one (idempotent;
/// safe beside other processes doing the same).
pub(crate) async fn rotate_secrets(
    store: &dyn crate::store::SecretStore,
    keyring: &crate::secrets::Keyring,
) {
    match crate::secrets::rotate_secrets(store, keyring).await {
        Ok(report) if report.rotated > 0 || report.skipped > 0 => {
            tracing::info!(
                rotated = report.rotated,
                skipped = report.skipped,
                "secrets re-encrypted with the current key"
            );
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot re-encrypt secrets under retired keys"),
    }
}

pub(crate) fn retention(config: &Config) -> Retention {
    Retention {
        events_max_age: Duration::from_secs(config.events.retention_hours * 3600),
        events_max_rows: config.events.retention_max_rows,
        logs_max_age: Duration::from_secs(config.logging.retention_hours * 3600),
        logs_max_rows: config.logging.retention_max_rows,
        interval: Duration::from_secs(60),
    }
}

impl EmbeddedRuntime {
    /// Opens the database, connects the backend and starts the worker.
    pub async fn start(config: &Config) -> CoreResult<EmbeddedRuntime> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            CoreError::InvalidInput(format!(
                "cannot create data dir {}: {e}",
                config.data_dir.display()
            ))
        })?;
        let store = SqliteStore::connect(&config.database_url()).await?;
        // Embedded mode is one process: a direct execution still `running` now lost
        // its connection when the previous process stopped.
        let interrupted = store
            .fail_interrupted_direct_executions("the server stopped while the command ran")
            .await?;
        if interrupted > 0 {
            tracing::warn!(
                interrupted,
                "marked interrupted streamed/interactive executions failed"
            );
        }
        let queue = EmbeddedQueue::new(
            store.pool().clone(),
            Duration::from_secs(config.queue.retry_base_seconds),
        );
        let (shutdown, shutdown_rx) = watch::channel(false);
        // The log writer and the pruner outlive the worker, so its last words are kept.
        let (background_stop, background_rx) = watch::channel(false);
        let store = Arc::new(store);
        let tokens =
            crate::identity::AgentTokens::load_or_create(&config.data_dir).map_err(|e| {
                CoreError::InvalidInput(format!("cannot read or make the agent token key: {e}"))
            })?;
        let host = crate::host::host_backends(config, store.clone(), tokens).await?;
        let backend: Arc<dyn Backend> = host.backends.clone();
        let auth = Auth::new(
            store.clone(),
            AuthSettings {
                session_ttl: Duration::from_secs(config.auth.session_ttl_seconds),
            },
        )
        .await?;
        // Every event is stored (and numbered) before subscribers see it.
        let bus = PersistentEventBus::start(store.clone());
        // The platform's own log records (captured when `telemetry::init` installed
        // the capture layer) are stored and re-broadcast with their ids.
        let log_feed = LogFeed::default();
        let log_writer = feed::spawn_log_writer(
            store.clone(),
            aetherium_common::logcapture::attach(feed::LOG_CHANNEL_CAPACITY),
            log_feed.clone(),
            background_rx.clone(),
        );
        let pruner = feed::spawn_pruner(
            store.clone(),
            store.clone(),
            retention(config),
            background_rx,
        );
        let keyring = match &config.workspaces.encryption_key {
            Some(key) => crate::secrets::Keyring::from_hex(key, &retired_keys(config))?,
            // One host: a key of its own, made on first start (0600, beside the database).
            None => crate::secrets::Keyring::load_or_create(
                &config.data_dir.join("secrets.key"),
                &retired_keys(config),
            )?,
        };
        rotate_secrets(&*store, &keyring).await;
        let workspace_data = crate::services::environments::WorkspaceData {
            environments: store.clone(),
            secrets: store.clone(),
            workspaces: store.clone(),
            prompts: store.clone(),
            tools: Arc::new(crate::services::environments::ToolCatalog::from_config(
                config,
            )?),
            keyring: Some(keyring),
        };
        let platform = Platform {
            store: store.clone(),
            queue: Arc::new(queue),
            bus: bus.clone(),
            events: store.clone(),
            logs: store,
            log_feed,
            agents: Arc::new(LocalAgents {
                worker_id: config.worker.id.clone(),
                backend: backend.clone(),
            }),
            defaults: platform_defaults(config),
            workspace_data,
        };
        let settings = worker_settings(config);
        let worker = Worker::with_network(settings, platform.clone(), backend, host.network);
        // The first heartbeat registers the worker before the API takes requests.
        worker.heartbeat().await;
        let worker_task = Some(tokio::spawn(worker.clone().run(shutdown_rx)));
        Ok(EmbeddedRuntime {
            platform,
            auth,
            worker,
            shutdown,
            worker_task,
            bus,
            background_stop,
            background: vec![log_writer, pruner],
        })
    }

    /// Stops leasing, lets running tasks finish briefly, marks the worker offline.
    /// Sandboxes keep running; the next start adopts them.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.worker_task.take() {
            let _ = task.await;
        }
        // Events and log records already published are stored before the database
        // closes.
        self.bus.flush().await;
        let _ = self.background_stop.send(true);
        for task in self.background.drain(..) {
            let _ = task.await;
        }
        self.platform.store.close().await;
    }
}
