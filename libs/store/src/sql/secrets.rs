//! [`SecretStore`] (table from `0007_environments_secrets.sql` on SQLite,
//! `0006_environments_secrets.sql` on PostgreSQL).

use aetherium_types::{Secret, SecretScope};
use async_trait::async_trait;

use super::dialect::{Dialect, Model};
use super::{SqlStore, from_ms, parse_enum, to_ms};
use crate::error::CoreResult;
use crate::secrets::{Sealed, SecretStore, checked_owner, list_owner};

#[derive(sqlx::FromRow)]
pub struct SecretRow {
    id: String,
    name: String,
    #[sqlx(rename = "type")]
    secret_type: String,
    description: String,
    scope: String,
    workspace_id: Option<String>,
    key_id: String,
    nonce: Vec<u8>,
    encrypted_value: Vec<u8>,
    created_at: i64,
    updated_at: i64,
}

impl SecretRow {
    fn secret(&self) -> CoreResult<Secret> {
        Ok(Secret {
            id: self.id.clone(),
            name: self.name.clone(),
            secret_type: parse_enum(&self.secret_type)?,
            description: self.description.clone(),
            scope: parse_enum(&self.scope)?,
            workspace_id: self.workspace_id.clone(),
            key_id: self.key_id.clone(),
            created_at: from_ms(self.created_at),
            updated_at: from_ms(self.updated_at),
        })
    }
}

impl Model for Secret {
    type Row = SecretRow;
    fn from_row(row: SecretRow) -> CoreResult<Secret> {
        row.secret()
    }
}

impl Model for (Secret, Sealed) {
    type Row = SecretRow;
    fn from_row(row: SecretRow) -> CoreResult<(Secret, Sealed)> {
        let secret = row.secret()?;
        let sealed = Sealed {
            key_id: row.key_id,
            nonce: row.nonce,
            ciphertext: row.encrypted_value,
        };
        Ok((secret, sealed))
    }
}

#[async_trait]
impl<DB: Dialect> SecretStore for SqlStore<DB> {
    async fn put_secret(&self, meta: &Secret, sealed: &Sealed) -> CoreResult<Secret> {
        let workspace_id = checked_owner(meta)?;
        // The conflict target is the unique index's own expression list.
        self.query(
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
        .one(self.pool())
        .await
    }

    async fn get_secret(&self, id: &str) -> CoreResult<Option<(Secret, Sealed)>> {
        self.query("SELECT * FROM workspace_secrets WHERE id = $1")
            .bind(id)
            .optional::<(Secret, Sealed)>(self.pool())
            .await
    }

    async fn list_secrets(
        &self,
        scope: SecretScope,
        workspace_id: Option<&str>,
    ) -> CoreResult<Vec<Secret>> {
        let owner = list_owner(scope, workspace_id)?;
        self.query(
            "SELECT * FROM workspace_secrets
             WHERE scope = $1 AND COALESCE(workspace_id, '') = $2
             ORDER BY name, id",
        )
        .bind(scope.as_str())
        .bind(owner)
        .all(self.pool())
        .await
    }

    async fn secrets_for_injection(&self, workspace_id: &str) -> CoreResult<Vec<(Secret, Sealed)>> {
        self.query(
            "SELECT * FROM workspace_secrets s
             WHERE (s.scope = 'workspace' AND s.workspace_id = $1)
                OR (s.scope = 'global' AND NOT EXISTS (
                        SELECT 1 FROM workspace_secrets own
                         WHERE own.scope = 'workspace' AND own.workspace_id = $1
                           AND own.name = s.name))
             ORDER BY s.name",
        )
        .bind(workspace_id)
        .all(self.pool())
        .await
    }

    async fn delete_secret(&self, id: &str) -> CoreResult<bool> {
        let done = self
            .query("DELETE FROM workspace_secrets WHERE id = $1")
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(done > 0)
    }

    async fn delete_workspace_secrets(&self, workspace_id: &str) -> CoreResult<u64> {
        let done = self
            .query("DELETE FROM workspace_secrets WHERE scope = 'workspace' AND workspace_id = $1")
            .bind(workspace_id)
            .execute(self.pool())
            .await?;
        Ok(done)
    }

    async fn list_all_sealed(&self) -> CoreResult<Vec<(Secret, Sealed)>> {
        self.query("SELECT * FROM workspace_secrets ORDER BY created_at, id")
            .all(self.pool())
            .await
    }

    async fn update_sealed(
        &self,
        id: &str,
        previous: &Sealed,
        sealed: &Sealed,
    ) -> CoreResult<bool> {
        let done = self
            .query(
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
        Ok(done > 0)
    }
}
