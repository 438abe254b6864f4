//! List semantics of `GET /vms`, `/vms/{id}/executions` and `/tasks`: `limit` +
//! opaque keyset `cursor`, newest first (`created_at DESC, id DESC`), `total`, and
//! the task filters. Rows are staged through the platform's store and queue (no
//! sandboxes needed), with created_at values chosen to include ties.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use aetherium_core::services::new_task;
use aetherium_types::{Execution, ExecutionStatus, Orchestrator, TaskType, Vm, VmStatus};
use chrono::{DateTime, TimeZone, Utc};
use common::{TestServer, random_hex};
use serde_json::json;

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &random_hex()[..8])
}

/// A point in the past, `i` seconds apart; pairs of rows share one (ties on
/// created_at are ordered by id).
fn past(i: usize) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(1_700_000_000_000 + (i as i64 / 2) * 1000)
        .single()
        .unwrap()
}

fn staged_vm(name: &str, created_at: DateTime<Utc>) -> Vm {
    Vm {
        id: uuid_like(),
        name: name.to_string(),
        // FAILED, owned by nobody: no worker reconciles it.
        status: VmStatus::Failed,
        orchestrator: Orchestrator::Docker,
        image: "none".into(),
        vcpu_count: 1,
        memory_mb: 256,
        disk_mb: None,
        created_by: None,
        network_policy: None,
        placement: None,
        kernel_path: None,
        rootfs_path: None,
        socket_path: None,
        worker_id: None,
        error: Some("staged by a test".into()),
        created_at,
        started_at: None,
        stopped_at: None,
        expires_at: None,
        metadata: Default::default(),
    }
}

fn uuid_like() -> String {
    let h = random_hex();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Follows `next_cursor` from the first page to the last, calling `between` after
/// every page; returns the ids in the order seen and the `total` of each page.
async fn page_through(
    server: &TestServer,
    path: &str,
    key: &str,
    limit: u32,
    mut between: impl AsyncFnMut(usize),
) -> (Vec<String>, Vec<u64>) {
    let sep = if path.contains('?') { '&' } else { '?' };
    let mut ids = Vec::new();
    let mut totals = Vec::new();
    let mut cursor: Option<String> = None;
    for page in 0.. {
        assert!(page < 100, "paging does not end");
        let url = match &cursor {
            Some(c) => format!("{path}{sep}limit={limit}&cursor={c}"),
            None => format!("{path}{sep}limit={limit}"),
        };
        let (status, body) = server.get(&url).await;
        assert_eq!(status, 200, "{url}: {body}");
        let rows = body[key].as_array().unwrap();
        assert!(rows.len() <= limit as usize, "{body}");
        ids.extend(rows.iter().map(|r| r["id"].as_str().unwrap().to_string()));
        totals.push(body["total"].as_u64().unwrap());
        match body["next_cursor"].as_str() {
            Some(next) => {
                assert_eq!(rows.len(), limit as usize, "a short page must be the last");
                cursor = Some(next.to_string());
            }
            None => {
                assert!(body["next_cursor"].is_null(), "{body}");
                break;
            }
        }
        between(page).await;
    }
    (ids, totals)
}

/// The expected order: created_at DESC, id DESC.
fn newest_first(mut rows: Vec<(DateTime<Utc>, String)>) -> Vec<String> {
    rows.sort_by(|a, b| b.cmp(a));
    rows.into_iter().map(|(_, id)| id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_pages_visit_every_vm_once_in_order_while_vms_are_added() {
    let server = TestServer::start().await;
    let store = server.platform().store;
    let prefix = unique("page");
    let mut staged = Vec::new();
    for i in 0..23 {
        let vm = staged_vm(&format!("{prefix}-{i}"), past(i));
        store.insert_vm(&vm).await.unwrap();
        staged.push((vm.created_at, vm.id.clone()));
    }
    let expected = newest_first(staged);
    let mut added = 0;
    let (seen, totals) = page_through(&server, "/vms", "vms", 5, async |page| {
        // Rows inserted while paging: newer ones (before the cursor), and one that
        // ties the oldest staged time (its place depends on its id). None may shift
        // the pages: every staged VM is still seen exactly once, in order.
        let newer = staged_vm(&format!("{prefix}-new-{page}"), Utc::now());
        store.insert_vm(&newer).await.unwrap();
        let tie = staged_vm(&format!("{prefix}-tie-{page}"), past(0));
        store.insert_vm(&tie).await.unwrap();
        added += 2;
    })
    .await;
    let staged_ids: HashSet<&String> = expected.iter().collect();
    let seen_staged: Vec<String> = seen
        .iter()
        .filter(|id| staged_ids.contains(id))
        .cloned()
        .collect();
    assert_eq!(seen_staged, expected, "each staged VM once, newest first");
    let unique_seen: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique_seen.len(), seen.len(), "no VM seen twice");
    assert_eq!(totals[0], 23);
    assert_eq!(
        *totals.last().unwrap(),
        23 + added,
        "total counts rows as they are"
    );

    // A filter pages too, and `total` counts what matches.
    let (status, body) = server.get("/vms?status=FAILED&limit=1000").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["total"], 23 + added);
    assert!(body["next_cursor"].is_null());
    let (_, body) = server.get(&format!("/vms?name={prefix}-3")).await;
    assert_eq!(body["total"], 1, "{body}");
    assert_eq!(body["vms"][0]["name"], format!("{prefix}-3"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execution_and_task_pages_visit_every_row_once() {
    let server = TestServer::start().await;
    let platform = server.platform();

    // Executions of a VM id that has no VM row (executions outlive their VM).
    let vm_id = uuid_like();
    let mut staged = Vec::new();
    for i in 0..12 {
        let e = Execution {
            id: uuid_like(),
            vm_id: vm_id.clone(),
            task_id: None,
            command: "true".into(),
            args: vec![],
            status: ExecutionStatus::Completed,
            exit_code: Some(0),
            stdout: String::new(),
            stderr: String::new(),
            error: None,
            created_at: past(i),
            started_at: None,
            completed_at: None,
            duration_ms: None,
            metadata: Default::default(),
            created_by: None,
        };
        platform.store.insert_execution(&e).await.unwrap();
        staged.push((e.created_at, e.id));
    }
    let (seen, totals) = page_through(
        &server,
        &format!("/vms/{vm_id}/executions"),
        "executions",
        4,
        async |_| {},
    )
    .await;
    assert_eq!(seen, newest_first(staged));
    assert_eq!(totals, vec![12, 12, 12]);

    // Tasks no worker will lease (targeted at a worker that does not exist).
    let marker = uuid_like();
    let mut staged = Vec::new();
    for i in 0..17 {
        let mut t = new_task(TaskType::VmSnapshot, json!({}), Some(&marker));
        t.target_worker_id = Some("nobody".into());
        t.created_at = past(i);
        platform.queue.enqueue(&t).await.unwrap();
        staged.push((t.created_at, t.id));
    }
    let expected = newest_first(staged);
    let queue = platform.queue.clone();
    let marker2 = marker.clone();
    let (seen, _) = page_through(
        &server,
        &format!("/tasks?vm_id={marker}"),
        "tasks",
        6,
        async |_| {
            let mut t = new_task(TaskType::VmSnapshot, json!({}), Some(&marker2));
            t.target_worker_id = Some("nobody".into());
            queue.enqueue(&t).await.unwrap();
        },
    )
    .await;
    let staged_ids: HashSet<&String> = expected.iter().collect();
    let seen_staged: Vec<String> = seen
        .iter()
        .filter(|id| staged_ids.contains(id))
        .cloned()
        .collect();
    assert_eq!(seen_staged, expected);

    // Exactly `limit` rows left: that page is the last, with no cursor.
    let (_, body) = server
        .get(&format!("/vms/{vm_id}/executions?limit=12"))
        .await;
    assert_eq!(body["executions"].as_array().unwrap().len(), 12);
    assert!(body["next_cursor"].is_null(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_filters_combine() {
    let server = TestServer::start().await;
    let platform = server.platform();
    let marker = uuid_like();
    let fake_worker = unique("fake-worker");
    let at = |i: usize| past(i * 2);
    // 0..6: vm:snapshot, low queue; 6..10: integration:run, critical queue.
    let mut ids = Vec::new();
    for i in 0..10 {
        let task_type = if i < 6 {
            TaskType::VmSnapshot
        } else {
            TaskType::IntegrationRun
        };
        let mut t = new_task(task_type, json!({}), Some(&marker));
        t.priority = if i < 6 { 1 } else { 9 };
        t.target_worker_id = Some(fake_worker.clone());
        t.created_at = at(i);
        platform.queue.enqueue(&t).await.unwrap();
        ids.push(t.id);
    }
    // The fake worker leases two (they turn running, with its id); one is cancelled.
    for _ in 0..2 {
        platform
            .queue
            .lease(&fake_worker, Duration::from_secs(600))
            .await
            .unwrap()
            .unwrap();
    }
    let mut pending = None;
    for id in &ids {
        let (_, task) = server.get(&format!("/tasks/{id}")).await;
        if task["status"] == "pending" {
            pending = Some(id.clone());
            break;
        }
    }
    let pending = pending.unwrap();
    let (status, body) = server
        .post(&format!("/tasks/{pending}/cancel"), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");

    let count = |q: String| {
        let server = &server;
        let marker = marker.clone();
        async move {
            let (status, body) = server.get(&format!("/tasks?vm_id={marker}{q}")).await;
            assert_eq!(status, 200, "{q}: {body}");
            let n = body["tasks"].as_array().unwrap().len() as u64;
            assert_eq!(body["total"], n, "{body}");
            n
        }
    };
    assert_eq!(count(String::new()).await, 10);
    assert_eq!(count("&type=vm:snapshot".into()).await, 6);
    assert_eq!(count("&type=INTEGRATION:RUN".into()).await, 4);
    assert_eq!(count("&queue=low".into()).await, 6);
    assert_eq!(
        count("&queue=critical&type=integration:run".into()).await,
        4
    );
    assert_eq!(count("&queue=critical&type=vm:snapshot".into()).await, 0);
    assert_eq!(count(format!("&worker_id={fake_worker}")).await, 2);
    assert_eq!(count("&status=running".into()).await, 2);
    assert_eq!(count("&status=pending".into()).await, 7);
    assert_eq!(count("&status=cancelled".into()).await, 1);
    assert_eq!(
        count(format!("&status=running&worker_id={fake_worker}")).await,
        2
    );
    let after = at(4).to_rfc3339();
    let before = at(8).to_rfc3339();
    assert_eq!(count(format!("&created_after={}", enc(&after))).await, 6);
    assert_eq!(count(format!("&created_before={}", enc(&before))).await, 8);
    assert_eq!(
        count(format!(
            "&created_after={}&created_before={}",
            enc(&after),
            enc(&before)
        ))
        .await,
        4
    );
    // Offsets other than Z work too.
    let (status, body) = server
        .get("/tasks?created_after=2026-01-01T02:00:00%2B02:00")
        .await;
    assert_eq!(status, 200, "{body}");
}

fn enc(s: &str) -> String {
    s.replace('+', "%2B")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_limits_cursors_and_filters_are_400() {
    let server = TestServer::start().await;
    let forged = base64_url("v2:1:x");
    let bad = [
        "/vms?limit=0",
        "/vms?limit=1001",
        "/vms?limit=-1",
        "/vms?limit=ten",
        "/vms?cursor=not-a-cursor!",
        "/vms?offset=10",
        &format!("/vms?cursor={forged}"),
        "/vms/x/executions?limit=0",
        "/vms/x/executions?cursor=%%%",
        "/tasks?limit=5000",
        "/tasks?cursor=AAAA",
        "/tasks?status=bogus",
        "/tasks?type=vm:explode",
        "/tasks?queue=urgent",
        "/tasks?created_after=yesterday",
        "/tasks?created_before=2026-13-01T00:00:00Z",
        "/tasks?sort=asc",
    ];
    for path in bad {
        let (status, body) = server.get(path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["code"], 400, "{path}: {body}");
        assert_eq!(body["error"], "Bad Request", "{path}: {body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let (_, body) = server.get("/vms?limit=0").await;
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("between 1 and 1000"),
        "{body}"
    );
    // Limits at the edges are fine.
    for path in [
        "/vms?limit=1",
        "/vms?limit=1000",
        "/tasks?limit=1000&cursor=",
    ] {
        let (status, body) = server.get(path).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    // A cursor from one list is only a position: it works on another list too.
    let cursor = base64_url("v1:1700000000000:zzzz");
    let (status, body) = server.get(&format!("/tasks?cursor={cursor}")).await;
    assert_eq!(status, 200, "{body}");
}

fn base64_url(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}
