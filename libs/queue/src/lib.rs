//! The task queue: durable, leased, retried with backoff, weighted across the
//! original's four queues (critical 6, high 5, default 3, low 1). The embedded
//! implementation keeps the queue in the database's `tasks` table; the Redis one
//! (distributed mode) has Asynq's semantics and keeps the records in the database
//! ([`aetherium_store::TaskRecords`]). One conformance suite
//! (`tests/queue_conformance.rs`) runs against both.

pub mod bus_redis;
mod embedded;
mod redis;

use std::time::Duration;

use aetherium_types::Task;
use aetherium_types::task::QueueName;
pub use aetherium_types::{QueueCounts, QueueStats};
use async_trait::async_trait;
use chrono::{DateTime, Utc};

pub use self::redis::{
    ReconcileReport, RedisQueue, RedisQueueOptions, RedisTls, RetryPolicy, redis_client,
};
pub use embedded::EmbeddedQueue;

use crate::error::CoreResult;
// The store's modules under the names the code has always used.
use aetherium_store as store;
use aetherium_store::error;

/// A unique task: while a task holding `key` exists (up to `ttl`), another one with
/// the same key is not enqueued (Asynq's `Unique`). The key is released when the
/// task completes, is cancelled or is deleted from the archive; otherwise it expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unique {
    pub key: String,
    pub ttl: Duration,
}

/// Options of [`TaskQueue::enqueue_with`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnqueueOptions {
    pub unique: Option<Unique>,
    /// The task must not start after this; its timeout never outlasts it. A task
    /// still waiting at its deadline fails ("its deadline passed before it could run").
    pub deadline: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnqueueOutcome {
    Enqueued,
    /// A task with the same unique key exists: nothing was enqueued.
    Duplicate {
        task_id: String,
    },
}

/// A dead task in the archive: it failed for good (retries used up, a permanent
/// error, or its deadline passed). It can be retried or deleted from the archive;
/// its record stays `failed` unless retried.
#[derive(Debug, Clone, PartialEq)]
pub struct ArchivedTask {
    pub task: Task,
    pub archived_at: DateTime<Utc>,
    pub error: Option<String>,
}

/// What happened to a task whose attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailOutcome {
    /// It will run again after the backoff.
    WillRetry { after: Duration },
    /// It failed for good.
    Failed,
}

/// What asking a task to stop did ([`TaskQueue::cancel`]).
#[derive(Debug, Clone, PartialEq)]
pub enum CancelOutcome {
    /// It had not started (pending, scheduled or waiting for a retry): it is
    /// `cancelled` now and will never be leased.
    Cancelled(Task),
    /// It is running: the worker that holds it was asked to stop it (it notices on
    /// its next lease extension, or at once through the event bus).
    Requested(Task),
    /// It had finished already (completed, failed or cancelled): nothing changed.
    Finished(Task),
    NotFound,
}

/// Tasks of one queue in one state, for metrics (`state`: pending, scheduled,
/// running, completed, failed, cancelled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDepth {
    pub queue: String,
    pub state: String,
    pub count: u64,
}

/// Per-queue counts for every queue (zeros included) from [`TaskQueue::depths`].
pub fn counts_from_depths(depths: &[QueueDepth]) -> Vec<QueueCounts> {
    [
        QueueName::Critical,
        QueueName::High,
        QueueName::Default,
        QueueName::Low,
    ]
    .into_iter()
    .map(|queue| {
        let mut counts = QueueCounts {
            queue: queue.as_str().to_string(),
            ..QueueCounts::default()
        };
        for d in depths.iter().filter(|d| d.queue == queue.as_str()) {
            let slot = match d.state.as_str() {
                "pending" => &mut counts.pending,
                "running" => &mut counts.active,
                "scheduled" => &mut counts.scheduled,
                "retry" => &mut counts.retry,
                "archived" => &mut counts.archived,
                "completed" => &mut counts.processed,
                "failed" => &mut counts.failed,
                "cancelled" => &mut counts.cancelled,
                _ => continue,
            };
            *slot += d.count;
        }
        counts
    })
    .collect()
}

#[async_trait]
pub trait TaskQueue: Send + Sync + 'static {
    /// Persists the task and makes it available to workers.
    async fn enqueue(&self, task: &Task) -> CoreResult<()>;

    /// Leases the next due task that `worker_id` may run, or `None`. The lease lasts
    /// `lease` unless extended; an expired lease puts the task back (as a retry).
    async fn lease(&self, worker_id: &str, lease: Duration) -> CoreResult<Option<Task>>;

    /// Keeps a running task leased. `false` when the worker no longer holds it.
    async fn extend_lease(
        &self,
        task_id: &str,
        worker_id: &str,
        lease: Duration,
    ) -> CoreResult<bool>;

    async fn complete(
        &self,
        task_id: &str,
        worker_id: &str,
        result: serde_json::Value,
    ) -> CoreResult<()>;

    /// Records a failed attempt. Retries with exponential backoff while retries are
    /// left and `retryable` is true.
    async fn fail(
        &self,
        task_id: &str,
        worker_id: &str,
        error: &str,
        retryable: bool,
    ) -> CoreResult<FailOutcome>;

    /// Waits until new work may be available (or the poll interval passes).
    async fn wait_for_work(&self, poll: Duration);

    async fn stats(&self) -> CoreResult<QueueStats>;

    /// Task counts per queue and state (only pairs with tasks).
    async fn depths(&self) -> CoreResult<Vec<QueueDepth>>;

    /// Cancels a task that has not started; asks the worker of a running one to stop
    /// it (see [`CancelOutcome`]). `reason` becomes the task's `error`.
    async fn cancel(&self, task_id: &str, reason: &str) -> CoreResult<CancelOutcome>;

    /// Whether a stop was asked for this (running) task.
    async fn cancel_requested(&self, task_id: &str) -> CoreResult<bool>;

    /// The worker stopped a task it was asked to stop: it ends `cancelled`.
    async fn mark_cancelled(&self, task_id: &str, worker_id: &str, reason: &str) -> CoreResult<()>;

    /// Graceful shutdown: puts a task the worker holds (and has stopped) back in line
    /// at once, no attempt counted, instead of waiting for its lease to expire.
    /// `false` when the worker does not hold it.
    async fn release(&self, task_id: &str, worker_id: &str) -> CoreResult<bool>;

    /// [`TaskQueue::enqueue`] with options (unique key, deadline). A duplicate of a
    /// live unique task is not persisted.
    async fn enqueue_with(
        &self,
        task: &Task,
        options: &EnqueueOptions,
    ) -> CoreResult<EnqueueOutcome>;

    /// The newest dead tasks (all queues), newest first, at most `limit` (≤ 1000).
    async fn list_archived(&self, limit: u32) -> CoreResult<Vec<ArchivedTask>>;

    /// Puts an archived task back in line with no retries used (its record goes from
    /// `failed` back to `pending`: an operator's explicit reopen). `false` when it is
    /// not in the archive.
    async fn retry_archived(&self, task_id: &str) -> CoreResult<bool>;

    /// Removes a task from the archive (its record stays `failed`; its unique key is
    /// released). `false` when it is not in the archive.
    async fn delete_archived(&self, task_id: &str) -> CoreResult<bool>;

    /// When each of `ids` went to the archive; ids not in it are absent. What fills
    /// [`Task::archived_at`] (the archive is the queue's state, not the record's).
    async fn archived_times(
        &self,
        ids: &[&str],
    ) -> CoreResult<std::collections::HashMap<String, DateTime<Utc>>>;
}

/// Orders the queues for one lease attempt: a weighted random pick first (like
/// Asynq's non-strict priority), so that low queues are never starved.
pub fn weighted_queue_order(mut roll: impl FnMut(u32) -> u32) -> Vec<QueueName> {
    let mut left = vec![
        QueueName::Critical,
        QueueName::High,
        QueueName::Default,
        QueueName::Low,
    ];
    let mut order = Vec::with_capacity(left.len());
    while !left.is_empty() {
        let total: u32 = left.iter().map(|q| q.weight()).sum();
        let mut pick = roll(total);
        let idx = left
            .iter()
            .position(|q| {
                if pick < q.weight() {
                    true
                } else {
                    pick -= q.weight();
                    false
                }
            })
            .unwrap_or(0);
        order.push(left.remove(idx));
    }
    order
}

/// Exponential backoff: `base * 2^attempt`, capped at five minutes.
pub fn backoff(base: Duration, attempt: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempt.min(16));
    base.saturating_mul(factor).min(Duration::from_secs(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_order_follows_the_weights() {
        let mut counts = std::collections::HashMap::new();
        let mut state = 7u64;
        for _ in 0..15_000 {
            let order = weighted_queue_order(|total| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 33) % u64::from(total)) as u32
            });
            assert_eq!(order.len(), 4);
            *counts.entry(order[0]).or_insert(0u32) += 1;
        }
        // Expected shares 6:5:3:1 of 15000 = 6000, 5000, 3000, 1000.
        let share = |q| f64::from(counts[&q]) / 15_000.0;
        assert!((share(QueueName::Critical) - 0.4).abs() < 0.03);
        assert!((share(QueueName::High) - 1.0 / 3.0).abs() < 0.03);
        assert!((share(QueueName::Default) - 0.2).abs() < 0.03);
        assert!((share(QueueName::Low) - 1.0 / 15.0).abs() < 0.02);
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let base = Duration::from_secs(2);
        assert_eq!(backoff(base, 0), Duration::from_secs(2));
        assert_eq!(backoff(base, 3), Duration::from_secs(16));
        assert_eq!(backoff(base, 30), Duration::from_secs(300));
    }
}
