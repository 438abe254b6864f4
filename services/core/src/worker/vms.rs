//! `vm:create`, `vm:pause`, `vm:resume`, `vm:snapshot` and `vm:delete`.

use super::*;

impl Worker {
    // ---- vm:create -----------------------------------------------------------------

    pub(super) async fn handle_create(
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
        // The request's variables, for every process from now on (envd's /init).
        let env = match self.platform.vm_env(&payload) {
            Ok(env) => env,
            Err(e) => {
                let _ = self.remove_sandbox(&vm.id).await;
                return Err(TaskError::permanent(e.to_string()));
            }
        };
        if !env.is_empty()
            && let Err(e) = agent
                .init(&crate::agent_client::InitOptions {
                    env_vars: env,
                    ..Default::default()
                })
                .await
        {
            let _ = self.remove_sandbox(&vm.id).await;
            return Err(TaskError::retry(format!(
                "the sandbox's agent did not take its environment: {e}"
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
    pub(super) async fn handle_network(&self, payload: NetworkPayload) -> TaskResult {
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

    pub(super) async fn handle_control(&self, task: &Task, payload: DeletePayload) -> TaskResult {
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

    pub(super) async fn handle_delete(&self, payload: DeletePayload) -> TaskResult {
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
}
