//! Task records for a queue that keeps its queue state elsewhere (the Redis queue):
//! the database holds every task's row — what `GET /tasks` reads and where each task's
//! one terminal state is recorded — while Redis holds which task is due, leased or
//! dead. The embedded queue does not need this: the `tasks` table is its queue.
//!
//! Every write is a compare-and-set on the row's status (and, for a worker's report,
//! on the worker that holds it), so a late or repeated report changes nothing, and a
//! finished row (`completed`, `failed`, `cancelled`) never changes again — except by
//! [`TaskRecords::record_reopened`], an operator's retry of a dead task.

use aetherium_types::{Task, TaskStatus};
use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::error::CoreResult;

/// Tasks counted by queue and status (for stats and metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskCount {
    pub queue: String,
    pub status: TaskStatus,
    pub count: u64,
}

#[async_trait]
pub trait TaskRecords: Send + Sync + 'static {
    /// Inserts the task's row as it is (normally `pending`).
    async fn insert_task(&self, task: &Task) -> CoreResult<()>;

    async fn task_record(&self, id: &str) -> CoreResult<Option<Task>>;

    /// A worker leased the task: `running`, unless the row is finished (then `None`:
    /// the task must not run). Rows `pending` or (left by a lost update) `running`
    /// qualify.
    async fn record_running(
        &self,
        id: &str,
        worker_id: &str,
        retry_count: u32,
        started_at: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> CoreResult<Option<Task>>;

    /// An attempt failed (or its lease expired) and the task will run again at
    /// `scheduled_at`: `pending` again. Only while unfinished and, when `worker_id` is
    /// given, only while that worker holds it. Returns whether the row changed.
    async fn record_retry(
        &self,
        id: &str,
        worker_id: Option<&str>,
        retry_count: u32,
        error: &str,
        scheduled_at: DateTime<Utc>,
    ) -> CoreResult<bool>;

    /// A lease expired and Redis put the task back in line as attempt
    /// `retry_count`: `pending` again, but only while the record's count is lower.
    /// A worker may lease the task again (and record it `running` with that count)
    /// before this write lands; the guard keeps such a newer record from being
    /// turned back to `pending`, which would make the new holder's completion miss
    /// (and the task run again). Returns whether the row changed.
    async fn record_recovered(
        &self,
        id: &str,
        retry_count: u32,
        error: &str,
        scheduled_at: DateTime<Utc>,
    ) -> CoreResult<bool> {
        // Stores without the guarded statement (test doubles): the plain write.
        self.record_retry(id, None, retry_count, error, scheduled_at)
            .await
    }

    /// The task ended in `status` (completed, failed or cancelled), from one of
    /// `from`, and — when `worker_id` is given — only while that worker holds it.
    /// `None` when the row was not in such a state (nothing changed). A `retry_count`
    /// updates the row's.
    #[allow(clippy::too_many_arguments)]
    async fn record_finished(
        &self,
        id: &str,
        from: &[TaskStatus],
        worker_id: Option<&str>,
        status: TaskStatus,
        result: Option<&serde_json::Value>,
        error: Option<&str>,
        retry_count: Option<u32>,
    ) -> CoreResult<Option<Task>>;

    /// Someone asked a `running` task to stop (`cancel_requested_at`).
    async fn record_cancel_requested(&self, id: &str) -> CoreResult<Option<Task>>;

    /// A dead (`failed`) task goes back in line: `pending`, no retries used.
    async fn record_reopened(&self, id: &str) -> CoreResult<Option<Task>>;

    /// Unfinished rows in `status` created before `before`, oldest first, after the
    /// keyset position `after` (created_at ms, id): for the reconcile sweep.
    async fn unfinished_tasks(
        &self,
        status: TaskStatus,
        before: DateTime<Utc>,
        after: Option<(i64, String)>,
        limit: u32,
    ) -> CoreResult<Vec<Task>>;

    /// Task counts per queue and status (only pairs with tasks).
    async fn count_tasks(&self) -> CoreResult<Vec<TaskCount>>;

    /// A task whose cancellation was asked for lost its worker: what it was for ends
    /// so (its execution fails, its VM in the making fails).
    async fn cancel_orphaned_work(&self, task: &Task, message: &str) -> CoreResult<()>;
}
