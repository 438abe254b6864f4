//! [`AuthStore`]: API keys, users, sessions and the audit log.

use aetherium_types::{ApiKey, AuditEntry, KeyQuota, User};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::types::Json;

use super::dialect::{Dialect, Model};
use super::{SqlStore, from_ms, is_unique_violation, parse_enum, to_ms};
use crate::auth::{AuditFilter, AuthStore, Session};
use crate::error::{CoreError, CoreResult};

#[derive(sqlx::FromRow)]
pub struct ApiKeyRow {
    id: String,
    name: String,
    prefix: String,
    role: String,
    created_by: String,
    created_at: i64,
    expires_at: Option<i64>,
    revoked_at: Option<i64>,
    last_used_at: Option<i64>,
    rate_limit_per_second: Option<i64>,
    quota: Option<Json<KeyQuota>>,
}

impl Model for ApiKey {
    type Row = ApiKeyRow;
    fn from_row(row: ApiKeyRow) -> CoreResult<ApiKey> {
        Ok(ApiKey {
            id: row.id,
            name: row.name,
            prefix: row.prefix,
            role: parse_enum(&row.role)?,
            created_by: row.created_by,
            created_at: from_ms(row.created_at),
            expires_at: row.expires_at.map(from_ms),
            revoked_at: row.revoked_at.map(from_ms),
            last_used_at: row.last_used_at.map(from_ms),
            rate_limit_per_second: row.rate_limit_per_second.map(|r| r as u32),
            quota: row.quota.map(|q| q.0),
        })
    }
}

#[derive(sqlx::FromRow)]
pub struct UserRow {
    id: String,
    username: String,
    role: String,
    disabled: bool,
    created_at: i64,
    updated_at: i64,
    last_login_at: Option<i64>,
    quota: Option<Json<KeyQuota>>,
    password_hash: String,
}

impl Model for User {
    type Row = UserRow;
    fn from_row(row: UserRow) -> CoreResult<User> {
        Ok(User {
            id: row.id,
            username: row.username,
            role: parse_enum(&row.role)?,
            disabled: row.disabled,
            created_at: from_ms(row.created_at),
            updated_at: from_ms(row.updated_at),
            last_login_at: row.last_login_at.map(from_ms),
            quota: row.quota.map(|q| q.0),
        })
    }
}

/// A user with its password hash.
impl Model for (User, String) {
    type Row = UserRow;
    fn from_row(mut row: UserRow) -> CoreResult<(User, String)> {
        let hash = std::mem::take(&mut row.password_hash);
        Ok((User::from_row(row)?, hash))
    }
}

#[derive(sqlx::FromRow)]
pub struct SessionRow {
    id: String,
    user_id: String,
    created_at: i64,
    expires_at: i64,
}

impl Model for Session {
    type Row = SessionRow;
    fn from_row(row: SessionRow) -> CoreResult<Session> {
        Ok(Session {
            id: row.id,
            user_id: row.user_id,
            created_at: from_ms(row.created_at),
            expires_at: from_ms(row.expires_at),
        })
    }
}

#[derive(sqlx::FromRow)]
pub struct AuditRow {
    seq: i64,
    at: i64,
    actor_id: Option<String>,
    actor_name: Option<String>,
    action: String,
    method: String,
    route: String,
    resource_id: Option<String>,
    status: i64,
    remote_addr: Option<String>,
}

impl Model for AuditEntry {
    type Row = AuditRow;
    fn from_row(row: AuditRow) -> CoreResult<AuditEntry> {
        Ok(AuditEntry {
            seq: row.seq,
            at: from_ms(row.at),
            actor_id: row.actor_id,
            actor_name: row.actor_name,
            action: row.action,
            method: row.method,
            route: row.route,
            resource_id: row.resource_id,
            status: row.status as u16,
            remote_addr: row.remote_addr,
        })
    }
}

#[async_trait]
impl<DB: Dialect> AuthStore for SqlStore<DB> {
    async fn count_api_keys(&self) -> CoreResult<u64> {
        let n: i64 = self
            .query("SELECT COUNT(*) FROM api_keys")
            .scalar(self.pool())
            .await?;
        Ok(n as u64)
    }

    async fn insert_api_key(&self, key: &ApiKey, key_hash: &str) -> CoreResult<()> {
        self.query(
            "INSERT INTO api_keys (id, name, prefix, key_hash, role, created_by, created_at,
                expires_at, revoked_at, last_used_at, rate_limit_per_second, quota)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(&key.id)
        .bind(&key.name)
        .bind(&key.prefix)
        .bind(key_hash)
        .bind(key.role.as_str())
        .bind(&key.created_by)
        .bind(to_ms(key.created_at))
        .bind(key.expires_at.map(to_ms))
        .bind(key.revoked_at.map(to_ms))
        .bind(key.last_used_at.map(to_ms))
        .bind(key.rate_limit_per_second.map(i64::from))
        .bind(key.quota.as_ref().map(Json))
        .execute(self.pool())
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                CoreError::Conflict("an API key with this value already exists".into())
            } else {
                e.into()
            }
        })?;
        Ok(())
    }

    async fn api_key_by_hash(&self, key_hash: &str) -> CoreResult<Option<ApiKey>> {
        self.query("SELECT * FROM api_keys WHERE key_hash = $1")
            .bind(key_hash)
            .optional(self.pool())
            .await
    }

    async fn get_api_key(&self, id: &str) -> CoreResult<Option<ApiKey>> {
        self.query("SELECT * FROM api_keys WHERE id = $1")
            .bind(id)
            .optional(self.pool())
            .await
    }

    async fn list_api_keys(&self) -> CoreResult<Vec<ApiKey>> {
        self.query("SELECT * FROM api_keys ORDER BY created_at DESC, id DESC")
            .all(self.pool())
            .await
    }

    async fn revoke_api_key(&self, id: &str, at: DateTime<Utc>) -> CoreResult<bool> {
        let done = self
            .query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
            .bind(to_ms(at))
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(done > 0)
    }

    async fn set_api_key_quota(&self, id: &str, quota: Option<&KeyQuota>) -> CoreResult<bool> {
        let done = self
            .query("UPDATE api_keys SET quota = $1 WHERE id = $2")
            .bind(quota.map(Json))
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(done > 0)
    }

    async fn touch_api_key(&self, id: &str, at: DateTime<Utc>) -> CoreResult<()> {
        self.query("UPDATE api_keys SET last_used_at = $1 WHERE id = $2")
            .bind(to_ms(at))
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    async fn insert_user(&self, user: &User, password_hash: &str) -> CoreResult<()> {
        self.query(
            "INSERT INTO users (id, username, password_hash, role, disabled, created_at,
                updated_at, last_login_at, quota)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&user.id)
        .bind(&user.username)
        .bind(password_hash)
        .bind(user.role.as_str())
        .bind(user.disabled)
        .bind(to_ms(user.created_at))
        .bind(to_ms(user.updated_at))
        .bind(user.last_login_at.map(to_ms))
        .bind(user.quota.as_ref().map(Json))
        .execute(self.pool())
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                CoreError::Conflict(format!("user {:?} already exists", user.username))
            } else {
                e.into()
            }
        })?;
        Ok(())
    }

    async fn get_user(&self, id: &str) -> CoreResult<Option<User>> {
        self.query("SELECT * FROM users WHERE id = $1")
            .bind(id)
            .optional(self.pool())
            .await
    }

    async fn user_credentials(&self, username: &str) -> CoreResult<Option<(User, String)>> {
        self.query("SELECT * FROM users WHERE username = $1")
            .bind(username)
            .optional(self.pool())
            .await
    }

    async fn list_users(&self) -> CoreResult<Vec<User>> {
        self.query("SELECT * FROM users ORDER BY created_at DESC, id DESC")
            .all(self.pool())
            .await
    }

    async fn update_user(&self, user: &User, password_hash: Option<&str>) -> CoreResult<()> {
        self.query(
            "UPDATE users SET role = $1, disabled = $2, updated_at = $3, last_login_at = $4,
                password_hash = COALESCE($5, password_hash), quota = $6
             WHERE id = $7",
        )
        .bind(user.role.as_str())
        .bind(user.disabled)
        .bind(to_ms(user.updated_at))
        .bind(user.last_login_at.map(to_ms))
        .bind(password_hash)
        .bind(user.quota.as_ref().map(Json))
        .bind(&user.id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn delete_user(&self, id: &str) -> CoreResult<bool> {
        let done = self
            .query("DELETE FROM users WHERE id = $1")
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(done > 0)
    }

    async fn insert_session(&self, session: &Session, token_hash: &str) -> CoreResult<()> {
        self.query(
            "INSERT INTO sessions (id, token_hash, user_id, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&session.id)
        .bind(token_hash)
        .bind(&session.user_id)
        .bind(to_ms(session.created_at))
        .bind(to_ms(session.expires_at))
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn session_by_hash(&self, token_hash: &str) -> CoreResult<Option<Session>> {
        self.query("SELECT * FROM sessions WHERE token_hash = $1")
            .bind(token_hash)
            .optional(self.pool())
            .await
    }

    async fn delete_session(&self, id: &str) -> CoreResult<()> {
        self.query("DELETE FROM sessions WHERE id = $1")
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    async fn delete_user_sessions(&self, user_id: &str) -> CoreResult<u64> {
        let done = self
            .query("DELETE FROM sessions WHERE user_id = $1")
            .bind(user_id)
            .execute(self.pool())
            .await?;
        Ok(done)
    }

    async fn delete_expired_sessions(&self, now: DateTime<Utc>) -> CoreResult<u64> {
        let done = self
            .query("DELETE FROM sessions WHERE expires_at <= $1")
            .bind(to_ms(now))
            .execute(self.pool())
            .await?;
        Ok(done)
    }

    async fn append_audit(&self, e: &AuditEntry) -> CoreResult<()> {
        self.query(
            "INSERT INTO audit_log (at, actor_id, actor_name, action, method, route,
                resource_id, status, remote_addr)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(to_ms(e.at))
        .bind(&e.actor_id)
        .bind(&e.actor_name)
        .bind(&e.action)
        .bind(&e.method)
        .bind(&e.route)
        .bind(&e.resource_id)
        .bind(i64::from(e.status))
        .bind(&e.remote_addr)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn list_audit(&self, f: &AuditFilter) -> CoreResult<Vec<AuditEntry>> {
        // Optional filters as `$n IS NULL OR column = $n`, so the statement is static.
        self.query(
            "SELECT * FROM audit_log
             WHERE (CAST($1 AS TEXT) IS NULL OR actor_id = $1)
               AND (CAST($2 AS TEXT) IS NULL OR resource_id = $2)
               AND (CAST($3 AS TEXT) IS NULL OR action = $3)
               AND (CAST($4 AS BIGINT) IS NULL OR seq < $4)
             ORDER BY seq DESC
             LIMIT $5",
        )
        .bind(&f.actor_id)
        .bind(&f.resource_id)
        .bind(&f.action)
        .bind(f.before)
        .bind(i64::from(f.limit))
        .all(self.pool())
        .await
    }
}
