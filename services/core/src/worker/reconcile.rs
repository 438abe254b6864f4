//! Heartbeats and reconciliation: the worker's row, its sandboxes against the
//! store, sandboxes that die or are removed outside Aetherium.

use super::*;

impl Worker {
    // ---- heartbeat and reconciliation -------------------------------------------

    pub(super) async fn heartbeat_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
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

    /// Deletes this worker's VMs whose time to live ran out, checked every second
    /// (a TTL is given in seconds; the check is one indexed query).
    pub(super) async fn expiry_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Err(e) = self.platform.sweep_expired_vms(&self.settings.id).await {
                        tracing::debug!(error = %e, "expiry sweep failed");
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }

    pub(super) fn info(
        &self,
        status: WorkerStatus,
        message: Option<String>,
        vm_count: u32,
    ) -> WorkerInfo {
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

    pub(super) async fn mark_offline(&self, drained_by_request: bool) {
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
    pub(super) fn announce(&self, status: WorkerStatus, message: Option<&str>) {
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

    pub(super) async fn owned_vms(&self) -> crate::error::CoreResult<Vec<aetherium_types::Vm>> {
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

    pub(super) async fn exit_watch_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
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
    pub(super) async fn exit_cause(&self, vm_id: &str, exit_code: i64) -> ExitCause {
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
    pub(super) async fn sandbox_stopped(&self, vm_id: &str, cause: ExitCause) {
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
    pub(super) async fn reconcile_network(&self) {
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
    pub(super) async fn reopen_networks(&self) {
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
    pub(super) async fn remove_sandbox(&self, vm_id: &str) -> Result<(), crate::vmm::BackendError> {
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
    pub(super) async fn attach_network(&self, vm: &Vm) -> Result<Option<GuestNetwork>, TaskError> {
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

    pub(super) async fn mark_vm_failed(&self, vm_id: &str, from: &[VmStatus], message: &str) {
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
}
