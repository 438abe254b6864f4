//! Workspaces end to end through the API, against the real Docker engine: an
//! environment and a workspace that clones a repository from a local git server
//! (dumb HTTP on the docker0 bridge), installs a tool from a fixture catalog and
//! file server, receives a secret, runs prompts through the stand-in agent CLI
//! (REST and the session WebSocket) and idles out. Every response, WebSocket
//! message, event, log record and database file is searched for the secret's value.
//! Plus bad input: an unknown environment, a prompt to a workspace that is not
//! ready, a failing preparation step, roles.
//!
//! Needs the Docker engine, the base image, the static agent (`make agent`) and git.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod stream_client;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aetherium_testkit::tools::{tool_recipe, tool_tarball};
use common::{TestServer, random_hex};
use futures::SinkExt as _;
use serde_json::{Value, json};
use stream_client::{SseClient, open_ws, ws_next};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(180);

// ---------------------------------------------------------------------------------
// Fixtures

use aetherium_testkit::{FileServer, docker_gateway};

fn run(cmd: &str, args: &[&str], dir: &Path) {
    let out = std::process::Command::new(cmd)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `<root>/repo.git`: a bare repository with one commit (README.md holding
/// `fixture-readme-marker`), prepared for dumb HTTP.
fn git_fixture(root: &Path) {
    let work = root.join("work");
    std::fs::create_dir_all(&work).unwrap();
    run("git", &["init", "-q", "-b", "main"], &work);
    std::fs::write(work.join("README.md"), "fixture-readme-marker\n").unwrap();
    run("git", &["add", "README.md"], &work);
    run(
        "git",
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.com",
            "commit",
            "-q",
            "-m",
            "init",
        ],
        &work,
    );
    run("git", &["clone", "-q", "--bare", "work", "repo.git"], root);
    run("git", &["update-server-info"], &root.join("repo.git"));
}

/// `<root>/wshello-1.0.0.tar.gz` (with its sum) and a catalog dir with its recipe
/// (mirror `fixture`).
fn tool_fixture(root: &Path) -> PathBuf {
    tool_tarball(root, "wshello", "1.0.0");
    let catalog = root.join("catalog");
    std::fs::create_dir_all(&catalog).unwrap();
    std::fs::write(catalog.join("wshello.toml"), tool_recipe("wshello", &[])).unwrap();
    catalog
}

// ---------------------------------------------------------------------------------
// Recording everything the API said

/// Every response body and message the test received, to search for the secret.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<String>>);

impl Seen {
    fn add(&self, text: &str) {
        let mut all = self.0.lock().unwrap();
        all.push_str(text);
        all.push('\n');
    }

    fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }
}

async fn call(
    server: &TestServer,
    seen: &Seen,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = server.request(method, path);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    seen.add(&text);
    let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, json)
}

async fn get(server: &TestServer, seen: &Seen, path: &str) -> (u16, Value) {
    call(server, seen, reqwest::Method::GET, path, None).await
}

async fn post(server: &TestServer, seen: &Seen, path: &str, body: Value) -> (u16, Value) {
    call(server, seen, reqwest::Method::POST, path, Some(body)).await
}

/// Polls the workspace until its status is one of `want`; panics after `WAIT`.
async fn wait_status(server: &TestServer, seen: &Seen, id: &str, want: &[&str]) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, ws) = get(server, seen, &format!("/workspaces/{id}")).await;
        assert_eq!(status, 200, "{ws}");
        if want.iter().any(|w| ws["status"] == *w) {
            return ws;
        }
        if tokio::time::Instant::now() > deadline {
            let (_, steps) = get(server, seen, &format!("/workspaces/{id}/steps")).await;
            panic!("workspace never became {want:?}: {ws}\nsteps: {steps}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn wait_prompt(server: &TestServer, seen: &Seen, ws: &str, prompt: &str) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, p) = get(server, seen, &format!("/workspaces/{ws}/prompts/{prompt}")).await;
        assert_eq!(status, 200, "{p}");
        if ["completed", "failed", "cancelled"]
            .iter()
            .any(|s| p["status"] == *s)
        {
            return p;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "prompt never ended: {p}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Every file under `dir`, as bytes (the database, its WAL, the key file…).
fn files_under(dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files_under(&path, out);
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path, bytes));
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A server whose sandboxes run the stand-in agent image, with the fixture catalog
/// and mirror, checking idleness every second.
async fn workspace_server(catalog: PathBuf, mirror: String) -> TestServer {
    let image = aetherium_testkit::standin_agent_image();
    TestServer::start_with(move |config| {
        config.vmm.docker.default_image = image.clone();
        config.workspaces.tool_catalog_dir = Some(catalog.clone());
        config
            .workspaces
            .tool_mirrors
            .insert("fixture".into(), mirror.clone());
        config.workspaces.idle_check_interval_seconds = 1;
        // Fixture servers listen on the host: open it to the isolated sandboxes.
        config.vmm.docker.egress_allow =
            vec![format!("{}/32", aetherium_testkit::docker_gateway())];
    })
    .await
}

// ---------------------------------------------------------------------------------

#[tokio::test]
async fn a_workspace_is_prepared_prompted_streamed_and_idles_out_without_leaking_its_secret() {
    // `aetherium up` installs the log capture layer; without it the platform's log
    // records would never be stored, and "not in the logs" could not fail.
    aetherium_common::telemetry::init(&aetherium_common::config::LoggingConfig::default());
    let fixtures = tempfile::tempdir().unwrap();
    git_fixture(fixtures.path());
    let catalog = tool_fixture(fixtures.path());
    let files = FileServer::start(fixtures.path().to_path_buf(), docker_gateway());
    let server = workspace_server(catalog, files.url()).await;
    let seen = Seen::default();
    let secret = format!("s3cret-{}", random_hex());
    let suffix = &random_hex()[..8];

    // An environment with the tool and a one-minute idle timeout (the least).
    let env_name = format!("env-{suffix}");
    let (status, env) = post(
        &server,
        &seen,
        "/environments",
        json!({"name": env_name, "tools": ["wshello"], "idle_timeout_seconds": 60}),
    )
    .await;
    assert_eq!(status, 201, "{env}");

    let name = format!("ws-{suffix}");
    let (status, ws) = post(
        &server,
        &seen,
        "/workspaces",
        json!({
            "name": name,
            "environment_id": env_name,
            "secrets": [{"name": "STANDIN_ECHO", "value": secret, "type": "token"}],
            "prep_steps": [
                {"type": "git_clone", "order": 1, "config": {"url": format!("{}/repo.git", files.url()), "directory": "repo"}},
                {"type": "script", "order": 2, "config": {"script":
                    "cat repo/README.md && wshello && echo \"leak attempt: $STANDIN_ECHO\""}},
                {"type": "env_var", "order": 3, "config": {"name": "WS_MARK", "value": "mark-1"}},
            ],
        }),
    )
    .await;
    assert_eq!(status, 201, "{ws}");
    assert_eq!(ws["status"], "creating", "{ws}");
    assert_eq!(ws["name"], name.as_str());
    let id = ws["id"].as_str().unwrap().to_string();

    // Not ready yet: a prompt is refused with 409 saying so.
    let (status, refused) = post(
        &server,
        &seen,
        &format!("/workspaces/{id}/prompts"),
        json!({"prompt": "too early"}),
    )
    .await;
    assert_eq!(status, 409, "{refused}");

    // By name as well as by id; listed.
    let (status, by_name) = get(&server, &seen, &format!("/workspaces/{name}")).await;
    assert_eq!((status, by_name["id"].as_str()), (200, Some(id.as_str())));
    let (status, list) = get(&server, &seen, "/workspaces").await;
    assert_eq!(status, 200, "{list}");
    assert!(
        list["workspaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["id"] == id.as_str()),
        "{list}"
    );

    let ready = wait_status(&server, &seen, &id, &["ready", "failed"]).await;
    let (_, steps) = get(&server, &seen, &format!("/workspaces/{id}/steps")).await;
    assert_eq!(ready["status"], "ready", "{ready}\n{steps}");
    let steps = steps["steps"].as_array().unwrap().clone();
    assert_eq!(steps.len(), 3, "{steps:?}");
    for step in &steps {
        assert_eq!(step["status"], "completed", "{step}");
    }
    let script_out = steps[1]["output"].as_str().unwrap();
    assert!(script_out.contains("fixture-readme-marker"), "{script_out}");
    assert!(script_out.contains("wshello 1.0.0"), "{script_out}");

    // The secret is listed by name, never by value.
    let (status, secrets) = get(&server, &seen, &format!("/workspaces/{id}/secrets")).await;
    assert_eq!(status, 200, "{secrets}");
    assert!(
        secrets["secrets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "STANDIN_ECHO"),
        "{secrets}"
    );

    // A prompt over REST: 202, then completed with the agent's output.
    let (status, queued) = post(
        &server,
        &seen,
        &format!("/workspaces/{id}/prompts"),
        json!({"prompt": "first change"}),
    )
    .await;
    assert_eq!(status, 202, "{queued}");
    assert_eq!(queued["status"], "pending", "{queued}");
    let first = queued["id"].as_str().unwrap().to_string();
    let done = wait_prompt(&server, &seen, &id, &first).await;
    assert_eq!(done["status"], "completed", "{done}");
    let output = done["output"].as_str().unwrap();
    assert!(output.contains("standin: appended to"), "{output}");
    assert!(output.contains("prompt: first change") || output.contains("first change"));
    assert!(
        output.contains("STANDIN_ECHO="),
        "the secret reaches the agent: {output}"
    );

    // The session WebSocket: status first; a malformed message gets an error and
    // the session stays; a prompt is queued, streamed and done.
    let mut session = open_ws(&server, &format!("/workspaces/{id}/session?v=1")).await;
    let mut messages = Vec::new();
    let first_msg = ws_next(&mut session, WAIT).await.expect("a status message");
    seen.add(&first_msg.to_string());
    assert_eq!(
        first_msg,
        json!({"type": "status", "workspace_status": "ready"})
    );
    session
        .send(Message::Text("{not json".into()))
        .await
        .unwrap();
    let err = ws_next(&mut session, WAIT).await.expect("an error message");
    seen.add(&err.to_string());
    assert_eq!(err["type"], "error", "{err}");
    session
        .send(Message::Text(r#"{"type":"exec","command":"ls"}"#.into()))
        .await
        .unwrap();
    let err = ws_next(&mut session, WAIT).await.expect("an error message");
    seen.add(&err.to_string());
    assert_eq!(err["type"], "error", "{err}");
    session
        .send(Message::Text(
            json!({"type": "prompt", "prompt": "second change", "priority": 7})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    let mut prompt_id = None;
    let mut streamed = String::new();
    let final_prompt = loop {
        let msg = ws_next(&mut session, WAIT)
            .await
            .expect("the session ended before prompt_done");
        seen.add(&msg.to_string());
        messages.push(msg.clone());
        match msg["type"].as_str().unwrap() {
            "prompt_queued" => {
                assert!(prompt_id.is_none(), "queued twice: {messages:?}");
                assert_eq!(msg["prompt"]["priority"], 7);
                prompt_id = Some(msg["prompt"]["id"].as_str().unwrap().to_string());
            }
            "output" => {
                assert_eq!(msg["prompt_id"].as_str(), prompt_id.as_deref(), "{msg}");
                streamed.push_str(msg["data"].as_str().unwrap());
            }
            "prompt_done" if msg["prompt"]["id"].as_str() == prompt_id.as_deref() => {
                break msg["prompt"].clone();
            }
            _ => {}
        }
    };
    assert!(prompt_id.is_some(), "{messages:?}");
    assert_eq!(final_prompt["status"], "completed", "{final_prompt}");
    assert!(streamed.contains("standin: appended to"), "{streamed}");
    assert!(streamed.contains("second change"), "{streamed}");
    // The agent worked in the same place: both edits are there.
    assert!(streamed.contains("standin-edits.txt"), "{streamed}");
    session.close(None).await.unwrap();

    let (status, prompts) = get(&server, &seen, &format!("/workspaces/{id}/prompts")).await;
    assert_eq!(status, 200, "{prompts}");
    assert_eq!(prompts["total"], 2, "{prompts}");

    // Idles out: stopped once a minute passed without activity.
    let stopped = wait_status(&server, &seen, &id, &["stopped"]).await;
    assert!(
        stopped["status_message"]
            .as_str()
            .unwrap_or_default()
            .contains("idle"),
        "{stopped}"
    );

    // Everything the platform says about it: events and its own logs.
    let mut sse =
        SseClient::open(&server, &format!("/events?after=0&resource_id={id}"), None).await;
    let mut event_types = Vec::new();
    while let Some(event) = sse.next(Duration::from_secs(3)).await {
        seen.add(&event.data.to_string());
        event_types.push(event.data["type"].as_str().unwrap_or_default().to_string());
    }
    for want in [
        "workspace.status",
        "prompt.queued",
        "prompt.output",
        "prompt.done",
    ] {
        assert!(
            event_types.iter().any(|t| t == want),
            "{want}: {event_types:?}"
        );
    }
    let (status, logs) = post(&server, &seen, "/logs/query", json!({"limit": 1000})).await;
    assert_eq!(status, 200, "{logs}");
    // The records searched below exist: the workspace's preparation was logged.
    assert!(
        logs["logs"]
            .as_array()
            .is_some_and(|l| l.iter().any(|r| r.to_string().contains(&id))),
        "no log record about the workspace was stored: {logs}"
    );

    let (status, body) = call(
        &server,
        &seen,
        reqwest::Method::DELETE,
        &format!("/workspaces/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 204, "{body}");
    let (status, _) = get(&server, &seen, &format!("/workspaces/{id}")).await;
    assert_eq!(status, 404);

    // The secret's value: nowhere.
    let all = seen.text();
    assert!(
        !all.contains(&secret),
        "the secret's value appeared in an API answer or message"
    );
    assert!(all.contains("STANDIN_ECHO"), "its name may show");
    let mut stored = Vec::new();
    files_under(server.data_dir.path(), &mut stored);
    assert!(!stored.is_empty());
    for (path, bytes) in &stored {
        assert!(
            !contains(bytes, secret.as_bytes()),
            "the secret's value is in {}",
            path.display()
        );
    }
}

#[tokio::test]
async fn bad_workspace_input_is_refused_and_a_failing_step_fails_the_workspace() {
    let fixtures = tempfile::tempdir().unwrap();
    let catalog = tool_fixture(fixtures.path());
    let files = FileServer::start(fixtures.path().to_path_buf(), docker_gateway());
    let server = workspace_server(catalog, files.url()).await;
    let seen = Seen::default();
    let suffix = &random_hex()[..8];

    // An unknown environment: a 4xx naming it, and nothing made.
    let name = format!("bad-{suffix}");
    let (status, body) = post(
        &server,
        &seen,
        "/workspaces",
        json!({"name": name, "environment_id": "no-such-env"}),
    )
    .await;
    assert!(status == 400 || status == 404, "{status} {body}");
    assert!(
        body["message"].as_str().unwrap().contains("no-such-env"),
        "{body}"
    );
    let (status, _) = get(&server, &seen, &format!("/workspaces/{name}")).await;
    assert_eq!(status, 404, "nothing half-made");

    // Invalid fields and unknown fields: 400.
    for bad in [
        json!({"name": "-bad"}),
        json!({"name": "x", "ai_assistant": "copilot"}),
        json!({"name": "x", "nme": 1}),
        json!({"name": "x", "prep_steps": [{"type": "git_clone", "config": {"url": "ftp://x"}}]}),
        json!({"name": "x", "working_directory": "relative"}),
    ] {
        let (status, body) = post(&server, &seen, "/workspaces", bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }

    // Unknown workspaces: 404 on every route.
    for path in [
        "/workspaces/nope",
        "/workspaces/nope/steps",
        "/workspaces/nope/prompts",
        "/workspaces/nope/prompts/p1",
        "/workspaces/nope/secrets",
        "/workspaces/nope/session",
    ] {
        let (status, body) = get(&server, &seen, path).await;
        assert_eq!(status, 404, "{path}: {body}");
    }
    let (status, _) = post(
        &server,
        &seen,
        "/workspaces/nope/prompts",
        json!({"prompt": "hi"}),
    )
    .await;
    assert_eq!(status, 404);

    // Roles: a viewer reads but cannot create or prompt.
    let viewer = server.create_key("viewer").await;
    let resp = server
        .http
        .get(format!("{}/api/v1/workspaces", server.url))
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let resp = server
        .http
        .post(format!("{}/api/v1/workspaces", server.url))
        .bearer_auth(&viewer)
        .json(&json!({"name": format!("v-{suffix}")}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);

    // References to what does not exist: 4xx, never 5xx, and nothing made.
    for (i, bad) in [
        json!({"additional_tools": ["no-such-tool"]}),
        json!({"tool_versions": {"no-such-tool": "1.0"}}),
        json!({"prep_steps": [{"type": "git_clone", "config": {
            "url": "ssh://git@example.com/r.git", "ssh_key_secret": "NO_SUCH_KEY"}}]}),
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("ref-{i}-{suffix}");
        let mut body = bad.clone();
        body["name"] = name.clone().into();
        let (status, answer) = post(&server, &seen, "/workspaces", body).await;
        if status == 201 {
            // Checked on the worker (which has the catalog and the secrets): the
            // workspace fails, saying which reference is missing.
            let id = answer["id"].as_str().unwrap();
            let failed = wait_status(&server, &seen, id, &["ready", "failed"]).await;
            assert_eq!(failed["status"], "failed", "{bad}: {failed}");
            let message = failed["status_message"].as_str().unwrap_or_default();
            assert!(
                message.contains("no-such-tool") || message.contains("NO_SUCH_KEY"),
                "{bad}: {failed}"
            );
            let path = format!("/workspaces/{id}");
            let (status, _) = call(&server, &seen, reqwest::Method::DELETE, &path, None).await;
            assert_eq!(status, 204);
            continue;
        }
        assert!((400..500).contains(&status), "{bad}: {status} {answer}");
        let (status, _) = get(&server, &seen, &format!("/workspaces/{name}")).await;
        assert_eq!(status, 404, "{bad}: nothing half-made");
    }

    // A failing prep step: the workspace fails, the step's output is visible, and
    // prompts are refused.
    let failing = format!("fail-{suffix}");
    let (status, ws) = post(
        &server,
        &seen,
        "/workspaces",
        json!({"name": failing, "prep_steps": [
            {"type": "script", "order": 1, "config": {"script": "echo step-output-marker; exit 7"}},
            {"type": "script", "order": 2, "config": {"script": "echo never"}},
        ]}),
    )
    .await;
    assert_eq!(status, 201, "{ws}");
    let id = ws["id"].as_str().unwrap().to_string();
    // The name is taken while it exists.
    let (status, body) = post(&server, &seen, "/workspaces", json!({"name": failing})).await;
    assert_eq!(status, 409, "{body}");

    let failed = wait_status(&server, &seen, &id, &["ready", "failed"]).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    let (_, steps) = get(&server, &seen, &format!("/workspaces/{id}/steps")).await;
    let steps = steps["steps"].as_array().unwrap().clone();
    assert_eq!(steps[0]["status"], "failed", "{steps:?}");
    assert_eq!(steps[0]["exit_code"], 7, "{steps:?}");
    assert!(
        steps[0]["output"]
            .as_str()
            .unwrap()
            .contains("step-output-marker"),
        "{steps:?}"
    );
    assert_ne!(steps[1]["status"], "completed", "{steps:?}");
    let (status, body) = post(
        &server,
        &seen,
        &format!("/workspaces/{id}/prompts"),
        json!({"prompt": "hi"}),
    )
    .await;
    assert_eq!(status, 409, "{body}");

    // Its secrets: set (201, no value back), listed, deleted; unknown ones 404.
    let (status, secret) = post(
        &server,
        &seen,
        &format!("/workspaces/{id}/secrets"),
        json!({"name": "WS_TOKEN", "value": "a-value-of-the-test", "type": "token"}),
    )
    .await;
    assert_eq!(status, 201, "{secret}");
    assert!(
        !secret.to_string().contains("a-value-of-the-test"),
        "{secret}"
    );
    let secret_id = secret["id"].as_str().unwrap().to_string();
    let (status, list) = get(&server, &seen, &format!("/workspaces/{id}/secrets")).await;
    assert_eq!(status, 200);
    assert!(!list.to_string().contains("a-value-of-the-test"), "{list}");
    let path = format!("/workspaces/{id}/secrets/{secret_id}");
    let (status, _) = call(&server, &seen, reqwest::Method::DELETE, &path, None).await;
    assert_eq!(status, 204);
    let (status, _) = call(&server, &seen, reqwest::Method::DELETE, &path, None).await;
    assert_eq!(status, 404);
    // Unknown prompts: 404; the session route without an upgrade: a 4xx.
    let (status, _) = post(
        &server,
        &seen,
        &format!("/workspaces/{id}/prompts/nope/cancel"),
        json!({}),
    )
    .await;
    assert_eq!(status, 404);
    let (status, body) = get(&server, &seen, &format!("/workspaces/{id}/session")).await;
    assert!((400..500).contains(&status), "{status} {body}");
    let (status, _) = call(
        &server,
        &seen,
        reqwest::Method::DELETE,
        &format!("/workspaces/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 204);
}
