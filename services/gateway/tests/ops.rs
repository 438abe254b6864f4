//! Operations endpoints and task cancellation, against a real embedded platform:
//! `/ready`, `/metrics`, `POST /tasks/{id}/cancel`.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use aetherium_core::services::{ExecPayload, new_task};
use aetherium_types::{Execution, ExecutionStatus, TaskType};
use common::{TOKEN, TestServer, container_of, docker, random_hex};
use serde_json::{Value, json};

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &random_hex()[..8])
}

async fn get_public(server: &TestServer, path: &str) -> (u16, Value) {
    let resp = reqwest::get(format!("{}{path}", server.url)).await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// `/ready` until it answers `want` (the first heartbeat may still be on its way).
async fn ready_becomes(server: &TestServer, path: &str, want: u16) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = get_public(server, path).await;
        if status == want {
            return body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{path} stayed {status}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_is_public_and_200_when_everything_answers() {
    let server = TestServer::start().await;
    for path in ["/ready", "/api/v1/ready"] {
        let body = ready_becomes(&server, path, 200).await;
        assert_eq!(body["status"], "ready", "{body}");
        for component in ["store", "queue", "workers"] {
            assert_eq!(body["components"][component]["status"], "healthy", "{body}");
        }
        assert!(body["timestamp"].is_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_is_503_with_the_reason_when_docker_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let dead_socket = format!("unix://{}/docker.sock", dir.path().display());
    let server = TestServer::start_with_docker(&dead_socket).await;
    for path in ["/ready", "/api/v1/ready"] {
        let body = ready_becomes(&server, path, 503).await;
        assert_eq!(body["status"], "not_ready", "{body}");
        assert_eq!(body["components"]["store"]["status"], "healthy", "{body}");
        assert_eq!(body["components"]["queue"]["status"], "healthy", "{body}");
        assert_eq!(
            body["components"]["workers"]["status"], "unhealthy",
            "{body}"
        );
        assert!(
            body["components"]["workers"]["message"]
                .as_str()
                .unwrap()
                .contains("unhealthy"),
            "{body}"
        );
    }
    // Liveness stays trivial: the process serves.
    let resp = reqwest::get(format!("{}/health", server.url))
        .await
        .unwrap();
    assert!(resp.status().as_u16() == 200 || resp.status().as_u16() == 503);
}

/// The value of the first sample of `name` whose labels include every `labels` pair.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn scrape(server: &TestServer, path: &str) -> String {
    let resp = server
        .http
        .get(format!("{}{path}", server.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers()[http::header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_string();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    resp.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_a_key_and_show_requests_vms_queues_and_exec_durations() {
    let server = TestServer::start().await;
    for path in ["/metrics", "/api/v1/metrics"] {
        let resp = reqwest::get(format!("{}{path}", server.url)).await.unwrap();
        assert_eq!(resp.status(), 401, "{path}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["code"], 401);
        let resp = server
            .http
            .get(format!("{}{path}", server.url))
            .bearer_auth("wrong-key")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{path}");
    }

    // Counters are process-wide (other tests' servers share them): compare deltas.
    let before = scrape(&server, "/metrics").await;
    let route = [
        ("method", "GET"),
        ("route", "/api/v1/vms/{id}"),
        ("status", "404"),
    ];
    let n0 = sample(&before, "aetherium_http_requests_total", &route).unwrap_or(0.0);
    for _ in 0..3 {
        let (status, _) = server.get(&format!("/vms/{}", unique("nope"))).await;
        assert_eq!(status, 404);
    }
    let (status, _) = server.get("/no/such/route").await;
    assert_eq!(status, 404);

    let name = unique("metrics");
    let vm_id = server.running_vm(&name).await;
    let (status, body) = server
        .post(
            &format!("/vms/{vm_id}/execute?wait=60s"),
            json!({"command": "sh", "args": ["-c", "sleep 0.2; echo hi"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let text = scrape(&server, "/api/v1/metrics").await;
    let n1 = sample(&text, "aetherium_http_requests_total", &route).unwrap();
    assert!(n1 - n0 >= 3.0, "{n0} -> {n1}");
    assert!(
        sample(
            &text,
            "aetherium_http_requests_total",
            &[("route", "unmatched"), ("status", "404")]
        )
        .is_some(),
        "{text}"
    );
    // Raw paths never become labels.
    assert!(!text.contains(&vm_id), "a VM id leaked into the labels");
    assert!(
        sample(
            &text,
            "aetherium_http_request_duration_seconds_count",
            &[("route", "/api/v1/vms/{id}/execute")]
        )
        .unwrap()
            >= 1.0,
        "{text}"
    );
    assert!(
        text.contains("aetherium_http_request_duration_seconds_bucket{"),
        "latencies are histograms: {text}"
    );
    // This platform's gauges are exact.
    assert_eq!(
        sample(&text, "aetherium_vms", &[("status", "RUNNING")]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "aetherium_vms", &[("status", "FAILED")]),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, "aetherium_workers", &[("status", "active")]),
        Some(1.0)
    );
    // vm:create and vm:execute ran on the `high` queue (priority 5).
    assert!(
        sample(
            &text,
            "aetherium_queue_tasks",
            &[("queue", "high"), ("state", "completed")]
        )
        .unwrap()
            >= 1.0,
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "aetherium_queue_tasks",
            &[("queue", "low"), ("state", "pending")]
        ),
        Some(0.0)
    );
    assert!(
        sample(
            &text,
            "aetherium_exec_duration_seconds_count",
            &[("kind", "queued"), ("outcome", "completed")]
        )
        .unwrap()
            >= 1.0,
        "{text}"
    );

    // A streamed command is timed as `stream`.
    let resp = server
        .request(reqwest::Method::POST, &format!("/vms/{vm_id}/exec/stream"))
        .json(&json!({"command": "true"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let _ = resp.text().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = scrape(&server, "/metrics").await;
        if sample(
            &text,
            "aetherium_exec_duration_seconds_count",
            &[("kind", "stream"), ("outcome", "completed")],
        )
        .is_some()
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls `GET /tasks/{id}` until its status is `want`.
async fn task_becomes(server: &TestServer, id: &str, want: &str, secs: u64) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let (status, task) = server.get(&format!("/tasks/{id}")).await;
        assert_eq!(status, 200, "{task}");
        if task["status"] == want {
            return task;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "task {id} never became {want}: {task}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The command lines of the processes in a VM's container.
fn processes(vm_id: &str) -> String {
    let out = docker(&[
        "exec",
        &container_of(vm_id),
        "sh",
        "-c",
        "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done",
    ]);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_tasks_that_have_not_started_or_have_finished() {
    let server = TestServer::start().await;
    let platform = server.platform();
    let vm_id = server.running_vm(&unique("cancel")).await;

    // A vm:execute waiting for its retry (scheduled an hour out): cancelled at once,
    // its execution fails, and it never runs.
    let execution = Execution {
        id: aetherium_types::new_id(),
        vm_id: vm_id.clone(),
        task_id: None,
        command: "touch".into(),
        args: vec!["/tmp/should-not-exist".into()],
        status: ExecutionStatus::Pending,
        exit_code: None,
        stdout: String::new(),
        stderr: String::new(),
        error: None,
        created_at: chrono::Utc::now(),
        started_at: None,
        completed_at: None,
        duration_ms: None,
        metadata: Default::default(),
        created_by: None,
    };
    let payload = ExecPayload {
        execution_id: execution.id.clone(),
        vm_id: vm_id.clone(),
        command: execution.command.clone(),
        args: execution.args.clone(),
        env: Default::default(),
        env_sealed: None,
        cwd: None,
        timeout_seconds: 10,
    };
    let mut task = new_task(
        TaskType::VmExecute,
        serde_json::to_value(&payload).unwrap(),
        Some(&vm_id),
    );
    task.scheduled_at = chrono::Utc::now() + chrono::Duration::hours(1);
    let mut execution = execution;
    execution.task_id = Some(task.id.clone());
    platform.store.insert_execution(&execution).await.unwrap();
    platform.queue.enqueue(&task).await.unwrap();
    let (_, stats) = server.get("/queue/stats").await;
    assert!(stats["scheduled"].as_u64().unwrap() >= 1, "{stats}");
    // Per queue too: all four, the delayed execute under its own queue.
    let queues = stats["queues"].as_array().unwrap();
    let names: Vec<&str> = queues
        .iter()
        .map(|q| q["queue"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["critical", "high", "default", "low"], "{stats}");
    let own = queues
        .iter()
        .find(|q| {
            q["queue"] == aetherium_types::task::QueueName::for_priority(task.priority).as_str()
        })
        .unwrap();
    assert!(own["scheduled"].as_u64().unwrap() >= 1, "{stats}");
    for field in [
        "pending",
        "active",
        "retry",
        "archived",
        "processed",
        "failed",
    ] {
        assert!(own[field].is_u64(), "{field} in {own}");
    }

    let (status, body) = server
        .post(&format!("/tasks/{}/cancel", task.id), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "cancelled", "{body}");
    assert_eq!(body["task"]["status"], "cancelled", "{body}");
    assert!(
        body["task"]["error"]
            .as_str()
            .unwrap()
            .contains("cancelled")
    );
    let (_, e) = server.get(&format!("/executions/{}", execution.id)).await;
    assert_eq!(e["status"], "failed", "{e}");
    assert!(e["error"].as_str().unwrap().contains("cancelled"), "{e}");
    let (_, tasks) = server.get("/tasks?status=cancelled").await;
    assert_eq!(tasks["total"], 1, "{tasks}");
    let (_, stats) = server.get("/queue/stats").await;
    assert_eq!(stats["cancelled"], 1, "{stats}");

    // Cancelled twice, finished, unknown, vm:delete.
    let (status, body) = server
        .post(&format!("/tasks/{}/cancel", task.id), json!({}))
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("already cancelled")
    );
    let (status, body) = server
        .post(
            &format!("/vms/{vm_id}/execute?wait=30s"),
            json!({"command": "true"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let done_task = body["task_id"].as_str().unwrap().to_string();
    task_becomes(&server, &done_task, "completed", 10).await;
    let (status, body) = server
        .post(&format!("/tasks/{done_task}/cancel"), json!({}))
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], 409);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("already completed"),
        "{body}"
    );
    let (status, body) = server
        .post(&format!("/tasks/{}/cancel", unique("nope")), json!({}))
        .await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = server
        .post(
            &format!("/tasks/{done_task}/cancel?wait=forever"),
            json!({}),
        )
        .await;
    assert_eq!(status, 400, "{body}");

    // The worker is still healthy and the cancelled command never ran.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!processes(&vm_id).is_empty());
    let out = docker(&["exec", &container_of(&vm_id), "ls", "/tmp"]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("should-not-exist"));

    let (_, deleted) = server.delete(&format!("/vms/{vm_id}")).await;
    let delete_task = deleted["task_id"].as_str().unwrap();
    let (status, body) = server
        .post(&format!("/tasks/{delete_task}/cancel"), json!({}))
        .await;
    assert_eq!(status, 409, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_command_kills_it_in_the_sandbox() {
    let server = TestServer::start().await;
    let vm_id = server.running_vm(&unique("cancel-run")).await;
    let marker = format!("{}", 6000 + (random_hex().as_bytes()[0] as u32 % 900));

    for wait in [false, true] {
        let (status, body) = server
            .post(
                &format!("/vms/{vm_id}/execute"),
                json!({"command": "sh", "args": ["-c", format!("echo started; exec sleep {marker}")]}),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        let task_id = body["task_id"].as_str().unwrap().to_string();
        let execution_id = body["execution_id"].as_str().unwrap().to_string();
        // Running, with the process up in the sandbox.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !processes(&vm_id).contains(&format!("sleep {marker}")) {
            assert!(
                std::time::Instant::now() < deadline,
                "the command never started"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        task_becomes(&server, &task_id, "running", 10).await;

        let path = if wait {
            format!("/tasks/{task_id}/cancel?wait=30s")
        } else {
            format!("/tasks/{task_id}/cancel")
        };
        let (status, body) = server.post(&path, json!({})).await;
        if wait {
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["status"], "cancelled", "{body}");
            assert_eq!(body["task"]["status"], "cancelled", "{body}");
        } else {
            assert_eq!(status, 202, "{body}");
            assert_eq!(body["status"], "cancelling", "{body}");
            assert_eq!(body["task"]["status"], "running", "{body}");
            task_becomes(&server, &task_id, "cancelled", 15).await;
        }
        let (_, task) = server.get(&format!("/tasks/{task_id}")).await;
        assert!(
            task["error"].as_str().unwrap().contains("cancelled"),
            "{task}"
        );
        let (_, e) = server.get(&format!("/executions/{execution_id}")).await;
        assert_eq!(e["status"], "failed", "{e}");
        assert!(e["error"].as_str().unwrap().contains("cancelled"), "{e}");
        assert!(e["completed_at"].is_string(), "{e}");
        // The process is gone from the sandbox.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while processes(&vm_id).contains(&format!("sleep {marker}")) {
            assert!(
                std::time::Instant::now() < deadline,
                "the command still runs: {}",
                processes(&vm_id)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // The VM is fine and takes more work.
    let (status, body) = server
        .post(
            &format!("/vms/{vm_id}/execute?wait=30s"),
            json!({"command": "echo", "args": ["still here"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["execution"]["stdout"], "still here\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_vm_create_leaves_no_sandbox() {
    let server = TestServer::start().await;
    let name = unique("cancel-create");
    let (status, body) = server.post("/vms", json!({"name": name})).await;
    assert_eq!(status, 202, "{body}");
    let task_id = body["task_id"].as_str().unwrap().to_string();
    let vm_id = body["vm_id"].as_str().unwrap().to_string();
    // Pending (200) or already starting (202): either way it ends cancelled.
    let (status, body) = server
        .post(&format!("/tasks/{task_id}/cancel?wait=60s"), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "cancelled", "{body}");
    let (status, vm) = server.get(&format!("/vms/{vm_id}")).await;
    assert_eq!(status, 200, "{vm}");
    assert_eq!(vm["status"], "FAILED", "{vm}");
    assert!(vm["error"].as_str().unwrap().contains("cancelled"), "{vm}");
    // No container for it, now or a moment later.
    for _ in 0..2 {
        let left = common::docker_ids(&["--filter", &format!("label=io.aetherium.vm_id={vm_id}")]);
        assert!(left.is_empty(), "containers left behind: {left:?}");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    // The name can be deleted like any failed VM.
    let (status, body) = server.delete(&format!("/vms/{vm_id}?wait=30s")).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_starting_vm_removes_its_sandbox() {
    let server = TestServer::start().await;
    // Catch a vm:create while it runs (the sandbox is being made): poll its task
    // and cancel as soon as it is leased. Creation is quick, so a try may lose the
    // race (the VM runs first: 409); a few tries are enough.
    let mut caught = false;
    for _ in 0..8 {
        let (status, body) = server
            .post("/vms", json!({"name": unique("starting")}))
            .await;
        assert_eq!(status, 202, "{body}");
        let task_id = body["task_id"].as_str().unwrap().to_string();
        let vm_id = body["vm_id"].as_str().unwrap().to_string();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (_, task) = server.get(&format!("/tasks/{task_id}")).await;
            if task["status"] != "pending" || std::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (status, body) = server
            .post(&format!("/tasks/{task_id}/cancel?wait=60s"), json!({}))
            .await;
        if status == 409 {
            // It finished first: the VM runs. Clean up and try again.
            let (status, _) = server.delete(&format!("/vms/{vm_id}?wait=60s")).await;
            assert_eq!(status, 200);
            continue;
        }
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["status"], "cancelled", "{body}");
        let (_, vm) = server.get(&format!("/vms/{vm_id}")).await;
        assert_eq!(vm["status"], "FAILED", "{vm}");
        let left = common::docker_ids(&["--filter", &format!("label=io.aetherium.vm_id={vm_id}")]);
        assert!(left.is_empty(), "containers left behind: {left:?}");
        if !body["task"]["started_at"].is_null() {
            assert_eq!(vm["error"], "VM creation was cancelled", "{vm}");
            caught = true;
            break;
        }
    }
    assert!(caught, "never caught a vm:create while it ran");
    // Nothing of this test's worker is left running.
    let (_, vms) = server.get("/vms?status=RUNNING").await;
    assert_eq!(vms["total"], 0, "{vms}");
    assert!(server.containers().is_empty(), "{:?}", server.containers());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_vm_create_before_it_runs_fails_the_vm_and_its_command() {
    let server = TestServer::start().await;
    let platform = server.platform();
    // A smart-execute's create whose attempt is scheduled an hour out (as after a
    // failed attempt's backoff), with the command it would then run.
    let (status, body) = server
        .post(
            "/smart-execute",
            json!({"command": "true", "vm_name": unique("later")}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    // Stage the state: cancel the real create first, then queue a later one.
    let first = body["task_id"].as_str().unwrap().to_string();
    let (status, cancelled) = server
        .post(&format!("/tasks/{first}/cancel?wait=60s"), json!({}))
        .await;
    let vm_id = body["vm_id"].as_str().unwrap().to_string();
    let execution_id = body["execution_id"].as_str().unwrap().to_string();
    // (409 when the VM was up before the cancel arrived: then the command ran.)
    if status != 409 {
        assert_eq!(status, 200, "{cancelled}");
        let (_, e) = server.get(&format!("/executions/{execution_id}")).await;
        assert_eq!(e["status"], "failed", "{e}");
        assert!(e["error"].as_str().unwrap().contains("cancelled"), "{e}");
    }

    // A vm:create task for a new CREATED VM, due in an hour.
    let mut vm: aetherium_types::Vm =
        serde_json::from_value(server.get(&format!("/vms/{vm_id}")).await.1).unwrap();
    vm.id = aetherium_types::new_id();
    vm.name = unique("later2");
    vm.status = aetherium_types::VmStatus::Created;
    vm.error = None;
    vm.worker_id = None;
    vm.created_at = chrono::Utc::now();
    platform.store.insert_vm(&vm).await.unwrap();
    let mut task = new_task(TaskType::VmCreate, json!({"vm_id": vm.id}), Some(&vm.id));
    task.scheduled_at = chrono::Utc::now() + chrono::Duration::hours(1);
    platform.queue.enqueue(&task).await.unwrap();
    let (status, body) = server
        .post(&format!("/tasks/{}/cancel", task.id), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["task"]["status"], "cancelled");
    let (_, got) = server.get(&format!("/vms/{}", vm.id)).await;
    assert_eq!(got["status"], "FAILED", "{got}");
    assert_eq!(
        got["error"], "VM creation was cancelled before it started",
        "{got}"
    );
    if status != 409 {
        assert!(server.containers().is_empty());
    }
}
