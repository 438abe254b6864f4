//! End-to-end tests of the API against a real Docker engine.
#![allow(clippy::unwrap_used)]

mod common;

use aetherium_core::store::{SqliteStore, Store};
use common::{TestServer, container_of, docker, random_hex};
use serde_json::json;

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &random_hex()[..8])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_lifecycle_create_exec_list_delete() {
    let server = TestServer::start().await;
    let name = unique("life");
    let (status, created) = server
        .post(
            "/vms?wait=90s",
            json!({"name": name, "vcpus": 1, "memory_mb": 256}),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["vm"]["status"], "RUNNING");
    assert_eq!(created["status"], "completed");
    let vm_id = created["vm_id"].as_str().unwrap().to_string();

    // The container is real, labelled for its worker, and limited.
    let inspect = docker(&["inspect", &container_of(&vm_id)]);
    assert!(inspect.status.success());
    let info: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let host = &info[0]["HostConfig"];
    assert_eq!(host["Memory"], 256 * 1024 * 1024);
    assert_eq!(host["NanoCpus"], 1_000_000_000i64);
    assert_eq!(host["PidsLimit"], 1024);
    assert!(host["Binds"][0].as_str().unwrap().ends_with(":ro"));
    assert_eq!(
        info[0]["Config"]["Labels"]["io.aetherium.worker_id"],
        server.worker_id.as_str()
    );

    // A non-zero exit code is a result: the execution completes, the task does not fail.
    let (status, ran) = server
        .post(
            &format!("/vms/{vm_id}/execute?wait=60s"),
            json!({"command": "sh", "args": ["-c", "echo out; echo err >&2; exit 3"]}),
        )
        .await;
    assert_eq!(status, 200, "{ran}");
    let execution = &ran["execution"];
    assert_eq!(execution["status"], "completed");
    assert_eq!(execution["exit_code"], 3);
    assert_eq!(execution["stdout"], "out\n");
    assert_eq!(execution["stderr"], "err\n");
    let task = task_settled(&server, ran["task_id"].as_str().unwrap()).await;
    assert_eq!(task["status"], "completed", "{task}");
    assert_eq!(task["retry_count"], 0);
    assert_eq!(task["type"], "vm:execute");

    // Environment and working directory reach the command; the VM can be named.
    let (_, ran) = server
        .post(
            &format!("/vms/{name}/execute?wait=60s"),
            json!({"command": "sh", "args": ["-c", "echo $GREETING; pwd"], "env": {"GREETING": "hi"}, "cwd": "/tmp"}),
        )
        .await;
    assert_eq!(ran["execution"]["stdout"], "hi\n/tmp\n", "{ran}");

    let (status, list) = server.get(&format!("/vms/{vm_id}/executions")).await;
    assert_eq!(status, 200);
    assert_eq!(list["total"], 2);
    let exec_id = ran["execution_id"].as_str().unwrap();
    let (status, one) = server.get(&format!("/executions/{exec_id}")).await;
    assert_eq!(status, 200);
    assert_eq!(one["exit_code"], 0);

    let (status, listed) = server.get("/vms?status=RUNNING").await;
    assert_eq!(status, 200);
    assert!(
        listed["vms"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["id"] == vm_id.as_str())
    );

    let (status, deleted) = server.delete(&format!("/vms/{vm_id}?wait=60s")).await;
    assert_eq!(status, 200, "{deleted}");
    assert_eq!(deleted["type"], "vm:delete");
    assert_eq!(deleted["status"], "completed");
    let (status, gone) = server.get(&format!("/vms/{vm_id}")).await;
    assert_eq!(status, 404, "{gone}");
    assert!(!docker(&["inspect", &container_of(&vm_id)]).status.success());
    assert!(!server.data_dir.path().join("sockets").join(&vm_id).exists());

    // History outlives the VM.
    let (status, list) = server.get(&format!("/vms/{vm_id}/executions")).await;
    assert_eq!(status, 200);
    assert_eq!(list["total"], 2);
    let (_, tasks) = server.get(&format!("/tasks?vm_id={vm_id}")).await;
    assert_eq!(tasks["total"], 4, "{tasks}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_vms_tasks_and_executions() {
    let mut server = TestServer::start().await;
    let vm_id = server.running_vm(&unique("persist")).await;
    let (_, ran) = server
        .post(
            &format!("/vms/{vm_id}/execute?wait=60s"),
            json!({"command": "sh", "args": ["-c", "echo before > /tmp/mark; cat /tmp/mark"]}),
        )
        .await;
    assert_eq!(ran["execution"]["stdout"], "before\n");
    let (_, tasks_before) = server.get("/tasks").await;

    server.restart().await;

    let (status, vm) = server.get(&format!("/vms/{vm_id}")).await;
    assert_eq!(status, 200);
    assert_eq!(vm["status"], "RUNNING", "{vm}");
    let (_, tasks_after) = server.get("/tasks").await;
    assert_eq!(tasks_after["total"], tasks_before["total"]);
    let (_, execs) = server.get(&format!("/vms/{vm_id}/executions")).await;
    assert_eq!(execs["total"], 1);
    // The sandbox was adopted, not recreated: its files are still there.
    let (status, ran) = server
        .post(
            &format!("/vms/{vm_id}/execute?wait=60s"),
            json!({"command": "cat", "args": ["/tmp/mark"]}),
        )
        .await;
    assert_eq!(status, 200, "{ran}");
    assert_eq!(ran["execution"]["stdout"], "before\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_removes_containers_nobody_knows() {
    let mut server = TestServer::start().await;
    let vm_id = server.running_vm(&unique("orphan")).await;
    server.shutdown().await;
    // Forget the VM behind the platform's back: its container is now an orphan.
    let db = server.data_dir.path().join("aetherium.db");
    let store = SqliteStore::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    store.delete_vm(&vm_id).await.unwrap();
    store.close().await;
    assert_eq!(server.containers().len(), 1);
    server.restart().await;
    assert!(server.containers().is_empty(), "orphan container survived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_that_dies_is_not_reported_running() {
    let server = TestServer::start().await;
    let vm_id = server.running_vm(&unique("dies")).await;
    assert!(docker(&["kill", &container_of(&vm_id)]).status.success());
    let (_, vm) = server
        .wait_vm(&vm_id, 30, |_, v| v["status"] != "RUNNING")
        .await;
    assert_eq!(vm["status"], "FAILED", "{vm}");
    assert!(vm["error"].as_str().unwrap().contains("137"), "{vm}");
    let (status, body) = server
        .post(&format!("/vms/{vm_id}/execute"), json!({"command": "true"}))
        .await;
    assert_eq!(status, 409, "{body}");
    // A failed VM can still be deleted, and its container goes.
    let (status, _) = server.delete(&format!("/vms/{vm_id}?wait=60s")).await;
    assert_eq!(status, 200);
    assert!(server.containers().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_that_fail_or_hang_are_results() {
    let server = TestServer::start().await;
    let vm_id = server.running_vm(&unique("bad-cmd")).await;
    let (status, ran) = server
        .post(
            &format!("/vms/{vm_id}/execute?wait=60s"),
            json!({"command": "no-such-command-here"}),
        )
        .await;
    assert_eq!(status, 200, "{ran}");
    assert_eq!(ran["execution"]["status"], "failed");
    assert_eq!(ran["execution"]["exit_code"], 127);
    assert!(
        ran["execution"]["error"]
            .as_str()
            .unwrap()
            .contains("no-such-command-here")
    );
    // The execution is recorded first and its task marked done just after.
    let task = task_settled(&server, ran["task_id"].as_str().unwrap()).await;
    assert_eq!(task["status"], "completed", "not retried: {task}");
    assert_eq!(task["retry_count"], 0, "not retried: {task}");

    let (status, ran) = server
        .post(
            &format!("/vms/{vm_id}/execute?wait=60s"),
            json!({"command": "sleep", "args": ["60"], "timeout_seconds": 1}),
        )
        .await;
    assert_eq!(status, 200, "{ran}");
    assert_eq!(ran["execution"]["status"], "timed_out");
    // The killed process is gone from the sandbox.
    let (_, ps) = server
        .post(
            &format!("/vms/{vm_id}/execute?wait=60s"),
            json!({"command": "sh", "args": ["-c", "ps -eo comm | grep -c '^sleep' || true"]}),
        )
        .await;
    assert_eq!(ps["execution"]["stdout"], "0\n", "{ps}");

    // Output beyond the cap is cut, not kept in memory or in the database.
    let (_, big) = server
        .post(
            &format!("/vms/{vm_id}/execute?wait=60s"),
            json!({"command": "head", "args": ["-c", "200000", "/dev/zero"]}),
        )
        .await;
    assert_eq!(big["execution"]["exit_code"], 0);
    assert_eq!(
        big["execution"]["stdout"].as_str().unwrap().len(),
        64 * 1024
    );
    assert_eq!(big["execution"]["metadata"]["output_truncated"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smart_execute_creates_then_reuses() {
    let server = TestServer::start().await;
    let name = unique("smart");
    let (status, first) = server
        .post(
            "/smart-execute?wait=90s",
            json!({"command": "echo hello from $0", "vm_name": name}),
        )
        .await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["vm_created"], true);
    assert_eq!(first["vm_reused"], false);
    assert_eq!(first["execution"]["stdout"], "hello from bash\n");
    let (status, second) = server
        .post(
            "/smart-execute?wait=60s",
            json!({"command": "echo", "args": ["again"], "vm_name": name}),
        )
        .await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["vm_reused"], true);
    assert_eq!(second["vm_id"], first["vm_id"]);
    assert_eq!(second["execution"]["stdout"], "again\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_documented_errors_and_leaves_nothing() {
    let server = TestServer::start().await;
    let error_shape = |body: &serde_json::Value, code: u16| {
        assert_eq!(body["code"], code, "{body}");
        assert!(body["error"].is_string(), "{body}");
        assert!(!body["message"].as_str().unwrap().is_empty(), "{body}");
    };

    let resp = server
        .request(reqwest::Method::POST, "/vms")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    error_shape(&resp.json().await.unwrap(), 400);

    for body in [
        json!({"name": "x", "vcpu": 1}),
        json!({"vcpus": 0}),
        json!({"memory_mb": 127}),
        json!({"vcpus": "two"}),
        json!({"name": "not a valid name"}),
    ] {
        let (status, err) = server.post("/vms", body.clone()).await;
        assert_eq!(status, 400, "{body} -> {err}");
        error_shape(&err, 400);
    }
    let (_, vms) = server.get("/vms").await;
    assert_eq!(vms["total"], 0, "a rejected create left a row");
    assert!(server.containers().is_empty());

    let missing = "00000000-0000-0000-0000-000000000000";
    for (status, body) in [
        server.get(&format!("/vms/{missing}")).await,
        server.delete(&format!("/vms/{missing}")).await,
        server
            .post(
                &format!("/vms/{missing}/execute"),
                json!({"command": "true"}),
            )
            .await,
        server.get(&format!("/tasks/{missing}")).await,
        server.get(&format!("/executions/{missing}")).await,
        server.get("/no/such/route").await,
    ] {
        assert_eq!(status, 404, "{body}");
        error_shape(&body, 404);
    }

    let (status, body) = server.get("/vms?status=SLEEPING").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = server.post("/vms?wait=forever", json!({})).await;
    assert_eq!(status, 400, "{body}");
    let (_, vms) = server.get("/vms").await;
    assert_eq!(vms["total"], 0, "a create with a bad wait left a row");

    // A name is unique among VMs.
    let name = unique("dup");
    let vm_id = server.running_vm(&name).await;
    let (status, body) = server.post("/vms", json!({"name": name})).await;
    assert_eq!(status, 409, "{body}");
    error_shape(&body, 409);

    // Exec on a deleted VM: 409 while it is being deleted, 404 once it is gone.
    let (status, _) = server.delete(&format!("/vms/{vm_id}")).await;
    assert_eq!(status, 202);
    let (status, body) = server
        .post(&format!("/vms/{vm_id}/execute"), json!({"command": "true"}))
        .await;
    assert!(status == 409 || status == 404, "{status} {body}");
    server.wait_vm(&vm_id, 60, |s, _| s == 404).await;
    let (status, body) = server
        .post(&format!("/vms/{vm_id}/execute"), json!({"command": "true"}))
        .await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = server
        .post(&format!("/vms/{vm_id}/execute"), json!({"command": ""}))
        .await;
    assert_eq!(status, 400, "{body}");

    // Every route but health needs the token.
    let anonymous = reqwest::Client::new();
    let resp = anonymous
        .get(format!("{}/api/v1/vms", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    error_shape(&resp.json().await.unwrap(), 401);
    let resp = anonymous
        .get(format!("{}/api/v1/tasks", server.url))
        .bearer_auth("wrong-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = anonymous
        .get(format!("{}/api/v1/health", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let health: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(health["status"], "healthy", "{health}");

    // Oversized bodies are refused before they are read whole.
    let huge = "x".repeat(2 * 1024 * 1024);
    let (status, body) = server.post("/vms", json!({"name": huge})).await;
    assert_eq!(status, 413, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_docker_engine_that_is_down_gets_503_and_no_rows() {
    let dir = tempfile::tempdir().unwrap();
    let dead_socket = format!("unix://{}/docker.sock", dir.path().display());
    let server = TestServer::start_with_docker(&dead_socket).await;
    let (status, body) = server.post("/vms", json!({"name": "nope"})).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], 503);
    assert!(
        body["message"].as_str().unwrap().contains("unhealthy"),
        "{body}"
    );
    let (_, vms) = server.get("/vms").await;
    assert_eq!(vms["total"], 0);
    let (_, tasks) = server.get("/tasks").await;
    assert_eq!(tasks["total"], 0);
    let (status, _) = server
        .post("/smart-execute", json!({"command": "true"}))
        .await;
    assert_eq!(status, 503);
    let resp = reqwest::get(format!("{}/api/v1/health", server.url))
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let health: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        health["components"]["workers"]["status"], "unhealthy",
        "{health}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_that_does_not_exist_fails_the_vm_with_a_reason() {
    let server = TestServer::start().await;
    let (status, body) = server
        .post(
            "/vms?wait=60s",
            json!({"name": unique("noimg"), "image": "aetherium/does-not-exist:nope"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["vm"]["status"], "FAILED", "{body}");
    assert!(
        body["vm"]["error"]
            .as_str()
            .unwrap()
            .contains("not present"),
        "{body}"
    );
    assert_eq!(body["status"], "failed");
    assert!(server.containers().is_empty());
}

/// The agent is static and bind-mounted, so an image needs nothing of ours — not
/// even a libc or a shell. This image holds one empty directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_image_works_even_one_without_a_libc() {
    let rootfs = tempfile::tempdir().unwrap();
    std::fs::create_dir(rootfs.path().join("tmp")).unwrap();
    let tag = format!("aetherium-test/empty:{}", &random_hex()[..10]);
    let import = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "tar -C {} -c . | docker import - {tag}",
            rootfs.path().display()
        ))
        .output()
        .unwrap();
    assert!(import.status.success(), "{import:?}");

    let server = TestServer::start().await;
    let (status, body) = server
        .post(
            "/vms?wait=60s",
            json!({"name": unique("empty"), "image": tag}),
        )
        .await;
    let outcome = async {
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["vm"]["status"], "RUNNING", "{body}");
        let vm_id = body["vm_id"].as_str().unwrap();
        let (_, ran) = server
            .post(
                &format!("/vms/{vm_id}/execute?wait=30s"),
                json!({"command": "/.aetherium/bin/aetherium-agent", "args": ["--version"]}),
            )
            .await;
        assert_eq!(ran["execution"]["exit_code"], 0, "{ran}");
        assert!(
            ran["execution"]["stdout"]
                .as_str()
                .unwrap()
                .contains("aetherium-agent")
        );
        let (_, ran) = server
            .post(
                &format!("/vms/{vm_id}/execute?wait=30s"),
                json!({"command": "sh"}),
            )
            .await;
        assert_eq!(ran["execution"]["exit_code"], 127, "{ran}");
    };
    let result = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(outcome)).await;
    drop(server);
    docker(&["rmi", "-f", &tag]);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// The agent vanishing mid-command: the execution fails with a reason instead of
/// hanging, it is not re-run, and the VM is reported as what it now is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_disappears_mid_exec_fails_the_execution() {
    let server = TestServer::start().await;
    let vm_id = server.running_vm(&unique("agent-dies")).await;
    let (status, queued) = server
        .post(
            &format!("/vms/{vm_id}/execute"),
            json!({"command": "sh", "args": ["-c", "echo started; sleep 60"]}),
        )
        .await;
    assert_eq!(status, 202, "{queued}");
    let execution_id = queued["execution_id"].as_str().unwrap().to_string();
    // Wait until the command runs, then kill the agent (by its pid in the sandbox).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, e) = server.get(&format!("/executions/{execution_id}")).await;
        if e["status"] == "running" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never ran: {e}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let kill = docker(&[
        "exec",
        &container_of(&vm_id),
        "sh",
        "-c",
        "kill -KILL $(ps -eo pid=,comm= | awk '$2 == \"aetherium-agent\" {print $1}')",
    ]);
    assert!(kill.status.success(), "{kill:?}");

    let (status, done) = server
        .get(&format!("/executions/{execution_id}?wait=30s"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(done["status"], "failed", "{done}");
    assert!(!done["error"].as_str().unwrap().is_empty(), "{done}");
    let (_, task) = server
        .get(&format!("/tasks/{}", queued["task_id"].as_str().unwrap()))
        .await;
    assert_eq!(
        task["retry_count"], 0,
        "a started command must not re-run: {task}"
    );
    let (_, vm) = server
        .wait_vm(&vm_id, 30, |_, v| v["status"] != "RUNNING")
        .await;
    assert_eq!(vm["status"], "FAILED", "{vm}");
}

/// A `vm:execute` whose earlier attempt started the command and then lost its worker
/// (the lease expired) must not run the command again: it may have had effects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_interrupted_mid_run_is_not_run_again() {
    use aetherium_core::services::{ExecPayload, new_task};
    use aetherium_types::{Execution, ExecutionStatus, TaskType};

    let server = TestServer::start().await;
    let vm_id = server.running_vm(&unique("once")).await;
    let platform = server.platform();
    let vm = platform.get_vm(&vm_id).await.unwrap();
    let now = chrono::Utc::now();
    // The state a crashed attempt leaves: the execution marked running.
    let execution = Execution {
        id: aetherium_types::new_id(),
        vm_id: vm_id.clone(),
        task_id: None,
        command: "touch".into(),
        args: vec!["/tmp/ran-again".into()],
        status: ExecutionStatus::Running,
        exit_code: None,
        stdout: String::new(),
        stderr: String::new(),
        error: None,
        created_at: now,
        started_at: Some(now),
        completed_at: None,
        duration_ms: None,
        metadata: Default::default(),
        created_by: None,
    };
    platform.store.insert_execution(&execution).await.unwrap();
    let payload = ExecPayload {
        execution_id: execution.id.clone(),
        vm_id: vm_id.clone(),
        command: "touch".into(),
        args: vec!["/tmp/ran-again".into()],
        env: Default::default(),
        env_sealed: None,
        cwd: None,
        timeout_seconds: 30,
    };
    let mut task = new_task(
        TaskType::VmExecute,
        serde_json::to_value(&payload).unwrap(),
        Some(&vm_id),
    );
    task.target_worker_id = vm.worker_id.clone();
    task.retry_count = 1;
    platform.submit(&task).await.unwrap();

    let (_, done) = server
        .get(&format!("/executions/{}?wait=30s", execution.id))
        .await;
    assert_eq!(done["status"], "failed", "{done}");
    assert!(
        done["error"].as_str().unwrap().contains("not run again"),
        "{done}"
    );
    let (_, check) = server
        .post(
            &format!("/vms/{vm_id}/execute?wait=30s"),
            json!({"command": "test", "args": ["-e", "/tmp/ran-again"]}),
        )
        .await;
    assert_eq!(
        check["execution"]["exit_code"], 1,
        "the command ran again: {check}"
    );
}

/// A streamed or interactive command still `running` when the server stopped lost
/// its connection with it: after a restart it reads as failed, not running forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_executions_cut_by_a_restart_are_marked_failed() {
    let mut server = TestServer::start().await;
    let vm_id = server.running_vm(&unique("cut")).await;
    let execution = server
        .platform()
        .begin_direct_execution(&vm_id, "sleep", &["100".to_string()], "stream", None)
        .await
        .unwrap();
    server.restart().await;
    let (_, e) = server.get(&format!("/executions/{}", execution.id)).await;
    assert_eq!(e["status"], "failed", "{e}");
    assert!(
        e["error"].as_str().unwrap().contains("server stopped"),
        "{e}"
    );
}

/// GET /tasks/{id} until the task has finished (at most 10 s).
async fn task_settled(server: &TestServer, id: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, task) = server.get(&format!("/tasks/{id}")).await;
        let finished = matches!(
            task["status"].as_str(),
            Some("completed" | "failed" | "cancelled")
        );
        if finished || std::time::Instant::now() > deadline {
            return task;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
