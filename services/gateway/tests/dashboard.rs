//! The dashboard's static export served at `/` (`server.dashboard_dir`), against a
//! real embedded platform with a fake export in a temp dir: files, trailing-slash
//! redirects, the export's 404 page, security and cache headers, and that nothing of
//! the API is shadowed or weakened.
#![allow(clippy::unwrap_used)]

mod common;

use common::TestServer;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// `<root>/export` holds a fake Next.js export; `<root>/secret.txt` lies outside it.
fn fake_export() -> (tempfile::TempDir, std::path::PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let export = root.path().join("export");
    let write = |rel: &str, text: &str| {
        let path = export.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write("index.html", "<html>HOME PAGE</html>");
    write("sandboxes/index.html", "<html>SANDBOXES PAGE</html>");
    write("sandboxes/detail/index.html", "<html>DETAIL PAGE</html>");
    write("404.html", "<html>NOT FOUND PAGE</html>");
    write("_next/static/x.js", "console.log('x')");
    std::fs::write(root.path().join("secret.txt"), "TOPSECRET").unwrap();
    (root, export)
}

async fn with_dashboard() -> (TestServer, tempfile::TempDir) {
    let (root, export) = fake_export();
    let server = TestServer::start_with(move |c| {
        c.server.dashboard_dir = Some(export.clone());
    })
    .await;
    (server, root)
}

/// No redirects followed, no credentials sent.
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn fetch(server: &TestServer, path: &str) -> reqwest::Response {
    browser()
        .get(format!("{}{path}", server.url))
        .send()
        .await
        .unwrap()
}

/// A request written by hand: HTTP clients normalise `..` out of URLs before sending.
async fn raw_get(server: &TestServer, path: &str) -> (u16, String) {
    let addr = server.url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap();
    (status, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_the_export_without_auth_and_with_security_headers() {
    let (server, _root) = with_dashboard().await;

    let resp = fetch(&server, "/").await;
    assert_eq!(resp.status(), 200);
    let headers = resp.headers().clone();
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["referrer-policy"], "no-referrer");
    assert_eq!(headers["x-frame-options"], "DENY");
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(
        csp.contains("connect-src 'self' http: https: ws: wss:"),
        "{csp}"
    );
    assert_eq!(headers["cache-control"], "no-cache");
    assert_eq!(resp.text().await.unwrap(), "<html>HOME PAGE</html>");

    // HEAD answers like GET, without a body.
    let head = browser()
        .head(format!("{}/", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);

    // Content-hashed build output is cached for good.
    let resp = fetch(&server, "/_next/static/x.js").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    assert_eq!(resp.text().await.unwrap(), "console.log('x')");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directories_redirect_to_a_trailing_slash_and_ignore_the_query() {
    let (server, _root) = with_dashboard().await;

    let resp = fetch(&server, "/sandboxes").await;
    assert!(resp.status().is_redirection(), "{}", resp.status());
    assert_eq!(resp.headers()["location"], "/sandboxes/");

    let resp = fetch(&server, "/sandboxes/").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "<html>SANDBOXES PAGE</html>");

    let resp = fetch(&server, "/sandboxes/detail/?id=vm-123&tab=logs").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "<html>DETAIL PAGE</html>");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_pages_answer_the_exports_404_page() {
    let (server, _root) = with_dashboard().await;
    let resp = fetch(&server, "/no/such/page/").await;
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["x-frame-options"], "DENY");
    assert_eq!(resp.headers()["cache-control"], "no-cache");
    assert_eq!(resp.text().await.unwrap(), "<html>NOT FOUND PAGE</html>");

    // A miss under /_next/static is not cached for good.
    let resp = fetch(&server, "/_next/static/missing.js").await;
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["cache-control"], "no-cache");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_traversal_is_refused() {
    let (server, _root) = with_dashboard().await;
    for path in [
        "/../secret.txt",
        "/sandboxes/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/sandboxes/%2e%2e/%2e%2e/secret.txt",
        "/%2E%2E%2Fsecret.txt",
        "/..%2fsecret.txt",
    ] {
        let (status, text) = raw_get(&server, path).await;
        assert_ne!(status, 200, "{path}: {text}");
        assert!(!text.contains("TOPSECRET"), "{path} leaked: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_is_not_shadowed() {
    let (server, _root) = with_dashboard().await;

    // Unknown API paths keep the JSON error shape.
    for path in ["/api/v1/no-such-route", "/api/v2/x", "/api"] {
        let resp = fetch(&server, path).await;
        assert_eq!(resp.status(), 404, "{path}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["code"], 404, "{path}: {body}");
        assert!(body["error"].is_string(), "{path}: {body}");
        assert!(body["message"].is_string(), "{path}: {body}");
    }
    // Authentication still applies to the API and the root /metrics.
    assert_eq!(fetch(&server, "/api/v1/vms").await.status(), 401);
    assert_eq!(fetch(&server, "/metrics").await.status(), 401);
    // Public routes answer as before.
    let resp = fetch(&server, "/health").await;
    let body: Value = resp.json().await.unwrap();
    assert!(body["status"].is_string(), "{body}");
    let resp = fetch(&server, "/api/v1/openapi.json").await;
    assert_eq!(resp.status(), 200);
    let spec: Value = resp.json().await.unwrap();
    assert!(spec["paths"].is_object());
    assert!(fetch(&server, "/api/v1/docs/").await.status().is_success());

    // Only GET and HEAD read files: a POST to `/` is the JSON 404 of no route.
    let resp = browser()
        .post(format!("{}/", server.url))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], 404, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_dashboard_the_root_says_how_to_build_it() {
    let missing = tempfile::tempdir().unwrap();
    let dir = missing.path().join("not-built");
    let server = TestServer::start_with(move |c| {
        c.server.dashboard_dir = Some(dir.clone());
    })
    .await;

    let resp = fetch(&server, "/").await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    let text = resp.text().await.unwrap();
    assert!(text.contains("not built"), "{text}");
    assert!(text.contains("make dashboard"), "{text}");
    assert!(text.contains("scripts/setup.sh"), "{text}");

    // Other non-API paths keep the JSON 404.
    let resp = fetch(&server, "/sandboxes/").await;
    assert_eq!(resp.status(), 404);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], 404, "{body}");
}

/// The dashboard's typed client is generated from its copy of the spec: the copy must
/// be the spec this gateway serves.
#[test]
fn dashboard_spec_copy_is_current() {
    let served: Value = serde_json::from_str(aetherium_gateway::openapi::spec_json()).unwrap();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboard/openapi.json");
    let copy: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(
        served == copy,
        "{} is not the spec the gateway serves: regenerate it and the dashboard's \
         lib/api-schema.d.ts with `make dashboard-api`",
        path.display()
    );
}
