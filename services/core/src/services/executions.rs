//! Commands in sandboxes: queued, smart and direct executions, their environment
//! and secrets, and lookups.

use super::*;

impl Platform {
    /// Records an execution (pending) and queues `vm:execute` on the VM's worker.
    pub async fn execute(
        &self,
        vm_id: &str,
        req: &ExecuteCommandRequest,
        by: Option<&Principal>,
    ) -> CoreResult<(Execution, Task)> {
        // `req` was validated where it entered: the API route (a bad request is a 400
        // whatever VM it names) or `smart_execute`.
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
    pub(super) async fn shared_running_vm(&self) -> CoreResult<Option<Vm>> {
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
    pub(super) fn seal_env(
        &self,
        mut payload: ExecPayload,
        env: &BTreeMap<String, String>,
    ) -> CoreResult<ExecPayload> {
        (payload.env, payload.env_sealed) = self.seal_vars(env, &env_aad(&payload.execution_id))?;
        Ok(payload)
    }

    /// The environment a queued command runs with (unsealed).
    pub fn exec_env(&self, payload: &ExecPayload) -> CoreResult<BTreeMap<String, String>> {
        self.open_vars(
            &payload.env,
            payload.env_sealed.as_ref(),
            &env_aad(&payload.execution_id),
        )
    }

    /// The environment every process of a VM being created gets (unsealed).
    pub fn vm_env(&self, payload: &CreatePayload) -> CoreResult<BTreeMap<String, String>> {
        self.open_vars(
            &payload.env,
            payload.env_sealed.as_ref(),
            &vm_env_aad(&payload.vm_id),
        )
    }

    /// `vars` as a payload keeps them: the names with redacted values plus the sealed
    /// map where a secrets key is configured, the map in clear otherwise.
    pub(super) fn seal_vars(
        &self,
        vars: &BTreeMap<String, String>,
        aad: &[u8],
    ) -> CoreResult<(BTreeMap<String, String>, Option<SealedEnv>)> {
        if vars.is_empty() {
            return Ok((BTreeMap::new(), None));
        }
        let Some(keyring) = &self.workspace_data.keyring else {
            return Ok((vars.clone(), None));
        };
        let plain = serde_json::to_vec(vars).map_err(|e| CoreError::Internal(e.into()))?;
        let sealed = keyring.encrypt(&plain, aad)?;
        let b64 = base64::engine::general_purpose::STANDARD;
        // The names stay readable; the values are only in the sealed copy.
        let names = vars
            .keys()
            .map(|name| (name.clone(), REDACTED_ENV_VALUE.to_string()))
            .collect();
        let sealed = SealedEnv {
            key_id: sealed.key_id,
            nonce: base64::Engine::encode(&b64, &sealed.nonce),
            ciphertext: base64::Engine::encode(&b64, &sealed.ciphertext),
        };
        Ok((names, Some(sealed)))
    }

    fn open_vars(
        &self,
        clear: &BTreeMap<String, String>,
        sealed: Option<&SealedEnv>,
        aad: &[u8],
    ) -> CoreResult<BTreeMap<String, String>> {
        let Some(sealed) = sealed else {
            return Ok(clear.clone());
        };
        let keyring = self.workspace_data.keyring.as_ref().ok_or_else(|| {
            CoreError::InvalidInput(
                "the environment is encrypted and this worker has no secrets key (workspaces.encryption_key)".into(),
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
        let plain = keyring.decrypt(&sealed, aad).map_err(|e| {
            CoreError::InvalidInput(format!("cannot open the sealed environment: {e}"))
        })?;
        serde_json::from_slice(&plain)
            .map_err(|e| CoreError::InvalidInput(format!("the sealed environment is corrupt: {e}")))
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

    // ---- tasks -----------------------------------------------------------------

    pub(super) fn new_execution(
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
    pub(super) async fn enforce_execution_quota(
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
}
