//! Environments: reusable workspace templates (table `environments`). Names are
//! unique. Lists, maps and MCP servers are stored as JSON (TEXT on SQLite, JSONB on
//! PostgreSQL); timestamps as integer milliseconds. Behaviour is tested on both
//! databases by `tests/store_conformance_workspaces.rs`.

use aetherium_types::Environment;
use async_trait::async_trait;

use super::Page;
use crate::error::{CoreError, CoreResult};

#[async_trait]
pub trait EnvironmentStore: Send + Sync + 'static {
    /// Inserts an environment; one with the same name is a `Conflict`.
    async fn insert_environment(&self, env: &Environment) -> CoreResult<()>;
    async fn get_environment(&self, id: &str) -> CoreResult<Option<Environment>>;
    async fn get_environment_by_name(&self, name: &str) -> CoreResult<Option<Environment>>;
    /// A page of environments, newest first (`created_at DESC, id DESC`), and how
    /// many there are in all.
    async fn list_environments(&self, page: &Page) -> CoreResult<(Vec<Environment>, u64)>;
    /// Replaces every field but `id` and `created_at`; returns whether it existed.
    /// Renaming onto another environment's name is a `Conflict`.
    async fn update_environment(&self, env: &Environment) -> CoreResult<bool>;
    /// Returns whether it existed.
    async fn delete_environment(&self, id: &str) -> CoreResult<bool>;
}

pub(crate) fn name_taken(name: &str) -> CoreError {
    CoreError::Conflict(format!("an environment named {name:?} already exists"))
}

pub(crate) fn corrupt(column: &str, e: serde_json::Error) -> CoreError {
    CoreError::Internal(anyhow::anyhow!(
        "corrupt environments row: column {column}: {e}"
    ))
}
