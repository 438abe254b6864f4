//! The platform's own logs against a real platform: a task's records are tagged with
//! its task and VM ids, queryable page by page, and streamed live (SSE and WebSocket).
#![allow(clippy::unwrap_used)]

mod common;
mod stream_client;

use std::time::Duration;

use common::{TestServer, random_hex};
use serde_json::{Value, json};
use stream_client::{SseClient, open_ws, ws_next};

const WAIT: Duration = Duration::from_secs(60);

/// The capture layer is installed by `aetherium up`; the test installs it itself.
fn capture_logs() {
    aetherium_common::telemetry::init(&aetherium_common::config::LoggingConfig::default());
}

/// Queries until `done` holds for the answer (records are stored asynchronously).
async fn query_until(server: &TestServer, body: Value, done: impl Fn(&[Value]) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, answer) = server.post("/logs/query", body.clone()).await;
        assert_eq!(status, 200, "{answer}");
        if done(answer["logs"].as_array().unwrap()) || tokio::time::Instant::now() > deadline {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn messages(logs: &[Value]) -> Vec<String> {
    logs.iter()
        .map(|l| l["message"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_tasks_logs_are_queryable_by_task_and_vm_and_streamed() {
    capture_logs();
    let server = TestServer::start().await;
    let vm_id = server
        .running_vm(&format!("lg-{}", &random_hex()[..8]))
        .await;

    // Live streams for this VM, opened before the command runs.
    let mut sse = SseClient::open(&server, &format!("/logs/stream?vm_id={vm_id}"), None).await;
    let mut ws = open_ws(&server, &format!("/logs/stream?vm_id={vm_id}&level=info")).await;

    let (status, body) = server
        .post(
            &format!("/vms/{vm_id}/execute?wait=30s"),
            json!({"command": "echo", "args": ["super-secret-argument"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let task_id = body["task_id"].as_str().unwrap().to_string();
    let execution_id = body["execution_id"].as_str().unwrap().to_string();

    // By task: the worker's records of this task, each tagged with task, VM, worker
    // and execution, oldest first on request.
    let answer = query_until(
        &server,
        json!({"task_id": task_id, "order": "asc"}),
        |logs| messages(logs).iter().any(|m| m == "task completed"),
    )
    .await;
    let logs = answer["logs"].as_array().unwrap();
    let said = messages(logs);
    for expected in [
        "task started",
        "execution started",
        "execution finished",
        "task completed",
    ] {
        assert!(
            said.iter().any(|m| m == expected),
            "{expected:?} missing from {said:?}"
        );
    }
    for record in logs {
        assert_eq!(record["task_id"], task_id.as_str(), "{record}");
        assert_eq!(record["vm_id"], vm_id.as_str(), "{record}");
        assert_eq!(record["worker_id"], server.worker_id.as_str(), "{record}");
        assert_eq!(record["execution_id"], execution_id.as_str(), "{record}");
        assert!(record["id"].as_i64().unwrap() > 0);
    }
    let ids: Vec<i64> = logs.iter().map(|l| l["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "asc order: {ids:?}");
    // Arguments are never logged.
    let everything = serde_json::to_string(&answer).unwrap();
    assert!(!everything.contains("super-secret-argument"));

    // By VM: the create task's records too; newest first by default, paged.
    let answer = query_until(&server, json!({"vm_id": vm_id}), |logs| {
        logs.iter().any(|l| l["task_id"] != task_id.as_str())
    })
    .await;
    let all = answer["logs"].as_array().unwrap().clone();
    assert!(all.len() >= 5, "{all:?}");
    let ids: Vec<i64> = all.iter().map(|l| l["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "desc order: {ids:?}");
    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let (status, page) = server
            .post(
                "/logs/query",
                json!({"vm_id": vm_id, "limit": 2, "cursor": cursor, "until": null}),
            )
            .await;
        assert_eq!(status, 200, "{page}");
        let rows = page["logs"].as_array().unwrap();
        assert!(rows.len() <= 2);
        paged.extend(rows.iter().map(|l| l["id"].as_i64().unwrap()));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(
        paged[..ids.len()],
        ids[..],
        "pages join up with no gap or repeat"
    );

    // Level filter: only warnings and errors.
    let (status, warn) = server
        .post("/logs/query", json!({"vm_id": vm_id, "level": "warn"}))
        .await;
    assert_eq!(status, 200);
    assert!(
        warn["logs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["level"] == "warn" || l["level"] == "error")
    );

    // The streams delivered this task's records live.
    let mut streamed = Vec::new();
    while let Some(event) = sse.next(WAIT).await {
        assert_eq!(event.data["vm_id"], vm_id.as_str());
        assert_eq!(
            event.id.as_deref(),
            Some(event.data["id"].as_i64().unwrap().to_string().as_str())
        );
        let message = event.data["message"].as_str().unwrap().to_string();
        streamed.push(message.clone());
        if message == "task completed" {
            break;
        }
    }
    assert!(
        streamed.iter().any(|m| m == "execution finished"),
        "{streamed:?}"
    );
    let mut ws_said = Vec::new();
    while let Some(record) = ws_next(&mut ws, WAIT).await {
        let message = record["message"].as_str().unwrap().to_string();
        ws_said.push(message.clone());
        if message == "task completed" {
            break;
        }
    }
    assert!(
        ws_said.iter().any(|m| m == "execution started"),
        "{ws_said:?}"
    );

    // A stream resumed from 0 replays the stored records first.
    let mut replay = SseClient::open(
        &server,
        &format!("/logs/stream?task_id={task_id}&after=0"),
        None,
    )
    .await;
    let first = replay.next(WAIT).await.unwrap();
    assert_eq!(first.data["task_id"], task_id.as_str());
    assert_eq!(first.data["message"], "task started");
}

#[tokio::test]
async fn bad_log_queries_are_400() {
    let server = TestServer::start().await;
    for body in [
        json!({"tsak_id": "x"}),
        json!({"limit": 0}),
        json!({"limit": 5000}),
        json!({"level": "loud"}),
        json!({"cursor": "not-a-cursor"}),
        json!({"contains": ""}),
        json!({"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}),
    ] {
        let (status, answer) = server.post("/logs/query", body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["code"], 400);
    }
    for path in [
        "/logs/stream?level=loud",
        "/logs/stream?after=x",
        "/logs/stream?nope=1",
    ] {
        let (status, answer) = server.get(path).await;
        assert_eq!(status, 400, "{path}: {answer}");
    }
    let (status, answer) = server.post("/logs/query", json!({})).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer["logs"].is_array());
}
