//! Accounts and access: logins and sessions, API keys, users, the audit log.

use std::net::SocketAddr;

use aetherium_core::auth::Authenticated;
use aetherium_core::store::AuditFilter;
use aetherium_types::{
    ApiKey, ApiKeyList, AuditEntry, AuditList, CreateApiKeyRequest, CreateApiKeyResponse,
    CreateUserRequest, LoginRequest, Principal, UpdateUserRequest, User, UserList, WhoAmI,
};
use axum::Extension;
use axum::extract::{ConnectInfo, FromRequestParts, State};

use crate::extract::Path;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use http::StatusCode;
use http::request::Parts;
use serde::Deserialize;

use crate::AppState;
use crate::auth::{AuditResource, too_many_requests};
use crate::error::ApiError;
use crate::extract::{Json, Query};

type ApiResult<T> = Result<T, ApiError>;

/// The client's IP address, when the server was started with connection info.
pub struct ClientAddr(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientAddr(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip().to_string()),
        ))
    }
}

fn with_resource(status: StatusCode, body: impl IntoResponse, id: &str) -> Response {
    let mut response = (status, body).into_response();
    response
        .extensions_mut()
        .insert(AuditResource(id.to_string()));
    response
}

// ---- Sessions -----------------------------------------------------------------

/// How many usernames' worth of login attempts one address gets.
const LOGIN_NAMES_PER_ADDRESS: u32 = 4;

#[utoipa::path(
    post,
    path = "/api/v1/auth/login",
    tag = "auth",
    summary = "Log in: username and password for a session token",
    description = "Public. The session token goes in `Authorization: Bearer` like an API key. Rate-limited per address and username; every attempt is audited.",
    security(()),
    request_body = aetherium_types::LoginRequest,
    responses(
        (status = 200, description = "Logged in", body = aetherium_types::LoginResponse),
        (status = 401, description = "Wrong username or password, or the user is disabled", body = aetherium_types::ErrorResponse),
        (status = 429, description = "Too many login attempts from this address for this user", body = aetherium_types::ErrorResponse),
    )
)]
/// `POST /auth/login`: username + password → a session token. Rate-limited per
/// address and username; every attempt is audited.
pub async fn login(
    State(state): State<AppState>,
    ClientAddr(remote): ClientAddr,
    Json(req): Json<LoginRequest>,
) -> Response {
    let limiter_key = format!(
        "login:{}:{}",
        remote.as_deref().unwrap_or("-"),
        req.username
    );
    let per_minute = state.login_attempts_per_minute;
    if let Err(wait) =
        state
            .login_limits
            .check(&limiter_key, f64::from(per_minute) / 60.0, per_minute)
    {
        return too_many_requests(wait);
    }
    // Also per address whatever the name: trying many names must not multiply the
    // budget (each attempt costs a password hash).
    let address_key = format!("login-address:{}", remote.as_deref().unwrap_or("-"));
    let per_address = per_minute.saturating_mul(LOGIN_NAMES_PER_ADDRESS);
    if let Err(wait) =
        state
            .login_limits
            .check(&address_key, f64::from(per_address) / 60.0, per_address)
    {
        return too_many_requests(wait);
    }
    let result = state.auth.login(&req.username, &req.password).await;
    let (response, actor) = match result {
        Ok(session) => {
            let actor = Some((session.user.id.clone(), session.user.username.clone()));
            (Json(session).into_response(), actor)
        }
        Err(e) => (ApiError::from(e).into_response(), None),
    };
    state
        .auth
        .audit(&AuditEntry {
            seq: 0,
            at: Utc::now(),
            actor_id: actor.as_ref().map(|a| a.0.clone()),
            actor_name: Some(
                actor
                    .map(|a| a.1)
                    .unwrap_or_else(|| req.username.chars().take(64).collect()),
            ),
            action: "auth.login".into(),
            method: "POST".into(),
            route: "/api/v1/auth/login".into(),
            resource_id: None,
            status: response.status().as_u16(),
            remote_addr: remote,
        })
        .await;
    response
}

#[utoipa::path(
    post,
    path = "/api/v1/auth/logout",
    tag = "auth",
    summary = "Log out: end this session",
    responses(
        (status = 204, description = "The session is over"),
        (status = 400, description = "The credential is an API key (revoke it instead)", body = aetherium_types::ErrorResponse),
    )
)]
/// `POST /auth/logout`: ends the session the request was made with.
pub async fn logout(
    State(state): State<AppState>,
    Extension(who): Extension<Authenticated>,
) -> ApiResult<StatusCode> {
    state.auth.logout(&who).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get,
    path = "/api/v1/auth/me",
    tag = "auth",
    summary = "Who this credential belongs to",
    responses(
        (status = 200, description = "The caller", body = aetherium_types::WhoAmI),
    )
)]
/// `GET /auth/me`: who this credential belongs to.
pub async fn me(Extension(who): Extension<Authenticated>) -> Json<WhoAmI> {
    Json(WhoAmI {
        principal: who.principal,
        expires_at: who.expires_at,
    })
}

// ---- API keys -----------------------------------------------------------------

#[utoipa::path(
    post,
    path = "/api/v1/api-keys",
    tag = "auth",
    summary = "Create an API key",
    request_body = aetherium_types::CreateApiKeyRequest,
    responses(
        (status = 201, description = "Created: the only time the key itself is shown", body = aetherium_types::CreateApiKeyResponse),
    )
)]
pub async fn create_api_key(
    State(state): State<AppState>,
    Extension(by): Extension<Principal>,
    Json(req): Json<CreateApiKeyRequest>,
) -> ApiResult<Response> {
    let (api_key, key) = state.auth.create_api_key(&by, &req).await?;
    let id = api_key.id.clone();
    Ok(with_resource(
        StatusCode::CREATED,
        Json(CreateApiKeyResponse { key, api_key }),
        &id,
    ))
}

#[utoipa::path(
    get,
    path = "/api/v1/api-keys",
    tag = "auth",
    summary = "List API keys (never the keys themselves)",
    responses(
        (status = 200, description = "The keys", body = aetherium_types::ApiKeyList),
    )
)]
pub async fn list_api_keys(State(state): State<AppState>) -> ApiResult<Json<ApiKeyList>> {
    let api_keys = state.auth.list_api_keys().await?;
    Ok(Json(ApiKeyList {
        total: api_keys.len() as u64,
        api_keys,
    }))
}

#[utoipa::path(
    get,
    path = "/api/v1/api-keys/{id}",
    tag = "auth",
    summary = "One API key",
    params(("id" = String, Path, description = "The API key's id")),
    responses(
        (status = 200, description = "The key", body = aetherium_types::ApiKey),
        (status = 404, description = "No such key", body = aetherium_types::ErrorResponse),
    )
)]
pub async fn get_api_key(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<ApiKey>> {
    Ok(Json(state.auth.get_api_key(&id).await?))
}

#[utoipa::path(
    patch,
    path = "/api/v1/api-keys/{id}",
    tag = "auth",
    summary = "Set an API key's quota",
    description = "Sets (or with `quota: null` removes) what the live sandboxes the key creates may take at once. It applies from the key's next request; sandboxes it already has stay.",
    params(("id" = String, Path, description = "The API key's id")),
    request_body = aetherium_types::UpdateApiKeyRequest,
    responses(
        (status = 200, description = "The key with its quota", body = aetherium_types::ApiKey),
        (status = 400, description = "A limit out of range", body = aetherium_types::ErrorResponse),
        (status = 404, description = "No such key", body = aetherium_types::ErrorResponse),
    )
)]
pub async fn update_api_key(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(req): Json<aetherium_types::UpdateApiKeyRequest>,
) -> ApiResult<Json<ApiKey>> {
    Ok(Json(
        state
            .auth
            .set_api_key_quota(&id, req.quota.as_ref())
            .await?,
    ))
}

#[utoipa::path(
    post,
    path = "/api/v1/api-keys/{id}/revoke",
    tag = "auth",
    summary = "Revoke an API key (idempotent)",
    params(("id" = String, Path, description = "The API key's id")),
    responses(
        (status = 200, description = "Revoked: it stops working at once", body = aetherium_types::ApiKey),
        (status = 404, description = "No such key", body = aetherium_types::ErrorResponse),
        (status = 409, description = "The key making the request: revoke it with another credential", body = aetherium_types::ErrorResponse),
    )
)]
/// `POST /api-keys/{id}/revoke`: revokes the key (idempotent); it stops working at
/// once. Keys are revoked, never deleted: the record stays for the audit trail. Not
/// the key making the request: that would lock its holder out mid-session (a
/// script, the last admin key).
pub async fn revoke_api_key(
    State(state): State<AppState>,
    axum::Extension(principal): axum::Extension<aetherium_types::Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<ApiKey>> {
    if principal.kind == aetherium_types::PrincipalKind::ApiKey && principal.id == id {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "this is the key making the request: revoke it with another key or a user session",
        ));
    }
    Ok(Json(state.auth.revoke_api_key(&id).await?))
}

// ---- Users --------------------------------------------------------------------

#[utoipa::path(
    post,
    path = "/api/v1/users",
    tag = "auth",
    summary = "Create a user",
    request_body = aetherium_types::CreateUserRequest,
    responses(
        (status = 201, description = "Created", body = aetherium_types::User),
        (status = 409, description = "The username is taken", body = aetherium_types::ErrorResponse),
    )
)]
pub async fn create_user(
    State(state): State<AppState>,
    Json(req): Json<CreateUserRequest>,
) -> ApiResult<Response> {
    let user = state.auth.create_user(&req).await?;
    let id = user.id.clone();
    Ok(with_resource(StatusCode::CREATED, Json(user), &id))
}

#[utoipa::path(
    get,
    path = "/api/v1/users",
    tag = "auth",
    summary = "List users",
    responses(
        (status = 200, description = "The users", body = aetherium_types::UserList),
    )
)]
pub async fn list_users(State(state): State<AppState>) -> ApiResult<Json<UserList>> {
    let users = state.auth.list_users().await?;
    Ok(Json(UserList {
        total: users.len() as u64,
        users,
    }))
}

#[utoipa::path(
    get,
    path = "/api/v1/users/{id}",
    tag = "auth",
    summary = "One user",
    params(("id" = String, Path, description = "The user's id")),
    responses(
        (status = 200, description = "The user", body = aetherium_types::User),
        (status = 404, description = "No such user", body = aetherium_types::ErrorResponse),
    )
)]
pub async fn get_user(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<User>> {
    Ok(Json(state.auth.get_user(&id).await?))
}

#[utoipa::path(
    patch,
    path = "/api/v1/users/{id}",
    tag = "auth",
    summary = "Change a user's role, password, disabled flag or quota",
    description = "A new password or disabling ends the user's sessions. A quota (`{}`: none) applies to what the user's sessions create from their next request on.",
    params(("id" = String, Path, description = "The user's id")),
    request_body = aetherium_types::UpdateUserRequest,
    responses(
        (status = 200, description = "The user as changed", body = aetherium_types::User),
        (status = 404, description = "No such user", body = aetherium_types::ErrorResponse),
    )
)]
pub async fn update_user(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(req): Json<UpdateUserRequest>,
) -> ApiResult<Json<User>> {
    Ok(Json(state.auth.update_user(&id, &req).await?))
}

#[utoipa::path(
    delete,
    path = "/api/v1/users/{id}",
    tag = "auth",
    summary = "Delete a user",
    params(("id" = String, Path, description = "The user's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such user", body = aetherium_types::ErrorResponse),
        (status = 409, description = "A session cannot delete its own user", body = aetherium_types::ErrorResponse),
    )
)]
pub async fn delete_user(
    State(state): State<AppState>,
    Extension(by): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state.auth.delete_user(&by, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- Audit log ----------------------------------------------------------------

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only entries by this principal.
    actor_id: Option<String>,
    /// Only entries about this resource.
    resource_id: Option<String>,
    /// Only this action (`vm.create`, `apikey.create`, `auth.login`, …).
    action: Option<String>,
    /// At most this many (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

pub const AUDIT_DEFAULT_LIMIT: u32 = 100;
pub const AUDIT_MAX_LIMIT: u32 = 1000;

#[utoipa::path(
    get,
    path = "/api/v1/audit",
    tag = "auth",
    summary = "The audit log, newest first",
    params(AuditQuery),
    responses(
        (status = 200, description = "A page of entries", body = aetherium_types::AuditList),
    )
)]
/// `GET /audit`: newest first, paged with `cursor`.
pub async fn list_audit(
    State(state): State<AppState>,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<AuditList>> {
    let limit = q.limit.unwrap_or(AUDIT_DEFAULT_LIMIT);
    if !(1..=AUDIT_MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {AUDIT_MAX_LIMIT}"
        )));
    }
    let before = match q.cursor.as_deref() {
        None => None,
        Some(c) => Some(
            c.parse::<i64>()
                .ok()
                .filter(|seq| *seq > 0)
                .ok_or_else(|| ApiError::bad_request("invalid cursor"))?,
        ),
    };
    let entries = state
        .auth
        .list_audit(&AuditFilter {
            actor_id: q.actor_id,
            resource_id: q.resource_id,
            action: q.action,
            before,
            limit,
        })
        .await?;
    let next_cursor = (entries.len() == limit as usize)
        .then(|| entries.last().map(|e| e.seq.to_string()))
        .flatten();
    Ok(Json(AuditList {
        entries,
        next_cursor,
    }))
}
