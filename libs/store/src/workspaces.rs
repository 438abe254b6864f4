//! Workspaces, their preparation steps and their prompts (tables `workspaces`,
//! `workspace_prep_steps` and `prompt_tasks`, named as in the Go original). Steps
//! and prompts belong to their workspace: deleting it deletes them (foreign keys
//! with ON DELETE CASCADE). Behaviour is tested on SQLite and PostgreSQL alike by
//! `tests/store_conformance_prompts.rs`.

use aetherium_types::workspace::{
    MAX_IDLE_TIMEOUT_SECONDS, MAX_PROMPT_OUTPUT_BYTES, MAX_STEP_OUTPUT_BYTES, PrepStepRun, Prompt,
    PromptStatus, Workspace, WorkspaceStatus, cap_output,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::Page;
use crate::error::{CoreError, CoreResult};

#[async_trait]
pub trait WorkspaceStore: Send + Sync + 'static {
    /// Inserts a workspace; one with the same name is a `Conflict`.
    async fn insert_workspace(&self, workspace: &Workspace) -> CoreResult<()>;
    async fn get_workspace(&self, id: &str) -> CoreResult<Option<Workspace>>;
    async fn get_workspace_by_name(&self, name: &str) -> CoreResult<Option<Workspace>>;
    /// Newest first (`created_at DESC, id DESC`), with the total count.
    async fn list_workspaces(&self, page: &Page) -> CoreResult<(Vec<Workspace>, u64)>;
    /// Writes every field but `id`, `name` and `created_at`; `NotFound` if there is
    /// no such workspace.
    async fn update_workspace(&self, workspace: &Workspace) -> CoreResult<()>;
    /// Sets the status (and `status_message` to `message`, clearing it for `None`)
    /// only if the workspace is in one of `from`: a compare-and-set, so that of
    /// concurrent transitions exactly one wins. Returns whether it changed.
    /// `updated_at` becomes now; on `ready`, `ready_at` and `last_activity_at` too
    /// (the idle clock starts when it is ready, not when it was created).
    async fn transition_workspace(
        &self,
        id: &str,
        from: &[WorkspaceStatus],
        to: WorkspaceStatus,
        message: Option<&str>,
    ) -> CoreResult<bool>;
    /// Records activity at `at` (never moving `last_activity_at` back). Returns
    /// whether the workspace exists.
    async fn touch_workspace(&self, id: &str, at: DateTime<Utc>) -> CoreResult<bool>;
    /// Ready workspaces idle past their timeout at `now`
    /// (`last_activity_at + idle_timeout_seconds < now`; a timeout of 0 never
    /// expires), oldest activity first.
    async fn idle_workspaces(&self, now: DateTime<Utc>) -> CoreResult<Vec<Workspace>>;
    /// Deletes the workspace with its steps and prompts; returns whether it existed.
    async fn delete_workspace(&self, id: &str) -> CoreResult<bool>;

    /// Replaces the workspace's steps with `steps` (in one transaction). Every
    /// step must name this workspace and have its own `order` (`InvalidInput`); an
    /// unknown workspace is `NotFound`. Output is capped as
    /// [`update_prep_step`](WorkspaceStore::update_prep_step) does.
    async fn put_prep_steps(&self, workspace_id: &str, steps: &[PrepStepRun]) -> CoreResult<()>;
    /// Writes the step (`workspace_id`, `order`): status, output (capped at
    /// [`MAX_STEP_OUTPUT_BYTES`]), exit code, error, times. `NotFound` if absent.
    async fn update_prep_step(&self, step: &PrepStepRun) -> CoreResult<()>;
    /// The workspace's steps by ascending `order`.
    async fn list_prep_steps(&self, workspace_id: &str) -> CoreResult<Vec<PrepStepRun>>;
}

#[async_trait]
pub trait PromptStore: Send + Sync + 'static {
    /// Inserts a prompt (output capped at [`MAX_PROMPT_OUTPUT_BYTES`]); an unknown
    /// workspace is `NotFound`, a known id `Conflict`.
    async fn insert_prompt(&self, prompt: &Prompt) -> CoreResult<()>;
    async fn get_prompt(&self, id: &str) -> CoreResult<Option<Prompt>>;
    /// The workspace's prompts, newest first (`created_at DESC, id DESC`).
    async fn list_prompts(&self, workspace_id: &str) -> CoreResult<Vec<Prompt>>;
    /// The pending prompt to run next: highest priority first, then oldest.
    async fn next_prompt(&self, workspace_id: &str) -> CoreResult<Option<Prompt>>;
    /// Sets the status only if the prompt is in one of `from` (compare-and-set).
    /// `started_at` is set on `running`, `completed_at` on a finished status (each
    /// only if not set yet). Returns whether it changed.
    async fn transition_prompt(
        &self,
        id: &str,
        from: &[PromptStatus],
        to: PromptStatus,
    ) -> CoreResult<bool>;
    /// Writes status, output (capped), error, exit code, task id and times;
    /// `NotFound` if absent.
    async fn update_prompt(&self, prompt: &Prompt) -> CoreResult<()>;
    /// Whether one of the workspace's prompts is `running`.
    async fn has_running_prompt(&self, workspace_id: &str) -> CoreResult<bool>;
}

/// Checks a batch for [`WorkspaceStore::put_prep_steps`] before anything is written.
pub(crate) fn check_prep_steps(workspace_id: &str, steps: &[PrepStepRun]) -> CoreResult<()> {
    let mut orders = std::collections::BTreeSet::new();
    for step in steps {
        if step.workspace_id != workspace_id {
            return Err(CoreError::InvalidInput(format!(
                "prep step {} belongs to workspace {:?}, not {workspace_id:?}",
                step.order, step.workspace_id
            )));
        }
        if !orders.insert(step.order) {
            return Err(CoreError::InvalidInput(format!(
                "two prep steps of workspace {workspace_id:?} have order {}",
                step.order
            )));
        }
    }
    Ok(())
}

pub(crate) fn step_output(step: &PrepStepRun) -> String {
    cap_output(&step.output, MAX_STEP_OUTPUT_BYTES)
}

pub(crate) fn prompt_output(prompt: &Prompt) -> String {
    cap_output(&prompt.output, MAX_PROMPT_OUTPUT_BYTES)
}

/// Error texts are stored without NUL bytes (PostgreSQL text cannot hold them) and
/// capped like output.
pub(crate) fn stored_error(error: &Option<String>) -> Option<String> {
    error.as_deref().map(|e| cap_output(e, 64 * 1024))
}

/// The idle timeout as stored; bounded so that `last_activity_at + timeout` cannot
/// overflow in SQL.
pub(crate) fn idle_timeout(w: &Workspace) -> CoreResult<i64> {
    if w.idle_timeout_seconds > MAX_IDLE_TIMEOUT_SECONDS {
        return Err(CoreError::InvalidInput(format!(
            "idle_timeout_seconds must be at most {MAX_IDLE_TIMEOUT_SECONDS}"
        )));
    }
    fit(w.idle_timeout_seconds as i64, "idle_timeout_seconds")
}

pub(crate) fn workspace_conflict(name: &str) -> CoreError {
    CoreError::Conflict(format!("a workspace named {name:?} already exists"))
}

pub(crate) fn no_workspace(id: &str) -> CoreError {
    CoreError::NotFound(format!("workspace {id:?} not found"))
}

pub(crate) fn is_foreign_key_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_foreign_key_violation())
}

/// A stored integer that must fit its field, or a corrupt row.
pub(crate) fn fit<T: TryFrom<i64>>(value: i64, column: &str) -> CoreResult<T> {
    T::try_from(value)
        .map_err(|_| CoreError::Internal(anyhow::anyhow!("corrupt row: {column} = {value}")))
}
