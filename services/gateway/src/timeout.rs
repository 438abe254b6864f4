//! A deadline for ordinary requests (`server.request_timeout_seconds`): a handler that
//! hangs answers 504 instead of holding the connection forever. Streams, WebSockets
//! and file transfers are exempt: they last as long as their data flows.

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::StatusCode;

use crate::AppState;
use crate::error::ApiError;

/// Routes whose responses are open-ended by design.
pub fn is_streaming(route: &str) -> bool {
    route.contains("/exec/")
        || route.ends_with("/files")
        || route.ends_with("/events")
        || route.ends_with("/logs/stream")
        || route.ends_with("/session")
}

pub async fn limit_duration(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let streaming = request
        .extensions()
        .get::<MatchedPath>()
        .is_some_and(|p| is_streaming(p.as_str()));
    if streaming {
        return next.run(request).await;
    }
    match tokio::time::timeout(state.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "the request took longer than {}s and was abandoned",
                state.request_timeout.as_secs()
            ),
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_exempt() {
        assert!(is_streaming("/api/v1/vms/{id}/exec/ws"));
        assert!(is_streaming("/api/v1/vms/{id}/exec/stream"));
        assert!(is_streaming("/api/v1/vms/{id}/files"));
        assert!(is_streaming("/api/v1/events"));
        assert!(!is_streaming("/api/v1/vms/{id}/files/stat"));
        assert!(!is_streaming("/api/v1/vms"));
    }
}
