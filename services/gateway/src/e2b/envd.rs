//! The envd relay: E2B's SDKs send every sandbox's envd traffic to one URL
//! (`E2B_SANDBOX_URL`, i.e. `<server>/e2b`) naming the sandbox in `E2b-Sandbox-Id`,
//! or to the host `49983-<id>.<e2b_domain>` behind wildcard DNS. Each request is
//! relayed to that sandbox's agent (here, or on its worker through the tunnel),
//! both bodies streaming, after its `X-Access-Token` is checked here: a request
//! with a wrong token never reaches the sandbox.

use aetherium_core::CoreError;
use aetherium_types::agent::ENVD_PORT;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode, header};

use crate::AppState;

/// The header naming the sandbox of an envd request.
pub const SANDBOX_ID_HEADER: &str = "e2b-sandbox-id";

/// The envd paths relayed: envd's API as the SDKs use it. The agent's own
/// platform routes (`/init`, `/secrets`, ...) are not reachable this way.
fn is_envd_path(path: &str) -> bool {
    const RPC: [&str; 2] = ["/process.Process/", "/filesystem.Filesystem/"];
    matches!(path, "/health" | "/files" | "/envs" | "/metrics")
        || RPC.iter().any(|prefix| {
            path.strip_prefix(prefix).is_some_and(|method| {
                !method.is_empty() && method.bytes().all(|b| b.is_ascii_alphanumeric())
            })
        })
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) end at each hop; `host` is the agent's.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers the `Connection` header names are hop-by-hop too.
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty())
        .collect();
    for name in HOP_BY_HOP
        .iter()
        .copied()
        .chain(named.iter().map(String::as_str))
    {
        headers.remove(name);
    }
}

/// The sandbox an envd request names by host: `49983-<id>.<domain>` (any port
/// suffix), when an E2B domain is configured.
pub fn sandbox_by_host(state: &AppState, headers: &HeaderMap) -> Option<String> {
    let domain = state.e2b_domain.as_deref()?;
    let host = headers.get(header::HOST)?.to_str().ok()?;
    let host = host.rsplit_once(':').map_or(host, |(name, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            name
        } else {
            host
        }
    });
    let label = host.strip_suffix(domain)?.strip_suffix('.')?;
    let id = label.strip_prefix(&format!("{ENVD_PORT}-"))?;
    (!id.is_empty() && !id.contains('.')).then(|| id.to_string())
}

/// The sandbox a request under `/e2b` names in its header.
pub fn sandbox_by_header(headers: &HeaderMap) -> Option<String> {
    headers
        .get(SANDBOX_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

/// An envd-style error: JSON `{code, message}` (and `error`, as every error of this
/// server) with the HTTP status. Not logged as a failure of ours: an SDK probing a
/// killed sandbox is routine.
fn envd_error(status: StatusCode, message: impl Into<String>) -> Response {
    crate::error::ApiError::new(status, message)
        .routine()
        .into_response()
}

/// What the SDKs take for "this sandbox is gone" (`SandboxNotRunningException`):
/// a 502 whose message says "was not found".
fn sandbox_gone(id: &str) -> Response {
    envd_error(
        StatusCode::BAD_GATEWAY,
        format!("The sandbox {id} was not found"),
    )
}

/// Relays `request` (its path already without `/e2b`) to sandbox `id`'s agent.
pub async fn relay(state: &AppState, id: &str, request: Request) -> Response {
    let path = request.uri().path().to_string();
    if !is_envd_path(&path) {
        return envd_error(
            StatusCode::NOT_FOUND,
            format!("{path} is not an envd route"),
        );
    }
    let agent = match state.platform.open_sandbox(id).await {
        Ok((_, agent)) => agent,
        // Unknown, killed, paused or still starting: not reachable, as in E2B.
        Err(CoreError::NotFound(_) | CoreError::Conflict(_)) => return sandbox_gone(id),
        Err(e) => return crate::error::ApiError::from(e).into_response(),
    };
    // envd answers its liveness probe without a token; everything else needs the
    // sandbox's, compared in constant time.
    if path != "/health" {
        let presented = request
            .headers()
            .get("x-access-token")
            .map(|v| v.as_bytes());
        let expected = agent.access_token().map(str::as_bytes);
        let accepted = match (presented, expected) {
            (_, None) => true,
            (Some(p), Some(e)) => constant_time_eq(p, e),
            (None, Some(_)) => false,
        };
        if !accepted {
            return envd_error(
                StatusCode::UNAUTHORIZED,
                "missing or wrong X-Access-Token for this sandbox (the envdAccessToken of its create or connect)",
            );
        }
    }
    let (mut parts, body) = request.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::HOST);
    let forwarded = Request::from_parts(parts, body);
    match agent.forward(forwarded).await {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, Body::new(body))
        }
        Err(e) => {
            tracing::debug!(sandbox = %id, error = %e, "envd relay failed");
            // The agent went away (the sandbox stopped) or cannot be reached.
            match state.platform.get_vm(id).await {
                Ok(vm) if vm.status == aetherium_types::VmStatus::Running => envd_error(
                    StatusCode::BAD_GATEWAY,
                    format!("sandbox {id}'s agent cannot be reached: {e}"),
                ),
                _ => sandbox_gone(id),
            }
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use sha2::{Digest as _, Sha256};
    // Equal-length digests, so the comparison's time says nothing of the token.
    let (a, b) = (Sha256::digest(a), Sha256::digest(b));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// A request under `/e2b` that no control-plane route claims: envd's when it names
/// a sandbox (relayed without the prefix), else a JSON 404.
pub async fn under_prefix(state: &AppState, request: Request) -> Response {
    let Some(id) = sandbox_by_header(request.headers()) else {
        return envd_error(
            StatusCode::NOT_FOUND,
            format!(
                "no E2B route {} {} (envd requests name their sandbox in the E2b-Sandbox-Id header)",
                request.method(),
                request.uri().path()
            ),
        );
    };
    let request = match without_prefix(request) {
        Ok(request) => request,
        Err(response) => return *response,
    };
    relay(state, &id, request).await
}

/// The request with `/e2b` taken off its path (the query kept).
fn without_prefix(mut request: Request) -> Result<Request, Box<Response>> {
    let uri = request.uri();
    let path = uri.path().strip_prefix("/e2b").unwrap_or(uri.path());
    let path_and_query = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_string(),
    };
    *request.uri_mut() = path_and_query.parse().map_err(|e| {
        Box::new(envd_error(
            StatusCode::BAD_REQUEST,
            format!("bad request path: {e}"),
        ))
    })?;
    Ok(request)
}

/// `GET /e2b/health`: envd's liveness probe when it names a sandbox, else the
/// control plane's health.
pub async fn health(State(state): State<AppState>, request: Request) -> Response {
    match sandbox_by_header(request.headers()) {
        Some(id) => match without_prefix(request) {
            Ok(request) => relay(&state, &id, request).await,
            Err(response) => *response,
        },
        None => crate::routes::health(State(state)).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_envds_routes_are_relayed() {
        for path in [
            "/health",
            "/files",
            "/process.Process/Start",
            "/filesystem.Filesystem/ListDir",
        ] {
            assert!(is_envd_path(path), "{path}");
        }
        for path in [
            "/init",
            "/secrets",
            "/process.Process/",
            "/process.Process/../init",
            "/files/x",
            "/",
        ] {
            assert!(!is_envd_path(path), "{path}");
        }
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_dropped() {
        let mut headers = HeaderMap::new();
        headers.insert("connection", "close, x-private".parse().unwrap());
        headers.insert("x-private", "1".parse().unwrap());
        headers.insert("transfer-encoding", "chunked".parse().unwrap());
        headers.insert("content-type", "application/json".parse().unwrap());
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1, "{headers:?}");
    }

    #[test]
    fn tokens_compare_by_content() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
