//! Authentication, authorization, rate limits and the audit trail, in one middleware
//! in front of every route but health, login and the API's documentation:
//! bearer token → principal ([`aetherium_core::auth::Auth`]) → rate limit → role
//! check against [`crate::access`] → handler → audit entry for anything beyond
//! reading.

use std::net::SocketAddr;

use aetherium_core::CoreError;
use aetherium_types::{AuditEntry, Principal, PrincipalKind, Role};
use axum::extract::{ConnectInfo, MatchedPath, OriginalUri, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use http::{HeaderValue, StatusCode};

use crate::AppState;
use crate::access::required_role;
use crate::error::ApiError;

/// Set by a handler on its response to name the resource it created (the audit
/// log's `resource_id` when the route has no `{id}`).
#[derive(Debug, Clone)]
pub struct AuditResource(pub String);

pub async fn require_auth(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let header = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .map(str::to_string);
    let Some(token) = header
        .or_else(|| e2b_api_key(&request))
        .or_else(|| websocket_query_token(&request))
    else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing `Authorization: Bearer <API key>` header (E2B routes also take `X-API-KEY`)",
        )
        .into_response();
    };
    let who = match state.auth.authenticate(&token).await {
        Ok(who) => who,
        Err(e) => {
            let (route, remote) = route_and_remote(&request);
            let method = request.method().to_string();
            return refuse_credential(&state, remote, method, route.unwrap_or_default(), e).await;
        }
    };
    // A key's own limit allows a burst of one second's worth.
    let (rate, burst) = match who.rate_limit_per_second {
        Some(own) => (f64::from(own), own),
        None => (state.rate_limit_per_second, state.rate_limit_burst),
    };
    if let Err(wait) = state.rate_limits.check(&who.credential_id, rate, burst) {
        return too_many_requests(wait);
    }
    let (route, remote) = route_and_remote(&request);
    let method = request.method().clone();
    let role = route.as_deref().and_then(|r| required_role(&method, r));
    // Inside `nest`, `uri()` lost its prefix; the original matches the route template.
    let path = request
        .extensions()
        .get::<OriginalUri>()
        .map(|u| u.0.path().to_string())
        .unwrap_or_else(|| request.uri().path().to_string());
    let principal = who.principal.clone();

    let mut response = match authorize(&principal, &method, route.as_deref(), role) {
        Ok(()) => {
            request.extensions_mut().insert(principal.clone());
            request.extensions_mut().insert(who);
            next.run(request).await
        }
        Err(e) => e.into_response(),
    };

    // Reading is not audited; creating, running, deleting and administering are,
    // including attempts that were refused.
    if let (Some(route), Some(role)) = (route, role)
        && role > Role::Viewer
    {
        let mut resource_id = response
            .extensions()
            .get::<AuditResource>()
            .map(|r| r.0.clone())
            .or_else(|| path_id(&route, &path));
        if resource_id.is_none() && response.status().is_success() {
            let (read, id) = created_id(response).await;
            response = read;
            resource_id = id;
        }
        let entry = AuditEntry {
            seq: 0,
            at: Utc::now(),
            actor_id: Some(principal.id.clone()),
            actor_name: Some(principal.name.clone()),
            action: action_name(&method, &route),
            method: method.to_string(),
            route,
            resource_id,
            status: response.status().as_u16(),
            remote_addr: remote,
        };
        state.auth.audit(&entry).await;
    }
    response
}

/// E2B's SDKs send their key as `X-API-KEY` (no scheme): taken on `/e2b` routes.
fn e2b_api_key(request: &Request) -> Option<String> {
    let path = request
        .extensions()
        .get::<OriginalUri>()
        .map_or_else(|| request.uri().path(), |u| u.0.path());
    if !path.starts_with("/e2b/") {
        return None;
    }
    request
        .headers()
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

/// The request's route template and the client's address, for the audit log.
fn route_and_remote(request: &Request) -> (Option<String>, Option<String>) {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string());
    let remote = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    (route, remote)
}

/// Failed credentials one address may present per minute before it is answered
/// 429 without a check (guessing keys stays slow; the audit log stays readable).
const FAILED_CREDENTIALS_PER_MINUTE: u32 = 60;

/// Answers a credential that did not authenticate: audited (`auth.failed`, with the
/// address and route, never the token), and limited per address.
async fn refuse_credential(
    state: &AppState,
    remote: Option<String>,
    method: String,
    route: String,
    error: CoreError,
) -> Response {
    let key = format!("failed-credential:{}", remote.as_deref().unwrap_or("-"));
    let per_minute = FAILED_CREDENTIALS_PER_MINUTE;
    if let Err(wait) = state
        .login_limits
        .check(&key, f64::from(per_minute) / 60.0, per_minute)
    {
        return too_many_requests(wait);
    }
    let response = ApiError::from(error).into_response();
    state
        .auth
        .audit(&AuditEntry {
            seq: 0,
            at: Utc::now(),
            actor_id: None,
            actor_name: None,
            action: "auth.failed".into(),
            method,
            route,
            resource_id: None,
            status: response.status().as_u16(),
            remote_addr: remote,
        })
        .await;
    response
}

/// The id a creation answered with (`id`, else `vm_id`), for the audit log of a
/// route without `{id}`. Only small, complete JSON bodies are read (and handed on
/// unchanged); streams are left alone.
async fn created_id(response: Response) -> (Response, Option<String>) {
    const MAX_READ: u64 = 64 * 1024;
    let is_json = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let small = axum::body::HttpBody::size_hint(response.body())
        .exact()
        .is_some_and(|n| n <= MAX_READ);
    if !is_json || !small {
        return (response, None);
    }
    let (parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_READ as usize).await else {
        return (Response::from_parts(parts, axum::body::Body::empty()), None);
    };
    let id = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| {
            ["id", "vm_id"]
                .iter()
                .find_map(|k| v.get(k).and_then(|id| id.as_str()).map(str::to_string))
        });
    (
        Response::from_parts(parts, axum::body::Body::from(bytes)),
        id,
    )
}

/// 429 in the API's error shape, with `Retry-After` (whole seconds, at least 1).
pub fn too_many_requests(wait: std::time::Duration) -> Response {
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    let mut response = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        format!("rate limit exceeded: retry in {secs}s"),
    )
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        response.headers_mut().insert(http::header::RETRY_AFTER, v);
    }
    response
}

/// Checks the principal's role against the route's entry in [`crate::access`].
fn authorize(
    principal: &Principal,
    method: &http::Method,
    route: Option<&str>,
    role: Option<Role>,
) -> Result<(), ApiError> {
    let Some(route) = route else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no such route"));
    };
    match role {
        Some(role) if principal.role.allows(role) => Ok(()),
        Some(role) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "{method} {route} needs the {role} role; this {} has {}",
                match principal.kind {
                    PrincipalKind::ApiKey => "API key",
                    PrincipalKind::Session => "session",
                },
                principal.role
            ),
        )),
        None => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("{method} {route} has no access rule, so nobody may call it"),
        )),
    }
}

/// `vms.create`, `vms.delete`, `vms.execute`, `api-keys.create`, `tasks.cancel`, …:
/// the route's fixed segments, plus the verb for plain collection/item routes.
pub fn action_name(method: &http::Method, route: &str) -> String {
    let rest = route.trim_start_matches("/api/v1").trim_start_matches('/');
    let parts: Vec<&str> = rest
        .split('/')
        .filter(|s| !s.is_empty() && !s.starts_with('{'))
        .collect();
    let ends_with_param = rest.ends_with('}');
    let verb = match *method {
        http::Method::POST if parts.len() == 1 && !ends_with_param => Some("create"),
        http::Method::DELETE => Some("delete"),
        http::Method::PATCH | http::Method::PUT if ends_with_param => Some("update"),
        http::Method::PUT => Some("write"),
        http::Method::GET => Some("read"),
        _ => None,
    };
    let mut name = parts.join(".");
    if let Some(verb) = verb {
        name.push('.');
        name.push_str(verb);
    }
    name
}

/// The value of `{id}` (the first path parameter) in `path` for `route`.
fn path_id(route: &str, path: &str) -> Option<String> {
    route
        .split('/')
        .zip(path.split('/'))
        .find(|(template, _)| template.starts_with('{'))
        .map(|(_, value)| value.to_string())
}

/// The routes that upgrade to a WebSocket (GET only).
pub const WEBSOCKET_ROUTES: [&str; 4] = [
    "/api/v1/vms/{id}/exec/ws",
    "/api/v1/workspaces/{id}/session",
    "/api/v1/events",
    "/api/v1/logs/stream",
];

/// `?token=` on a WebSocket upgrade. Browsers cannot set headers on a WebSocket, so
/// the token may ride in the URL there, and only there: a GET upgrade of one of
/// [`WEBSOCKET_ROUTES`] (the access log records paths without the query string).
/// Anywhere else a token in a URL would end up in proxies' logs and browser history.
fn websocket_query_token(request: &Request) -> Option<String> {
    let upgrade = request
        .headers()
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())?;
    if !upgrade.eq_ignore_ascii_case("websocket") || request.method() != http::Method::GET {
        return None;
    }
    let route = request.extensions().get::<MatchedPath>()?.as_str();
    if !WEBSOCKET_ROUTES.contains(&route) {
        return None;
    }
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(request.uri().query()?).ok()?;
    pairs
        .into_iter()
        .find(|(key, _)| key == "token")
        .map(|(_, token)| token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    #[test]
    fn actions_are_named_after_routes() {
        assert_eq!(action_name(&Method::POST, "/api/v1/vms"), "vms.create");
        assert_eq!(
            action_name(&Method::DELETE, "/api/v1/vms/{id}"),
            "vms.delete"
        );
        assert_eq!(
            action_name(&Method::POST, "/api/v1/vms/{id}/execute"),
            "vms.execute"
        );
        assert_eq!(
            action_name(&Method::POST, "/api/v1/tasks/{id}/cancel"),
            "tasks.cancel"
        );
        assert_eq!(
            action_name(&Method::POST, "/api/v1/tasks/{id}/retry"),
            "tasks.retry"
        );
        assert_eq!(
            action_name(&Method::DELETE, "/api/v1/tasks/{id}"),
            "tasks.delete"
        );
        assert_eq!(
            action_name(&Method::PATCH, "/api/v1/users/{id}"),
            "users.update"
        );
        assert_eq!(
            action_name(&Method::PUT, "/api/v1/vms/{id}/files"),
            "vms.files.write"
        );
    }

    #[test]
    fn the_id_comes_from_the_path() {
        assert_eq!(
            path_id("/api/v1/vms/{id}/execute", "/api/v1/vms/abc/execute"),
            Some("abc".into())
        );
        assert_eq!(path_id("/api/v1/vms", "/api/v1/vms"), None);
    }
}
