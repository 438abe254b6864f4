//! The web dashboard: its static export (`server.dashboard_dir`) served at `/`.
//!
//! Only what no route claims reaches here (the router's fallback), so the API, health,
//! readiness, metrics and the API docs are never shadowed. Files carry no data (the
//! pages call the API with the user's own credentials), so they need no auth. Paths
//! under `/api/` and methods other than GET/HEAD keep the JSON 404 of any unknown
//! route.

use std::path::Path;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{Html, IntoResponse, Response};
use http::{HeaderValue, Method, header};
use tower::ServiceExt;
use tower_http::services::{ServeDir, ServeFile};

use crate::AppState;

/// What a Next.js static export needs: its inline bootstrap scripts and styles, data:
/// images and fonts, and API calls to this or another gateway (the login page may name
/// any base URL; the browser still applies CORS).
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self' 'unsafe-inline'; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; \
     connect-src 'self' http: https: ws: wss:; frame-ancestors 'none'; base-uri 'self'; \
     form-action 'self'";

/// Shown at `/` when no dashboard is installed: says how to get one.
const NOT_BUILT_PAGE: &str = "<!doctype html>
<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Aetherium</title>
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"></head>
<body style=\"font-family: system-ui, sans-serif; max-width: 40rem; margin: 3rem auto; padding: 0 1rem\">
<h1>Aetherium</h1>
<p>The API is running, but the web dashboard is not built on this host.</p>
<p>Build and install it with <code>scripts/setup.sh</code> or <code>make dashboard</code>
(it goes to <code>/usr/local/share/aetherium/dashboard</code>), or point
<code>server.dashboard_dir</code> (<code>AETHERIUM_DASHBOARD_DIR</code>) at a built export
(<code>services/dashboard/out</code>), then restart.</p>
<p>The API is at <a href=\"/api/v1/health\"><code>/api/v1</code></a>; its reference is at
<a href=\"/api/v1/docs\"><code>/api/v1/docs</code></a>.</p>
</body></html>
";

/// The router's fallback: a dashboard file, the dashboard's 404 page, the "not built"
/// page at `/`, or the JSON 404 of an unknown route.
pub async fn fallback(State(state): State<AppState>, request: Request) -> Response {
    let path = request.uri().path();
    let is_api = path == "/api" || path.starts_with("/api/");
    if is_api || !matches!(*request.method(), Method::GET | Method::HEAD) {
        return crate::routes::not_found().await.into_response();
    }
    let immutable = path.starts_with("/_next/static/");
    let mut response = match &state.dashboard_dir {
        Some(dir) => serve_file(dir, request).await,
        None if path == "/" => Html(NOT_BUILT_PAGE).into_response(),
        None => return crate::routes::not_found().await.into_response(),
    };
    // Build output under /_next/static is content-hashed: cache it for good. Pages
    // (and everything else) are revalidated so a new build shows at once.
    let cache = if immutable && response.status().is_success() {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    response
}

/// A file of the export: directories answer their `index.html` (`/sandboxes`
/// redirects to `/sandboxes/`, as the export's links end with a slash), the query
/// string plays no part, `..` never leaves the directory, and a missing file answers
/// the export's `404.html` with status 404.
async fn serve_file(dir: &Path, request: Request) -> Response {
    let service = ServeDir::new(dir)
        .append_index_html_on_directories(true)
        .not_found_service(ServeFile::new(dir.join("404.html")));
    match service.oneshot(request).await {
        Ok(response) => response.map(Body::new),
        Err(never) => match never {},
    }
}
