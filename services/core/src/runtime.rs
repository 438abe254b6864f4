//! Assembles embedded mode: one process holding the store (SQLite), the embedded
//! queue, the in-process event bus, the Docker backend and one worker.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aetherium_common::{Config, InProcessEventBus};
use aetherium_types::Orchestrator;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::{CoreError, CoreResult};
use crate::queue::EmbeddedQueue;
use crate::services::{LocalAgents, Platform, PlatformDefaults};
use crate::store::{SqliteStore, Store};
use crate::vmm::Backend;
use crate::vmm::docker::{DockerBackend, DockerBackendConfig};
use crate::worker::{Worker, WorkerSettings};

pub struct EmbeddedRuntime {
    pub platform: Platform,
    pub worker: Arc<Worker>,
    shutdown: watch::Sender<bool>,
    worker_task: Option<JoinHandle<()>>,
}

/// The agent binary: configured, or `aetherium-agent` next to the running program.
pub fn resolve_agent_path(config: &Config) -> CoreResult<PathBuf> {
    if let Some(path) = &config.vmm.agent_path {
        return Ok(path.clone());
    }
    let exe = std::env::current_exe().map_err(|e| CoreError::Internal(e.into()))?;
    let beside = exe.with_file_name("aetherium-agent");
    if beside.is_file() {
        return Ok(beside);
    }
    Err(CoreError::InvalidInput(format!(
        "cannot find the sandbox agent: no {} — set vmm.agent_path (AETHERIUM_AGENT_PATH) or install it next to the aetherium binary",
        beside.display()
    )))
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
        let socket_dir = config.socket_dir();
        std::fs::create_dir_all(&socket_dir).map_err(|e| {
            CoreError::InvalidInput(format!("cannot create {}: {e}", socket_dir.display()))
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
        let backend = DockerBackend::connect(DockerBackendConfig {
            host: config.vmm.docker.host.clone(),
            worker_id: config.worker.id.clone(),
            agent_path: resolve_agent_path(config)?,
            socket_dir,
            pids_limit: config.vmm.docker.pids_limit,
            network_mode: config.vmm.docker.network_mode.clone(),
        })
        .map_err(|e| CoreError::InvalidInput(e.to_string()))?;
        let heartbeat = Duration::from_secs(config.worker.heartbeat_interval_seconds);
        let backend: Arc<dyn Backend> = Arc::new(backend);
        let platform = Platform {
            store: Arc::new(store),
            queue: Arc::new(queue),
            bus: Arc::new(InProcessEventBus::default()),
            agents: Arc::new(LocalAgents {
                worker_id: config.worker.id.clone(),
                backend: backend.clone(),
            }),
            defaults: PlatformDefaults {
                vcpus: config.vmm.default_vcpus,
                memory_mb: config.vmm.default_memory_mb,
                image: config.vmm.docker.default_image.clone(),
                orchestrator: Orchestrator::Docker,
                exec_timeout_seconds: aetherium_types::MAX_EXEC_TIMEOUT_SECONDS,
                worker_stale_after: heartbeat * 3,
            },
        };
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        let settings = WorkerSettings {
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
            heartbeat_interval: heartbeat,
            lease: Duration::from_secs(config.queue.lease_seconds),
            poll_interval: Duration::from_millis(config.queue.poll_interval_ms),
            output_cap_bytes: config.vmm.output_cap_bytes,
            agent_ready_timeout: Duration::from_secs(30),
        };
        let worker = Worker::new(settings, platform.clone(), backend);
        // The first heartbeat registers the worker before the API takes requests.
        worker.heartbeat().await;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let worker_task = Some(tokio::spawn(worker.clone().run(shutdown_rx)));
        Ok(EmbeddedRuntime {
            platform,
            worker,
            shutdown,
            worker_task,
        })
    }

    /// Stops leasing, lets running tasks finish briefly, marks the worker offline.
    /// Sandboxes keep running; the next start adopts them.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.worker_task.take() {
            let _ = task.await;
        }
        self.platform.store.close().await;
    }
}
