//! [`TaskRecords`] for SQLite: the `tasks` table as the record of a queue that lives
//! elsewhere (the Redis queue tested against SQLite; embedded mode does not use it).

use aetherium_types::{Task, TaskStatus};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::AssertSqlSafe;

use super::SqliteStore;
use super::sqlite::{parse_enum, task_from_row, to_ms};
use super::tasks::{TaskCount, TaskRecords};
use crate::error::CoreResult;
use aetherium_types::task::QueueName;

/// `status IN ('a', 'b')` for fixed status names (never user input).
fn status_in(statuses: &[TaskStatus]) -> String {
    if statuses.is_empty() {
        return "0".into();
    }
    let names: Vec<String> = statuses
        .iter()
        .map(|s| format!("'{}'", s.as_str()))
        .collect();
    format!("status IN ({})", names.join(", "))
}

#[async_trait]
impl TaskRecords for SqliteStore {
    async fn insert_task(&self, task: &Task) -> CoreResult<()> {
        let queue = QueueName::for_priority(task.priority);
        sqlx::query(
            "INSERT INTO tasks (id, type, status, queue, payload, result, error, priority,
                retry_count, max_retries, timeout_seconds, worker_id, target_worker_id, vm_id,
                created_at, scheduled_at, started_at, completed_at)
             VALUES (?, ?, ?, ?, ?, NULL, NULL, ?, ?, ?, ?, NULL, ?, ?, ?, ?, NULL, NULL)",
        )
        .bind(&task.id)
        .bind(task.task_type.as_str())
        .bind(task.status.as_str())
        .bind(queue.as_str())
        .bind(task.payload.to_string())
        .bind(task.priority)
        .bind(task.retry_count as i64)
        .bind(task.max_retries as i64)
        .bind(task.timeout_seconds as i64)
        .bind(&task.target_worker_id)
        .bind(&task.vm_id)
        .bind(to_ms(task.created_at))
        .bind(to_ms(task.scheduled_at))
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn task_record(&self, id: &str) -> CoreResult<Option<Task>> {
        sqlx::query("SELECT * FROM tasks WHERE id = ?")
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .as_ref()
            .map(task_from_row)
            .transpose()
    }

    async fn record_running(
        &self,
        id: &str,
        worker_id: &str,
        retry_count: u32,
        started_at: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> CoreResult<Option<Task>> {
        sqlx::query(
            "UPDATE tasks SET status = 'running', worker_id = ?, retry_count = ?, started_at = ?,
                lease_expires_at = ?, completed_at = NULL
             WHERE id = ? AND status IN ('pending', 'running')
             RETURNING *",
        )
        .bind(worker_id)
        .bind(retry_count as i64)
        .bind(to_ms(started_at))
        .bind(to_ms(lease_until))
        .bind(id)
        .fetch_optional(self.pool())
        .await?
        .as_ref()
        .map(task_from_row)
        .transpose()
    }

    async fn record_recovered(
        &self,
        id: &str,
        retry_count: u32,
        error: &str,
        scheduled_at: DateTime<Utc>,
    ) -> CoreResult<bool> {
        let changed = sqlx::query(
            "UPDATE tasks SET status = 'pending', retry_count = ?1, error = ?2, scheduled_at = ?3,
                lease_expires_at = NULL, completed_at = NULL
             WHERE id = ?4 AND status IN ('pending', 'running') AND retry_count < ?1",
        )
        .bind(i64::from(retry_count))
        .bind(error)
        .bind(to_ms(scheduled_at))
        .bind(id)
        .execute(self.pool())
        .await?
        .rows_affected();
        Ok(changed > 0)
    }

    async fn record_retry(
        &self,
        id: &str,
        worker_id: Option<&str>,
        retry_count: u32,
        error: &str,
        scheduled_at: DateTime<Utc>,
    ) -> CoreResult<bool> {
        let changed = sqlx::query(
            "UPDATE tasks SET status = 'pending', retry_count = ?, error = ?, scheduled_at = ?,
                lease_expires_at = NULL, completed_at = NULL
             WHERE id = ? AND status IN ('pending', 'running')
               AND (? IS NULL OR (worker_id = ? AND status = 'running'))",
        )
        .bind(retry_count as i64)
        .bind(error)
        .bind(to_ms(scheduled_at))
        .bind(id)
        .bind(worker_id)
        .bind(worker_id)
        .execute(self.pool())
        .await?
        .rows_affected();
        Ok(changed > 0)
    }

    async fn record_finished(
        &self,
        id: &str,
        from: &[TaskStatus],
        worker_id: Option<&str>,
        status: TaskStatus,
        result: Option<&serde_json::Value>,
        error: Option<&str>,
        retry_count: Option<u32>,
    ) -> CoreResult<Option<Task>> {
        let sql = format!(
            "UPDATE tasks SET status = ?, result = ?, error = ?, completed_at = ?,
                lease_expires_at = NULL, retry_count = COALESCE(?, retry_count)
             WHERE id = ? AND {} AND (? IS NULL OR worker_id = ?)
             RETURNING *",
            status_in(from)
        );
        sqlx::query(AssertSqlSafe(sql))
            .bind(status.as_str())
            .bind(result.map(|r| r.to_string()))
            .bind(error)
            .bind(to_ms(Utc::now()))
            .bind(retry_count.map(i64::from))
            .bind(id)
            .bind(worker_id)
            .bind(worker_id)
            .fetch_optional(self.pool())
            .await?
            .as_ref()
            .map(task_from_row)
            .transpose()
    }

    async fn record_cancel_requested(&self, id: &str) -> CoreResult<Option<Task>> {
        sqlx::query(
            "UPDATE tasks SET cancel_requested_at = COALESCE(cancel_requested_at, ?)
             WHERE id = ? AND status = 'running'
             RETURNING *",
        )
        .bind(to_ms(Utc::now()))
        .bind(id)
        .fetch_optional(self.pool())
        .await?
        .as_ref()
        .map(task_from_row)
        .transpose()
    }

    async fn record_reopened(&self, id: &str) -> CoreResult<Option<Task>> {
        sqlx::query(
            "UPDATE tasks SET status = 'pending', retry_count = 0, scheduled_at = ?,
                completed_at = NULL, lease_expires_at = NULL, cancel_requested_at = NULL
             WHERE id = ? AND status = 'failed'
             RETURNING *",
        )
        .bind(to_ms(Utc::now()))
        .bind(id)
        .fetch_optional(self.pool())
        .await?
        .as_ref()
        .map(task_from_row)
        .transpose()
    }

    async fn unfinished_tasks(
        &self,
        status: TaskStatus,
        before: DateTime<Utc>,
        after: Option<(i64, String)>,
        limit: u32,
    ) -> CoreResult<Vec<Task>> {
        let (after_ms, after_id) = match after {
            Some((ms, id)) => (Some(ms), Some(id)),
            None => (None, None),
        };
        let rows = sqlx::query(
            "SELECT * FROM tasks
             WHERE status = ?1 AND created_at < ?2
               AND (?3 IS NULL OR created_at > ?3 OR (created_at = ?3 AND id > ?4))
             ORDER BY created_at, id LIMIT ?5",
        )
        .bind(status.as_str())
        .bind(to_ms(before))
        .bind(after_ms)
        .bind(after_id)
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(task_from_row).collect()
    }

    async fn count_tasks(&self) -> CoreResult<Vec<TaskCount>> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT queue, status, COUNT(*) FROM tasks GROUP BY queue, status ORDER BY queue, status",
        )
        .fetch_all(self.pool())
        .await?;
        rows.into_iter()
            .map(|(queue, status, count)| {
                Ok(TaskCount {
                    queue,
                    status: parse_enum(&status)?,
                    count: count as u64,
                })
            })
            .collect()
    }

    async fn cancel_orphaned_work(&self, task: &Task, message: &str) -> CoreResult<()> {
        let now = to_ms(Utc::now());
        if task.task_type == aetherium_types::TaskType::VmExecute
            && let Some(id) = task.payload["execution_id"].as_str()
        {
            sqlx::query(
                "UPDATE executions SET status = 'failed', error = ?, completed_at = ?
                 WHERE id = ? AND status IN ('pending', 'running')",
            )
            .bind(message)
            .bind(now)
            .bind(id)
            .execute(self.pool())
            .await?;
        }
        if task.task_type == aetherium_types::TaskType::VmCreate
            && let Some(id) = task.payload["vm_id"].as_str()
        {
            sqlx::query(
                "UPDATE vms SET status = 'FAILED', error = ?, stopped_at = ?
                 WHERE id = ? AND status IN ('CREATED', 'STARTING')",
            )
            .bind(message)
            .bind(now)
            .bind(id)
            .execute(self.pool())
            .await?;
        }
        Ok(())
    }
}
