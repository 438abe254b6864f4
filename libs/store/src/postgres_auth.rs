//! [`AuthStore`] on PostgreSQL (same statements as `sqlite_auth.rs`, `$n` placeholders).

use aetherium_types::{ApiKey, AuditEntry, KeyQuota, User};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::postgres::PgRow;

use super::auth::{AuditFilter, AuthStore, Session};
use super::postgres::PgStore;
use super::sqlite::{from_ms, is_unique_violation, parse_enum, to_ms};
use crate::error::{CoreError, CoreResult};

fn api_key_from_row(row: &PgRow) -> CoreResult<ApiKey> {
    Ok(ApiKey {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        prefix: row.try_get("prefix")?,
        role: parse_enum(row.try_get::<&str, _>("role")?)?,
        created_by: row.try_get("created_by")?,
        created_at: from_ms(row.try_get("created_at")?),
        expires_at: row.try_get::<Option<i64>, _>("expires_at")?.map(from_ms),
        revoked_at: row.try_get::<Option<i64>, _>("revoked_at")?.map(from_ms),
        last_used_at: row.try_get::<Option<i64>, _>("last_used_at")?.map(from_ms),
        rate_limit_per_second: row
            .try_get::<Option<i64>, _>("rate_limit_per_second")?
            .map(|r| r as u32),
        quota: row
            .try_get::<Option<sqlx::types::Json<KeyQuota>>, _>("quota")?
            .map(|q| q.0),
    })
}

fn user_from_row(row: &PgRow) -> CoreResult<User> {
    Ok(User {
        id: row.try_get("id")?,
        username: row.try_get("username")?,
        role: parse_enum(row.try_get::<&str, _>("role")?)?,
        disabled: row.try_get("disabled")?,
        created_at: from_ms(row.try_get("created_at")?),
        updated_at: from_ms(row.try_get("updated_at")?),
        last_login_at: row.try_get::<Option<i64>, _>("last_login_at")?.map(from_ms),
        quota: row
            .try_get::<Option<sqlx::types::Json<KeyQuota>>, _>("quota")?
            .map(|q| q.0),
    })
}

fn session_from_row(row: &PgRow) -> CoreResult<Session> {
    Ok(Session {
        id: row.try_get("id")?,
        user_id: row.try_get("user_id")?,
        created_at: from_ms(row.try_get("created_at")?),
        expires_at: from_ms(row.try_get("expires_at")?),
    })
}

fn audit_from_row(row: &PgRow) -> CoreResult<AuditEntry> {
    Ok(AuditEntry {
        seq: row.try_get("seq")?,
        at: from_ms(row.try_get("at")?),
        actor_id: row.try_get("actor_id")?,
        actor_name: row.try_get("actor_name")?,
        action: row.try_get("action")?,
        method: row.try_get("method")?,
        route: row.try_get("route")?,
        resource_id: row.try_get("resource_id")?,
        status: row.try_get::<i64, _>("status")? as u16,
        remote_addr: row.try_get("remote_addr")?,
    })
}

#[async_trait]
impl AuthStore for PgStore {
    async fn count_api_keys(&self) -> CoreResult<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM api_keys")
            .fetch_one(self.pool())
            .await?;
        Ok(n as u64)
    }

    async fn insert_api_key(&self, key: &ApiKey, key_hash: &str) -> CoreResult<()> {
        sqlx::query(
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
        .bind(key.quota.as_ref().map(sqlx::types::Json))
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
        let row = sqlx::query("SELECT * FROM api_keys WHERE key_hash = $1")
            .bind(key_hash)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(api_key_from_row).transpose()
    }

    async fn get_api_key(&self, id: &str) -> CoreResult<Option<ApiKey>> {
        let row = sqlx::query("SELECT * FROM api_keys WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(api_key_from_row).transpose()
    }

    async fn list_api_keys(&self) -> CoreResult<Vec<ApiKey>> {
        let rows = sqlx::query("SELECT * FROM api_keys ORDER BY created_at DESC, id DESC")
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(api_key_from_row).collect()
    }

    async fn revoke_api_key(&self, id: &str, at: DateTime<Utc>) -> CoreResult<bool> {
        let done =
            sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                .bind(to_ms(at))
                .bind(id)
                .execute(self.pool())
                .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn set_api_key_quota(&self, id: &str, quota: Option<&KeyQuota>) -> CoreResult<bool> {
        let done = sqlx::query("UPDATE api_keys SET quota = $1 WHERE id = $2")
            .bind(quota.map(sqlx::types::Json))
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn touch_api_key(&self, id: &str, at: DateTime<Utc>) -> CoreResult<()> {
        sqlx::query("UPDATE api_keys SET last_used_at = $1 WHERE id = $2")
            .bind(to_ms(at))
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    async fn insert_user(&self, user: &User, password_hash: &str) -> CoreResult<()> {
        sqlx::query(
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
        .bind(user.quota.as_ref().map(sqlx::types::Json))
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
        let row = sqlx::query("SELECT * FROM users WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    async fn user_credentials(&self, username: &str) -> CoreResult<Option<(User, String)>> {
        let row = sqlx::query("SELECT * FROM users WHERE username = $1")
            .bind(username)
            .fetch_optional(self.pool())
            .await?;
        match row {
            Some(row) => Ok(Some((user_from_row(&row)?, row.try_get("password_hash")?))),
            None => Ok(None),
        }
    }

    async fn list_users(&self) -> CoreResult<Vec<User>> {
        let rows = sqlx::query("SELECT * FROM users ORDER BY created_at DESC, id DESC")
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(user_from_row).collect()
    }

    async fn update_user(&self, user: &User, password_hash: Option<&str>) -> CoreResult<()> {
        sqlx::query(
            "UPDATE users SET role = $1, disabled = $2, updated_at = $3, last_login_at = $4,
                password_hash = COALESCE($5, password_hash), quota = $6
             WHERE id = $7",
        )
        .bind(user.role.as_str())
        .bind(user.disabled)
        .bind(to_ms(user.updated_at))
        .bind(user.last_login_at.map(to_ms))
        .bind(password_hash)
        .bind(user.quota.as_ref().map(sqlx::types::Json))
        .bind(&user.id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn delete_user(&self, id: &str) -> CoreResult<bool> {
        let done = sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn insert_session(&self, session: &Session, token_hash: &str) -> CoreResult<()> {
        sqlx::query(
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
        let row = sqlx::query("SELECT * FROM sessions WHERE token_hash = $1")
            .bind(token_hash)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(session_from_row).transpose()
    }

    async fn delete_session(&self, id: &str) -> CoreResult<()> {
        sqlx::query("DELETE FROM sessions WHERE id = $1")
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    async fn delete_user_sessions(&self, user_id: &str) -> CoreResult<u64> {
        let done = sqlx::query("DELETE FROM sessions WHERE user_id = $1")
            .bind(user_id)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected())
    }

    async fn delete_expired_sessions(&self, now: DateTime<Utc>) -> CoreResult<u64> {
        let done = sqlx::query("DELETE FROM sessions WHERE expires_at <= $1")
            .bind(to_ms(now))
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected())
    }

    async fn append_audit(&self, e: &AuditEntry) -> CoreResult<()> {
        sqlx::query(
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
        let rows = sqlx::query(
            "SELECT * FROM audit_log
             WHERE ($1::TEXT IS NULL OR actor_id = $1)
               AND ($2::TEXT IS NULL OR resource_id = $2)
               AND ($3::TEXT IS NULL OR action = $3)
               AND ($4::BIGINT IS NULL OR seq < $4)
             ORDER BY seq DESC
             LIMIT $5",
        )
        .bind(&f.actor_id)
        .bind(&f.resource_id)
        .bind(&f.action)
        .bind(f.before)
        .bind(i64::from(f.limit))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(audit_from_row).collect()
    }
}
