//! Aetherium's gateway: the REST API under `/api/v1`. Handlers validate and
//! authenticate, then call the core's use cases ([`aetherium_core::Platform`]).

pub mod access;
mod auth;
mod error;
mod extract;
mod routes;

use std::time::Duration;

use aetherium_core::Platform;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use tokio::net::TcpListener;

pub use auth::token_digest;
pub use error::ApiError;

/// Request bodies larger than this are refused with 413 (file uploads excepted: see
/// [`AppState::max_upload_bytes`]).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Default for [`AppState::max_upload_bytes`]: 10 GiB.
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 10 * 1024 * 1024 * 1024;

/// Default for [`AppState::output_cap_bytes`]: 1 MiB, as `vmm.output_cap_bytes`.
pub const DEFAULT_OUTPUT_CAP_BYTES: usize = 1024 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub platform: Platform,
    /// SHA-256 of the accepted bearer token (the token itself is not kept).
    pub token_digest: [u8; 32],
    pub max_wait: Duration,
    /// Most bytes of stdout (and of stderr) persisted for a streamed or interactive
    /// execution (`vmm.output_cap_bytes`); the live stream itself is not capped.
    pub output_cap_bytes: usize,
    /// Largest file `PUT /vms/{id}/files` accepts (the only route exempt from
    /// [`MAX_BODY_BYTES`]); the body is streamed to the sandbox, never held whole.
    pub max_upload_bytes: u64,
}

impl AppState {
    /// State with the default output cap and upload limit.
    pub fn new(platform: Platform, token_digest: [u8; 32], max_wait: Duration) -> AppState {
        AppState {
            platform,
            token_digest,
            max_wait,
            output_cap_bytes: DEFAULT_OUTPUT_CAP_BYTES,
            max_upload_bytes: DEFAULT_MAX_UPLOAD_BYTES,
        }
    }
}

pub fn router(state: AppState) -> Router {
    let authenticated = Router::new()
        .route("/vms", post(routes::create_vm).get(routes::list_vms))
        .route("/vms/{id}", get(routes::get_vm).delete(routes::delete_vm))
        .route("/vms/{id}/execute", post(routes::execute))
        .route("/vms/{id}/executions", get(routes::list_executions))
        .route("/vms/{id}/exec/stream", post(routes::stream::exec_stream))
        .route("/vms/{id}/exec/ws", get(routes::ws::exec_ws))
        .route(
            "/vms/{id}/files",
            // Uploads stream to the sandbox under their own limit
            // (`AppState::max_upload_bytes`), not the 1 MiB one for JSON bodies.
            get(routes::files::download)
                .put(routes::files::upload)
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/vms/{id}/files/stat", get(routes::files::stat))
        .route("/executions/{id}", get(routes::get_execution))
        .route("/smart-execute", post(routes::smart_execute))
        .route("/tasks", get(routes::list_tasks))
        .route("/tasks/{id}", get(routes::get_task))
        .route("/queue/stats", get(routes::queue_stats))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    let api = Router::new()
        .route("/health", get(routes::health))
        .merge(authenticated);
    Router::new()
        .route("/health", get(routes::health))
        .nest("/api/v1", api)
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(
            // The path only: a WebSocket's URL may carry `?token=`, which must not be logged.
            tower_http::trace::TraceLayer::new_for_http().make_span_with(
                |request: &axum::extract::Request| {
                    tracing::debug_span!("request", method = %request.method(), path = %request.uri().path())
                },
            ),
        )
        .with_state(state)
}

/// Serves the API until `shutdown` resolves, then finishes in-flight requests.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
