//! Environments and global secrets through the API: CRUD with validation, and
//! secrets that are stored encrypted and never come back — not in any response, not
//! in the database file, not in the platform's logs.
#![allow(clippy::unwrap_used)]

mod common;

use common::{TestServer, random_hex};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environments_are_created_listed_changed_and_deleted() {
    let server = TestServer::start().await;
    let name = format!("env-{}", &random_hex()[..8]);
    let (status, created) = server
        .post(
            "/environments",
            json!({
                "name": name,
                "description": "node service",
                "vcpus": 2,
                "memory_mb": 1024,
                "git_repo_url": "https://example.com/acme/app.git",
                "git_branch": "main",
                "tools": ["git", "nodejs@20.11.1"],
                "env_vars": {"NODE_ENV": "development"},
                "mcp_servers": [{"name": "fs", "type": "stdio", "command": "mcp-fs", "args": ["/workspace"]}],
                "idle_timeout_seconds": 600
            }),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["working_directory"], "/workspace");
    assert_eq!(created["tools"], json!(["git", "nodejs@20.11.1"]));
    assert_eq!(created["mcp_servers"][0]["type"], "stdio");

    // By id and by name.
    let (status, by_name) = server.get(&format!("/environments/{name}")).await;
    assert_eq!(status, 200, "{by_name}");
    assert_eq!(by_name["id"], id.as_str());

    // A taken name is a 409; bad fields are 400s that name the field.
    let (status, body) = server.post("/environments", json!({"name": name})).await;
    assert_eq!(status, 409, "{body}");
    for (bad, field) in [
        (json!({"name": "x y"}), "name"),
        (json!({"name": "ok1", "tools": ["Node JS"]}), "tool"),
        (
            json!({"name": "ok2", "git_repo_url": "https://user:pw@example.com/r.git"}),
            "git_repo_url",
        ),
        (json!({"name": "ok3", "env_vars": {"1BAD": "x"}}), "env"),
        (
            json!({"name": "ok4", "working_directory": "relative"}),
            "working_directory",
        ),
        (
            json!({"name": "ok5", "mcp_servers": [{"name": "h", "type": "http"}]}),
            "url",
        ),
    ] {
        let (status, body) = server.post("/environments", bad.clone()).await;
        assert_eq!(status, 400, "{bad} -> {body}");
        assert!(
            body["message"].as_str().unwrap().contains(field),
            "{bad} -> {body}"
        );
    }

    let (status, changed) = server
        .call(
            reqwest::Method::PUT,
            &format!("/environments/{id}"),
            Some(json!({"description": "changed", "git_branch": ""})),
        )
        .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["description"], "changed");
    assert!(changed["git_branch"].is_null(), "{changed}");
    assert_eq!(changed["tools"], json!(["git", "nodejs@20.11.1"]));

    let (status, list) = server.get("/environments?limit=1000").await;
    assert_eq!(status, 200);
    assert!(
        list["environments"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["id"] == id.as_str()),
        "{list}"
    );

    let (status, _) = server.delete(&format!("/environments/{id}")).await;
    assert_eq!(status, 204);
    let (status, _) = server.get(&format!("/environments/{id}")).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_values_never_come_back_and_are_not_stored_in_clear() {
    let server = TestServer::start().await;
    let value = format!("sk-test-{}", random_hex());
    let (status, secret) = server
        .post(
            "/secrets",
            json!({"name": "OPENAI_API_KEY", "value": value, "type": "api_key", "description": "for the agent"}),
        )
        .await;
    assert_eq!(status, 201, "{secret}");
    assert_eq!(secret["scope"], "global");
    assert_eq!(secret["type"], "api_key");
    assert!(secret["key_id"].as_str().unwrap().len() >= 8, "{secret}");
    let id = secret["id"].as_str().unwrap().to_string();

    // Setting the name again replaces the value and keeps the id.
    let second = format!("sk-test-{}", random_hex());
    let (status, replaced) = server
        .post(
            "/secrets",
            json!({"name": "OPENAI_API_KEY", "value": second}),
        )
        .await;
    assert_eq!(status, 201, "{replaced}");
    assert_eq!(replaced["id"], id.as_str());

    let (status, list) = server.get("/secrets").await;
    assert_eq!(status, 200);
    assert_eq!(list["secrets"].as_array().unwrap().len(), 1, "{list}");

    // A workspace-scoped secret needs a workspace; bad names and empty values are 400s.
    for bad in [
        json!({"name": "A", "value": "v", "scope": "workspace"}),
        json!({"name": "not-an-env-name", "value": "v"}),
        json!({"name": "EMPTY", "value": ""}),
    ] {
        let (status, body) = server.post("/secrets", bad.clone()).await;
        assert_eq!(status, 400, "{bad} -> {body}");
        assert!(!body.to_string().contains(&second));
    }

    // Nothing anywhere holds either value in clear: every response, the database
    // file (and its WAL), and the platform's stored logs.
    let (_, logs) = server.post("/logs/query", json!({"limit": 1000})).await;
    for text in [
        list.to_string(),
        secret.to_string(),
        replaced.to_string(),
        logs.to_string(),
    ] {
        assert!(!text.contains(&value) && !text.contains(&second), "{text}");
    }
    for entry in std::fs::read_dir(server.data_dir.path()).unwrap().flatten() {
        if entry.path().is_file() {
            let bytes = std::fs::read(entry.path()).unwrap();
            for v in [&value, &second] {
                assert!(
                    !bytes.windows(v.len()).any(|w| w == v.as_bytes()),
                    "{} holds a secret in clear",
                    entry.path().display()
                );
            }
        }
    }

    let (status, _) = server.delete(&format!("/secrets/{id}")).await;
    assert_eq!(status, 204);
    let (status, _) = server.delete(&format!("/secrets/{id}")).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_environments_network_policy_goes_to_its_workspaces_sandboxes() {
    let server = TestServer::start().await;
    let (status, refused) = server
        .post(
            "/environments",
            json!({"name": "p", "network_policy": {"allow": ["github..com"]}}),
        )
        .await;
    assert_eq!(status, 400, "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("network_policy"),
        "{refused}"
    );
    let name = format!("env-{}", &random_hex()[..8]);
    let (status, created) = server
        .post(
            "/environments",
            json!({"name": name, "network_policy": {"egress": "deny", "allow": ["140.82.112.4"]}}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let policy = json!({"egress": "deny", "allow": ["140.82.112.4/32"]});
    assert_eq!(created["network_policy"], policy, "{created}");
    let id = created["id"].as_str().unwrap().to_string();

    let (status, workspace) = server
        .post(
            "/workspaces",
            json!({"name": format!("ws-{}", &random_hex()[..8]), "environment_id": id}),
        )
        .await;
    assert_eq!(status, 201, "{workspace}");
    let vm_id = workspace["vm_id"].as_str().unwrap();
    let (_, vm) = server.get(&format!("/vms/{vm_id}")).await;
    assert_eq!(vm["network_policy"], policy, "{vm}");

    // `{}` puts the defaults back, for workspaces made from now on.
    let (status, changed) = server
        .call(
            reqwest::Method::PUT,
            &format!("/environments/{id}"),
            Some(json!({"network_policy": {}})),
        )
        .await;
    assert_eq!(status, 200, "{changed}");
    assert!(changed.get("network_policy").is_none(), "{changed}");
}
