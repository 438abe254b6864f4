//! The use cases the gateway calls. The gateway never touches a backend, the queue or
//! the store directly: it asks these services, which validate, persist and enqueue.

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
use crate::cluster::PlacementRequest;
use crate::error::{CoreError, CoreResult};
use crate::feed::LogFeed;
use crate::queue::{CancelOutcome, QueueStats, TaskQueue};
use crate::store::{EventLog, LogStore, Page, Store, TaskFilter, VmFilter};

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
    pub workspace_data: crate::environments::WorkspaceData,
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

    /// Validates, records the VM (CREATED) and queues `vm:create`. `by` is who asks
    /// (recorded as the VM's `created_by`; an API key's quota is enforced).
    pub async fn create_vm(
        &self,
        req: &CreateVmRequest,
        by: Option<&Principal>,
    ) -> CoreResult<(Vm, Task)> {
        self.create_vm_then(req, None, by).await
    }

    /// Creates a VM; with `then`, also records an execution that `vm:create` queues
    /// once the VM runs. Everything is written before the task is queued, so the
    /// worker can never see the task without its rows.
    async fn create_vm_then(
        &self,
        req: &CreateVmRequest,
        then: Option<(&mut Execution, ExecPayload)>,
        by: Option<&Principal>,
    ) -> CoreResult<(Vm, Task)> {
        req.validate().map_err(CoreError::InvalidInput)?;
        // Tools the catalog cannot install are refused now, with nothing recorded.
        let tools = crate::workspaces::merge_tools(&req.additional_tools, &req.tool_versions);
        let tools_timeout = self.tools_timeout(&tools)?;
        let orchestrator = req.orchestrator.unwrap_or(self.defaults.orchestrator);
        let vcpus = req.vcpus.unwrap_or(self.defaults.vcpus);
        let memory_mb = req.memory_mb.unwrap_or(self.defaults.memory_mb);
        let disk_mb = match (orchestrator, req.disk_mb) {
            (Orchestrator::Docker, asked) => asked.or(self.defaults.disk_mb),
            (_, None) => None,
            (other, Some(_)) => {
                return Err(CoreError::InvalidInput(format!(
                    "disk_mb limits containers; a {other} microVM's disk is the size of its image"
                )));
            }
        };
        let network_policy = match (by, key_network_policy(by)) {
            (Some(by), Some(fixed)) => {
                Some(fixed_policy_for(by, fixed, req.network_policy.as_ref())?)
            }
            _ => network_policy_for(req.network_policy.as_ref())?,
        };
        let id = new_id();
        let mut vm = Vm {
            name: req
                .name
                .clone()
                .unwrap_or_else(|| format!("vm-{}", &id[..8])),
            id,
            status: VmStatus::Created,
            orchestrator,
            image: req
                .image
                .clone()
                .unwrap_or_else(|| self.defaults.image.clone()),
            vcpu_count: vcpus,
            memory_mb,
            disk_mb,
            created_by: by.map(|p| p.id.clone()),
            network_policy,
            placement: req.placement.clone(),
            kernel_path: None,
            rootfs_path: None,
            socket_path: None,
            worker_id: None,
            error: None,
            created_at: Utc::now(),
            started_at: None,
            stopped_at: None,
            metadata: vm_metadata(req),
        };
        let placement = PlacementRequest {
            orchestrator,
            vcpus,
            memory_mb,
            placement: req.placement.as_ref(),
        };
        let worker = self.place_and_record(&mut vm, &placement).await?;
        if let Some(by) = by {
            self.enforce_quota(by, &vm).await?;
        }
        let mut payload = CreatePayload {
            vm_id: vm.id.clone(),
            then_execute: None,
            tools,
        };
        let mut task = new_task(TaskType::VmCreate, serde_json::Value::Null, Some(&vm.id));
        task.target_worker_id = Some(worker.id.clone());
        // The installs run inside the create, each within its own timeout.
        task.timeout_seconds += tools_timeout.as_secs();
        let mut execution_to_fail = None;
        if let Some((execution, mut exec_payload)) = then {
            execution.vm_id = vm.id.clone();
            execution
                .metadata
                .insert("create_task_id".into(), task.id.clone().into());
            exec_payload.vm_id = vm.id.clone();
            if let Err(e) = self.store.insert_execution(execution).await {
                let _ = self.store.delete_vm(&vm.id).await;
                return Err(e);
            }
            if let Err(e) = self.enforce_execution_quota(by, execution).await {
                let _ = self.store.delete_vm(&vm.id).await;
                return Err(e);
            }
            payload.then_execute = Some(exec_payload);
            execution_to_fail = Some(execution.clone());
        }
        task.payload = to_value(&payload)?;
        if let Err(e) = self.submit(&task).await {
            // No VM row without a task that will make it.
            let _ = self.store.delete_vm(&vm.id).await;
            if let Some(mut execution) = execution_to_fail {
                execution.status = ExecutionStatus::Failed;
                execution.error = Some(format!("could not queue the VM: {e}"));
                let _ = self.store.update_execution(&execution).await;
            }
            return Err(e);
        }
        self.publish(EventType::VmCreated, &vm.id, to_value(&vm)?);
        Ok((vm, task))
    }

    /// How long installing `tools` may take at most (the sum of the per-tool
    /// timeouts of their plan, requirements included); refuses tools the catalog
    /// cannot install (unknown, a bad version, a requirement cycle), naming them.
    fn tools_timeout(&self, tools: &[String]) -> CoreResult<Duration> {
        if tools.is_empty() {
            return Ok(Duration::ZERO);
        }
        let plan = self.workspace_data.tools.check(tools)?;
        Ok(plan.tools().iter().map(|t| t.timeout).sum())
    }

    pub async fn get_vm(&self, id: &str) -> CoreResult<Vm> {
        self.store
            .get_vm(id)
            .await?
            .ok_or_else(|| CoreError::NotFound(format!("VM {id} not found")))
    }

    pub async fn list_vms(&self, filter: &VmFilter, page: &Page) -> CoreResult<(Vec<Vm>, u64)> {
        self.store.list_vms(filter, page).await
    }

    /// Marks the VM STOPPING and queues `vm:delete` on the worker that owns it.
    pub async fn delete_vm(&self, id: &str) -> CoreResult<Task> {
        let vm = self.get_vm(id).await?;
        let deletable = [
            VmStatus::Created,
            VmStatus::Starting,
            VmStatus::Running,
            VmStatus::Paused,
            VmStatus::Stopped,
            VmStatus::Failed,
        ];
        if !self
            .store
            .transition_vm(id, &deletable, VmStatus::Stopping, None)
            .await?
        {
            return Err(CoreError::Conflict(format!(
                "VM {id} is already being deleted"
            )));
        }
        let mut task = new_task(
            TaskType::VmDelete,
            to_value(&DeletePayload { vm_id: id.into() })?,
            Some(id),
        );
        task.priority = 8;
        // Its owner removes the sandbox; when the owner is offline any worker may
        // remove the record (the owner removes a sandbox without one if it returns).
        if self.owner_is_live(&vm).await? {
            task.target_worker_id = vm.worker_id.clone();
        }
        if let Err(e) = self.submit(&task).await {
            let _ = self
                .store
                .transition_vm(id, &[VmStatus::Stopping], vm.status, None)
                .await;
            return Err(e);
        }
        Ok(task)
    }

    /// Queues `vm:pause` on the VM's worker: a RUNNING VM's vCPUs freeze (PAUSED).
    pub async fn pause_vm(&self, id: &str) -> CoreResult<Task> {
        self.control_vm(id, TaskType::VmPause).await
    }

    /// Queues `vm:resume`: a PAUSED VM runs again.
    pub async fn resume_vm(&self, id: &str) -> CoreResult<Task> {
        self.control_vm(id, TaskType::VmResume).await
    }

    /// Queues `vm:network`: the VM's worker puts `policy` in place of its current one
    /// (`None`: the network's defaults) and records it. RUNNING or PAUSED containers.
    pub async fn set_network_policy(
        &self,
        id: &str,
        policy: Option<&NetworkPolicy>,
        by: Option<&Principal>,
    ) -> CoreResult<Task> {
        if let Some(by) = by.filter(|by| key_network_policy(Some(by)).is_some()) {
            return Err(CoreError::Forbidden(format!(
                "{}'s quota fixes the network policy of its sandboxes: it cannot change one",
                by.quota_holder()
            )));
        }
        let vm = self.get_vm(id).await?;
        let policy = network_policy_for(policy)?;
        if !matches!(vm.status, VmStatus::Running | VmStatus::Paused) {
            return Err(CoreError::Conflict(format!(
                "VM {id} is {}: only a RUNNING or PAUSED VM's network policy can change",
                vm.status
            )));
        }
        let payload = to_value(&NetworkPayload {
            vm_id: vm.id.clone(),
            policy,
        })?;
        self.queue_on_owner(&vm, TaskType::VmNetwork, payload).await
    }

    /// Queues a control task for the worker that owns `vm` (which must be live).
    async fn queue_on_owner(
        &self,
        vm: &Vm,
        task_type: TaskType,
        payload: serde_json::Value,
    ) -> CoreResult<Task> {
        self.ensure_owner_reachable(vm).await?;
        let mut task = new_task(task_type, payload, Some(&vm.id));
        task.priority = 8;
        task.target_worker_id = vm.worker_id.clone();
        self.submit(&task).await?;
        Ok(task)
    }

    /// Queues `vm:snapshot`: the state and memory of a PAUSED microVM are written on
    /// its worker (Firecracker only).
    pub async fn snapshot_vm(&self, id: &str) -> CoreResult<Task> {
        self.control_vm(id, TaskType::VmSnapshot).await
    }

    async fn control_vm(&self, id: &str, task_type: TaskType) -> CoreResult<Task> {
        let vm = self.get_vm(id).await?;
        let (needs, what) = match task_type {
            TaskType::VmPause => (VmStatus::Running, "paused"),
            TaskType::VmResume => (VmStatus::Paused, "resumed"),
            _ => (VmStatus::Paused, "snapshotted"),
        };
        if !backend_can(vm.orchestrator, task_type) {
            return Err(CoreError::Unsupported(format!(
                "{} VMs cannot be {what}: the {} backend does not support it",
                vm.orchestrator, vm.orchestrator
            )));
        }
        if vm.status != needs {
            return Err(CoreError::Conflict(format!(
                "VM {id} is {}: only a {needs} VM can be {what}",
                vm.status
            )));
        }
        let payload = to_value(&DeletePayload {
            vm_id: vm.id.clone(),
        })?;
        self.queue_on_owner(&vm, task_type, payload).await
    }

    // ---- executions ------------------------------------------------------------

    fn new_execution(
        &self,
        vm_id: &str,
        command: &str,
        args: &[String],
        by: Option<&Principal>,
    ) -> Execution {
        Execution {
            id: new_id(),
            vm_id: vm_id.to_string(),
            task_id: None,
            command: command.to_string(),
            args: args.to_vec(),
            status: ExecutionStatus::Pending,
            exit_code: None,
            stdout: String::new(),
            stderr: String::new(),
            error: None,
            created_at: Utc::now(),
            started_at: None,
            completed_at: None,
            duration_ms: None,
            metadata: Default::default(),
            created_by: by.map(|p| p.id.clone()),
        }
    }

    /// Refuses (429) the execution just recorded for `by` when its key may not run
    /// one more command at once, and removes the record. Counted after the insert,
    /// like [`Self::enforce_quota`], so parallel requests never pass it together.
    async fn enforce_execution_quota(
        &self,
        by: Option<&Principal>,
        execution: &Execution,
    ) -> CoreResult<()> {
        let Some(quota) = by.and_then(|by| by.quota.as_ref()) else {
            return Ok(());
        };
        let Some(by) = by else { return Ok(()) };
        if quota.max_concurrent_executions.is_none() {
            return Ok(());
        }
        let refusal = match self.store.unfinished_executions_by(&by.id).await {
            Ok(unfinished) => quota.executions_exceeded_by(by.quota_holder(), unfinished),
            Err(e) => Some(format!(
                "cannot count {}'s running commands: {e}",
                by.quota_holder()
            )),
        };
        match refusal {
            None => Ok(()),
            Some(message) => {
                self.store.delete_execution(&execution.id).await?;
                Err(CoreError::TooManyRequests(message))
            }
        }
    }

    /// Records an execution (pending) and queues `vm:execute` on the VM's worker.
    pub async fn execute(
        &self,
        vm_id: &str,
        req: &ExecuteCommandRequest,
        by: Option<&Principal>,
    ) -> CoreResult<(Execution, Task)> {
        req.validate().map_err(CoreError::InvalidInput)?;
        let vm = self.get_vm(vm_id).await?;
        if vm.status != VmStatus::Running {
            return Err(CoreError::Conflict(format!(
                "VM {vm_id} is {}: commands run only on RUNNING VMs",
                vm.status
            )));
        }
        self.ensure_owner_reachable(&vm).await?;
        let mut execution = self.new_execution(vm_id, &req.command, &req.args, by);
        let payload = ExecPayload {
            execution_id: execution.id.clone(),
            vm_id: vm_id.to_string(),
            command: req.command.clone(),
            args: req.args.clone(),
            env: BTreeMap::new(),
            env_sealed: None,
            cwd: req.cwd.clone(),
            timeout_seconds: req
                .timeout_seconds
                .unwrap_or(self.defaults.exec_timeout_seconds),
        };
        let payload = self.seal_env(payload, &req.env)?;
        let mut task = new_task(TaskType::VmExecute, to_value(&payload)?, Some(vm_id));
        task.target_worker_id = vm.worker_id.clone();
        execution.task_id = Some(task.id.clone());
        self.store.insert_execution(&execution).await?;
        self.enforce_execution_quota(by, &execution).await?;
        if let Err(e) = self.submit(&task).await {
            execution.status = ExecutionStatus::Failed;
            execution.error = Some(format!("could not queue the command: {e}"));
            let _ = self.store.update_execution(&execution).await;
            return Err(e);
        }
        Ok((execution, task))
    }

    /// Ends the executions an outage left without a live task (see
    /// [`crate::store::Store::fail_orphaned_executions`]), once they are older than
    /// any write between an execution and its task can take.
    pub async fn sweep_orphaned_executions(&self) -> CoreResult<u64> {
        const GRACE: chrono::Duration = chrono::Duration::seconds(15);
        let swept = self
            .store
            .fail_orphaned_executions(Utc::now() - GRACE, ORPHANED_EXECUTION)
            .await?;
        if swept > 0 {
            tracing::warn!(executions = swept, "ended executions whose task was lost");
        }
        Ok(swept)
    }

    /// Runs a command on a named or any running VM, creating one when needed.
    /// A RUNNING VM that any caller may be given to run a command in: never one
    /// that belongs to a workspace (its environment holds that workspace's secrets,
    /// and its files its repository).
    async fn shared_running_vm(&self) -> CoreResult<Option<Vm>> {
        let filter = VmFilter {
            status: Some(VmStatus::Running),
            ..Default::default()
        };
        let mut page = Page::new(Some(Page::MAX_LIMIT), None);
        loop {
            let (vms, _) = self.store.list_vms(&filter, &page).await?;
            let full = vms.len() as u32 >= page.limit;
            let last = vms.last().map(|v| (v.created_at, v.id.clone()));
            if let Some(vm) = vms
                .into_iter()
                .find(|vm| !vm.metadata.contains_key("workspace_id"))
            {
                return Ok(Some(vm));
            }
            match last {
                Some((at, id)) if full => page.cursor = Some(crate::store::Cursor::after(at, &id)),
                _ => return Ok(None),
            }
        }
    }

    pub async fn smart_execute(
        &self,
        req: &SmartExecuteRequest,
        by: Option<&Principal>,
    ) -> CoreResult<SmartExecution> {
        req.validate().map_err(CoreError::InvalidInput)?;
        let existing = match &req.vm_name {
            Some(name) => self.store.get_vm_by_name(name).await?,
            None if req.prefer_existing => self.shared_running_vm().await?,
            None => None,
        };
        // The original ran `bash -c <command>` when no args were given.
        let (command, args) = if req.args.is_empty() {
            (
                "bash".to_string(),
                vec!["-c".to_string(), req.command.clone()],
            )
        } else {
            (req.command.clone(), req.args.clone())
        };
        let exec_req = ExecuteCommandRequest {
            command,
            args,
            env: req.env.clone(),
            cwd: None,
            timeout_seconds: req.timeout_seconds,
        };
        if let Some(vm) = existing {
            if vm.status != VmStatus::Running {
                return Err(CoreError::Conflict(format!(
                    "VM {:?} exists but is {}",
                    vm.name, vm.status
                )));
            }
            let (execution, task) = self.execute(&vm.id, &exec_req, by).await?;
            return Ok(SmartExecution {
                execution,
                task,
                vm,
                vm_created: false,
            });
        }
        let create = CreateVmRequest {
            name: req.vm_name.clone(),
            vcpus: req.vcpus,
            memory_mb: Some(req.memory_mb.unwrap_or(512)),
            image: req.image.clone(),
            ..Default::default()
        };
        // The execution is recorded now; vm:create queues it once the VM runs.
        let mut execution = self.new_execution("", &exec_req.command, &exec_req.args, by);
        let payload = ExecPayload {
            execution_id: execution.id.clone(),
            vm_id: String::new(),
            command: exec_req.command.clone(),
            args: exec_req.args.clone(),
            env: BTreeMap::new(),
            env_sealed: None,
            cwd: None,
            timeout_seconds: exec_req
                .timeout_seconds
                .unwrap_or(self.defaults.exec_timeout_seconds),
        };
        let payload = self.seal_env(payload, &exec_req.env)?;
        let (vm, task) = self
            .create_vm_then(&create, Some((&mut execution, payload)), by)
            .await?;
        Ok(SmartExecution {
            execution,
            task,
            vm,
            vm_created: true,
        })
    }

    /// Puts `env` into the payload: sealed when a secrets key is configured (always
    /// in embedded mode), in clear otherwise (task reads still hide the values).
    fn seal_env(
        &self,
        mut payload: ExecPayload,
        env: &BTreeMap<String, String>,
    ) -> CoreResult<ExecPayload> {
        if env.is_empty() {
            return Ok(payload);
        }
        let Some(keyring) = &self.workspace_data.keyring else {
            payload.env = env.clone();
            return Ok(payload);
        };
        let plain = serde_json::to_vec(env).map_err(|e| CoreError::Internal(e.into()))?;
        let sealed = keyring.encrypt(&plain, &env_aad(&payload.execution_id))?;
        let b64 = base64::engine::general_purpose::STANDARD;
        // The names stay readable; the values are only in the sealed copy.
        payload.env = env
            .keys()
            .map(|name| (name.clone(), REDACTED_ENV_VALUE.to_string()))
            .collect();
        payload.env_sealed = Some(SealedEnv {
            key_id: sealed.key_id,
            nonce: base64::Engine::encode(&b64, &sealed.nonce),
            ciphertext: base64::Engine::encode(&b64, &sealed.ciphertext),
        });
        Ok(payload)
    }

    /// The environment a queued command runs with (unsealed).
    pub fn exec_env(&self, payload: &ExecPayload) -> CoreResult<BTreeMap<String, String>> {
        let Some(sealed) = &payload.env_sealed else {
            return Ok(payload.env.clone());
        };
        let keyring = self.workspace_data.keyring.as_ref().ok_or_else(|| {
            CoreError::InvalidInput(
                "the command's environment is encrypted and this worker has no secrets key (workspaces.encryption_key)".into(),
            )
        })?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let decode = |field: &str, text: &str| {
            base64::Engine::decode(&b64, text).map_err(|e| {
                CoreError::InvalidInput(format!(
                    "the sealed environment's {field} is not base64: {e}"
                ))
            })
        };
        let sealed = crate::secrets::Sealed {
            key_id: sealed.key_id.clone(),
            nonce: decode("nonce", &sealed.nonce)?,
            ciphertext: decode("ciphertext", &sealed.ciphertext)?,
        };
        let plain = keyring
            .decrypt(&sealed, &env_aad(&payload.execution_id))
            .map_err(|e| {
                CoreError::InvalidInput(format!("cannot open the command's environment: {e}"))
            })?;
        serde_json::from_slice(&plain).map_err(|e| {
            CoreError::InvalidInput(format!("the command's environment is corrupt: {e}"))
        })
    }

    /// What stored outputs of VM `vm`'s commands must not contain: the secrets
    /// injected into it (a workspace's VM gets its workspace's and the global ones),
    /// since the records are readable by every role.
    pub async fn execution_redactor(&self, vm: &Vm) -> crate::secrets::Redactor {
        let Some(workspace_id) = vm.metadata.get("workspace_id").and_then(|w| w.as_str()) else {
            return crate::secrets::Redactor::default();
        };
        match self.injected_secrets(workspace_id).await {
            Ok(secrets) => crate::secrets::Redactor::new(secrets),
            Err(e) => {
                // Without the values nothing can be redacted: say so, keep running.
                tracing::warn!(vm_id = %vm.id, error = %e, "cannot read the secrets to redact outputs with");
                crate::secrets::Redactor::default()
            }
        }
    }

    /// A workspace's secrets as injected into its VM, decrypted: name → value.
    pub async fn injected_secrets(
        &self,
        workspace_id: &str,
    ) -> Result<BTreeMap<String, String>, String> {
        let sealed = self
            .workspace_data
            .secrets
            .secrets_for_injection(workspace_id)
            .await
            .map_err(|e| format!("cannot read the workspace's secrets: {e}"))?;
        if sealed.is_empty() {
            return Ok(BTreeMap::new());
        }
        let Some(keyring) = self.workspace_data.keyring.as_ref() else {
            return Err("the workspace has secrets but this worker has no encryption key (workspaces.encryption_key)".into());
        };
        let mut values = BTreeMap::new();
        for (meta, sealed) in sealed {
            let value = keyring
                .decrypt_string(&sealed, &crate::secrets::aad_of(&meta))
                .map_err(|e| format!("cannot decrypt secret {}: {e}", meta.name))?;
            values.insert(meta.name, value);
        }
        Ok(values)
    }

    pub async fn get_execution(&self, id: &str) -> CoreResult<Execution> {
        self.store
            .get_execution(id)
            .await?
            .ok_or_else(|| CoreError::NotFound(format!("execution {id} not found")))
    }

    pub async fn list_executions(
        &self,
        vm_id: &str,
        page: &Page,
    ) -> CoreResult<(Vec<Execution>, u64)> {
        // Executions outlive their VM, so an unknown VM id is only an error when it
        // has no executions either.
        let (list, total) = self.store.list_executions(vm_id, page).await?;
        if total == 0 && self.store.get_vm(vm_id).await?.is_none() {
            return Err(CoreError::NotFound(format!("VM {vm_id} not found")));
        }
        Ok((list, total))
    }

    /// A RUNNING VM and a client for its agent, for work that talks to the sandbox
    /// directly (streams, terminals, files).
    pub async fn open_sandbox(&self, id: &str) -> CoreResult<(Vm, AgentClient)> {
        let vm = self.get_vm(id).await?;
        if vm.status != VmStatus::Running {
            return Err(CoreError::Conflict(format!(
                "VM {id} is {}: only RUNNING VMs can be reached",
                vm.status
            )));
        }
        self.ensure_owner_reachable(&vm).await?;
        let agent = self.agents.agent_for(&vm).await?;
        Ok((vm, agent))
    }

    /// Records a command that runs directly (streamed or interactive) rather than
    /// through the queue, so it appears in the VM's history like any other.
    pub async fn begin_direct_execution(
        &self,
        vm_id: &str,
        command: &str,
        args: &[String],
        kind: &str,
        by: Option<&Principal>,
    ) -> CoreResult<Execution> {
        let mut execution = self.new_execution(vm_id, command, args, by);
        execution.status = ExecutionStatus::Running;
        execution.started_at = Some(Utc::now());
        execution.metadata.insert("mode".into(), kind.into());
        self.store.insert_execution(&execution).await?;
        self.enforce_execution_quota(by, &execution).await?;
        self.publish(
            EventType::ExecutionStarted,
            &execution.id,
            serde_json::json!({"vm_id": vm_id, "mode": kind}),
        );
        Ok(execution)
    }

    /// Stores a direct execution's outcome (output already capped by the caller).
    pub async fn finish_direct_execution(&self, execution: &mut Execution) -> CoreResult<()> {
        if let Some(vm) = self.store.get_vm(&execution.vm_id).await? {
            let redactor = self.execution_redactor(&vm).await;
            if !redactor.is_empty() {
                execution.stdout = redactor.redact_str(&execution.stdout);
                execution.stderr = redactor.redact_str(&execution.stderr);
            }
        }
        let now = Utc::now();
        execution.completed_at = Some(now);
        if let Some(started) = execution.started_at {
            execution.duration_ms = Some((now - started).num_milliseconds());
        }
        self.store.update_execution(execution).await?;
        crate::metrics::record_execution(execution);
        let event = if execution.status == ExecutionStatus::Failed {
            EventType::ExecutionFailed
        } else {
            EventType::ExecutionCompleted
        };
        self.publish(
            event,
            &execution.id,
            serde_json::json!({"vm_id": execution.vm_id, "status": execution.status, "exit_code": execution.exit_code}),
        );
        Ok(())
    }

    // ---- tasks -----------------------------------------------------------------

    pub async fn get_task(&self, id: &str) -> CoreResult<Task> {
        let mut task = self
            .store
            .get_task(id)
            .await?
            .ok_or_else(|| CoreError::NotFound(format!("task {id} not found")))?;
        self.mark_archived(std::slice::from_mut(&mut task)).await?;
        Self::hide_env(std::slice::from_mut(&mut task));
        Ok(task)
    }

    pub async fn list_tasks(
        &self,
        filter: &TaskFilter,
        page: &Page,
    ) -> CoreResult<(Vec<Task>, u64)> {
        let (mut tasks, total) = self.store.list_tasks(filter, page).await?;
        self.mark_archived(&mut tasks).await?;
        Self::hide_env(&mut tasks);
        Ok((tasks, total))
    }

    /// Fills in `archived_at` of the failed tasks still in the queue's archive (the
    /// records do not hold it: with the Redis queue, the archive lives in Redis).
    /// Hides the values of a command's environment in a task's payload (kept in
    /// clear only without a secrets key) from whoever reads tasks.
    fn hide_env(tasks: &mut [Task]) {
        for task in tasks {
            hide_env_values(&mut task.payload);
        }
    }

    async fn mark_archived(&self, tasks: &mut [Task]) -> CoreResult<()> {
        let failed: Vec<&str> = tasks
            .iter()
            .filter(|t| t.status == TaskStatus::Failed)
            .map(|t| t.id.as_str())
            .collect();
        if failed.is_empty() {
            return Ok(());
        }
        let times = self.queue.archived_times(&failed).await?;
        for task in tasks {
            task.archived_at = times.get(&task.id).copied();
        }
        Ok(())
    }

    /// The most recently archived (dead) tasks, at most `limit`, with `archived_at`.
    pub async fn list_archived_tasks(&self, limit: u32) -> CoreResult<Vec<Task>> {
        let mut tasks: Vec<Task> = self
            .queue
            .list_archived(limit)
            .await?
            .into_iter()
            .map(|archived| Task {
                archived_at: Some(archived.archived_at),
                ..archived.task
            })
            .collect();
        Self::hide_env(&mut tasks);
        Ok(tasks)
    }

    /// Puts an archived (dead) task back in line with no retries used: it is
    /// `pending` again and announced as `task.created` (with `retried: true`), as a
    /// new task would be. Anything not in the archive is a `Conflict`.
    pub async fn retry_task(&self, id: &str) -> CoreResult<Task> {
        let task = self.get_task(id).await?;
        if task.archived_at.is_none() || !self.queue.retry_archived(id).await? {
            return Err(not_archived(&task, "retried"));
        }
        let task = self.get_task(id).await?;
        self.publish(
            EventType::TaskCreated,
            &task.id,
            serde_json::json!({"type": task.task_type, "vm_id": task.vm_id, "retried": true}),
        );
        Ok(task)
    }

    /// Deletes an archived (dead) task: out of the archive, and its record gone
    /// (`task.deleted`). Anything not in the archive is a `Conflict`: live tasks are
    /// cancelled, finished ones kept as history.
    pub async fn delete_task(&self, id: &str) -> CoreResult<()> {
        let task = self.get_task(id).await?;
        if task.archived_at.is_none() || !self.queue.delete_archived(id).await? {
            return Err(not_archived(&task, "deleted"));
        }
        self.store.delete_task(id).await?;
        self.publish(
            EventType::TaskDeleted,
            &task.id,
            serde_json::json!({"type": task.task_type, "vm_id": task.vm_id}),
        );
        Ok(())
    }

    /// Tasks created, completed and failed per minute over the last `minutes`
    /// minutes, the current one last.
    pub async fn task_history(
        &self,
        minutes: u32,
    ) -> CoreResult<Vec<aetherium_types::QueueHistoryBucket>> {
        let now = Utc::now().timestamp();
        let current = now - now.rem_euclid(60);
        let from = chrono::DateTime::from_timestamp(current - 60 * i64::from(minutes - 1), 0)
            .ok_or_else(|| CoreError::Internal(anyhow::anyhow!("the clock is out of range")))?;
        self.store.task_history(from, minutes).await
    }

    /// Totals by state, and the same per queue (Asynq's pending, active, scheduled,
    /// retry, archived, processed, failed).
    pub async fn queue_stats(&self) -> CoreResult<QueueStats> {
        let mut stats = self.queue.stats().await?;
        stats.queues = crate::queue::QueueCounts::from_depths(&self.queue.depths().await?);
        Ok(stats)
    }

    /// Cancels a task. One that has not started (pending, scheduled, waiting for a
    /// retry) is `cancelled` at once and what it was for is marked so (a VM it would
    /// have created ends FAILED, an execution it would have run ends failed); a
    /// running one is stopped by its worker, which kills what it runs and records the
    /// task `cancelled` ([`CancelledTask::done`] is false until then). A finished
    /// task is a `Conflict`; `vm:delete` cannot be cancelled (a VM being deleted has
    /// no state to go back to).
    pub async fn cancel_task(&self, id: &str) -> CoreResult<CancelledTask> {
        let task = self.get_task(id).await?;
        if task.status.is_finished() {
            return Err(finished_conflict(&task));
        }
        if task.task_type == TaskType::VmDelete {
            return Err(CoreError::Conflict(format!(
                "task {id} is a vm:delete, which cannot be cancelled: once asked for, a deletion runs to its end"
            )));
        }
        match self.queue.cancel(id, CANCELLED_BEFORE_START).await? {
            CancelOutcome::Cancelled(task) => {
                self.cancelled_before_start(&task).await;
                self.publish(
                    EventType::TaskCancelled,
                    &task.id,
                    serde_json::json!({"type": task.task_type, "vm_id": task.vm_id, "reason": CANCELLED_BEFORE_START}),
                );
                Ok(CancelledTask { task, done: true })
            }
            CancelOutcome::Requested(task) => {
                // Wakes the worker that runs it (in this process) at once; other
                // workers notice on their next lease extension.
                self.publish(
                    EventType::TaskCancelRequested,
                    &task.id,
                    serde_json::json!({"type": task.task_type, "worker_id": task.worker_id}),
                );
                Ok(CancelledTask { task, done: false })
            }
            CancelOutcome::Finished(task) => Err(finished_conflict(&task)),
            CancelOutcome::NotFound => Err(CoreError::NotFound(format!("task {id} not found"))),
        }
    }

    /// What a task cancelled before it ran was for ends in a state that says so.
    async fn cancelled_before_start(&self, task: &Task) {
        match task.task_type {
            TaskType::VmCreate => {
                let Ok(payload) = serde_json::from_value::<CreatePayload>(task.payload.clone())
                else {
                    return;
                };
                let message = "VM creation was cancelled before it started";
                if let Ok(true) = self
                    .store
                    .transition_vm(
                        &payload.vm_id,
                        &[VmStatus::Created, VmStatus::Starting],
                        VmStatus::Failed,
                        Some(message),
                    )
                    .await
                {
                    let _ = self
                        .store
                        .fail_unfinished_executions(&payload.vm_id, message)
                        .await;
                    self.publish(
                        EventType::VmFailed,
                        &payload.vm_id,
                        serde_json::json!({"status": VmStatus::Failed, "error": message}),
                    );
                }
                if let Some(exec) = payload.then_execute {
                    self.fail_pending_execution(&exec.execution_id, message)
                        .await;
                }
            }
            TaskType::VmExecute => {
                if let Ok(payload) = serde_json::from_value::<ExecPayload>(task.payload.clone()) {
                    self.fail_pending_execution(
                        &payload.execution_id,
                        "the command was cancelled before it ran",
                    )
                    .await;
                }
            }
            _ => {}
        }
    }

    pub(crate) async fn fail_pending_execution(&self, execution_id: &str, message: &str) {
        if let Ok(Some(mut e)) = self.store.get_execution(execution_id).await
            && !e.status.is_finished()
        {
            e.status = ExecutionStatus::Failed;
            e.error = Some(message.to_string());
            e.completed_at = Some(Utc::now());
            if self.store.update_execution(&e).await.is_ok() {
                self.publish(
                    EventType::ExecutionFailed,
                    &e.id,
                    serde_json::json!({"vm_id": e.vm_id, "status": e.status, "exit_code": e.exit_code}),
                );
            }
        }
    }

    // ---- waiting ---------------------------------------------------------------

    /// Waits until the VM is RUNNING, STOPPED or FAILED (or gone), at most `timeout`.
    /// Returns the VM as it is then (`None` if it was deleted).
    pub async fn wait_vm_settled(&self, id: &str, timeout: Duration) -> CoreResult<Option<Vm>> {
        self.wait_until(timeout, id, || async {
            let vm = self.store.get_vm(id).await?;
            let done = vm.as_ref().is_none_or(|v| v.status.is_settled());
            Ok((done, vm))
        })
        .await
    }

    /// Waits until the execution has finished, at most `timeout`.
    pub async fn wait_execution_finished(
        &self,
        id: &str,
        timeout: Duration,
    ) -> CoreResult<Execution> {
        self.wait_until(timeout, id, || async {
            let e = self.get_execution(id).await?;
            Ok((e.status.is_finished(), e))
        })
        .await
    }

    /// Re-reads state whenever an event about `resource_id` arrives (or every 500 ms,
    /// in case events were missed) until `check` says done or time is up.
    async fn wait_until<T, F, Fut>(
        &self,
        timeout: Duration,
        resource_id: &str,
        check: F,
    ) -> CoreResult<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = CoreResult<(bool, T)>>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        // Subscribe before the first read, so no change can slip in between.
        let mut events = self.bus.subscribe();
        loop {
            let (done, value) = check().await?;
            if done || tokio::time::Instant::now() >= deadline {
                return Ok(value);
            }
            let tick = tokio::time::sleep_until(
                deadline.min(tokio::time::Instant::now() + Duration::from_millis(500)),
            );
            tokio::pin!(tick);
            loop {
                tokio::select! {
                    _ = &mut tick => break,
                    event = events.recv() => match event {
                        Ok(e) if e.resource_id == resource_id => break,
                        Ok(_) => continue,
                        // Lagged or closed: fall back to re-reading state.
                        Err(_) => break,
                    },
                }
            }
        }
    }

    // ---- health ----------------------------------------------------------------

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

/// `error` of a task cancelled before it started.
pub const CANCELLED_BEFORE_START: &str = "cancelled by request before it started";
/// `error` of a running task its worker stopped.
pub const CANCELLED_WHILE_RUNNING: &str = "cancelled by request while it ran";

fn not_archived(task: &Task, action: &str) -> CoreError {
    let why = if task.status == TaskStatus::Failed {
        "failed, but no longer in the archive of dead tasks".to_string()
    } else {
        task.status.to_string()
    };
    CoreError::Conflict(format!(
        "only an archived task can be {action}: task {} is {why}",
        task.id
    ))
}

fn finished_conflict(task: &Task) -> CoreError {
    CoreError::Conflict(format!(
        "task {} is already {}: only pending, scheduled or running tasks can be cancelled",
        task.id, task.status
    ))
}

/// What [`Platform::cancel_task`] did.
#[derive(Debug, Clone)]
pub struct CancelledTask {
    /// The task as it is now.
    pub task: Task,
    /// `true` once the task is `cancelled`; `false` while its worker is stopping it.
    pub done: bool,
}

/// What `smart_execute` did.
#[derive(Debug, Clone)]
pub struct SmartExecution {
    pub execution: Execution,
    /// The `vm:execute` task, or the `vm:create` task that will queue it.
    pub task: Task,
    pub vm: Vm,
    pub vm_created: bool,
}

// ---- gateway use cases (added with the streaming/interactive/files API) --------------

impl Platform {
    /// Waits until the task has finished (completed, failed or cancelled), at most
    /// `timeout`; returns it as it is then. The worker finishes a task's work (e.g.
    /// removes a VM) before it records the task as done, so a caller that saw the
    /// work's effect and wants the task's final status waits here.
    pub async fn wait_task_finished(&self, id: &str, timeout: Duration) -> CoreResult<Task> {
        self.wait_until(timeout, id, || async {
            let task = self.get_task(id).await?;
            Ok((task.status.is_finished(), task))
        })
        .await
    }
}
