//! Sandboxes: create, look up, list, delete, pause, resume, network policy, snapshot.

use super::*;

impl Platform {
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
    pub(super) async fn create_vm_then(
        &self,
        req: &CreateVmRequest,
        then: Option<(&mut Execution, ExecPayload)>,
        by: Option<&Principal>,
    ) -> CoreResult<(Vm, Task)> {
        req.validate().map_err(CoreError::InvalidInput)?;
        // Tools the catalog cannot install are refused now, with nothing recorded.
        let tools =
            crate::services::workspaces::merge_tools(&req.additional_tools, &req.tool_versions);
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
            expires_at: req
                .ttl_seconds
                .map(|ttl| Utc::now() + chrono::Duration::seconds(ttl as i64)),
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
        let (env, env_sealed) = self.seal_vars(&req.env, &vm_env_aad(&vm.id))?;
        let mut payload = CreatePayload {
            vm_id: vm.id.clone(),
            then_execute: None,
            tools,
            env,
            env_sealed,
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
    pub(super) fn tools_timeout(&self, tools: &[String]) -> CoreResult<Duration> {
        if tools.is_empty() {
            return Ok(Duration::ZERO);
        }
        let plan = self.workspace_data.tools.check(tools)?;
        Ok(plan.tools().iter().map(|t| t.timeout).sum())
    }

    /// Gives a live VM `ttl_seconds` more to live from now (its `expires_at`), or
    /// takes its expiry away (`None`). The VM as it is now.
    pub async fn set_vm_ttl(&self, id: &str, ttl_seconds: Option<u64>) -> CoreResult<Vm> {
        if let Some(ttl) = ttl_seconds {
            aetherium_types::validate_ttl_seconds(ttl).map_err(CoreError::InvalidInput)?;
        }
        let vm = self.get_vm(id).await?;
        if matches!(
            vm.status,
            VmStatus::Stopping | VmStatus::Stopped | VmStatus::Failed
        ) {
            return Err(CoreError::Conflict(format!(
                "VM {id} is {}: it has no time left to set",
                vm.status
            )));
        }
        let at = ttl_seconds.map(|ttl| Utc::now() + chrono::Duration::seconds(ttl as i64));
        if !self.store.set_vm_expiry(id, at).await? {
            return Err(CoreError::NotFound(format!("VM {id} not found")));
        }
        self.get_vm(id).await
    }

    /// Deletes worker `worker_id`'s VMs whose time to live ran out (each worker
    /// sweeps its own, so every expiry is enforced by one process, and again after
    /// a restart). Returns how many deletes were queued.
    pub async fn sweep_expired_vms(&self, worker_id: &str) -> CoreResult<usize> {
        let mut queued = 0;
        for id in self.store.expired_vms(worker_id, Utc::now()).await? {
            match self.delete_vm(&id).await {
                Ok(_) => {
                    queued += 1;
                    tracing::info!(vm_id = %id, "deleting a VM whose time to live ran out");
                }
                // Gone meanwhile, or a delete got there first.
                Err(CoreError::NotFound(_) | CoreError::Conflict(_)) => {}
                Err(e) => tracing::warn!(vm_id = %id, error = %e, "cannot delete an expired VM"),
            }
        }
        Ok(queued)
    }

    pub async fn get_vm(&self, id: &str) -> CoreResult<Vm> {
        self.store
            .get_vm(id)
            .await?
            .ok_or_else(|| CoreError::NotFound(format!("VM {id} not found")))
    }

    /// Every VM on record, newest first (for views that filter on what the store
    /// cannot, such as E2B's metadata filters), at most `MAX_ALL_VMS`.
    pub async fn all_vms(&self) -> CoreResult<Vec<Vm>> {
        const MAX_ALL_VMS: usize = 100_000;
        let mut all = Vec::new();
        let mut page = Page {
            limit: Page::MAX_LIMIT,
            cursor: None,
        };
        loop {
            let (vms, _) = self.store.list_vms(&VmFilter::default(), &page).await?;
            let full = vms.len() == page.limit as usize;
            page.cursor = vms.last().map(|vm| Cursor::after(vm.created_at, &vm.id));
            all.extend(vms);
            if !full || all.len() >= MAX_ALL_VMS {
                return Ok(all);
            }
        }
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
    pub(super) async fn queue_on_owner(
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

    pub(super) async fn control_vm(&self, id: &str, task_type: TaskType) -> CoreResult<Task> {
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
}
