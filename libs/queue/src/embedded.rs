//! The embedded queue: the `tasks` table of the SQLite store is the queue. Leasing
//! is one `UPDATE … RETURNING` statement, so two workers can never lease one task.
//! Unique keys, deadlines and the archive of dead tasks are columns of the same rows
//! (`unique_key`/`unique_until`, `deadline`, `archived_at`).

use std::sync::Arc;
use std::time::Duration;

use aetherium_types::Task;
use async_trait::async_trait;
use chrono::Utc;
use sqlx::{AssertSqlSafe, SqlitePool};
use tokio::sync::Notify;

use super::{
    ArchivedTask, CancelOutcome, EnqueueOptions, EnqueueOutcome, FailOutcome, QueueDepth,
    QueueStats, TaskQueue, backoff, weighted_queue_order,
};
use crate::error::CoreResult;
use crate::store::sql::{from_ms, task_from_row, to_ms};
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
                archived_at = CASE WHEN cancel_requested_at IS NULL AND retry_count >= max_retries
                    THEN ?1 ELSE NULL END,
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
        self.enqueue_with(task, &EnqueueOptions::default())
            .await
            .map(|_| ())
    }

    async fn enqueue_with(
        &self,
        task: &Task,
        options: &EnqueueOptions,
    ) -> CoreResult<EnqueueOutcome> {
        let queue = QueueName::for_priority(task.priority);
        let now = to_ms(Utc::now());
        let (unique_key, unique_until) = match &options.unique {
            Some(u) => (
                Some(u.key.as_str()),
                Some(now + u.ttl.as_millis().max(1) as i64),
            ),
            None => (None, None),
        };
        // One statement: the row goes in only while no live task holds the key (a
        // live holder: not expired, not completed or cancelled, not deleted from
        // the archive).
        let inserted = sqlx::query(
            "INSERT INTO tasks (id, type, status, queue, payload, result, error, priority,
                retry_count, max_retries, timeout_seconds, worker_id, target_worker_id, vm_id,
                created_at, scheduled_at, started_at, completed_at, unique_key, unique_until,
                deadline)
             SELECT ?1, ?2, ?3, ?4, ?5, NULL, NULL, ?6, ?7, ?8, ?9, NULL, ?10, ?11, ?12, ?13,
                NULL, NULL, ?14, ?15, ?16
             WHERE ?14 IS NULL OR NOT EXISTS (
                SELECT 1 FROM tasks WHERE unique_key = ?14 AND unique_until > ?17
                  AND status IN ('pending', 'running', 'failed')
                  AND (status != 'failed' OR archived_at IS NOT NULL))",
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
        .bind(unique_key)
        .bind(unique_until)
        .bind(options.deadline.map(to_ms))
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if inserted == 0 {
            let holder: Option<String> = sqlx::query_scalar(
                "SELECT id FROM tasks WHERE unique_key = ? AND unique_until > ?
                 ORDER BY created_at DESC LIMIT 1",
            )
            .bind(unique_key)
            .bind(now)
            .fetch_optional(&self.pool)
            .await?;
            return Ok(EnqueueOutcome::Duplicate {
                task_id: holder.unwrap_or_default(),
            });
        }
        // notify_one stores a permit, so a worker that is between polls still sees it.
        self.notify.notify_one();
        Ok(EnqueueOutcome::Enqueued)
    }

    async fn lease(&self, worker_id: &str, lease: Duration) -> CoreResult<Option<Task>> {
        self.recover_expired_leases().await?;
        // Tasks still waiting at their deadline never run: they fail (archived).
        sqlx::query(
            "UPDATE tasks SET status = 'failed', error = 'its deadline passed before it could run',
                completed_at = ?1, archived_at = ?1
             WHERE status = 'pending' AND deadline IS NOT NULL AND deadline <= ?1",
        )
        .bind(to_ms(Utc::now()))
        .execute(&self.pool)
        .await?;
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
        let Some(row) = row else {
            return Ok(None);
        };
        let mut task = task_from_row(&row)?;
        if let Some(deadline) = sqlx::Row::try_get::<Option<i64>, _>(&row, "deadline")? {
            // The task's timeout never outlasts its deadline.
            let left = ((deadline - to_ms(now)).max(1000) / 1000) as u64;
            task.timeout_seconds = task.timeout_seconds.min(left);
        }
        Ok(Some(task))
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
                "UPDATE tasks SET status = 'failed', error = ?1, completed_at = ?2, archived_at = ?2,
                    lease_expires_at = NULL
                 WHERE id = ?3 AND worker_id = ?4",
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
            "SELECT queue, CASE WHEN status = 'pending' AND scheduled_at > ?1 AND retry_count > 0
                        THEN 'retry'
                    WHEN status = 'pending' AND scheduled_at > ?1 THEN 'scheduled'
                    ELSE status END AS state, COUNT(*)
             FROM tasks GROUP BY queue, state ORDER BY queue, state",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        let archived: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT queue, 'archived', COUNT(*) FROM tasks WHERE archived_at IS NOT NULL
             GROUP BY queue",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut rows = rows;
        rows.extend(archived);
        rows.sort();
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

    async fn release(&self, task_id: &str, worker_id: &str) -> CoreResult<bool> {
        let changed = sqlx::query(
            "UPDATE tasks SET status = 'pending', lease_expires_at = NULL, scheduled_at = ?,
                error = 'its worker shut down; back in line'
             WHERE id = ? AND worker_id = ? AND status = 'running'",
        )
        .bind(to_ms(Utc::now()))
        .bind(task_id)
        .bind(worker_id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if changed > 0 {
            self.notify.notify_one();
        }
        Ok(changed > 0)
    }

    async fn list_archived(&self, limit: u32) -> CoreResult<Vec<ArchivedTask>> {
        let rows = sqlx::query(
            "SELECT * FROM tasks WHERE archived_at IS NOT NULL
             ORDER BY archived_at DESC, id DESC LIMIT ?",
        )
        .bind(i64::from(limit.clamp(1, 1000)))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let task = task_from_row(row)?;
                Ok(ArchivedTask {
                    archived_at: from_ms(sqlx::Row::try_get(row, "archived_at")?),
                    error: task.error.clone(),
                    task,
                })
            })
            .collect()
    }

    async fn retry_archived(&self, task_id: &str) -> CoreResult<bool> {
        let changed = sqlx::query(
            "UPDATE tasks SET status = 'pending', retry_count = 0, scheduled_at = ?,
                completed_at = NULL, archived_at = NULL, cancel_requested_at = NULL,
                lease_expires_at = NULL
             WHERE id = ? AND status = 'failed' AND archived_at IS NOT NULL",
        )
        .bind(to_ms(Utc::now()))
        .bind(task_id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if changed > 0 {
            self.notify.notify_one();
        }
        Ok(changed > 0)
    }

    async fn archived_times(
        &self,
        ids: &[&str],
    ) -> CoreResult<std::collections::HashMap<String, chrono::DateTime<Utc>>> {
        let mut out = std::collections::HashMap::new();
        // One statement per page of ids (lists ask for at most 1000 tasks).
        for chunk in ids.chunks(500) {
            let marks = vec!["?"; chunk.len()].join(", ");
            let sql = format!(
                "SELECT id, archived_at FROM tasks WHERE archived_at IS NOT NULL AND id IN ({marks})"
            );
            let mut query = sqlx::query_as::<_, (String, i64)>(AssertSqlSafe(sql));
            for id in chunk {
                query = query.bind(*id);
            }
            for (id, at) in query.fetch_all(&self.pool).await? {
                out.insert(id, from_ms(at));
            }
        }
        Ok(out)
    }

    async fn delete_archived(&self, task_id: &str) -> CoreResult<bool> {
        let changed = sqlx::query(
            "UPDATE tasks SET archived_at = NULL, unique_key = NULL, unique_until = NULL
             WHERE id = ? AND archived_at IS NOT NULL",
        )
        .bind(task_id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(changed > 0)
    }
}
