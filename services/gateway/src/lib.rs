//! Aetherium's gateway: the REST API under `/api/v1`. Handlers validate and
//! authenticate, then call the core's use cases ([`aetherium_core::Platform`]).

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

/// Request bodies larger than this are refused with 413.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub platform: Platform,
    /// SHA-256 of the accepted bearer token (the token itself is not kept).
    pub token_digest: [u8; 32],
    pub max_wait: Duration,
}

pub fn router(state: AppState) -> Router {
    let authenticated = Router::new()
        .route("/vms", post(routes::create_vm).get(routes::list_vms))
        .route("/vms/{id}", get(routes::get_vm).delete(routes::delete_vm))
        .route("/vms/{id}/execute", post(routes::execute))
        .route("/vms/{id}/executions", get(routes::list_executions))
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
        .layer(tower_http::trace::TraceLayer::new_for_http())
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
