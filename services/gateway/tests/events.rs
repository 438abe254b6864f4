//! `GET /api/v1/events` against a real platform: live over SSE and WebSocket with
//! filters, resumption after a disconnect (exactly the missed events, in order, no
//! duplicates), and refused filters.
#![allow(clippy::unwrap_used)]

mod common;
mod stream_client;

use std::time::Duration;

use aetherium_types::EventFilter;
use common::{TestServer, random_hex};
use serde_json::{Value, json};
use stream_client::{SseClient, open_ws, ws_next};

const WAIT: Duration = Duration::from_secs(90);

fn seq_of(event: &Value) -> i64 {
    event["seq"].as_i64().unwrap()
}

/// Reads events until `done` holds for one (which is included); panics on timeout.
async fn sse_until(sse: &mut SseClient, done: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut got = Vec::new();
    loop {
        let event = sse
            .next(WAIT)
            .await
            .expect("stream ended before the awaited event");
        assert_eq!(
            event.id.as_deref().map(|id| id.parse::<i64>().unwrap()),
            Some(seq_of(&event.data)),
            "the SSE id is the event's seq"
        );
        let stop = done(&event.data);
        got.push(event.data);
        if stop {
            return got;
        }
    }
}

fn assert_increasing(events: &[Value]) {
    for pair in events.windows(2) {
        assert!(
            seq_of(&pair[0]) < seq_of(&pair[1]),
            "seqs must increase: {} then {}",
            pair[0],
            pair[1]
        );
    }
}

#[tokio::test]
async fn a_new_vm_shows_up_live_over_sse_and_websocket_with_filters() {
    let server = TestServer::start().await;
    let mut sse = SseClient::open(&server, "/events?types=vm.*,task.*", None).await;
    let mut ws = open_ws(&server, "/events?types=vm.started").await;

    let name = format!("ev-{}", &random_hex()[..8]);
    let (status, body) = server.post("/vms?wait=90s", json!({"name": name})).await;
    assert_eq!(status, 200, "{body}");
    let vm_id = body["vm_id"].as_str().unwrap().to_string();
    let task_id = body["task_id"].as_str().unwrap().to_string();

    let events = sse_until(&mut sse, |e| {
        e["type"] == "task.completed" && e["resource_id"] == task_id.as_str()
    })
    .await;
    assert_increasing(&events);
    let types_about = |id: &str| -> Vec<String> {
        events
            .iter()
            .filter(|e| e["resource_id"] == id)
            .map(|e| e["type"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(types_about(&vm_id), vec!["vm.created", "vm.started"]);
    assert_eq!(
        types_about(&task_id),
        vec!["task.created", "task.started", "task.completed"]
    );
    assert!(
        events.iter().all(|e| {
            let t = e["type"].as_str().unwrap();
            t.starts_with("vm.") || t.starts_with("task.")
        }),
        "only vm.* and task.*: {events:?}"
    );

    let started = ws_next(&mut ws, WAIT)
        .await
        .expect("vm.started over the WebSocket");
    assert_eq!(started["type"], "vm.started");
    assert_eq!(started["resource_id"], vm_id.as_str());
    assert!(started["seq"].as_i64().unwrap() > 0);
    assert_eq!(started["data"]["status"], "RUNNING");

    // A resource filter: only this VM's events, and nothing else comes through.
    let mut mine = open_ws(&server, &format!("/events?resource_id={vm_id}")).await;
    let (status, _) = server.delete(&format!("/vms/{vm_id}?wait=60s")).await;
    assert_eq!(status, 200);
    let deleted = ws_next(&mut mine, WAIT).await.unwrap();
    assert_eq!(deleted["type"], "vm.deleted");
    assert_eq!(deleted["resource_id"], vm_id.as_str());
    assert!(
        ws_next(&mut mine, Duration::from_millis(500))
            .await
            .is_none()
    );
}

#[tokio::test]
async fn a_reconnecting_client_gets_exactly_the_missed_events() {
    let server = TestServer::start().await;
    let platform = server.platform();

    // Connected: see the VM start, remember the last seq, disconnect.
    let mut sse = SseClient::open(&server, "/events", None).await;
    let vm_id = server
        .running_vm(&format!("rs-{}", &random_hex()[..8]))
        .await;
    let seen = sse_until(&mut sse, |e| {
        e["type"] == "vm.started" && e["resource_id"] == vm_id.as_str()
    })
    .await;
    assert_increasing(&seen);
    let last = seq_of(seen.last().unwrap());
    drop(sse);

    // While disconnected: a command runs (task + execution events).
    let (status, body) = server
        .post(
            &format!("/vms/{vm_id}/execute?wait=30s"),
            json!({"command": "echo", "args": ["hi"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server
        .post(
            &format!("/vms/{vm_id}/execute?wait=30s"),
            json!({"command": "sh", "args": ["-c", "exit 3"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let missed = platform
        .events
        .read_events(last, &EventFilter::default(), 1000)
        .await
        .unwrap();
    assert!(
        missed
            .iter()
            .any(|e| e.event_type.as_str() == "execution.completed"),
        "{missed:?}"
    );
    let missed_seqs: Vec<i64> = missed.iter().map(|e| e.seq.unwrap()).collect();

    // Resume three ways: ?after= over SSE, Last-Event-ID over SSE, ?after= over WS.
    let mut by_after = SseClient::open(&server, &format!("/events?after={last}"), None).await;
    let mut by_header = SseClient::open(&server, "/events", Some(&last.to_string())).await;
    let mut by_ws = open_ws(&server, &format!("/events?after={last}")).await;
    for label in ["after", "Last-Event-ID", "websocket"] {
        let mut got = Vec::new();
        for _ in 0..missed_seqs.len() {
            let event = match label {
                "after" => by_after.next(WAIT).await.map(|e| e.data),
                "Last-Event-ID" => by_header.next(WAIT).await.map(|e| e.data),
                _ => ws_next(&mut by_ws, WAIT).await,
            }
            .unwrap_or_else(|| panic!("{label}: stream ended early"));
            got.push(seq_of(&event));
        }
        assert_eq!(
            got, missed_seqs,
            "{label}: exactly the missed events, in order"
        );
    }

    // After the replay the streams are live: a new event arrives once, with no repeat.
    let (status, _) = server.delete(&format!("/vms/{vm_id}?wait=60s")).await;
    assert_eq!(status, 200);
    let deleted = sse_until(&mut by_after, |e| e["type"] == "vm.deleted").await;
    let mut all: Vec<i64> = missed_seqs.clone();
    all.extend(deleted.iter().map(seq_of));
    let mut sorted = all.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(all, sorted, "no duplicates, in order");

    // execution.failed is its own type; a non-zero exit is still `completed`.
    let exits: Vec<&str> = missed
        .iter()
        .filter(|e| e.event_type.category() == "execution")
        .map(|e| e.event_type.as_str())
        .collect();
    assert_eq!(
        exits,
        vec![
            "execution.started",
            "execution.completed",
            "execution.started",
            "execution.completed"
        ]
    );
}

/// This worker's `worker.*` events once there are at least `n` (they are stored by
/// a writer task, a moment after they happen).
async fn worker_events(server: &TestServer, n: usize) -> Vec<String> {
    let (types, categories) = EventFilter::parse_types("worker.*").unwrap();
    let filter = EventFilter {
        types,
        categories,
        resource_id: Some(server.worker_id.clone()),
    };
    let mut names = Vec::new();
    for _ in 0..50 {
        let events = server
            .platform()
            .events
            .read_events(0, &filter, 100)
            .await
            .unwrap();
        names = events
            .iter()
            .map(|e| e.event_type.as_str().to_string())
            .collect();
        if names.len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    names
}

#[tokio::test]
async fn worker_events_are_published() {
    let mut server = TestServer::start().await;
    assert_eq!(worker_events(&server, 1).await, vec!["worker.online"]);
    server.restart().await;
    assert_eq!(
        worker_events(&server, 4).await,
        vec![
            "worker.online",
            "worker.draining",
            "worker.offline",
            "worker.online"
        ]
    );
}

#[tokio::test]
async fn bad_filters_are_400_in_the_error_shape() {
    let server = TestServer::start().await;
    for path in [
        "/events?types=vm.bogus",
        "/events?types=nope.*",
        "/events?after=abc",
        "/events?after=-5",
        "/events?colour=red",
    ] {
        let (status, body) = server.get(path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["code"], 400, "{path}: {body}");
        assert_eq!(body["error"], "Bad Request");
        assert!(body["message"].as_str().unwrap().len() > 5, "{body}");
    }
    let resp = server
        .request(reqwest::Method::GET, "/events")
        .header("Last-Event-ID", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    // Without a token the stream is refused like any other route.
    let resp = reqwest::get(format!("{}/api/v1/events", server.url))
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}
