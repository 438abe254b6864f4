//! Workspaces end to end on an embedded platform: the real Docker engine, the real
//! agent, real git, and a stand-in agent CLI (`aetherium_testkit::standin`) in place
//! of claude/amp. A file server on the docker0 address serves a bare git repository
//! (git's dumb HTTP protocol) and a tool tarball; sandboxes reach it there.
//!
//! Needs the Docker engine, the base image and the agent (`make agent`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use aetherium_common::Config;
use aetherium_core::error::CoreError;
use aetherium_core::runtime::EmbeddedRuntime;
use aetherium_core::services::Platform;
use aetherium_testkit::tools::{tool_recipe, tool_tarball};
use aetherium_testkit::{agent_bin, standin_agent_image};
use aetherium_types::agent::{ProcessConfig, StartRequest};
use aetherium_types::workspace::{PrepStepStatus, WorkspaceSecretInput, WorkspaceSecretType};
use aetherium_types::{
    CreateEnvironmentRequest, CreateWorkspaceRequest, EventFilter, PrepStep, Prompt, PromptStatus,
    SubmitPromptRequest, Workspace, WorkspaceStatus,
};
use serde_json::json;

const SECRET: &str = "s3cr3t-Zq8xv1Wm-standin";

// ---------------------------------------------------------------------------------
// Fixtures.

/// Serves a directory over HTTP on the docker0 address.
fn file_server(root: PathBuf) -> SocketAddr {
    aetherium_testkit::FileServer::start(root, aetherium_testkit::docker_gateway()).addr()
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `<root>/repo.git`: a bare repository with one commit (README.md), ready for
/// git's dumb HTTP protocol.
fn git_repo(root: &Path) {
    let work = root.join("work");
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    std::fs::write(work.join("README.md"), "# fixture repo\n").unwrap();
    git(&work, &["add", "README.md"]);
    git(
        &work,
        &[
            "-c",
            "user.name=test",
            "-c",
            "user.email=test@example.com",
            "commit",
            "-q",
            "-m",
            "first",
        ],
    );
    let bare = root.join("repo.git");
    let out = Command::new("git")
        .args(["clone", "-q", "--bare"])
        .arg(&work)
        .arg(&bare)
        .output()
        .unwrap();
    assert!(out.status.success());
    git(&bare, &["update-server-info"]);
}

/// An embedded platform (its own data dir and worker) whose sandboxes run the
/// stand-in image, plus the fixture server.
struct Env {
    runtime: Option<EmbeddedRuntime>,
    config: Config,
    platform: Platform,
    data_dir: tempfile::TempDir,
    _fixtures: tempfile::TempDir,
    repo_url: String,
    vm_ids: Vec<String>,
}

impl Env {
    async fn start(label: &str) -> Env {
        let fixtures = tempfile::tempdir().unwrap();
        let served = fixtures.path().join("served");
        std::fs::create_dir_all(&served).unwrap();
        git_repo(&served);
        tool_tarball(&served, "hello", "1.0.0");
        let catalog = fixtures.path().join("catalog");
        std::fs::create_dir_all(&catalog).unwrap();
        std::fs::write(catalog.join("hello.toml"), tool_recipe("hello", &[])).unwrap();
        let addr = file_server(served);

        let data_dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            data_dir: data_dir.path().to_path_buf(),
            ..Config::default()
        };
        config.worker.id = format!("ws-{label}-{}-{}", std::process::id(), &uuid_like()[..8]);
        config.worker.heartbeat_interval_seconds = 1;
        config.vmm.agent_path = Some(agent_bin());
        config.vmm.docker.default_image = standin_agent_image();
        config.vmm.backends = vec!["docker".into()];
        config.queue.retry_base_seconds = 1;
        config.workspaces.tool_catalog_dir = Some(catalog);
        config.workspaces.tool_mirrors =
            BTreeMap::from([("fixture".to_string(), format!("http://{addr}"))]);
        config.workspaces.idle_check_interval_seconds = 1;
        // The fixture server listens on the host: open it to the isolated sandboxes.
        config.vmm.docker.egress_allow = vec![format!("{}/32", addr.ip())];
        let runtime = EmbeddedRuntime::start(&config).await.unwrap();
        let platform = runtime.platform.clone();
        Env {
            runtime: Some(runtime),
            config,
            platform,
            data_dir,
            _fixtures: fixtures,
            repo_url: format!("http://{addr}/repo.git"),
            vm_ids: Vec::new(),
        }
    }

    async fn create(&mut self, req: CreateWorkspaceRequest) -> Workspace {
        let w = self.platform.create_workspace(req, None).await.unwrap();
        self.vm_ids.extend(w.vm_id.clone());
        w
    }

    /// Waits until the workspace leaves creating/preparing.
    async fn settled(&self, id: &str) -> Workspace {
        for _ in 0..600 {
            let w = self.platform.get_workspace(id).await.unwrap();
            if !matches!(
                w.status,
                WorkspaceStatus::Creating | WorkspaceStatus::Preparing
            ) {
                return w;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("workspace {id} did not settle");
    }

    async fn prompt_finished(&self, ws: &str, id: &str) -> Prompt {
        for _ in 0..600 {
            let p = self.platform.get_prompt(ws, id).await.unwrap();
            if p.status.is_finished() {
                return p;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("prompt {id} did not finish");
    }

    async fn prompt_status(&self, ws: &str, id: &str, status: PromptStatus) {
        for _ in 0..300 {
            if self.platform.get_prompt(ws, id).await.unwrap().status == status {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("prompt {id} never became {status}");
    }

    /// Runs a shell command in the workspace's sandbox (as root).
    async fn sh(&self, w: &Workspace, script: &str) -> String {
        let (_, agent) = self
            .platform
            .open_sandbox(w.vm_id.as_deref().unwrap())
            .await
            .unwrap();
        let out = agent
            .run(
                &StartRequest {
                    process: ProcessConfig {
                        cmd: "/bin/bash".into(),
                        args: vec!["-c".into(), script.into()],
                        envs: BTreeMap::new(),
                        cwd: None,
                    },
                    pty: None,
                    tag: None,
                    stdin: Some(false),
                },
                1 << 20,
            )
            .await
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Every event the platform published, as JSON text.
    async fn all_events(&self) -> String {
        let events = self
            .platform
            .events
            .read_events(0, &EventFilter::default(), 100_000)
            .await
            .unwrap();
        serde_json::to_string(&events).unwrap()
    }

    /// Nothing the test made shows the secret: events, prompts, steps, the whole
    /// data directory (database, WAL, logs).
    async fn assert_secret_nowhere(&self, workspaces: &[&Workspace]) {
        assert!(
            !self.all_events().await.contains(SECRET),
            "secret in events"
        );
        for w in workspaces {
            let prompts = self.platform.list_prompts(&w.id).await.unwrap();
            assert!(!serde_json::to_string(&prompts).unwrap().contains(SECRET));
            let steps = self.platform.workspace_steps(&w.id).await.unwrap();
            assert!(!serde_json::to_string(&steps).unwrap().contains(SECRET));
            let again = self.platform.get_workspace(&w.id).await.unwrap();
            assert!(!serde_json::to_string(&again).unwrap().contains(SECRET));
        }
        for entry in walk(self.data_dir.path()) {
            let bytes = std::fs::read(&entry).unwrap_or_default();
            assert!(
                !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
                "secret found in {}",
                entry.display()
            );
        }
    }

    /// Stops the platform (its worker hands unfinished tasks back) and starts it
    /// again on the same data: what a worker restart looks like.
    async fn restart(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown().await;
        }
        let runtime = EmbeddedRuntime::start(&self.config).await.unwrap();
        self.platform = runtime.platform.clone();
        self.runtime = Some(runtime);
    }

    async fn stop(mut self) {
        for vm_id in std::mem::take(&mut self.vm_ids) {
            let _ = self.platform.delete_vm(&vm_id).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown().await;
        }
    }
}

impl Drop for Env {
    /// Containers are removed by id even when the test fails.
    fn drop(&mut self) {
        for vm_id in &self.vm_ids {
            let _ = Command::new("docker")
                .args(["rm", "-f", &format!("aetherium-{vm_id}")])
                .output();
        }
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                files.extend(walk(&p));
            } else {
                files.push(p);
            }
        }
    }
    files
}

fn uuid_like() -> String {
    aetherium_types::new_id().replace('-', "")
}

fn step(value: serde_json::Value) -> PrepStep {
    serde_json::from_value(value).unwrap()
}

fn secret_input() -> WorkspaceSecretInput {
    WorkspaceSecretInput {
        name: "STANDIN_ECHO".into(),
        value: SECRET.into(),
        secret_type: WorkspaceSecretType::ApiKey,
        description: "echoed by the stand-in agent".into(),
    }
}

fn prompt(text: &str, priority: u8) -> SubmitPromptRequest {
    let mut p = SubmitPromptRequest::new(text);
    p.priority = priority;
    p
}

// ---------------------------------------------------------------------------------
// Tests.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspace_prepares_and_runs_prompts_in_priority_order_with_secrets_redacted() {
    let mut env = Env::start("happy").await;
    let p = env.platform.clone();
    let mut environment = CreateEnvironmentRequest::named(&format!("env-{}", &uuid_like()[..8]));
    environment.tools = vec!["hello".into()];
    environment.env_vars = BTreeMap::from([("FROM_ENV".to_string(), "env-value".to_string())]);
    environment.git_repo_url = Some(env.repo_url.clone());
    let environment = p.create_environment(environment).await.unwrap();

    let mut req = CreateWorkspaceRequest::named(&format!("happy-{}", &uuid_like()[..8]));
    req.environment_id = Some(environment.name.clone());
    req.secrets = vec![secret_input()];
    req.prep_steps = vec![
        step(json!({"type": "script", "order": 1, "config": {
            "script": "echo \"script ran as $(id -un) in $PWD, FROM_ENV=$FROM_ENV, $(hello)\"; echo \"key=$STANDIN_ECHO\"; ls"}})),
        step(
            json!({"type": "env_var", "order": 2, "config": {"name": "LATER", "value": "later-value"}}),
        ),
    ];
    let w = env.create(req).await;
    assert_eq!(w.status, WorkspaceStatus::Creating);
    assert_eq!(w.tools, vec!["hello"]);
    let w = env.settled(&w.id).await;
    assert_eq!(
        w.status,
        WorkspaceStatus::Ready,
        "{:?} / {:?}",
        w.status_message,
        p.workspace_steps(&w.id).await
    );
    assert!(w.ready_at.is_some());

    // The environment's repo became step 0; every step completed, output redacted.
    let steps = p.workspace_steps(&w.id).await.unwrap();
    let kinds: Vec<_> = steps
        .iter()
        .map(|s| (s.order, s.step_type.as_str()))
        .collect();
    assert_eq!(kinds, vec![(0, "git_clone"), (1, "script"), (2, "env_var")]);
    assert!(
        steps.iter().all(|s| s.status == PrepStepStatus::Completed),
        "{steps:?}"
    );
    let script = &steps[1].output;
    assert!(
        script.contains("script ran as agent in /workspace"),
        "{script}"
    );
    assert!(
        script.contains("FROM_ENV=env-value, hello 1.0.0"),
        "{script}"
    );
    assert!(script.contains("key=[REDACTED:STANDIN_ECHO]"), "{script}");
    assert!(
        script.contains("README.md"),
        "the clone is in the working directory: {script}"
    );
    assert_eq!(
        env.sh(&w, "stat -c %U /workspace /workspace/README.md")
            .await,
        "agent\nagent\n"
    );

    // A prompt to a busy workspace: the first one holds it, the next two queue and
    // run by priority (high before low).
    let first = p
        .submit_prompt(&w.id, &prompt("first STANDIN_SLEEP=3", 5))
        .await
        .unwrap();
    env.prompt_status(&w.id, &first.id, PromptStatus::Running)
        .await;
    let low = p.submit_prompt(&w.name, &prompt("low", 1)).await.unwrap();
    let high = p.submit_prompt(&w.id, &prompt("high", 9)).await.unwrap();
    let first = env.prompt_finished(&w.id, &first.id).await;
    let low = env.prompt_finished(&w.id, &low.id).await;
    let high = env.prompt_finished(&w.id, &high.id).await;
    for done in [&first, &low, &high] {
        assert_eq!(done.status, PromptStatus::Completed, "{done:?}");
        assert_eq!(done.exit_code, Some(0));
        assert!(
            done.output.contains("STANDIN_ECHO=[REDACTED:STANDIN_ECHO]"),
            "{}",
            done.output
        );
        assert!(
            done.output.contains("standin: user=agent"),
            "{}",
            done.output
        );
    }
    assert!(high.started_at < low.started_at, "high priority ran first");
    assert_eq!(
        env.sh(
            &w,
            "cat /workspace/standin-edits.txt; stat -c %U /workspace/standin-edits.txt"
        )
        .await,
        "prompt: first STANDIN_SLEEP=3\nprompt: high\nprompt: low\nagent\n"
    );
    // The prompt file is gone.
    assert_eq!(
        env.sh(&w, "ls /tmp | grep -c aetherium-prompt || true")
            .await,
        "0\n"
    );

    // A failing agent: failed with its stderr.
    let failing = p
        .submit_prompt(&w.id, &prompt("STANDIN_FAIL now", 5))
        .await
        .unwrap();
    let failing = env.prompt_finished(&w.id, &failing.id).await;
    assert_eq!(failing.status, PromptStatus::Failed);
    assert_eq!(failing.exit_code, Some(3));
    assert!(
        failing
            .error
            .as_deref()
            .unwrap()
            .contains("standin: failing"),
        "{failing:?}"
    );

    // Cancelling: a pending prompt at once, a running one by killing it.
    let running = p
        .submit_prompt(&w.id, &prompt("long STANDIN_SLEEP=120", 5))
        .await
        .unwrap();
    env.prompt_status(&w.id, &running.id, PromptStatus::Running)
        .await;
    let pending = p.submit_prompt(&w.id, &prompt("never", 5)).await.unwrap();
    let cancelled = p.cancel_prompt(&w.id, &pending.id).await.unwrap();
    assert_eq!(cancelled.status, PromptStatus::Cancelled);
    let started = std::time::Instant::now();
    let stopped = p.cancel_prompt(&w.id, &running.id).await.unwrap();
    assert_eq!(stopped.status, PromptStatus::Cancelled, "{stopped:?}");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(
        env.sh(
            &w,
            "grep -l 'STANDIN_SLEEP=12[0]' /proc/[0-9]*/cmdline 2>/dev/null | wc -l"
        )
        .await
        .trim(),
        "0",
        "the agent process was killed"
    );
    assert!(matches!(
        p.cancel_prompt(&w.id, &first.id).await,
        Err(CoreError::Conflict(_))
    ));

    // Events: status changes, steps (tools too), prompt output — all redacted.
    let events = env.all_events().await;
    for needle in [
        "workspace.status",
        "workspace.step",
        "\"phase\":\"tools\"",
        "prompt.queued",
        "prompt.started",
        "prompt.output",
        "prompt.done",
        "[REDACTED:STANDIN_ECHO]",
    ] {
        assert!(events.contains(needle), "no {needle} in the events");
    }
    env.assert_secret_nowhere(&[&w]).await;

    // Deleting removes the VM, the secrets and the row.
    let vm_id = w.vm_id.clone().unwrap();
    p.delete_workspace(&w.id).await.unwrap();
    assert!(matches!(
        p.get_workspace(&w.id).await,
        Err(CoreError::NotFound(_))
    ));
    // Events are persisted by the bus's writer, just after the call returns.
    let mut announced = false;
    for _ in 0..100 {
        announced = env.all_events().await.contains("workspace.deleted");
        if announced {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(announced, "no workspace.deleted event");
    assert!(
        p.list_secrets(aetherium_types::SecretScope::Workspace, Some(&w.id))
            .await
            .unwrap()
            .is_empty()
    );
    let gone = p.wait_vm_settled(&vm_id, Duration::from_secs(60)).await;
    for _ in 0..100 {
        if matches!(p.get_vm(&vm_id).await, Err(CoreError::NotFound(_))) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        matches!(p.get_vm(&vm_id).await, Err(CoreError::NotFound(_))),
        "{gone:?}"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_and_failed_preparation_say_why() {
    let mut env = Env::start("fail").await;
    let p = env.platform.clone();
    let name = |what: &str| format!("{what}-{}", &uuid_like()[..8]);

    // Refused before anything is made.
    let mut req = CreateWorkspaceRequest::named(&name("nokey"));
    req.prep_steps = vec![step(json!({"type": "git_clone", "config": {
        "url": "ssh://git@example.com/r.git", "ssh_key_secret": "missing_key"}}))];
    let err = p.create_workspace(req.clone(), None).await.unwrap_err();
    assert!(
        matches!(&err, CoreError::InvalidInput(m) if m.contains("missing_key")),
        "{err:?}"
    );
    assert!(matches!(
        p.get_workspace(&req.name).await,
        Err(CoreError::NotFound(_))
    ));
    let mut req = CreateWorkspaceRequest::named(&name("noenv"));
    req.environment_id = Some("no-such-environment".into());
    let err = p.create_workspace(req, None).await.unwrap_err();
    assert!(
        matches!(&err, CoreError::InvalidInput(m) if m.contains("no-such-environment")),
        "{err:?}"
    );

    // A git URL that does not resolve.
    let mut req = CreateWorkspaceRequest::named(&name("badgit"));
    req.secrets = vec![secret_input()];
    req.prep_steps = vec![
        step(
            json!({"type": "git_clone", "order": 0, "config": {"url": "http://nosuchhost.invalid/repo.git"}}),
        ),
        step(json!({"type": "script", "order": 1, "config": {"script": "echo never"}})),
    ];
    let bad_git = env.create(req).await;
    // A script that fails (and prints the secret).
    let mut req = CreateWorkspaceRequest::named(&name("badscript"));
    req.secrets = vec![secret_input()];
    req.prep_steps = vec![
        step(
            json!({"type": "script", "order": 0, "config": {"script": "echo \"boom $STANDIN_ECHO\"; exit 7"}}),
        ),
        step(json!({"type": "env_var", "order": 1, "config": {"name": "X", "value": "y"}})),
    ];
    let bad_script = env.create(req).await;
    // A clone with an ssh key: the key goes to a 0600 file for the clone only (the
    // base image has no ssh client, so the clone fails; the key file must not stay).
    let mut req = CreateWorkspaceRequest::named(&name("sshkey"));
    req.secrets = vec![WorkspaceSecretInput {
        name: "deploy_key".into(),
        value: SECRET.into(),
        secret_type: WorkspaceSecretType::SshKey,
        description: String::new(),
    }];
    req.prep_steps = vec![step(json!({"type": "git_clone", "config": {
        "url": "ssh://git@127.0.0.1:1/r.git", "ssh_key_secret": "deploy_key"}}))];
    let ssh_key = env.create(req).await;
    // A private repository, and no credentials for it.
    let mut req = CreateWorkspaceRequest::named(&name("private"));
    let private_url = env.repo_url.replace("/repo.git", "/private/repo.git");
    req.prep_steps = vec![step(
        json!({"type": "git_clone", "config": {"url": private_url, "directory": "app"}}),
    )];
    let private = env.create(req).await;
    // A tool version that does not exist (the mirror answers 404).
    let mut req = CreateWorkspaceRequest::named(&name("badtool"));
    req.additional_tools = vec!["hello@9.9.9".into()];
    let bad_tool = env.create(req).await;
    // A slow one: prompts are refused while it prepares.
    let mut req = CreateWorkspaceRequest::named(&name("slow"));
    req.prep_steps = vec![step(
        json!({"type": "script", "config": {"script": "sleep 15"}}),
    )];
    let slow = env.create(req).await;

    let err = p
        .submit_prompt(&slow.id, &prompt("too early", 5))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CoreError::Conflict(m) if m.contains(&slow.name) && (m.contains("is preparing") || m.contains("is being created"))),
        "{err:?}"
    );
    for _ in 0..300 {
        if p.get_workspace(&slow.id).await.unwrap().status == WorkspaceStatus::Preparing {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let err = p
        .submit_prompt(&slow.name, &prompt("too early", 5))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CoreError::Conflict(m) if m.contains("is preparing")),
        "{err:?}"
    );

    let bad_git = env.settled(&bad_git.id).await;
    assert_eq!(bad_git.status, WorkspaceStatus::Failed);
    let message = bad_git.status_message.clone().unwrap();
    assert!(
        message.contains("prep step 0 (git_clone) failed"),
        "{message}"
    );
    assert!(message.contains("nosuchhost.invalid"), "{message}");
    let steps = p.workspace_steps(&bad_git.id).await.unwrap();
    assert_eq!(steps[0].status, PrepStepStatus::Failed);
    assert_eq!(steps[1].status, PrepStepStatus::Skipped);

    let bad_script = env.settled(&bad_script.id).await;
    assert_eq!(bad_script.status, WorkspaceStatus::Failed);
    let message = bad_script.status_message.clone().unwrap();
    assert!(
        message.contains("prep step 0 (script) failed: exit code 7"),
        "{message}"
    );
    assert!(
        message.contains("boom [REDACTED:STANDIN_ECHO]"),
        "{message}"
    );
    let steps = p.workspace_steps(&bad_script.id).await.unwrap();
    assert_eq!(steps[0].status, PrepStepStatus::Failed);
    assert_eq!(steps[0].exit_code, Some(7));
    assert_eq!(steps[1].status, PrepStepStatus::Skipped);
    let err = p
        .submit_prompt(&bad_script.id, &prompt("x", 5))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CoreError::Conflict(m) if m.contains("has failed")),
        "{err:?}"
    );

    let ssh_key = env.settled(&ssh_key.id).await;
    assert_eq!(ssh_key.status, WorkspaceStatus::Failed);
    let message = ssh_key.status_message.clone().unwrap();
    assert!(
        message.contains("prep step 0 (git_clone) failed"),
        "{message}"
    );
    assert_eq!(
        env.sh(&ssh_key, "ls /tmp | grep -c aetherium-key || true")
            .await,
        "0\n"
    );

    let private = env.settled(&private.id).await;
    assert_eq!(private.status, WorkspaceStatus::Failed);
    let message = private.status_message.clone().unwrap();
    assert!(
        message.contains("prep step 0 (git_clone) failed")
            && (message.contains("Username")
                || message.contains("Authentication")
                || message.contains("401")),
        "{message}"
    );
    let bad_tool = env.settled(&bad_tool.id).await;
    assert_eq!(bad_tool.status, WorkspaceStatus::Failed);
    let message = bad_tool.status_message.clone().unwrap();
    assert!(
        message.contains("hello") && message.contains("9.9.9"),
        "{message}"
    );

    let slow = env.settled(&slow.id).await;
    assert_eq!(
        slow.status,
        WorkspaceStatus::Ready,
        "{:?}",
        slow.status_message
    );

    env.assert_secret_nowhere(&[&bad_git, &bad_script, &slow])
        .await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_workspaces_are_stopped_and_their_vm_removed() {
    let mut env = Env::start("idle").await;
    let p = env.platform.clone();
    let w = env
        .create(CreateWorkspaceRequest::named(&format!(
            "idle-{}",
            &uuid_like()[..8]
        )))
        .await;
    let w = env.settled(&w.id).await;
    assert_eq!(w.status, WorkspaceStatus::Ready, "{:?}", w.status_message);
    // Two minutes pass (in the store) with a one-minute timeout.
    let mut aged = w.clone();
    aged.idle_timeout_seconds = 60;
    aged.last_activity_at = chrono::Utc::now() - chrono::Duration::seconds(120);
    p.workspace_data
        .workspaces
        .update_workspace(&aged)
        .await
        .unwrap();
    let mut stopped = None;
    for _ in 0..100 {
        let now = p.get_workspace(&w.id).await.unwrap();
        if now.status == WorkspaceStatus::Stopped {
            stopped = Some(now);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stopped = stopped.expect("the idle workspace was not stopped");
    assert_eq!(
        stopped.status_message.as_deref(),
        Some("stopped after 60 s idle")
    );
    let vm_id = w.vm_id.clone().unwrap();
    let mut vm_gone = false;
    for _ in 0..150 {
        if matches!(p.get_vm(&vm_id).await, Err(CoreError::NotFound(_))) {
            vm_gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(vm_gone, "the idle workspace's VM was not deleted");
    let out = Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("name=aetherium-{vm_id}")])
        .output()
        .unwrap();
    assert!(out.stdout.is_empty(), "its container is gone");
    let err = p.submit_prompt(&w.id, &prompt("x", 5)).await.unwrap_err();
    assert!(
        matches!(&err, CoreError::Conflict(m) if m.contains("is stopped")),
        "{err:?}"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_stops_during_preparation_fails_the_workspace_clearly() {
    let mut env = Env::start("restart").await;
    let mut req = CreateWorkspaceRequest::named(&format!("restart-{}", &uuid_like()[..8]));
    req.prep_steps = vec![step(serde_json::json!({
        "type": "script",
        "order": 1,
        "config": {"script": "sleep 120"}
    }))];
    let w = env.create(req).await;
    let mut preparing = false;
    for _ in 0..300 {
        let now = env.platform.get_workspace(&w.id).await.unwrap();
        if now.status == WorkspaceStatus::Preparing {
            preparing = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(preparing, "the workspace never started preparing");
    // The worker stops mid-step; its task goes back to the queue and is taken again
    // by the restarted worker, which must not re-run steps that may have had effects.
    env.restart().await;
    let w = env.settled(&w.id).await;
    assert_eq!(w.status, WorkspaceStatus::Failed);
    let message = w.status_message.clone().unwrap_or_default();
    assert!(
        message.contains("stopped while the workspace was being prepared"),
        "{message}"
    );
    env.stop().await;
}
