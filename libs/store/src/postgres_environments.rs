//! [`EnvironmentStore`] for PostgreSQL (table from
//! `migrations/postgres/0006_environments_secrets.sql`).

use aetherium_types::Environment;
use async_trait::async_trait;
use sqlx::Row;
use sqlx::postgres::PgRow;

use super::Page;
use super::environments::{EnvironmentStore, corrupt, keyset_bounds, name_taken};
use super::postgres::{PgStore, jsonb};
use super::sqlite::{from_ms, is_unique_violation, to_ms};
use crate::error::CoreResult;

fn json_column<T: serde::de::DeserializeOwned>(row: &PgRow, column: &str) -> CoreResult<T> {
    serde_json::from_value(row.try_get(column)?).map_err(|e| corrupt(column, e))
}

fn environment_from_row(row: &PgRow) -> CoreResult<Environment> {
    Ok(Environment {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        image: row.try_get("image")?,
        vcpus: row.try_get::<i64, _>("vcpus")? as u32,
        memory_mb: row.try_get::<i64, _>("memory_mb")? as u64,
        git_repo_url: row.try_get("git_repo_url")?,
        git_branch: row.try_get("git_branch")?,
        working_directory: row.try_get("working_directory")?,
        tools: json_column(row, "tools")?,
        env_vars: json_column(row, "env_vars")?,
        mcp_servers: json_column(row, "mcp_servers")?,
        idle_timeout_seconds: row.try_get::<i64, _>("idle_timeout_seconds")? as u64,
        network_policy: row
            .try_get::<Option<sqlx::types::Json<aetherium_types::NetworkPolicy>>, _>(
                "network_policy",
            )?
            .map(|p| p.0),
        created_at: from_ms(row.try_get("created_at")?),
        updated_at: from_ms(row.try_get("updated_at")?),
    })
}

#[async_trait]
impl EnvironmentStore for PgStore {
    async fn insert_environment(&self, env: &Environment) -> CoreResult<()> {
        let result = sqlx::query(
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
        .bind(jsonb(&env.tools))
        .bind(jsonb(&env.env_vars))
        .bind(jsonb(&env.mcp_servers))
        .bind(env.idle_timeout_seconds as i64)
        .bind(to_ms(env.created_at))
        .bind(to_ms(env.updated_at))
        .bind(env.network_policy.as_ref().map(sqlx::types::Json))
        .execute(self.pool())
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(name_taken(&env.name)),
            Err(e) => Err(e.into()),
        }
    }

    async fn get_environment(&self, id: &str) -> CoreResult<Option<Environment>> {
        sqlx::query("SELECT * FROM environments WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .as_ref()
            .map(environment_from_row)
            .transpose()
    }

    async fn get_environment_by_name(&self, name: &str) -> CoreResult<Option<Environment>> {
        sqlx::query("SELECT * FROM environments WHERE name = $1")
            .bind(name)
            .fetch_optional(self.pool())
            .await?
            .as_ref()
            .map(environment_from_row)
            .transpose()
    }

    async fn list_environments(&self, page: &Page) -> CoreResult<(Vec<Environment>, u64)> {
        let (after_ms, after_id) = keyset_bounds(page);
        let rows = sqlx::query(
            "SELECT * FROM environments
             WHERE ($1::BIGINT IS NULL OR created_at < $1
                    OR (created_at = $1 AND id < $2::TEXT))
             ORDER BY created_at DESC, id DESC LIMIT $3",
        )
        .bind(after_ms)
        .bind(after_id)
        .bind(i64::from(page.limit))
        .fetch_all(self.pool())
        .await?;
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM environments")
            .fetch_one(self.pool())
            .await?;
        let envs = rows
            .iter()
            .map(environment_from_row)
            .collect::<CoreResult<_>>()?;
        Ok((envs, total as u64))
    }

    async fn update_environment(&self, env: &Environment) -> CoreResult<bool> {
        let result = sqlx::query(
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
        .bind(jsonb(&env.tools))
        .bind(jsonb(&env.env_vars))
        .bind(jsonb(&env.mcp_servers))
        .bind(env.idle_timeout_seconds as i64)
        .bind(to_ms(env.updated_at))
        .bind(&env.id)
        .bind(env.network_policy.as_ref().map(sqlx::types::Json))
        .execute(self.pool())
        .await;
        match result {
            Ok(done) => Ok(done.rows_affected() > 0),
            Err(e) if is_unique_violation(&e) => Err(name_taken(&env.name)),
            Err(e) => Err(e.into()),
        }
    }

    async fn delete_environment(&self, id: &str) -> CoreResult<bool> {
        let done = sqlx::query("DELETE FROM environments WHERE id = $1")
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() > 0)
    }
}
