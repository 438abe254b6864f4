//! The E2B control plane and envd relay (`/e2b`) at the HTTP level, against a real
//! embedded platform and real containers: roles and `X-API-KEY`, the error shapes,
//! the relay's checks, envd by host name; and the VM `env` and `ttl_seconds` that
//! the E2B API is built on. E2B's own SDKs drive it in tests/e2b (normal mode).
#![allow(clippy::unwrap_used)]

mod common;

use aetherium_gateway::access::E2B_ROUTE_ROLES;
use aetherium_types::Role;
use common::{TestServer, container_of, docker_ids, unique};
use reqwest::Method;
use serde_json::{Value, json};

const NO_SUCH_ID: &str = "00000000-0000-4000-8000-000000000000";

async fn e2b(
    server: &TestServer,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = server
        .http
        .request(method, format!("{}/e2b{path}", server.url));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, headers, json)
}

fn is_error(body: &Value, code: u16) -> bool {
    body["code"] == code && body["message"].is_string()
}

#[tokio::test]
async fn e2b_routes_take_x_api_key_and_enforce_their_roles() {
    let server = TestServer::start().await;
    let keys = [
        (Role::Viewer, server.create_key("viewer").await),
        (Role::Operator, server.create_key("operator").await),
        (Role::Admin, server.create_key("admin").await),
    ];
    let mut wrong = Vec::new();
    for (method, route, required) in E2B_ROUTE_ROLES {
        let path = route
            .strip_prefix("/e2b")
            .unwrap()
            .replace("{id}", NO_SUCH_ID);
        // A body the handlers refuse (no templateID, no timeout) or ignore.
        let body = (*method == Method::POST).then(|| json!({"no_such_field": true}));
        let (status, _, refused) = e2b(&server, method.clone(), &path, &[], body.clone()).await;
        if status != 401 || !is_error(&refused, 401) {
            wrong.push(format!(
                "{method} {route} without a key: {status} {refused}"
            ));
        }
        let (status, _, _) = e2b(
            &server,
            method.clone(),
            &path,
            &[("x-api-key", "ak_not-a-key")],
            body.clone(),
        )
        .await;
        if status != 401 {
            wrong.push(format!("{method} {route} with a bad key: {status}"));
        }
        for (role, key) in &keys {
            let (status, _, answer) = e2b(
                &server,
                method.clone(),
                &path,
                &[("x-api-key", key.as_str())],
                body.clone(),
            )
            .await;
            let allowed = role.allows(*required);
            if allowed == (status == 403) || status == 401 || status >= 500 {
                wrong.push(format!(
                    "{method} {route} as {role} (needs {required}): {status} {answer}"
                ));
            }
            if status >= 400 && !is_error(&answer, status) {
                wrong.push(format!("{method} {route}: error body {answer}"));
            }
        }
    }
    assert!(wrong.is_empty(), "violations:\n{}", wrong.join("\n"));
}

#[tokio::test]
async fn the_relay_checks_the_sandbox_its_token_and_the_route() {
    let server = TestServer::start_with(|c| c.server.e2b_domain = Some("sbx.test".into())).await;
    let key = server.create_key("operator").await;
    let (status, _, created) = e2b(
        &server,
        Method::POST,
        "/v2/sandboxes",
        &[("x-api-key", &key)],
        Some(json!({"templateID": "base", "metadata": {"t": "relay"}, "envVars": {"X": "1"}})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["sandboxID"].as_str().unwrap().to_string();
    let token = created["envdAccessToken"].as_str().unwrap().to_string();
    assert_eq!(created["domain"], "sbx.test");
    assert_eq!(created["envdVersion"], "0.6.1");

    let list = json!({});
    let rpc = "/process.Process/List";
    // The right sandbox and token: relayed (envd's Connect answer).
    let (status, _, answer) = e2b(
        &server,
        Method::POST,
        rpc,
        &[("e2b-sandbox-id", &id), ("x-access-token", &token)],
        Some(list.clone()),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer["processes"].is_array() || answer == json!({}),
        "{answer}"
    );
    // A wrong or missing token stops at the gateway.
    for headers in [
        vec![("e2b-sandbox-id", id.as_str()), ("x-access-token", "wrong")],
        vec![("e2b-sandbox-id", id.as_str())],
    ] {
        let (status, _, answer) =
            e2b(&server, Method::POST, rpc, &headers, Some(list.clone())).await;
        assert_eq!(status, 401, "{answer}");
        assert!(is_error(&answer, 401), "{answer}");
    }
    // The agent's platform routes are not envd's: not relayed, even with the token.
    for path in ["/init", "/secrets", "/process.Process/../init"] {
        let (status, _, answer) = e2b(
            &server,
            Method::POST,
            path,
            &[("e2b-sandbox-id", &id), ("x-access-token", &token)],
            Some(json!({"accessToken": "mine"})),
        )
        .await;
        assert_eq!(status, 404, "{path}: {answer}");
    }
    // An unknown sandbox is what the SDKs read as "not running": a 502 saying so.
    let (status, _, answer) = e2b(
        &server,
        Method::GET,
        "/health",
        &[("e2b-sandbox-id", NO_SUCH_ID)],
        None,
    )
    .await;
    assert_eq!(status, 502);
    assert_eq!(
        answer["message"],
        format!("The sandbox {NO_SUCH_ID} was not found")
    );
    // No sandbox named: JSON 404; /e2b/health without one is the platform's health.
    let (status, _, answer) = e2b(&server, Method::GET, "/files", &[], None).await;
    assert!(status == 404 && is_error(&answer, 404), "{answer}");
    let (status, _, answer) = e2b(&server, Method::GET, "/health", &[], None).await;
    assert_eq!(status, 200);
    assert_eq!(answer["status"], "healthy");

    // envd by host name, at the root: 49983-<id>.<e2b_domain>.
    let by_host = |path: &str, host: String| {
        server
            .http
            .get(format!("{}{path}", server.url))
            .header("host", host)
            .header("x-access-token", &token)
    };
    let resp = by_host("/health", format!("49983-{id}.sbx.test:443"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204, "the agent's own health answer");
    let resp = by_host("/envs", format!("49983-{id}.sbx.test"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let envs: Value = resp.json().await.unwrap();
    assert_eq!(envs["X"], "1", "{envs}");
    // Another domain, another port: not a sandbox's host.
    let resp = by_host("/health", format!("49983-{id}.other.test"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "the platform's health");

    // Killed: 204, then 404 everywhere; nothing left.
    let (status, _, _) = e2b(
        &server,
        Method::DELETE,
        &format!("/sandboxes/{id}"),
        &[("x-api-key", &key)],
        None,
    )
    .await;
    assert_eq!(status, 204);
    assert!(docker_ids(&[&format!("label=io.aetherium.vm_id={id}")]).is_empty());
    let (status, _, answer) = e2b(
        &server,
        Method::DELETE,
        &format!("/sandboxes/{id}"),
        &[("x-api-key", &key)],
        None,
    )
    .await;
    assert!(status == 404 && is_error(&answer, 404), "{answer}");
    let (status, _, _) = e2b(
        &server,
        Method::GET,
        "/health",
        &[("e2b-sandbox-id", &id)],
        None,
    )
    .await;
    assert_eq!(status, 502);
}

#[tokio::test]
async fn bad_e2b_requests_are_refused_with_the_reason_and_make_nothing() {
    let server = TestServer::start().await;
    let key = server.create_key("operator").await;
    let auth = [("x-api-key", key.as_str())];
    for (body, says) in [
        (json!({"templateID": "no-such-template"}), "not found"),
        (json!({"templateID": "base", "timeout": 0}), "timeout"),
        (
            json!({"templateID": "base", "timeout": 9_999_999}),
            "timeout",
        ),
        (
            json!({"templateID": "base", "autoPause": true}),
            "autoPause",
        ),
        (
            json!({"templateID": "base", "envVars": {"1BAD": "x"}}),
            "environment variable",
        ),
        (
            json!({"templateID": "base", "network": {"allowOut": ["not a cidr!"]}}),
            "allow",
        ),
        (json!({"timeout": 10}), "templateID"),
    ] {
        let (status, _, answer) = e2b(
            &server,
            Method::POST,
            "/v2/sandboxes",
            &auth,
            Some(body.clone()),
        )
        .await;
        assert!(
            (status == 400 || status == 404) && is_error(&answer, status),
            "{body} → {status} {answer}"
        );
        assert!(
            answer["message"].as_str().unwrap().contains(says),
            "{body} → {answer}"
        );
    }
    for query in [
        "limit=0",
        "limit=101",
        "state=RUNNING",
        "order=up",
        "nextToken=zzz",
        "startedAfter=yesterday",
    ] {
        let (status, _, answer) = e2b(
            &server,
            Method::GET,
            &format!("/v2/sandboxes?{query}"),
            &auth,
            None,
        )
        .await;
        assert!(
            status == 400 && is_error(&answer, 400),
            "{query} → {answer}"
        );
    }
    let (status, vms) = server.get("/vms").await;
    assert_eq!(status, 200);
    assert_eq!(vms["vms"], json!([]), "nothing was made");
}

#[tokio::test]
async fn a_vms_env_reaches_its_commands_unseen_and_its_ttl_deletes_it() {
    let server = TestServer::start().await;
    let name = unique("ttl");
    let (status, created) = server
        .post(
            "/vms?wait=90s",
            json!({"name": name, "env": {"GREETING": "sealed-value-1"}, "ttl_seconds": 4}),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    let vm_id = created["vm_id"].as_str().unwrap().to_string();
    assert!(created["vm"]["expires_at"].is_string(), "{created}");
    let (status, ran) = server
        .post(
            &format!("/vms/{vm_id}/execute?wait=60s"),
            json!({"command": "sh", "args": ["-c", "echo $GREETING"]}),
        )
        .await;
    assert_eq!(status, 200, "{ran}");
    assert_eq!(ran["execution"]["stdout"], "sealed-value-1\n");
    // The create task shows the variable's name, never its value.
    let (_, task) = server
        .get(&format!("/tasks/{}", created["task_id"].as_str().unwrap()))
        .await;
    assert!(task.to_string().contains("GREETING"), "{task}");
    assert!(!task.to_string().contains("sealed-value-1"), "{task}");
    assert!(!created.to_string().contains("sealed-value-1"));
    let container = container_of(&vm_id);
    assert!(!container.is_empty());

    // Its time runs out: deleted by its worker, container and record.
    let (status, _) = server.wait_vm(&vm_id, 30, |status, _| status == 404).await;
    assert_eq!(status, 404, "the VM outlived its time to live");
    assert!(docker_ids(&[&format!("label=io.aetherium.vm_id={vm_id}")]).is_empty());

    for (body, says) in [
        (json!({"ttl_seconds": 0}), "ttl_seconds"),
        (json!({"ttl_seconds": 604_801}), "ttl_seconds"),
        (json!({"env": {"A=B": "x"}}), "environment variable"),
        (json!({"env": {"OK": "nul\u{0}"}}), "NUL"),
    ] {
        let (status, answer) = server.post("/vms", body.clone()).await;
        assert_eq!(status, 400, "{body} → {answer}");
        assert!(
            answer["message"].as_str().unwrap().contains(says),
            "{answer}"
        );
    }
}
