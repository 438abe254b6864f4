//! [`WorkspaceStore`] and [`PromptStore`] for SQLite (tables from
//! `migrations/sqlite/0008_workspaces.sql`). Compare-and-set transitions are single
//! UPDATEs with the expected statuses in their WHERE: SQLite runs writers one at a
//! time, so of racing transitions exactly one finds the row still in `from`.

use aetherium_types::workspace::{PrepStepRun, Prompt, PromptStatus, Workspace, WorkspaceStatus};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use super::Page;
use super::sqlite::{SqliteStore, from_ms, is_unique_violation, parse_enum, to_ms};
use super::workspaces::{
    PromptStore, WorkspaceStore, check_prep_steps, fit, idle_timeout, is_foreign_key_violation,
    no_workspace, prompt_output, step_output, stored_error, workspace_conflict,
};
use crate::error::{CoreError, CoreResult};

fn json_text(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

fn opt_ms(value: Option<i64>) -> Option<DateTime<Utc>> {
    value.map(from_ms)
}

fn workspace_from_row(row: &SqliteRow) -> CoreResult<Workspace> {
    Ok(Workspace {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        environment_id: row.try_get("environment_id")?,
        vm_id: row.try_get("vm_id")?,
        status: parse_enum(row.try_get::<&str, _>("status")?)?,
        status_message: row.try_get("status_message")?,
        ai_assistant: parse_enum(row.try_get::<&str, _>("ai_assistant")?)?,
        ai_assistant_config: serde_json::from_str(row.try_get("ai_assistant_config")?)
            .unwrap_or_default(),
        working_directory: row.try_get("working_directory")?,
        tools: serde_json::from_str(row.try_get("tools")?).unwrap_or_default(),
        worker_id: row.try_get("worker_id")?,
        idle_timeout_seconds: fit(row.try_get("idle_timeout_seconds")?, "idle_timeout_seconds")?,
        last_activity_at: from_ms(row.try_get("last_activity_at")?),
        created_at: from_ms(row.try_get("created_at")?),
        updated_at: from_ms(row.try_get("updated_at")?),
        ready_at: opt_ms(row.try_get("ready_at")?),
    })
}

fn step_from_row(row: &SqliteRow) -> CoreResult<PrepStepRun> {
    Ok(PrepStepRun {
        workspace_id: row.try_get("workspace_id")?,
        order: fit(row.try_get("step_order")?, "step_order")?,
        step_type: parse_enum(row.try_get::<&str, _>("type")?)?,
        status: parse_enum(row.try_get::<&str, _>("status")?)?,
        output: row.try_get("output")?,
        exit_code: row
            .try_get::<Option<i64>, _>("exit_code")?
            .map(|c| fit(c, "exit_code"))
            .transpose()?,
        error: row.try_get("error")?,
        started_at: opt_ms(row.try_get("started_at")?),
        completed_at: opt_ms(row.try_get("completed_at")?),
    })
}

fn prompt_from_row(row: &SqliteRow) -> CoreResult<Prompt> {
    Ok(Prompt {
        id: row.try_get("id")?,
        workspace_id: row.try_get("workspace_id")?,
        prompt: row.try_get("prompt")?,
        system_prompt: row.try_get("system_prompt")?,
        working_directory: row.try_get("working_directory")?,
        environment: serde_json::from_str(row.try_get("environment")?).unwrap_or_default(),
        priority: fit(row.try_get("priority")?, "priority")?,
        status: parse_enum(row.try_get::<&str, _>("status")?)?,
        output: row.try_get("output")?,
        error: row.try_get("error")?,
        exit_code: row
            .try_get::<Option<i64>, _>("exit_code")?
            .map(|c| fit(c, "exit_code"))
            .transpose()?,
        task_id: row.try_get("task_id")?,
        created_at: from_ms(row.try_get("created_at")?),
        started_at: opt_ms(row.try_get("started_at")?),
        completed_at: opt_ms(row.try_get("completed_at")?),
    })
}

fn statuses<'a>(from: impl IntoIterator<Item = &'a str>) -> String {
    json_text(&from.into_iter().collect::<Vec<_>>())
}

#[async_trait]
impl WorkspaceStore for SqliteStore {
    async fn insert_workspace(&self, w: &Workspace) -> CoreResult<()> {
        let result = sqlx::query(
            "INSERT INTO workspaces (id, name, description, environment_id, vm_id, status,
                status_message, ai_assistant, ai_assistant_config, working_directory, tools,
                worker_id, idle_timeout_seconds, last_activity_at, created_at, updated_at,
                ready_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&w.id)
        .bind(&w.name)
        .bind(&w.description)
        .bind(&w.environment_id)
        .bind(&w.vm_id)
        .bind(w.status.as_str())
        .bind(&w.status_message)
        .bind(w.ai_assistant.as_str())
        .bind(json_text(&w.ai_assistant_config))
        .bind(&w.working_directory)
        .bind(json_text(&w.tools))
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
        sqlx::query("SELECT * FROM workspaces WHERE id = ?")
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .as_ref()
            .map(workspace_from_row)
            .transpose()
    }

    async fn get_workspace_by_name(&self, name: &str) -> CoreResult<Option<Workspace>> {
        sqlx::query("SELECT * FROM workspaces WHERE name = ?")
            .bind(name)
            .fetch_optional(self.pool())
            .await?
            .as_ref()
            .map(workspace_from_row)
            .transpose()
    }

    async fn list_workspaces(&self, page: &Page) -> CoreResult<(Vec<Workspace>, u64)> {
        let (after_ms, after_id) = match &page.cursor {
            Some(c) => (Some(c.created_at_ms), Some(c.id.as_str())),
            None => (None, None),
        };
        let rows = sqlx::query(
            "SELECT * FROM workspaces
             WHERE (?1 IS NULL OR created_at < ?1 OR (created_at = ?1 AND id < ?2))
             ORDER BY created_at DESC, id DESC LIMIT ?3",
        )
        .bind(after_ms)
        .bind(after_id)
        .bind(i64::from(page.limit))
        .fetch_all(self.pool())
        .await?;
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM workspaces")
            .fetch_one(self.pool())
            .await?;
        let workspaces = rows
            .iter()
            .map(workspace_from_row)
            .collect::<CoreResult<_>>()?;
        Ok((workspaces, fit(total, "count")?))
    }

    async fn update_workspace(&self, w: &Workspace) -> CoreResult<()> {
        let changed = sqlx::query(
            "UPDATE workspaces SET description = ?, environment_id = ?, vm_id = ?, status = ?,
                status_message = ?, ai_assistant = ?, ai_assistant_config = ?,
                working_directory = ?, tools = ?, worker_id = ?, idle_timeout_seconds = ?,
                last_activity_at = ?, updated_at = ?, ready_at = ?
             WHERE id = ?",
        )
        .bind(&w.description)
        .bind(&w.environment_id)
        .bind(&w.vm_id)
        .bind(w.status.as_str())
        .bind(&w.status_message)
        .bind(w.ai_assistant.as_str())
        .bind(json_text(&w.ai_assistant_config))
        .bind(&w.working_directory)
        .bind(json_text(&w.tools))
        .bind(&w.worker_id)
        .bind(idle_timeout(w)?)
        .bind(to_ms(w.last_activity_at))
        .bind(to_ms(w.updated_at))
        .bind(w.ready_at.map(to_ms))
        .bind(&w.id)
        .execute(self.pool())
        .await?
        .rows_affected();
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
        let changed = sqlx::query(
            "UPDATE workspaces SET status = ?1, status_message = ?2, updated_at = ?3,
                ready_at = COALESCE(?4, ready_at),
                last_activity_at = COALESCE(?4, last_activity_at)
             WHERE id = ?5 AND status IN (SELECT value FROM json_each(?6))",
        )
        .bind(to.as_str())
        .bind(message)
        .bind(now)
        .bind(ready)
        .bind(id)
        .bind(statuses(from.iter().map(|s| s.as_str())))
        .execute(self.pool())
        .await?
        .rows_affected();
        Ok(changed > 0)
    }

    async fn touch_workspace(&self, id: &str, at: DateTime<Utc>) -> CoreResult<bool> {
        let found = sqlx::query(
            "UPDATE workspaces SET last_activity_at = MAX(last_activity_at, ?1) WHERE id = ?2",
        )
        .bind(to_ms(at))
        .bind(id)
        .execute(self.pool())
        .await?
        .rows_affected();
        Ok(found > 0)
    }

    async fn idle_workspaces(&self, now: DateTime<Utc>) -> CoreResult<Vec<Workspace>> {
        sqlx::query(
            "SELECT * FROM workspaces
             WHERE status = 'ready' AND idle_timeout_seconds > 0
               AND last_activity_at + idle_timeout_seconds * 1000 < ?1
             ORDER BY last_activity_at, id",
        )
        .bind(to_ms(now))
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(workspace_from_row)
        .collect()
    }

    async fn delete_workspace(&self, id: &str) -> CoreResult<bool> {
        let deleted = sqlx::query("DELETE FROM workspaces WHERE id = ?")
            .bind(id)
            .execute(self.pool())
            .await?
            .rows_affected();
        Ok(deleted > 0)
    }

    async fn put_prep_steps(&self, workspace_id: &str, steps: &[PrepStepRun]) -> CoreResult<()> {
        check_prep_steps(workspace_id, steps)?;
        let mut tx = self.pool().begin().await?;
        // The DELETE comes first so that the transaction holds the write lock from
        // its first statement (SQLite cannot upgrade a read transaction safely).
        sqlx::query("DELETE FROM workspace_prep_steps WHERE workspace_id = ?")
            .bind(workspace_id)
            .execute(&mut *tx)
            .await?;
        let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM workspaces WHERE id = ?")
            .bind(workspace_id)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Err(no_workspace(workspace_id));
        }
        for s in steps {
            sqlx::query(
                "INSERT INTO workspace_prep_steps (workspace_id, step_order, type, status,
                    output, exit_code, error, started_at, completed_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
        let changed = sqlx::query(
            "UPDATE workspace_prep_steps SET type = ?, status = ?, output = ?, exit_code = ?,
                error = ?, started_at = ?, completed_at = ?
             WHERE workspace_id = ? AND step_order = ?",
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
        .rows_affected();
        if changed == 0 {
            return Err(CoreError::NotFound(format!(
                "workspace {:?} has no prep step {}",
                s.workspace_id, s.order
            )));
        }
        Ok(())
    }

    async fn list_prep_steps(&self, workspace_id: &str) -> CoreResult<Vec<PrepStepRun>> {
        sqlx::query("SELECT * FROM workspace_prep_steps WHERE workspace_id = ? ORDER BY step_order")
            .bind(workspace_id)
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(step_from_row)
            .collect()
    }
}

#[async_trait]
impl PromptStore for SqliteStore {
    async fn insert_prompt(&self, p: &Prompt) -> CoreResult<()> {
        let result = sqlx::query(
            "INSERT INTO prompt_tasks (id, workspace_id, prompt, system_prompt,
                working_directory, environment, priority, status, output, error, exit_code,
                task_id, created_at, started_at, completed_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&p.id)
        .bind(&p.workspace_id)
        .bind(&p.prompt)
        .bind(&p.system_prompt)
        .bind(&p.working_directory)
        .bind(json_text(&p.environment))
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
        sqlx::query("SELECT * FROM prompt_tasks WHERE id = ?")
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .as_ref()
            .map(prompt_from_row)
            .transpose()
    }

    async fn list_prompts(&self, workspace_id: &str) -> CoreResult<Vec<Prompt>> {
        sqlx::query(
            "SELECT * FROM prompt_tasks WHERE workspace_id = ?
             ORDER BY created_at DESC, id DESC",
        )
        .bind(workspace_id)
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(prompt_from_row)
        .collect()
    }

    async fn next_prompt(&self, workspace_id: &str) -> CoreResult<Option<Prompt>> {
        sqlx::query(
            "SELECT * FROM prompt_tasks WHERE workspace_id = ? AND status = 'pending'
             ORDER BY priority DESC, created_at, id LIMIT 1",
        )
        .bind(workspace_id)
        .fetch_optional(self.pool())
        .await?
        .as_ref()
        .map(prompt_from_row)
        .transpose()
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
        let changed = sqlx::query(
            "UPDATE prompt_tasks SET status = ?1,
                started_at = COALESCE(started_at, ?2),
                completed_at = COALESCE(completed_at, ?3)
             WHERE id = ?4 AND status IN (SELECT value FROM json_each(?5))",
        )
        .bind(to.as_str())
        .bind(started)
        .bind(completed)
        .bind(id)
        .bind(statuses(from.iter().map(|s| s.as_str())))
        .execute(self.pool())
        .await?
        .rows_affected();
        Ok(changed > 0)
    }

    async fn update_prompt(&self, p: &Prompt) -> CoreResult<()> {
        let changed = sqlx::query(
            "UPDATE prompt_tasks SET status = ?, output = ?, error = ?, exit_code = ?,
                task_id = ?, started_at = ?, completed_at = ?
             WHERE id = ?",
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
        .await?
        .rows_affected();
        if changed == 0 {
            return Err(CoreError::NotFound(format!("prompt {:?} not found", p.id)));
        }
        Ok(())
    }

    async fn has_running_prompt(&self, workspace_id: &str) -> CoreResult<bool> {
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM prompt_tasks WHERE workspace_id = ? AND status = 'running' LIMIT 1",
        )
        .bind(workspace_id)
        .fetch_optional(self.pool())
        .await?;
        Ok(found.is_some())
    }
}
