//! The use cases the gateway calls. The gateway never touches a backend, the queue or
//! the store directly: it asks these services, which validate, persist and enqueue.

pub mod cluster;
pub mod engine;
pub mod environments;
mod executions;
mod observe;
mod tasks;
mod vms;
pub mod workspaces;

pub use tasks::{CANCELLED_BEFORE_START, CANCELLED_WHILE_RUNNING, CancelledTask, SmartExecution};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aetherium_common::EventBus;
use aetherium_types::{
    ComponentHealth, CreateVmRequest, Event, EventType, ExecuteCommandRequest, Execution,
    ExecutionStatus, HealthResponse, NetworkPolicy, Orchestrator, Principal, ReadyResponse,
    SmartExecuteRequest, Task, TaskStatus, TaskType, Vm, VmStatus, Worker, WorkerStatus, new_id,
};
use chrono::Utc;
use serde::{Deserialize, Serialize};

use crate::agent_client::AgentClient;
use crate::agents::AgentRouter;
use crate::error::{CoreError, CoreResult};
use crate::feed::LogFeed;
use crate::queue::{CancelOutcome, QueueStats, TaskQueue};
use crate::services::cluster::PlacementRequest;
use crate::store::{Cursor, EventLog, LogStore, Page, Store, TaskFilter, VmFilter};

/// Payload of `vm:create`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatePayload {
    pub vm_id: String,
    /// An execution to queue on the new VM once it runs (smart-execute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub then_execute: Option<ExecPayload>,
    /// Tool specs (`name` or `name@version`, versions merged in) to install as root
    /// once the agent answers, before the VM is RUNNING. The worker plans them with
    /// its own catalog and architecture.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<String>,
    /// Variables for every process of the sandbox (the request's `env`): in clear
    /// only where no encryption key is configured; read them with
    /// [`Platform::vm_env`]. Task reads show the names only.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// `env` sealed with the secrets key, bound to the VM id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_sealed: Option<SealedEnv>,
}

/// Payload of `vm:execute`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecPayload {
    pub execution_id: String,
    pub vm_id: String,
    pub command: String,
    pub args: Vec<String>,
    /// In clear only where no encryption key is configured; read it with
    /// [`Platform::exec_env`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// `env` sealed with the secrets key: task payloads are kept in the database
    /// and shown to every role, and env often carries credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_sealed: Option<SealedEnv>,
    #[serde(default)]
    pub cwd: Option<String>,
    pub timeout_seconds: u64,
}

/// A command's environment, encrypted (AES-256-GCM, bound to its execution id).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SealedEnv {
    pub key_id: String,
    /// Base64.
    pub nonce: String,
    /// Base64.
    pub ciphertext: String,
}

fn env_aad(execution_id: &str) -> Vec<u8> {
    [b"aetherium exec env\0".as_slice(), execution_id.as_bytes()].concat()
}

/// What a VM's sealed environment is bound to: it opens for that VM only.
fn vm_env_aad(vm_id: &str) -> Vec<u8> {
    [b"aetherium vm env\0".as_slice(), vm_id.as_bytes()].concat()
}

/// What task payloads show of a command's environment: the names, never the values.
pub const REDACTED_ENV_VALUE: &str = "[REDACTED]";

/// Replaces the values of `env` in a task payload (and in the command a `vm:create`
/// runs next, `then_execute`).
fn hide_env_values(payload: &mut serde_json::Value) {
    if let Some(serde_json::Value::Object(env)) = payload.get_mut("env") {
        for value in env.values_mut() {
            *value = serde_json::Value::String(REDACTED_ENV_VALUE.into());
        }
    }
    if let Some(then) = payload.get_mut("then_execute") {
        hide_env_values(then);
    }
}

/// Why an execution whose task was lost (an outage while it was queued) failed.
pub const ORPHANED_EXECUTION: &str = "its task was lost (the database or the queue failed while it was queued or finishing): run it again";

/// Payload of `vm:network`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetworkPayload {
    pub vm_id: String,
    pub policy: Option<NetworkPolicy>,
}

/// Payload of `vm:delete` and of the control tasks (`vm:pause`, `vm:resume`, `vm:snapshot`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeletePayload {
    pub vm_id: String,
}

/// Defaults applied to requests that leave sizes out.
#[derive(Debug, Clone)]
pub struct PlatformDefaults {
    pub vcpus: u32,
    pub memory_mb: u64,
    /// Containers' disk quota in MiB when the request has none (`None`: unlimited).
    pub disk_mb: Option<u64>,
    pub image: String,
    pub orchestrator: Orchestrator,
    pub exec_timeout_seconds: u64,
    /// A worker not seen for this long is treated as offline.
    pub worker_stale_after: Duration,
}

/// The shared handles every use case needs.
#[derive(Clone)]
pub struct Platform {
    pub store: Arc<dyn Store>,
    pub queue: Arc<dyn TaskQueue>,
    pub bus: Arc<dyn EventBus>,
    pub agents: Arc<dyn AgentRouter>,
    pub defaults: PlatformDefaults,
    /// Every published event with its sequence number (resumable event streams).
    pub events: Arc<dyn EventLog>,
    /// The platform's own stored log records, and their live feed.
    pub logs: Arc<dyn LogStore>,
    pub log_feed: LogFeed,
    /// Environments and secrets (and their key).
    pub workspace_data: crate::services::environments::WorkspaceData,
}

/// The request's metadata, plus `network: none` when a microVM asked for no network
/// (the worker reads it when it makes the VM).
fn vm_metadata(req: &CreateVmRequest) -> serde_json::Map<String, serde_json::Value> {
    let mut metadata = req.metadata.clone();
    if req.network == Some(aetherium_types::VmNetwork::None) {
        metadata.insert("network".into(), "none".into());
    }
    metadata
}

/// The network policy a credential's quota fixes for the sandboxes it creates.
pub(crate) fn key_network_policy(by: Option<&Principal>) -> Option<&NetworkPolicy> {
    by?.quota.as_ref()?.network_policy.as_ref()
}

/// A new sandbox's policy when its key fixes one (`fixed`, stored normalized): that
/// one; a request asking for another is refused, not narrowed silently, so the
/// caller learns what its sandbox really gets.
fn fixed_policy_for(
    by: &Principal,
    fixed: &NetworkPolicy,
    asked: Option<&NetworkPolicy>,
) -> CoreResult<NetworkPolicy> {
    if let Some(asked) = asked {
        let asked = asked.normalized().map_err(CoreError::InvalidInput)?;
        if &asked != fixed {
            return Err(CoreError::Forbidden(format!(
                "{}'s quota fixes the network policy of its sandboxes: leave network_policy out (its quota shows it)",
                by.quota_holder()
            )));
        }
    }
    Ok(fixed.clone())
}

/// A request's network policy, checked and in CIDR form (containers on the
/// isolated network, microVMs on an isolated bridge; a worker without isolation
/// refuses it).
fn network_policy_for(policy: Option<&NetworkPolicy>) -> CoreResult<Option<NetworkPolicy>> {
    let Some(policy) = policy else {
        return Ok(None);
    };
    policy
        .normalized()
        .map(Some)
        .map_err(CoreError::InvalidInput)
}

/// Which control operations each backend supports (the API answers 409 saying so for others).
pub fn backend_can(orchestrator: Orchestrator, task_type: TaskType) -> bool {
    match task_type {
        TaskType::VmPause | TaskType::VmResume => true,
        TaskType::VmSnapshot => orchestrator == Orchestrator::Firecracker,
        _ => true,
    }
}

pub fn new_task(task_type: TaskType, payload: serde_json::Value, vm_id: Option<&str>) -> Task {
    let policy = task_type.policy();
    let now = Utc::now();
    Task {
        id: new_id(),
        task_type,
        status: TaskStatus::Pending,
        payload,
        result: None,
        error: None,
        priority: 5,
        retry_count: 0,
        max_retries: policy.max_retries,
        timeout_seconds: policy.timeout.as_secs(),
        worker_id: None,
        target_worker_id: None,
        vm_id: vm_id.map(str::to_string),
        created_at: now,
        scheduled_at: now,
        started_at: None,
        completed_at: None,
        archived_at: None,
    }
}

fn to_value(v: &impl Serialize) -> CoreResult<serde_json::Value> {
    serde_json::to_value(v).map_err(|e| CoreError::Internal(e.into()))
}

impl Platform {
    pub fn publish(&self, event_type: EventType, resource_id: &str, data: serde_json::Value) {
        self.bus.publish(Event::new(event_type, resource_id, data));
    }

    /// Persists and enqueues a task, and announces it.
    pub async fn submit(&self, task: &Task) -> CoreResult<()> {
        self.queue.enqueue(task).await?;
        self.publish(
            EventType::TaskCreated,
            &task.id,
            serde_json::json!({"type": task.task_type, "vm_id": task.vm_id}),
        );
        Ok(())
    }

    // ---- VMs -------------------------------------------------------------------

    /// Refuses (429) the VM just recorded for `by` when its key's quota cannot hold
    /// it, and removes the record. Counted after the insert, so that parallel
    /// creates never together pass a quota (at worst both are refused).
    async fn enforce_quota(&self, by: &Principal, vm: &Vm) -> CoreResult<()> {
        let Some(quota) = &by.quota else {
            return Ok(());
        };
        let refusal = match self.store.usage_by(&by.id).await {
            Ok(used) => quota.exceeded_by(by.quota_holder(), used.vms, used.vcpus, used.memory_mb),
            Err(e) => Some(format!(
                "cannot count {}'s sandboxes: {e}",
                by.quota_holder()
            )),
        };
        match refusal {
            None => Ok(()),
            Some(message) => {
                self.store.delete_vm(&vm.id).await?;
                Err(CoreError::TooManyRequests(message))
            }
        }
    }

    /// Chooses `vm`'s worker and records the VM there (CREATED: it counts against
    /// the worker's capacity from now on). Checked again once recorded, since
    /// parallel creates may have chosen the same last slot: the ones that overfill
    /// it are removed and placed again, a few times, then answered 503.
    async fn place_and_record(
        &self,
        vm: &mut Vm,
        placement: &PlacementRequest<'_>,
    ) -> CoreResult<Worker> {
        const ATTEMPTS: u32 = 4;
        let mut attempt = 1;
        loop {
            let worker = self.place_vm(placement).await?;
            vm.worker_id = Some(worker.id.clone());
            self.store.insert_vm(vm).await?;
            if self.still_fits(&worker).await? {
                return Ok(worker);
            }
            self.store.delete_vm(&vm.id).await?;
            if attempt == ATTEMPTS {
                return Err(CoreError::Unavailable(format!(
                    "worker {} filled up with other new VMs meanwhile; try again",
                    worker.id
                )));
            }
            // Apart, so that the creates that collided do not collide again.
            let spread = u64::from(rand::random::<u8>()) % 50;
            tokio::time::sleep(Duration::from_millis(10 + spread * u64::from(attempt))).await;
            attempt += 1;
        }
    }

    /// Readiness: the store answers, the queue answers, and a live worker with a
    /// healthy backend can take work. Each component says why when it is not.
    pub async fn ready(&self) -> ReadyResponse {
        fn component(result: Result<String, String>) -> ComponentHealth {
            match result {
                Ok(message) => ComponentHealth {
                    status: "healthy".into(),
                    message: Some(message),
                },
                Err(message) => ComponentHealth {
                    status: "unhealthy".into(),
                    message: Some(message),
                },
            }
        }
        let mut components = BTreeMap::new();
        let store = match tokio::time::timeout(Duration::from_secs(5), self.store.ping()).await {
            Ok(Ok(())) => Ok("answers".to_string()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer within 5s".to_string()),
        };
        components.insert("store".to_string(), component(store));
        let queue = match tokio::time::timeout(Duration::from_secs(5), self.queue.stats()).await {
            Ok(Ok(stats)) => Ok(format!(
                "{} pending, {} running",
                stats.pending, stats.running
            )),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer within 5s".to_string()),
        };
        components.insert("queue".to_string(), component(queue));
        let workers = match self.store.list_workers().await {
            Ok(workers) => {
                let live: Vec<&Worker> =
                    workers.iter().filter(|w| self.worker_is_live(w)).collect();
                let active = live
                    .iter()
                    .filter(|w| w.status == WorkerStatus::Active)
                    .count();
                if active > 0 {
                    Ok(format!("{active} live worker(s) can take work"))
                } else if live.is_empty() {
                    Err("no live worker".to_string())
                } else {
                    Err(live
                        .iter()
                        .map(|w| {
                            format!(
                                "{} is {}{}",
                                w.id,
                                w.status.as_str(),
                                w.status_message
                                    .as_deref()
                                    .map(|m| format!(": {m}"))
                                    .unwrap_or_default()
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("; "))
                }
            }
            Err(e) => Err(format!("cannot list workers: {e}")),
        };
        components.insert("workers".to_string(), component(workers));
        let ready = components.values().all(|c| c.status == "healthy");
        ReadyResponse {
            status: if ready { "ready" } else { "not_ready" }.into(),
            components,
            timestamp: Utc::now(),
        }
    }

    pub async fn health(&self) -> HealthResponse {
        let mut components = BTreeMap::new();
        let db = match self.store.ping().await {
            Ok(()) => ComponentHealth {
                status: "healthy".into(),
                message: None,
            },
            Err(e) => ComponentHealth {
                status: "unhealthy".into(),
                message: Some(e.to_string()),
            },
        };
        components.insert("database".to_string(), db);
        let workers = self.store.list_workers().await.unwrap_or_default();
        let live: Vec<&Worker> = workers.iter().filter(|w| self.worker_is_live(w)).collect();
        let active = live
            .iter()
            .filter(|w| w.status == WorkerStatus::Active)
            .count();
        let workers_health = if active > 0 {
            ComponentHealth {
                status: "healthy".into(),
                message: Some(format!("{active} active worker(s)")),
            }
        } else {
            let why: Vec<String> = live
                .iter()
                .map(|w| {
                    format!(
                        "{}: {}",
                        w.id,
                        w.status_message
                            .clone()
                            .unwrap_or_else(|| w.status.as_str().into())
                    )
                })
                .collect();
            ComponentHealth {
                status: "unhealthy".into(),
                message: Some(if why.is_empty() {
                    "no live worker".into()
                } else {
                    why.join("; ")
                }),
            }
        };
        components.insert("workers".to_string(), workers_health);
        let healthy = components.values().all(|c| c.status == "healthy");
        HealthResponse {
            status: if healthy { "healthy" } else { "degraded" }.into(),
            components,
            timestamp: Utc::now(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}
