//! A worker: leases tasks and drives its backend and the agents inside its sandboxes.
//! It heartbeats into the `workers` table, reconciles its sandboxes with the database
//! (on start and at every heartbeat), and reacts to sandboxes that exit on their own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aetherium_types::agent::{DataEvent, ProcessEvent, Signal};

use crate::services::engine::{Attach, Capture, Command, Outcome};
use aetherium_types::{
    EventType, Execution, ExecutionStatus, Orchestrator, Task, TaskType, Vm, VmStatus,
    Worker as WorkerInfo, WorkerStatus,
};
use chrono::Utc;
use futures::StreamExt;
use serde_json::json;
use tokio::sync::{Semaphore, watch};
use tracing::Instrument as _;

use crate::agent_client::AgentError;
use crate::net::HostNetwork;
use crate::queue::FailOutcome;
use crate::services::{
    CANCELLED_WHILE_RUNNING, CreatePayload, DeletePayload, ExecPayload, NetworkPayload, Platform,
    new_task,
};
use crate::store::VmFilter;
use crate::vmm::{Backend, GuestNetwork, Limit, SandboxExit, SandboxSpec, SandboxState};

mod execute;
mod reconcile;
mod vm_tools;
mod vms;
mod workspaces;

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub id: String,
    pub hostname: String,
    pub address: String,
    pub zone: String,
    pub labels: serde_json::Map<String, serde_json::Value>,
    pub cpu_cores: u32,
    pub memory_mb: u64,
    pub max_vms: u32,
    pub concurrency: usize,
    pub heartbeat_interval: Duration,
    pub lease: Duration,
    pub poll_interval: Duration,
    pub output_cap_bytes: usize,
    /// How long a new sandbox's agent may take to answer.
    pub agent_ready_timeout: Duration,
    /// At shutdown, how long running tasks may take to finish before they are
    /// stopped and released to the queue.
    pub shutdown_grace: Duration,
    /// Where `vm:snapshot` writes (`<dir>/<vm id>/<task id>/`).
    pub snapshot_dir: std::path::PathBuf,
    /// Workspaces: agent commands, agent user, tool catalog and mirrors, idle checks.
    pub workspaces: aetherium_common::config::WorkspacesConfig,
}

/// Why a task attempt failed, and whether trying again can help.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct TaskError {
    pub message: String,
    pub retryable: bool,
}

impl TaskError {
    fn retry(message: impl Into<String>) -> Self {
        TaskError {
            message: message.into(),
            retryable: true,
        }
    }
    fn permanent(message: impl Into<String>) -> Self {
        TaskError {
            message: message.into(),
            retryable: false,
        }
    }
}

impl From<crate::error::CoreError> for TaskError {
    fn from(e: crate::error::CoreError) -> Self {
        TaskError::retry(e.to_string())
    }
}

impl From<crate::vmm::BackendError> for TaskError {
    fn from(e: crate::vmm::BackendError) -> Self {
        TaskError {
            retryable: e.is_retryable(),
            message: e.to_string(),
        }
    }
}

type TaskResult = Result<serde_json::Value, TaskError>;

pub struct Worker {
    settings: WorkerSettings,
    platform: Platform,
    backend: Arc<dyn Backend>,
    /// Guest networking for microVMs (`None`: they get no network device).
    network: Option<Arc<HostNetwork>>,
    started_at: chrono::DateTime<Utc>,
    /// The status last announced as a `worker.*` event (`None` before the first).
    announced: std::sync::Mutex<Option<WorkerStatus>>,
    /// Tasks running now, by id: a shutdown stops the ones that outlast its grace
    /// period and hands them back to the queue (`TaskQueue::release`).
    running: std::sync::Mutex<std::collections::HashMap<String, tokio::task::AbortHandle>>,
}

impl Worker {
    pub fn new(
        settings: WorkerSettings,
        platform: Platform,
        backend: Arc<dyn Backend>,
    ) -> Arc<Self> {
        Worker::with_network(settings, platform, backend, None)
    }

    pub fn with_network(
        settings: WorkerSettings,
        platform: Platform,
        backend: Arc<dyn Backend>,
        network: Option<Arc<HostNetwork>>,
    ) -> Arc<Self> {
        Arc::new(Worker {
            settings,
            platform,
            backend,
            network,
            started_at: Utc::now(),
            announced: std::sync::Mutex::new(None),
            running: std::sync::Mutex::new(std::collections::HashMap::new()),
        })
    }

    pub fn id(&self) -> &str {
        &self.settings.id
    }

    /// Runs until `shutdown` turns true, then stops leasing and lets running tasks
    /// finish (up to `shutdown_grace`); the ones still running then are stopped and
    /// released to the queue at once (no attempt counted), so another worker (or this
    /// one, restarted) takes them without waiting for their lease to expire.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        self.reconcile_network().await;
        self.reopen_networks().await;
        self.heartbeat().await;
        let heartbeat = tokio::spawn(self.clone().heartbeat_loop(shutdown.clone()));
        let exits = tokio::spawn(self.clone().exit_watch_loop(shutdown.clone()));
        let idle = tokio::spawn(self.clone().workspace_idle_loop(shutdown.clone()));
        let expiry = tokio::spawn(self.clone().expiry_loop(shutdown.clone()));
        let permits = Arc::new(Semaphore::new(self.settings.concurrency));
        tracing::info!(worker = %self.settings.id, "worker started");
        loop {
            if *shutdown.borrow() {
                break;
            }
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                _ = shutdown.changed() => break,
            };
            match self
                .platform
                .queue
                .lease(&self.settings.id, self.settings.lease)
                .await
            {
                Ok(Some(task)) => {
                    let me = self.clone();
                    let id = task.id.clone();
                    // Held until the handle is registered, so that the task's own
                    // removal below comes after the insertion.
                    let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
                    let handle = tokio::spawn(async move {
                        let id = task.id.clone();
                        me.clone().run_task(task).await;
                        me.running
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&id);
                        drop(permit);
                    });
                    running.insert(id, handle.abort_handle());
                }
                Ok(None) => {
                    drop(permit);
                    tokio::select! {
                        _ = self.platform.queue.wait_for_work(self.settings.poll_interval) => {}
                        _ = shutdown.changed() => break,
                    }
                }
                Err(e) => {
                    drop(permit);
                    tracing::error!(error = %e, "leasing a task failed");
                    tokio::time::sleep(self.settings.poll_interval).await;
                }
            }
        }
        heartbeat.abort();
        exits.abort();
        idle.abort();
        expiry.abort();
        tracing::info!(worker_id = %self.settings.id, "worker draining: no new tasks");
        // An administrator's drain must outlive this stop (the rows below replace it).
        let drained_by_request = self
            .platform
            .store
            .get_worker(&self.settings.id)
            .await
            .ok()
            .flatten()
            .is_some_and(|w| {
                w.status == WorkerStatus::Draining
                    && w.status_message.as_deref()
                        == Some(crate::store::workers::DRAINED_BY_REQUEST)
            });
        let vm_count = self.owned_vms().await.map(|v| v.len() as u32).unwrap_or(0);
        let draining = self.info(
            WorkerStatus::Draining,
            Some("shutting down".into()),
            vm_count,
        );
        if self.platform.store.upsert_worker(&draining).await.is_ok() {
            self.announce(WorkerStatus::Draining, draining.status_message.as_deref());
        }
        // Running tasks get the grace period; the row stays fresh meanwhile, so that
        // no sweep takes a draining worker for a lost one (and fails its VMs).
        let all = self.settings.concurrency as u32;
        let deadline = Instant::now() + self.settings.shutdown_grace;
        let finished = permits.acquire_many(all);
        tokio::pin!(finished);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            tokio::select! {
                _ = &mut finished => break,
                _ = tokio::time::sleep(left.min(self.settings.heartbeat_interval)) => {
                    let fresh = self.info(WorkerStatus::Draining, draining.status_message.clone(), vm_count);
                    let _ = self.platform.store.upsert_worker(&fresh).await;
                }
            }
        }
        self.release_unfinished().await;
        self.mark_offline(drained_by_request).await;
        tracing::info!(worker = %self.settings.id, "worker stopped");
    }

    /// Stops the tasks still running and gives them back to the queue.
    async fn release_unfinished(&self) {
        let unfinished: Vec<(String, tokio::task::AbortHandle)> = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        for (task_id, handle) in unfinished {
            // Stopped first, so that it cannot run here and elsewhere at once.
            handle.abort();
            match self
                .platform
                .queue
                .release(&task_id, &self.settings.id)
                .await
            {
                Ok(true) => {
                    tracing::info!(%task_id, "unfinished task released to the queue")
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(%task_id, error = %e, "cannot release a task: its lease will expire")
                }
            }
        }
    }

    // ---- running one task --------------------------------------------------------

    /// Runs one task inside a `task` span carrying its task, VM, worker and
    /// execution ids, so every record logged on the way is tagged with them.
    async fn run_task(self: Arc<Self>, task: Task) {
        let span = tracing::info_span!(
            "task",
            task_id = %task.id,
            task_type = %task.task_type,
            worker_id = %self.settings.id,
            vm_id = tracing::field::Empty,
            execution_id = tracing::field::Empty,
        );
        if let Some(vm_id) = task.vm_id.as_deref() {
            span.record("vm_id", vm_id);
        }
        if let Some(execution_id) = task.payload.get("execution_id").and_then(|v| v.as_str()) {
            span.record("execution_id", execution_id);
        }
        self.run_task_in_span(task).instrument(span).await;
    }

    async fn run_task_in_span(self: Arc<Self>, task: Task) {
        let queue = self.platform.queue.clone();
        let worker_id = self.settings.id.clone();
        self.platform.publish(
            EventType::TaskStarted,
            &task.id,
            json!({"type": task.task_type, "worker_id": worker_id, "attempt": task.retry_count + 1}),
        );
        tracing::info!(task_id = %task.id, task_type = %task.task_type, attempt = task.retry_count + 1, "task started");
        let timeout = Duration::from_secs(task.timeout_seconds.max(1));
        let lease = self.settings.lease;
        // Keep the lease alive while the handler runs, and watch for a cancellation:
        // at every lease extension (any worker), and at once when this process's bus
        // carries the request (embedded mode).
        let (cancel_tx, cancel) = watch::channel(false);
        let keepalive = {
            let queue = queue.clone();
            let (task_id, worker_id) = (task.id.clone(), worker_id.clone());
            let mut events = Some(self.platform.bus.subscribe());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(lease / 3);
                tick.tick().await;
                loop {
                    let extend = tokio::select! {
                        _ = tick.tick() => true,
                        event = next_event(&mut events) => match event {
                            Some(e) if e.resource_id == task_id
                                && e.event_type == EventType::TaskCancelRequested => false,
                            Some(_) => continue,
                            None => false,
                        },
                    };
                    if extend {
                        match queue.extend_lease(&task_id, &worker_id, lease).await {
                            Ok(true) => {}
                            Ok(false) => return,
                            Err(e) => {
                                tracing::warn!(%task_id, error = %e, "lease extension failed")
                            }
                        }
                    }
                    if !*cancel_tx.borrow()
                        && matches!(queue.cancel_requested(&task_id).await, Ok(true))
                    {
                        tracing::info!(%task_id, "cancellation requested: stopping the task");
                        let _ = cancel_tx.send(true);
                    }
                }
            })
        };
        let work = tokio::time::timeout(timeout, self.handle(&task, cancel.clone()));
        let outcome = tokio::select! {
            outcome = work => match outcome {
                Ok(outcome) => outcome,
                Err(_) => Err(TaskError::retry(format!(
                    "timed out after {}s",
                    timeout.as_secs()
                ))),
            },
            // Handlers stop cooperatively; one that does not within the grace period
            // is dropped.
            _ = async {
                until_cancelled(cancel.clone()).await;
                tokio::time::sleep(CANCEL_GRACE).await;
            } => Err(TaskError::permanent(CANCELLED_WHILE_RUNNING)),
        };
        keepalive.abort();
        // Cancelled: the handler stopped short (a handler that finished first wins).
        if *cancel.borrow() && outcome.is_err() {
            self.on_cancelled(&task).await;
            if let Err(e) = queue
                .mark_cancelled(&task.id, &worker_id, CANCELLED_WHILE_RUNNING)
                .await
            {
                tracing::error!(task_id = %task.id, error = %e, "cannot record a task cancellation");
            }
            tracing::info!(task_id = %task.id, task_type = %task.task_type, "task cancelled");
            self.platform.publish(
                EventType::TaskCancelled,
                &task.id,
                json!({"type": task.task_type, "vm_id": task.vm_id, "reason": CANCELLED_WHILE_RUNNING}),
            );
            return;
        }
        match outcome {
            Ok(result) => {
                if let Err(e) = queue.complete(&task.id, &worker_id, result.clone()).await {
                    tracing::error!(task_id = %task.id, error = %e, "cannot record task completion");
                }
                tracing::info!(task_id = %task.id, task_type = %task.task_type, "task completed");
                self.platform.publish(
                    EventType::TaskCompleted,
                    &task.id,
                    json!({"type": task.task_type, "result": result}),
                );
            }
            Err(err) => {
                let outcome = queue
                    .fail(&task.id, &worker_id, &err.message, err.retryable)
                    .await
                    .unwrap_or(FailOutcome::Failed);
                match outcome {
                    FailOutcome::WillRetry { after } => {
                        tracing::warn!(task_id = %task.id, task_type = %task.task_type, error = %err.message, retry_in = ?after, "task attempt failed");
                    }
                    FailOutcome::Failed => {
                        tracing::error!(task_id = %task.id, task_type = %task.task_type, error = %err.message, "task failed");
                        self.on_final_failure(&task, &err.message).await;
                        self.platform.publish(
                            EventType::TaskFailed,
                            &task.id,
                            json!({"type": task.task_type, "error": err.message}),
                        );
                    }
                }
            }
        }
    }

    async fn handle(&self, task: &Task, cancel: watch::Receiver<bool>) -> TaskResult {
        match task.task_type {
            TaskType::VmCreate => self.handle_create(parse(&task.payload)?, cancel).await,
            TaskType::VmExecute => {
                self.handle_execute(task, parse(&task.payload)?, cancel)
                    .await
            }
            TaskType::VmDelete => self.handle_delete(parse(&task.payload)?).await,
            TaskType::VmPause | TaskType::VmResume | TaskType::VmSnapshot => {
                self.handle_control(task, parse(&task.payload)?).await
            }
            TaskType::VmNetwork => self.handle_network(parse(&task.payload)?).await,
            TaskType::WorkspaceCreate => {
                self.handle_workspace_create(parse(&task.payload)?, cancel)
                    .await
            }
            TaskType::PromptExecute => {
                self.handle_prompt_execute(task, parse(&task.payload)?, cancel)
                    .await
            }
            other => Err(TaskError::permanent(format!(
                "task type {other} is not handled by this worker yet"
            ))),
        }
    }

    /// The task was cancelled while it ran: nothing half-made stays behind, and what
    /// it was for says it was cancelled.
    async fn on_cancelled(&self, task: &Task) {
        match task.task_type {
            TaskType::VmCreate => {
                if let Ok(payload) = parse::<CreatePayload>(&task.payload) {
                    if let Err(e) = self.remove_sandbox(&payload.vm_id).await {
                        tracing::warn!(vm_id = %payload.vm_id, error = %e, "cannot remove the sandbox of a cancelled create");
                    }
                    let message = "VM creation was cancelled";
                    self.mark_vm_failed(
                        &payload.vm_id,
                        &[VmStatus::Created, VmStatus::Starting],
                        message,
                    )
                    .await;
                    if let Some(exec) = payload.then_execute {
                        self.fail_execution(&exec.execution_id, message).await;
                    }
                }
            }
            TaskType::VmExecute => {
                if let Ok(payload) = parse::<ExecPayload>(&task.payload) {
                    self.fail_execution(&payload.execution_id, CANCELLED_WHILE_RUNNING)
                        .await;
                }
            }
            TaskType::WorkspaceCreate => {
                self.workspace_create_ended(task, CANCELLED_WHILE_RUNNING)
                    .await
            }
            TaskType::PromptExecute => {
                self.prompt_task_ended(
                    task,
                    aetherium_types::PromptStatus::Cancelled,
                    CANCELLED_WHILE_RUNNING,
                )
                .await
            }
            _ => {}
        }
    }

    /// The task failed for good: leave its resources in a state that says so.
    async fn on_final_failure(&self, task: &Task, error: &str) {
        match task.task_type {
            TaskType::VmCreate => {
                if let Ok(payload) = parse::<CreatePayload>(&task.payload) {
                    // Nothing half-made stays behind.
                    let _ = self.remove_sandbox(&payload.vm_id).await;
                    let message = format!("VM failed to start: {error}");
                    self.mark_vm_failed(
                        &payload.vm_id,
                        &[VmStatus::Created, VmStatus::Starting],
                        &message,
                    )
                    .await;
                    if let Some(exec) = payload.then_execute {
                        self.fail_execution(&exec.execution_id, &message).await;
                    }
                }
            }
            TaskType::VmExecute => {
                if let Ok(payload) = parse::<ExecPayload>(&task.payload) {
                    self.fail_execution(&payload.execution_id, error).await;
                }
            }
            TaskType::VmDelete => {
                if let Ok(payload) = parse::<DeletePayload>(&task.payload) {
                    self.mark_vm_failed(
                        &payload.vm_id,
                        &[VmStatus::Stopping],
                        &format!("delete failed: {error}"),
                    )
                    .await;
                }
            }
            TaskType::WorkspaceCreate => self.workspace_create_ended(task, error).await,
            TaskType::PromptExecute => {
                self.prompt_task_ended(task, aetherium_types::PromptStatus::Failed, error)
                    .await
            }
            _ => {}
        }
    }

    async fn fail_execution(&self, execution_id: &str, error: &str) {
        let store = &self.platform.store;
        if let Ok(Some(mut e)) = store.get_execution(execution_id).await
            && !e.status.is_finished()
        {
            e.status = ExecutionStatus::Failed;
            e.error = Some(error.to_string());
            e.completed_at = Some(Utc::now());
            if store.update_execution(&e).await.is_ok() {
                self.platform.publish_execution_done(&e);
            }
        }
    }
}

/// Whether a microVM has a network device (`metadata.network: none` gives it none).
fn wants_network(vm: &Vm) -> bool {
    vm.metadata.get("network").and_then(|v| v.as_str()) != Some("none")
}

/// Why a sandbox that wrote more than its `disk_mb` is FAILED.
pub const OVER_DISK_QUOTA: &str = "the sandbox was stopped for writing more than its disk quota (disk_mb); its files are kept until it is deleted";
/// What a VM whose sandbox was removed by someone else says.
pub const REMOVED_OUTSIDE: &str = "the sandbox was removed outside Aetherium (by someone else, e.g. `docker rm`): its processes and files are gone";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ExitCause {
    Exited(i64),
    OverLimit(Limit, i64),
    Removed,
}

fn parse<T: serde::de::DeserializeOwned>(payload: &serde_json::Value) -> Result<T, TaskError> {
    serde_json::from_value(payload.clone())
        .map_err(|e| TaskError::permanent(format!("malformed task payload: {e}")))
}

fn execution_result(e: &Execution) -> serde_json::Value {
    json!({"execution_id": e.id, "status": e.status, "exit_code": e.exit_code})
}

/// How long a cancelled task's handler may take to stop before it is dropped.
const CANCEL_GRACE: Duration = Duration::from_secs(30);

/// Resolves once `cancel` turns true; never when its sender is gone uncancelled.
async fn until_cancelled(mut cancel: watch::Receiver<bool>) {
    if cancel.wait_for(|c| *c).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The next event of the bus, or `None` when it lagged (something may have been
/// missed: check state). A closed bus is never ready again.
async fn next_event(
    events: &mut Option<tokio::sync::broadcast::Receiver<aetherium_types::Event>>,
) -> Option<aetherium_types::Event> {
    let Some(rx) = events.as_mut() else {
        return std::future::pending().await;
    };
    match rx.recv().await {
        Ok(event) => Some(event),
        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => None,
        Err(tokio::sync::broadcast::error::RecvError::Closed) => {
            *events = None;
            std::future::pending().await
        }
    }
}
