//! [`WorkspaceStore`] and [`PromptStore`] (tables from `0008_workspaces.sql` on
//! SQLite, `0007_workspaces.sql` on PostgreSQL). Compare-and-set transitions are
//! single UPDATEs with the expected statuses in their WHERE: SQLite runs writers one
//! at a time, and PostgreSQL re-checks the condition on the latest row version after
//! waiting for a concurrent writer, so of racing transitions exactly one wins.

use aetherium_types::workspace::{PrepStepRun, Prompt, PromptStatus, Workspace, WorkspaceStatus};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::AssertSqlSafe;

use super::dialect::{Arg, Dialect, Model};
use super::rows::{JsonValue, json_map, json_or_default, opt_from_ms};
use super::{SqlStore, from_ms, is_unique_violation, json, keyset, keyset_sql, parse_enum, to_ms};
use crate::Page;
use crate::error::{CoreError, CoreResult};
use crate::workspaces::{
    PromptStore, WorkspaceStore, check_prep_steps, fit, idle_timeout, is_foreign_key_violation,
    no_workspace, prompt_output, step_output, stored_error, workspace_conflict,
};

#[derive(sqlx::FromRow)]
pub struct WorkspaceRow {
    id: String,
    name: String,
    description: String,
    environment_id: Option<String>,
    vm_id: Option<String>,
    status: String,
    status_message: Option<String>,
    ai_assistant: String,
    ai_assistant_config: JsonValue,
    working_directory: String,
    tools: JsonValue,
    worker_id: Option<String>,
    idle_timeout_seconds: i64,
    last_activity_at: i64,
    created_at: i64,
    updated_at: i64,
    ready_at: Option<i64>,
}

impl Model for Workspace {
    type Row = WorkspaceRow;
    fn from_row(row: WorkspaceRow) -> CoreResult<Workspace> {
        Ok(Workspace {
            id: row.id,
            name: row.name,
            description: row.description,
            environment_id: row.environment_id,
            vm_id: row.vm_id,
            status: parse_enum(&row.status)?,
            status_message: row.status_message,
            ai_assistant: parse_enum(&row.ai_assistant)?,
            ai_assistant_config: json_map(row.ai_assistant_config),
            working_directory: row.working_directory,
            tools: json_or_default(row.tools),
            worker_id: row.worker_id,
            idle_timeout_seconds: fit(row.idle_timeout_seconds, "idle_timeout_seconds")?,
            last_activity_at: from_ms(row.last_activity_at),
            created_at: from_ms(row.created_at),
            updated_at: from_ms(row.updated_at),
            ready_at: opt_from_ms(row.ready_at),
        })
    }
}

#[derive(sqlx::FromRow)]
pub struct StepRow {
    workspace_id: String,
    step_order: i64,
    #[sqlx(rename = "type")]
    step_type: String,
    status: String,
    output: String,
    exit_code: Option<i64>,
    error: Option<String>,
    started_at: Option<i64>,
    completed_at: Option<i64>,
}

impl Model for PrepStepRun {
    type Row = StepRow;
    fn from_row(row: StepRow) -> CoreResult<PrepStepRun> {
        Ok(PrepStepRun {
            workspace_id: row.workspace_id,
            order: fit(row.step_order, "step_order")?,
            step_type: parse_enum(&row.step_type)?,
            status: parse_enum(&row.status)?,
            output: row.output,
            exit_code: row.exit_code.map(|c| fit(c, "exit_code")).transpose()?,
            error: row.error,
            started_at: opt_from_ms(row.started_at),
            completed_at: opt_from_ms(row.completed_at),
        })
    }
}

#[derive(sqlx::FromRow)]
pub struct PromptRow {
    id: String,
    workspace_id: String,
    prompt: String,
    system_prompt: Option<String>,
    working_directory: Option<String>,
    environment: JsonValue,
    priority: i64,
    status: String,
    output: String,
    error: Option<String>,
    exit_code: Option<i64>,
    task_id: Option<String>,
    created_at: i64,
    started_at: Option<i64>,
    completed_at: Option<i64>,
}

impl Model for Prompt {
    type Row = PromptRow;
    fn from_row(row: PromptRow) -> CoreResult<Prompt> {
        Ok(Prompt {
            id: row.id,
            workspace_id: row.workspace_id,
            prompt: row.prompt,
            system_prompt: row.system_prompt,
            working_directory: row.working_directory,
            environment: json_or_default(row.environment),
            priority: fit(row.priority, "priority")?,
            status: parse_enum(&row.status)?,
            output: row.output,
            error: row.error,
            exit_code: row.exit_code.map(|c| fit(c, "exit_code")).transpose()?,
            task_id: row.task_id,
            created_at: from_ms(row.created_at),
            started_at: opt_from_ms(row.started_at),
            completed_at: opt_from_ms(row.completed_at),
        })
    }
}

#[async_trait]
impl<DB: Dialect> WorkspaceStore for SqlStore<DB> {
    async fn insert_workspace(&self, w: &Workspace) -> CoreResult<()> {
        let result = self
            .query(
                "INSERT INTO workspaces (id, name, description, environment_id, vm_id, status,
                status_message, ai_assistant, ai_assistant_config, working_directory, tools,
                worker_id, idle_timeout_seconds, last_activity_at, created_at, updated_at,
                ready_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
            )
            .bind(&w.id)
            .bind(&w.name)
            .bind(&w.description)
            .bind(&w.environment_id)
            .bind(&w.vm_id)
            .bind(w.status.as_str())
            .bind(&w.status_message)
            .bind(w.ai_assistant.as_str())
            .bind(json(&w.ai_assistant_config))
            .bind(&w.working_directory)
            .bind(json(&w.tools))
            .bind(&w.worker_id)
            .bind(idle_timeout(w)?)
            .bind(to_ms(w.last_activity_at))
            .bind(to_ms(w.created_at))
            .bind(to_ms(w.updated_at))
            .bind(w.ready_at.map(to_ms))
            .execute(self.pool())
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(workspace_conflict(&w.name)),
            Err(e) => Err(e.into()),
        }
    }

    async fn get_workspace(&self, id: &str) -> CoreResult<Option<Workspace>> {
        self.query("SELECT * FROM workspaces WHERE id = $1")
            .bind(id)
            .optional(self.pool())
            .await
    }

    async fn get_workspace_by_name(&self, name: &str) -> CoreResult<Option<Workspace>> {
        self.query("SELECT * FROM workspaces WHERE name = $1")
            .bind(name)
            .optional(self.pool())
            .await
    }

    async fn list_workspaces(&self, page: &Page) -> CoreResult<(Vec<Workspace>, u64)> {
        let (after_ms, after_id) = keyset(page);
        let workspaces = self
            .query(AssertSqlSafe(format!(
                "SELECT * FROM workspaces WHERE {}
             ORDER BY created_at DESC, id DESC LIMIT $3",
                keyset_sql(1)
            )))
            .bind(after_ms)
            .bind(after_id)
            .bind(i64::from(page.limit))
            .all(self.pool())
            .await?;
        let total: i64 = self
            .query("SELECT COUNT(*) FROM workspaces")
            .scalar(self.pool())
            .await?;
        Ok((workspaces, fit(total, "count")?))
    }

    async fn update_workspace(&self, w: &Workspace) -> CoreResult<()> {
        let changed = self.query(
            "UPDATE workspaces SET description = $1, environment_id = $2, vm_id = $3, status = $4,
                status_message = $5, ai_assistant = $6, ai_assistant_config = $7,
                working_directory = $8, tools = $9, worker_id = $10, idle_timeout_seconds = $11,
                last_activity_at = $12, updated_at = $13, ready_at = $14
             WHERE id = $15",
        )
        .bind(&w.description)
        .bind(&w.environment_id)
        .bind(&w.vm_id)
        .bind(w.status.as_str())
        .bind(&w.status_message)
        .bind(w.ai_assistant.as_str())
        .bind(json(&w.ai_assistant_config))
        .bind(&w.working_directory)
        .bind(json(&w.tools))
        .bind(&w.worker_id)
        .bind(idle_timeout(w)?)
        .bind(to_ms(w.last_activity_at))
        .bind(to_ms(w.updated_at))
        .bind(w.ready_at.map(to_ms))
        .bind(&w.id)
        .execute(self.pool())
        .await?
        ;
        if changed == 0 {
            return Err(no_workspace(&w.id));
        }
        Ok(())
    }

    async fn transition_workspace(
        &self,
        id: &str,
        from: &[WorkspaceStatus],
        to: WorkspaceStatus,
        message: Option<&str>,
    ) -> CoreResult<bool> {
        let now = to_ms(Utc::now());
        let ready = (to == WorkspaceStatus::Ready).then_some(now);
        let changed = self
            .query(AssertSqlSafe(format!(
                "UPDATE workspaces SET status = $1, status_message = $2, updated_at = $3,
                ready_at = COALESCE(CAST($4 AS BIGINT), ready_at),
                last_activity_at = COALESCE(CAST($4 AS BIGINT), last_activity_at)
             WHERE id = $5 AND {}",
                DB::any("status", 6)
            )))
            .bind(to.as_str())
            .bind(message)
            .bind(now)
            .bind(ready)
            .bind(id)
            .bind(Arg::list(from.iter().map(|s| s.as_str())))
            .execute(self.pool())
            .await?;
        Ok(changed > 0)
    }

    async fn touch_workspace(&self, id: &str, at: DateTime<Utc>) -> CoreResult<bool> {
        let found = self
            .query(AssertSqlSafe(format!(
                "UPDATE workspaces SET last_activity_at = {}(last_activity_at, $1) WHERE id = $2",
                DB::GREATEST
            )))
            .bind(to_ms(at))
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(found > 0)
    }

    async fn idle_workspaces(&self, now: DateTime<Utc>) -> CoreResult<Vec<Workspace>> {
        self.query(
            "SELECT * FROM workspaces
             WHERE status = 'ready' AND idle_timeout_seconds > 0
               AND last_activity_at + idle_timeout_seconds * 1000 < $1
             ORDER BY last_activity_at, id",
        )
        .bind(to_ms(now))
        .all(self.pool())
        .await
    }

    async fn delete_workspace(&self, id: &str) -> CoreResult<bool> {
        let deleted = self
            .query("DELETE FROM workspaces WHERE id = $1")
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(deleted > 0)
    }

    async fn put_prep_steps(&self, workspace_id: &str, steps: &[PrepStepRun]) -> CoreResult<()> {
        check_prep_steps(workspace_id, steps)?;
        let mut tx = self.pool().begin().await?;
        // The DELETE comes first so that the transaction holds SQLite's write lock
        // from its first statement (SQLite cannot upgrade a read transaction safely).
        self.query("DELETE FROM workspace_prep_steps WHERE workspace_id = $1")
            .bind(workspace_id)
            .execute(&mut *tx)
            .await?;
        let exists: Option<i64> = self
            .query("SELECT CAST(1 AS BIGINT) FROM workspaces WHERE id = $1")
            .bind(workspace_id)
            .optional_scalar(&mut *tx)
            .await?;
        if exists.is_none() {
            return Err(no_workspace(workspace_id));
        }
        for s in steps {
            self.query(
                "INSERT INTO workspace_prep_steps (workspace_id, step_order, type, status,
                    output, exit_code, error, started_at, completed_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(workspace_id)
            .bind(i64::from(s.order))
            .bind(s.step_type.as_str())
            .bind(s.status.as_str())
            .bind(step_output(s))
            .bind(s.exit_code.map(i64::from))
            .bind(stored_error(&s.error))
            .bind(s.started_at.map(to_ms))
            .bind(s.completed_at.map(to_ms))
            .execute(&mut *tx)
            .await
            .map_err(|e| {
                // The workspace went away between the check and the insert.
                if is_foreign_key_violation(&e) {
                    no_workspace(workspace_id)
                } else {
                    e.into()
                }
            })?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn update_prep_step(&self, s: &PrepStepRun) -> CoreResult<()> {
        let changed = self.query(
            "UPDATE workspace_prep_steps SET type = $1, status = $2, output = $3, exit_code = $4,
                error = $5, started_at = $6, completed_at = $7
             WHERE workspace_id = $8 AND step_order = $9",
        )
        .bind(s.step_type.as_str())
        .bind(s.status.as_str())
        .bind(step_output(s))
        .bind(s.exit_code.map(i64::from))
        .bind(stored_error(&s.error))
        .bind(s.started_at.map(to_ms))
        .bind(s.completed_at.map(to_ms))
        .bind(&s.workspace_id)
        .bind(i64::from(s.order))
        .execute(self.pool())
        .await?
        ;
        if changed == 0 {
            return Err(CoreError::NotFound(format!(
                "workspace {:?} has no prep step {}",
                s.workspace_id, s.order
            )));
        }
        Ok(())
    }

    async fn list_prep_steps(&self, workspace_id: &str) -> CoreResult<Vec<PrepStepRun>> {
        self.query("SELECT * FROM workspace_prep_steps WHERE workspace_id = $1 ORDER BY step_order")
            .bind(workspace_id)
            .all(self.pool())
            .await
    }
}

#[async_trait]
impl<DB: Dialect> PromptStore for SqlStore<DB> {
    async fn insert_prompt(&self, p: &Prompt) -> CoreResult<()> {
        let result = self
            .query(
                "INSERT INTO prompt_tasks (id, workspace_id, prompt, system_prompt,
                working_directory, environment, priority, status, output, error, exit_code,
                task_id, created_at, started_at, completed_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
            )
            .bind(&p.id)
            .bind(&p.workspace_id)
            .bind(&p.prompt)
            .bind(&p.system_prompt)
            .bind(&p.working_directory)
            .bind(json(&p.environment))
            .bind(i64::from(p.priority))
            .bind(p.status.as_str())
            .bind(prompt_output(p))
            .bind(stored_error(&p.error))
            .bind(p.exit_code.map(i64::from))
            .bind(&p.task_id)
            .bind(to_ms(p.created_at))
            .bind(p.started_at.map(to_ms))
            .bind(p.completed_at.map(to_ms))
            .execute(self.pool())
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_foreign_key_violation(&e) => Err(no_workspace(&p.workspace_id)),
            Err(e) if is_unique_violation(&e) => Err(CoreError::Conflict(format!(
                "a prompt with id {:?} already exists",
                p.id
            ))),
            Err(e) => Err(e.into()),
        }
    }

    async fn get_prompt(&self, id: &str) -> CoreResult<Option<Prompt>> {
        self.query("SELECT * FROM prompt_tasks WHERE id = $1")
            .bind(id)
            .optional(self.pool())
            .await
    }

    async fn list_prompts(&self, workspace_id: &str) -> CoreResult<Vec<Prompt>> {
        self.query(
            "SELECT * FROM prompt_tasks WHERE workspace_id = $1
             ORDER BY created_at DESC, id DESC",
        )
        .bind(workspace_id)
        .all(self.pool())
        .await
    }

    async fn next_prompt(&self, workspace_id: &str) -> CoreResult<Option<Prompt>> {
        self.query(
            "SELECT * FROM prompt_tasks WHERE workspace_id = $1 AND status = 'pending'
             ORDER BY priority DESC, created_at, id LIMIT 1",
        )
        .bind(workspace_id)
        .optional(self.pool())
        .await
    }

    async fn transition_prompt(
        &self,
        id: &str,
        from: &[PromptStatus],
        to: PromptStatus,
    ) -> CoreResult<bool> {
        let now = to_ms(Utc::now());
        let started = (to == PromptStatus::Running).then_some(now);
        let completed = to.is_finished().then_some(now);
        let changed = self
            .query(AssertSqlSafe(format!(
                "UPDATE prompt_tasks SET status = $1,
                started_at = COALESCE(started_at, CAST($2 AS BIGINT)),
                completed_at = COALESCE(completed_at, CAST($3 AS BIGINT))
             WHERE id = $4 AND {}",
                DB::any("status", 5)
            )))
            .bind(to.as_str())
            .bind(started)
            .bind(completed)
            .bind(id)
            .bind(Arg::list(from.iter().map(|s| s.as_str())))
            .execute(self.pool())
            .await?;
        Ok(changed > 0)
    }

    async fn update_prompt(&self, p: &Prompt) -> CoreResult<()> {
        let changed = self
            .query(
                "UPDATE prompt_tasks SET status = $1, output = $2, error = $3, exit_code = $4,
                task_id = $5, started_at = $6, completed_at = $7
             WHERE id = $8",
            )
            .bind(p.status.as_str())
            .bind(prompt_output(p))
            .bind(stored_error(&p.error))
            .bind(p.exit_code.map(i64::from))
            .bind(&p.task_id)
            .bind(p.started_at.map(to_ms))
            .bind(p.completed_at.map(to_ms))
            .bind(&p.id)
            .execute(self.pool())
            .await?;
        if changed == 0 {
            return Err(CoreError::NotFound(format!("prompt {:?} not found", p.id)));
        }
        Ok(())
    }

    async fn has_running_prompt(&self, workspace_id: &str) -> CoreResult<bool> {
        let found: Option<i64> = self.query(
            "SELECT CAST(1 AS BIGINT) FROM prompt_tasks WHERE workspace_id = $1 AND status = 'running' LIMIT 1",
        )
        .bind(workspace_id)
        .optional_scalar(self.pool())
        .await?;
        Ok(found.is_some())
    }
}
