//! Bearer-token authentication. Every route but health needs it. Embedded mode has
//! one admin token; API keys with roles replace it in the public-API work.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::StatusCode;
use sha2::{Digest, Sha256};

use aetherium_types::{Principal, PrincipalKind, Role};
use axum::extract::MatchedPath;

use crate::AppState;
use crate::access::required_role;
use crate::error::ApiError;

pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Compares digests in constant time, so response timing says nothing about the token.
fn digests_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub async fn require_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let header = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .map(str::to_string);
    let presented = header.or_else(|| websocket_query_token(&request));
    match presented.as_deref() {
        Some(token) if digests_equal(&token_digest(token), &state.token_digest) => {
            let principal = Principal {
                id: "admin-token".into(),
                name: "admin token".into(),
                kind: PrincipalKind::ApiKey,
                role: Role::Admin,
            };
            authorize(&principal, &request)?;
            let mut request = request;
            request.extensions_mut().insert(principal);
            Ok(next.run(request).await)
        }
        Some(_) => Err(ApiError::new(StatusCode::UNAUTHORIZED, "invalid API token")),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing `Authorization: Bearer <token>` header",
        )),
    }
}

/// `?token=` on a WebSocket upgrade. Browsers cannot set headers on a WebSocket, so
/// the token may ride in the URL there, and only there (the access log records paths
/// without the query string).
fn websocket_query_token(request: &Request) -> Option<String> {
    let upgrade = request
        .headers()
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())?;
    if !upgrade.eq_ignore_ascii_case("websocket") {
        return None;
    }
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(request.uri().query()?).ok()?;
    pairs
        .into_iter()
        .find(|(key, _)| key == "token")
        .map(|(_, token)| token)
}

/// Checks the principal's role against the route's entry in [`crate::access`].
fn authorize(principal: &Principal, request: &Request) -> Result<(), ApiError> {
    let Some(path) = request.extensions().get::<MatchedPath>() else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no such route"));
    };
    match required_role(request.method(), path.as_str()) {
        Some(role) if principal.role.allows(role) => Ok(()),
        Some(role) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "{} {} needs the {role} role; this {} has {}",
                request.method(),
                path.as_str(),
                match principal.kind {
                    PrincipalKind::ApiKey => "API key",
                    PrincipalKind::Session => "session",
                },
                principal.role
            ),
        )),
        None => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "{} {} has no access rule, so nobody may call it",
                request.method(),
                path.as_str()
            ),
        )),
    }
}
