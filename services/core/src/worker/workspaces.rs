//! The worker's side of workspaces: `workspace:create` (wait for the VM, set up the
//! agent user, directory, environment and secrets, install tools as root, run the
//! prep steps as the agent user), `prompt:execute` (one prompt at a time per
//! workspace, in priority order, its output streamed with secrets redacted), and
//! the idle check that stops workspaces nobody used for their idle timeout.

mod prompts;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use aetherium_types::agent::{DataEvent, ProcessConfig, ProcessEvent, Signal, StartRequest};
use aetherium_types::workspace::{
    MAX_PROMPT_OUTPUT_BYTES, MAX_STEP_OUTPUT_BYTES, PrepStepSpec, PrepStepStatus, SessionStream,
    cap_output,
};
use aetherium_types::{
    EventType, PrepStepRun, Prompt, PromptStatus, Task, TaskType, VmStatus, Workspace,
    WorkspaceStatus,
};
use chrono::Utc;
use futures::StreamExt as _;
use serde_json::json;
use tokio::sync::watch;

use super::{TaskError, TaskResult, Worker, parse, until_cancelled};
use crate::agent_client::{AgentClient, InitOptions};
use crate::secrets::Redactor;
use crate::services::workspaces::{PromptExecutePayload, WorkspaceCreatePayload};
use crate::services::{CANCELLED_WHILE_RUNNING, new_task};
use crate::tools::ToolProgress;

/// A script step without a timeout of its own gets this.
const DEFAULT_SCRIPT_TIMEOUT: Duration = Duration::from_secs(600);
/// A git clone gets this.
const CLONE_TIMEOUT: Duration = Duration::from_secs(600);
/// How much of a failed step's output the workspace's message keeps.
const MESSAGE_TAIL_BYTES: usize = 2000;

/// Workspaces with a prompt running in this process: one at a time each (prompt
/// tasks are targeted at the workspace's worker, so a process-local set is enough).
static RUNNING_PROMPTS: LazyLock<Mutex<HashSet<String>>> =
    LazyLock::new(|| Mutex::new(HashSet::new()));

/// Holds a workspace's slot in [`RUNNING_PROMPTS`]; frees it when dropped.
struct PromptSlot(String);

impl PromptSlot {
    fn take(workspace_id: &str) -> Option<PromptSlot> {
        let mut running = RUNNING_PROMPTS.lock().unwrap_or_else(|e| e.into_inner());
        running
            .insert(workspace_id.to_string())
            .then(|| PromptSlot(workspace_id.to_string()))
    }
}

impl Drop for PromptSlot {
    fn drop(&mut self) {
        RUNNING_PROMPTS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.0);
    }
}

/// How a process run ended short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stopped {
    TimedOut,
    Cancelled,
}

/// What [`run_process`] collected.
#[derive(Debug, Default)]
struct Ran {
    exit_code: Option<i32>,
    /// stdout and stderr as they arrived, capped.
    combined: Vec<u8>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    stopped: Option<Stopped>,
}

fn push_capped(buf: &mut Vec<u8>, bytes: &[u8], cap: usize) {
    let room = cap.saturating_sub(buf.len());
    buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
}

/// Runs a process to its end (or its deadline, or a cancellation: then its process
/// group is killed), handing every output chunk to `on_chunk`.
async fn run_process(
    agent: &AgentClient,
    request: &StartRequest,
    cap: usize,
    timeout: Duration,
    cancel: Option<watch::Receiver<bool>>,
    on_chunk: &mut (dyn FnMut(SessionStream, &[u8]) + Send),
) -> Result<Ran, String> {
    let mut stream = agent
        .start(request)
        .await
        .map_err(|e| format!("cannot start {}: {e}", request.process.cmd))?;
    let pid = stream.pid();
    let mut ran = Ran::default();
    let deadline = tokio::time::Instant::now() + timeout;
    let cancelled = async {
        match cancel {
            Some(c) => until_cancelled(c).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(cancelled);
    loop {
        let next = tokio::select! {
            next = stream.next() => next,
            _ = &mut cancelled => {
                let _ = agent.send_signal(pid, Signal::Sigkill).await;
                ran.stopped = Some(Stopped::Cancelled);
                return Ok(ran);
            }
            _ = tokio::time::sleep_until(deadline) => {
                let _ = agent.send_signal(pid, Signal::Sigkill).await;
                ran.stopped = Some(Stopped::TimedOut);
                return Ok(ran);
            }
        };
        match next {
            Some(Ok(ProcessEvent::Data(data))) => {
                let (which, bytes) = match data {
                    DataEvent::Stdout(b) | DataEvent::Pty(b) => (SessionStream::Stdout, b.0),
                    DataEvent::Stderr(b) => (SessionStream::Stderr, b.0),
                };
                push_capped(&mut ran.combined, &bytes, cap);
                let buf = match which {
                    SessionStream::Stdout => &mut ran.stdout,
                    SessionStream::Stderr => &mut ran.stderr,
                };
                push_capped(buf, &bytes, cap);
                on_chunk(which, &bytes);
            }
            Some(Ok(ProcessEvent::End(end))) => {
                ran.exit_code = Some(end.shell_exit_code());
                return Ok(ran);
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("lost the process: {e}")),
            None => return Err("the agent ended the stream without an end event".into()),
        }
    }
}

fn bash(
    script: &str,
    args: &[&str],
    cwd: Option<&str>,
    env: BTreeMap<String, String>,
) -> StartRequest {
    let mut all = vec!["-c".to_string(), script.to_string(), "bash".to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    StartRequest {
        process: ProcessConfig {
            cmd: "/bin/bash".into(),
            args: all,
            envs: env,
            cwd: cwd.map(str::to_string),
        },
        pty: None,
        tag: None,
        stdin: Some(false),
    }
}

/// The end of `text`, at most `max` bytes (on a character boundary).
pub(super) fn tail(text: &str, max: usize) -> &str {
    let text = text.trim_end();
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

fn upload_body(
    data: Vec<u8>,
) -> impl futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send + 'static {
    futures::stream::once(async move { Ok(bytes::Bytes::from(data)) })
}

const USER_SETUP: &str = r#"set -e
u="$1"; wd="$2"
id -u "$u" >/dev/null 2>&1 || useradd -m -s /bin/bash "$u"
mkdir -p "$wd"
chown "$u": "$wd"
"#;

const GIT_CLONE: &str = r#"set -e
url="$1"; dest="$2"; branch="$3"; key="$4"
if [ -n "$key" ]; then
  trap 'rm -f "$key"' EXIT
  chmod 600 "$key"
  export GIT_SSH_COMMAND="ssh -i $key -o StrictHostKeyChecking=accept-new -o BatchMode=yes"
fi
export GIT_TERMINAL_PROMPT=0
mkdir -p "$(dirname "$dest")"
if [ -n "$branch" ]; then
  git clone --branch "$branch" -- "$url" "$dest"
else
  git clone -- "$url" "$dest"
fi
"#;

/// Why a preparation stopped: the workspace's failure message.
struct PrepFailure(String);

impl Worker {
    fn agent_user(&self) -> &str {
        &self.settings.workspaces.agent_user
    }

    async fn set_workspace_status(
        &self,
        workspace_id: &str,
        from: &[WorkspaceStatus],
        to: WorkspaceStatus,
        message: Option<&str>,
    ) -> bool {
        let changed = self
            .platform
            .workspace_data
            .workspaces
            .transition_workspace(workspace_id, from, to, message)
            .await
            .unwrap_or(false);
        if changed {
            tracing::info!(%workspace_id, status = %to.as_str(), "workspace status");
            self.platform.publish(
                EventType::WorkspaceStatus,
                workspace_id,
                json!({"status": to, "message": message}),
            );
        }
        changed
    }

    // ---- workspace:create ----------------------------------------------------------

    pub(super) async fn handle_workspace_create(
        &self,
        payload: WorkspaceCreatePayload,
        cancel: watch::Receiver<bool>,
    ) -> TaskResult {
        let store = &self.platform.workspace_data.workspaces;
        let Some(workspace) = store.get_workspace(&payload.workspace_id).await? else {
            return Ok(json!({"workspace_id": payload.workspace_id, "skipped": "deleted"}));
        };
        match workspace.status {
            WorkspaceStatus::Creating => {}
            WorkspaceStatus::Preparing => {
                // An earlier attempt died mid-way: its steps may have had effects.
                let message = "the worker stopped while the workspace was being prepared; delete it and create it again";
                self.set_workspace_status(
                    &workspace.id,
                    &[WorkspaceStatus::Preparing],
                    WorkspaceStatus::Failed,
                    Some(message),
                )
                .await;
                return Ok(json!({"workspace_id": workspace.id, "status": "failed"}));
            }
            status => return Ok(json!({"workspace_id": workspace.id, "status": status})),
        }
        // The VM: its own vm:create runs on this worker too.
        let vm_timeout = TaskType::VmCreate.policy().timeout;
        let vm = tokio::select! {
            vm = self.platform.wait_vm_settled(&payload.vm_id, vm_timeout) => vm?,
            _ = until_cancelled(cancel.clone()) => return Err(TaskError::permanent(CANCELLED_WHILE_RUNNING)),
        };
        let vm_problem = match &vm {
            None => Some("its VM was deleted".to_string()),
            Some(vm) if vm.status == VmStatus::Running => None,
            Some(vm) => Some(format!(
                "its VM is {}{}",
                vm.status,
                vm.error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            )),
        };
        if let Some(problem) = vm_problem {
            self.set_workspace_status(
                &workspace.id,
                &[WorkspaceStatus::Creating],
                WorkspaceStatus::Failed,
                Some(&format!("workspace could not start: {problem}")),
            )
            .await;
            return Ok(json!({"workspace_id": workspace.id, "status": "failed"}));
        }
        if !self
            .set_workspace_status(
                &workspace.id,
                &[WorkspaceStatus::Creating],
                WorkspaceStatus::Preparing,
                None,
            )
            .await
        {
            return Ok(json!({"workspace_id": workspace.id, "skipped": "not creating"}));
        }
        let secrets = match self.platform.injected_secrets(&workspace.id).await {
            Ok(s) => s,
            Err(e) => {
                self.fail_preparation(&workspace, &e).await;
                return Ok(json!({"workspace_id": workspace.id, "status": "failed"}));
            }
        };
        let redactor = Redactor::new(secrets.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let outcome = self
            .prepare(&workspace, &payload, &secrets, &redactor, cancel)
            .await;
        match outcome {
            Ok(()) => {
                self.set_workspace_status(
                    &workspace.id,
                    &[WorkspaceStatus::Preparing],
                    WorkspaceStatus::Ready,
                    None,
                )
                .await;
                Ok(json!({"workspace_id": workspace.id, "status": "ready"}))
            }
            Err(PrepFailure(message)) => {
                let message = redactor.redact_str(&message);
                self.fail_preparation(&workspace, &message).await;
                Ok(json!({"workspace_id": workspace.id, "status": "failed"}))
            }
        }
    }

    /// The workspace ends `failed` with `message`; steps that did not run are `skipped`.
    async fn fail_preparation(&self, workspace: &Workspace, message: &str) {
        let store = &self.platform.workspace_data.workspaces;
        if let Ok(runs) = store.list_prep_steps(&workspace.id).await {
            for mut run in runs {
                if matches!(
                    run.status,
                    PrepStepStatus::Pending | PrepStepStatus::Running
                ) {
                    run.status = PrepStepStatus::Skipped;
                    let _ = store.update_prep_step(&run).await;
                }
            }
        }
        self.set_workspace_status(
            &workspace.id,
            &[WorkspaceStatus::Creating, WorkspaceStatus::Preparing],
            WorkspaceStatus::Failed,
            Some(message),
        )
        .await;
    }

    async fn prepare(
        &self,
        workspace: &Workspace,
        payload: &WorkspaceCreatePayload,
        secrets: &BTreeMap<String, String>,
        redactor: &Redactor,
        cancel: watch::Receiver<bool>,
    ) -> Result<(), PrepFailure> {
        let root = self.backend.agent(&payload.vm_id);
        let user = self.agent_user().to_string();
        let as_user = root.clone().with_user(user.clone());
        let wd = workspace.working_directory.clone();
        // The agent user and the working directory.
        let ran = run_process(
            &root,
            &bash(USER_SETUP, &[&user, &wd], Some("/"), BTreeMap::new()),
            64 * 1024,
            Duration::from_secs(120),
            Some(cancel.clone()),
            &mut |_, _| {},
        )
        .await
        .map_err(|e| PrepFailure(format!("setting up user {user}: {e}")))?;
        if ran.exit_code != Some(0) {
            return Err(PrepFailure(format!(
                "cannot create user {user} and directory {wd}: {}",
                tail(&String::from_utf8_lossy(&ran.combined), MESSAGE_TAIL_BYTES)
            )));
        }
        // Environment and secrets, for every process from now on.
        let mut env = payload.env_vars.clone();
        let init = |env: BTreeMap<String, String>| InitOptions {
            env_vars: env,
            default_workdir: Some(wd.clone()),
            ..InitOptions::default()
        };
        root.init(&init(env.clone()))
            .await
            .map_err(|e| PrepFailure(format!("cannot initialise the agent: {e}")))?;
        if !secrets.is_empty() {
            root.set_secrets(secrets)
                .await
                .map_err(|e| PrepFailure(format!("cannot inject the secrets: {e}")))?;
        }
        // Tools, as root.
        if !payload.tools.is_empty() {
            self.install_tools(workspace, &root, &payload.tools, redactor, cancel.clone())
                .await?;
        }
        // The prep steps, in order, as the agent user.
        let store = &self.platform.workspace_data.workspaces;
        for step in &payload.prep_steps {
            if *cancel.borrow() {
                return Err(PrepFailure("cancelled".into()));
            }
            let mut run = PrepStepRun::pending(&workspace.id, step);
            run.status = PrepStepStatus::Running;
            run.started_at = Some(Utc::now());
            let _ = store.update_prep_step(&run).await;
            self.publish_step(&run);
            let what = format!("prep step {} ({})", step.order, step.step_type);
            let result = match step.spec() {
                Err(e) => Err((None, String::new(), e)),
                Ok(spec) => {
                    self.run_step(&spec, &root, &as_user, &wd, secrets, &mut env, &cancel)
                        .await
                }
            };
            run.completed_at = Some(Utc::now());
            match result {
                Ok((exit_code, output)) => {
                    run.status = PrepStepStatus::Completed;
                    run.exit_code = exit_code;
                    run.output = cap_output(&redactor.redact_str(&output), MAX_STEP_OUTPUT_BYTES);
                    let _ = store.update_prep_step(&run).await;
                    self.publish_step(&run);
                    // env_var: later processes see the new variable.
                    if step.step_type == aetherium_types::workspace::PrepStepType::EnvVar {
                        root.init(&init(env.clone())).await.map_err(|e| {
                            PrepFailure(format!(
                                "{what}: cannot update the agent's environment: {e}"
                            ))
                        })?;
                    }
                }
                Err((exit_code, output, error)) => {
                    let output = redactor.redact_str(&output);
                    let error = redactor.redact_str(&error);
                    run.status = PrepStepStatus::Failed;
                    run.exit_code = exit_code;
                    run.output = cap_output(&output, MAX_STEP_OUTPUT_BYTES);
                    run.error = Some(error.clone());
                    let _ = store.update_prep_step(&run).await;
                    self.publish_step(&run);
                    let out_tail = tail(&output, MESSAGE_TAIL_BYTES);
                    return Err(PrepFailure(if out_tail.is_empty() {
                        format!("{what} failed: {error}")
                    } else {
                        format!("{what} failed: {error}: {out_tail}")
                    }));
                }
            }
        }
        Ok(())
    }

    fn publish_step(&self, run: &PrepStepRun) {
        self.platform.publish(
            EventType::WorkspaceStep,
            &run.workspace_id,
            serde_json::to_value(run).unwrap_or_default(),
        );
    }

    /// One step: `Ok((exit code, output))`, or `Err((exit code, output, error))`.
    #[allow(clippy::too_many_arguments)]
    async fn run_step(
        &self,
        spec: &PrepStepSpec,
        root: &AgentClient,
        as_user: &AgentClient,
        wd: &str,
        secrets: &BTreeMap<String, String>,
        env: &mut BTreeMap<String, String>,
        cancel: &watch::Receiver<bool>,
    ) -> Result<(Option<i32>, String), (Option<i32>, String, String)> {
        let _ = root;
        let (request, timeout, key_file) = match spec {
            PrepStepSpec::EnvVar(c) => {
                env.insert(c.name.clone(), c.value.clone());
                return Ok((None, format!("{} set\n", c.name)));
            }
            PrepStepSpec::Script(c) => (
                bash(&c.script, &[], Some(wd), BTreeMap::new()),
                c.timeout_seconds
                    .map_or(DEFAULT_SCRIPT_TIMEOUT, Duration::from_secs),
                None,
            ),
            PrepStepSpec::GitClone(c) => {
                let dest = match &c.directory {
                    Some(d) if d.starts_with('/') => d.clone(),
                    Some(d) => format!("{}/{d}", wd.trim_end_matches('/')),
                    None => wd.to_string(),
                };
                let key_file = match &c.ssh_key_secret {
                    Some(name) => {
                        let Some(key) = secrets.get(name) else {
                            return Err((
                                None,
                                String::new(),
                                format!(
                                    "ssh_key_secret {name:?} is not a secret of this workspace"
                                ),
                            ));
                        };
                        let path = format!("/tmp/aetherium-key-{}", aetherium_types::new_id());
                        let mut key = key.clone().into_bytes();
                        if !key.ends_with(b"\n") {
                            key.push(b'\n');
                        }
                        as_user.upload(&path, upload_body(key)).await.map_err(|e| {
                            (
                                None,
                                String::new(),
                                format!("cannot write the ssh key: {e}"),
                            )
                        })?;
                        Some(path)
                    }
                    None => None,
                };
                let args = [
                    c.url.as_str(),
                    dest.as_str(),
                    c.branch.as_deref().unwrap_or(""),
                    key_file.as_deref().unwrap_or(""),
                ];
                (
                    bash(GIT_CLONE, &args, Some("/"), BTreeMap::new()),
                    CLONE_TIMEOUT,
                    key_file,
                )
            }
        };
        let ran = run_process(
            as_user,
            &request,
            MAX_STEP_OUTPUT_BYTES,
            timeout,
            Some(cancel.clone()),
            &mut |_, _| {},
        )
        .await;
        if let Some(path) = key_file {
            // The script removes it; this is for a run that was killed.
            let _ = as_user.remove(&path).await;
        }
        let ran = ran.map_err(|e| (None, String::new(), e))?;
        let output = String::from_utf8_lossy(&ran.combined).into_owned();
        match (ran.stopped, ran.exit_code) {
            (Some(Stopped::TimedOut), _) => Err((
                None,
                output,
                format!("killed after its {}s timeout", timeout.as_secs()),
            )),
            (Some(Stopped::Cancelled), _) => Err((None, output, "cancelled".into())),
            (None, Some(0)) => Ok((Some(0), output)),
            (None, code) => Err((
                code,
                output,
                format!("exit code {}", code.map_or("?".into(), |c| c.to_string())),
            )),
        }
    }

    async fn install_tools(
        &self,
        workspace: &Workspace,
        root: &AgentClient,
        tools: &[String],
        redactor: &Redactor,
        cancel: watch::Receiver<bool>,
    ) -> Result<(), PrepFailure> {
        let plan = self
            .tool_plan(tools)
            .map_err(|e| PrepFailure(format!("tools: {e}")))?;
        let platform = self.platform.clone();
        let workspace_id = workspace.id.clone();
        let progress = move |p: ToolProgress| {
            let data = match p {
                ToolProgress::Started { tool, version } => {
                    json!({"phase": "tools", "tool": tool, "version": version, "status": "running"})
                }
                ToolProgress::Skipped {
                    tool,
                    version,
                    elapsed,
                } => {
                    json!({"phase": "tools", "tool": tool, "version": version, "status": "skipped", "elapsed_ms": elapsed.as_millis() as u64})
                }
                ToolProgress::Installed {
                    tool,
                    version,
                    elapsed,
                } => {
                    json!({"phase": "tools", "tool": tool, "version": version, "status": "completed", "elapsed_ms": elapsed.as_millis() as u64})
                }
                ToolProgress::Failed {
                    tool,
                    version,
                    elapsed,
                    error,
                } => {
                    json!({"phase": "tools", "tool": tool, "version": version, "status": "failed", "elapsed_ms": elapsed.as_millis() as u64, "error": redactor.redact_str(&error)})
                }
            };
            platform.publish(EventType::WorkspaceStep, &workspace_id, data);
        };
        tokio::select! {
            result = crate::tools::install(root, &plan, &progress) => {
                result.map_err(|e| PrepFailure(format!("tools: {e}")))?;
            }
            _ = until_cancelled(cancel) => return Err(PrepFailure("cancelled".into())),
        }
        Ok(())
    }

    /// `workspace:create` failed for good or was cancelled: the workspace says so.
    pub(super) async fn workspace_create_ended(&self, task: &Task, error: &str) {
        if let Ok(payload) = parse::<WorkspaceCreatePayload>(&task.payload)
            && let Ok(Some(workspace)) = self
                .platform
                .workspace_data
                .workspaces
                .get_workspace(&payload.workspace_id)
                .await
        {
            self.fail_preparation(
                &workspace,
                &format!("workspace preparation stopped: {error}"),
            )
            .await;
        }
    }

    // ---- idle check ------------------------------------------------------------------

    /// Every `idle_check_interval_seconds`: this worker's ready workspaces idle for
    /// their timeout are stopped and their VMs deleted.
    pub(super) async fn workspace_idle_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let every =
            Duration::from_secs(self.settings.workspaces.idle_check_interval_seconds.max(1));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => return,
            }
            if let Err(e) = self.stop_idle_workspaces().await {
                tracing::warn!(error = %e, "idle workspace check failed");
            }
        }
    }

    async fn stop_idle_workspaces(&self) -> crate::error::CoreResult<()> {
        let data = &self.platform.workspace_data;
        for w in data.workspaces.idle_workspaces(Utc::now()).await? {
            if w.worker_id.as_deref() != Some(self.settings.id.as_str())
                || data.prompts.has_running_prompt(&w.id).await?
            {
                continue;
            }
            let message = format!("stopped after {} s idle", w.idle_timeout_seconds);
            if self
                .set_workspace_status(
                    &w.id,
                    &[WorkspaceStatus::Ready],
                    WorkspaceStatus::Stopped,
                    Some(&message),
                )
                .await
                && let Some(vm_id) = &w.vm_id
            {
                match self.platform.delete_vm(vm_id).await {
                    Ok(_) | Err(crate::error::CoreError::NotFound(_)) => {}
                    Err(e) => {
                        tracing::warn!(workspace_id = %w.id, %vm_id, error = %e, "cannot delete an idle workspace's VM")
                    }
                }
            }
        }
        Ok(())
    }
}
