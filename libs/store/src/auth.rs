//! Storage of API keys, users, sessions and the audit log: a trait of its own, so a
//! database implements it beside [`super::Store`] (SQLite now, PostgreSQL later).

use aetherium_types::{ApiKey, AuditEntry, KeyQuota, User};
use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::error::CoreResult;

/// A dashboard session as stored (the token itself is never stored).
#[derive(Debug, Clone)]
pub struct Session {
    pub id: String,
    pub user_id: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// Filters of the audit log; entries come newest first.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub actor_id: Option<String>,
    pub resource_id: Option<String>,
    pub action: Option<String>,
    /// Only entries with a smaller `seq` (the previous page's last one).
    pub before: Option<i64>,
    pub limit: u32,
}

#[async_trait]
pub trait AuthStore: Send + Sync + 'static {
    async fn count_api_keys(&self) -> CoreResult<u64>;
    async fn insert_api_key(&self, key: &ApiKey, key_hash: &str) -> CoreResult<()>;
    async fn api_key_by_hash(&self, key_hash: &str) -> CoreResult<Option<ApiKey>>;
    async fn get_api_key(&self, id: &str) -> CoreResult<Option<ApiKey>>;
    async fn list_api_keys(&self) -> CoreResult<Vec<ApiKey>>;
    /// Sets `revoked_at` unless already revoked; returns whether it changed.
    async fn revoke_api_key(&self, id: &str, at: DateTime<Utc>) -> CoreResult<bool>;
    async fn touch_api_key(&self, id: &str, at: DateTime<Utc>) -> CoreResult<()>;
    /// Sets or clears a key's quota; returns whether the key exists.
    async fn set_api_key_quota(&self, id: &str, quota: Option<&KeyQuota>) -> CoreResult<bool>;

    /// Inserts a user; a taken username is a `Conflict`.
    async fn insert_user(&self, user: &User, password_hash: &str) -> CoreResult<()>;
    async fn get_user(&self, id: &str) -> CoreResult<Option<User>>;
    /// The user and its password hash, for logins.
    async fn user_credentials(&self, username: &str) -> CoreResult<Option<(User, String)>>;
    async fn list_users(&self) -> CoreResult<Vec<User>>;
    /// Writes role, disabled, updated_at, last_login_at, and the hash when given.
    async fn update_user(&self, user: &User, password_hash: Option<&str>) -> CoreResult<()>;
    /// Deletes the user and its sessions; returns whether it existed.
    async fn delete_user(&self, id: &str) -> CoreResult<bool>;

    async fn insert_session(&self, session: &Session, token_hash: &str) -> CoreResult<()>;
    async fn session_by_hash(&self, token_hash: &str) -> CoreResult<Option<Session>>;
    async fn delete_session(&self, id: &str) -> CoreResult<()>;
    async fn delete_user_sessions(&self, user_id: &str) -> CoreResult<u64>;
    async fn delete_expired_sessions(&self, now: DateTime<Utc>) -> CoreResult<u64>;

    /// Appends an entry (its `seq` is assigned by the store and ignored here).
    async fn append_audit(&self, entry: &AuditEntry) -> CoreResult<()>;
    async fn list_audit(&self, filter: &AuditFilter) -> CoreResult<Vec<AuditEntry>>;
}
