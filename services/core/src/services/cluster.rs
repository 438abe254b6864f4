//! Distributed mode's use cases on workers: placement of new VMs, the owner check of
//! VM-bound work, drain and activate, the offline sweep, and the cluster views.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use aetherium_types::{
    ClusterDistribution, ClusterStats, EventType, Orchestrator, Placement, TaskStatus, TaskType,
    Vm, VmStatus, Worker, WorkerCounts, WorkerDistribution, WorkerStatus, WorkerUsage, WorkerView,
    ZoneDistribution,
};
use chrono::Utc;
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::{CoreError, CoreResult};
use crate::services::Platform;
use crate::store::workers::DRAINED_BY_REQUEST;
use crate::store::{Page, TaskFilter, VmFilter};

/// What a new VM asks of the worker that will run it.
#[derive(Debug, Clone)]
pub struct PlacementRequest<'a> {
    pub orchestrator: Orchestrator,
    pub vcpus: u32,
    pub memory_mb: u64,
    pub placement: Option<&'a Placement>,
}

/// `status_message` of a worker the sweep declared offline.
pub fn offline_message(stale_after: Duration) -> String {
    format!(
        "no heartbeat for more than {}s: declared offline",
        stale_after.as_secs()
    )
}

/// `status_message` of a worker that stopped on purpose (SIGTERM, drain). Its
/// sandboxes keep running and it adopts them when it starts again, so work queued
/// for it waits for it instead of being cancelled as lost.
pub const GRACEFUL_STOP_MESSAGE: &str = "stopped";

/// `status_message` of a worker an administrator had drained when it stopped on
/// purpose: it is draining again when it comes back (the drain is not forgotten).
pub const DRAINED_STOP_MESSAGE: &str = "stopped while drained by request";

/// Whether an offline worker's message says it stopped on purpose.
pub fn stopped_on_purpose(message: Option<&str>) -> bool {
    matches!(message, Some(GRACEFUL_STOP_MESSAGE | DRAINED_STOP_MESSAGE))
}

/// Whether this process may declare workers offline: only once it has reached the
/// store without a break for a whole stale period. During a database outage no
/// worker can heartbeat, so right after it every worker looks stale; sweeping then
/// would fail every VM of a healthy cluster.
#[derive(Debug, Default)]
pub struct SweepGate {
    reachable_since: Option<std::time::Instant>,
}

impl SweepGate {
    /// Records whether the store answered just now.
    pub fn record(&mut self, reachable: bool) {
        if !reachable {
            self.reachable_since = None;
        } else if self.reachable_since.is_none() {
            self.reachable_since = Some(std::time::Instant::now());
        }
    }

    pub fn is_open(&self, stale_after: Duration) -> bool {
        self.reachable_since
            .is_some_and(|since| since.elapsed() >= stale_after)
    }
}

/// `error` of a VM whose worker went offline.
pub fn lost_vm_message(worker_id: &str) -> String {
    format!("worker {worker_id} went offline: the VM is lost")
}

/// Filters of `GET /workers`.
#[derive(Debug, Clone, Default)]
pub struct WorkerQuery {
    pub zone: Option<String>,
    pub status: Option<WorkerStatus>,
}

impl Platform {
    /// Whether `w` heartbeats within the stale threshold and is not offline.
    pub fn worker_is_live(&self, w: &Worker) -> bool {
        if w.status == WorkerStatus::Offline {
            return false;
        }
        let age = Utc::now().signed_duration_since(w.last_seen);
        age.to_std().unwrap_or_default() <= self.defaults.worker_stale_after
    }

    async fn usage_by_worker(&self) -> CoreResult<BTreeMap<String, WorkerUsage>> {
        Ok(self.store.worker_usage().await?.into_iter().collect())
    }

    /// Chooses the worker for a new VM: live, `active`, able to run the backend,
    /// matching the placement, with at least as many CPU cores as the VM has vCPUs,
    /// a free slot and room for the VM's memory; among
    /// those, the one with the most free slots, then free memory, then free vCPUs
    /// (vCPUs are overcommitted: they rank, they do not exclude). When none fits:
    /// a `Conflict` (409) if no worker with the backend matches the placement and
    /// has the cores at all, else `Unavailable` (503); either says why each worker was not chosen.
    pub async fn place_vm(&self, req: &PlacementRequest<'_>) -> CoreResult<Worker> {
        let workers = self.store.list_workers().await?;
        let usage = self.usage_by_worker().await?;
        let mut reasons: Vec<String> = Vec::new();
        let mut best: Option<(Worker, (u64, u64, i64))> = None;
        // Some worker with the backend matches the placement (whatever its state).
        let mut matched_any = false;
        for w in workers {
            let why_not = |reason: String| format!("{} {reason}", w.id);
            if !w
                .capabilities
                .iter()
                .any(|c| c == req.orchestrator.as_str())
            {
                // Not a candidate at all: not worth naming.
                continue;
            }
            if let Some(p) = req.placement
                && !p.matches(&w)
            {
                reasons.push(why_not("does not match the placement".into()));
                continue;
            }
            // More vCPUs than the host has cores: Docker refuses such a limit, and a
            // microVM's vCPU threads would only queue for the same cores. Never fits.
            if w.cpu_cores > 0 && req.vcpus > w.cpu_cores {
                reasons.push(why_not(format!(
                    "has {} CPU cores, {} vCPUs asked",
                    w.cpu_cores, req.vcpus
                )));
                continue;
            }
            matched_any = true;
            if !self.worker_is_live(&w) {
                reasons.push(why_not("is offline".into()));
                continue;
            }
            match w.status {
                WorkerStatus::Active => {}
                WorkerStatus::Draining => {
                    reasons.push(why_not(format!(
                        "is draining ({})",
                        w.status_message.as_deref().unwrap_or("takes no new VMs")
                    )));
                    continue;
                }
                other => {
                    reasons.push(why_not(format!(
                        "is {other}{}",
                        w.status_message
                            .as_deref()
                            .map(|m| format!(": {m}"))
                            .unwrap_or_default()
                    )));
                    continue;
                }
            }
            let used = usage.get(&w.id).copied().unwrap_or_default();
            let free_slots = u64::from(w.max_vms).saturating_sub(u64::from(used.vms));
            if free_slots == 0 {
                reasons.push(why_not(format!(
                    "is full ({} of {} VMs)",
                    used.vms, w.max_vms
                )));
                continue;
            }
            // memory_mb 0: the worker did not say, so memory is not limited.
            let free_memory = if w.memory_mb == 0 {
                u64::MAX
            } else {
                w.memory_mb.saturating_sub(used.memory_mb)
            };
            if free_memory < req.memory_mb {
                reasons.push(why_not(format!(
                    "has {free_memory} MiB free, {} asked",
                    req.memory_mb
                )));
                continue;
            }
            // vCPUs are shares of the host's cores (overcommitted): they rank
            // workers, they do not exclude one.
            let free_cpus = i64::from(w.cpu_cores) - used.vcpus as i64;
            let score = (free_slots, free_memory, free_cpus);
            if best.as_ref().is_none_or(|(_, s)| score > *s) {
                best = Some((w, score));
            }
        }
        if let Some((w, _)) = best {
            return Ok(w);
        }
        let orchestrator = req.orchestrator;
        if !matched_any && !reasons.is_empty() {
            // Not a passing state: no registered worker could ever take it.
            return Err(CoreError::Conflict(match req.placement {
                Some(p) => format!(
                    "no worker that runs {orchestrator} sandboxes matches the placement (zone {}, labels {:?}) with {} vCPUs: {}",
                    p.zone.as_deref().unwrap_or("any"),
                    p.labels,
                    req.vcpus,
                    reasons.join("; ")
                ),
                None => format!(
                    "no worker that runs {orchestrator} sandboxes has {} CPU cores: {}",
                    req.vcpus,
                    reasons.join("; ")
                ),
            }));
        }
        Err(CoreError::Unavailable(if reasons.is_empty() {
            format!("no live worker can run {orchestrator} sandboxes")
        } else {
            format!(
                "no worker can take this {orchestrator} VM: {}",
                reasons.join("; ")
            )
        }))
    }

    /// Whether the VMs recorded on `worker` (counting one just recorded) are within
    /// its slots and memory.
    pub(crate) async fn still_fits(&self, worker: &Worker) -> CoreResult<bool> {
        let mut used = WorkerUsage::default();
        for vm in self.vms_of(&worker.id).await? {
            crate::store::workers::add_usage(&mut used, &vm);
        }
        Ok(used.vms <= worker.max_vms
            && (worker.memory_mb == 0 || used.memory_mb <= worker.memory_mb))
    }

    /// Refuses VM-bound work at once (503) when the VM's owner is offline or has not
    /// heartbeated within the stale threshold: a queued task would never run.
    pub async fn ensure_owner_reachable(&self, vm: &Vm) -> CoreResult<()> {
        let Some(owner) = vm.worker_id.as_deref() else {
            return Ok(());
        };
        let worker = self.store.get_worker(owner).await?;
        match worker {
            Some(w) if self.worker_is_live(&w) => Ok(()),
            Some(w) => Err(CoreError::Unavailable(format!(
                "VM {} is on worker {owner}, which is offline (last seen {}): it cannot be reached; delete the VM and create another",
                vm.id,
                w.last_seen
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ))),
            None => Err(CoreError::Unavailable(format!(
                "VM {} is on worker {owner}, which is not registered: it cannot be reached",
                vm.id
            ))),
        }
    }

    /// Whether the VM's owner is live (false for a VM with no owner yet).
    pub(crate) async fn owner_is_live(&self, vm: &Vm) -> CoreResult<bool> {
        Ok(match vm.worker_id.as_deref() {
            None => false,
            Some(owner) => self
                .store
                .get_worker(owner)
                .await?
                .is_some_and(|w| self.worker_is_live(&w)),
        })
    }

    // ---- drain / activate ----------------------------------------------------------

    async fn require_worker(&self, id: &str) -> CoreResult<Worker> {
        self.store
            .get_worker(id)
            .await?
            .ok_or_else(|| CoreError::NotFound(format!("worker {id} not found")))
    }

    /// Stops placing new VMs on the worker; it keeps serving the VMs it has. Lasts
    /// until [`Platform::activate_worker`] (heartbeats keep it). Idempotent.
    pub async fn drain_worker(&self, id: &str) -> CoreResult<Worker> {
        let before = self.require_worker(id).await?;
        if before.status == WorkerStatus::Offline || !self.worker_is_live(&before) {
            return Err(CoreError::Conflict(format!(
                "worker {id} is offline: there is nothing to drain"
            )));
        }
        let after = self
            .store
            .set_worker_status(
                id,
                &[
                    WorkerStatus::Active,
                    WorkerStatus::Unhealthy,
                    WorkerStatus::Draining,
                ],
                WorkerStatus::Draining,
                Some(DRAINED_BY_REQUEST),
            )
            .await?
            .ok_or_else(|| CoreError::NotFound(format!("worker {id} not found")))?;
        if after.status != WorkerStatus::Draining {
            return Err(CoreError::Conflict(format!(
                "worker {id} is {}: it cannot be drained",
                after.status
            )));
        }
        if before.status != WorkerStatus::Draining {
            self.publish(
                EventType::WorkerDraining,
                id,
                json!({"worker_id": id, "status": WorkerStatus::Draining, "message": DRAINED_BY_REQUEST}),
            );
        }
        Ok(after)
    }

    /// Ends a drain: the worker takes new VMs again (if its backend is healthy, its
    /// next heartbeat keeps it `active`). Idempotent on an active worker.
    pub async fn activate_worker(&self, id: &str) -> CoreResult<Worker> {
        let before = self.require_worker(id).await?;
        if before.status == WorkerStatus::Offline || !self.worker_is_live(&before) {
            return Err(CoreError::Conflict(format!(
                "worker {id} is offline: it activates itself when it heartbeats again"
            )));
        }
        let after = self
            .store
            .set_worker_status(id, &[WorkerStatus::Draining], WorkerStatus::Active, None)
            .await?
            .ok_or_else(|| CoreError::NotFound(format!("worker {id} not found")))?;
        if before.status == WorkerStatus::Draining && after.status == WorkerStatus::Active {
            self.publish(
                EventType::WorkerOnline,
                id,
                json!({"worker_id": id, "status": WorkerStatus::Active, "message": "activated by request"}),
            );
        }
        Ok(after)
    }

    // ---- the offline sweep ---------------------------------------------------------

    /// Declares workers not seen within the stale threshold offline (once: the store
    /// hands each to one caller), marks their VMs FAILED ("worker X went offline"),
    /// removes the records of those being deleted, and cancels the pending tasks that
    /// only they could run — including tasks recovered from their expired leases,
    /// which may come back later (so that part runs for every offline worker, every
    /// round). Idempotent; every process may run it.
    pub async fn sweep_offline_workers(&self) -> CoreResult<Vec<String>> {
        let stale_after = self.defaults.worker_stale_after;
        let seen_before = Utc::now()
            - chrono::Duration::from_std(stale_after).unwrap_or_else(|_| chrono::Duration::zero());
        let newly = self
            .store
            .mark_stale_workers_offline(seen_before, &offline_message(stale_after))
            .await?;
        for w in &newly {
            tracing::warn!(worker_id = %w.id, last_seen = %w.last_seen, "worker declared offline");
            self.publish(
                EventType::WorkerOffline,
                &w.id,
                json!({"worker_id": w.id, "status": WorkerStatus::Offline,
                       "message": w.status_message, "hostname": w.hostname}),
            );
            if let Err(e) = self.lose_vms_of(&w.id).await {
                tracing::warn!(worker_id = %w.id, error = %e, "cannot mark the VMs of an offline worker");
            }
        }
        for w in self.store.list_workers().await? {
            if w.status == WorkerStatus::Offline
                && !stopped_on_purpose(w.status_message.as_deref())
                && let Err(e) = self.cancel_tasks_stranded_on(&w.id).await
            {
                tracing::warn!(worker_id = %w.id, error = %e, "cannot cancel the tasks of an offline worker");
            }
        }
        Ok(newly.into_iter().map(|w| w.id).collect())
    }

    async fn vms_of(&self, worker_id: &str) -> CoreResult<Vec<Vm>> {
        let filter = VmFilter {
            worker_id: Some(worker_id.to_string()),
            ..Default::default()
        };
        self.store.all_vms(&filter).await
    }

    async fn lose_vms_of(&self, worker_id: &str) -> CoreResult<()> {
        let message = lost_vm_message(worker_id);
        for vm in self.vms_of(worker_id).await? {
            let vm = if matches!(vm.status, VmStatus::Created | VmStatus::Starting) {
                if self.place_again(&vm, worker_id).await? {
                    continue;
                }
                // As it is now (a failed attempt may have moved it back).
                match self.store.get_vm(&vm.id).await? {
                    Some(vm) if vm.worker_id.as_deref() == Some(worker_id) => vm,
                    _ => continue,
                }
            } else {
                vm
            };
            self.cancel_pending_tasks_of_vm(&vm.id, worker_id, &message)
                .await?;
            match vm.status {
                VmStatus::Created | VmStatus::Starting | VmStatus::Running | VmStatus::Paused => {
                    if self
                        .store
                        .transition_vm(&vm.id, &[vm.status], VmStatus::Failed, Some(&message))
                        .await?
                    {
                        self.store
                            .fail_unfinished_executions(&vm.id, &message)
                            .await?;
                        self.publish(
                            EventType::VmFailed,
                            &vm.id,
                            json!({"status": VmStatus::Failed, "error": message, "worker_id": worker_id}),
                        );
                    }
                }
                // Its deletion was asked for and only its owner could do it: the
                // record goes now; the owner removes the sandbox if it ever returns
                // (a sandbox without a record is removed at reconcile).
                VmStatus::Stopping => {
                    self.store
                        .fail_unfinished_executions(&vm.id, &message)
                        .await?;
                    self.store.delete_vm(&vm.id).await?;
                    self.publish(
                        EventType::VmDeleted,
                        &vm.id,
                        json!({"vm_id": vm.id, "note": message}),
                    );
                }
                VmStatus::Stopped | VmStatus::Failed => {}
            }
        }
        Ok(())
    }

    /// Places a VM that `lost` went offline before making (CREATED, or STARTING:
    /// its sandbox may be half-made there, which `lost` removes if it ever returns)
    /// on another worker that can take it under its own placement, with the same
    /// create (and the command to run after it, if any). Returns whether it was
    /// placed; `false` leaves it to be failed as lost.
    async fn place_again(&self, vm: &Vm, lost: &str) -> CoreResult<bool> {
        let filter = TaskFilter {
            task_type: Some(TaskType::VmCreate),
            vm_id: Some(vm.id.clone()),
            ..Default::default()
        };
        let (tasks, _) = self
            .store
            .list_tasks(&filter, &Page::new(Some(Page::MAX_LIMIT), None))
            .await?;
        let Some(create) = tasks
            .into_iter()
            .find(|t| matches!(t.status, TaskStatus::Pending | TaskStatus::Running))
        else {
            return Ok(false);
        };
        let request = PlacementRequest {
            orchestrator: vm.orchestrator,
            vcpus: vm.vcpu_count,
            memory_mb: vm.memory_mb,
            placement: vm.placement.as_ref(),
        };
        let worker = match self.place_vm(&request).await {
            Ok(worker) => worker,
            Err(e) => {
                tracing::warn!(vm_id = %vm.id, lost, error = %e, "no other worker can take the VM");
                return Ok(false);
            }
        };
        if !self.store.move_vm(&vm.id, lost, &worker.id).await? {
            return Ok(true); // Changed meanwhile (deleted, or placed by another sweep).
        }
        if !self.still_fits(&worker).await? {
            // Other VMs took the last place meanwhile: it stays lost.
            self.store.move_vm(&vm.id, &worker.id, lost).await?;
            return Ok(false);
        }
        // The old create must never run: cancelled before the new one is queued (a
        // running one ends cancelled once its lease runs out).
        let reason = format!(
            "worker {lost} went offline before making the VM: placed on {} instead",
            worker.id
        );
        self.queue.cancel(&create.id, &reason).await?;
        let mut again =
            crate::services::new_task(TaskType::VmCreate, create.payload.clone(), Some(&vm.id));
        again.target_worker_id = Some(worker.id.clone());
        again.timeout_seconds = create.timeout_seconds;
        if let Err(e) = self.submit(&again).await {
            self.store.move_vm(&vm.id, &worker.id, lost).await?;
            tracing::warn!(vm_id = %vm.id, error = %e, "cannot queue the VM's create again");
            return Ok(false);
        }
        tracing::warn!(vm_id = %vm.id, lost, to = %worker.id, "VM placed again: its worker went offline before making it");
        self.publish(
            EventType::VmCreated,
            &vm.id,
            json!({"vm_id": vm.id, "worker_id": worker.id, "placed_again_from": lost}),
        );
        Ok(true)
    }

    /// Cancels the VM's pending tasks that are bound to `worker_id`.
    async fn cancel_pending_tasks_of_vm(
        &self,
        vm_id: &str,
        worker_id: &str,
        reason: &str,
    ) -> CoreResult<()> {
        let filter = TaskFilter {
            status: Some(TaskStatus::Pending),
            vm_id: Some(vm_id.to_string()),
            ..Default::default()
        };
        let (tasks, _) = self
            .store
            .list_tasks(&filter, &Page::new(Some(Page::MAX_LIMIT), None))
            .await?;
        for task in tasks {
            if task.target_worker_id.as_deref() == Some(worker_id) {
                self.cancel_stranded(&task.id, reason).await?;
            }
        }
        Ok(())
    }

    /// Pending tasks bound to an offline worker that it leased last (its expired
    /// leases put them back in line, where nobody else may take them).
    async fn cancel_tasks_stranded_on(&self, worker_id: &str) -> CoreResult<()> {
        let filter = TaskFilter {
            status: Some(TaskStatus::Pending),
            worker_id: Some(worker_id.to_string()),
            ..Default::default()
        };
        let (tasks, _) = self
            .store
            .list_tasks(&filter, &Page::new(Some(Page::MAX_LIMIT), None))
            .await?;
        let reason = lost_vm_message(worker_id);
        for task in tasks {
            if task.target_worker_id.as_deref() == Some(worker_id) {
                self.cancel_stranded(&task.id, &reason).await?;
            }
        }
        Ok(())
    }

    async fn cancel_stranded(&self, task_id: &str, reason: &str) -> CoreResult<()> {
        if let crate::queue::CancelOutcome::Cancelled(task) =
            self.queue.cancel(task_id, reason).await?
        {
            if let Some(execution_id) = task.payload.get("execution_id").and_then(|v| v.as_str()) {
                self.fail_pending_execution(execution_id, reason).await;
            }
            self.publish(
                EventType::TaskCancelled,
                &task.id,
                json!({"type": task.task_type, "vm_id": task.vm_id, "reason": reason}),
            );
        }
        Ok(())
    }

    /// Runs [`Platform::sweep_offline_workers`] every `interval` until `stop`, once
    /// [`SweepGate`] says the store has been reachable long enough.
    pub fn spawn_offline_sweeper(
        &self,
        interval: Duration,
        mut stop: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        let platform = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            let mut gate = SweepGate::default();
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.changed() => return,
                }
                gate.record(platform.store.ping().await.is_ok());
                if !gate.is_open(platform.defaults.worker_stale_after) {
                    continue;
                }
                if let Err(e) = platform.sweep_offline_workers().await {
                    gate.record(false);
                    tracing::warn!(error = %e, "offline sweep failed");
                }
            }
        })
    }

    // ---- views ---------------------------------------------------------------------

    fn view(&self, w: Worker, usage: &BTreeMap<String, WorkerUsage>) -> WorkerView {
        let used = usage.get(&w.id).copied().unwrap_or_default();
        let live = self.worker_is_live(&w);
        let mut view = WorkerView::new(w, used, live);
        // A worker past the stale threshold that the sweep has not reached yet.
        if !live {
            view.status = WorkerStatus::Offline;
        }
        view
    }

    /// Workers, by id, filtered by zone and (effective) status.
    pub async fn list_worker_views(&self, q: &WorkerQuery) -> CoreResult<Vec<WorkerView>> {
        let usage = self.usage_by_worker().await?;
        Ok(self
            .store
            .list_workers()
            .await?
            .into_iter()
            .filter(|w| q.zone.as_deref().is_none_or(|z| z == w.zone))
            .map(|w| self.view(w, &usage))
            .filter(|v| q.status.is_none_or(|s| s == v.status))
            .collect())
    }

    pub async fn worker_view(&self, id: &str) -> CoreResult<WorkerView> {
        let w = self.require_worker(id).await?;
        let usage = self.usage_by_worker().await?;
        Ok(self.view(w, &usage))
    }

    /// The VMs placed on a worker (404 for an unknown worker), newest first.
    pub async fn list_worker_vms(&self, id: &str, page: &Page) -> CoreResult<(Vec<Vm>, u64)> {
        self.require_worker(id).await?;
        let filter = VmFilter {
            worker_id: Some(id.to_string()),
            ..Default::default()
        };
        self.store.list_vms(&filter, page).await
    }

    pub async fn cluster_stats(&self) -> CoreResult<ClusterStats> {
        let views = self.list_worker_views(&WorkerQuery::default()).await?;
        let mut counts = WorkerCounts::default();
        let mut zones = BTreeSet::new();
        let (mut cpu_total, mut cpu_used, mut mem_total, mut mem_used) = (0u64, 0u64, 0u64, 0u64);
        let (mut slots_total, mut slots_used) = (0u64, 0u64);
        for v in &views {
            counts.total += 1;
            match v.status {
                WorkerStatus::Active => counts.active += 1,
                WorkerStatus::Draining => counts.draining += 1,
                WorkerStatus::Unhealthy => counts.unhealthy += 1,
                WorkerStatus::Offline => counts.offline += 1,
            }
            zones.insert(v.zone.clone());
            cpu_used += v.used.vcpus;
            mem_used += v.used.memory_mb;
            slots_used += u64::from(v.used.vms);
            if v.status != WorkerStatus::Offline {
                cpu_total += u64::from(v.cpu_cores);
                mem_total += v.memory_mb;
                slots_total += u64::from(v.max_vms);
            }
        }
        let by_status = self.store.count_vms_by_status().await?;
        let vms_total = by_status.iter().map(|(_, n)| n).sum();
        Ok(ClusterStats {
            workers: counts,
            cpu_cores_total: cpu_total,
            cpu_cores_used: cpu_used,
            memory_mb_total: mem_total,
            memory_mb_used: mem_used,
            vms: by_status
                .into_iter()
                .map(|(s, n)| (s.as_str().to_string(), n))
                .collect(),
            vms_total,
            slots_total,
            slots_used,
            slots_free: slots_total.saturating_sub(slots_used),
            zones: zones.into_iter().collect(),
            timestamp: Utc::now(),
        })
    }

    pub async fn cluster_distribution(&self) -> CoreResult<ClusterDistribution> {
        let views = self.list_worker_views(&WorkerQuery::default()).await?;
        let total: u64 = views.iter().map(|v| u64::from(v.used.vms)).sum();
        let mut zones: BTreeMap<String, ZoneDistribution> = BTreeMap::new();
        let mut workers = Vec::with_capacity(views.len());
        for v in &views {
            let vms = u64::from(v.used.vms);
            let z = zones
                .entry(v.zone.clone())
                .or_insert_with(|| ZoneDistribution {
                    zone: v.zone.clone(),
                    workers: 0,
                    active_workers: 0,
                    vms: 0,
                    slots_total: 0,
                    slots_free: 0,
                });
            z.workers += 1;
            z.vms += vms;
            if v.status == WorkerStatus::Active {
                z.active_workers += 1;
            }
            if v.status != WorkerStatus::Offline {
                z.slots_total += u64::from(v.max_vms);
                z.slots_free += u64::from(v.free_slots);
            }
            workers.push(WorkerDistribution {
                worker_id: v.id.clone(),
                zone: v.zone.clone(),
                status: v.status,
                vms,
                max_vms: v.max_vms,
                share: if total == 0 {
                    0.0
                } else {
                    vms as f64 / total as f64
                },
            });
        }
        Ok(ClusterDistribution {
            total_vms: total,
            zones: zones.into_values().collect(),
            workers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweep_waits_a_stale_period_after_the_store_comes_back() {
        let mut gate = SweepGate::default();
        assert!(!gate.is_open(Duration::ZERO), "never reached the store yet");
        gate.record(true);
        assert!(gate.is_open(Duration::ZERO));
        assert!(
            !gate.is_open(Duration::from_secs(60)),
            "reachable for too short"
        );
        gate.record(false);
        assert!(!gate.is_open(Duration::ZERO), "an outage closes it");
    }
}
