//! Archived (dead) tasks through the API on the embedded queue: `archived_at`,
//! `POST /tasks/{id}/retry`, `DELETE /tasks/{id}`, and `GET /queue/history`.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use aetherium_core::services::new_task;
use aetherium_types::{Task, TaskType};
use common::TestServer;
use serde_json::json;

/// Only this (fake) worker may lease the tests' tasks: the real one leaves them alone.
const GHOST: &str = "ghost-worker";

/// A task only [`GHOST`] may run, with one retry, in line.
async fn ghost_task(server: &TestServer) -> Task {
    let mut task = new_task(TaskType::VmExecute, json!({"vm_id": "nope"}), None);
    task.target_worker_id = Some(GHOST.into());
    task.max_retries = 1;
    server.platform().submit(&task).await.unwrap();
    task
}

/// Leases `task` as [`GHOST`] (waiting out a retry's backoff) and fails the attempt.
async fn fail_attempt(server: &TestServer, task: &Task, retryable: bool) {
    let queue = server.platform().queue;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(leased) = queue.lease(GHOST, Duration::from_secs(60)).await.unwrap() {
            assert_eq!(leased.id, task.id);
            queue
                .fail(&task.id, GHOST, "it broke", retryable)
                .await
                .unwrap();
            return;
        }
        assert!(std::time::Instant::now() < deadline, "never leased");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archived_tasks_can_be_retried_and_deleted() {
    let server = TestServer::start().await;
    let task = ghost_task(&server).await;
    let path = format!("/tasks/{}", task.id);

    // Not archived (pending): neither retried nor deleted.
    let (status, body) = server.post(&format!("{path}/retry"), json!({})).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        body["message"],
        format!(
            "only an archived task can be retried: task {} is pending",
            task.id
        )
    );
    let (status, body) = server.delete(&path).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("only an archived task can be deleted"),
        "{body}"
    );
    let (_, body) = server.get(&path).await;
    assert!(body.get("archived_at").is_none(), "{body}");

    // Both attempts fail: the task is dead, in the archive.
    fail_attempt(&server, &task, true).await;
    let (_, body) = server.get(&path).await;
    assert_eq!(body["status"], "pending", "a retry is due: {body}");
    fail_attempt(&server, &task, true).await;
    let (_, body) = server.get(&path).await;
    assert_eq!(body["status"], "failed", "{body}");
    assert_eq!(body["retry_count"], 1, "{body}");
    let archived_at = body["archived_at"].as_str().unwrap();
    chrono::DateTime::parse_from_rfc3339(archived_at).unwrap();
    // Lists say so too.
    let (_, list) = server.get("/tasks?status=failed").await;
    let listed = list["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == task.id.as_str())
        .unwrap();
    assert_eq!(listed["archived_at"], archived_at);
    // `?archived=true` lists the archive itself, other filters applying.
    let (status, list) = server.get("/tasks?archived=true").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["tasks"][0]["id"], task.id.as_str(), "{list}");
    assert_eq!(list["tasks"][0]["archived_at"], archived_at);
    assert!(list["next_cursor"].is_null(), "{list}");
    let (_, list) = server.get("/tasks?archived=true&type=vm:create").await;
    assert!(
        !list["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == task.id.as_str()),
        "{list}"
    );
    let (status, _) = server.get("/tasks?archived=true&cursor=abc").await;
    assert_eq!(status, 400);

    // Retried: pending again, no retries used, out of the archive.
    let (status, body) = server.post(&format!("{path}/retry"), json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "pending", "{body}");
    assert_eq!(body["retry_count"], 0, "{body}");
    assert!(body.get("archived_at").is_none(), "{body}");
    let (status, body) = server.post(&format!("{path}/retry"), json!({})).await;
    assert_eq!(status, 409, "{body}");
    let (_, list) = server.get("/tasks?archived=true").await;
    assert_eq!(list["total"], 0, "{list}");

    // Dead again (a permanent error this time), then deleted: gone for good.
    fail_attempt(&server, &task, false).await;
    let (_, body) = server.get(&path).await;
    assert!(body["archived_at"].is_string(), "{body}");
    let resp = server
        .request(reqwest::Method::DELETE, &path)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let (status, _) = server.get(&path).await;
    assert_eq!(status, 404);
    let (status, _) = server.delete(&path).await;
    assert_eq!(status, 404);
    let (status, _) = server.post(&format!("{path}/retry"), json!({})).await;
    assert_eq!(status, 404);

    // Retrying and deleting operate: a viewer may not.
    let viewer = server.create_key("viewer").await;
    let (status, _) = server
        .call_as(
            &viewer,
            reqwest::Method::POST,
            &format!("/api/v1/tasks/{}/retry", task.id),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_history_counts_tasks_per_minute() {
    let server = TestServer::start().await;
    let task = ghost_task(&server).await;
    fail_attempt(&server, &task, false).await;

    let (status, body) = server.get("/queue/history").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["interval_seconds"], 60);
    let buckets = body["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 30);
    let starts: Vec<chrono::DateTime<chrono::Utc>> = buckets
        .iter()
        .map(|b| b["start"].as_str().unwrap().parse().unwrap())
        .collect();
    for pair in starts.windows(2) {
        assert_eq!(pair[1] - pair[0], chrono::Duration::minutes(1));
    }
    let last = *starts.last().unwrap();
    assert_eq!(last.timestamp() % 60, 0);
    assert!(chrono::Utc::now() - last < chrono::Duration::minutes(1));
    let total = |key: &str| {
        buckets
            .iter()
            .map(|b| b[key].as_u64().unwrap())
            .sum::<u64>()
    };
    // The minute may have turned between creation and failure: count all buckets.
    assert!(total("created") >= 1, "{body}");
    assert!(total("failed") >= 1, "{body}");

    let (_, body) = server.get("/queue/history?minutes=1").await;
    assert_eq!(body["buckets"].as_array().unwrap().len(), 1);
    let (_, body) = server.get("/queue/history?minutes=180").await;
    assert_eq!(body["buckets"].as_array().unwrap().len(), 180);
    for bad in ["0", "181", "x"] {
        let (status, body) = server.get(&format!("/queue/history?minutes={bad}")).await;
        assert_eq!(status, 400, "minutes={bad}: {body}");
    }
}
