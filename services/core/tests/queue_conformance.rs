//! One suite, every queue: the same test functions run against the embedded queue
//! (SQLite's `tasks` table) and the Redis queue (a throw-away redis-server per test,
//! task records in SQLite, and again with records in a throw-away PostgreSQL).
//! Redis-only behaviour (restart, crash consistency between Redis and the records)
//! is at the end.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use aetherium_core::CoreError;
use aetherium_core::queue::{
    CancelOutcome, EmbeddedQueue, EnqueueOptions, EnqueueOutcome, FailOutcome, RedisQueue,
    RedisQueueOptions, RetryPolicy, TaskQueue, Unique,
};
use aetherium_core::services::new_task;
use aetherium_core::store::{PgStore, SqliteStore, Store, TaskRecords};
use aetherium_testkit::postgres::TempPostgres;
use aetherium_testkit::redis::TempRedis;
use aetherium_types::{Task, TaskStatus, TaskType};
use chrono::Utc;

/// Retry backoff in these tests. Timing margins are generous (a loaded 2-core CI
/// machine may pause a test for a while).
const RETRY_BASE: Duration = Duration::from_millis(400);
const LONG: Duration = Duration::from_secs(30);

struct Harness {
    queue: Arc<dyn TaskQueue>,
    /// The same queue, when it is the Redis one.
    redis_queue: Option<Arc<RedisQueue>>,
    store: Arc<dyn Store>,
    /// The SQLite store, when the records live there.
    sqlite: Option<SqliteStore>,
    redis: Option<TempRedis>,
    _pg: Option<TempPostgres>,
    _dir: tempfile::TempDir,
}

impl Harness {
    async fn record(&self, id: &str) -> Task {
        self.store.get_task(id).await.unwrap().unwrap()
    }
}

async fn sqlite(dir: &tempfile::TempDir) -> SqliteStore {
    let url = format!("sqlite://{}", dir.path().join("q.db").display());
    SqliteStore::connect(&url).await.unwrap()
}

async fn embedded() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(&dir).await;
    let queue = EmbeddedQueue::new(store.pool().clone(), RETRY_BASE);
    Harness {
        queue: Arc::new(queue),
        redis_queue: None,
        store: Arc::new(store.clone()),
        sqlite: Some(store),
        redis: None,
        _pg: None,
        _dir: dir,
    }
}

fn redis_options() -> RedisQueueOptions {
    RedisQueueOptions {
        retry: RetryPolicy::new(RETRY_BASE),
        recover_interval: Duration::ZERO,
        response_timeout: Duration::from_secs(2),
        ..Default::default()
    }
}

async fn redis_with(server: TempRedis, options: RedisQueueOptions) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(&dir).await;
    let records: Arc<dyn TaskRecords> = Arc::new(store.clone());
    let queue = Arc::new(
        RedisQueue::connect(&server.url(), records, options)
            .await
            .unwrap(),
    );
    Harness {
        queue: queue.clone(),
        redis_queue: Some(queue),
        store: Arc::new(store.clone()),
        sqlite: Some(store),
        redis: Some(server),
        _pg: None,
        _dir: dir,
    }
}

async fn start_redis() -> TempRedis {
    tokio::task::spawn_blocking(TempRedis::start)
        .await
        .unwrap()
        .unwrap()
}

async fn redis() -> Harness {
    redis_with(start_redis().await, redis_options()).await
}

/// The Redis queue with its records in PostgreSQL (distributed mode's pairing).
async fn redis_pg() -> Harness {
    let pg = tokio::task::spawn_blocking(TempPostgres::start)
        .await
        .unwrap()
        .unwrap();
    let store = PgStore::connect(&pg.url()).await.unwrap();
    let server = start_redis().await;
    let queue = Arc::new(
        RedisQueue::connect(&server.url(), Arc::new(store.clone()), redis_options())
            .await
            .unwrap(),
    );
    Harness {
        queue: queue.clone(),
        redis_queue: Some(queue),
        store: Arc::new(store),
        sqlite: None,
        redis: Some(server),
        _pg: Some(pg),
        _dir: tempfile::tempdir().unwrap(),
    }
}

fn task(task_type: TaskType) -> Task {
    new_task(task_type, serde_json::json!({"n": 1}), None)
}

/// Runs each listed test function against every queue.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod embedded_queue {
            $( #[tokio::test] async fn $name() { super::$name(super::embedded().await).await } )*
        }
        mod redis_queue {
            $( #[tokio::test] async fn $name() { super::$name(super::redis().await).await } )*
        }
        mod redis_queue_pg_records {
            $( #[tokio::test] async fn $name() { super::$name(super::redis_pg().await).await } )*
        }
    };
}

conformance!(
    a_task_is_leased_once_and_completes,
    concurrent_workers_never_share_a_task,
    queues_are_served_by_weight,
    targeted_tasks_go_only_to_their_worker,
    failures_retry_with_backoff_then_fail_for_good,
    permanent_errors_are_not_retried,
    an_expired_lease_brings_the_task_back_once,
    extending_a_lease_keeps_the_task,
    cancel_works_in_every_state,
    delayed_tasks_are_not_leased_early,
    unique_tasks_are_deduplicated_within_their_ttl,
    dead_tasks_are_archived_and_can_be_retried_or_deleted,
    deadlines_bound_a_task,
    stats_and_depths_count_every_state,
    a_released_task_goes_back_without_an_attempt,
);

async fn a_task_is_leased_once_and_completes(h: Harness) {
    let t = task(TaskType::VmCreate);
    h.queue.enqueue(&t).await.unwrap();
    assert_eq!(h.record(&t.id).await.status, TaskStatus::Pending);

    let got = h.queue.lease("w1", LONG).await.unwrap().unwrap();
    assert_eq!(got.id, t.id);
    assert_eq!(got.status, TaskStatus::Running);
    assert_eq!(got.worker_id.as_deref(), Some("w1"));
    assert!(h.queue.lease("w2", LONG).await.unwrap().is_none());
    assert_eq!(h.record(&t.id).await.status, TaskStatus::Running);

    h.queue
        .complete(&t.id, "w1", serde_json::json!({"ok": true}))
        .await
        .unwrap();
    let stored = h.record(&t.id).await;
    assert_eq!(stored.status, TaskStatus::Completed);
    assert_eq!(stored.result, Some(serde_json::json!({"ok": true})));
    assert!(stored.completed_at.is_some());
    // A repeated report changes nothing, and the task never comes back.
    h.queue.fail(&t.id, "w1", "late", true).await.unwrap();
    assert_eq!(h.record(&t.id).await.status, TaskStatus::Completed);
    assert!(h.queue.lease("w1", LONG).await.unwrap().is_none());
}

async fn concurrent_workers_never_share_a_task(h: Harness) {
    for _ in 0..40 {
        h.queue.enqueue(&task(TaskType::VmExecute)).await.unwrap();
    }
    let mut handles = Vec::new();
    for w in 0..4 {
        let queue = h.queue.clone();
        handles.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while let Some(t) = queue.lease(&format!("w{w}"), LONG).await.unwrap() {
                mine.push(t.id);
            }
            mine
        }));
    }
    let mut all = Vec::new();
    for handle in handles {
        all.extend(handle.await.unwrap());
    }
    let count = all.len();
    all.sort();
    all.dedup();
    assert_eq!(count, 40);
    assert_eq!(all.len(), 40, "a task was leased twice");
}

async fn queues_are_served_by_weight(h: Harness) {
    // 400 tasks in each queue; of the first 400 leased, the shares follow the
    // weights 6:5:3:1 (each lease draws the queue order anew). 400 draws keep every
    // bound below at least 4 standard deviations away (100 made the order check
    // fail about once in 250 runs).
    for priority in [9, 6, 3, 0] {
        for _ in 0..400 {
            let mut t = task(TaskType::VmExecute);
            t.priority = priority;
            h.queue.enqueue(&t).await.unwrap();
        }
    }
    let mut counts = std::collections::HashMap::new();
    for _ in 0..400 {
        let t = h.queue.lease("w", LONG).await.unwrap().unwrap();
        *counts.entry(t.priority).or_insert(0u32) += 1;
    }
    let share = |p| counts.get(&p).copied().unwrap_or(0);
    // Expected 160, 133, 80, 27 (standard deviations about 10, 9, 8, 5).
    assert!((120..=200).contains(&share(9)), "{counts:?}");
    assert!((95..=172).contains(&share(6)), "{counts:?}");
    assert!((45..=115).contains(&share(3)), "{counts:?}");
    assert!(share(0) <= 55, "{counts:?}");
    assert!(share(9) > share(3) && share(6) > share(0), "{counts:?}");
    let stats = h.queue.stats().await.unwrap();
    assert_eq!(stats.running, 400);
    assert_eq!(stats.pending, 1200);
}

async fn targeted_tasks_go_only_to_their_worker(h: Harness) {
    let mut t = task(TaskType::VmExecute);
    t.target_worker_id = Some("owner".into());
    h.queue.enqueue(&t).await.unwrap();
    let shared = task(TaskType::VmExecute);
    h.queue.enqueue(&shared).await.unwrap();
    // A stranger gets the shared task, never the targeted one.
    assert_eq!(
        h.queue.lease("stranger", LONG).await.unwrap().unwrap().id,
        shared.id
    );
    assert!(h.queue.lease("stranger", LONG).await.unwrap().is_none());
    assert_eq!(
        h.queue.lease("owner", LONG).await.unwrap().unwrap().id,
        t.id
    );
}

async fn failures_retry_with_backoff_then_fail_for_good(h: Harness) {
    let t = task(TaskType::VmDelete); // 2 retries
    h.queue.enqueue(&t).await.unwrap();
    for attempt in 0..2u32 {
        let got = h.queue.lease("w", LONG).await.unwrap().unwrap();
        assert_eq!(got.retry_count, attempt);
        let outcome = h.queue.fail(&t.id, "w", "boom", true).await.unwrap();
        let FailOutcome::WillRetry { after } = outcome else {
            panic!("attempt {attempt} should retry");
        };
        let plain = RETRY_BASE * 2u32.pow(attempt);
        assert!(after >= plain && after <= plain.mul_f64(1.25), "{after:?}");
        let stored = h.record(&t.id).await;
        assert_eq!(stored.status, TaskStatus::Pending);
        assert_eq!(stored.retry_count, attempt + 1);
        // Not due before its backoff.
        assert!(h.queue.lease("w", LONG).await.unwrap().is_none());
        tokio::time::sleep(after + Duration::from_millis(50)).await;
    }
    h.queue.lease("w", LONG).await.unwrap().unwrap();
    assert_eq!(
        h.queue.fail(&t.id, "w", "boom", true).await.unwrap(),
        FailOutcome::Failed
    );
    let stored = h.record(&t.id).await;
    assert_eq!(stored.status, TaskStatus::Failed);
    assert_eq!(stored.retry_count, 2);
    assert_eq!(stored.error.as_deref(), Some("boom"));
    assert!(h.queue.lease("w", LONG).await.unwrap().is_none());
    let archived = h.queue.list_archived(10).await.unwrap();
    assert_eq!(archived.len(), 1);
    assert_eq!(archived[0].task.id, t.id);
    assert_eq!(archived[0].error.as_deref(), Some("boom"));
}

async fn permanent_errors_are_not_retried(h: Harness) {
    let t = task(TaskType::VmCreate);
    h.queue.enqueue(&t).await.unwrap();
    h.queue.lease("w", LONG).await.unwrap().unwrap();
    assert_eq!(
        h.queue
            .fail(&t.id, "w", "no such image", false)
            .await
            .unwrap(),
        FailOutcome::Failed
    );
    let stored = h.record(&t.id).await;
    assert_eq!(stored.status, TaskStatus::Failed);
    assert_eq!(stored.retry_count, 0);
}

async fn an_expired_lease_brings_the_task_back_once(h: Harness) {
    let t = task(TaskType::VmExecute);
    h.queue.enqueue(&t).await.unwrap();
    h.queue
        .lease("crashed", Duration::from_millis(800))
        .await
        .unwrap()
        .unwrap();
    // Never twice at once: nobody else gets it while the lease holds.
    assert!(h.queue.lease("other", LONG).await.unwrap().is_none());
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let again = h.queue.lease("other", LONG).await.unwrap().unwrap();
    assert_eq!(again.id, t.id);
    assert_eq!(again.retry_count, 1);
    assert!(again.error.unwrap().contains("crashed"));
    assert!(h.queue.lease("third", LONG).await.unwrap().is_none());
    // The crashed worker's late reports change nothing.
    assert!(!h.queue.extend_lease(&t.id, "crashed", LONG).await.unwrap());
    h.queue
        .complete(&t.id, "crashed", serde_json::json!({}))
        .await
        .unwrap();
    assert_eq!(h.record(&t.id).await.status, TaskStatus::Running);
    assert!(h.queue.extend_lease(&t.id, "other", LONG).await.unwrap());
    h.queue
        .complete(&t.id, "other", serde_json::json!({"run": 2}))
        .await
        .unwrap();
    let stored = h.record(&t.id).await;
    assert_eq!(stored.status, TaskStatus::Completed);
    assert_eq!(stored.worker_id.as_deref(), Some("other"));

    // Out of retries, an expired lease fails the task for good.
    let mut last = task(TaskType::VmExecute);
    last.max_retries = 0;
    h.queue.enqueue(&last).await.unwrap();
    h.queue
        .lease("crashed", Duration::from_millis(300))
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(h.queue.lease("other", LONG).await.unwrap().is_none());
    let stored = h.record(&last.id).await;
    assert_eq!(stored.status, TaskStatus::Failed, "{stored:?}");
    assert!(stored.error.unwrap().contains("lease expired"));
}

async fn extending_a_lease_keeps_the_task(h: Harness) {
    h.queue.enqueue(&task(TaskType::VmCreate)).await.unwrap();
    let lease = Duration::from_millis(1500);
    let t = h.queue.lease("w1", lease).await.unwrap().unwrap();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(h.queue.extend_lease(&t.id, "w1", lease).await.unwrap());
        assert!(h.queue.lease("w2", LONG).await.unwrap().is_none());
    }
    assert!(!h.queue.extend_lease(&t.id, "w2", lease).await.unwrap());
}

async fn cancel_works_in_every_state(h: Harness) {
    // Pending: cancelled at once, never leased.
    let pending = task(TaskType::VmExecute);
    h.queue.enqueue(&pending).await.unwrap();
    match h.queue.cancel(&pending.id, "stop").await.unwrap() {
        CancelOutcome::Cancelled(t) => {
            assert_eq!(t.status, TaskStatus::Cancelled);
            assert_eq!(t.error.as_deref(), Some("stop"));
            assert!(t.completed_at.is_some());
        }
        other => panic!("{other:?}"),
    }
    assert!(h.queue.lease("w1", LONG).await.unwrap().is_none());
    assert!(matches!(
        h.queue.cancel(&pending.id, "again").await.unwrap(),
        CancelOutcome::Finished(t) if t.status == TaskStatus::Cancelled
    ));
    assert!(matches!(
        h.queue.cancel("no-such-task", "x").await.unwrap(),
        CancelOutcome::NotFound
    ));

    // Scheduled for later: cancelled at once, never leased when due.
    let mut later = task(TaskType::VmExecute);
    later.scheduled_at = Utc::now() + chrono::Duration::milliseconds(300);
    h.queue.enqueue(&later).await.unwrap();
    assert!(matches!(
        h.queue.cancel(&later.id, "stop").await.unwrap(),
        CancelOutcome::Cancelled(_)
    ));

    // Waiting out a retry's backoff: likewise.
    let retrying = task(TaskType::VmExecute);
    h.queue.enqueue(&retrying).await.unwrap();
    h.queue.lease("w1", LONG).await.unwrap().unwrap();
    assert!(matches!(
        h.queue
            .fail(&retrying.id, "w1", "flaky", true)
            .await
            .unwrap(),
        FailOutcome::WillRetry { .. }
    ));
    assert!(matches!(
        h.queue.cancel(&retrying.id, "stop").await.unwrap(),
        CancelOutcome::Cancelled(_)
    ));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(h.queue.lease("w1", LONG).await.unwrap().is_none());

    // Running: flagged for its worker, which records the cancellation.
    let running = task(TaskType::VmExecute);
    h.queue.enqueue(&running).await.unwrap();
    h.queue.lease("w1", LONG).await.unwrap().unwrap();
    assert!(!h.queue.cancel_requested(&running.id).await.unwrap());
    assert!(matches!(
        h.queue.cancel(&running.id, "stop").await.unwrap(),
        CancelOutcome::Requested(t) if t.status == TaskStatus::Running
    ));
    assert!(h.queue.cancel_requested(&running.id).await.unwrap());
    // Another worker cannot record it; the holder can.
    h.queue
        .mark_cancelled(&running.id, "w2", "x")
        .await
        .unwrap();
    assert_eq!(h.record(&running.id).await.status, TaskStatus::Running);
    h.queue
        .mark_cancelled(&running.id, "w1", "stopped")
        .await
        .unwrap();
    let stored = h.record(&running.id).await;
    assert_eq!(stored.status, TaskStatus::Cancelled);
    assert_eq!(stored.error.as_deref(), Some("stopped"));
    assert!(!h.queue.extend_lease(&running.id, "w1", LONG).await.unwrap());

    // Asked to stop, then its worker died: not retried, it ends cancelled.
    let orphan = task(TaskType::VmExecute);
    h.queue.enqueue(&orphan).await.unwrap();
    h.queue
        .lease("w1", Duration::from_millis(200))
        .await
        .unwrap()
        .unwrap();
    h.queue.cancel(&orphan.id, "stop").await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(h.queue.lease("w2", LONG).await.unwrap().is_none());
    let stored = h.record(&orphan.id).await;
    assert_eq!(stored.status, TaskStatus::Cancelled, "{stored:?}");

    assert_eq!(h.queue.stats().await.unwrap().cancelled, 5);
}

async fn delayed_tasks_are_not_leased_early(h: Harness) {
    let mut t = task(TaskType::VmExecute);
    t.scheduled_at = Utc::now() + chrono::Duration::milliseconds(1500);
    h.queue.enqueue(&t).await.unwrap();
    assert_eq!(h.queue.stats().await.unwrap().scheduled, 1);
    assert!(h.queue.lease("w", LONG).await.unwrap().is_none());
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(h.queue.lease("w", LONG).await.unwrap().is_none());
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(h.queue.lease("w", LONG).await.unwrap().unwrap().id, t.id);
}

async fn unique_tasks_are_deduplicated_within_their_ttl(h: Harness) {
    let unique = |ttl_ms| EnqueueOptions {
        unique: Some(Unique {
            key: "vm:create:demo".into(),
            ttl: Duration::from_millis(ttl_ms),
        }),
        ..Default::default()
    };
    let first = task(TaskType::VmCreate);
    assert_eq!(
        h.queue.enqueue_with(&first, &unique(30_000)).await.unwrap(),
        EnqueueOutcome::Enqueued
    );
    let second = task(TaskType::VmCreate);
    assert_eq!(
        h.queue
            .enqueue_with(&second, &unique(30_000))
            .await
            .unwrap(),
        EnqueueOutcome::Duplicate {
            task_id: first.id.clone()
        }
    );
    // A duplicate leaves no record.
    assert!(h.store.get_task(&second.id).await.unwrap().is_none());
    // Completing the first frees the key.
    h.queue.lease("w", LONG).await.unwrap().unwrap();
    h.queue
        .complete(&first.id, "w", serde_json::json!({}))
        .await
        .unwrap();
    assert_eq!(
        h.queue.enqueue_with(&second, &unique(300)).await.unwrap(),
        EnqueueOutcome::Enqueued
    );
    // The key also expires on its own.
    let third = task(TaskType::VmCreate);
    assert!(matches!(
        h.queue.enqueue_with(&third, &unique(300)).await.unwrap(),
        EnqueueOutcome::Duplicate { .. }
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        h.queue.enqueue_with(&third, &unique(300)).await.unwrap(),
        EnqueueOutcome::Enqueued
    );
}

async fn dead_tasks_are_archived_and_can_be_retried_or_deleted(h: Harness) {
    let a = task(TaskType::VmCreate);
    let b = task(TaskType::VmCreate);
    for t in [&a, &b] {
        h.queue.enqueue(t).await.unwrap();
        let got = h.queue.lease("w", LONG).await.unwrap().unwrap();
        h.queue
            .fail(&got.id, "w", "image missing", false)
            .await
            .unwrap();
    }
    let archived = h.queue.list_archived(10).await.unwrap();
    assert_eq!(archived.len(), 2);
    assert_eq!(archived[0].task.status, TaskStatus::Failed);
    let depths = h.queue.depths().await.unwrap();
    assert!(
        depths
            .iter()
            .any(|d| d.queue == "high" && d.state == "archived" && d.count == 2),
        "{depths:?}"
    );

    // `archived_times` reports when each went to the archive (what the API shows
    // as `archived_at`); ids not in the archive are absent.
    let live = task(TaskType::VmCreate);
    h.queue.enqueue(&live).await.unwrap();
    let times = h
        .queue
        .archived_times(&[&a.id, &b.id, &live.id, "no-such-task"])
        .await
        .unwrap();
    assert_eq!(times.len(), 2, "{times:?}");
    let listed = archived.iter().find(|t| t.task.id == a.id).unwrap();
    assert_eq!(times[&a.id], listed.archived_at);
    assert!(h.queue.archived_times(&[]).await.unwrap().is_empty());
    assert!(h.queue.cancel(&live.id, "not needed").await.is_ok());

    // Retried: back in line with no retries used, and it runs.
    assert!(h.queue.retry_archived(&a.id).await.unwrap());
    assert!(
        !h.queue
            .archived_times(&[&a.id])
            .await
            .unwrap()
            .contains_key(&a.id)
    );
    assert!(!h.queue.retry_archived(&a.id).await.unwrap());
    assert_eq!(h.record(&a.id).await.status, TaskStatus::Pending);
    let again = h.queue.lease("w", LONG).await.unwrap().unwrap();
    assert_eq!(again.id, a.id);
    assert_eq!(again.retry_count, 0);
    h.queue
        .complete(&a.id, "w", serde_json::json!({}))
        .await
        .unwrap();
    assert_eq!(h.record(&a.id).await.status, TaskStatus::Completed);

    // Deleted: gone from the archive, its record stays failed.
    assert!(h.queue.delete_archived(&b.id).await.unwrap());
    assert!(!h.queue.delete_archived(&b.id).await.unwrap());
    assert!(!h.queue.retry_archived(&b.id).await.unwrap());
    assert!(h.queue.list_archived(10).await.unwrap().is_empty());
    assert!(h.queue.archived_times(&[&b.id]).await.unwrap().is_empty());
    assert_eq!(h.record(&b.id).await.status, TaskStatus::Failed);
}

async fn deadlines_bound_a_task(h: Harness) {
    let soon = EnqueueOptions {
        deadline: Some(Utc::now() + chrono::Duration::milliseconds(300)),
        ..Default::default()
    };
    let mut late = task(TaskType::VmExecute);
    late.target_worker_id = Some("busy".into());
    h.queue.enqueue_with(&late, &soon).await.unwrap();
    let bounded = task(TaskType::VmExecute); // a 600 s timeout
    let within = EnqueueOptions {
        deadline: Some(Utc::now() + chrono::Duration::seconds(20)),
        ..Default::default()
    };
    h.queue.enqueue_with(&bounded, &within).await.unwrap();
    let got = h.queue.lease("w", LONG).await.unwrap().unwrap();
    assert_eq!(got.id, bounded.id);
    assert!(got.timeout_seconds <= 20, "{}", got.timeout_seconds);

    // Its worker was busy past the deadline: it never runs, it fails.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(h.queue.lease("busy", LONG).await.unwrap().is_none());
    let stored = h.record(&late.id).await;
    assert_eq!(stored.status, TaskStatus::Failed);
    assert!(stored.error.unwrap().contains("deadline"));
}

async fn stats_and_depths_count_every_state(h: Harness) {
    let done = task(TaskType::VmCreate);
    let failed = task(TaskType::VmCreate);
    let running = task(TaskType::VmCreate);
    for t in [&done, &failed, &running] {
        h.queue.enqueue(t).await.unwrap();
        h.queue.lease("w", LONG).await.unwrap().unwrap();
    }
    h.queue
        .complete(&done.id, "w", serde_json::json!({}))
        .await
        .unwrap();
    h.queue.fail(&failed.id, "w", "x", false).await.unwrap();
    let mut low = task(TaskType::VmCreate);
    low.priority = 0;
    h.queue.enqueue(&low).await.unwrap();
    let mut later = task(TaskType::VmCreate);
    later.scheduled_at = Utc::now() + chrono::Duration::seconds(60);
    h.queue.enqueue(&later).await.unwrap();
    let cancelled = task(TaskType::VmCreate);
    h.queue.enqueue(&cancelled).await.unwrap();
    h.queue.cancel(&cancelled.id, "no").await.unwrap();

    let stats = h.queue.stats().await.unwrap();
    assert_eq!(
        (
            stats.pending,
            stats.scheduled,
            stats.running,
            stats.completed,
            stats.failed,
            stats.cancelled
        ),
        (1, 1, 1, 1, 1, 1),
        "{stats:?}"
    );
    let depths = h.queue.depths().await.unwrap();
    let count = |queue: &str, state: &str| {
        depths
            .iter()
            .find(|d| d.queue == queue && d.state == state)
            .map_or(0, |d| d.count)
    };
    assert_eq!(count("low", "pending"), 1, "{depths:?}");
    assert_eq!(count("high", "scheduled"), 1, "{depths:?}");
    assert_eq!(count("high", "running"), 1, "{depths:?}");
    assert_eq!(count("high", "completed"), 1, "{depths:?}");
    assert_eq!(count("high", "failed"), 1, "{depths:?}");
    assert_eq!(count("high", "cancelled"), 1, "{depths:?}");
}

async fn a_released_task_goes_back_without_an_attempt(h: Harness) {
    let t = task(TaskType::VmCreate);
    h.queue.enqueue(&t).await.unwrap();
    h.queue.lease("w1", LONG).await.unwrap().unwrap();
    assert!(!h.queue.release(&t.id, "w2").await.unwrap());
    // Its worker shuts down: back in line at once, for another worker.
    assert!(h.queue.release(&t.id, "w1").await.unwrap());
    assert!(!h.queue.release(&t.id, "w1").await.unwrap());
    assert_eq!(h.record(&t.id).await.status, TaskStatus::Pending);
    let again = h.queue.lease("w2", LONG).await.unwrap().unwrap();
    assert_eq!(again.id, t.id);
    assert_eq!(again.retry_count, 0);
    assert!(!h.queue.extend_lease(&t.id, "w1", LONG).await.unwrap());
}

// ---- Redis only -------------------------------------------------------------------

#[tokio::test]
async fn redis_restart_fails_fast_then_recovers_without_a_new_queue() {
    let server = tokio::task::spawn_blocking(TempRedis::start_persistent)
        .await
        .unwrap()
        .unwrap();
    let mut h = redis_with(server, redis_options()).await;
    let before = task(TaskType::VmCreate);
    h.queue.enqueue(&before).await.unwrap();

    h.redis.as_mut().unwrap().stop();
    let started = std::time::Instant::now();
    let down = task(TaskType::VmCreate);
    let err = h.queue.enqueue(&down).await.unwrap_err();
    assert!(matches!(err, CoreError::Unavailable(_)), "{err:?}");
    let err = h.queue.lease("w", LONG).await.unwrap_err();
    assert!(matches!(err, CoreError::Unavailable(_)), "{err:?}");
    assert!(matches!(
        h.queue.stats().await.unwrap_err(),
        CoreError::Unavailable(_)
    ));
    assert!(started.elapsed() < Duration::from_secs(20));
    // The refused task is not left behind as a task that will run.
    assert_eq!(h.record(&down.id).await.status, TaskStatus::Failed);

    h.redis.as_mut().unwrap().restart().unwrap();
    // The same queue handle reconnects by itself; the AOF kept the task.
    let mut leased = None;
    for _ in 0..50 {
        match h.queue.lease("w", LONG).await {
            Ok(t) => {
                leased = t;
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert_eq!(leased.unwrap().id, before.id);
    h.queue
        .complete(&before.id, "w", serde_json::json!({}))
        .await
        .unwrap();
    let after = task(TaskType::VmCreate);
    h.queue.enqueue(&after).await.unwrap();
    assert_eq!(
        h.queue.lease("w", LONG).await.unwrap().unwrap().id,
        after.id
    );
    assert!(h.queue.lease("w", LONG).await.unwrap().is_none());
}

#[tokio::test]
async fn a_crash_between_record_and_redis_loses_no_task() {
    let h = redis().await;
    let rq = h.redis_queue.clone().unwrap();
    // The record was written, then the process died before Redis heard of it.
    let orphan = task(TaskType::VmExecute);
    rq.records().insert_task(&orphan).await.unwrap();
    assert!(h.queue.lease("w", LONG).await.unwrap().is_none());
    // Young records are left alone (their Redis write may be under way)…
    let report = rq.reconcile(Duration::from_secs(60)).await.unwrap();
    assert_eq!(report.requeued, 0);
    // …old ones are enqueued again, once.
    let report = rq.reconcile(Duration::ZERO).await.unwrap();
    assert_eq!(report.requeued, 1);
    assert_eq!(rq.reconcile(Duration::ZERO).await.unwrap().requeued, 0);
    let got = h.queue.lease("w", LONG).await.unwrap().unwrap();
    assert_eq!(got.id, orphan.id);
    h.queue
        .complete(&got.id, "w", serde_json::json!({}))
        .await
        .unwrap();
    // A finished task is never enqueued again.
    assert_eq!(rq.reconcile(Duration::ZERO).await.unwrap().requeued, 0);
    assert!(h.queue.lease("w", LONG).await.unwrap().is_none());
}

#[tokio::test]
async fn a_crash_after_the_record_finished_never_runs_the_task_again() {
    let h = redis().await;
    let rq = h.redis_queue.clone().unwrap();
    let t = task(TaskType::VmExecute);
    h.queue.enqueue(&t).await.unwrap();
    h.queue
        .lease("w1", Duration::from_millis(300))
        .await
        .unwrap()
        .unwrap();
    // The worker recorded completion, then died before telling Redis.
    rq.records()
        .record_finished(
            &t.id,
            &[TaskStatus::Running],
            Some("w1"),
            TaskStatus::Completed,
            Some(&serde_json::json!({"done": 1})),
            None,
            None,
        )
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The lease expires and the task comes back in Redis, but its record is
    // finished: it is dropped, not run.
    assert!(h.queue.lease("w2", LONG).await.unwrap().is_none());
    let stored = h.record(&t.id).await;
    assert_eq!(stored.status, TaskStatus::Completed);
    assert_eq!(stored.result, Some(serde_json::json!({"done": 1})));
    assert_eq!(h.queue.stats().await.unwrap().running, 0);
}

#[tokio::test]
async fn a_record_that_missed_redis_decision_is_repaired() {
    let h = redis().await;
    let rq = h.redis_queue.clone().unwrap();
    let mut t = task(TaskType::VmExecute);
    t.max_retries = 0;
    h.queue.enqueue(&t).await.unwrap();
    h.queue
        .lease("w1", Duration::from_millis(200))
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Recovery archives it in Redis; pretend its record write was lost by writing
    // the record back to running.
    rq.recover_expired_leases().await.unwrap();
    assert_eq!(h.record(&t.id).await.status, TaskStatus::Failed);
    sqlx::query("UPDATE tasks SET status = 'running', completed_at = NULL WHERE id = ?")
        .bind(&t.id)
        .execute(h.sqlite.as_ref().unwrap().pool())
        .await
        .unwrap();
    let report = rq.reconcile(Duration::ZERO).await.unwrap();
    assert_eq!(report.records_fixed, 1);
    assert_eq!(h.record(&t.id).await.status, TaskStatus::Failed);
}

#[tokio::test]
async fn an_enqueue_wakes_a_waiting_worker() {
    let h = redis().await;
    // A wake-up may be stored from when the subscription began: use it up.
    h.queue.wait_for_work(Duration::from_millis(500)).await;
    h.queue.wait_for_work(Duration::from_millis(100)).await;
    let queue = h.queue.clone();
    let waiter = tokio::spawn(async move {
        let started = std::time::Instant::now();
        queue.wait_for_work(Duration::from_secs(20)).await;
        started.elapsed()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    h.queue.enqueue(&task(TaskType::VmExecute)).await.unwrap();
    let waited = waiter.await.unwrap();
    assert!(waited < Duration::from_secs(5), "{waited:?}");
}

#[tokio::test]
async fn redis_losing_its_data_is_repaired_from_the_records() {
    // No persistence: a restart loses every key, as a Redis without AOF would.
    let mut h = redis().await;
    let rq = h.redis_queue.clone().unwrap();
    let waiting = task(TaskType::VmCreate);
    let running = task(TaskType::VmCreate);
    h.queue.enqueue(&running).await.unwrap();
    h.queue.lease("w1", LONG).await.unwrap().unwrap();
    h.queue.enqueue(&waiting).await.unwrap();
    h.redis.as_mut().unwrap().restart().unwrap();
    let mut report = None;
    for _ in 0..50 {
        match rq.reconcile(Duration::ZERO).await {
            Ok(r) => {
                report = Some(r);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    // Both come back: the waiting one as it was, the running one as a retry (its
    // worker's lease is gone with the data).
    assert_eq!(report.unwrap().requeued, 2);
    let mut got = Vec::new();
    while let Some(t) = h.queue.lease("w2", LONG).await.unwrap() {
        got.push((t.id, t.retry_count));
    }
    got.sort();
    let mut want = vec![(waiting.id.clone(), 0), (running.id.clone(), 1)];
    want.sort();
    assert_eq!(got, want);
    // The old holder's reports change nothing.
    assert!(!h.queue.extend_lease(&running.id, "w1", LONG).await.unwrap());
    h.queue
        .complete(&running.id, "w1", serde_json::json!({}))
        .await
        .unwrap();
    assert_eq!(h.record(&running.id).await.status, TaskStatus::Running);
    assert_eq!(h.record(&running.id).await.worker_id.as_deref(), Some("w2"));
}

#[tokio::test]
async fn retry_policies_are_per_task_type() {
    let mut options = redis_options();
    options.policies.insert(
        TaskType::VmDelete,
        RetryPolicy {
            base: Duration::from_secs(7),
            cap: Duration::from_secs(10),
            jitter: 0.0,
        },
    );
    let h = redis_with(start_redis().await, options).await;
    let stop = task(TaskType::VmDelete);
    let other = task(TaskType::VmNetwork);
    for t in [&stop, &other] {
        h.queue.enqueue(t).await.unwrap();
        let got = h.queue.lease("w", LONG).await.unwrap().unwrap();
        let FailOutcome::WillRetry { after } =
            h.queue.fail(&got.id, "w", "flaky", true).await.unwrap()
        else {
            panic!("should retry");
        };
        if got.id == stop.id {
            assert_eq!(after, Duration::from_secs(7));
        } else {
            assert!(after >= RETRY_BASE && after <= RETRY_BASE.mul_f64(1.25));
        }
    }
}

/// Recovery decides in Redis, then writes the record; a worker may lease the task
/// again (and record it `running` as the new attempt) in between. The late recovery
/// write must not turn that record back to `pending`: the new holder's completion
/// (a compare-and-set from `running`) would then miss, and the task run again.
/// Found by the distributed fault tests (a worker killed mid-task and restarted).
async fn a_late_recovery_write_keeps_the_new_lease(h: Harness) {
    let rq = h.redis_queue.clone().unwrap();
    let t = task(TaskType::VmExecute);
    h.queue.enqueue(&t).await.unwrap();
    h.queue.lease("w1", LONG).await.unwrap().unwrap();
    let records = rq.records();
    // The second attempt's lease landed first…
    let now = Utc::now();
    records
        .record_running(&t.id, "w2", 1, now, now + chrono::Duration::seconds(30))
        .await
        .unwrap()
        .unwrap();
    // …then the recovery of the first attempt: no change.
    assert!(
        !records
            .record_recovered(&t.id, 1, "lease expired", now)
            .await
            .unwrap()
    );
    let got = h.store.get_task(&t.id).await.unwrap().unwrap();
    assert_eq!(got.status, TaskStatus::Running);
    assert_eq!(got.worker_id.as_deref(), Some("w2"));
    // A recovery of the second attempt does apply.
    assert!(
        records
            .record_recovered(&t.id, 2, "lease expired", now)
            .await
            .unwrap()
    );
    let got = h.store.get_task(&t.id).await.unwrap().unwrap();
    assert_eq!((got.status, got.retry_count), (TaskStatus::Pending, 2));
}

#[tokio::test]
async fn a_late_recovery_write_keeps_the_new_lease_sqlite_records() {
    a_late_recovery_write_keeps_the_new_lease(redis().await).await;
}

#[tokio::test]
async fn a_late_recovery_write_keeps_the_new_lease_postgres_records() {
    a_late_recovery_write_keeps_the_new_lease(redis_pg().await).await;
}
