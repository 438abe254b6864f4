//! [`EnvironmentStore`] (table from `0007_environments_secrets.sql` on SQLite,
//! `0006_environments_secrets.sql` on PostgreSQL).

use aetherium_types::{Environment, NetworkPolicy};
use async_trait::async_trait;
use sqlx::types::Json;

use sqlx::AssertSqlSafe;

use super::dialect::{Dialect, Model};
use super::{SqlStore, from_ms, is_unique_violation, json, keyset, keyset_sql, to_ms};
use crate::Page;
use crate::environments::{EnvironmentStore, corrupt, name_taken};
use crate::error::CoreResult;

#[derive(sqlx::FromRow)]
pub struct EnvironmentRow {
    id: String,
    name: String,
    description: String,
    image: Option<String>,
    vcpus: i64,
    memory_mb: i64,
    git_repo_url: Option<String>,
    git_branch: Option<String>,
    working_directory: String,
    tools: Json<serde_json::Value>,
    env_vars: Json<serde_json::Value>,
    mcp_servers: Json<serde_json::Value>,
    idle_timeout_seconds: i64,
    network_policy: Option<Json<NetworkPolicy>>,
    created_at: i64,
    updated_at: i64,
}

/// A JSON column as `T`; a document that does not fit is a corrupt row.
fn column<T: serde::de::DeserializeOwned>(
    name: &str,
    value: Json<serde_json::Value>,
) -> CoreResult<T> {
    serde_json::from_value(value.0).map_err(|e| corrupt(name, e))
}

impl Model for Environment {
    type Row = EnvironmentRow;
    fn from_row(row: EnvironmentRow) -> CoreResult<Environment> {
        Ok(Environment {
            id: row.id,
            name: row.name,
            description: row.description,
            image: row.image,
            vcpus: row.vcpus as u32,
            memory_mb: row.memory_mb as u64,
            git_repo_url: row.git_repo_url,
            git_branch: row.git_branch,
            working_directory: row.working_directory,
            tools: column("tools", row.tools)?,
            env_vars: column("env_vars", row.env_vars)?,
            mcp_servers: column("mcp_servers", row.mcp_servers)?,
            idle_timeout_seconds: row.idle_timeout_seconds as u64,
            network_policy: row.network_policy.map(|p| p.0),
            created_at: from_ms(row.created_at),
            updated_at: from_ms(row.updated_at),
        })
    }
}

#[async_trait]
impl<DB: Dialect> EnvironmentStore for SqlStore<DB> {
    async fn insert_environment(&self, env: &Environment) -> CoreResult<()> {
        let result = self
            .query(
                "INSERT INTO environments (id, name, description, image, vcpus, memory_mb,
                git_repo_url, git_branch, working_directory, tools, env_vars, mcp_servers,
                idle_timeout_seconds, created_at, updated_at, network_policy)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,
                $16)",
            )
            .bind(&env.id)
            .bind(&env.name)
            .bind(&env.description)
            .bind(&env.image)
            .bind(i64::from(env.vcpus))
            .bind(env.memory_mb as i64)
            .bind(&env.git_repo_url)
            .bind(&env.git_branch)
            .bind(&env.working_directory)
            .bind(json(&env.tools))
            .bind(json(&env.env_vars))
            .bind(json(&env.mcp_servers))
            .bind(env.idle_timeout_seconds as i64)
            .bind(to_ms(env.created_at))
            .bind(to_ms(env.updated_at))
            .bind(env.network_policy.as_ref().map(Json))
            .execute(self.pool())
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(name_taken(&env.name)),
            Err(e) => Err(e.into()),
        }
    }

    async fn get_environment(&self, id: &str) -> CoreResult<Option<Environment>> {
        self.query("SELECT * FROM environments WHERE id = $1")
            .bind(id)
            .optional::<Environment>(self.pool())
            .await
    }

    async fn get_environment_by_name(&self, name: &str) -> CoreResult<Option<Environment>> {
        self.query("SELECT * FROM environments WHERE name = $1")
            .bind(name)
            .optional::<Environment>(self.pool())
            .await
    }

    async fn list_environments(&self, page: &Page) -> CoreResult<(Vec<Environment>, u64)> {
        let (after_ms, after_id) = keyset(page);
        let envs = self
            .query(AssertSqlSafe(format!(
                "SELECT * FROM environments WHERE {}
             ORDER BY created_at DESC, id DESC LIMIT $3",
                keyset_sql(1)
            )))
            .bind(after_ms)
            .bind(after_id)
            .bind(i64::from(page.limit))
            .all(self.pool())
            .await?;
        let total: i64 = self
            .query("SELECT COUNT(*) FROM environments")
            .scalar(self.pool())
            .await?;
        Ok((envs, total as u64))
    }

    async fn update_environment(&self, env: &Environment) -> CoreResult<bool> {
        let result = self
            .query(
                "UPDATE environments SET name = $1, description = $2, image = $3, vcpus = $4,
                memory_mb = $5, git_repo_url = $6, git_branch = $7, working_directory = $8,
                tools = $9, env_vars = $10, mcp_servers = $11, idle_timeout_seconds = $12,
                updated_at = $13, network_policy = $15
             WHERE id = $14",
            )
            .bind(&env.name)
            .bind(&env.description)
            .bind(&env.image)
            .bind(i64::from(env.vcpus))
            .bind(env.memory_mb as i64)
            .bind(&env.git_repo_url)
            .bind(&env.git_branch)
            .bind(&env.working_directory)
            .bind(json(&env.tools))
            .bind(json(&env.env_vars))
            .bind(json(&env.mcp_servers))
            .bind(env.idle_timeout_seconds as i64)
            .bind(to_ms(env.updated_at))
            .bind(&env.id)
            .bind(env.network_policy.as_ref().map(Json))
            .execute(self.pool())
            .await;
        match result {
            Ok(done) => Ok(done > 0),
            Err(e) if is_unique_violation(&e) => Err(name_taken(&env.name)),
            Err(e) => Err(e.into()),
        }
    }

    async fn delete_environment(&self, id: &str) -> CoreResult<bool> {
        let done = self
            .query("DELETE FROM environments WHERE id = $1")
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(done > 0)
    }
}
