//! The embedded queue's guarantees, against a real SQLite file.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use aetherium_core::queue::{EmbeddedQueue, FailOutcome, TaskQueue};
use aetherium_core::services::new_task;
use aetherium_core::store::{Page, SqliteStore, Store, TaskFilter};
use aetherium_types::{TaskStatus, TaskType};
use chrono::Utc;

/// Retry backoff in these tests. Timing margins are generous (a loaded 2-core CI
/// machine may pause a test for a while): assertions about "not yet" use delays
/// far longer than such pauses.
const RETRY_BASE: Duration = Duration::from_millis(400);

async fn open(dir: &tempfile::TempDir) -> (SqliteStore, EmbeddedQueue) {
    let url = format!("sqlite://{}", dir.path().join("q.db").display());
    let store = SqliteStore::connect(&url).await.unwrap();
    let queue = EmbeddedQueue::new(store.pool().clone(), RETRY_BASE);
    (store, queue)
}

fn task(task_type: TaskType) -> aetherium_types::Task {
    new_task(task_type, serde_json::json!({"n": 1}), None)
}

#[tokio::test]
async fn a_task_is_leased_once_and_completes() {
    let dir = tempfile::tempdir().unwrap();
    let (store, queue) = open(&dir).await;
    let t = task(TaskType::VmCreate);
    queue.enqueue(&t).await.unwrap();

    let lease = Duration::from_secs(30);
    let got = queue.lease("w1", lease).await.unwrap().unwrap();
    assert_eq!(got.id, t.id);
    assert_eq!(got.status, TaskStatus::Running);
    assert_eq!(got.worker_id.as_deref(), Some("w1"));
    assert!(queue.lease("w2", lease).await.unwrap().is_none());

    queue
        .complete(&t.id, "w1", serde_json::json!({"ok": true}))
        .await
        .unwrap();
    let stored = store.get_task(&t.id).await.unwrap().unwrap();
    assert_eq!(stored.status, TaskStatus::Completed);
    assert_eq!(stored.result, Some(serde_json::json!({"ok": true})));
    assert!(stored.completed_at.is_some());
}

#[tokio::test]
async fn concurrent_workers_never_share_a_task() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, queue) = open(&dir).await;
    let queue = Arc::new(queue);
    for _ in 0..40 {
        queue.enqueue(&task(TaskType::VmExecute)).await.unwrap();
    }
    let mut handles = Vec::new();
    for w in 0..4 {
        let queue = queue.clone();
        handles.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while let Some(t) = queue
                .lease(&format!("w{w}"), Duration::from_secs(30))
                .await
                .unwrap()
            {
                mine.push(t.id);
            }
            mine
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    let count = all.len();
    all.sort();
    all.dedup();
    assert_eq!(count, 40);
    assert_eq!(all.len(), 40, "a task was leased twice");
}

#[tokio::test]
async fn failures_retry_with_backoff_then_fail_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let (store, queue) = open(&dir).await;
    let t = task(TaskType::VmDelete); // 2 retries
    queue.enqueue(&t).await.unwrap();
    let lease = Duration::from_secs(30);

    for attempt in 0..2u32 {
        let got = queue.lease("w", lease).await.unwrap().unwrap();
        assert_eq!(got.retry_count, attempt);
        let outcome = queue.fail(&t.id, "w", "boom", true).await.unwrap();
        let FailOutcome::WillRetry { after } = outcome else {
            panic!("attempt {attempt} should retry");
        };
        assert_eq!(after, RETRY_BASE * 2u32.pow(attempt));
        // Not due before its backoff.
        assert!(queue.lease("w", lease).await.unwrap().is_none());
        tokio::time::sleep(after + Duration::from_millis(20)).await;
    }
    queue.lease("w", lease).await.unwrap().unwrap();
    assert_eq!(
        queue.fail(&t.id, "w", "boom", true).await.unwrap(),
        FailOutcome::Failed
    );
    let stored = store.get_task(&t.id).await.unwrap().unwrap();
    assert_eq!(stored.status, TaskStatus::Failed);
    assert_eq!(stored.retry_count, 2);
    assert_eq!(stored.error.as_deref(), Some("boom"));
}

#[tokio::test]
async fn permanent_errors_are_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let (store, queue) = open(&dir).await;
    let t = task(TaskType::VmCreate);
    queue.enqueue(&t).await.unwrap();
    queue
        .lease("w", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        queue
            .fail(&t.id, "w", "no such image", false)
            .await
            .unwrap(),
        FailOutcome::Failed
    );
    assert_eq!(
        store.get_task(&t.id).await.unwrap().unwrap().status,
        TaskStatus::Failed
    );
}

#[tokio::test]
async fn an_expired_lease_puts_the_task_back_as_a_retry() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, queue) = open(&dir).await;
    let t = task(TaskType::VmExecute);
    queue.enqueue(&t).await.unwrap();
    queue
        .lease("crashed", Duration::from_millis(800))
        .await
        .unwrap()
        .unwrap();
    assert!(
        queue
            .lease("other", Duration::from_secs(30))
            .await
            .unwrap()
            .is_none()
    );
    tokio::time::sleep(Duration::from_millis(900)).await;
    let again = queue
        .lease("other", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.id, t.id);
    assert_eq!(again.retry_count, 1);
    assert!(again.error.unwrap().contains("crashed"));
    // The crashed worker's late report changes nothing.
    queue
        .complete(&t.id, "crashed", serde_json::json!({}))
        .await
        .unwrap();
    assert!(
        queue
            .extend_lease(&t.id, "other", Duration::from_secs(30))
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn extending_a_lease_keeps_a_long_task_from_being_taken() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, queue) = open(&dir).await;
    queue.enqueue(&task(TaskType::VmCreate)).await.unwrap();
    let t = queue
        .lease("w1", Duration::from_millis(1500))
        .await
        .unwrap()
        .unwrap();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            queue
                .extend_lease(&t.id, "w1", Duration::from_millis(1500))
                .await
                .unwrap()
        );
        assert!(
            queue
                .lease("w2", Duration::from_secs(1))
                .await
                .unwrap()
                .is_none()
        );
    }
}

#[tokio::test]
async fn targeted_tasks_go_only_to_their_worker() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, queue) = open(&dir).await;
    let mut t = task(TaskType::VmExecute);
    t.target_worker_id = Some("owner".into());
    queue.enqueue(&t).await.unwrap();
    let lease = Duration::from_secs(30);
    assert!(queue.lease("stranger", lease).await.unwrap().is_none());
    assert_eq!(queue.lease("owner", lease).await.unwrap().unwrap().id, t.id);
}

#[tokio::test]
async fn tasks_survive_a_reopen_of_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let t = task(TaskType::VmCreate);
    {
        let (store, queue) = open(&dir).await;
        queue.enqueue(&t).await.unwrap();
        store.close().await;
    }
    let (store, queue) = open(&dir).await;
    let (tasks, total) = store
        .list_tasks(&TaskFilter::default(), &Page::new(None, None))
        .await
        .unwrap();
    assert_eq!(total, 1);
    assert_eq!(tasks[0].id, t.id);
    assert_eq!(
        queue
            .lease("w", Duration::from_secs(30))
            .await
            .unwrap()
            .unwrap()
            .id,
        t.id
    );
}

#[tokio::test]
async fn higher_priority_queues_are_served_more_often() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, queue) = open(&dir).await;
    for i in 0..60 {
        let mut t = task(TaskType::VmExecute);
        t.priority = if i % 2 == 0 { 9 } else { 0 };
        t.created_at = Utc::now();
        queue.enqueue(&t).await.unwrap();
    }
    let mut first_30_critical = 0;
    for _ in 0..30 {
        let t = queue
            .lease("w", Duration::from_secs(30))
            .await
            .unwrap()
            .unwrap();
        if t.priority == 9 {
            first_30_critical += 1;
        }
    }
    // Weights 6:1 → about 26 of the first 30 are critical; never all low.
    assert!(first_30_critical >= 20, "{first_30_critical}");
    let stats = queue.stats().await.unwrap();
    assert_eq!(stats.running, 30);
    assert_eq!(stats.pending, 30);
}

#[tokio::test]
async fn a_cancelled_task_is_never_leased_and_a_running_one_is_asked_to_stop() {
    use aetherium_core::queue::CancelOutcome;
    let dir = tempfile::tempdir().unwrap();
    let (store, queue) = open(&dir).await;
    let lease = Duration::from_secs(30);

    // Pending: cancelled at once, never leased.
    let pending = task(TaskType::VmExecute);
    queue.enqueue(&pending).await.unwrap();
    match queue.cancel(&pending.id, "stop").await.unwrap() {
        CancelOutcome::Cancelled(t) => {
            assert_eq!(t.status, TaskStatus::Cancelled);
            assert_eq!(t.error.as_deref(), Some("stop"));
            assert!(t.completed_at.is_some());
        }
        other => panic!("{other:?}"),
    }
    assert!(queue.lease("w1", lease).await.unwrap().is_none());
    assert!(matches!(
        queue.cancel(&pending.id, "again").await.unwrap(),
        CancelOutcome::Finished(t) if t.status == TaskStatus::Cancelled
    ));
    assert!(matches!(
        queue.cancel("no-such-task", "x").await.unwrap(),
        CancelOutcome::NotFound
    ));

    // Running: flagged for its worker, which records the cancellation.
    let running = task(TaskType::VmExecute);
    queue.enqueue(&running).await.unwrap();
    queue.lease("w1", lease).await.unwrap().unwrap();
    assert!(!queue.cancel_requested(&running.id).await.unwrap());
    assert!(matches!(
        queue.cancel(&running.id, "stop").await.unwrap(),
        CancelOutcome::Requested(t) if t.status == TaskStatus::Running
    ));
    assert!(queue.cancel_requested(&running.id).await.unwrap());
    // Another worker cannot record it; the holder can.
    queue.mark_cancelled(&running.id, "w2", "x").await.unwrap();
    assert_eq!(
        store.get_task(&running.id).await.unwrap().unwrap().status,
        TaskStatus::Running
    );
    queue
        .mark_cancelled(&running.id, "w1", "stopped")
        .await
        .unwrap();
    let stored = store.get_task(&running.id).await.unwrap().unwrap();
    assert_eq!(stored.status, TaskStatus::Cancelled);
    assert_eq!(stored.error.as_deref(), Some("stopped"));

    // A task asked to stop whose worker died is not retried: it ends cancelled, and
    // so does its execution.
    let execution = aetherium_types::Execution {
        id: aetherium_types::new_id(),
        vm_id: "vm-1".into(),
        task_id: None,
        command: "sleep".into(),
        args: vec!["100".into()],
        status: aetherium_types::ExecutionStatus::Running,
        exit_code: None,
        stdout: String::new(),
        stderr: String::new(),
        error: None,
        created_at: Utc::now(),
        started_at: Some(Utc::now()),
        completed_at: None,
        duration_ms: None,
        metadata: Default::default(),
        created_by: None,
    };
    store.insert_execution(&execution).await.unwrap();
    let orphan = new_task(
        TaskType::VmExecute,
        serde_json::json!({"execution_id": execution.id}),
        None,
    );
    queue.enqueue(&orphan).await.unwrap();
    queue
        .lease("w1", Duration::from_millis(200))
        .await
        .unwrap()
        .unwrap();
    queue.cancel(&orphan.id, "stop").await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(queue.lease("w2", lease).await.unwrap().is_none());
    let stored = store.get_task(&orphan.id).await.unwrap().unwrap();
    assert_eq!(stored.status, TaskStatus::Cancelled, "{stored:?}");
    let e = store.get_execution(&execution.id).await.unwrap().unwrap();
    assert_eq!(e.status, aetherium_types::ExecutionStatus::Failed, "{e:?}");
    assert!(e.error.unwrap().contains("cancelled"));

    let stats = queue.stats().await.unwrap();
    assert_eq!(stats.cancelled, 3);
    let depths = queue.depths().await.unwrap();
    assert!(
        depths
            .iter()
            .any(|d| d.queue == "high" && d.state == "cancelled" && d.count == 3),
        "{depths:?}"
    );
}
