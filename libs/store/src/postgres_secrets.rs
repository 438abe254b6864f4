//! [`SecretStore`] for PostgreSQL (table from
//! `migrations/postgres/0006_environments_secrets.sql`).

use aetherium_types::{Secret, SecretScope};
use async_trait::async_trait;
use sqlx::Row;
use sqlx::postgres::PgRow;

use super::postgres::PgStore;
use super::secrets::{SecretStore, checked_owner, list_owner};
use super::sqlite::{from_ms, parse_enum, to_ms};
use crate::error::CoreResult;
use crate::secrets::Sealed;

fn secret_from_row(row: &PgRow) -> CoreResult<Secret> {
    Ok(Secret {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        secret_type: parse_enum(row.try_get::<&str, _>("type")?)?,
        description: row.try_get("description")?,
        scope: parse_enum(row.try_get::<&str, _>("scope")?)?,
        workspace_id: row.try_get("workspace_id")?,
        key_id: row.try_get("key_id")?,
        created_at: from_ms(row.try_get("created_at")?),
        updated_at: from_ms(row.try_get("updated_at")?),
    })
}

fn sealed_from_row(row: &PgRow) -> CoreResult<(Secret, Sealed)> {
    let sealed = Sealed {
        key_id: row.try_get("key_id")?,
        nonce: row.try_get("nonce")?,
        ciphertext: row.try_get("encrypted_value")?,
    };
    Ok((secret_from_row(row)?, sealed))
}

#[async_trait]
impl SecretStore for PgStore {
    async fn put_secret(&self, meta: &Secret, sealed: &Sealed) -> CoreResult<Secret> {
        let workspace_id = checked_owner(meta)?;
        // The conflict target is the unique index's own expression list.
        let row = sqlx::query(
            "INSERT INTO workspace_secrets (id, workspace_id, name, type, description, scope,
                encrypted_value, nonce, key_id, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
             ON CONFLICT (scope, COALESCE(workspace_id, ''), name) DO UPDATE SET
                type = excluded.type, description = excluded.description,
                encrypted_value = excluded.encrypted_value, nonce = excluded.nonce,
                key_id = excluded.key_id, updated_at = excluded.updated_at
             RETURNING *",
        )
        .bind(&meta.id)
        .bind(workspace_id)
        .bind(&meta.name)
        .bind(meta.secret_type.as_str())
        .bind(&meta.description)
        .bind(meta.scope.as_str())
        .bind(&sealed.ciphertext)
        .bind(&sealed.nonce)
        .bind(&sealed.key_id)
        .bind(to_ms(meta.created_at))
        .bind(to_ms(meta.updated_at))
        .fetch_one(self.pool())
        .await?;
        secret_from_row(&row)
    }

    async fn get_secret(&self, id: &str) -> CoreResult<Option<(Secret, Sealed)>> {
        sqlx::query("SELECT * FROM workspace_secrets WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .as_ref()
            .map(sealed_from_row)
            .transpose()
    }

    async fn list_secrets(
        &self,
        scope: SecretScope,
        workspace_id: Option<&str>,
    ) -> CoreResult<Vec<Secret>> {
        let owner = list_owner(scope, workspace_id)?;
        let rows = sqlx::query(
            "SELECT * FROM workspace_secrets
             WHERE scope = $1 AND COALESCE(workspace_id, '') = $2
             ORDER BY name, id",
        )
        .bind(scope.as_str())
        .bind(owner)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(secret_from_row).collect()
    }

    async fn secrets_for_injection(&self, workspace_id: &str) -> CoreResult<Vec<(Secret, Sealed)>> {
        let rows = sqlx::query(
            "SELECT * FROM workspace_secrets s
             WHERE (s.scope = 'workspace' AND s.workspace_id = $1)
                OR (s.scope = 'global' AND NOT EXISTS (
                        SELECT 1 FROM workspace_secrets own
                         WHERE own.scope = 'workspace' AND own.workspace_id = $1
                           AND own.name = s.name))
             ORDER BY s.name",
        )
        .bind(workspace_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(sealed_from_row).collect()
    }

    async fn delete_secret(&self, id: &str) -> CoreResult<bool> {
        let done = sqlx::query("DELETE FROM workspace_secrets WHERE id = $1")
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn delete_workspace_secrets(&self, workspace_id: &str) -> CoreResult<u64> {
        let done = sqlx::query(
            "DELETE FROM workspace_secrets WHERE scope = 'workspace' AND workspace_id = $1",
        )
        .bind(workspace_id)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected())
    }

    async fn list_all_sealed(&self) -> CoreResult<Vec<(Secret, Sealed)>> {
        let rows = sqlx::query("SELECT * FROM workspace_secrets ORDER BY created_at, id")
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(sealed_from_row).collect()
    }

    async fn update_sealed(
        &self,
        id: &str,
        previous: &Sealed,
        sealed: &Sealed,
    ) -> CoreResult<bool> {
        let done = sqlx::query(
            "UPDATE workspace_secrets SET encrypted_value = $1, nonce = $2, key_id = $3
             WHERE id = $4 AND key_id = $5 AND nonce = $6",
        )
        .bind(&sealed.ciphertext)
        .bind(&sealed.nonce)
        .bind(&sealed.key_id)
        .bind(id)
        .bind(&previous.key_id)
        .bind(&previous.nonce)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() > 0)
    }
}
