//! E2B compatibility: the control plane E2B's SDKs call (`control`, in E2B's wire
//! shapes, `model`) and the relay of their envd traffic to each sandbox's agent
//! (`envd`). Mounted at `/e2b`, so that `E2B_API_URL` and `E2B_SANDBOX_URL` are both
//! `<server>/e2b`; envd traffic may also arrive by host name (`49983-<id>.<domain>`,
//! `server.e2b_domain`). The routes follow E2B's API, not ours: they are documented
//! in docs/e2b.md rather than in `/api/v1`'s OpenAPI, and their roles are in
//! [`crate::access::E2B_ROUTE_ROLES`].

pub mod control;
pub mod envd;
pub mod model;

use axum::Router;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::{get, post};

use crate::AppState;

/// The routes under `/e2b`, with their full paths (so the auth middleware matches
/// them against [`crate::access::E2B_ROUTE_ROLES`]): the control plane behind
/// API-key auth (`X-API-KEY`, or a bearer token), and `/e2b/health`. envd's other
/// requests under `/e2b` reach [`root_fallback`].
pub fn router(state: AppState) -> Router<AppState> {
    let control = Router::new()
        .route(
            "/e2b/v2/sandboxes",
            post(control::create).get(control::list_v2),
        )
        .route(
            "/e2b/sandboxes",
            post(control::create).get(control::list_v1),
        )
        .route(
            "/e2b/sandboxes/{id}",
            get(control::get).delete(control::kill),
        )
        .route("/e2b/v2/sandboxes/{id}/connect", post(control::connect))
        .route("/e2b/sandboxes/{id}/connect", post(control::connect))
        .route("/e2b/sandboxes/{id}/timeout", post(control::set_timeout))
        .route("/e2b/sandboxes/{id}/pause", post(control::pause))
        .route("/e2b/sandboxes/{id}/metrics", get(control::metrics))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::timeout::limit_duration,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state,
            crate::auth::require_auth,
        ));
    Router::new()
        .route("/e2b/health", get(envd::health))
        .merge(control)
}

/// What no route of the server claims: envd's, for a request addressed to a
/// sandbox by host name; everything else goes to `otherwise`.
pub async fn by_host_or(
    state: AppState,
    request: Request,
    otherwise: impl AsyncFnOnce(AppState, Request) -> Response,
) -> Response {
    match envd::sandbox_by_host(&state, request.headers()) {
        Some(id) => envd::relay(&state, &id, request).await,
        None => otherwise(state, request).await,
    }
}

/// `GET /health`: envd's probe for a request addressed to a sandbox by host name,
/// the platform's health otherwise.
pub async fn root_health(State(state): State<AppState>, request: Request) -> Response {
    by_host_or(state, request, async |state, _| {
        crate::routes::health(State(state)).await
    })
    .await
}

/// The server's fallback: envd by host name, or under `/e2b` (where a request
/// names no sandbox, a JSON 404); else the dashboard's files.
pub async fn root_fallback(State(state): State<AppState>, request: Request) -> Response {
    by_host_or(state, request, async |state, request| {
        if request.uri().path().starts_with(PREFIX) {
            envd::under_prefix(&state, request).await
        } else {
            crate::dashboard::fallback(State(state), request).await
        }
    })
    .await
}

/// Where E2B's API and envd relay are mounted.
pub const PREFIX: &str = "/e2b/";
