//! The OpenAPI document is the contract: every route is in it (and in the access
//! table), and what a real server answers matches it — status declared, body valid
//! against the declared schema, content type as declared.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;

use aetherium_gateway::access::ROUTE_ROLES;
use aetherium_gateway::openapi::{PUBLIC_ROUTES, operations, spec, spec_json};
use common::{TestServer, random_hex};
use serde_json::{Value, json};

fn spec_value() -> Value {
    serde_json::from_str(spec_json()).unwrap()
}

/// JSON pointer escaping of one path segment, percent-encoded for a URI fragment.
fn escape(segment: &str) -> String {
    segment
        .replace('~', "~0")
        .replace('/', "~1")
        .replace('{', "%7B")
        .replace('}', "%7D")
}

/// The operation object of `method template`, failing the test if it is not in the spec.
fn operation<'a>(spec: &'a Value, method: &str, template: &str) -> &'a Value {
    let op = &spec["paths"][template][method.to_lowercase()];
    assert!(op.is_object(), "{method} {template} is not in the spec");
    op
}

/// Checks that `status` is declared for the operation, with `content_type`, and that
/// `body` (JSON) validates against the declared schema.
fn conforms(spec: &Value, method: &str, template: &str, status: u16, body: &Value) {
    check(
        spec,
        method,
        template,
        status,
        "application/json",
        Some(body),
    );
}

fn check(
    spec: &Value,
    method: &str,
    template: &str,
    status: u16,
    content_type: &str,
    body: Option<&Value>,
) {
    let op = operation(spec, method, template);
    let response = &op["responses"][status.to_string()];
    assert!(
        response.is_object(),
        "{method} {template} answered {status}, which the spec does not declare (declared: {:?}); body: {body:?}",
        op["responses"]
            .as_object()
            .map(|r| r.keys().cloned().collect::<Vec<_>>())
    );
    let media = &response["content"][content_type];
    assert!(
        media.is_object(),
        "{method} {template} {status}: content type {content_type} is not declared: {response}"
    );
    let Some(body) = body else { return };
    let pointer = format!(
        "#/paths/{}/{}/responses/{status}/content/{}/schema",
        escape(template),
        method.to_lowercase(),
        escape(content_type)
    );
    validate(
        spec,
        &pointer,
        body,
        &format!("{method} {template} {status}"),
    );
}

/// Validates `instance` against the schema at `pointer` inside the spec (so that
/// `#/components/schemas/...` references resolve).
fn validate(spec: &Value, pointer: &str, instance: &Value, what: &str) {
    let mut schema = spec.clone();
    schema["$ref"] = Value::String(pointer.to_string());
    let validator = jsonschema::draft202012::new(&schema)
        .unwrap_or_else(|e| panic!("{what}: the spec's schema does not compile: {e}"));
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{what}: the body does not match the spec:\n  {}\nbody: {instance}",
        errors.join("\n  ")
    );
}

#[test]
fn the_spec_documents_exactly_the_access_table_and_the_public_routes() {
    let documented: BTreeSet<(String, String)> = operations(spec())
        .into_iter()
        .map(|(m, p)| (m.to_string(), p))
        .collect();
    let expected: BTreeSet<(String, String)> = ROUTE_ROLES
        .iter()
        .map(|(m, p, _)| (m.to_string(), p.to_string()))
        .chain(
            PUBLIC_ROUTES
                .iter()
                .map(|(m, p)| (m.to_string(), p.to_string())),
        )
        .collect();
    let missing: Vec<_> = expected.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "routes without a spec entry: {missing:?}; spec entries without an access rule: {extra:?}"
    );
}

#[test]
fn every_operation_is_described_and_every_protected_one_names_its_role() {
    let spec = spec_value();
    assert_eq!(spec["openapi"], "3.1.0");
    assert_eq!(
        spec["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    for (method, path, role) in ROUTE_ROLES {
        let op = operation(&spec, method.as_str(), path);
        assert_eq!(op["x-required-role"], role.as_str(), "{method} {path}");
        assert_eq!(op["security"], json!([{"bearer": []}]), "{method} {path}");
        assert!(op["summary"].is_string(), "{method} {path} has no summary");
        for status in ["401", "403"] {
            assert_eq!(
                op["responses"][status]["content"]["application/json"]["schema"]["$ref"],
                "#/components/schemas/ErrorResponse",
                "{method} {path} {status}"
            );
        }
        // Every declared error uses the one error shape.
        for (status, response) in op["responses"].as_object().unwrap() {
            if status.starts_with('4') || status.starts_with('5') {
                assert_eq!(
                    response["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/ErrorResponse",
                    "{method} {path} {status}"
                );
            }
        }
        if op["requestBody"]["content"]["application/json"].is_object() {
            for status in ["400", "413", "415"] {
                assert!(
                    op["responses"][status].is_object(),
                    "{method} {path} takes JSON but does not declare {status}"
                );
            }
        }
    }
    for (method, path) in PUBLIC_ROUTES {
        let op = operation(&spec, method.as_str(), path);
        assert_eq!(op["security"], json!([{}]), "{method} {path} is public");
    }
}

#[test]
fn resource_sizes_have_documented_upper_bounds() {
    let spec = spec_value();
    let schemas = &spec["components"]["schemas"];
    for name in ["CreateVmRequest", "SmartExecuteRequest"] {
        let props = &schemas[name]["properties"];
        assert_eq!(props["vcpus"]["maximum"], 64, "{name}");
        assert_eq!(props["memory_mb"]["maximum"], 1_048_576, "{name}");
        assert_eq!(props["memory_mb"]["minimum"], 128, "{name}");
    }
    for name in ["ExecuteCommandRequest", "SmartExecuteRequest"] {
        assert_eq!(
            schemas[name]["properties"]["timeout_seconds"]["maximum"], 600,
            "{name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spec_and_docs_page_are_served_without_a_token() {
    let server = TestServer::start().await;
    let http = reqwest::Client::new();
    let resp = http
        .get(format!("{}/api/v1/openapi.json", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let served: Value = resp.json().await.unwrap();
    assert_eq!(served, spec_value());

    // Swagger UI, from the binary: the page and its assets, no CDN.
    let resp = http
        .get(format!("{}/api/v1/docs/", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let html = resp.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "{html}");
    assert!(
        !html.contains("https://"),
        "the page loads nothing remote: {html}"
    );
    for asset in [
        "swagger-ui.css",
        "swagger-ui-bundle.js",
        "swagger-initializer.js",
    ] {
        let resp = http
            .get(format!("{}/api/v1/docs/{asset}", server.url))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{asset}");
        let text = resp.text().await.unwrap();
        if asset == "swagger-initializer.js" {
            assert!(text.contains("/api/v1/openapi.json"), "{text}");
        }
    }
    // Without the slash: a redirect to the page.
    let no_redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = no_redirect
        .get(format!("{}/api/v1/docs", server.url))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_redirection(), "{}", resp.status());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_of_a_real_server_match_the_spec() {
    let spec = spec_value();
    let server = TestServer::start().await;
    let http = reqwest::Client::new();
    let name = format!("spec-{}", &random_hex()[..8]);

    // Health, both paths, no token.
    for path in ["/health", "/api/v1/health"] {
        let resp = http
            .get(format!("{}{path}", server.url))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        conforms(&spec, "GET", path, status, &resp.json().await.unwrap());
    }

    // A VM's life.
    let (status, body) = server
        .post("/vms", json!({"name": name, "vcpus": 1, "memory_mb": 256}))
        .await;
    assert_eq!(status, 202, "{body}");
    conforms(&spec, "POST", "/api/v1/vms", status, &body);
    let vm_id = body["vm_id"].as_str().unwrap().to_string();
    let (status, body) = server.get(&format!("/vms/{vm_id}")).await;
    conforms(&spec, "GET", "/api/v1/vms/{id}", status, &body);
    let (status, body) = server
        .post(&format!("/vms/{vm_id}/execute"), json!({"command": "true"}))
        .await;
    assert!(status == 409 || status == 202, "{status} {body}");
    conforms(&spec, "POST", "/api/v1/vms/{id}/execute", status, &body);
    let (_, running) = server
        .wait_vm(&vm_id, 90, |_, b| b["status"] == "RUNNING")
        .await;
    assert_eq!(running["status"], "RUNNING", "{running}");
    conforms(&spec, "GET", "/api/v1/vms/{id}", 200, &running);
    let (status, body) = server.get("/vms").await;
    conforms(&spec, "GET", "/api/v1/vms", status, &body);
    let (status, body) = server.get("/vms?status=running&limit=5").await;
    conforms(&spec, "GET", "/api/v1/vms", status, &body);

    // Executions: queued (waited and not), listed, fetched.
    let (status, body) = server
        .post(
            &format!("/vms/{name}/execute?wait=60s"),
            json!({"command": "sh", "args": ["-c", "echo out; echo err >&2; exit 3"], "env": {"A": "1"}, "timeout_seconds": 30}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    conforms(&spec, "POST", "/api/v1/vms/{id}/execute", status, &body);
    let execution_id = body["execution_id"].as_str().unwrap().to_string();
    let task_id = body["task_id"].as_str().unwrap().to_string();
    let (status, body) = server
        .post(
            &format!("/vms/{vm_id}/execute"),
            json!({"command": "nope-not-a-command"}),
        )
        .await;
    conforms(&spec, "POST", "/api/v1/vms/{id}/execute", status, &body);
    let (status, body) = server.get(&format!("/executions/{execution_id}")).await;
    conforms(&spec, "GET", "/api/v1/executions/{id}", status, &body);
    let (status, body) = server
        .get(&format!(
            "/executions/{}?wait=30s",
            body["id"].as_str().unwrap()
        ))
        .await;
    conforms(&spec, "GET", "/api/v1/executions/{id}", status, &body);
    let (status, body) = server.get(&format!("/vms/{vm_id}/executions")).await;
    conforms(&spec, "GET", "/api/v1/vms/{id}/executions", status, &body);

    // Tasks and the queue.
    let (status, body) = server.get(&format!("/tasks/{task_id}")).await;
    conforms(&spec, "GET", "/api/v1/tasks/{id}", status, &body);
    let (status, body) = server.get("/tasks?type=vm:create&status=completed").await;
    conforms(&spec, "GET", "/api/v1/tasks", status, &body);
    let (status, body) = server.get("/queue/stats").await;
    conforms(&spec, "GET", "/api/v1/queue/stats", status, &body);

    // Streamed exec: every NDJSON line is a StreamEvent.
    let resp = server
        .request(reqwest::Method::POST, &format!("/vms/{vm_id}/exec/stream"))
        .json(&json!({"command": "sh", "args": ["-c", "echo a; printf '\\377' >&2; exit 2"]}))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
    check(
        &spec,
        "POST",
        "/api/v1/vms/{id}/exec/stream",
        status,
        &ct,
        None,
    );
    let text = resp.text().await.unwrap();
    let pointer = "#/components/schemas/StreamEvent";
    let mut types = Vec::new();
    for line in text.lines() {
        let event: Value = serde_json::from_str(line).unwrap();
        validate(&spec, pointer, &event, "exec/stream line");
        types.push(event["type"].as_str().unwrap().to_string());
    }
    assert_eq!(types.first().map(String::as_str), Some("start"), "{text}");
    assert_eq!(types.last().map(String::as_str), Some("end"), "{text}");

    // Files.
    let resp = server
        .request(
            reqwest::Method::PUT,
            &format!("/vms/{vm_id}/files?path=/tmp/spec.txt"),
        )
        .body("hello")
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    conforms(
        &spec,
        "PUT",
        "/api/v1/vms/{id}/files",
        status,
        &resp.json().await.unwrap(),
    );
    // A directory is refused with 400 before any byte is sent (not a broken
    // connection, whatever the timing).
    for dir in ["/", "/tmp", "/tmp/"] {
        for _ in 0..3 {
            let resp = server
                .request(
                    reqwest::Method::PUT,
                    &format!("/vms/{vm_id}/files?path={dir}"),
                )
                .body(vec![b'x'; 256 * 1024])
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap();
            assert_eq!(status, 400, "PUT {dir}: {body}");
            conforms(&spec, "PUT", "/api/v1/vms/{id}/files", status, &body);
        }
    }
    let (status, body) = server
        .get(&format!("/vms/{vm_id}/files/stat?path=/tmp/spec.txt"))
        .await;
    assert_eq!(status, 200, "{body}");
    conforms(&spec, "GET", "/api/v1/vms/{id}/files/stat", status, &body);
    let (status, body) = server
        .get(&format!("/vms/{vm_id}/files/stat?path=/nope"))
        .await;
    conforms(&spec, "GET", "/api/v1/vms/{id}/files/stat", status, &body);
    let resp = server
        .request(
            reqwest::Method::GET,
            &format!("/vms/{vm_id}/files?path=/tmp/spec.txt"),
        )
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
    check(&spec, "GET", "/api/v1/vms/{id}/files", status, &ct, None);
    let (status, body) = server
        .get(&format!("/vms/{vm_id}/files?path=relative"))
        .await;
    conforms(&spec, "GET", "/api/v1/vms/{id}/files", status, &body);

    // Errors, in the one shape, with declared statuses.
    let (status, body) = server.get("/vms/no-such-vm").await;
    assert_eq!(status, 404);
    conforms(&spec, "GET", "/api/v1/vms/{id}", status, &body);
    let (status, body) = server.get("/tasks/no-such-task").await;
    conforms(&spec, "GET", "/api/v1/tasks/{id}", status, &body);
    let (status, body) = server.post("/vms", json!({"vcpus": 65})).await;
    assert_eq!(status, 400);
    conforms(&spec, "POST", "/api/v1/vms", status, &body);
    let (status, body) = server.post("/vms", json!({"name": name})).await;
    assert_eq!(status, 409, "{body}");
    conforms(&spec, "POST", "/api/v1/vms", status, &body);
    let (status, body) = server.get("/vms?status=nope").await;
    assert_eq!(status, 400);
    conforms(&spec, "GET", "/api/v1/vms", status, &body);
    let (status, body) = server.get("/vms?wait=1s").await;
    assert_eq!(status, 400, "unknown query parameter: {body}");
    conforms(&spec, "GET", "/api/v1/vms", status, &body);
    let resp = server
        .request(reqwest::Method::POST, "/vms")
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    assert_eq!(status, 415);
    conforms(
        &spec,
        "POST",
        "/api/v1/vms",
        status,
        &resp.json().await.unwrap(),
    );
    let resp = server
        .request(reqwest::Method::POST, "/vms")
        .header("content-type", "application/json")
        .body(vec![b' '; 2 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    assert_eq!(status, 413);
    conforms(
        &spec,
        "POST",
        "/api/v1/vms",
        status,
        &resp.json().await.unwrap(),
    );
    for token in [None, Some("wrong")] {
        let mut req = http.get(format!("{}/api/v1/vms", server.url));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        assert_eq!(status, 401);
        conforms(
            &spec,
            "GET",
            "/api/v1/vms",
            status,
            &resp.json().await.unwrap(),
        );
    }
    // An unknown route: 404 in the same shape.
    let (status, body) = server.get("/no-such-route").await;
    assert_eq!(status, 404);
    validate(
        &spec,
        "#/components/schemas/ErrorResponse",
        &body,
        "unknown route",
    );

    // Smart execute reuses the running VM.
    let (status, body) = server
        .post(
            "/smart-execute?wait=60s",
            json!({"command": "echo hi", "vm_name": name}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    conforms(&spec, "POST", "/api/v1/smart-execute", status, &body);

    // Delete, then the VM is gone.
    let (status, body) = server.delete(&format!("/vms/{vm_id}?wait=60s")).await;
    assert_eq!(status, 200, "{body}");
    conforms(&spec, "DELETE", "/api/v1/vms/{id}", status, &body);
    let (status, body) = server.delete(&format!("/vms/{vm_id}")).await;
    conforms(&spec, "DELETE", "/api/v1/vms/{id}", status, &body);
}

#[test]
fn the_validator_catches_bodies_that_break_the_spec() {
    let spec = spec_value();
    let bad = json!({"vms": [{"id": 1}], "total": "many"});
    let mut schema = spec.clone();
    schema["$ref"] = json!(format!(
        "#/paths/{}/get/responses/200/content/application~1json/schema",
        escape("/api/v1/vms")
    ));
    let validator = jsonschema::draft202012::new(&schema).unwrap();
    assert!(!validator.is_valid(&bad));
    let mut schema = spec;
    schema["$ref"] = json!("#/components/schemas/ErrorResponse");
    let validator = jsonschema::draft202012::new(&schema).unwrap();
    assert!(validator.is_valid(&json!({"error": "Not Found", "message": "x", "code": 404})));
    assert!(!validator.is_valid(&json!({"error": "Not Found", "code": 404})));
}

#[test]
fn the_spec_and_the_server_agree_on_network_policy_entries_and_objects() {
    let mut schema = spec_value();
    schema["$ref"] = json!("#/components/schemas/NetworkPolicy");
    let validator = jsonschema::draft202012::new(&schema).unwrap();
    for entry in [
        "203.0.113.7",
        "198.51.100.0/24",
        "0.0.0.0/0",
        "255.255.255.255/32",
        "10.0.0.1/0",
        "",
        "01.2.3.4",
        "1.2.3.4/33",
        "256.1.1.1",
        "1.2.3",
        "1.2.3.4/",
        "example.com",
        "*.Example.COM",
        "localhost",
        "exa_mple.com",
        "example.com.",
        "a.*.example.com",
        "*example.com",
        "example.123",
        "-a.example.com",
        "a-.example.com",
        &*format!("{}.com", "a".repeat(64)),
        &*format!("{}com", "a.".repeat(125)),
        " 1.2.3.4",
    ] {
        let policy = aetherium_types::NetworkPolicy {
            deny: vec![entry.to_string()],
            ..Default::default()
        };
        assert_eq!(
            validator.is_valid(&json!({"deny": [entry]})),
            policy.normalized().is_ok(),
            "{entry:?}"
        );
    }
    // A JSON array is never taken for an object's fields.
    for body in [
        json!({"name": "k", "role": "viewer", "quota": [null, null]}),
        json!({"name": "k", "role": "viewer", "quota": [1]}),
    ] {
        let err = serde_json::from_value::<aetherium_types::CreateApiKeyRequest>(body.clone())
            .unwrap_err();
        assert!(err.to_string().contains("expected a map"), "{body}: {err}");
    }
    let err = serde_json::from_value::<aetherium_types::CreateVmRequest>(
        json!({"network_policy": ["deny"], "placement": null}),
    )
    .unwrap_err();
    assert!(err.to_string().contains("expected a map"), "{err}");
    let ok: aetherium_types::UpdateApiKeyRequest =
        serde_json::from_value(json!({"quota": {"max_vms": 1}})).unwrap();
    assert_eq!(ok.quota.unwrap().max_vms, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_roles_and_revocation_answer_as_declared() {
    let spec = spec_value();
    let server = TestServer::start().await;
    let http = reqwest::Client::new();
    let name = format!("viewer-{}", &random_hex()[..8]);
    let (status, body) = server
        .post("/api-keys", json!({"name": name, "role": "viewer"}))
        .await;
    assert_eq!(status, 201, "{body}");
    conforms(&spec, "POST", "/api/v1/api-keys", status, &body);
    let key = body["key"].as_str().unwrap().to_string();
    let key_id = body["api_key"]["id"].as_str().unwrap().to_string();

    // A viewer reads, but may not delete: 403 in the error shape.
    let resp = http
        .get(format!("{}/api/v1/vms", server.url))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    conforms(
        &spec,
        "GET",
        "/api/v1/vms",
        200,
        &resp.json().await.unwrap(),
    );
    let resp = http
        .delete(format!("{}/api/v1/vms/anything", server.url))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    assert_eq!(status, 403);
    conforms(
        &spec,
        "DELETE",
        "/api/v1/vms/{id}",
        status,
        &resp.json().await.unwrap(),
    );

    // Revoked: 401 at once.
    let (status, body) = server
        .post(&format!("/api-keys/{key_id}/revoke"), serde_json::json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    conforms(&spec, "POST", "/api/v1/api-keys/{id}/revoke", status, &body);
    let resp = http
        .get(format!("{}/api/v1/vms", server.url))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    assert_eq!(status, 401);
    conforms(
        &spec,
        "GET",
        "/api/v1/vms",
        status,
        &resp.json().await.unwrap(),
    );
}
