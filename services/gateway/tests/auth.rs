//! Authentication, roles, sessions, rate limits, audit and CORS against a real
//! embedded platform.

mod common;

use aetherium_gateway::access::ROUTE_ROLES;
use aetherium_types::Role;
use common::{TOKEN, TestServer};
use reqwest::Method;
use serde_json::{Value, json};

const NO_SUCH_ID: &str = "00000000-0000-4000-8000-000000000000";

fn is_error_shape(body: &Value, code: u16) -> bool {
    body["code"] == code && body["error"].is_string() && body["message"].is_string()
}

/// A request to every route in the access table with a viewer, an operator and an
/// admin key: each is refused with 403 exactly when its role is below the route's.
/// Bodies are deliberately invalid so that allowed calls stop at validation (400)
/// or at a missing resource (404) instead of creating anything.
#[tokio::test]
async fn every_route_enforces_its_role() {
    let server = TestServer::start().await;
    let keys = [
        (Role::Viewer, server.create_key("viewer").await),
        (Role::Operator, server.create_key("operator").await),
        (Role::Admin, server.create_key("admin").await),
    ];
    let mut wrong = Vec::new();
    for (method, route, required) in ROUTE_ROLES {
        let path = route.replace("{id}", NO_SUCH_ID);
        let body = matches!(*method, Method::POST | Method::PUT | Method::PATCH)
            .then(|| json!({"no_such_field": true}));
        // No credential at all: 401 everywhere.
        let resp = server
            .http
            .request(method.clone(), format!("{}{path}", server.url))
            .send()
            .await
            .unwrap();
        if resp.status() != 401 {
            wrong.push(format!("{method} {route} without a key: {}", resp.status()));
        }
        for (role, key) in &keys {
            let mut req = server
                .http
                .request(method.clone(), format!("{}{path}", server.url))
                .bearer_auth(key);
            if let Some(body) = &body {
                req = req.json(body);
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            // Error bodies end; a granted event or log stream does not, so only the
            // status of a success is looked at.
            let body: Value = if status >= 400 {
                resp.json().await.unwrap_or(Value::Null)
            } else {
                Value::Null
            };
            let allowed = role.allows(*required);
            let refused = status == 403;
            if allowed == refused || status == 401 || status >= 500 {
                wrong.push(format!(
                    "{method} {route} as {role} (needs {required}): {status} {body}"
                ));
            }
            if refused && !is_error_shape(&body, 403) {
                wrong.push(format!("{method} {route}: 403 body {body}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "role matrix violations:\n{}",
        wrong.join("\n")
    );
}

#[tokio::test]
async fn invalid_revoked_and_expired_keys_get_401() {
    let server = TestServer::start().await;
    let viewer = server.create_key("viewer").await;
    assert_eq!(
        server
            .call_as(&viewer, Method::GET, "/api/v1/vms", None)
            .await
            .0,
        200
    );

    let (status, body) = server
        .call_as("ak_not-a-real-key", Method::GET, "/api/v1/vms", None)
        .await;
    assert_eq!(status, 401);
    assert!(is_error_shape(&body, 401), "{body}");

    // Revoking takes effect on the next request.
    let (_, list) = server.get("/api-keys").await;
    let id = list["api_keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "test-viewer")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, revoked) = server
        .post(&format!("/api-keys/{id}/revoke"), json!({}))
        .await;
    assert_eq!(status, 200, "{revoked}");
    assert!(revoked["revoked_at"].is_string(), "{revoked}");
    let (status, body) = server
        .call_as(&viewer, Method::GET, "/api/v1/vms", None)
        .await;
    assert_eq!(status, 401);
    assert!(
        body["message"].as_str().unwrap().contains("revoked"),
        "{body}"
    );

    // An expired key (staged in the store: the API's shortest lifetime is a minute).
    let secret = "ak_expired-key-for-this-test-0123456789";
    let now = chrono::Utc::now();
    let expired = aetherium_types::ApiKey {
        id: aetherium_types::new_id(),
        name: "expired".into(),
        prefix: "ak_expired".into(),
        role: Role::Admin,
        created_by: "test".into(),
        created_at: now - chrono::Duration::hours(2),
        expires_at: Some(now - chrono::Duration::hours(1)),
        revoked_at: None,
        last_used_at: None,
        rate_limit_per_second: None,
        quota: None,
    };
    server
        .auth()
        .store()
        .insert_api_key(&expired, &aetherium_gateway::token_hash(secret))
        .await
        .unwrap();
    let (status, body) = server
        .call_as(secret, Method::GET, "/api/v1/vms", None)
        .await;
    assert_eq!(status, 401);
    assert!(
        body["message"].as_str().unwrap().contains("expired"),
        "{body}"
    );
}

#[tokio::test]
async fn keys_are_shown_once_and_never_listed() {
    let server = TestServer::start().await;
    let (status, created) = server
        .post(
            "/api-keys",
            json!({"name": "ci", "role": "operator", "expires_in_seconds": 3600}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let secret = created["key"].as_str().unwrap();
    assert!(secret.starts_with("ak_") && secret.len() > 40, "{secret}");
    assert!(secret.starts_with(created["api_key"]["prefix"].as_str().unwrap()));
    assert!(created["api_key"]["expires_at"].is_string());

    // Use it, then neither the list nor the key's page shows the secret or a hash.
    assert_eq!(
        server
            .call_as(secret, Method::GET, "/api/v1/vms", None)
            .await
            .0,
        200
    );
    let id = created["api_key"]["id"].as_str().unwrap();
    // The last use is written off the request path (a request never waits for it),
    // so it shows up shortly after the call, not necessarily before it answers.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let one = loop {
        let (_, one) = server.get(&format!("/api-keys/{id}")).await;
        if one["last_used_at"].is_string() || std::time::Instant::now() > deadline {
            break one;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let (_, list) = server.get("/api-keys").await;
    for text in [one.to_string(), list.to_string()] {
        assert!(!text.contains(secret), "secret leaked: {text}");
        assert!(!text.contains(&aetherium_gateway::token_hash(secret)));
    }
    assert!(one["last_used_at"].is_string(), "last use recorded: {one}");
    assert_eq!(one["role"], "operator");

    // Bad input is refused with the reason.
    for bad in [
        json!({"name": "x", "role": "root"}),
        json!({"name": "", "role": "viewer"}),
        json!({"name": "x", "role": "viewer", "expires_in_seconds": 1}),
        json!({"name": "x", "role": "viewer", "rate_limit_per_second": 0}),
        json!({"name": "x", "role": "viewer", "extra": 1}),
    ] {
        let (status, body) = server.post("/api-keys", bad.clone()).await;
        assert_eq!(status, 400, "{bad} → {body}");
        assert!(is_error_shape(&body, 400), "{body}");
    }
    assert_eq!(server.get(&format!("/api-keys/{NO_SUCH_ID}")).await.0, 404);
}

#[tokio::test]
async fn users_log_in_with_passwords_and_sessions_end() {
    let server = TestServer::start().await;
    let (status, user) = server
        .post(
            "/users",
            json!({"username": "ada", "password": "correct horse battery", "role": "viewer"}),
        )
        .await;
    assert_eq!(status, 201, "{user}");
    assert!(!user.to_string().contains("correct horse"), "{user}");
    let user_id = user["id"].as_str().unwrap().to_string();
    let (status, _) = server
        .post(
            "/users",
            json!({"username": "ada", "password": "another password", "role": "viewer"}),
        )
        .await;
    assert_eq!(status, 409, "duplicate username");
    let (status, _) = server
        .post(
            "/users",
            json!({"username": "bob", "password": "short", "role": "viewer"}),
        )
        .await;
    assert_eq!(status, 400, "short password");

    let login = |password: &'static str| {
        let http = server.http.clone();
        let url = format!("{}/api/v1/auth/login", server.url);
        async move {
            let resp = http
                .post(url)
                .json(&json!({"username": "ada", "password": password}))
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    let (status, wrong) = login("wrong password!!").await;
    assert_eq!(status, 401);
    let (status, unknown) = server
        .call_as(
            "unused",
            Method::POST,
            "/api/v1/auth/login",
            Some(json!({"username": "nobody", "password": "whatever12345"})),
        )
        .await;
    assert_eq!(status, 401);
    assert_eq!(wrong["message"], unknown["message"], "no user enumeration");

    let (status, session) = login("correct horse battery").await;
    assert_eq!(status, 200, "{session}");
    let token = session["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("as_"));
    let (status, me) = server
        .call_as(&token, Method::GET, "/api/v1/auth/me", None)
        .await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["principal"]["name"], "ada");
    assert_eq!(me["principal"]["kind"], "session");
    assert!(me["expires_at"].is_string());
    // A viewer's session reads but does not delete.
    assert_eq!(
        server
            .call_as(&token, Method::GET, "/api/v1/vms", None)
            .await
            .0,
        200
    );
    let (status, body) = server
        .call_as(
            &token,
            Method::DELETE,
            &format!("/api/v1/vms/{NO_SUCH_ID}"),
            None,
        )
        .await;
    assert_eq!(status, 403, "{body}");

    // Promotion applies to the open session at once.
    let (status, _) = server
        .call(
            Method::PATCH,
            &format!("/users/{user_id}"),
            Some(json!({"role": "operator"})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = server
        .call_as(
            &token,
            Method::DELETE,
            &format!("/api/v1/vms/{NO_SUCH_ID}"),
            None,
        )
        .await;
    assert_eq!(status, 404, "operator now: past the role check");

    // Logout ends the session.
    let (status, _) = server
        .call_as(&token, Method::POST, "/api/v1/auth/logout", None)
        .await;
    assert_eq!(status, 204);
    assert_eq!(
        server
            .call_as(&token, Method::GET, "/api/v1/vms", None)
            .await
            .0,
        401
    );

    // A password change ends every session; disabling refuses logins.
    let (_, session) = login("correct horse battery").await;
    let token = session["token"].as_str().unwrap().to_string();
    let (status, _) = server
        .call(
            Method::PATCH,
            &format!("/users/{user_id}"),
            Some(json!({"password": "a brand new password"})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        server
            .call_as(&token, Method::GET, "/api/v1/vms", None)
            .await
            .0,
        401
    );
    assert_eq!(login("correct horse battery").await.0, 401);
    let (status, _) = server
        .call(
            Method::PATCH,
            &format!("/users/{user_id}"),
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!(status, 200);
    // The right password of a disabled account answers as a wrong one does.
    let (status, disabled) = login("a brand new password").await;
    assert_eq!(status, 401);
    assert_eq!(disabled["message"], wrong["message"], "{disabled}");

    // API keys cannot log out; users can be deleted.
    assert_eq!(server.post("/auth/logout", json!({})).await.0, 400);
    assert_eq!(server.delete(&format!("/users/{user_id}")).await.0, 204);
    assert_eq!(server.get(&format!("/users/{user_id}")).await.0, 404);
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after() {
    let server = TestServer::start().await;
    let (status, created) = server
        .post(
            "/api-keys",
            json!({"name": "slow", "role": "viewer", "rate_limit_per_second": 1}),
        )
        .await;
    assert_eq!(status, 201);
    let key = created["key"].as_str().unwrap();
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..3 {
        let resp = server
            .http
            .get(format!("{}/api/v1/vms", server.url))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        statuses.push(resp.status().as_u16());
        if resp.status() == 429 {
            retry_after = resp.headers().get("retry-after").cloned();
            let body: Value = resp.json().await.unwrap();
            assert!(is_error_shape(&body, 429), "{body}");
        }
    }
    assert_eq!(statuses[0], 200, "{statuses:?}");
    assert!(statuses[1..].contains(&429), "{statuses:?}");
    assert_eq!(retry_after.unwrap(), "1");
    // Other keys are not affected.
    assert_eq!(server.get("/vms").await.0, 200);

    // Guessing passwords is limited per address and username.
    let mut last = 0;
    for _ in 0..12 {
        let resp = server
            .http
            .post(format!("{}/api/v1/auth/login", server.url))
            .json(&json!({"username": "root", "password": "guess-guess-guess"}))
            .send()
            .await
            .unwrap();
        last = resp.status().as_u16();
    }
    assert_eq!(last, 429);
}

#[tokio::test]
async fn the_audit_log_records_who_changed_what() {
    let server = TestServer::start().await;
    let operator = server.create_key("operator").await;
    let viewer = server.create_key("viewer").await;
    let (status, _) = server
        .call_as(
            &operator,
            Method::DELETE,
            &format!("/api/v1/vms/{NO_SUCH_ID}"),
            None,
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = server
        .call_as(
            &viewer,
            Method::DELETE,
            &format!("/api/v1/vms/{NO_SUCH_ID}"),
            None,
        )
        .await;
    assert_eq!(status, 403);
    // Reads are not audited.
    server
        .call_as(&viewer, Method::GET, "/api/v1/vms", None)
        .await;

    let (status, audit) = server.get("/audit?limit=50").await;
    assert_eq!(status, 200, "{audit}");
    let entries = audit["entries"].as_array().unwrap();
    let deletes: Vec<&Value> = entries
        .iter()
        .filter(|e| e["action"] == "vms.delete")
        .collect();
    assert_eq!(deletes.len(), 2, "{audit}");
    // Newest first: the viewer's refused attempt, then the operator's.
    assert_eq!(deletes[0]["actor_name"], "test-viewer");
    assert_eq!(deletes[0]["status"], 403);
    assert_eq!(deletes[1]["actor_name"], "test-operator");
    assert_eq!(deletes[1]["status"], 404);
    assert_eq!(deletes[1]["resource_id"], NO_SUCH_ID);
    assert!(
        !entries
            .iter()
            .any(|e| e["route"] == "/api/v1/vms" && e["method"] == "GET")
    );
    let creates = entries
        .iter()
        .filter(|e| e["action"] == "api-keys.create")
        .count();
    assert_eq!(creates, 2, "key creations are audited with their ids");
    assert!(
        entries
            .iter()
            .all(|e| e["action"] != "api-keys.create" || e["resource_id"].is_string())
    );

    // Filtered and paged.
    let (_, page) = server.get("/audit?limit=1&action=vms.delete").await;
    assert_eq!(page["entries"].as_array().unwrap().len(), 1);
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, next) = server
        .get(&format!("/audit?limit=1&action=vms.delete&cursor={cursor}"))
        .await;
    assert_eq!(next["entries"][0]["actor_name"], "test-operator");
    assert_eq!(server.get("/audit?cursor=nope").await.0, 400);
    // Only admins read it.
    let (status, _) = server
        .call_as(&operator, Method::GET, "/api/v1/audit", None)
        .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn cors_allows_configured_origins_only() {
    let server = TestServer::start_with_config(|c| {
        c.server.cors_allowed_origins = vec!["https://dash.example.test".into()];
    })
    .await;
    let preflight = |origin: &'static str| {
        server
            .http
            .request(Method::OPTIONS, format!("{}/api/v1/vms", server.url))
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
            .send()
    };
    let ok = preflight("https://dash.example.test").await.unwrap();
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "https://dash.example.test"
    );
    assert!(
        ok.headers()
            .get("access-control-allow-credentials")
            .is_none()
    );
    let other = preflight("https://evil.example.test").await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
    // The real request still needs its key.
    let resp = server
        .http
        .get(format!("{}/api/v1/vms", server.url))
        .header("origin", "https://dash.example.test")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let _ = TOKEN;
}

#[tokio::test]
async fn slow_requests_time_out_with_504() {
    let server = TestServer::start_with_config(|c| c.server.request_timeout_seconds = 2).await;
    let id = server
        .running_vm(&format!("slow-{}", &common::random_hex()[..8]))
        .await;
    let (status, body) = server
        .post(
            &format!("/vms/{id}/execute?wait=30s"),
            json!({"command": "sleep", "args": ["10"]}),
        )
        .await;
    assert_eq!(status, 504, "{body}");
    assert!(is_error_shape(&body, 504), "{body}");
    server.delete(&format!("/vms/{id}?wait=30s")).await;
}
