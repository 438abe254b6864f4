//! A worker: leases tasks and drives its backend and the agents inside its sandboxes.
//! It heartbeats into the `workers` table, reconciles its sandboxes with the database
//! (on start and at every heartbeat), and reacts to sandboxes that exit on their own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aetherium_types::agent::{DataEvent, ProcessConfig, ProcessEvent, Signal, StartRequest};
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

mod vm_tools;
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

    // ---- heartbeat and reconciliation -------------------------------------------

    async fn heartbeat_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.settings.heartbeat_interval);
        tick.tick().await;
        let mut gate = crate::services::cluster::SweepGate::default();
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    // Every process sweeps: workers that stopped heartbeating are
                    // declared offline and their VMs marked lost (idempotent). Only
                    // while our own heartbeats have been written for a whole stale
                    // period, so that neither this worker's failing writes nor a
                    // database outage (when nobody could heartbeat) count as deaths.
                    gate.record(self.heartbeat().await);
                    if gate.is_open(self.platform.defaults.worker_stale_after)
                        && let Err(e) = self.platform.sweep_offline_workers().await
                    {
                        gate.record(false);
                        tracing::warn!(error = %e, "offline sweep failed");
                    }
                    if let Err(e) = self.platform.sweep_orphaned_executions().await {
                        tracing::debug!(error = %e, "execution sweep failed");
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }

    fn info(&self, status: WorkerStatus, message: Option<String>, vm_count: u32) -> WorkerInfo {
        WorkerInfo {
            id: self.settings.id.clone(),
            hostname: self.settings.hostname.clone(),
            address: self.settings.address.clone(),
            zone: self.settings.zone.clone(),
            status,
            capabilities: self
                .backend
                .kinds()
                .iter()
                .map(|k| k.as_str().to_string())
                .collect(),
            labels: self.settings.labels.clone(),
            cpu_cores: self.settings.cpu_cores,
            memory_mb: self.settings.memory_mb,
            max_vms: self.settings.max_vms,
            vm_count,
            status_message: message,
            started_at: self.started_at,
            last_seen: Utc::now(),
        }
    }

    /// Reports liveness and backend health, then reconciles when the backend is up.
    /// Returns whether the heartbeat was written.
    pub async fn heartbeat(&self) -> bool {
        let (status, message) = match self.backend.ping().await {
            Ok(()) => (WorkerStatus::Active, None),
            Err(e) => (WorkerStatus::Unhealthy, Some(e.to_string())),
        };
        if status == WorkerStatus::Active
            && let Err(e) = self.reconcile().await
        {
            tracing::warn!(error = %e, "reconcile failed");
        }
        let vm_count = self.owned_vms().await.map(|v| v.len() as u32).unwrap_or(0);
        let store = &self.platform.store;
        let before = store.get_worker(&self.settings.id).await.ok().flatten();
        // An administrator's drain outlives heartbeats (the store keeps it).
        let mut stored = match store
            .heartbeat_worker(&self.info(status, message.clone(), vm_count))
            .await
        {
            Ok(stored) => stored,
            Err(e) => {
                tracing::error!(error = %e, "heartbeat write failed");
                return false;
            }
        };
        // Back from a stop while an administrator had it drained: draining again.
        if before.as_ref().is_some_and(|b| {
            b.status == WorkerStatus::Offline
                && b.status_message.as_deref()
                    == Some(crate::services::cluster::DRAINED_STOP_MESSAGE)
        }) && let Ok(Some(drained)) = store
            .set_worker_status(
                &self.settings.id,
                &[WorkerStatus::Active, WorkerStatus::Unhealthy],
                WorkerStatus::Draining,
                Some(crate::store::workers::DRAINED_BY_REQUEST),
            )
            .await
        {
            stored = drained;
        }
        let first = self
            .announced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none();
        if !first && before.as_ref().is_some_and(|b| b.status == stored.status) {
            // The status was set by someone else (drain or activate through the
            // API), who announced it: only remember it.
            *self.announced.lock().unwrap_or_else(|e| e.into_inner()) = Some(stored.status);
        } else {
            self.announce(stored.status, stored.status_message.as_deref());
        }
        true
    }

    async fn mark_offline(&self, drained_by_request: bool) {
        let message = if drained_by_request {
            crate::services::cluster::DRAINED_STOP_MESSAGE
        } else {
            crate::services::cluster::GRACEFUL_STOP_MESSAGE
        };
        if self
            .platform
            .store
            .upsert_worker(&self.info(WorkerStatus::Offline, Some(message.into()), 0))
            .await
            .is_ok()
        {
            self.announce(WorkerStatus::Offline, Some(message));
        }
    }

    /// Publishes `worker.online`/`unhealthy`/`draining`/`offline` when the status
    /// differs from the one announced last (the first heartbeat announces `online`).
    fn announce(&self, status: WorkerStatus, message: Option<&str>) {
        let mut last = self.announced.lock().unwrap_or_else(|e| e.into_inner());
        if *last == Some(status) {
            return;
        }
        *last = Some(status);
        drop(last);
        let event = match status {
            WorkerStatus::Active => EventType::WorkerOnline,
            WorkerStatus::Unhealthy => EventType::WorkerUnhealthy,
            WorkerStatus::Draining => EventType::WorkerDraining,
            WorkerStatus::Offline => EventType::WorkerOffline,
        };
        tracing::info!(worker_id = %self.settings.id, status = status.as_str(), "worker status changed");
        self.platform.publish(
            event,
            &self.settings.id,
            json!({"worker_id": self.settings.id, "status": status, "message": message,
                   "hostname": self.settings.hostname}),
        );
    }

    async fn owned_vms(&self) -> crate::error::CoreResult<Vec<aetherium_types::Vm>> {
        let filter = VmFilter {
            worker_id: Some(self.settings.id.clone()),
            ..Default::default()
        };
        self.platform.store.all_vms(&filter).await
    }

    /// Makes the database and the backend agree: sandboxes nobody knows are removed,
    /// RUNNING VMs whose sandbox stopped or vanished are marked so.
    pub async fn reconcile(&self) -> Result<(), TaskError> {
        let sandboxes = self.backend.list().await?;
        for sandbox in &sandboxes {
            match self.platform.store.get_vm(&sandbox.vm_id).await? {
                None => {
                    tracing::warn!(vm_id = %sandbox.vm_id, "removing a sandbox with no VM record");
                    self.remove_sandbox(&sandbox.vm_id).await?;
                }
                // Placed again on another worker while this one was away (it went
                // offline before making the VM): this half-made copy goes.
                Some(vm)
                    if vm
                        .worker_id
                        .as_deref()
                        .is_some_and(|owner| owner != self.settings.id) =>
                {
                    tracing::warn!(vm_id = %vm.id, owner = ?vm.worker_id, "removing a sandbox whose VM is on another worker now");
                    self.remove_sandbox(&vm.id).await?;
                }
                Some(vm) if matches!(vm.status, VmStatus::Running | VmStatus::Paused) => {
                    if let SandboxState::Exited {
                        exit_code,
                        killed_for,
                    } = sandbox.state
                    {
                        let cause = match killed_for {
                            Some(limit) => ExitCause::OverLimit(limit, exit_code),
                            None => ExitCause::Exited(exit_code),
                        };
                        self.sandbox_stopped(&vm.id, cause).await;
                    }
                }
                Some(_) => {}
            }
        }
        for vm in self.owned_vms().await? {
            let listed = sandboxes.iter().any(|s| s.vm_id == vm.id);
            // A VM may have started after the listing: ask again before judging it.
            if matches!(vm.status, VmStatus::Running | VmStatus::Paused)
                && !listed
                && self.backend.status(&vm.id).await? == SandboxState::Missing
            {
                self.sandbox_stopped(&vm.id, ExitCause::Removed).await;
            }
        }
        Ok(())
    }

    async fn exit_watch_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            let mut exits = self.backend.watch_exits();
            loop {
                tokio::select! {
                    next = exits.next() => match next {
                        Some(Ok(SandboxExit { vm_id, exit_code })) => {
                            let cause = self.exit_cause(&vm_id, exit_code).await;
                            self.sandbox_stopped(&vm_id, cause).await;
                        }
                        Some(Err(e)) => {
                            tracing::debug!(error = %e, "backend event stream ended");
                            break;
                        }
                        None => break,
                    },
                    _ = shutdown.changed() => return,
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Why a sandbox stopped: over its memory or disk limit, removed by someone else (`docker rm -f`
    /// kills it first, so its exit comes just before it vanishes: looked at a few
    /// times over 300 ms), or it exited.
    async fn exit_cause(&self, vm_id: &str, exit_code: i64) -> ExitCause {
        for attempt in 0..4 {
            match self.backend.status(vm_id).await {
                Ok(SandboxState::Missing) => return ExitCause::Removed,
                Ok(SandboxState::Exited {
                    killed_for: Some(limit),
                    ..
                }) => return ExitCause::OverLimit(limit, exit_code),
                _ if attempt == 3 => break,
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        ExitCause::Exited(exit_code)
    }

    /// A RUNNING VM's sandbox stopped without being asked to.
    async fn sandbox_stopped(&self, vm_id: &str, cause: ExitCause) {
        let store = &self.platform.store;
        let (to, message) = match cause {
            ExitCause::OverLimit(Limit::Memory, exit_code) => (
                VmStatus::Failed,
                format!("sandbox was killed for running out of memory (exit code {exit_code})"),
            ),
            ExitCause::OverLimit(Limit::Disk, _) => (VmStatus::Failed, OVER_DISK_QUOTA.to_string()),
            ExitCause::Removed => (VmStatus::Failed, REMOVED_OUTSIDE.to_string()),
            ExitCause::Exited(0) => (
                VmStatus::Stopped,
                "sandbox exited on its own with code 0".to_string(),
            ),
            ExitCause::Exited(exit_code) => (
                VmStatus::Failed,
                format!("sandbox exited on its own with code {exit_code}"),
            ),
        };
        match store
            .transition_vm(
                vm_id,
                &[VmStatus::Running, VmStatus::Paused],
                to,
                Some(&message),
            )
            .await
        {
            Ok(true) => {
                tracing::warn!(vm_id, %message, "sandbox stopped");
                let _ = store.fail_unfinished_executions(vm_id, &message).await;
                let event = if to == VmStatus::Stopped {
                    EventType::VmStopped
                } else {
                    EventType::VmFailed
                };
                self.platform
                    .publish(event, vm_id, json!({"status": to, "error": message}));
            }
            Ok(false) => {} // Not RUNNING: being deleted or already handled.
            Err(e) => tracing::error!(vm_id, error = %e, "cannot record a stopped sandbox"),
        }
    }

    /// At start, before any task runs (so no VM is half-made): TAP devices and address
    /// leases of sandboxes that no longer exist are removed.
    async fn reconcile_network(&self) {
        let Some(network) = &self.network else { return };
        let result = async {
            let live = self
                .backend
                .list()
                .await
                .map_err(|e| crate::net::NetError::Command(e.to_string()))?
                .into_iter()
                .map(|s| s.vm_id)
                .collect();
            network.reconcile(&live).await
        };
        if let Err(e) = result.await {
            tracing::warn!(error = %e, "cannot reconcile the guest network");
        }
    }

    /// At start: the rules of this worker's live sandboxes still send their DNS to
    /// the resolver of the process before, which is gone; each gets its rules again
    /// (and the new resolver its policy).
    async fn reopen_networks(&self) {
        let Ok(vms) = self.owned_vms().await else {
            return;
        };
        let live = vms
            .iter()
            .filter(|vm| matches!(vm.status, VmStatus::Running | VmStatus::Paused));
        for vm in live {
            let policy = vm.network_policy.as_ref();
            let result = match (vm.orchestrator, &self.network) {
                (Orchestrator::Docker, _) => {
                    match self.backend.set_network_policy(&vm.id, policy).await {
                        // Not on the isolated network: no rules to lay.
                        Err(
                            crate::vmm::BackendError::Rejected(_)
                            | crate::vmm::BackendError::Unsupported(_),
                        ) => Ok(()),
                        other => other.map_err(|e| e.to_string()),
                    }
                }
                (_, Some(network)) if network.config().isolated && wants_network(vm) => {
                    let reopened = match network.ensure().await {
                        Ok(()) => network.set_policy(&vm.id, policy).await,
                        Err(e) => Err(e),
                    };
                    reopened.map_err(|e| e.to_string())
                }
                _ => Ok(()),
            };
            if let Err(e) = result {
                tracing::warn!(vm_id = %vm.id, error = %e, "cannot lay a sandbox's network rules again");
            }
        }
    }

    /// Removes a sandbox and its network (TAP device, address lease).
    async fn remove_sandbox(&self, vm_id: &str) -> Result<(), crate::vmm::BackendError> {
        self.backend.delete(vm_id).await?;
        if let Some(network) = &self.network {
            network
                .detach(vm_id)
                .await
                .map_err(|e| crate::vmm::BackendError::Other(e.to_string()))?;
        }
        Ok(())
    }

    /// A microVM's network, unless the VM asked for none (`metadata.network: none`).
    async fn attach_network(&self, vm: &Vm) -> Result<Option<GuestNetwork>, TaskError> {
        let wants = wants_network(vm);
        match (&self.network, vm.orchestrator) {
            (_, Orchestrator::Docker) => Ok(None),
            (Some(network), _) if wants => {
                // The bridge is made when the first microVM needs it (idempotent).
                let attached = match network.ensure().await {
                    Ok(()) => network.attach(&vm.id, vm.network_policy.as_ref()).await,
                    Err(e) => Err(e),
                };
                attached
                    .map(Some)
                    .map_err(|e| TaskError::retry(format!("cannot set up the VM's network: {e}")))
            }
            _ => Ok(None),
        }
    }

    async fn mark_vm_failed(&self, vm_id: &str, from: &[VmStatus], message: &str) {
        let store = &self.platform.store;
        if let Ok(true) = store
            .transition_vm(vm_id, from, VmStatus::Failed, Some(message))
            .await
        {
            let _ = store.fail_unfinished_executions(vm_id, message).await;
            self.platform.publish(
                EventType::VmFailed,
                vm_id,
                json!({"status": VmStatus::Failed, "error": message}),
            );
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
                self.publish_execution_done(&e);
            }
        }
    }

    fn publish_execution_done(&self, e: &Execution) {
        tracing::info!(
            execution_id = %e.id,
            vm_id = %e.vm_id,
            status = %e.status,
            exit_code = ?e.exit_code,
            duration_ms = ?e.duration_ms,
            "execution finished"
        );
        let event = if e.status == ExecutionStatus::Failed {
            EventType::ExecutionFailed
        } else {
            EventType::ExecutionCompleted
        };
        self.platform.publish(
            event,
            &e.id,
            json!({"vm_id": e.vm_id, "status": e.status, "exit_code": e.exit_code}),
        );
    }

    // ---- vm:create -----------------------------------------------------------------

    async fn handle_create(
        &self,
        payload: CreatePayload,
        cancel: watch::Receiver<bool>,
    ) -> TaskResult {
        let store = &self.platform.store;
        let Some(mut vm) = store.get_vm(&payload.vm_id).await? else {
            return Ok(json!({"skipped": "the VM was deleted before it started"}));
        };
        if let Some(owner) = vm.worker_id.as_deref()
            && owner != self.settings.id
        {
            // Placed again on another worker while this one was away.
            return Ok(json!({"skipped": format!("the VM is on worker {owner} now")}));
        }
        match vm.status {
            VmStatus::Created | VmStatus::Starting => {}
            VmStatus::Running => return Ok(json!({"vm_id": vm.id, "status": vm.status})),
            other => {
                return Ok(json!({"skipped": format!("the VM is {other}")}));
            }
        }
        vm.status = VmStatus::Starting;
        vm.worker_id = Some(self.settings.id.clone());
        vm.socket_path = Some(self.backend.agent_socket(&vm.id).display().to_string());
        if !store
            .transition_vm(
                &vm.id,
                &[VmStatus::Created, VmStatus::Starting],
                VmStatus::Starting,
                None,
            )
            .await?
        {
            return Ok(json!({"skipped": "the VM is being deleted"}));
        }
        store.update_vm(&vm).await?;

        // A retried attempt may find a sandbox from the attempt before: start clean.
        self.remove_sandbox(&vm.id).await?;
        if *cancel.borrow() {
            return Err(TaskError::permanent(CANCELLED_WHILE_RUNNING));
        }
        let spec = SandboxSpec {
            orchestrator: vm.orchestrator,
            vm_id: vm.id.clone(),
            name: vm.name.clone(),
            image: vm.image.clone(),
            vcpus: vm.vcpu_count,
            memory_mb: vm.memory_mb,
            disk_mb: vm.disk_mb,
            network_policy: vm.network_policy.clone(),
            network: self.attach_network(&vm).await?,
            access_token: None,
        };
        if let Err(e) = self.backend.create(&spec).await {
            // The backend left nothing; neither may the network.
            let _ = self.remove_sandbox(&vm.id).await;
            return Err(e.into());
        }
        let agent = self.backend.agent(&vm.id);
        let ready = tokio::select! {
            ready = agent.wait_ready(
                self.backend
                    .boot_timeout(&vm.id)
                    .unwrap_or(self.settings.agent_ready_timeout),
            ) => ready,
            _ = until_cancelled(cancel.clone()) => {
                // `on_cancelled` removes the sandbox and fails the VM.
                return Err(TaskError::permanent(CANCELLED_WHILE_RUNNING));
            }
        };
        if let Err(e) = ready {
            let state = self.backend.status(&vm.id).await.ok();
            let context = self
                .backend
                .failure_context(&vm.id)
                .map(|c| format!("\n{c}"))
                .unwrap_or_default();
            let _ = self.remove_sandbox(&vm.id).await;
            return Err(match state {
                Some(SandboxState::Exited { exit_code, .. }) => TaskError::permanent(format!(
                    "the sandbox exited with code {exit_code} before its agent answered (is the image built for this machine?){context}"
                )),
                // A guest that never reaches its agent will not on a second boot of
                // the same image either: fail at once, with its console.
                _ if vm.orchestrator != Orchestrator::Docker => TaskError::permanent(format!(
                    "the guest did not reach its agent (boot timeout): {e}{context}"
                )),
                _ => TaskError::retry(format!("the sandbox's agent did not answer: {e}{context}")),
            });
        }
        // From here on the agent answers only to its token (microVM agents start
        // without one; a container's already has it).
        if let Err(e) = agent.claim().await {
            let _ = self.remove_sandbox(&vm.id).await;
            return Err(TaskError::permanent(format!(
                "the sandbox's agent refused its access token: {e}"
            )));
        }
        // Tools first, so that RUNNING means they are there. A failure leaves the
        // sandbox to `on_final_failure` (or to the next attempt, which starts clean).
        if !payload.tools.is_empty() {
            self.install_vm_tools(&vm.id, &payload.tools, cancel.clone())
                .await?;
        }

        vm.status = VmStatus::Running;
        vm.started_at = Some(Utc::now());
        vm.error = None;
        if !store
            .transition_vm(&vm.id, &[VmStatus::Starting], VmStatus::Running, None)
            .await?
        {
            // Deleted while starting: the delete task owns the cleanup now.
            return Ok(json!({"skipped": "the VM was deleted while it started"}));
        }
        store.update_vm(&vm).await?;
        self.platform.publish(
            EventType::VmStarted,
            &vm.id,
            serde_json::to_value(&vm).unwrap_or_default(),
        );

        if let Some(exec) = payload.then_execute {
            let mut task = new_task(
                TaskType::VmExecute,
                serde_json::to_value(&exec).unwrap_or_default(),
                Some(&vm.id),
            );
            task.target_worker_id = Some(self.settings.id.clone());
            if let Ok(Some(mut e)) = store.get_execution(&exec.execution_id).await {
                e.task_id = Some(task.id.clone());
                store.update_execution(&e).await?;
            }
            self.platform.submit(&task).await?;
        }
        Ok(json!({"vm_id": vm.id, "status": vm.status}))
    }

    // ---- vm:pause, vm:resume, vm:snapshot -----------------------------------------

    /// Puts a VM's new network policy in place, then records it (so the record
    /// never shows a policy that is not the sandbox's).
    async fn handle_network(&self, payload: NetworkPayload) -> TaskResult {
        let store = &self.platform.store;
        let vm_id = &payload.vm_id;
        let Some(vm) = store.get_vm(vm_id).await? else {
            return Err(TaskError::permanent(format!("VM {vm_id} no longer exists")));
        };
        if !matches!(vm.status, VmStatus::Running | VmStatus::Paused) {
            return Err(TaskError::permanent(format!(
                "VM {vm_id} is {}: only a RUNNING or PAUSED VM's network policy can change",
                vm.status
            )));
        }
        match (vm.orchestrator, &self.network) {
            (Orchestrator::Docker, _) => {
                self.backend
                    .set_network_policy(vm_id, payload.policy.as_ref())
                    .await?;
            }
            // A microVM's rules are on its TAP device's address, the guest network's.
            (_, Some(network)) if wants_network(&vm) => {
                network
                    .set_policy(vm_id, payload.policy.as_ref())
                    .await
                    .map_err(|e| {
                        TaskError::permanent(format!(
                            "cannot change the network policy of {vm_id}: {e}"
                        ))
                    })?;
            }
            // No network: nothing to filter; the policy applies should it get one.
            _ => {}
        }
        store
            .set_vm_network_policy(vm_id, payload.policy.as_ref())
            .await?;
        Ok(json!({"vm_id": vm_id, "network_policy": payload.policy}))
    }

    async fn handle_control(&self, task: &Task, payload: DeletePayload) -> TaskResult {
        let store = &self.platform.store;
        let vm_id = &payload.vm_id;
        let Some(vm) = store.get_vm(vm_id).await? else {
            return Err(TaskError::permanent(format!("VM {vm_id} no longer exists")));
        };
        let (from, to, event) = match task.task_type {
            TaskType::VmPause => (VmStatus::Running, VmStatus::Paused, EventType::VmPaused),
            TaskType::VmResume => (VmStatus::Paused, VmStatus::Running, EventType::VmResumed),
            _ => {
                if vm.status != VmStatus::Paused {
                    return Err(TaskError::permanent(format!(
                        "VM {vm_id} is {}: only a PAUSED VM can be snapshotted",
                        vm.status
                    )));
                }
                let dir = self.settings.snapshot_dir.join(vm_id).join(&task.id);
                std::fs::create_dir_all(&dir).map_err(|e| {
                    TaskError::permanent(format!("cannot create {}: {e}", dir.display()))
                })?;
                if let Err(e) = self.backend.snapshot(vm_id, &dir).await {
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(TaskError::permanent(e.to_string()));
                }
                return Ok(json!({"vm_id": vm_id, "snapshot_dir": dir.display().to_string()}));
            }
        };
        // Two pauses (or resumes) asked at once both pass the API's check: the one
        // that runs second finds the state it was asked for, and is done too.
        let already = json!({"vm_id": vm_id, "status": to, "already": true});
        if vm.status == to {
            return Ok(already);
        }
        if vm.status != from {
            return Err(TaskError::permanent(format!(
                "VM {vm_id} is {}, not {from}",
                vm.status
            )));
        }
        let result = match task.task_type {
            TaskType::VmPause => self.backend.pause(vm_id).await,
            _ => self.backend.resume(vm_id).await,
        };
        // Not retried: a freeze or thaw that fails says something about the VM.
        result.map_err(|e| TaskError::permanent(e.to_string()))?;
        if !store.transition_vm(vm_id, &[from], to, None).await? {
            let now = store.get_vm(vm_id).await?.map(|vm| vm.status);
            if now == Some(to) {
                return Ok(already);
            }
            return Err(TaskError::permanent(format!(
                "VM {vm_id} changed state meanwhile"
            )));
        }
        self.platform.publish(
            event,
            vm_id,
            json!({"status": to, "worker_id": self.settings.id}),
        );
        Ok(json!({"vm_id": vm_id, "status": to}))
    }

    // ---- vm:delete -----------------------------------------------------------------

    async fn handle_delete(&self, payload: DeletePayload) -> TaskResult {
        let store = &self.platform.store;
        if store.get_vm(&payload.vm_id).await?.is_none() {
            return Ok(json!({"vm_id": payload.vm_id, "deleted": true}));
        }
        self.remove_sandbox(&payload.vm_id).await?;
        store
            .fail_unfinished_executions(&payload.vm_id, "the VM was deleted")
            .await?;
        store.delete_vm(&payload.vm_id).await?;
        self.platform.publish(
            EventType::VmDeleted,
            &payload.vm_id,
            json!({"vm_id": payload.vm_id}),
        );
        Ok(json!({"vm_id": payload.vm_id, "deleted": true}))
    }

    // ---- vm:execute ----------------------------------------------------------------

    async fn handle_execute(
        &self,
        task: &Task,
        payload: ExecPayload,
        cancel: watch::Receiver<bool>,
    ) -> TaskResult {
        let store = &self.platform.store;
        let Some(mut execution) = store.get_execution(&payload.execution_id).await? else {
            return Err(TaskError::permanent("the execution record is gone"));
        };
        if execution.status.is_finished() {
            return Ok(execution_result(&execution));
        }
        if execution.status == ExecutionStatus::Running {
            // An earlier attempt started it and its worker died mid-run (the lease
            // expired). The command may have had effects: never run it twice.
            execution.status = ExecutionStatus::Failed;
            execution.error =
                Some("the worker stopped while the command ran; it was not run again".into());
            execution.completed_at = Some(Utc::now());
            store.update_execution(&execution).await?;
            self.publish_execution_done(&execution);
            return Ok(execution_result(&execution));
        }
        let vm = match store.get_vm(&payload.vm_id).await? {
            Some(vm) if vm.status == VmStatus::Running => vm,
            Some(vm) => return Err(TaskError::permanent(format!("the VM is {}", vm.status))),
            None => return Err(TaskError::permanent("the VM was deleted")),
        };
        let redactor = self.platform.execution_redactor(&vm).await;
        if *cancel.borrow() {
            // `on_cancelled` fails the execution: nothing ran.
            return Err(TaskError::permanent(CANCELLED_WHILE_RUNNING));
        }
        execution.status = ExecutionStatus::Running;
        execution.started_at = Some(Utc::now());
        execution.task_id = Some(task.id.clone());
        store.update_execution(&execution).await?;
        self.platform.publish(
            EventType::ExecutionStarted,
            &execution.id,
            json!({"vm_id": execution.vm_id}),
        );
        // The program's name only: arguments and environment may hold secrets.
        tracing::info!(execution_id = %execution.id, command = %payload.command, "execution started");

        let started = Instant::now();
        let run = self.run_in_sandbox(&payload, cancel).await;
        let mut cancelled = false;
        execution.duration_ms = Some(started.elapsed().as_millis() as i64);
        execution.completed_at = Some(Utc::now());
        match run {
            Ok(output) => {
                cancelled = output.cancelled;
                execution.status = output.status;
                execution.exit_code = output.exit_code;
                // Records are readable by every role: no secret of the VM's in them.
                execution.stdout =
                    String::from_utf8_lossy(&redactor.redact_bytes(&output.stdout)).into_owned();
                execution.stderr =
                    String::from_utf8_lossy(&redactor.redact_bytes(&output.stderr)).into_owned();
                execution.error = output.error;
                if output.truncated {
                    execution
                        .metadata
                        .insert("output_truncated".into(), true.into());
                }
            }
            Err(RunFailure::BeforeStart(e)) => {
                // Nothing ran, so trying again is safe — unless the sandbox is gone.
                match self.backend.status(&payload.vm_id).await {
                    Ok(SandboxState::Running) | Err(_) => {
                        execution.status = ExecutionStatus::Pending;
                        execution.started_at = None;
                        execution.completed_at = None;
                        execution.duration_ms = None;
                        store.update_execution(&execution).await?;
                        return Err(TaskError::retry(format!("cannot reach the agent: {e}")));
                    }
                    Ok(state) => {
                        let message = format!("the sandbox is not running ({state:?})");
                        self.mark_vm_failed(&payload.vm_id, &[VmStatus::Running], &message)
                            .await;
                        execution.status = ExecutionStatus::Failed;
                        execution.error = Some(message);
                    }
                }
            }
            Err(RunFailure::Lost(e)) => {
                // The command may have run: never run it twice.
                execution.status = ExecutionStatus::Failed;
                execution.error = Some(format!("lost the connection to the agent mid-run: {e}"));
            }
        }
        store.update_execution(&execution).await?;
        crate::metrics::record_execution(&execution);
        self.publish_execution_done(&execution);
        if cancelled {
            return Err(TaskError::permanent(CANCELLED_WHILE_RUNNING));
        }
        Ok(execution_result(&execution))
    }

    async fn run_in_sandbox(
        &self,
        payload: &ExecPayload,
        cancel: watch::Receiver<bool>,
    ) -> Result<RunOutput, RunFailure> {
        let envs = match self.platform.exec_env(payload) {
            Ok(envs) => envs,
            Err(e) => return Ok(RunOutput::not_started("invalid_argument", &e.to_string())),
        };
        let agent = self.backend.agent(&payload.vm_id);
        let request = StartRequest {
            process: ProcessConfig {
                cmd: payload.command.clone(),
                args: payload.args.clone(),
                envs,
                cwd: payload.cwd.clone(),
            },
            pty: None,
            tag: None,
            stdin: Some(false),
        };
        let mut stream = match agent.start(&request).await {
            Ok(stream) => stream,
            Err(AgentError::Connect(e)) => return Ok(RunOutput::not_started(&e.code, &e.message)),
            Err(e) => return Err(RunFailure::BeforeStart(e.to_string())),
        };
        let cap = self.settings.output_cap_bytes;
        let mut out = RunOutput::default();
        let mut pid = None;
        let deadline =
            tokio::time::Instant::now() + Duration::from_secs(payload.timeout_seconds.max(1));
        let cancelled = until_cancelled(cancel);
        tokio::pin!(cancelled);
        let mut cancelling = false;
        loop {
            let next = tokio::select! {
                next = stream.next() => next,
                _ = &mut cancelled, if !cancelling => {
                    cancelling = true;
                    match pid {
                        Some(pid) => return Ok(out.cancel(&agent, pid).await),
                        // Not started yet: killed as soon as its start is seen.
                        None => continue,
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    if let Some(pid) = pid {
                        let _ = agent.send_signal(pid, Signal::Sigkill).await;
                    }
                    out.status = ExecutionStatus::TimedOut;
                    out.error = Some(format!("killed after the {}s timeout", payload.timeout_seconds));
                    return Ok(out);
                }
            };
            match next {
                Some(Ok(ProcessEvent::Start(start))) => {
                    pid = Some(start.pid);
                    if cancelling {
                        return Ok(out.cancel(&agent, start.pid).await);
                    }
                }
                Some(Ok(ProcessEvent::Data(data))) => {
                    let (buf, bytes) = match data {
                        DataEvent::Stdout(b) | DataEvent::Pty(b) => (&mut out.stdout, b.0),
                        DataEvent::Stderr(b) => (&mut out.stderr, b.0),
                    };
                    let room = cap.saturating_sub(buf.len());
                    if bytes.len() > room {
                        out.truncated = true;
                    }
                    buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
                }
                Some(Ok(ProcessEvent::Keepalive(_))) => {}
                Some(Ok(ProcessEvent::End(end))) => {
                    out.status = ExecutionStatus::Completed;
                    out.exit_code = Some(end.shell_exit_code());
                    // envd puts "exit status N" in `error` for any non-zero exit; a
                    // non-zero exit is a result here, so only a signal is worth a note.
                    out.error = (!end.exited).then(|| format!("terminated: {}", end.status));
                    if out.truncated {
                        let note = format!("output truncated at {cap} bytes per stream");
                        out.error = Some(match out.error.take() {
                            Some(e) => format!("{e}; {note}"),
                            None => note,
                        });
                    }
                    return Ok(out);
                }
                Some(Err(AgentError::Connect(e))) if pid.is_none() => {
                    return Ok(RunOutput::not_started(&e.code, &e.message));
                }
                Some(Err(e)) => {
                    return Err(if pid.is_none() {
                        RunFailure::BeforeStart(e.to_string())
                    } else {
                        RunFailure::Lost(e.to_string())
                    });
                }
                None => {
                    return Err(if pid.is_none() {
                        RunFailure::BeforeStart("the agent closed the stream".into())
                    } else {
                        RunFailure::Lost("the stream ended without an end event".into())
                    });
                }
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

#[derive(Debug, Default)]
struct RunOutput {
    status: ExecutionStatus,
    exit_code: Option<i32>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    truncated: bool,
    error: Option<String>,
    /// Killed because its task was cancelled.
    cancelled: bool,
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

impl RunOutput {
    /// The task was cancelled: kills the command's process group.
    async fn cancel(mut self, agent: &crate::agent_client::AgentClient, pid: u32) -> RunOutput {
        if let Err(e) = agent.send_signal(pid, Signal::Sigkill).await {
            tracing::warn!(pid, error = %e, "cannot kill a cancelled command");
        }
        self.status = ExecutionStatus::Failed;
        self.cancelled = true;
        self.error = Some("cancelled by request: the command was killed".into());
        self
    }

    /// The agent refused to start the command (e.g. not found): a result, with the
    /// shell's exit codes (127 not found, 126 cannot execute).
    fn not_started(code: &str, message: &str) -> RunOutput {
        RunOutput {
            status: ExecutionStatus::Failed,
            exit_code: Some(if code == "not_found" { 127 } else { 126 }),
            error: Some(message.to_string()),
            ..Default::default()
        }
    }
}

enum RunFailure {
    /// Could not start: nothing ran.
    BeforeStart(String),
    /// The connection dropped after the command started.
    Lost(String),
}
