//! Workers and the cluster against a real platform: drain and activate, placement
//! (capability, labels, free capacity), the offline sweep and its lost VMs, the
//! cluster views. Other workers are staged as rows (one heartbeating "now", one
//! stale): a second real worker process is not needed to test what the platform
//! decides about them.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use aetherium_core::services::{ExecPayload, new_task};
use aetherium_types::{
    EventType, Execution, ExecutionStatus, Orchestrator, TaskStatus, TaskType, Vm, VmStatus,
    Worker, WorkerStatus, new_id,
};
use chrono::Utc;
use common::{TestServer, random_hex};
use serde_json::json;

/// Checks that `status` is declared for `method template` and that `body`
/// validates against the declared JSON schema (the spec is the contract).
fn conforms(method: &str, template: &str, status: u16, body: &serde_json::Value) {
    let spec: serde_json::Value =
        serde_json::from_str(aetherium_gateway::openapi::spec_json()).unwrap();
    let response = &spec["paths"][template][method]["responses"][status.to_string()];
    assert!(
        response.is_object(),
        "{method} {template} answered {status}, which the spec does not declare; body: {body}"
    );
    let escape = |s: &str| {
        s.replace('~', "~0")
            .replace('/', "~1")
            .replace('{', "%7B")
            .replace('}', "%7D")
    };
    let mut schema = spec.clone();
    schema["$ref"] = json!(format!(
        "#/paths/{}/{method}/responses/{status}/content/application~1json/schema",
        escape(template)
    ));
    let validator = jsonschema::draft202012::new(&schema).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(body)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{method} {template} {status}: {errors:?}; body: {body}"
    );
}

/// A worker row as a heartbeat would write it, seen `age` ago.
fn staged_worker(id: &str, age: Duration, max_vms: u32, labels: serde_json::Value) -> Worker {
    let seen = Utc::now() - chrono::Duration::from_std(age).unwrap();
    Worker {
        id: id.to_string(),
        hostname: "staged".into(),
        address: String::new(),
        zone: "zone-b".into(),
        status: WorkerStatus::Active,
        capabilities: vec!["docker".into()],
        labels: labels.as_object().cloned().unwrap_or_default(),
        cpu_cores: 8,
        memory_mb: 0,
        max_vms,
        vm_count: 0,
        status_message: None,
        started_at: seen,
        last_seen: seen,
    }
}

/// The staged worker heartbeats (now).
async fn refresh(platform: &aetherium_core::Platform, id: &str) {
    platform
        .store
        .upsert_worker(&staged_worker(
            id,
            Duration::ZERO,
            500,
            json!({"gpu": "true"}),
        ))
        .await
        .unwrap();
}

/// A RUNNING VM row owned by `worker_id` (no sandbox behind it).
fn staged_vm(worker_id: &str) -> Vm {
    let id = new_id();
    Vm {
        name: format!("staged-{}", &id[..8]),
        id,
        status: VmStatus::Running,
        orchestrator: Orchestrator::Docker,
        image: "none".into(),
        vcpu_count: 2,
        memory_mb: 512,
        disk_mb: None,
        created_by: None,
        network_policy: None,
        placement: None,
        kernel_path: None,
        rootfs_path: None,
        socket_path: None,
        worker_id: Some(worker_id.to_string()),
        error: None,
        created_at: Utc::now(),
        started_at: Some(Utc::now()),
        stopped_at: None,
        expires_at: None,
        metadata: Default::default(),
    }
}

#[tokio::test]
async fn drain_stops_placement_but_keeps_serving_and_activate_restores_it() {
    let mut server = TestServer::start().await;
    let me = server.worker_id.clone();

    // The process's own worker is listed, live and active.
    let (status, body) = server.get("/workers").await;
    assert_eq!(status, 200, "{body}");
    conforms("get", "/api/v1/workers", 200, &body);
    assert_eq!(body["total"], 1, "{body}");
    let w = &body["workers"][0];
    assert_eq!(w["id"], me.as_str());
    assert_eq!(w["status"], "active");
    assert_eq!(w["live"], true);
    assert_eq!(w["capabilities"], json!(["docker"]));
    assert_eq!(w["free_slots"], w["max_vms"]);

    let vm = server
        .running_vm(&format!("drain-{}", &random_hex()[..6]))
        .await;
    let (_, w) = server.get(&format!("/workers/{me}")).await;
    assert_eq!(w["used"]["vms"], 1, "{w}");
    assert_eq!(w["used"]["memory_mb"], 256, "{w}");

    // Drain needs the admin role.
    let operator = server.create_key("operator").await;
    let (status, body) = server
        .call_as(
            &operator,
            reqwest::Method::POST,
            &format!("/api/v1/workers/{me}/drain"),
            None,
        )
        .await;
    assert_eq!(status, 403, "{body}");
    conforms("post", "/api/v1/workers/{id}/drain", 403, &body);

    let (status, body) = server
        .post(&format!("/workers/{me}/drain"), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    conforms("post", "/api/v1/workers/{id}/drain", 200, &body);
    assert_eq!(body["status"], "draining", "{body}");

    // No new VM: the answer names the draining worker.
    let (status, body) = server.post("/vms", json!({})).await;
    assert_eq!(status, 503, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains(&me) && message.contains("draining"),
        "{message}"
    );
    assert_eq!(body["code"], 503);
    conforms("post", "/api/v1/vms", 503, &body);

    // Heartbeats (every second here) keep the drain.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, w) = server.get(&format!("/workers/{me}")).await;
    assert_eq!(w["status"], "draining", "{w}");
    conforms("get", "/api/v1/workers/{id}", status, &w);
    let (_, listed) = server.get("/workers?status=draining").await;
    assert_eq!(listed["total"], 1, "{listed}");
    let (_, listed) = server.get("/workers?status=active").await;
    assert_eq!(listed["total"], 0, "{listed}");

    // Its VMs are still served.
    let (status, body) = server
        .post(
            &format!("/vms/{vm}/execute?wait=30s"),
            json!({"command": "echo", "args": ["still here"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["execution"]["stdout"], "still here\n", "{body}");

    // A restart (`aetherium up` stopped and started) does not forget the drain.
    server.restart().await;
    let (_, w) = server.get(&format!("/workers/{me}")).await;
    assert_eq!(w["status"], "draining", "{w}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, w) = server.get(&format!("/workers/{me}")).await;
    assert_eq!(w["status"], "draining", "still, after heartbeats: {w}");

    let (status, stats) = server.get("/cluster/stats").await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["workers"]["draining"], 1, "{stats}");
    assert_eq!(stats["workers"]["active"], 0, "{stats}");

    // Activate: VMs can be placed again.
    let (status, body) = server
        .post(&format!("/workers/{me}/activate"), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    conforms("post", "/api/v1/workers/{id}/activate", 200, &body);
    assert_eq!(body["status"], "active", "{body}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, w) = server.get(&format!("/workers/{me}")).await;
    assert_eq!(w["status"], "active", "{w}");
    let (status, body) = server.post("/vms", json!({})).await;
    assert_eq!(status, 202, "{body}");
    let second = body["vm_id"].as_str().unwrap().to_string();
    assert_eq!(body["vm"]["worker_id"], me.as_str(), "{body}");

    // Views: the worker's VMs (paged), the cluster's numbers.
    let (status, page1) = server.get(&format!("/workers/{me}/vms?limit=1")).await;
    assert_eq!(status, 200, "{page1}");
    conforms("get", "/api/v1/workers/{id}/vms", 200, &page1);
    assert_eq!(page1["total"], 2, "{page1}");
    assert_eq!(page1["vms"].as_array().unwrap().len(), 1);
    let cursor = page1["next_cursor"].as_str().unwrap();
    let (_, page2) = server
        .get(&format!("/workers/{me}/vms?limit=1&cursor={cursor}"))
        .await;
    assert_eq!(page2["vms"].as_array().unwrap().len(), 1, "{page2}");
    assert!(page2["next_cursor"].is_null(), "{page2}");
    let ids: Vec<&str> = [&page1, &page2]
        .iter()
        .map(|p| p["vms"][0]["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&vm.as_str()) && ids.contains(&second.as_str()),
        "{ids:?}"
    );

    let (status, stats) = server.get("/cluster/stats").await;
    conforms("get", "/api/v1/cluster/stats", status, &stats);
    assert_eq!(stats["workers"]["total"], 1, "{stats}");
    assert_eq!(stats["workers"]["active"], 1, "{stats}");
    assert_eq!(stats["vms_total"], 2, "{stats}");
    assert_eq!(stats["slots_used"], 2, "{stats}");
    assert_eq!(stats["memory_mb_used"], 512, "{stats}");
    assert_eq!(stats["cpu_cores_used"], 2, "{stats}");
    let max_vms = stats["slots_total"].as_u64().unwrap();
    assert_eq!(stats["slots_free"], max_vms - 2, "{stats}");
    assert_eq!(stats["zones"], json!(["default"]), "{stats}");

    let (status, dist) = server.get("/cluster/distribution").await;
    assert_eq!(status, 200, "{dist}");
    conforms("get", "/api/v1/cluster/distribution", 200, &dist);
    assert_eq!(dist["total_vms"], 2, "{dist}");
    assert_eq!(dist["workers"][0]["worker_id"], me.as_str(), "{dist}");
    assert_eq!(dist["workers"][0]["share"], 1.0, "{dist}");
    assert_eq!(dist["zones"][0]["zone"], "default", "{dist}");
    assert_eq!(dist["zones"][0]["vms"], 2, "{dist}");

    // Unknown workers and bad filters.
    let (status, body) = server.get("/workers/nope").await;
    assert_eq!(status, 404, "{body}");
    conforms("get", "/api/v1/workers/{id}", 404, &body);
    let (status, body) = server.post("/workers/nope/drain", json!({})).await;
    assert_eq!(status, 404, "{body}");
    conforms("post", "/api/v1/workers/{id}/drain", 404, &body);
    let (status, body) = server.get("/workers?status=sleepy").await;
    assert_eq!(status, 400, "{body}");
    conforms("get", "/api/v1/workers", 400, &body);
    let (status, body) = server.get("/workers/nope/vms").await;
    assert_eq!(status, 404, "{body}");
    conforms("get", "/api/v1/workers/{id}/vms", 404, &body);

    for id in [&vm, &second] {
        let (status, body) = server.delete(&format!("/vms/{id}?wait=60s")).await;
        assert_eq!(status, 200, "{body}");
    }
}

#[tokio::test]
async fn placement_follows_labels_and_capacity_and_an_offline_worker_loses_its_vms() {
    let server = TestServer::start().await;
    let platform = server.platform();
    let me = server.worker_id.clone();
    let mut events = platform.bus.subscribe();

    // A second worker, heartbeating now, with a label and more free slots.
    let other = format!("staged-{}", &random_hex()[..8]);
    platform
        .store
        .upsert_worker(&staged_worker(
            &other,
            Duration::ZERO,
            500,
            json!({"gpu": "true"}),
        ))
        .await
        .unwrap();

    // Labels: only it has a GPU; nobody has a TPU (503 saying why, per worker).
    // (Staged rows are refreshed before each use: the sweep declares a row offline
    // 3 s after its last "heartbeat" here.)
    refresh(&platform, &other).await;
    let (status, body) = server
        .post("/vms", json!({"placement": {"labels": {"gpu": "true"}}}))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["vm"]["worker_id"], other.as_str(), "{body}");
    let gpu_vm = body["vm_id"].as_str().unwrap().to_string();
    let create_task = body["task_id"].as_str().unwrap().to_string();
    let (status, body) = server
        .post("/vms", json!({"placement": {"labels": {"tpu": "v5"}}}))
        .await;
    // No worker could ever take it: 409, not a passing 503.
    assert_eq!(status, 409, "{body}");
    conforms("post", "/api/v1/vms", 409, &body);
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains(&me) && message.contains(&other) && message.contains("placement"),
        "{message}"
    );
    // More vCPUs than any worker has cores: Docker would refuse the limit on the
    // worker, so it is refused here, 409 naming each worker's cores, and not recorded.
    let my_cores = platform
        .store
        .get_worker(&me)
        .await
        .unwrap()
        .unwrap()
        .cpu_cores;
    let too_many = my_cores.max(8) + 1;
    let name = format!("too-wide-{}", &random_hex()[..8]);
    let (status, body) = server
        .post("/vms", json!({"name": name, "vcpus": too_many}))
        .await;
    assert_eq!(status, 409, "{body}");
    conforms("post", "/api/v1/vms", 409, &body);
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains(&format!(
            "{me} has {my_cores} CPU cores, {too_many} vCPUs asked"
        )) && message.contains(&format!("{other} has 8 CPU cores")),
        "{message}"
    );
    let (status, _) = server.get(&format!("/vms/{name}")).await;
    assert_eq!(status, 404);

    // A zone selector, and a malformed one.
    let (status, body) = server
        .post("/vms", json!({"placement": {"zone": "zone-c"}}))
        .await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = server
        .post("/vms", json!({"placement": {"zone": "a b"}}))
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = server
        .post("/vms", json!({"placement": {"labels": {"": "x"}}}))
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = server
        .post("/vms", json!({"placement": {"rack": "3"}}))
        .await;
    assert_eq!(status, 400, "{body}");

    // Capacity: with its 500 slots it has the most room, and the zone filter finds it.
    let (_, listed) = server.get("/workers?zone=zone-b").await;
    assert_eq!(listed["total"], 1, "{listed}");
    conforms("get", "/api/v1/workers", 200, &listed);
    assert_eq!(listed["workers"][0]["id"], other.as_str());
    assert_eq!(listed["workers"][0]["used"]["vms"], 1, "{listed}");

    // A RUNNING VM on it, with an execution queued for it.
    refresh(&platform, &other).await;
    let lost = staged_vm(&other);
    platform.store.insert_vm(&lost).await.unwrap();
    let (status, body) = server
        .post(
            &format!("/vms/{}/execute", lost.id),
            json!({"command": "true"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let queued_exec = body["execution_id"].as_str().unwrap().to_string();
    let queued_task = body["task_id"].as_str().unwrap().to_string();

    // A task it had leased when it stopped (its lease then expires).
    let execution = Execution {
        id: new_id(),
        vm_id: lost.id.clone(),
        task_id: None,
        command: "sleep".into(),
        args: vec!["1".into()],
        status: ExecutionStatus::Pending,
        exit_code: None,
        stdout: String::new(),
        stderr: String::new(),
        error: None,
        created_at: Utc::now(),
        started_at: None,
        completed_at: None,
        duration_ms: None,
        metadata: Default::default(),
        created_by: None,
    };
    platform.store.insert_execution(&execution).await.unwrap();
    let payload = ExecPayload {
        execution_id: execution.id.clone(),
        vm_id: lost.id.clone(),
        command: "sleep".into(),
        args: vec!["1".into()],
        env: Default::default(),
        env_sealed: None,
        cwd: None,
        timeout_seconds: 10,
    };
    let mut leased = new_task(
        TaskType::VmExecute,
        serde_json::to_value(&payload).unwrap(),
        Some(&lost.id),
    );
    leased.target_worker_id = Some(other.clone());
    leased.priority = 9;
    platform.queue.enqueue(&leased).await.unwrap();
    let mut got = None;
    for _ in 0..20 {
        if let Some(t) = platform
            .queue
            .lease(&other, Duration::from_millis(500))
            .await
            .unwrap()
            && t.id == leased.id
        {
            got = Some(t);
            break;
        }
    }
    assert!(got.is_some(), "the staged worker could not lease its task");

    // It stops heartbeating: its row grows stale.
    platform
        .store
        .upsert_worker(&staged_worker(
            &other,
            Duration::from_secs(300),
            500,
            json!({"gpu": "true"}),
        ))
        .await
        .unwrap();

    // Before the sweep reaches it: VM-bound work is refused at once, naming it.
    let (status, body) = server
        .post(
            &format!("/vms/{}/execute", lost.id),
            json!({"command": "true"}),
        )
        .await;
    if status == 503 {
        conforms("post", "/api/v1/vms/{id}/execute", 503, &body);
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains(&other) && message.contains("offline"),
            "{message}"
        );
    } else {
        // The sweep (every heartbeat, 1 s here) was quicker: the VM is FAILED.
        assert_eq!(status, 409, "{body}");
    }

    // The sweep (run by the local worker every heartbeat) declares it offline and
    // marks its VMs lost.
    let (_, vm) = server
        .wait_vm(&lost.id, 15, |_, b| b["status"] == "FAILED")
        .await;
    assert_eq!(vm["status"], "FAILED", "{vm}");
    let error = vm["error"].as_str().unwrap();
    assert!(
        error.contains(&other) && error.contains("went offline"),
        "{error}"
    );
    // The sweep marks the worker's VMs one after another: the other may come a
    // moment later.
    let (_, gpu) = server
        .wait_vm(&gpu_vm, 15, |_, b| b["status"] == "FAILED")
        .await;
    assert_eq!(gpu["status"], "FAILED", "{gpu}");
    let (status, w) = server.get(&format!("/workers/{other}")).await;
    conforms("get", "/api/v1/workers/{id}", status, &w);
    assert_eq!(w["status"], "offline", "{w}");
    assert_eq!(w["live"], false, "{w}");

    // Its labels still match, but it cannot take the VM now: 503, naming it.
    let (status, body) = server
        .post("/vms", json!({"placement": {"labels": {"gpu": "true"}}}))
        .await;
    assert_eq!(status, 503, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains(&other) && message.contains("offline"),
        "{message}"
    );

    // Execute on it now: 409, the VM is FAILED, at once.
    let (status, body) = server
        .post(
            &format!("/vms/{}/execute", lost.id),
            json!({"command": "true"}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    // Drain/activate of an offline worker: 409.
    let (status, body) = server
        .post(&format!("/workers/{other}/drain"), json!({}))
        .await;
    assert_eq!(status, 409, "{body}");
    conforms("post", "/api/v1/workers/{id}/drain", 409, &body);
    let (status, body) = server
        .post(&format!("/workers/{other}/activate"), json!({}))
        .await;
    assert_eq!(status, 409, "{body}");

    // What only it could run is cancelled, and says why: the vm:create it never
    // started, the command queued for its VM, and (once its lease expired and the
    // queue put it back) the task it had leased.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut all_done = true;
        for id in [&create_task, &queued_task, &leased.id] {
            let task = platform.get_task(id).await.unwrap();
            if task.status != TaskStatus::Cancelled {
                all_done = false;
            }
        }
        if all_done {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "tasks bound to the offline worker were not cancelled"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let leased_now = platform.get_task(&leased.id).await.unwrap();
    assert!(
        leased_now.error.as_deref().unwrap_or("").contains(&other),
        "{leased_now:?}"
    );
    for id in [&queued_exec, &execution.id] {
        let e = platform.get_execution(id).await.unwrap();
        assert_eq!(e.status, ExecutionStatus::Failed, "{e:?}");
        assert!(e.error.as_deref().unwrap_or("").contains(&other), "{e:?}");
    }

    // The sweep is idempotent: nothing more to declare.
    assert!(platform.sweep_offline_workers().await.unwrap().is_empty());

    // worker.offline was announced once.
    let mut offline_events = 0;
    while let Ok(e) = events.try_recv() {
        if e.event_type == EventType::WorkerOffline && e.resource_id == other {
            offline_events += 1;
        }
    }
    assert_eq!(offline_events, 1);

    // Stats count it offline, and its capacity out.
    let (status, stats) = server.get("/cluster/stats").await;
    conforms("get", "/api/v1/cluster/stats", status, &stats);
    assert_eq!(stats["workers"]["offline"], 1, "{stats}");
    assert_eq!(stats["workers"]["active"], 1, "{stats}");
    assert_eq!(stats["zones"], json!(["default", "zone-b"]), "{stats}");

    // A lost VM can still be deleted: any live worker removes its record.
    for id in [&lost.id, &gpu_vm] {
        let (status, body) = server.delete(&format!("/vms/{id}?wait=30s")).await;
        assert_eq!(status, 200, "{body}");
        let (status, _) = server.get(&format!("/vms/{id}")).await;
        assert_eq!(status, 404);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_creates_never_overfill_a_worker() {
    let server = TestServer::start_with_config(|c| c.worker.max_vms = 2).await;
    // Each waits until its sandbox runs, so that none is still being made when the
    // test server cleans up.
    let answers = futures::future::join_all((0..10).map(|i| {
        server.post(
            "/vms?wait=90s",
            json!({"name": format!("fill-{}-{i}", &random_hex()[..6])}),
        )
    }))
    .await;
    let accepted = answers.iter().filter(|(status, _)| *status == 200).count();
    for (status, body) in &answers {
        assert!(*status == 200 || *status == 503, "{status}: {body}");
        if *status == 503 {
            conforms("post", "/api/v1/vms", *status, body);
        }
    }
    assert!((1..=2).contains(&accepted), "{answers:?}");
    let (_, vms) = server.get("/vms").await;
    assert_eq!(vms["total"], accepted, "{vms}");
    // Whatever was refused left nothing: the worker takes exactly what is free.
    let (status, one_more) = server.post("/vms?wait=90s", json!({})).await;
    if accepted == 2 {
        assert_eq!(status, 503, "{one_more}");
    } else {
        assert_eq!(status, 200, "{one_more}");
    }
}
