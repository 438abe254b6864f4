//! The embedded queue: the `tasks` table of the SQLite store is the queue. Leasing
//! is one `UPDATE … RETURNING` statement, so two workers can never lease one task.

use std::sync::Arc;
use std::time::Duration;

use aetherium_types::Task;
use async_trait::async_trait;
use chrono::Utc;
use sqlx::{AssertSqlSafe, SqlitePool};
use tokio::sync::Notify;

use super::{
    CancelOutcome, FailOutcome, QueueDepth, QueueStats, TaskQueue, backoff, weighted_queue_order,
};
use crate::error::CoreResult;
use crate::store::sqlite::{task_from_row, to_ms};
use aetherium_types::task::QueueName;

pub struct EmbeddedQueue {
    pool: SqlitePool,
    notify: Arc<Notify>,
    retry_base: Duration,
}

impl EmbeddedQueue {
    pub fn new(pool: SqlitePool, retry_base: Duration) -> Self {
        EmbeddedQueue {
            pool,
            notify: Arc::new(Notify::new()),
            retry_base,
        }
    }

    /// Puts tasks whose worker stopped heartbeating back in line, counting the lost
    /// attempt as a retry (Asynq's lease recovery). One whose cancellation had been
    /// asked for ends `cancelled` instead, and so does what it was for (the store
    /// shares this database): its execution fails, its VM in the making fails.
    async fn recover_expired_leases(&self) -> CoreResult<()> {
        let now = to_ms(Utc::now());
        let recovered: Vec<(String, String, String)> = sqlx::query_as(
            "UPDATE tasks SET
                status = CASE WHEN cancel_requested_at IS NOT NULL THEN 'cancelled'
                    WHEN retry_count < max_retries THEN 'pending' ELSE 'failed' END,
                retry_count = retry_count + 1,
                error = 'lease expired: worker ' || COALESCE(worker_id, '?') || ' stopped heartbeating'
                    || CASE WHEN cancel_requested_at IS NOT NULL
                        THEN ' (it had been asked to cancel)' ELSE '' END,
                scheduled_at = ?1,
                completed_at = CASE WHEN cancel_requested_at IS NULL AND retry_count < max_retries
                    THEN NULL ELSE ?1 END,
                lease_expires_at = NULL
             WHERE status = 'running' AND lease_expires_at < ?1
             RETURNING status, type, payload",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        if !recovered.is_empty() {
            tracing::warn!(
                recovered = recovered.len(),
                "recovered tasks with expired leases"
            );
        }
        for (status, task_type, payload) in recovered {
            if status != "cancelled" {
                continue;
            }
            let payload: serde_json::Value = serde_json::from_str(&payload).unwrap_or_default();
            let message = "cancelled by request; its worker stopped before it could finish";
            if task_type == "vm:execute"
                && let Some(id) = payload["execution_id"].as_str()
            {
                sqlx::query(
                    "UPDATE executions SET status = 'failed', error = ?, completed_at = ?
                     WHERE id = ? AND status IN ('pending', 'running')",
                )
                .bind(message)
                .bind(now)
                .bind(id)
                .execute(&self.pool)
                .await?;
            }
            if task_type == "vm:create"
                && let Some(id) = payload["vm_id"].as_str()
            {
                sqlx::query(
                    "UPDATE vms SET status = 'FAILED', error = ?, stopped_at = ?
                     WHERE id = ? AND status IN ('CREATED', 'STARTING')",
                )
                .bind(message)
                .bind(now)
                .bind(id)
                .execute(&self.pool)
                .await?;
            }
        }
        Ok(())
    }
}

fn queue_rank_sql(order: &[QueueName]) -> String {
    let arms: String = order
        .iter()
        .enumerate()
        .map(|(i, q)| format!(" WHEN '{}' THEN {i}", q.as_str()))
        .collect();
    format!("CASE queue{arms} ELSE 9 END")
}

#[async_trait]
impl TaskQueue for EmbeddedQueue {
    async fn enqueue(&self, task: &Task) -> CoreResult<()> {
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
        .execute(&self.pool)
        .await?;
        // notify_one stores a permit, so a worker that is between polls still sees it.
        self.notify.notify_one();
        Ok(())
    }

    async fn lease(&self, worker_id: &str, lease: Duration) -> CoreResult<Option<Task>> {
        self.recover_expired_leases().await?;
        let order = weighted_queue_order(|total| rand::random_range(0..total));
        let now = Utc::now();
        let row = sqlx::query(AssertSqlSafe(format!(
            "UPDATE tasks SET status = 'running', worker_id = ?1, lease_expires_at = ?2,
                started_at = ?3
             WHERE id = (
                SELECT id FROM tasks
                WHERE status = 'pending' AND scheduled_at <= ?3
                  AND (target_worker_id IS NULL OR target_worker_id = ?1)
                ORDER BY {}, priority DESC, scheduled_at, created_at
                LIMIT 1)
             RETURNING *",
            queue_rank_sql(&order)
        )))
        .bind(worker_id)
        .bind(to_ms(now + lease))
        .bind(to_ms(now))
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(task_from_row).transpose()
    }

    async fn extend_lease(
        &self,
        task_id: &str,
        worker_id: &str,
        lease: Duration,
    ) -> CoreResult<bool> {
        let changed = sqlx::query(
            "UPDATE tasks SET lease_expires_at = ? WHERE id = ? AND worker_id = ? AND status = 'running'",
        )
        .bind(to_ms(Utc::now() + lease))
        .bind(task_id)
        .bind(worker_id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(changed > 0)
    }

    async fn complete(
        &self,
        task_id: &str,
        worker_id: &str,
        result: serde_json::Value,
    ) -> CoreResult<()> {
        sqlx::query(
            "UPDATE tasks SET status = 'completed', result = ?, error = NULL, completed_at = ?,
                lease_expires_at = NULL
             WHERE id = ? AND worker_id = ? AND status = 'running'",
        )
        .bind(result.to_string())
        .bind(to_ms(Utc::now()))
        .bind(task_id)
        .bind(worker_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn fail(
        &self,
        task_id: &str,
        worker_id: &str,
        error: &str,
        retryable: bool,
    ) -> CoreResult<FailOutcome> {
        let row: Option<(i64, i64)> = sqlx::query_as(
            "SELECT retry_count, max_retries FROM tasks WHERE id = ? AND worker_id = ? AND status = 'running'",
        )
        .bind(task_id)
        .bind(worker_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some((retry_count, max_retries)) = row else {
            // The lease was lost (expired and recovered): that path already counted it.
            return Ok(FailOutcome::Failed);
        };
        let now = Utc::now();
        if retryable && retry_count < max_retries {
            let after = backoff(self.retry_base, retry_count as u32);
            sqlx::query(
                "UPDATE tasks SET status = 'pending', retry_count = retry_count + 1, error = ?,
                    scheduled_at = ?, lease_expires_at = NULL
                 WHERE id = ? AND worker_id = ?",
            )
            .bind(error)
            .bind(to_ms(now + after))
            .bind(task_id)
            .bind(worker_id)
            .execute(&self.pool)
            .await?;
            Ok(FailOutcome::WillRetry { after })
        } else {
            sqlx::query(
                "UPDATE tasks SET status = 'failed', error = ?, completed_at = ?, lease_expires_at = NULL
                 WHERE id = ? AND worker_id = ?",
            )
            .bind(error)
            .bind(to_ms(now))
            .bind(task_id)
            .bind(worker_id)
            .execute(&self.pool)
            .await?;
            Ok(FailOutcome::Failed)
        }
    }

    async fn wait_for_work(&self, poll: Duration) {
        let _ = tokio::time::timeout(poll, self.notify.notified()).await;
    }

    async fn stats(&self) -> CoreResult<QueueStats> {
        let now = to_ms(Utc::now());
        let rows: Vec<(String, bool, i64)> = sqlx::query_as(
            "SELECT status, scheduled_at > ? AS later, COUNT(*) FROM tasks GROUP BY status, later",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        let mut stats = QueueStats::default();
        for (status, later, count) in rows {
            let count = count as u64;
            match (status.as_str(), later) {
                ("pending", true) => stats.scheduled += count,
                ("pending", false) => stats.pending += count,
                ("running", _) => stats.running += count,
                ("completed", _) => stats.completed += count,
                ("failed", _) => stats.failed += count,
                ("cancelled", _) => stats.cancelled += count,
                _ => {}
            }
        }
        Ok(stats)
    }

    async fn depths(&self) -> CoreResult<Vec<QueueDepth>> {
        let now = to_ms(Utc::now());
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT queue, CASE WHEN status = 'pending' AND scheduled_at > ? THEN 'scheduled'
                    ELSE status END AS state, COUNT(*)
             FROM tasks GROUP BY queue, state ORDER BY queue, state",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(queue, state, count)| QueueDepth {
                queue,
                state,
                count: count as u64,
            })
            .collect())
    }

    async fn cancel(&self, task_id: &str, reason: &str) -> CoreResult<CancelOutcome> {
        let now = to_ms(Utc::now());
        // Not started: cancelled at once. The lease query only takes `pending` rows,
        // so a cancelled task is never run.
        let cancelled = sqlx::query(
            "UPDATE tasks SET status = 'cancelled', error = ?, completed_at = ?,
                lease_expires_at = NULL
             WHERE id = ? AND status = 'pending'
             RETURNING *",
        )
        .bind(reason)
        .bind(now)
        .bind(task_id)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(row) = cancelled {
            return Ok(CancelOutcome::Cancelled(task_from_row(&row)?));
        }
        let requested = sqlx::query(
            "UPDATE tasks SET cancel_requested_at = COALESCE(cancel_requested_at, ?)
             WHERE id = ? AND status = 'running'
             RETURNING *",
        )
        .bind(now)
        .bind(task_id)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(row) = requested {
            return Ok(CancelOutcome::Requested(task_from_row(&row)?));
        }
        let row = sqlx::query("SELECT * FROM tasks WHERE id = ?")
            .bind(task_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(row) => CancelOutcome::Finished(task_from_row(&row)?),
            None => CancelOutcome::NotFound,
        })
    }

    async fn cancel_requested(&self, task_id: &str) -> CoreResult<bool> {
        let requested: Option<Option<i64>> =
            sqlx::query_scalar("SELECT cancel_requested_at FROM tasks WHERE id = ?")
                .bind(task_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(matches!(requested, Some(Some(_))))
    }

    async fn mark_cancelled(&self, task_id: &str, worker_id: &str, reason: &str) -> CoreResult<()> {
        sqlx::query(
            "UPDATE tasks SET status = 'cancelled', error = ?, completed_at = ?,
                lease_expires_at = NULL
             WHERE id = ? AND worker_id = ? AND status = 'running'",
        )
        .bind(reason)
        .bind(to_ms(Utc::now()))
        .bind(task_id)
        .bind(worker_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
