//! [`TaskRecords`]: the `tasks` table as the record of a queue that lives elsewhere
//! (the Redis queue, in distributed mode; embedded mode's queue is the table itself).

use aetherium_types::task::QueueName;
use aetherium_types::{Task, TaskStatus, TaskType};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::AssertSqlSafe;

use super::dialect::Dialect;
use super::{SqlStore, parse_enum, to_ms};
use crate::error::CoreResult;
use crate::tasks::{TaskCount, TaskRecords};

/// `status IN ('a', 'b')` for fixed status names (never user input).
fn status_in(statuses: &[TaskStatus]) -> String {
    if statuses.is_empty() {
        return "FALSE".into();
    }
    let names: Vec<String> = statuses
        .iter()
        .map(|s| format!("'{}'", s.as_str()))
        .collect();
    format!("status IN ({})", names.join(", "))
}

#[async_trait]
impl<DB: Dialect> TaskRecords for SqlStore<DB> {
    async fn insert_task(&self, task: &Task) -> CoreResult<()> {
        let queue = QueueName::for_priority(task.priority);
        self.query(
            "INSERT INTO tasks (id, type, status, queue, payload, result, error, priority,
                retry_count, max_retries, timeout_seconds, worker_id, target_worker_id, vm_id,
                created_at, scheduled_at, started_at, completed_at)
             VALUES ($1, $2, $3, $4, $5, NULL, NULL, $6, $7, $8, $9, NULL, $10, $11, $12, $13,
                NULL, NULL)",
        )
        .bind(&task.id)
        .bind(task.task_type.as_str())
        .bind(task.status.as_str())
        .bind(queue.as_str())
        .bind(&task.payload)
        .bind(i64::from(task.priority))
        .bind(i64::from(task.retry_count))
        .bind(i64::from(task.max_retries))
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
        self.query("SELECT * FROM tasks WHERE id = $1")
            .bind(id)
            .optional(self.pool())
            .await
    }

    async fn record_running(
        &self,
        id: &str,
        worker_id: &str,
        retry_count: u32,
        started_at: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> CoreResult<Option<Task>> {
        self.query(
            "UPDATE tasks SET status = 'running', worker_id = $1, retry_count = $2,
                started_at = $3, lease_expires_at = $4, completed_at = NULL
             WHERE id = $5 AND status IN ('pending', 'running')
             RETURNING *",
        )
        .bind(worker_id)
        .bind(i64::from(retry_count))
        .bind(to_ms(started_at))
        .bind(to_ms(lease_until))
        .bind(id)
        .optional(self.pool())
        .await
    }

    async fn record_recovered(
        &self,
        id: &str,
        retry_count: u32,
        error: &str,
        scheduled_at: DateTime<Utc>,
    ) -> CoreResult<bool> {
        let changed = self
            .query(
                "UPDATE tasks SET status = 'pending', retry_count = $1, error = $2,
                scheduled_at = $3, lease_expires_at = NULL, completed_at = NULL
             WHERE id = $4 AND status IN ('pending', 'running') AND retry_count < $1",
            )
            .bind(i64::from(retry_count))
            .bind(error)
            .bind(to_ms(scheduled_at))
            .bind(id)
            .execute(self.pool())
            .await?;
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
        let changed = self
            .query(
                "UPDATE tasks SET status = 'pending', retry_count = $1, error = $2,
                scheduled_at = $3, lease_expires_at = NULL, completed_at = NULL
             WHERE id = $4 AND status IN ('pending', 'running')
               AND (CAST($5 AS TEXT) IS NULL OR (worker_id = $5 AND status = 'running'))",
            )
            .bind(i64::from(retry_count))
            .bind(error)
            .bind(to_ms(scheduled_at))
            .bind(id)
            .bind(worker_id)
            .execute(self.pool())
            .await?;
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
            "UPDATE tasks SET status = $1, result = $2, error = $3, completed_at = $4,
                lease_expires_at = NULL, retry_count = COALESCE($5, retry_count)
             WHERE id = $6 AND {} AND (CAST($7 AS TEXT) IS NULL OR worker_id = $7)
             RETURNING *",
            status_in(from)
        );
        self.query(AssertSqlSafe(sql))
            .bind(status.as_str())
            .bind(result)
            .bind(error)
            .bind(to_ms(Utc::now()))
            .bind(retry_count.map(i64::from))
            .bind(id)
            .bind(worker_id)
            .optional(self.pool())
            .await
    }

    async fn record_cancel_requested(&self, id: &str) -> CoreResult<Option<Task>> {
        self.query(
            "UPDATE tasks SET cancel_requested_at = COALESCE(cancel_requested_at, $1)
             WHERE id = $2 AND status = 'running'
             RETURNING *",
        )
        .bind(to_ms(Utc::now()))
        .bind(id)
        .optional(self.pool())
        .await
    }

    async fn record_reopened(&self, id: &str) -> CoreResult<Option<Task>> {
        self.query(
            "UPDATE tasks SET status = 'pending', retry_count = 0, scheduled_at = $1,
                completed_at = NULL, lease_expires_at = NULL, cancel_requested_at = NULL
             WHERE id = $2 AND status = 'failed'
             RETURNING *",
        )
        .bind(to_ms(Utc::now()))
        .bind(id)
        .optional(self.pool())
        .await
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
        self.query(
            "SELECT * FROM tasks
             WHERE status = $1 AND created_at < $2
               AND (CAST($3 AS BIGINT) IS NULL OR created_at > $3 OR (created_at = $3 AND id > $4))
             ORDER BY created_at, id LIMIT $5",
        )
        .bind(status.as_str())
        .bind(to_ms(before))
        .bind(after_ms)
        .bind(after_id)
        .bind(i64::from(limit))
        .all(self.pool())
        .await
    }

    async fn count_tasks(&self) -> CoreResult<Vec<TaskCount>> {
        let rows: Vec<(String, String, i64)> = self
            .query(
                "SELECT queue, status, COUNT(*) FROM tasks GROUP BY queue, status
             ORDER BY queue, status",
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
        if task.task_type == TaskType::VmExecute
            && let Some(id) = task.payload["execution_id"].as_str()
        {
            self.query(
                "UPDATE executions SET status = 'failed', error = $1, completed_at = $2
                 WHERE id = $3 AND status IN ('pending', 'running')",
            )
            .bind(message)
            .bind(now)
            .bind(id)
            .execute(self.pool())
            .await?;
        }
        if task.task_type == TaskType::VmCreate
            && let Some(id) = task.payload["vm_id"].as_str()
        {
            self.query(
                "UPDATE vms SET status = 'FAILED', error = $1, stopped_at = $2
                 WHERE id = $3 AND status IN ('CREATED', 'STARTING')",
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
