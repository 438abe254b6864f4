//! VMs with tools, end to end through the API against the real Docker engine: a
//! tool from a fixture catalog and file server (on the docker0 bridge) is installed
//! before the VM is RUNNING; an unknown tool is a 400 with nothing recorded; a tool
//! whose download fails fails the VM, naming the tool, and leaves no container.
//!
//! Needs the Docker engine, the stand-in agent image and the static agent (`make agent`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use aetherium_testkit::tools::{tool_recipe, tool_tarball};
use aetherium_testkit::{FileServer, docker_gateway};
use common::{TestServer, docker_ids, random_hex};
use serde_json::json;

/// `<root>/vmhello-1.0.0.tar.gz` (with its sum) and a catalog dir with two recipes
/// on mirror `fixture`: `vmhello`, and `vmbroken`, whose tarball the server does not
/// have (its download is a 404).
fn tool_fixture(root: &Path) -> PathBuf {
    tool_tarball(root, "vmhello", "1.0.0");
    let catalog = root.join("catalog");
    std::fs::create_dir_all(&catalog).unwrap();
    for name in ["vmhello", "vmbroken"] {
        std::fs::write(catalog.join(format!("{name}.toml")), tool_recipe(name, &[])).unwrap();
    }
    catalog
}

/// A server whose sandboxes run the stand-in agent image (it has what `fetch`
/// needs), with the fixture catalog and mirror.
async fn tools_server(catalog: PathBuf, mirror: String) -> TestServer {
    let image = aetherium_testkit::standin_agent_image();
    TestServer::start_with(move |config| {
        config.vmm.docker.default_image = image.clone();
        config.workspaces.tool_catalog_dir = Some(catalog.clone());
        config
            .workspaces
            .tool_mirrors
            .insert("fixture".into(), mirror.clone());
        // Fixture servers listen on the host: open it to the isolated sandboxes.
        config.vmm.docker.egress_allow =
            vec![format!("{}/32", aetherium_testkit::docker_gateway())];
    })
    .await
}

#[tokio::test]
async fn vms_install_catalog_tools_before_running_and_fail_cleanly_without_them() {
    let fixtures = tempfile::tempdir().unwrap();
    let catalog = tool_fixture(fixtures.path());
    let files = FileServer::start(fixtures.path().to_path_buf(), docker_gateway());
    let server = tools_server(catalog, files.url()).await;
    let suffix = &random_hex()[..8];

    // Installed before RUNNING: the answer to the wait already has the tool in
    // place (a version pin of a listed tool is merged in).
    let name = format!("tools-{suffix}");
    let (status, body) = server
        .post(
            "/vms?wait=150s",
            json!({"name": name, "additional_tools": ["vmhello"], "tool_versions": {"vmhello": "1.0.0"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["vm"]["status"], "RUNNING", "{body}");
    let vm_id = body["vm_id"].as_str().unwrap().to_string();
    let (status, ran) = server
        .post(
            &format!("/vms/{vm_id}/execute?wait=60s"),
            json!({"command": "vmhello"}),
        )
        .await;
    assert_eq!(status, 200, "{ran}");
    assert_eq!(ran["execution"]["exit_code"], 0, "{ran}");
    assert_eq!(ran["execution"]["stdout"], "vmhello 1.0.0\n", "{ran}");
    let (_, tasks) = server.get(&format!("/tasks?vm_id={vm_id}")).await;
    let create = tasks["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["type"] == "vm:create")
        .unwrap_or_else(|| panic!("{tasks}"));
    // The create's timeout grows by the tool's own (60 s) on top of the policy's.
    assert_eq!(create["timeout_seconds"], 25 * 60 + 60, "{create}");

    // Refused before anything is recorded: an unknown tool (named, with the known
    // ones), a malformed spec, too many tools.
    let (_, vms_before) = server.get("/vms").await;
    let (_, tasks_before) = server.get("/tasks").await;
    let too_many: Vec<String> = (0..65).map(|i| format!("t{i}")).collect();
    for (bad, needle) in [
        (
            json!({"additional_tools": ["no-such-tool"]}),
            "no-such-tool",
        ),
        (
            json!({"tool_versions": {"no-such-tool": "1.0"}}),
            "no-such-tool",
        ),
        (json!({"additional_tools": ["vmhello", "nope-2"]}), "nope-2"),
        (json!({"additional_tools": ["bad tool"]}), "bad tool"),
        (json!({"additional_tools": too_many}), "at most 64 tools"),
    ] {
        let mut body = bad.clone();
        body["name"] = format!("refused-{suffix}").into();
        let (status, answer) = server.post("/vms?wait=5s", body).await;
        assert_eq!(status, 400, "{bad}: {answer}");
        let message = answer["message"].as_str().unwrap();
        assert!(message.contains(needle), "{bad}: {message}");
    }
    let (status, _) = server.get(&format!("/vms/refused-{suffix}")).await;
    assert_eq!(status, 404, "no VM recorded");
    let (_, vms_after) = server.get("/vms").await;
    assert_eq!(vms_after["total"], vms_before["total"], "{vms_after}");
    let (_, tasks_after) = server.get("/tasks").await;
    assert_eq!(tasks_after["total"], tasks_before["total"], "{tasks_after}");

    // A download that fails: the VM fails for good, naming the tool with the end of
    // its output, and its sandbox is gone.
    let (status, body) = server
        .post(
            "/vms?wait=150s",
            json!({"name": format!("broken-{suffix}"), "additional_tools": ["vmbroken"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let broken = body["vm_id"].as_str().unwrap().to_string();
    assert_eq!(body["vm"]["status"], "FAILED", "{body}");
    let error = body["vm"]["error"].as_str().unwrap();
    assert!(
        error.contains("VM failed to start: installing vmbroken@1.0.0 failed (exit code"),
        "{error}"
    );
    assert!(error.contains("404"), "the tail of curl's output: {error}");
    let (_, tasks) = server.get(&format!("/tasks?vm_id={broken}")).await;
    let create = &tasks["tasks"][0];
    assert_eq!(create["retry_count"], 0, "not retried: {create}");
    // The worker removes the sandbox before it marks the VM failed.
    let left = docker_ids(&["--filter", &format!("label=io.aetherium.vm_id={broken}")]);
    assert!(left.is_empty(), "containers left behind: {left:?}");

    // The good one goes away as usual.
    let (status, _) = server.delete(&format!("/vms/{vm_id}?wait=60s")).await;
    assert!(status == 200 || status == 202, "{status}");
}
