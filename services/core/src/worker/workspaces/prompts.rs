//! `prompt:execute`: one prompt to a workspace's AI assistant, one at a time per
//! workspace, its output streamed to the prompt's record.

use super::*;

impl Worker {
    // ---- prompt:execute ------------------------------------------------------------

    pub(crate) async fn handle_prompt_execute(
        &self,
        task: &Task,
        payload: PromptExecutePayload,
        cancel: watch::Receiver<bool>,
    ) -> TaskResult {
        let data = &self.platform.workspace_data;
        let Some(workspace) = data.workspaces.get_workspace(&payload.workspace_id).await? else {
            return Ok(json!({"skipped": "workspace deleted"}));
        };
        // An earlier attempt of this task died mid-prompt: never run it twice.
        for mut p in data.prompts.list_prompts(&workspace.id).await? {
            if p.status == PromptStatus::Running && p.task_id.as_deref() == Some(&task.id) {
                p.status = PromptStatus::Failed;
                p.error =
                    Some("the worker stopped while the prompt ran; it was not run again".into());
                p.completed_at = Some(Utc::now());
                data.prompts.update_prompt(&p).await?;
                self.publish_prompt_done(&p);
            }
        }
        if workspace.status != WorkspaceStatus::Ready {
            let message = format!(
                "workspace {} is {}",
                workspace.name,
                workspace.status.as_str()
            );
            while let Some(mut p) = data.prompts.next_prompt(&workspace.id).await? {
                if data
                    .prompts
                    .transition_prompt(&p.id, &[PromptStatus::Pending], PromptStatus::Failed)
                    .await?
                {
                    p.status = PromptStatus::Failed;
                    p.error = Some(message.clone());
                    p.completed_at = Some(Utc::now());
                    data.prompts.update_prompt(&p).await?;
                    self.publish_prompt_done(&p);
                }
            }
            return Ok(json!({"skipped": message}));
        }
        let Some(slot) = PromptSlot::take(&workspace.id) else {
            // The running one queues the next when it ends.
            return Ok(json!({"skipped": "another prompt is running"}));
        };
        if data.prompts.has_running_prompt(&workspace.id).await? {
            return Ok(json!({"skipped": "another prompt is running"}));
        }
        let mut prompt = loop {
            let Some(p) = data.prompts.next_prompt(&workspace.id).await? else {
                return Ok(json!({"skipped": "no pending prompt"}));
            };
            if data
                .prompts
                .transition_prompt(&p.id, &[PromptStatus::Pending], PromptStatus::Running)
                .await?
            {
                break p;
            }
        };
        prompt.status = PromptStatus::Running;
        prompt.started_at = Some(Utc::now());
        prompt.task_id = Some(task.id.clone());
        data.prompts.update_prompt(&prompt).await?;
        let _ = data
            .workspaces
            .touch_workspace(&workspace.id, Utc::now())
            .await;
        self.platform.publish(
            EventType::PromptStarted,
            &workspace.id,
            serde_json::to_value(&prompt).unwrap_or_default(),
        );
        tracing::info!(workspace_id = %workspace.id, prompt_id = %prompt.id, "prompt started");
        let deadline = Duration::from_secs(task.timeout_seconds.saturating_sub(30).max(30));
        let cancelled = self
            .run_prompt(&workspace, &mut prompt, deadline, cancel)
            .await;
        data.prompts.update_prompt(&prompt).await?;
        let _ = data
            .workspaces
            .touch_workspace(&workspace.id, Utc::now())
            .await;
        tracing::info!(workspace_id = %workspace.id, prompt_id = %prompt.id, status = %prompt.status.as_str(), "prompt finished");
        self.publish_prompt_done(&prompt);
        drop(slot);
        // The next one, if any.
        if let Ok(Some(_)) = data.prompts.next_prompt(&workspace.id).await {
            let mut next = new_task(
                TaskType::PromptExecute,
                serde_json::to_value(&payload).unwrap_or_default(),
                workspace.vm_id.as_deref(),
            );
            next.target_worker_id = Some(self.settings.id.clone());
            if let Err(e) = self.platform.submit(&next).await {
                tracing::error!(workspace_id = %workspace.id, error = %e, "cannot queue the next prompt");
            }
        }
        if cancelled {
            return Err(TaskError::permanent(CANCELLED_WHILE_RUNNING));
        }
        Ok(json!({"prompt_id": prompt.id, "status": prompt.status, "exit_code": prompt.exit_code}))
    }

    pub(crate) fn publish_prompt_done(&self, prompt: &Prompt) {
        self.platform.publish(
            EventType::PromptDone,
            &prompt.workspace_id,
            serde_json::to_value(prompt).unwrap_or_default(),
        );
    }

    /// Runs the prompt and records its end in `prompt`; returns whether it was
    /// cancelled.
    pub(crate) async fn run_prompt(
        &self,
        workspace: &Workspace,
        prompt: &mut Prompt,
        timeout: Duration,
        cancel: watch::Receiver<bool>,
    ) -> bool {
        let fail = |prompt: &mut Prompt, error: String| {
            prompt.status = PromptStatus::Failed;
            prompt.error = Some(error);
            prompt.completed_at = Some(Utc::now());
        };
        let Some(vm_id) = workspace.vm_id.as_deref() else {
            fail(prompt, "the workspace has no VM".into());
            return false;
        };
        let secrets = match self.platform.injected_secrets(&workspace.id).await {
            Ok(s) => s,
            Err(e) => {
                fail(prompt, e);
                return false;
            }
        };
        let redactor = Redactor::new(secrets.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let assistant = workspace.ai_assistant.as_str();
        let Some(command) = self.settings.workspaces.agent_commands.get(assistant) else {
            fail(
                prompt,
                format!(
                    "no agent command is configured for {assistant} (workspaces.agent_commands)"
                ),
            );
            return false;
        };
        let user = self.agent_user().to_string();
        let agent = self.backend.agent(vm_id).with_user(user);
        let file = format!("/tmp/aetherium-prompt-{}", prompt.id);
        let text = match &prompt.system_prompt {
            Some(system) => format!("{system}\n\n{}", prompt.prompt),
            None => prompt.prompt.clone(),
        };
        if let Err(e) = agent.upload(&file, upload_body(text.into_bytes())).await {
            fail(prompt, format!("cannot write the prompt file: {e}"));
            return false;
        }
        let script = format!(
            "chmod 600 {file}\n{}",
            command.replace("{prompt_file}", &file)
        );
        let cwd = prompt
            .working_directory
            .clone()
            .unwrap_or_else(|| workspace.working_directory.clone());
        let request = bash(&script, &[], Some(&cwd), prompt.environment.clone());
        let (mut out_r, mut err_r) = (redactor.stream(), redactor.stream());
        let platform = self.platform.clone();
        let (workspace_id, prompt_id) = (workspace.id.clone(), prompt.id.clone());
        let publish = move |stream: SessionStream, bytes: &[u8]| {
            if bytes.is_empty() {
                return;
            }
            platform.publish(
                EventType::PromptOutput,
                &workspace_id,
                json!({"prompt_id": prompt_id, "stream": stream, "data": String::from_utf8_lossy(bytes)}),
            );
        };
        let mut on_chunk = |stream: SessionStream, bytes: &[u8]| {
            let redacted = match stream {
                SessionStream::Stdout => out_r.push(bytes),
                SessionStream::Stderr => err_r.push(bytes),
            };
            publish(stream, &redacted);
        };
        let ran = run_process(
            &agent,
            &request,
            MAX_PROMPT_OUTPUT_BYTES,
            timeout,
            Some(cancel),
            &mut on_chunk,
        )
        .await;
        publish(SessionStream::Stdout, &out_r.finish());
        publish(SessionStream::Stderr, &err_r.finish());
        let _ = agent.remove(&file).await;
        prompt.completed_at = Some(Utc::now());
        let ran = match ran {
            Ok(ran) => ran,
            Err(e) => {
                fail(prompt, e);
                return false;
            }
        };
        prompt.output = cap_output(
            &redactor.redact_str(&String::from_utf8_lossy(&ran.stdout)),
            MAX_PROMPT_OUTPUT_BYTES,
        );
        prompt.exit_code = ran.exit_code;
        let stderr = redactor.redact_str(&String::from_utf8_lossy(&ran.stderr));
        match (ran.stopped, ran.exit_code) {
            (Some(Stopped::Cancelled), _) => {
                prompt.status = PromptStatus::Cancelled;
                prompt.error = Some("cancelled by request: the agent was killed".into());
                return true;
            }
            (Some(Stopped::TimedOut), _) => {
                prompt.status = PromptStatus::Failed;
                prompt.error = Some(format!("killed after {}s", timeout.as_secs()));
            }
            (None, Some(0)) => prompt.status = PromptStatus::Completed,
            (None, code) => {
                prompt.status = PromptStatus::Failed;
                let code = code.map_or("?".into(), |c| c.to_string());
                let t = tail(&stderr, MESSAGE_TAIL_BYTES);
                prompt.error = Some(if t.is_empty() {
                    format!("the agent exited with code {code}")
                } else {
                    format!("the agent exited with code {code}: {t}")
                });
            }
        }
        false
    }

    /// `prompt:execute` was cancelled or failed for good: a prompt it left running
    /// ends so.
    pub(crate) async fn prompt_task_ended(&self, task: &Task, status: PromptStatus, error: &str) {
        let Ok(payload) = parse::<PromptExecutePayload>(&task.payload) else {
            return;
        };
        let prompts = &self.platform.workspace_data.prompts;
        let Ok(list) = prompts.list_prompts(&payload.workspace_id).await else {
            return;
        };
        for mut p in list {
            if p.status == PromptStatus::Running && p.task_id.as_deref() == Some(&task.id) {
                p.status = status;
                p.error = Some(error.to_string());
                p.completed_at = Some(Utc::now());
                if prompts.update_prompt(&p).await.is_ok() {
                    self.publish_prompt_done(&p);
                }
            }
        }
    }
}
