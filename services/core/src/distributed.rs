//! Assembles distributed mode: one gateway or one worker process of a cluster that
//! shares PostgreSQL (state, task records, auth, events, logs) and Redis (the task
//! queue and the event bus).
//!
//! - A **gateway** serves the API and runs no worker; it runs the offline sweep (so
//!   a cluster whose workers all died still declares them offline) and the pruner.
//! - A **worker** runs the Docker backend and the worker loop (leases tasks, runs
//!   them, heartbeats, reconciles its sandboxes, sweeps offline peers).
//!
//! Both connect with retries (PostgreSQL and Redis may still be starting) and run
//! the migrations, which PostgreSQL serialises, so any number of processes may start
//! at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aetherium_common::Config;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::agents::{AgentRouter, LocalAgents};
use crate::agents::{OwnedAgents, RemoteAgents};
use crate::auth::{Auth, AuthSettings};
use crate::bus_redis::{RedisBusOptions, RedisEventBus};
use crate::error::{CoreError, CoreResult};
use crate::feed::{self, LogFeed};
use crate::queue::{RedisQueue, RedisQueueOptions, RedisTls, RetryPolicy};
use crate::runtime::{platform_defaults, retention, worker_settings};
use crate::services::Platform;
use crate::store::{PgStore, redact_url};
use crate::tunnel::{self, TunnelSecret};
use crate::worker::Worker;

/// Which process of the cluster this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DistributedRole {
    Gateway,
    Worker,
}

/// How long the start waits for PostgreSQL and Redis to answer.
const CONNECT_PATIENCE: Duration = Duration::from_secs(60);

pub struct DistributedRuntime {
    pub role: DistributedRole,
    pub platform: Platform,
    pub auth: Auth,
    /// The worker loop (worker processes only).
    pub worker: Option<Arc<Worker>>,
    pub queue: Arc<RedisQueue>,
    pub bus: Arc<RedisEventBus>,
    shutdown: watch::Sender<bool>,
    worker_task: Option<JoinHandle<()>>,
    background_stop: watch::Sender<bool>,
    background: Vec<JoinHandle<()>>,
}

/// Retries `attempt` while it fails with `Unavailable`, up to `patience`.
async fn with_patience<T, F, Fut>(what: &str, patience: Duration, mut attempt: F) -> CoreResult<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = CoreResult<T>>,
{
    let start = Instant::now();
    let mut delay = Duration::from_millis(200);
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(CoreError::Unavailable(message)) if start.elapsed() < patience => {
                tracing::warn!(%message, "{what} is not reachable yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(3));
            }
            Err(e) => return Err(e),
        }
    }
}

impl DistributedRuntime {
    /// Connects to PostgreSQL (running the migrations) and Redis, and starts what
    /// the role runs. `agents` reaches the sandboxes of other workers for streams,
    /// terminals and files (the gateway's router); `None` uses this process's own
    /// backend on a worker, and refuses on a gateway.
    pub async fn start(
        config: &Config,
        role: DistributedRole,
        agents: Option<Arc<dyn AgentRouter>>,
    ) -> CoreResult<DistributedRuntime> {
        let url = config.database_url();
        let redis_url = config.queue.redis_url.clone().ok_or_else(|| {
            CoreError::InvalidInput("queue.redis_url is required in distributed mode".into())
        })?;
        tracing::info!(database = %redact_url(&url), redis = %redact_url(&redis_url), ?role, "connecting");
        let store = Arc::new(
            with_patience("PostgreSQL", CONNECT_PATIENCE, || PgStore::connect(&url)).await?,
        );
        let redis_tls = RedisTls {
            ca: config.queue.redis_tls.ca.clone(),
            cert: config.queue.redis_tls.cert.clone(),
            key: config.queue.redis_tls.key.clone(),
        };
        let options = RedisQueueOptions {
            prefix: config.queue.redis_prefix.clone(),
            retry: RetryPolicy::new(Duration::from_secs(config.queue.retry_base_seconds)),
            reconcile_interval: Duration::from_secs(config.queue.reconcile_seconds),
            reconcile_grace: Duration::from_secs(config.queue.reconcile_seconds),
            tls: redis_tls.clone(),
            ..RedisQueueOptions::default()
        };
        let queue = Arc::new(
            with_patience("Redis", CONNECT_PATIENCE, || {
                RedisQueue::connect(&redis_url, store.clone(), options.clone())
            })
            .await?,
        );
        let bus = RedisEventBus::start(
            store.clone(),
            &redis_url,
            RedisBusOptions {
                channel: format!("{}events", config.queue.redis_prefix),
                tls: redis_tls,
                ..RedisBusOptions::default()
            },
        )
        .await?;
        let auth = Auth::new(
            store.clone(),
            AuthSettings {
                session_ttl: Duration::from_secs(config.auth.session_ttl_seconds),
            },
        )
        .await?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (background_stop, background_rx) = watch::channel(false);
        let log_feed = LogFeed::default();
        let mut background = vec![feed::spawn_log_writer(
            store.clone(),
            aetherium_common::logcapture::attach(feed::LOG_CHANNEL_CAPACITY),
            log_feed.clone(),
            background_rx.clone(),
        )];
        let secret = match config.cluster.secret.as_deref() {
            Some(secret) => Some(TunnelSecret::new(secret)?),
            None => None,
        };
        let backend = match role {
            DistributedRole::Worker => {
                // Gateways open the agents of every worker's sandboxes, so the key
                // comes from the secret they all share; without one (no tunnel) it
                // is this host's own.
                let tokens = match &secret {
                    Some(secret) => secret.agent_tokens(),
                    None => crate::identity::AgentTokens::load_or_create(&config.data_dir)
                        .map_err(|e| {
                            CoreError::InvalidInput(format!(
                                "cannot read or make the agent token key: {e}"
                            ))
                        })?,
                };
                Some(crate::host::host_backends(config, store.clone(), tokens).await?)
            }
            DistributedRole::Gateway => None,
        };
        let (backend, network): (Option<Arc<dyn crate::vmm::Backend>>, _) = match backend {
            Some(host) => (Some(host.backends), host.network),
            None => (None, None),
        };
        if config.cluster.tls.is_some() && matches!(role, DistributedRole::Worker) {
            crate::cluster_tls::worker_dns_name(&config.worker.id)
                .map_err(CoreError::InvalidInput)?;
        }
        let tls = match &config.cluster.tls {
            Some(files) => Some(crate::cluster_tls::ClusterTls::load(
                crate::cluster_tls::TlsFiles {
                    ca: files.ca.clone(),
                    cert: files.cert.clone(),
                    key: files.key.clone(),
                },
            )?),
            None => {
                if secret.is_some() {
                    tracing::warn!(
                        "cluster.plaintext_tunnel is on: the tunnel between gateways and workers is NOT encrypted (commands, output and files cross the network in clear)"
                    );
                }
                None
            }
        };
        let defaults = platform_defaults(config);
        let local = backend.as_ref().map(|backend| LocalAgents {
            worker_id: config.worker.id.clone(),
            backend: backend.clone(),
        });
        let agents: Arc<dyn AgentRouter> = match (agents, &secret, local) {
            (Some(agents), _, _) => agents,
            // Own VMs directly, other workers' through their tunnel endpoints.
            (None, Some(secret), local) => Arc::new(RemoteAgents {
                local,
                store: store.clone(),
                secret: secret.clone(),
                stale_after: defaults.worker_stale_after,
                tls: tls.clone(),
            }),
            (None, None, Some(local)) => Arc::new(local),
            (None, None, None) => Arc::new(NoAgents),
        };
        // A worker's tunnel endpoint: bound now, so that the address it advertises
        // (port 0 → the port bound) is in its first heartbeat.
        let mut config = config.clone();
        let tunnel_listener = match (&backend, &secret) {
            (Some(_), Some(_)) => {
                let listen = config
                    .worker
                    .tunnel_listen
                    .clone()
                    .filter(|l| !l.is_empty())
                    .unwrap_or_else(|| config.worker.address.clone());
                if listen.is_empty() {
                    tracing::warn!(
                        "worker.address is empty: no tunnel endpoint; streams, terminals and files of this worker's VMs cannot be reached from gateways"
                    );
                    None
                } else {
                    let listener = tokio::net::TcpListener::bind(&listen).await.map_err(|e| {
                        CoreError::InvalidInput(format!(
                            "cannot listen for the tunnel on {listen}: {e}"
                        ))
                    })?;
                    let bound = listener
                        .local_addr()
                        .map_err(|e| CoreError::Internal(e.into()))?;
                    config.worker.address = advertised(&config.worker.address, bound);
                    Some(listener)
                }
            }
            _ => None,
        };
        let config = &config;
        let keyring = match &config.workspaces.encryption_key {
            Some(key) => Some(crate::secrets::Keyring::from_hex(
                key,
                &crate::runtime::retired_keys(config),
            )?),
            None => {
                tracing::warn!(
                    "workspaces.encryption_key is not set: secrets cannot be stored or used in this cluster"
                );
                None
            }
        };
        if let Some(keyring) = &keyring {
            crate::runtime::rotate_secrets(&*store, keyring).await;
        }
        let workspace_data = crate::services::environments::WorkspaceData {
            environments: store.clone(),
            secrets: store.clone(),
            workspaces: store.clone(),
            prompts: store.clone(),
            tools: Arc::new(crate::services::environments::ToolCatalog::from_config(
                config,
            )?),
            keyring,
        };
        let platform = Platform {
            store: store.clone(),
            queue: queue.clone(),
            bus: bus.clone(),
            events: store.clone(),
            logs: store.clone(),
            log_feed,
            agents,
            defaults,
            workspace_data,
        };
        let heartbeat = Duration::from_secs(config.worker.heartbeat_interval_seconds);
        let (worker, worker_task) = match backend {
            Some(backend) => {
                if let (Some(listener), Some(secret)) = (tunnel_listener, secret) {
                    background.push(tokio::spawn(tunnel::serve_with(
                        listener,
                        Arc::new(OwnedAgents {
                            worker_id: config.worker.id.clone(),
                            store: store.clone(),
                            backend: backend.clone(),
                        }),
                        secret,
                        tunnel::TunnelOptions {
                            tls: tls.clone(),
                            ..Default::default()
                        },
                        background_rx.clone(),
                    )));
                }
                let worker = Worker::with_network(
                    worker_settings(config),
                    platform.clone(),
                    backend,
                    network,
                );
                // Registered before the process says it is up.
                worker.heartbeat().await;
                let task = tokio::spawn(worker.clone().run(shutdown_rx));
                (Some(worker), Some(task))
            }
            None => {
                // Workers sweep at each heartbeat; the gateway sweeps too, so that
                // dead workers are declared offline when no worker is left.
                background.push(platform.spawn_offline_sweeper(heartbeat, background_rx.clone()));
                background.push(feed::spawn_pruner(
                    store.clone(),
                    store.clone(),
                    retention(config),
                    background_rx,
                ));
                (None, None)
            }
        };
        Ok(DistributedRuntime {
            role,
            platform,
            auth,
            worker,
            queue,
            bus,
            shutdown,
            worker_task,
            background_stop,
            background,
        })
    }

    /// A worker stops leasing, lets running tasks finish for a grace period, stops
    /// and releases the rest to the queue (another worker takes them at once), and
    /// marks itself offline; its sandboxes keep running and are adopted when it
    /// starts again. Then events and logs are flushed and the connections closed.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.worker_task.take() {
            let _ = task.await;
        }
        self.bus.flush().await;
        let _ = self.background_stop.send(true);
        for task in self.background.drain(..) {
            let _ = task.await;
        }
        self.bus.stop();
        self.platform.store.close().await;
    }
}

/// The tunnel address to advertise: the configured one, with the port actually
/// bound when it said 0 (or the bound address when none was configured).
fn advertised(configured: &str, bound: std::net::SocketAddr) -> String {
    match configured.rsplit_once(':') {
        Some((host, "0")) => format!("{host}:{}", bound.port()),
        Some(_) => configured.to_string(),
        None if configured.is_empty() => bound.to_string(),
        None => format!("{configured}:{}", bound.port()),
    }
}

/// A gateway without a route to workers' sandboxes: direct work is refused with
/// 503 (queued work — create, execute, delete — does not need it).
struct NoAgents;

#[async_trait::async_trait]
impl AgentRouter for NoAgents {
    async fn agent_for(
        &self,
        vm: &aetherium_types::Vm,
    ) -> CoreResult<crate::agent_client::AgentClient> {
        Err(CoreError::Unavailable(format!(
            "VM {} is owned by worker {}: streams, terminals and files through this gateway need the workers' internal endpoints",
            vm.id,
            vm.worker_id.as_deref().unwrap_or("(none)")
        )))
    }
}
