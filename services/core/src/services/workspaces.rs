//! Use cases for workspaces and their prompts (issue 7): what the gateway's
//! `/workspaces` routes and session WebSocket call. The work itself runs on the
//! workspace's worker (`worker::workspaces`: `workspace:create`, `prompt:execute`).
//!
//! A workspace is made in this order, so that a failure leaves nothing behind: the
//! row (`creating`: its name is taken), its secrets, its prep steps (`pending`), its
//! VM (`vm:create` on the worker placement chose), then `workspace:create` on that
//! same worker (a lower priority than the VM's create; the handler waits for the VM
//! anyway). Tool installs are not prep-step rows (those are the requested
//! `git_clone`/`script`/`env_var` steps, in order): their progress is published as
//! `workspace.step` events with `"phase": "tools"`, and a failed install fails the
//! workspace with a message naming the tool.

use std::collections::BTreeMap;

use aetherium_types::workspace::{
    DEFAULT_IDLE_TIMEOUT_SECONDS, GitCloneConfig, PrepStepType, WorkspaceStatus,
};
use aetherium_types::{
    AddSecretRequest, CreateVmRequest, CreateWorkspaceRequest, EventType, PrepStep, PrepStepRun,
    Prompt, PromptStatus, Secret, SecretScope, SecretType, SubmitPromptRequest, TaskType,
    Workspace, new_id,
};
use chrono::Utc;
use serde::{Deserialize, Serialize};

use crate::error::{CoreError, CoreResult};
use crate::services::{Platform, key_network_policy, new_task};
use crate::store::Page;

/// Payload of `workspace:create`: what the worker needs beyond the workspace row
/// (a [`PrepStepRun`] does not keep its step's config).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkspaceCreatePayload {
    pub workspace_id: String,
    pub vm_id: String,
    /// The steps to run, ordered.
    pub prep_steps: Vec<PrepStep>,
    /// Tool specs (`name` or `name@version`), in install order.
    pub tools: Vec<String>,
    /// The environment's variables (prep `env_var` steps add to them).
    pub env_vars: BTreeMap<String, String>,
}

/// Payload of `prompt:execute`: the worker takes the workspace's next pending prompt.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PromptExecutePayload {
    pub workspace_id: String,
}

/// Below the default (5) of the VM's own `vm:create`, so it usually runs after it.
const WORKSPACE_CREATE_PRIORITY: i32 = 3;

fn to_value(v: &impl Serialize) -> CoreResult<serde_json::Value> {
    serde_json::to_value(v).map_err(|e| CoreError::Internal(e.into()))
}

/// `tools` with `versions` applied (`name` → `name@version`); versions of tools not
/// in the list add them. Duplicates (by name) are dropped, the first one kept.
pub(crate) fn merge_tools(tools: &[String], versions: &BTreeMap<String, String>) -> Vec<String> {
    let name_of = |spec: &str| spec.split('@').next().unwrap_or(spec).to_string();
    let mut seen = std::collections::BTreeSet::new();
    let mut merged = Vec::new();
    for spec in tools {
        let name = name_of(spec);
        if !seen.insert(name.clone()) {
            continue;
        }
        merged.push(match versions.get(&name) {
            Some(version) => format!("{name}@{version}"),
            None => spec.clone(),
        });
    }
    for (name, version) in versions {
        if seen.insert(name.clone()) {
            merged.push(format!("{name}@{version}"));
        }
    }
    merged
}

impl Platform {
    /// Validates; resolves the environment (its image, size, tools, env vars, repo —
    /// the request's own fields win); records the workspace (`creating`), its
    /// secrets (workspace scope) and prep steps; creates its VM and queues
    /// `workspace:create` on the VM's worker.
    pub async fn create_workspace(
        &self,
        req: CreateWorkspaceRequest,
        by: Option<&aetherium_types::Principal>,
    ) -> CoreResult<Workspace> {
        req.validate().map_err(CoreError::InvalidInput)?;
        let environment = match &req.environment_id {
            Some(env) => Some(self.get_environment(env).await.map_err(|e| match e {
                CoreError::NotFound(_) => {
                    CoreError::InvalidInput(format!("environment {env:?} not found"))
                }
                e => e,
            })?),
            None => None,
        };
        if !req.secrets.is_empty() {
            // 503 saying why before anything is written.
            self.workspace_data.keyring()?;
        }
        // The prep steps: the request's, after a clone of the environment's repo
        // when it has one and the request clones nothing itself.
        let mut steps = req.ordered_prep_steps();
        if let Some(env) = &environment
            && let Some(url) = &env.git_repo_url
            && !steps.iter().any(|s| s.step_type == PrepStepType::GitClone)
        {
            if steps.first().is_some_and(|s| s.order == 0) {
                for step in &mut steps {
                    step.order += 1;
                }
            }
            let config = GitCloneConfig {
                url: url.clone(),
                branch: env.git_branch.clone(),
                directory: None,
                ssh_key_secret: None,
            };
            let serde_json::Value::Object(config) = to_value(&config)? else {
                return Err(CoreError::Internal(anyhow::anyhow!(
                    "git config is not an object"
                )));
            };
            let step = PrepStep {
                step_type: PrepStepType::GitClone,
                order: 0,
                config,
            };
            step.validate().map_err(CoreError::InvalidInput)?;
            steps.insert(0, step);
        }
        // Every ssh_key_secret names a secret of this request or a global one.
        let globals = self.list_secrets(SecretScope::Global, None).await?;
        for step in &steps {
            if let Ok(aetherium_types::workspace::PrepStepSpec::GitClone(c)) = step.spec()
                && let Some(name) = &c.ssh_key_secret
                && !req.secrets.iter().any(|s| &s.name == name)
                && !globals.iter().any(|s| &s.name == name)
            {
                return Err(CoreError::InvalidInput(format!(
                    "prep step {} (git_clone): ssh_key_secret {name:?} names no secret of this workspace and no global secret",
                    step.order
                )));
            }
        }
        let env_tools = environment
            .as_ref()
            .map(|e| e.tools.clone())
            .unwrap_or_default();
        let mut tools = env_tools;
        tools.extend(req.additional_tools.iter().cloned());
        let tools = merge_tools(&tools, &req.tool_versions);
        // An unknown tool fails now, with nothing made, not on the worker later.
        self.workspace_data.tools.check(&tools)?;
        let working_directory = match &environment {
            // The request's default leaves the environment's directory in place.
            Some(env)
                if req.working_directory
                    == aetherium_types::workspace::DEFAULT_WORKING_DIRECTORY =>
            {
                env.working_directory.clone()
            }
            _ => req.working_directory.clone(),
        };
        let now = Utc::now();
        let mut workspace = Workspace {
            id: new_id(),
            name: req.name.clone(),
            description: req.description.clone(),
            environment_id: environment.as_ref().map(|e| e.id.clone()),
            vm_id: None,
            status: WorkspaceStatus::Creating,
            status_message: None,
            ai_assistant: req.ai_assistant,
            ai_assistant_config: req.ai_assistant_config.clone(),
            working_directory,
            tools: tools.clone(),
            worker_id: None,
            idle_timeout_seconds: environment
                .as_ref()
                .map_or(DEFAULT_IDLE_TIMEOUT_SECONDS, |e| e.idle_timeout_seconds),
            last_activity_at: now,
            created_at: now,
            updated_at: now,
            ready_at: None,
        };
        let store = &self.workspace_data.workspaces;
        store.insert_workspace(&workspace).await?;
        match self
            .finish_create(&mut workspace, &req, environment.as_ref(), steps, tools, by)
            .await
        {
            Ok(()) => Ok(workspace),
            Err(e) => {
                // Nothing half-made stays behind.
                if let Some(vm_id) = &workspace.vm_id {
                    let _ = self.delete_vm(vm_id).await;
                }
                let _ = self
                    .workspace_data
                    .secrets
                    .delete_workspace_secrets(&workspace.id)
                    .await;
                let _ = store.delete_workspace(&workspace.id).await;
                Err(e)
            }
        }
    }

    async fn finish_create(
        &self,
        workspace: &mut Workspace,
        req: &CreateWorkspaceRequest,
        environment: Option<&aetherium_types::Environment>,
        steps: Vec<PrepStep>,
        tools: Vec<String>,
        by: Option<&aetherium_types::Principal>,
    ) -> CoreResult<()> {
        let store = &self.workspace_data.workspaces;
        for secret in &req.secrets {
            let secret_type: SecretType = secret
                .secret_type
                .as_str()
                .parse()
                .map_err(|e: String| CoreError::InvalidInput(e))?;
            let add = AddSecretRequest {
                name: secret.name.clone(),
                value: secret.value.clone(),
                secret_type,
                description: secret.description.clone(),
                scope: Some(SecretScope::Workspace),
            };
            self.put_secret(Some(&workspace.id), &add).await?;
        }
        let runs: Vec<PrepStepRun> = steps
            .iter()
            .map(|s| PrepStepRun::pending(&workspace.id, s))
            .collect();
        store.put_prep_steps(&workspace.id, &runs).await?;
        let vm_request: CreateVmRequest = serde_json::from_value(serde_json::json!({
            "vcpus": req.vcpus.or(environment.map(|e| e.vcpus)),
            "memory_mb": req.memory_mb.or(environment.map(|e| e.memory_mb)),
            "image": environment.and_then(|e| e.image.clone()),
            // A key whose quota fixes the policy gets its own (create_vm applies it).
            "network_policy": environment
                .and_then(|e| e.network_policy.clone())
                .filter(|_| key_network_policy(by).is_none()),
            "metadata": {"workspace_id": workspace.id, "workspace": workspace.name},
        }))
        .map_err(|e| CoreError::Internal(e.into()))?;
        let (vm, _) = self.create_vm(&vm_request, by).await?;
        workspace.vm_id = Some(vm.id.clone());
        workspace.worker_id = vm.worker_id.clone();
        workspace.updated_at = Utc::now();
        store.update_workspace(workspace).await?;
        let payload = WorkspaceCreatePayload {
            workspace_id: workspace.id.clone(),
            vm_id: vm.id.clone(),
            prep_steps: steps,
            tools,
            env_vars: environment.map(|e| e.env_vars.clone()).unwrap_or_default(),
        };
        let mut task = new_task(TaskType::WorkspaceCreate, to_value(&payload)?, Some(&vm.id));
        task.priority = WORKSPACE_CREATE_PRIORITY;
        task.target_worker_id = vm.worker_id.clone();
        self.submit(&task).await?;
        tracing::info!(workspace_id = %workspace.id, vm_id = %vm.id, "workspace creating");
        self.publish(
            EventType::WorkspaceStatus,
            &workspace.id,
            serde_json::json!({"status": WorkspaceStatus::Creating, "message": null}),
        );
        Ok(())
    }

    /// By id, else by name.
    pub async fn get_workspace(&self, id_or_name: &str) -> CoreResult<Workspace> {
        let store = &self.workspace_data.workspaces;
        if let Some(w) = store.get_workspace(id_or_name).await? {
            return Ok(w);
        }
        store
            .get_workspace_by_name(id_or_name)
            .await?
            .ok_or_else(|| CoreError::NotFound(format!("workspace {id_or_name} not found")))
    }

    pub async fn list_workspaces(&self, page: &Page) -> CoreResult<(Vec<Workspace>, u64)> {
        self.workspace_data.workspaces.list_workspaces(page).await
    }

    /// Its preparation steps, in order, with each one's status and output.
    pub async fn workspace_steps(&self, id_or_name: &str) -> CoreResult<Vec<PrepStepRun>> {
        let w = self.get_workspace(id_or_name).await?;
        self.workspace_data.workspaces.list_prep_steps(&w.id).await
    }

    /// Removes its VM (queued on its worker), secrets, steps, prompts and the row.
    pub async fn delete_workspace(&self, id_or_name: &str) -> CoreResult<()> {
        let w = self.get_workspace(id_or_name).await?;
        if let Some(vm_id) = &w.vm_id {
            match self.delete_vm(vm_id).await {
                // Gone already, or already being deleted (an idle stop).
                Ok(_) | Err(CoreError::NotFound(_)) | Err(CoreError::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
        }
        self.workspace_data
            .secrets
            .delete_workspace_secrets(&w.id)
            .await?;
        self.workspace_data
            .workspaces
            .delete_workspace(&w.id)
            .await?;
        tracing::info!(workspace_id = %w.id, "workspace deleted");
        self.publish(
            EventType::WorkspaceDeleted,
            &w.id,
            serde_json::json!({"name": w.name}),
        );
        Ok(())
    }

    /// Sets (or replaces) a secret of the workspace (or a global one, with
    /// `scope: global`).
    pub async fn put_workspace_secret(
        &self,
        id_or_name: &str,
        req: &AddSecretRequest,
    ) -> CoreResult<Secret> {
        let w = self.get_workspace(id_or_name).await?;
        self.put_secret(Some(&w.id), req).await
    }

    pub async fn list_workspace_secrets(&self, id_or_name: &str) -> CoreResult<Vec<Secret>> {
        let w = self.get_workspace(id_or_name).await?;
        self.list_secrets(SecretScope::Workspace, Some(&w.id)).await
    }

    pub async fn delete_workspace_secret(
        &self,
        id_or_name: &str,
        secret_id: &str,
    ) -> CoreResult<()> {
        let w = self.get_workspace(id_or_name).await?;
        self.delete_secret(Some(&w.id), secret_id).await
    }

    /// Queues a prompt (`pending`); a workspace that is not `ready` is a 409 saying
    /// what it is doing.
    pub async fn submit_prompt(
        &self,
        workspace: &str,
        req: &SubmitPromptRequest,
    ) -> CoreResult<Prompt> {
        req.validate().map_err(CoreError::InvalidInput)?;
        let w = self.get_workspace(workspace).await?;
        if w.status != WorkspaceStatus::Ready {
            let doing = match w.status {
                WorkspaceStatus::Creating => "is being created".to_string(),
                WorkspaceStatus::Preparing => "is preparing".to_string(),
                WorkspaceStatus::Failed => format!(
                    "has failed{}",
                    w.status_message
                        .as_deref()
                        .map(|m| format!(": {m}"))
                        .unwrap_or_default()
                ),
                WorkspaceStatus::Stopped => "is stopped".to_string(),
                WorkspaceStatus::Ready => unreachable!(),
            };
            return Err(CoreError::Conflict(format!(
                "workspace {} {doing}: prompts need a ready workspace",
                w.name
            )));
        }
        let prompt = Prompt::pending(&w.id, req, Utc::now());
        let prompts = &self.workspace_data.prompts;
        prompts.insert_prompt(&prompt).await?;
        let payload = PromptExecutePayload {
            workspace_id: w.id.clone(),
        };
        let mut task = new_task(
            TaskType::PromptExecute,
            to_value(&payload)?,
            w.vm_id.as_deref(),
        );
        task.target_worker_id = w.worker_id.clone();
        if let Err(e) = self.submit(&task).await {
            let _ = prompts
                .transition_prompt(&prompt.id, &[PromptStatus::Pending], PromptStatus::Failed)
                .await;
            return Err(e);
        }
        self.publish(EventType::PromptQueued, &w.id, to_value(&prompt)?);
        let _ = self
            .workspace_data
            .workspaces
            .touch_workspace(&w.id, Utc::now())
            .await;
        Ok(prompt)
    }

    /// Newest first.
    pub async fn list_prompts(&self, workspace: &str) -> CoreResult<Vec<Prompt>> {
        let w = self.get_workspace(workspace).await?;
        self.workspace_data.prompts.list_prompts(&w.id).await
    }

    pub async fn get_prompt(&self, workspace: &str, prompt_id: &str) -> CoreResult<Prompt> {
        let w = self.get_workspace(workspace).await?;
        match self.workspace_data.prompts.get_prompt(prompt_id).await? {
            Some(p) if p.workspace_id == w.id => Ok(p),
            _ => Err(CoreError::NotFound(format!(
                "prompt {prompt_id} not found in workspace {}",
                w.name
            ))),
        }
    }

    /// A pending prompt is cancelled at once; a running one is stopped (its
    /// process killed in the sandbox) and ends `cancelled`.
    pub async fn cancel_prompt(&self, workspace: &str, prompt_id: &str) -> CoreResult<Prompt> {
        let prompt = self.get_prompt(workspace, prompt_id).await?;
        let prompts = &self.workspace_data.prompts;
        match prompt.status {
            PromptStatus::Pending => {
                if prompts
                    .transition_prompt(
                        &prompt.id,
                        &[PromptStatus::Pending],
                        PromptStatus::Cancelled,
                    )
                    .await?
                {
                    let mut p = self.get_prompt(workspace, prompt_id).await?;
                    p.error = Some("cancelled before it ran".into());
                    p.completed_at = Some(Utc::now());
                    prompts.update_prompt(&p).await?;
                    self.publish(EventType::PromptDone, &p.workspace_id, to_value(&p)?);
                    return Ok(p);
                }
                // It started meanwhile: stop it as a running one.
                Box::pin(self.cancel_prompt(workspace, prompt_id)).await
            }
            PromptStatus::Running => {
                let Some(task_id) = &prompt.task_id else {
                    return Err(CoreError::Conflict(format!(
                        "prompt {prompt_id} is starting: try again in a moment"
                    )));
                };
                match self.cancel_task(task_id).await {
                    Ok(_) | Err(CoreError::Conflict(_)) => {}
                    Err(e) => return Err(e),
                }
                // The worker kills the process and records `cancelled`.
                self.wait_until_prompt_finished(workspace, prompt_id).await
            }
            status => Err(CoreError::Conflict(format!(
                "prompt {prompt_id} has already finished ({status})"
            ))),
        }
    }

    /// Waits (at most 5 s) for the worker to record the end of a cancelled prompt. An
    /// agent that ignores the kill is dropped after the worker's grace period (30 s);
    /// the caller is not held that long: it gets the prompt still `running`, and
    /// `prompt.done` follows.
    async fn wait_until_prompt_finished(
        &self,
        workspace: &str,
        prompt_id: &str,
    ) -> CoreResult<Prompt> {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let p = self.get_prompt(workspace, prompt_id).await?;
            if p.status.is_finished() || tokio::time::Instant::now() >= deadline {
                return Ok(p);
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tools_merge_versions_and_drop_duplicates() {
        let tools = vec!["git".to_string(), "nodejs@18".into(), "git@2".into()];
        let versions = BTreeMap::from([
            ("nodejs".to_string(), "20.11.1".to_string()),
            ("go".to_string(), "1.22.0".to_string()),
        ]);
        assert_eq!(
            merge_tools(&tools, &versions),
            vec!["git", "nodejs@20.11.1", "go@1.22.0"]
        );
    }
}
