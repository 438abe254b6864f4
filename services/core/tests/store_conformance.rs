//! One conformance suite for every store: each test below runs against a SQLite file
//! and against a real PostgreSQL server (a `TempPostgres` of its own), so both
//! implementations of `Store`, `AuthStore`, `EventLog` and `LogStore` keep the same
//! semantics. PostgreSQL-only properties (concurrent migrations, reconnecting after
//! a server restart) come at the end.
#![allow(clippy::unwrap_used)]

#[macro_use]
mod conformance;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use aetherium_core::CoreError;
use aetherium_core::store::{
    AuditFilter, AuthStore, Cursor, Database, EventLog, LogStore, Page, PgStore, PgStoreOptions,
    Session, Store, TaskFilter, VmFilter,
};
use aetherium_testkit::postgres::TempPostgres;
use aetherium_types::logs::{LogFilter, LogLevel, LogOrder, LogRecord};
use aetherium_types::task::QueueName;
use aetherium_types::{
    ApiKey, AuditEntry, Event, EventFilter, EventType, Execution, ExecutionStatus, KeyQuota,
    Orchestrator, Role, Task, TaskStatus, TaskType, User, Vm, VmStatus, Worker, WorkerStatus,
};
use chrono::{DateTime, TimeZone, Utc};

use conformance::Subject;

impl Subject {
    fn store(&self) -> Arc<dyn Store> {
        self.db.store()
    }

    fn auth(&self) -> Arc<dyn AuthStore> {
        self.db.auth()
    }

    fn events(&self) -> Arc<dyn EventLog> {
        self.db.events()
    }

    fn logs(&self) -> Arc<dyn LogStore> {
        self.db.logs()
    }

    /// Writes a task row as a queue would (the stores only read tasks).
    async fn insert_task(&self, t: &Task, queue: QueueName) {
        let columns = "id, type, status, queue, payload, result, error, priority, retry_count,
            max_retries, timeout_seconds, worker_id, target_worker_id, vm_id, created_at,
            scheduled_at, started_at, completed_at";
        let ms = |d: DateTime<Utc>| d.timestamp_millis();
        match &self.db {
            Database::Sqlite(s) => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO tasks ({columns}) VALUES
                     (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                )))
                .bind(&t.id)
                .bind(t.task_type.as_str())
                .bind(t.status.as_str())
                .bind(queue.as_str())
                .bind(t.payload.to_string())
                .bind(t.result.as_ref().map(|r| r.to_string()))
                .bind(&t.error)
                .bind(i64::from(t.priority))
                .bind(i64::from(t.retry_count))
                .bind(i64::from(t.max_retries))
                .bind(t.timeout_seconds as i64)
                .bind(&t.worker_id)
                .bind(&t.target_worker_id)
                .bind(&t.vm_id)
                .bind(ms(t.created_at))
                .bind(ms(t.scheduled_at))
                .bind(t.started_at.map(ms))
                .bind(t.completed_at.map(ms))
                .execute(s.pool())
                .await
                .unwrap();
            }
            Database::Postgres(s) => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO tasks ({columns}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9,
                     $10, $11, $12, $13, $14, $15, $16, $17, $18)"
                )))
                .bind(&t.id)
                .bind(t.task_type.as_str())
                .bind(t.status.as_str())
                .bind(queue.as_str())
                .bind(sqlx::types::Json(&t.payload))
                .bind(t.result.as_ref().map(sqlx::types::Json))
                .bind(&t.error)
                .bind(i64::from(t.priority))
                .bind(i64::from(t.retry_count))
                .bind(i64::from(t.max_retries))
                .bind(t.timeout_seconds as i64)
                .bind(&t.worker_id)
                .bind(&t.target_worker_id)
                .bind(&t.vm_id)
                .bind(ms(t.created_at))
                .bind(ms(t.scheduled_at))
                .bind(t.started_at.map(ms))
                .bind(t.completed_at.map(ms))
                .execute(s.pool())
                .await
                .unwrap();
            }
        }
    }
}

conformance!(
    vms_insert_get_update_delete,
    vm_lists_filter_and_page_in_a_stable_order,
    vm_transitions_are_compare_and_set,
    vms_are_counted_by_status,
    vms_expire_on_their_worker_in_expiry_order,
    vms_move_between_workers_only_before_they_are_made,
    executions_are_counted_by_who_ran_them_and_deleted,
    executions_are_listed_paged_and_failed,
    executions_whose_task_was_lost_are_failed,
    tasks_are_read_listed_and_filtered,
    task_history_counts_per_minute_and_tasks_are_deleted,
    workers_are_upserted_and_listed,
    worker_heartbeats_drains_sweeps_and_usage,
    api_keys,
    users_and_sessions,
    audit_log_filters_and_pages,
    events_are_numbered_filtered_and_pruned,
    concurrent_event_appends_are_seen_in_seq_order,
    concurrent_log_appends_are_seen_in_id_order,
    logs_are_queried_in_both_orders_and_pruned,
);

/// A time with millisecond precision (what the stores keep), `offset_ms` after a
/// fixed instant.
fn at(offset_ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(1_750_000_000_000 + offset_ms)
        .single()
        .unwrap()
}

fn now_ms() -> DateTime<Utc> {
    Utc.timestamp_millis_opt(Utc::now().timestamp_millis())
        .single()
        .unwrap()
}

fn vm(name: &str, created: DateTime<Utc>) -> Vm {
    let mut metadata = serde_json::Map::new();
    metadata.insert("owner".into(), serde_json::json!({"team": "a", "n": 3}));
    Vm {
        id: format!("vm-{name}"),
        name: name.to_string(),
        status: VmStatus::Created,
        orchestrator: Orchestrator::Docker,
        image: "debian:12".into(),
        vcpu_count: 2,
        memory_mb: 512,
        disk_mb: Some(2048),
        created_by: None,
        network_policy: None,
        placement: None,
        kernel_path: None,
        rootfs_path: Some("/r".into()),
        socket_path: None,
        worker_id: Some("w1".into()),
        error: None,
        created_at: created,
        started_at: None,
        stopped_at: None,
        expires_at: None,
        metadata,
    }
}

fn execution(id: &str, vm_id: &str, created: DateTime<Utc>, status: ExecutionStatus) -> Execution {
    Execution {
        id: id.to_string(),
        vm_id: vm_id.to_string(),
        task_id: None,
        command: "echo".into(),
        args: vec!["a b".into(), "ü".into()],
        status,
        exit_code: None,
        stdout: String::new(),
        stderr: String::new(),
        error: None,
        created_at: created,
        started_at: None,
        completed_at: None,
        duration_ms: None,
        metadata: Default::default(),
        created_by: None,
    }
}

fn worker(id: &str) -> Worker {
    let mut labels = serde_json::Map::new();
    labels.insert("zone".into(), serde_json::json!("eu"));
    Worker {
        id: id.to_string(),
        hostname: format!("host-{id}"),
        address: "10.0.0.1:9000".into(),
        zone: "eu-1".into(),
        status: WorkerStatus::Active,
        capabilities: vec!["docker".into(), "qemu".into()],
        labels,
        cpu_cores: 8,
        memory_mb: 16384,
        max_vms: 20,
        vm_count: 3,
        status_message: None,
        started_at: at(0),
        last_seen: at(5000),
    }
}

fn ids<T>(rows: &[T], id: impl Fn(&T) -> &str) -> Vec<String> {
    rows.iter().map(|r| id(r).to_string()).collect()
}

/// Walks every page of `list` at `limit` rows a page; returns the ids in order.
async fn all_pages<T, F, Fut>(limit: u32, list: F, id: impl Fn(&T) -> Cursor) -> Vec<String>
where
    F: Fn(Page) -> Fut,
    Fut: std::future::Future<Output = (Vec<T>, u64)>,
{
    let mut seen = Vec::new();
    let mut page = Page::new(Some(limit), None);
    for _ in 0..1000 {
        let probe = page.probe();
        let (rows, _) = list(probe).await;
        let (rows, next) = page.finish(rows, &id);
        seen.extend(rows.iter().map(|r| id(r).id));
        match next {
            Some(next) => page.cursor = Some(Cursor::decode(&next).unwrap()),
            None => return seen,
        }
    }
    panic!("paging did not end");
}

async fn vms_insert_get_update_delete(s: Subject) {
    let store = s.store();
    store.ping().await.unwrap();
    let a = vm("alpha", at(0));
    store.insert_vm(&a).await.unwrap();
    assert_eq!(store.get_vm(&a.id).await.unwrap(), Some(a.clone()));
    assert_eq!(
        store.get_vm_by_name("alpha").await.unwrap(),
        Some(a.clone())
    );
    assert_eq!(store.get_vm("nope").await.unwrap(), None);
    assert_eq!(store.get_vm_by_name("nope").await.unwrap(), None);

    // Same name, other id: a conflict.
    let mut twin = vm("alpha", at(1));
    twin.id = "vm-other".into();
    assert!(matches!(
        store.insert_vm(&twin).await,
        Err(CoreError::Conflict(_))
    ));

    let mut b = a.clone();
    b.status = VmStatus::Running;
    b.socket_path = Some("/s.sock".into());
    b.started_at = Some(at(10));
    b.kernel_path = Some("/k".into());
    b.metadata.insert("x".into(), serde_json::json!([1, 2]));
    store.update_vm(&b).await.unwrap();
    assert_eq!(store.get_vm(&a.id).await.unwrap(), Some(b));

    store.delete_vm(&a.id).await.unwrap();
    assert_eq!(store.get_vm(&a.id).await.unwrap(), None);
    store.delete_vm(&a.id).await.unwrap(); // deleting twice is fine
    // The name is free again.
    store.insert_vm(&twin).await.unwrap();
}

async fn vm_lists_filter_and_page_in_a_stable_order(s: Subject) {
    let store = s.store();
    // 25 VMs; several share a created_at, so the id breaks ties.
    let mut all = Vec::new();
    for i in 0..25 {
        let mut v = vm(&format!("v{i:02}"), at(i64::from(i / 3) * 1000));
        if i % 5 == 0 {
            v.status = VmStatus::Running;
        }
        if i % 2 == 0 {
            v.worker_id = Some("w2".into());
        }
        store.insert_vm(&v).await.unwrap();
        all.push(v);
    }
    let mut expected = all.clone();
    expected.sort_by(|x, y| (y.created_at, &y.id).cmp(&(x.created_at, &x.id)));
    let expected_ids = ids(&expected, |v| &v.id);

    let (first, total) = store
        .list_vms(&VmFilter::default(), &Page::new(Some(1000), None))
        .await
        .unwrap();
    assert_eq!(total, 25);
    assert_eq!(ids(&first, |v| &v.id), expected_ids);

    for limit in [1, 4, 7, 25, 30] {
        let got = all_pages(
            limit,
            |page| {
                let store = store.clone();
                async move { store.list_vms(&VmFilter::default(), &page).await.unwrap() }
            },
            |v: &Vm| Cursor::after(v.created_at, &v.id),
        )
        .await;
        assert_eq!(got, expected_ids, "limit {limit}");
    }

    // Rows inserted while paging (newer than the cursor) do not shift later pages.
    let page = Page::new(Some(5), None);
    let (rows, _) = store
        .list_vms(&VmFilter::default(), &page.probe())
        .await
        .unwrap();
    let (rows, next) = page.finish(rows, |v| Cursor::after(v.created_at, &v.id));
    store.insert_vm(&vm("late", at(999_999))).await.unwrap();
    let page = Page::new(Some(5), Some(Cursor::decode(&next.unwrap()).unwrap()));
    let (more, _) = store.list_vms(&VmFilter::default(), &page).await.unwrap();
    let mut seen = ids(&rows, |v| &v.id);
    seen.extend(ids(&more, |v| &v.id));
    assert_eq!(seen, expected_ids[..10]);

    let running = VmFilter {
        status: Some(VmStatus::Running),
        ..Default::default()
    };
    let (rows, total) = store
        .list_vms(&running, &Page::new(Some(2), None))
        .await
        .unwrap();
    assert_eq!(total, 5);
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|v| v.status == VmStatus::Running));

    let w2_running = VmFilter {
        status: Some(VmStatus::Running),
        worker_id: Some("w2".into()),
        ..Default::default()
    };
    let (rows, total) = store
        .list_vms(&w2_running, &Page::new(None, None))
        .await
        .unwrap();
    assert_eq!(total, 3); // 0, 10, 20
    assert_eq!(ids(&rows, |v| &v.name), vec!["v20", "v10", "v00"]);

    let by_name = VmFilter {
        name: Some("v07".into()),
        ..Default::default()
    };
    let (rows, total) = store
        .list_vms(&by_name, &Page::new(None, None))
        .await
        .unwrap();
    assert_eq!(
        (ids(&rows, |v| &v.name), total),
        (vec!["v07".to_string()], 1)
    );
}

async fn vm_transitions_are_compare_and_set(s: Subject) {
    let store = s.store();
    let v = vm("cas", at(0));
    store.insert_vm(&v).await.unwrap();

    assert!(
        !store
            .transition_vm(&v.id, &[VmStatus::Running], VmStatus::Stopping, None)
            .await
            .unwrap()
    );
    assert!(
        store
            .transition_vm(
                &v.id,
                &[VmStatus::Created, VmStatus::Starting],
                VmStatus::Running,
                None
            )
            .await
            .unwrap()
    );
    assert!(
        !store
            .transition_vm("missing", &[VmStatus::Running], VmStatus::Failed, None)
            .await
            .unwrap()
    );
    // To FAILED: error and stopped_at are set; a later transition without an error
    // keeps the error.
    assert!(
        store
            .transition_vm(&v.id, &[VmStatus::Running], VmStatus::Failed, Some("oom"))
            .await
            .unwrap()
    );
    let got = store.get_vm(&v.id).await.unwrap().unwrap();
    assert_eq!(got.status, VmStatus::Failed);
    assert_eq!(got.error.as_deref(), Some("oom"));
    assert!(got.stopped_at.is_some());
    assert!(
        store
            .transition_vm(&v.id, &[VmStatus::Failed], VmStatus::Stopping, None)
            .await
            .unwrap()
    );
    let got = store.get_vm(&v.id).await.unwrap().unwrap();
    assert_eq!(got.error.as_deref(), Some("oom"));

    // Many concurrent transitions from the same status: exactly one wins, each time.
    for round in 0..5 {
        let v = vm(&format!("race{round}"), at(round));
        store.insert_vm(&v).await.unwrap();
        let mut racers = Vec::new();
        for i in 0..8 {
            let store = store.clone();
            let id = v.id.clone();
            racers.push(tokio::spawn(async move {
                let to = if i % 2 == 0 {
                    VmStatus::Running
                } else {
                    VmStatus::Failed
                };
                let won = store
                    .transition_vm(&id, &[VmStatus::Created], to, None)
                    .await
                    .unwrap();
                (won, to)
            }));
        }
        let mut winners = Vec::new();
        for r in racers {
            let (won, to) = r.await.unwrap();
            if won {
                winners.push(to);
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
        let got = store.get_vm(&v.id).await.unwrap().unwrap();
        assert_eq!(got.status, winners[0]);
    }
}

async fn vms_move_between_workers_only_before_they_are_made(s: Subject) {
    let store = s.store();
    let mut v = vm("mover", at(0));
    v.worker_id = Some("w1".into());
    v.placement = Some(aetherium_types::Placement {
        zone: Some("eu-1".into()),
        labels: [("gpu".to_string(), "true".to_string())].into(),
    });
    store.insert_vm(&v).await.unwrap();
    assert_eq!(
        store.get_vm(&v.id).await.unwrap().unwrap().placement,
        v.placement
    );
    // Only from the worker that has it.
    assert!(!store.move_vm(&v.id, "w9", "w2").await.unwrap());
    assert!(!store.move_vm("missing", "w1", "w2").await.unwrap());
    // STARTING (half-made on a lost worker) moves, CREATED again, its socket forgotten.
    assert!(
        store
            .transition_vm(&v.id, &[VmStatus::Created], VmStatus::Starting, None)
            .await
            .unwrap()
    );
    let mut starting = store.get_vm(&v.id).await.unwrap().unwrap();
    starting.socket_path = Some("/run/w1/agent.sock".into());
    store.update_vm(&starting).await.unwrap();
    assert!(store.move_vm(&v.id, "w1", "w2").await.unwrap());
    let moved = store.get_vm(&v.id).await.unwrap().unwrap();
    assert_eq!(moved.worker_id.as_deref(), Some("w2"));
    assert_eq!(moved.status, VmStatus::Created);
    assert_eq!(moved.socket_path, None);
    // A VM that runs stays where it is.
    assert!(
        store
            .transition_vm(&v.id, &[VmStatus::Created], VmStatus::Running, None)
            .await
            .unwrap()
    );
    assert!(!store.move_vm(&v.id, "w2", "w3").await.unwrap());
    assert_eq!(
        store
            .get_vm(&v.id)
            .await
            .unwrap()
            .unwrap()
            .worker_id
            .as_deref(),
        Some("w2")
    );
}

async fn executions_are_counted_by_who_ran_them_and_deleted(s: Subject) {
    let store = s.store();
    let v = vm("counted", at(0));
    store.insert_vm(&v).await.unwrap();
    let statuses = [
        ExecutionStatus::Pending,
        ExecutionStatus::Running,
        ExecutionStatus::Completed,
        ExecutionStatus::Failed,
    ];
    for (i, status) in statuses.into_iter().enumerate() {
        let mut e = execution(&format!("ck-{i}"), &v.id, at(i as i64), status);
        e.created_by = Some("key-1".into());
        store.insert_execution(&e).await.unwrap();
    }
    let mut other = execution("ck-other", &v.id, at(9), ExecutionStatus::Running);
    other.created_by = Some("key-2".into());
    store.insert_execution(&other).await.unwrap();
    store
        .insert_execution(&execution(
            "ck-none",
            &v.id,
            at(10),
            ExecutionStatus::Running,
        ))
        .await
        .unwrap();
    assert_eq!(store.unfinished_executions_by("key-1").await.unwrap(), 2);
    assert_eq!(store.unfinished_executions_by("key-2").await.unwrap(), 1);
    assert_eq!(store.unfinished_executions_by("nobody").await.unwrap(), 0);
    assert_eq!(
        store
            .get_execution("ck-0")
            .await
            .unwrap()
            .unwrap()
            .created_by
            .as_deref(),
        Some("key-1")
    );
    store.delete_execution("ck-0").await.unwrap();
    assert!(store.get_execution("ck-0").await.unwrap().is_none());
    assert_eq!(store.unfinished_executions_by("key-1").await.unwrap(), 1);
    store.delete_execution("missing").await.unwrap();
}

async fn vms_are_counted_by_status(s: Subject) {
    let store = s.store();
    assert!(store.count_vms_by_status().await.unwrap().is_empty());
    for (i, status) in [
        VmStatus::Running,
        VmStatus::Running,
        VmStatus::Failed,
        VmStatus::Created,
        VmStatus::Running,
    ]
    .into_iter()
    .enumerate()
    {
        let mut v = vm(&format!("c{i}"), at(i as i64));
        v.status = status;
        store.insert_vm(&v).await.unwrap();
    }
    let mut counts = store.count_vms_by_status().await.unwrap();
    counts.sort_by_key(|(s, _)| s.as_str());
    let mut expected = vec![
        (VmStatus::Created, 1),
        (VmStatus::Failed, 1),
        (VmStatus::Running, 3),
    ];
    expected.sort_by_key(|(s, _)| s.as_str());
    assert_eq!(counts, expected);
}

async fn vms_expire_on_their_worker_in_expiry_order(s: Subject) {
    let store = s.store();
    let mut never = vm("never", at(0));
    never.status = VmStatus::Running;
    let mut later = vm("later", at(1));
    later.expires_at = Some(at(5_000));
    let mut sooner = vm("sooner", at(2));
    sooner.expires_at = Some(at(1_000));
    let mut elsewhere = vm("elsewhere", at(3));
    elsewhere.worker_id = Some("w2".into());
    elsewhere.expires_at = Some(at(10));
    let mut deleting = vm("deleting", at(4));
    deleting.status = VmStatus::Stopping;
    deleting.expires_at = Some(at(10));
    for v in [&never, &later, &sooner, &elsewhere, &deleting] {
        store.insert_vm(v).await.unwrap();
    }
    // Kept as given, to the millisecond.
    let got = store.get_vm(&later.id).await.unwrap().unwrap();
    assert_eq!(got.expires_at, Some(at(5_000)));
    assert_eq!(
        store.get_vm(&never.id).await.unwrap().unwrap().expires_at,
        None
    );

    // Only w1's, not yet deleting, whose time has come, the longest expired first.
    assert!(store.expired_vms("w1", at(999)).await.unwrap().is_empty());
    assert_eq!(
        store.expired_vms("w1", at(1_000)).await.unwrap(),
        [sooner.id.clone()]
    );
    assert_eq!(
        store.expired_vms("w1", at(9_000)).await.unwrap(),
        [sooner.id.clone(), later.id.clone()]
    );
    assert_eq!(
        store.expired_vms("w2", at(9_000)).await.unwrap(),
        [elsewhere.id.clone()]
    );

    // Moved and cleared.
    assert!(
        store
            .set_vm_expiry(&sooner.id, Some(at(20_000)))
            .await
            .unwrap()
    );
    assert!(store.set_vm_expiry(&later.id, None).await.unwrap());
    assert!(store.expired_vms("w1", at(9_000)).await.unwrap().is_empty());
    assert_eq!(
        store.get_vm(&sooner.id).await.unwrap().unwrap().expires_at,
        Some(at(20_000))
    );
    assert!(!store.set_vm_expiry("vm-none", None).await.unwrap());
    // A whole-row update keeps the expiry.
    let mut updated = store.get_vm(&sooner.id).await.unwrap().unwrap();
    updated.status = VmStatus::Running;
    store.update_vm(&updated).await.unwrap();
    assert_eq!(
        store.get_vm(&sooner.id).await.unwrap().unwrap().expires_at,
        Some(at(20_000))
    );
}

async fn executions_are_listed_paged_and_failed(s: Subject) {
    let store = s.store();
    let mut all = Vec::new();
    for i in 0..9 {
        let status = match i % 3 {
            0 => ExecutionStatus::Pending,
            1 => ExecutionStatus::Running,
            _ => ExecutionStatus::Completed,
        };
        let e = execution(&format!("e{i}"), "vm-a", at(i64::from(i / 2)), status);
        store.insert_execution(&e).await.unwrap();
        all.push(e);
    }
    let other = execution("o1", "vm-b", at(0), ExecutionStatus::Running);
    store.insert_execution(&other).await.unwrap();
    assert_eq!(
        store.get_execution("e3").await.unwrap(),
        Some(all[3].clone())
    );
    assert_eq!(store.get_execution("zzz").await.unwrap(), None);

    let mut expected = all.clone();
    expected.sort_by(|x, y| (y.created_at, &y.id).cmp(&(x.created_at, &x.id)));
    let expected_ids = ids(&expected, |e| &e.id);
    let (rows, total) = store
        .list_executions("vm-a", &Page::new(None, None))
        .await
        .unwrap();
    assert_eq!(total, 9);
    assert_eq!(ids(&rows, |e| &e.id), expected_ids);
    for limit in [1, 2, 4] {
        let got = all_pages(
            limit,
            |page| {
                let store = store.clone();
                async move { store.list_executions("vm-a", &page).await.unwrap() }
            },
            |e: &Execution| Cursor::after(e.created_at, &e.id),
        )
        .await;
        assert_eq!(got, expected_ids, "limit {limit}");
    }

    // An update writes everything it says it does.
    let mut done = all[8].clone();
    done.status = ExecutionStatus::Completed;
    done.exit_code = Some(-3);
    done.stdout = "out\n".into();
    done.stderr = "err\n".into();
    done.error = Some("e".into());
    done.started_at = Some(at(100));
    done.completed_at = Some(at(200));
    done.duration_ms = Some(100);
    done.task_id = Some("t1".into());
    done.metadata.insert("k".into(), serde_json::json!("v"));
    store.update_execution(&done).await.unwrap();
    assert_eq!(store.get_execution("e8").await.unwrap(), Some(done));

    // Pending and running ones of vm-a: e0, e1, e3, e4, e6, e7 (e8 is completed now).
    let failed = store
        .fail_unfinished_executions("vm-a", "vm gone")
        .await
        .unwrap();
    assert_eq!(failed, 6);
    let e1 = store.get_execution("e1").await.unwrap().unwrap();
    assert_eq!(e1.status, ExecutionStatus::Failed);
    assert_eq!(e1.error.as_deref(), Some("vm gone"));
    assert!(e1.completed_at.is_some());
    assert_eq!(
        store.get_execution("e2").await.unwrap().unwrap().status,
        ExecutionStatus::Completed
    );
    assert_eq!(
        store.get_execution("o1").await.unwrap().unwrap().status,
        ExecutionStatus::Running
    );

    // Direct (streamed / interactive) executions still running are failed; queued
    // ones (no `mode`) and finished ones stay.
    let mut streamed = execution("d1", "vm-c", at(0), ExecutionStatus::Running);
    streamed
        .metadata
        .insert("mode".into(), serde_json::json!("stream"));
    let mut finished = execution("d2", "vm-c", at(0), ExecutionStatus::Completed);
    finished
        .metadata
        .insert("mode".into(), serde_json::json!("interactive"));
    let mut null_mode = execution("d3", "vm-c", at(0), ExecutionStatus::Running);
    null_mode
        .metadata
        .insert("mode".into(), serde_json::Value::Null);
    for e in [&streamed, &finished, &null_mode] {
        store.insert_execution(e).await.unwrap();
    }
    let n = store
        .fail_interrupted_direct_executions("server stopped")
        .await
        .unwrap();
    assert_eq!(n, 1);
    let d1 = store.get_execution("d1").await.unwrap().unwrap();
    assert_eq!(
        (d1.status, d1.error.as_deref()),
        (ExecutionStatus::Failed, Some("server stopped"))
    );
    for id in ["o1", "d3"] {
        assert_eq!(
            store.get_execution(id).await.unwrap().unwrap().status,
            ExecutionStatus::Running,
            "{id}"
        );
    }
}

async fn executions_whose_task_was_lost_are_failed(s: Subject) {
    let store = s.store();
    let cutoff = at(100_000);
    let done = |id: &str, completed: DateTime<Utc>| Task {
        completed_at: Some(completed),
        ..task(id, TaskType::VmExecute, TaskStatus::Completed, at(0))
    };
    s.insert_task(
        &task("t-live", TaskType::VmExecute, TaskStatus::Pending, at(0)),
        QueueName::Default,
    )
    .await;
    s.insert_task(&done("t-old", at(50_000)), QueueName::Default)
        .await;
    s.insert_task(&done("t-just", at(150_000)), QueueName::Default)
        .await;
    // (execution, its task, status, created): whether the sweep ends it.
    let cases = [
        (
            "no-task-old",
            Some("t-missing"),
            ExecutionStatus::Pending,
            at(0),
            true,
        ),
        (
            "no-task-new",
            Some("t-missing"),
            ExecutionStatus::Pending,
            at(200_000),
            false,
        ),
        (
            "live-task",
            Some("t-live"),
            ExecutionStatus::Pending,
            at(0),
            false,
        ),
        (
            "task-done-long-ago",
            Some("t-old"),
            ExecutionStatus::Running,
            at(0),
            true,
        ),
        (
            "task-just-done",
            Some("t-just"),
            ExecutionStatus::Running,
            at(0),
            false,
        ),
        ("direct", None, ExecutionStatus::Running, at(0), false),
        (
            "finished",
            Some("t-missing"),
            ExecutionStatus::Completed,
            at(0),
            false,
        ),
    ];
    for (id, task_id, status, created, _) in &cases {
        let mut e = execution(id, "vm-orphans", *created, *status);
        e.task_id = task_id.map(str::to_string);
        store.insert_execution(&e).await.unwrap();
    }
    let n = store
        .fail_orphaned_executions(cutoff, "task lost")
        .await
        .unwrap();
    assert_eq!(n, 2);
    for (id, _, status, _, swept) in cases {
        let e = store.get_execution(id).await.unwrap().unwrap();
        if swept {
            assert_eq!(
                (e.status, e.error.as_deref()),
                (ExecutionStatus::Failed, Some("task lost")),
                "{id}"
            );
            assert!(e.completed_at.is_some(), "{id}");
        } else {
            assert_eq!(e.status, status, "{id}");
        }
    }
}

type TaskPredicate = dyn Fn(&Task, QueueName) -> bool;

fn task(id: &str, task_type: TaskType, status: TaskStatus, created: DateTime<Utc>) -> Task {
    Task {
        id: id.to_string(),
        task_type,
        status,
        payload: serde_json::json!({"vm_id": "x", "n": [1, 2]}),
        result: None,
        error: None,
        priority: 5,
        retry_count: 0,
        max_retries: 3,
        timeout_seconds: 600,
        worker_id: None,
        target_worker_id: None,
        vm_id: None,
        created_at: created,
        scheduled_at: created,
        started_at: None,
        completed_at: None,
        archived_at: None,
    }
}

async fn task_history_counts_per_minute_and_tasks_are_deleted(s: Subject) {
    let store = s.store();
    // A minute's start, and instants `m` minutes and `sec` seconds after it.
    let from = Utc.timestamp_opt(1_750_000_020, 0).single().unwrap();
    let t = |m: i64, sec: i64| from + chrono::Duration::seconds(m * 60 + sec);
    let finished = |id: &str, status, created, done| {
        let mut task = task(id, TaskType::VmExecute, status, created);
        task.completed_at = Some(done);
        task
    };
    let rows = [
        // Before the window: not counted, even though it finished inside it.
        finished("h0", TaskStatus::Completed, t(-1, 59), t(0, 1)),
        finished("h1", TaskStatus::Completed, t(0, 0), t(0, 30)),
        finished("h2", TaskStatus::Failed, t(0, 59), t(2, 0)),
        task("h3", TaskType::VmCreate, TaskStatus::Pending, t(2, 10)),
        task("h4", TaskType::VmCreate, TaskStatus::Running, t(2, 59)),
        // Cancelled ones count as created, never as completed or failed.
        finished("h5", TaskStatus::Cancelled, t(1, 0), t(1, 5)),
        // After the window.
        finished("h6", TaskStatus::Completed, t(3, 0), t(3, 1)),
    ];
    for row in &rows {
        s.insert_task(row, QueueName::Default).await;
    }
    let buckets = store.task_history(from, 3).await.unwrap();
    let got: Vec<(DateTime<Utc>, u64, u64, u64)> = buckets
        .iter()
        .map(|b| (b.start, b.created, b.completed, b.failed))
        .collect();
    assert_eq!(
        got,
        vec![(t(0, 0), 2, 2, 0), (t(1, 0), 1, 0, 0), (t(2, 0), 2, 0, 1),]
    );
    // Exactly as many buckets as asked, empty ones too.
    let empty = store.task_history(t(100, 0), 5).await.unwrap();
    assert_eq!(empty.len(), 5);
    assert!(
        empty
            .iter()
            .all(|b| b.created + b.completed + b.failed == 0)
    );

    assert!(store.delete_task("h2").await.unwrap());
    assert!(!store.delete_task("h2").await.unwrap());
    assert!(store.get_task("h2").await.unwrap().is_none());
    assert!(store.get_task("h1").await.unwrap().is_some());
}

async fn tasks_are_read_listed_and_filtered(s: Subject) {
    let store = s.store();
    let mut all = Vec::new();
    for i in 0..12 {
        let task_type = if i % 2 == 0 {
            TaskType::VmCreate
        } else {
            TaskType::VmExecute
        };
        let status = match i % 3 {
            0 => TaskStatus::Pending,
            1 => TaskStatus::Running,
            _ => TaskStatus::Completed,
        };
        let mut t = task(
            &format!("t{i:02}"),
            task_type,
            status,
            at(i64::from(i / 2) * 10),
        );
        if status != TaskStatus::Pending {
            t.worker_id = Some(format!("w{}", i % 2));
            t.started_at = Some(at(500));
        }
        if status == TaskStatus::Completed {
            t.result = Some(serde_json::json!({"exit_code": 0}));
            t.completed_at = Some(at(600));
        }
        t.vm_id = Some(if i < 6 { "vm-a" } else { "vm-b" }.into());
        t.target_worker_id = (i == 3).then(|| "w1".to_string());
        t.error = (i == 5).then(|| "boom".to_string());
        t.retry_count = (i % 4) as u32;
        let queue = if i % 4 == 0 {
            QueueName::Critical
        } else {
            QueueName::Default
        };
        s.insert_task(&t, queue).await;
        all.push((t, queue));
    }
    for (t, _) in &all {
        assert_eq!(store.get_task(&t.id).await.unwrap().as_ref(), Some(t));
    }
    assert_eq!(store.get_task("none").await.unwrap(), None);

    let mut expected: Vec<&Task> = all.iter().map(|(t, _)| t).collect();
    expected.sort_by(|x, y| (y.created_at, &y.id).cmp(&(x.created_at, &x.id)));
    let expected_ids: Vec<String> = expected.iter().map(|t| t.id.clone()).collect();
    for limit in [1, 5, 12, 100] {
        let got = all_pages(
            limit,
            |page| {
                let store = store.clone();
                async move {
                    store
                        .list_tasks(&TaskFilter::default(), &page)
                        .await
                        .unwrap()
                }
            },
            |t: &Task| Cursor::after(t.created_at, &t.id),
        )
        .await;
        assert_eq!(got, expected_ids, "limit {limit}");
    }

    let check = |filter: TaskFilter, want: Box<TaskPredicate>| {
        let store = store.clone();
        let want_ids: Vec<String> = expected_ids
            .iter()
            .filter(|id| {
                let (t, q) = all.iter().find(|(t, _)| &t.id == *id).unwrap();
                want(t, *q)
            })
            .cloned()
            .collect();
        async move {
            let (rows, total) = store
                .list_tasks(&filter, &Page::new(None, None))
                .await
                .unwrap();
            assert_eq!(ids(&rows, |t| &t.id), want_ids, "{filter:?}");
            assert_eq!(total, want_ids.len() as u64, "{filter:?}");
        }
    };
    check(
        TaskFilter {
            status: Some(TaskStatus::Running),
            ..Default::default()
        },
        Box::new(|t, _| t.status == TaskStatus::Running),
    )
    .await;
    check(
        TaskFilter {
            task_type: Some(TaskType::VmExecute),
            vm_id: Some("vm-b".into()),
            ..Default::default()
        },
        Box::new(|t, _| t.task_type == TaskType::VmExecute && t.vm_id.as_deref() == Some("vm-b")),
    )
    .await;
    check(
        TaskFilter {
            worker_id: Some("w1".into()),
            ..Default::default()
        },
        Box::new(|t, _| t.worker_id.as_deref() == Some("w1")),
    )
    .await;
    check(
        TaskFilter {
            queue: Some(QueueName::Critical),
            ..Default::default()
        },
        Box::new(|_, q| q == QueueName::Critical),
    )
    .await;
    check(
        TaskFilter {
            created_after: Some(at(20)),
            created_before: Some(at(40)),
            ..Default::default()
        },
        Box::new(|t, _| t.created_at >= at(20) && t.created_at < at(40)),
    )
    .await;
}

async fn workers_are_upserted_and_listed(s: Subject) {
    let store = s.store();
    assert!(store.list_workers().await.unwrap().is_empty());
    let b = worker("b");
    let a = worker("a");
    store.upsert_worker(&b).await.unwrap();
    store.upsert_worker(&a).await.unwrap();
    assert_eq!(store.get_worker("a").await.unwrap(), Some(a.clone()));
    assert_eq!(store.get_worker("zz").await.unwrap(), None);

    let mut a2 = a.clone();
    a2.status = WorkerStatus::Draining;
    a2.status_message = Some("bye".into());
    a2.vm_count = 0;
    a2.capabilities = vec![];
    a2.labels.clear();
    a2.last_seen = at(9000);
    store.upsert_worker(&a2).await.unwrap();
    assert_eq!(store.list_workers().await.unwrap(), vec![a2, b]);
}

async fn worker_heartbeats_drains_sweeps_and_usage(s: Subject) {
    use aetherium_core::store::workers::DRAINED_BY_REQUEST;
    let store = s.store();
    let w = worker("a");
    assert_eq!(store.heartbeat_worker(&w).await.unwrap(), w);

    // An administrator's drain outlives heartbeats that say active.
    let drained = store
        .set_worker_status(
            "a",
            &[WorkerStatus::Active],
            WorkerStatus::Draining,
            Some(DRAINED_BY_REQUEST),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(drained.status, WorkerStatus::Draining);
    let mut beat = w.clone();
    beat.last_seen = at(6000);
    beat.vm_count = 4;
    let stored = store.heartbeat_worker(&beat).await.unwrap();
    assert_eq!(stored.status, WorkerStatus::Draining);
    assert_eq!(stored.status_message.as_deref(), Some(DRAINED_BY_REQUEST));
    assert_eq!((stored.vm_count, stored.last_seen), (4, at(6000)));
    assert_eq!(store.get_worker("a").await.unwrap(), Some(stored));

    // The compare-and-set: from a status it is not in, nothing changes.
    let same = store
        .set_worker_status("a", &[WorkerStatus::Active], WorkerStatus::Offline, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(same.status, WorkerStatus::Draining);
    assert_eq!(
        store
            .set_worker_status("zz", &[WorkerStatus::Active], WorkerStatus::Offline, None)
            .await
            .unwrap(),
        None
    );
    let active = store
        .set_worker_status("a", &[WorkerStatus::Draining], WorkerStatus::Active, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (active.status, active.status_message),
        (WorkerStatus::Active, None)
    );

    // The sweep: workers not seen since the cutoff go offline, once.
    let mut b = worker("b");
    b.last_seen = at(100);
    store.heartbeat_worker(&b).await.unwrap();
    let mut c = worker("c");
    c.last_seen = at(200);
    store.heartbeat_worker(&c).await.unwrap();
    let swept = store
        .mark_stale_workers_offline(at(1000), "silent")
        .await
        .unwrap();
    let mut swept_ids = ids(&swept, |w| &w.id);
    swept_ids.sort();
    assert_eq!(swept_ids, vec!["b", "c"]);
    assert!(swept.iter().all(
        |w| w.status == WorkerStatus::Offline && w.status_message.as_deref() == Some("silent")
    ));
    assert!(
        store
            .mark_stale_workers_offline(at(1000), "silent")
            .await
            .unwrap()
            .is_empty()
    );

    // Usage counts the VMs that hold resources, per worker.
    for (i, (worker_id, status)) in [
        ("a", VmStatus::Running),
        ("a", VmStatus::Starting),
        ("a", VmStatus::Stopped),
        ("b", VmStatus::Failed),
        ("c", VmStatus::Created),
    ]
    .into_iter()
    .enumerate()
    {
        let mut v = vm(&format!("u{i}"), at(i as i64));
        v.worker_id = Some(worker_id.into());
        v.status = status;
        store.insert_vm(&v).await.unwrap();
    }
    let usage = store.worker_usage().await.unwrap();
    let summary: Vec<(String, u32, u64, u64)> = usage
        .iter()
        .map(|(id, u)| (id.clone(), u.vms, u.vcpus, u.memory_mb))
        .collect();
    assert_eq!(
        summary,
        vec![("a".into(), 2, 4, 1024), ("c".into(), 1, 2, 512)]
    );

    // A key's usage: its live VMs (PAUSED ones too), not STOPPED or FAILED ones, not
    // another creator's.
    for (i, (by, status, vcpus)) in [
        ("key-1", VmStatus::Running, 1),
        ("key-1", VmStatus::Paused, 2),
        ("key-1", VmStatus::Created, 4),
        ("key-1", VmStatus::Failed, 8),
        ("key-1", VmStatus::Stopped, 16),
        ("key-2", VmStatus::Running, 32),
    ]
    .into_iter()
    .enumerate()
    {
        let mut v = vm(&format!("k{i}"), at(100 + i as i64));
        v.created_by = Some(by.into());
        v.status = status;
        v.vcpu_count = vcpus;
        store.insert_vm(&v).await.unwrap();
    }
    let used = store.usage_by("key-1").await.unwrap();
    assert_eq!((used.vms, used.vcpus, used.memory_mb), (3, 7, 3 * 512));
    let by_key = VmFilter {
        created_by: Some("key-2".into()),
        ..Default::default()
    };
    let (rows, total) = store
        .list_vms(&by_key, &Page::new(None, None))
        .await
        .unwrap();
    assert_eq!(
        (ids(&rows, |v| &v.name), total),
        (vec!["k5".to_string()], 1)
    );
    assert_eq!(rows[0].created_by.as_deref(), Some("key-2"));
    assert_eq!(store.usage_by("nobody").await.unwrap().vms, 0);
}

fn api_key(id: &str, created: DateTime<Utc>) -> ApiKey {
    ApiKey {
        id: id.to_string(),
        name: format!("key {id}"),
        prefix: "aeth_abc".into(),
        role: Role::Operator,
        created_by: "bootstrap".into(),
        created_at: created,
        expires_at: Some(at(1_000_000)),
        revoked_at: None,
        last_used_at: None,
        rate_limit_per_second: Some(7),
        quota: Some(KeyQuota {
            max_vms: Some(3),
            max_vcpus: None,
            max_memory_mb: Some(4096),
            max_concurrent_executions: Some(2),
            network_policy: Some(aetherium_types::NetworkPolicy {
                egress: aetherium_types::Egress::Deny,
                allow: vec!["203.0.113.0/24".into()],
                deny: vec![],
            }),
        }),
    }
}

async fn api_keys(s: Subject) {
    let auth = s.auth();
    assert_eq!(auth.count_api_keys().await.unwrap(), 0);
    let k1 = api_key("k1", at(0));
    let mut k2 = api_key("k2", at(10));
    k2.expires_at = None;
    k2.rate_limit_per_second = None;
    k2.quota = None;
    k2.role = Role::Admin;
    auth.insert_api_key(&k1, "hash1").await.unwrap();
    auth.insert_api_key(&k2, "hash2").await.unwrap();
    assert!(matches!(
        auth.insert_api_key(&api_key("k3", at(20)), "hash1").await,
        Err(CoreError::Conflict(_))
    ));
    assert_eq!(auth.count_api_keys().await.unwrap(), 2);
    assert_eq!(
        auth.api_key_by_hash("hash2").await.unwrap(),
        Some(k2.clone())
    );
    assert_eq!(auth.api_key_by_hash("nope").await.unwrap(), None);
    assert_eq!(auth.get_api_key("k1").await.unwrap(), Some(k1.clone()));
    assert_eq!(
        auth.list_api_keys().await.unwrap(),
        vec![k2.clone(), k1.clone()]
    );

    auth.touch_api_key("k1", at(50)).await.unwrap();
    assert!(auth.revoke_api_key("k1", at(60)).await.unwrap());
    assert!(!auth.revoke_api_key("k1", at(70)).await.unwrap());
    assert!(!auth.revoke_api_key("missing", at(70)).await.unwrap());
    let got = auth.get_api_key("k1").await.unwrap().unwrap();
    assert_eq!(got.last_used_at, Some(at(50)));
    assert_eq!(got.revoked_at, Some(at(60)));

    // Quotas are set and cleared in place.
    let raised = KeyQuota {
        max_vcpus: Some(16),
        ..Default::default()
    };
    assert!(auth.set_api_key_quota("k2", Some(&raised)).await.unwrap());
    assert_eq!(
        auth.get_api_key("k2").await.unwrap().unwrap().quota,
        Some(raised)
    );
    assert!(auth.set_api_key_quota("k1", None).await.unwrap());
    assert_eq!(auth.get_api_key("k1").await.unwrap().unwrap().quota, None);
    assert!(!auth.set_api_key_quota("missing", None).await.unwrap());
}

fn user(id: &str, name: &str, created: DateTime<Utc>) -> User {
    User {
        id: id.to_string(),
        username: name.to_string(),
        role: Role::Viewer,
        disabled: false,
        created_at: created,
        updated_at: created,
        last_login_at: None,
        quota: None,
    }
}

async fn users_and_sessions(s: Subject) {
    let auth = s.auth();
    let ada = user("u1", "ada", at(0));
    let bob = user("u2", "bob", at(5));
    auth.insert_user(&ada, "phc-ada").await.unwrap();
    auth.insert_user(&bob, "phc-bob").await.unwrap();
    assert!(matches!(
        auth.insert_user(&user("u3", "ada", at(9)), "x").await,
        Err(CoreError::Conflict(_))
    ));
    assert_eq!(auth.get_user("u1").await.unwrap(), Some(ada.clone()));
    assert_eq!(
        auth.user_credentials("ada").await.unwrap(),
        Some((ada.clone(), "phc-ada".to_string()))
    );
    assert_eq!(auth.user_credentials("eve").await.unwrap(), None);
    assert_eq!(
        auth.list_users().await.unwrap(),
        vec![bob.clone(), ada.clone()]
    );

    let mut ada2 = ada.clone();
    ada2.role = Role::Admin;
    ada2.disabled = true;
    ada2.updated_at = at(100);
    ada2.last_login_at = Some(at(90));
    auth.update_user(&ada2, None).await.unwrap();
    assert_eq!(
        auth.user_credentials("ada").await.unwrap(),
        Some((ada2.clone(), "phc-ada".to_string()))
    );
    auth.update_user(&ada2, Some("phc-new")).await.unwrap();
    assert_eq!(
        auth.user_credentials("ada").await.unwrap().unwrap().1,
        "phc-new"
    );

    let session = |id: &str, user: &str, expires: DateTime<Utc>| Session {
        id: id.to_string(),
        user_id: user.to_string(),
        created_at: at(0),
        expires_at: expires,
    };
    auth.insert_session(&session("s1", "u1", at(1000)), "th1")
        .await
        .unwrap();
    auth.insert_session(&session("s2", "u1", at(3000)), "th2")
        .await
        .unwrap();
    auth.insert_session(&session("s3", "u2", at(1500)), "th3")
        .await
        .unwrap();
    auth.insert_session(&session("s4", "u2", at(5000)), "th4")
        .await
        .unwrap();
    let got = auth.session_by_hash("th1").await.unwrap().unwrap();
    assert_eq!(
        (
            got.id.as_str(),
            got.user_id.as_str(),
            got.created_at,
            got.expires_at
        ),
        ("s1", "u1", at(0), at(1000))
    );
    assert!(auth.session_by_hash("nope").await.unwrap().is_none());
    auth.delete_session("s1").await.unwrap();
    assert!(auth.session_by_hash("th1").await.unwrap().is_none());
    // Expiry is inclusive: a session expiring exactly now is gone.
    assert_eq!(auth.delete_expired_sessions(at(1500)).await.unwrap(), 1);
    assert!(auth.session_by_hash("th3").await.unwrap().is_none());
    assert_eq!(auth.delete_user_sessions("u1").await.unwrap(), 1);
    assert!(auth.session_by_hash("th2").await.unwrap().is_none());

    // Deleting a user deletes its sessions.
    assert!(auth.delete_user("u2").await.unwrap());
    assert!(!auth.delete_user("u2").await.unwrap());
    assert!(auth.session_by_hash("th4").await.unwrap().is_none());
    assert_eq!(auth.get_user("u2").await.unwrap(), None);
}

async fn audit_log_filters_and_pages(s: Subject) {
    let auth = s.auth();
    for i in 0..10 {
        auth.append_audit(&AuditEntry {
            seq: 0,
            at: at(i),
            actor_id: Some(format!("a{}", i % 2)),
            actor_name: Some("name".into()),
            action: if i % 3 == 0 { "vm.create" } else { "vm.delete" }.into(),
            method: "POST".into(),
            route: "/api/v1/vms".into(),
            resource_id: (i < 4).then(|| "vm-1".to_string()),
            status: 200 + i as u16,
            remote_addr: Some("127.0.0.1".into()),
        })
        .await
        .unwrap();
    }
    let list = |f: AuditFilter| {
        let auth = auth.clone();
        async move { auth.list_audit(&f).await.unwrap() }
    };
    let everything = list(AuditFilter {
        limit: 100,
        ..Default::default()
    })
    .await;
    assert_eq!(everything.len(), 10);
    assert!(everything.windows(2).all(|w| w[0].seq > w[1].seq));
    assert_eq!(everything[0].status, 209);
    assert_eq!(everything[9].at, at(0));
    assert_eq!(everything[9].remote_addr.as_deref(), Some("127.0.0.1"));

    // Pages through `before`.
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let page = list(AuditFilter {
            before,
            limit: 3,
            ..Default::default()
        })
        .await;
        if page.is_empty() {
            break;
        }
        before = page.last().map(|e| e.seq);
        seen.extend(page.iter().map(|e| e.seq));
    }
    assert_eq!(seen, everything.iter().map(|e| e.seq).collect::<Vec<_>>());

    let a1 = list(AuditFilter {
        actor_id: Some("a1".into()),
        limit: 100,
        ..Default::default()
    })
    .await;
    assert_eq!(a1.len(), 5);
    let combined = list(AuditFilter {
        actor_id: Some("a0".into()),
        action: Some("vm.create".into()),
        resource_id: Some("vm-1".into()),
        limit: 100,
        ..Default::default()
    })
    .await;
    // i = 0 only (i in {0, 2} have vm-1 and a0; only 0 is a create)
    assert_eq!(combined.len(), 1);
    assert_eq!(combined[0].at, at(0));
}

async fn events_are_numbered_filtered_and_pruned(s: Subject) {
    let log = s.events();
    assert_eq!(log.latest_event_seq().await.unwrap(), 0);
    assert!(log.append_events(&[]).await.unwrap().is_empty());
    let events: Vec<Event> = (0..10)
        .map(|i| {
            let t = if i % 2 == 0 {
                EventType::VmStarted
            } else {
                EventType::TaskFailed
            };
            Event::new(t, format!("r{}", i % 3), serde_json::json!({"i": i}))
        })
        .collect();
    let seqs = log.append_events(&events).await.unwrap();
    assert_eq!(seqs.len(), 10);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(log.latest_event_seq().await.unwrap(), seqs[9]);

    let everything = log
        .read_events(0, &EventFilter::default(), 100)
        .await
        .unwrap();
    assert_eq!(everything.len(), 10);
    for (got, (sent, seq)) in everything.iter().zip(events.iter().zip(&seqs)) {
        assert_eq!(got.seq, Some(*seq));
        assert_eq!(got.id, sent.id);
        assert_eq!(got.event_type, sent.event_type);
        assert_eq!(got.resource_id, sent.resource_id);
        assert_eq!(
            got.timestamp.timestamp_millis(),
            sent.timestamp.timestamp_millis()
        );
        assert_eq!(got.data, sent.data);
    }

    let (types, categories) = EventFilter::parse_types("vm.*").unwrap();
    let vm_only = EventFilter {
        types,
        categories,
        resource_id: None,
    };
    let got = log.read_events(0, &vm_only, 100).await.unwrap();
    assert_eq!(got.len(), 5);
    assert!(got.iter().all(|e| e.event_type == EventType::VmStarted));
    let exact = EventFilter {
        types: vec![EventType::TaskFailed],
        categories: vec![],
        resource_id: Some("r0".into()),
    };
    let got = log.read_events(0, &exact, 100).await.unwrap();
    assert_eq!(got.len(), 2, "{got:?}"); // i = 3, 9
    let page = log
        .read_events(seqs[4], &EventFilter::default(), 2)
        .await
        .unwrap();
    assert_eq!(
        page.iter().map(|e| e.seq.unwrap()).collect::<Vec<_>>(),
        seqs[5..7]
    );
    assert_eq!(page[0].data["i"], 5);

    // Row cap: the newest 3 stay.
    let far_past = Utc::now() - chrono::Duration::days(365);
    assert_eq!(log.prune_events(far_past, 3).await.unwrap(), 7);
    let left = log
        .read_events(0, &EventFilter::default(), 100)
        .await
        .unwrap();
    assert_eq!(
        left.iter().map(|e| e.seq.unwrap()).collect::<Vec<_>>(),
        seqs[7..]
    );
    // Age: everything is older than a moment from now.
    let soon = Utc::now() + chrono::Duration::seconds(1);
    assert_eq!(log.prune_events(soon, 100).await.unwrap(), 3);
    assert_eq!(log.latest_event_seq().await.unwrap(), 0);
    // Seqs are never reused.
    let next = log.append_events(&events[..1]).await.unwrap();
    assert!(next[0] > seqs[9]);
}

/// Several writers append at once while a reader follows the log by `after`: the
/// reader must see every event exactly once, in seq order — no seq may become
/// visible after a larger one was read (it would be skipped on resume).
async fn concurrent_event_appends_are_seen_in_seq_order(s: Subject) {
    const WRITERS: usize = 4;
    const BATCHES: usize = 25;
    let log = s.events();
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let log = log.clone();
        writers.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for b in 0..BATCHES {
                let batch: Vec<Event> = (0..1 + b % 3)
                    .map(|i| {
                        Event::new(
                            EventType::VmCreated,
                            format!("w{w}"),
                            serde_json::json!({"b": b, "i": i}),
                        )
                    })
                    .collect();
                seqs.extend(log.append_events(&batch).await.unwrap());
            }
            seqs
        }));
    }
    let writers_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let log = log.clone();
        let writers_done = writers_done.clone();
        tokio::spawn(async move {
            let mut after = 0;
            let mut seen = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while tokio::time::Instant::now() < deadline {
                // Read the flag before the page: an empty page after the writers
                // finished means the follower has caught up for good.
                let finished = writers_done.load(std::sync::atomic::Ordering::SeqCst);
                let page = log
                    .read_events(after, &EventFilter::default(), 7)
                    .await
                    .unwrap();
                for e in &page {
                    seen.push(e.seq.unwrap());
                }
                match page.last() {
                    Some(last) => after = last.seq.unwrap(),
                    None if finished => break,
                    None => tokio::task::yield_now().await,
                }
            }
            seen
        })
    };
    let mut written = BTreeSet::new();
    for w in writers {
        written.extend(w.await.unwrap());
    }
    writers_done.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = reader.await.unwrap();
    assert!(seen.windows(2).all(|w| w[0] < w[1]));
    let seen: BTreeSet<i64> = seen.into_iter().collect();
    assert_eq!(seen, written, "the follower missed events");
}

/// The same for log records: a follower paging by id (`/logs/stream` catching up)
/// sees each record once, in id order, while several writers append.
async fn concurrent_log_appends_are_seen_in_id_order(s: Subject) {
    const WRITERS: usize = 3;
    const BATCHES: usize = 20;
    let logs = s.logs();
    let writers_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let logs = logs.clone();
        writers.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for b in 0..BATCHES {
                let mut batch: Vec<LogRecord> = (0..1 + b % 4)
                    .map(|i| record(&format!("w{w} b{b} i{i}"), None, LogLevel::Info, now_ms()))
                    .collect();
                logs.append_logs(&mut batch).await.unwrap();
                ids.extend(batch.iter().map(|r| r.id));
            }
            ids
        }));
    }
    let reader = {
        let logs = logs.clone();
        let writers_done = writers_done.clone();
        tokio::spawn(async move {
            let mut cursor = None;
            let mut seen = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while tokio::time::Instant::now() < deadline {
                let finished = writers_done.load(std::sync::atomic::Ordering::SeqCst);
                let page = logs
                    .query_logs(&LogFilter::default(), cursor, LogOrder::Asc, 5)
                    .await
                    .unwrap();
                seen.extend(page.iter().map(|r| r.id));
                match page.last() {
                    Some(last) => cursor = Some(last.id),
                    None if finished => break,
                    None => tokio::task::yield_now().await,
                }
            }
            seen
        })
    };
    let mut written = BTreeSet::new();
    for w in writers {
        written.extend(w.await.unwrap());
    }
    writers_done.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = reader.await.unwrap();
    assert!(seen.windows(2).all(|w| w[0] < w[1]));
    let seen: BTreeSet<i64> = seen.into_iter().collect();
    assert_eq!(seen, written, "the follower missed records");
}

fn record(message: &str, task: Option<&str>, level: LogLevel, at: DateTime<Utc>) -> LogRecord {
    let mut fields = serde_json::Map::new();
    fields.insert("k".into(), serde_json::json!(1));
    LogRecord {
        id: 0,
        timestamp: at,
        level,
        target: "aetherium_core::worker".into(),
        message: message.into(),
        task_id: task.map(str::to_string),
        vm_id: task.map(|_| "vm-1".to_string()),
        worker_id: Some("w1".into()),
        execution_id: None,
        fields,
    }
}

async fn logs_are_queried_in_both_orders_and_pruned(s: Subject) {
    let logs = s.logs();
    assert_eq!(logs.latest_log_id().await.unwrap(), 0);
    let t0 = now_ms();
    let mut records = vec![
        record("one", Some("t1"), LogLevel::Info, t0),
        record("two Warn 100%_", Some("t1"), LogLevel::Warn, t0),
        record(
            "three",
            Some("t2"),
            LogLevel::Error,
            t0 + chrono::Duration::seconds(1),
        ),
        record(
            "four",
            None,
            LogLevel::Debug,
            t0 + chrono::Duration::seconds(2),
        ),
    ];
    logs.append_logs(&mut records).await.unwrap();
    let ids: Vec<i64> = records.iter().map(|r| r.id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(logs.latest_log_id().await.unwrap(), ids[3]);

    let query = |f: LogFilter, cursor: Option<i64>, order: LogOrder, limit: u32| {
        let logs = logs.clone();
        async move {
            logs.query_logs(&f, cursor, order, limit)
                .await
                .unwrap()
                .iter()
                .map(|r| r.id)
                .collect::<Vec<_>>()
        }
    };
    let all = logs
        .query_logs(&LogFilter::default(), None, LogOrder::Asc, 10)
        .await
        .unwrap();
    assert_eq!(all, records);

    let t1 = LogFilter {
        task_id: Some("t1".into()),
        ..Default::default()
    };
    assert_eq!(
        query(t1, None, LogOrder::Desc, 10).await,
        vec![ids[1], ids[0]]
    );
    assert_eq!(
        query(LogFilter::default(), Some(ids[1]), LogOrder::Asc, 10).await,
        ids[2..]
    );
    assert_eq!(
        query(LogFilter::default(), Some(ids[2]), LogOrder::Desc, 1).await,
        vec![ids[1]]
    );
    let warn = LogFilter {
        level: Some(LogLevel::Warn),
        ..Default::default()
    };
    assert_eq!(query(warn, None, LogOrder::Asc, 10).await, ids[1..3]);
    // Substring match: case-sensitive, `%` and `_` are plain characters.
    for (needle, want) in [
        ("Warn", vec![ids[1]]),
        ("warn", vec![]),
        ("%_", vec![ids[1]]),
    ] {
        let f = LogFilter {
            contains: Some(needle.into()),
            ..Default::default()
        };
        assert_eq!(query(f, None, LogOrder::Asc, 10).await, want, "{needle}");
    }
    let window = LogFilter {
        since: Some(t0 + chrono::Duration::seconds(1)),
        until: Some(t0 + chrono::Duration::seconds(2)),
        ..Default::default()
    };
    assert_eq!(query(window, None, LogOrder::Asc, 10).await, vec![ids[2]]);
    let by_ids = LogFilter {
        vm_id: Some("vm-1".into()),
        worker_id: Some("w1".into()),
        ..Default::default()
    };
    assert_eq!(query(by_ids, None, LogOrder::Asc, 10).await, ids[..3]);
    let none = LogFilter {
        execution_id: Some("e".into()),
        ..Default::default()
    };
    assert!(query(none, None, LogOrder::Asc, 10).await.is_empty());

    let far_past = Utc::now() - chrono::Duration::days(365);
    assert_eq!(logs.prune_logs(far_past, 1).await.unwrap(), 3);
    assert_eq!(
        query(LogFilter::default(), None, LogOrder::Asc, 10).await,
        vec![ids[3]]
    );
    // By age: records before t0 + 3 s go.
    assert_eq!(
        logs.prune_logs(t0 + chrono::Duration::seconds(3), 100)
            .await
            .unwrap(),
        1
    );
}

// ---------------------------------------------------------------------------------
// PostgreSQL only.

/// Many processes starting at once on a fresh database all migrate successfully
/// (sqlx's migrator serialises them with an advisory lock), and the schema is
/// applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_concurrent_migrations_all_succeed() {
    let pg = tokio::task::spawn_blocking(TempPostgres::start)
        .await
        .unwrap()
        .unwrap();
    for round in 0..3 {
        let url = pg.create_db(&format!("fresh{round}")).unwrap();
        let mut starters = Vec::new();
        for _ in 0..8 {
            let url = url.clone();
            starters.push(tokio::spawn(async move {
                PgStore::connect_with(
                    &url,
                    PgStoreOptions {
                        max_connections: 2,
                        ..Default::default()
                    },
                )
                .await
            }));
        }
        let mut stores = Vec::new();
        for s in starters {
            stores.push(s.await.unwrap().unwrap());
        }
        let applied: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success")
                .fetch_one(stores[0].pool())
                .await
                .unwrap();
        let files = std::fs::read_dir(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../libs/store/migrations/postgres"
        ))
        .unwrap()
        .count();
        assert_eq!(applied as usize, files);
        for s in &stores {
            s.ping().await.unwrap();
            s.close().await;
        }
    }
}

/// Separate processes, not just tasks: the test binary re-runs itself as a child
/// (`AETHERIUM_MIGRATE_CHILD=<url>`) that only connects (migrating) and exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_concurrent_migrations_from_processes() {
    if let Ok(url) = std::env::var("AETHERIUM_MIGRATE_CHILD") {
        let store = PgStore::connect(&url).await.unwrap();
        store.ping().await.unwrap();
        return;
    }
    let pg = tokio::task::spawn_blocking(TempPostgres::start)
        .await
        .unwrap()
        .unwrap();
    let url = pg.create_db("fresh_processes").unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut children = Vec::new();
    for _ in 0..5 {
        children.push(
            tokio::process::Command::new(&exe)
                .args([
                    "--exact",
                    "postgres_concurrent_migrations_from_processes",
                    "--nocapture",
                ])
                .env("AETHERIUM_MIGRATE_CHILD", &url)
                .kill_on_drop(true)
                .output(),
        );
    }
    for child in children {
        let out = child.await.unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed"));
    }
    let store = PgStore::connect(&url).await.unwrap();
    let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert!(applied >= 4);
}

/// While the server is down every call fails fast with `Unavailable` (503, never
/// 500); once it is back, the same store carries on without being recreated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_is_unavailable_then_reconnects() {
    let pg = tokio::task::spawn_blocking(TempPostgres::start)
        .await
        .unwrap()
        .unwrap();
    let store = Arc::new(
        PgStore::connect_with(
            &pg.url(),
            PgStoreOptions {
                max_connections: 4,
                acquire_timeout: Duration::from_secs(1),
            },
        )
        .await
        .unwrap(),
    );
    store.insert_vm(&vm("before", at(0))).await.unwrap();
    // Keep some pooled connections open across the restart.
    let warm: Vec<_> = (0..4).map(|_| store.ping()).collect();
    for w in futures::future::join_all(warm).await {
        w.unwrap();
    }

    let mut pg = tokio::task::spawn_blocking(move || {
        let mut pg = pg;
        pg.stop().unwrap();
        pg
    })
    .await
    .unwrap();

    let started = std::time::Instant::now();
    {
        let store: Arc<dyn Store> = store.clone();
        match store.get_vm("vm-before").await {
            Err(CoreError::Unavailable(_)) => {}
            other => panic!("expected Unavailable while down, got {other:?}"),
        }
        match store.insert_vm(&vm("during", at(1))).await {
            Err(CoreError::Unavailable(_)) => {}
            other => panic!("expected Unavailable while down, got {other:?}"),
        }
    }
    let events: Arc<dyn EventLog> = store.clone();
    assert!(matches!(
        events
            .append_events(&[Event::new(EventType::VmCreated, "x", serde_json::json!({}))])
            .await,
        Err(CoreError::Unavailable(_))
    ));
    let auth: Arc<dyn AuthStore> = store.clone();
    assert!(matches!(
        auth.count_api_keys().await,
        Err(CoreError::Unavailable(_))
    ));
    // Each failure took about the acquire timeout, not longer.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );

    pg = tokio::task::spawn_blocking(move || {
        let mut pg = pg;
        pg.restart().unwrap();
        pg
    })
    .await
    .unwrap();

    // Back: the same store works again (stale connections are replaced).
    let got = store.get_vm("vm-before").await.unwrap();
    assert_eq!(got.map(|v| v.name), Some("before".to_string()));
    store.insert_vm(&vm("after", at(2))).await.unwrap();
    let seqs = events
        .append_events(&[Event::new(EventType::VmCreated, "x", serde_json::json!({}))])
        .await
        .unwrap();
    assert_eq!(seqs.len(), 1);

    // A restart while calls are in flight: they fail with Unavailable or succeed,
    // never Internal, and the store recovers.
    let busy = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut outcomes = Vec::new();
            let until = tokio::time::Instant::now() + Duration::from_secs(2);
            while tokio::time::Instant::now() < until {
                let r = store
                    .list_vms(&VmFilter::default(), &Page::new(None, None))
                    .await;
                outcomes.push(r.map(|_| ()));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            outcomes
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pg = tokio::task::spawn_blocking(move || {
        let mut pg = pg;
        pg.restart().unwrap();
        pg
    })
    .await
    .unwrap();
    for r in busy.await.unwrap() {
        match r {
            Ok(()) | Err(CoreError::Unavailable(_)) => {}
            Err(e) => panic!("a call during the restart failed with {e:?}, not Unavailable"),
        }
    }
    store.ping().await.unwrap();
    drop(pg);
}

/// Unsupported URLs are refused before connecting; a PostgreSQL URL pointing at
/// nothing is `Unavailable`.
#[tokio::test]
async fn urls_select_the_store() {
    assert!(matches!(
        aetherium_core::store::connect("mysql://u@127.0.0.1/db").await,
        Err(CoreError::InvalidInput(_))
    ));
    // Embedded mode's store says what it takes instead of failing to parse.
    match aetherium_core::store::SqliteStore::connect("postgres://u:pw@127.0.0.1/db").await {
        Err(CoreError::InvalidInput(m)) => assert!(m.contains("SQLite") && !m.contains("pw")),
        other => panic!("{:?}", other.err()),
    }
    // A port nobody listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = std::time::Instant::now();
    let r = aetherium_core::store::connect(&format!("postgres://u@127.0.0.1:{port}/db")).await;
    assert!(matches!(r, Err(CoreError::Unavailable(_))), "{:?}", r.err());
    assert!(started.elapsed() < Duration::from_secs(15));
}

// ---------------------------------------------------------------------------------
// Guest address leases (`IpLeases`), on both stores.

conformance!(
    ip_leases_take_the_lowest_free_address_and_are_idempotent,
    ip_leases_stay_distinct_under_concurrent_leasers,
);

impl Subject {
    /// A second, independent handle on the same database (as another worker
    /// process would open).
    async fn another_handle(&self) -> Database {
        let url = match (&self.sqlite_dir, &self.pg) {
            (Some(dir), _) => format!("sqlite://{}", dir.path().join("conformance.db").display()),
            (None, Some(pg)) => pg.url(),
            (None, None) => unreachable!("a subject has a database"),
        };
        aetherium_core::store::connect(&url).await.unwrap()
    }
}

fn v4(last: u8) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(10, 0, 0, last)
}

async fn ip_leases_take_the_lowest_free_address_and_are_idempotent(s: Subject) {
    let leases = s.db.leases();
    let net = "worker-1/aetherium0";
    let range = v4(2)..=v4(6);
    assert!(leases.list_leases(net).await.unwrap().is_empty());
    for (vm, want) in [("a", 2), ("b", 3), ("c", 4)] {
        assert_eq!(
            leases.lease_ip(net, vm, range.clone()).await.unwrap(),
            v4(want)
        );
    }
    // Asking again gives the lease the VM holds.
    assert_eq!(
        leases.lease_ip(net, "a", range.clone()).await.unwrap(),
        v4(2)
    );
    let listed = leases.list_leases(net).await.unwrap();
    assert_eq!(
        listed
            .iter()
            .map(|l| (l.vm_id.as_str(), l.ip))
            .collect::<Vec<_>>(),
        vec![("a", v4(2)), ("b", v4(3)), ("c", v4(4))]
    );
    assert!(listed.iter().all(|l| l.network == net));
    assert!((Utc::now() - listed[0].leased_at).num_seconds().abs() < 60);

    // A released address is the lowest free one again.
    assert!(leases.release_ip(net, "b").await.unwrap());
    assert!(!leases.release_ip(net, "b").await.unwrap());
    assert_eq!(
        leases.lease_ip(net, "d", range.clone()).await.unwrap(),
        v4(3)
    );

    // Another network is another address space.
    assert_eq!(
        leases
            .lease_ip("worker-2/aetherium0", "a", range.clone())
            .await
            .unwrap(),
        v4(2)
    );

    // Full: a clear error, and nothing half-made.
    assert_eq!(
        leases.lease_ip(net, "e", range.clone()).await.unwrap(),
        v4(5)
    );
    assert_eq!(
        leases.lease_ip(net, "f", range.clone()).await.unwrap(),
        v4(6)
    );
    match leases.lease_ip(net, "g", range.clone()).await {
        Err(CoreError::Conflict(m)) => {
            assert!(m.contains("no free") && m.contains(net), "{m}")
        }
        other => panic!("expected exhaustion, got {other:?}"),
    }
    assert_eq!(leases.list_leases(net).await.unwrap().len(), 5);
    // A VM already holding an address still gets it when the range is full.
    assert_eq!(
        leases.lease_ip(net, "f", range.clone()).await.unwrap(),
        v4(6)
    );

    // A lease outside a new range is replaced by one inside it.
    let wider = v4(2)..=v4(9);
    assert_eq!(
        leases.lease_ip(net, "g", wider.clone()).await.unwrap(),
        v4(7)
    );
    assert_eq!(
        leases.lease_ip(net, "g", v4(8)..=v4(9)).await.unwrap(),
        v4(8)
    );
    assert_eq!(leases.lease_ip(net, "h", wider).await.unwrap(), v4(7));

    // Malformed requests.
    for (n, vm, r) in [
        (net, "x", v4(5)..=v4(4)),
        ("", "x", range.clone()),
        (net, "", range),
    ] {
        assert!(matches!(
            leases.lease_ip(n, vm, r).await,
            Err(CoreError::InvalidInput(_))
        ));
    }
}

async fn ip_leases_stay_distinct_under_concurrent_leasers(s: Subject) {
    // Two handles, as two worker processes on one database would have.
    let handles = [s.db.leases(), s.another_handle().await.leases()];
    let net = "worker-1/aebr0";
    let range = v4(2)..=v4(254);
    let lease_all = |ids: Vec<String>| {
        let tasks: Vec<_> = ids
            .into_iter()
            .enumerate()
            .map(|(i, vm)| {
                let leases = handles[i % 2].clone();
                let range = range.clone();
                tokio::spawn(async move {
                    let ip = leases.lease_ip(net, &vm, range).await.unwrap();
                    (vm, ip)
                })
            })
            .collect();
        async move {
            let mut got = Vec::new();
            for t in tasks {
                got.push(t.await.unwrap());
            }
            got
        }
    };

    let first: Vec<String> = (0..16).map(|i| format!("vm-{i}")).collect();
    let got = lease_all(first.clone()).await;
    let ips: BTreeSet<_> = got.iter().map(|(_, ip)| *ip).collect();
    assert_eq!(ips.len(), 16, "two VMs share an address: {got:?}");
    assert_eq!(ips, (2..18).map(v4).collect::<BTreeSet<_>>());

    // The same VMs asking again at once (some twice) get what they hold.
    let mut again = first.clone();
    again.extend(first[..4].iter().cloned());
    let held: std::collections::BTreeMap<_, _> = got.into_iter().collect();
    for (vm, ip) in lease_all(again).await {
        assert_eq!(held[&vm], ip, "{vm} moved");
    }

    // Release every other one; new VMs get exactly the freed, lowest addresses.
    let mut freed = BTreeSet::new();
    for vm in first.iter().step_by(2) {
        assert!(handles[1].release_ip(net, vm).await.unwrap());
        freed.insert(held[vm]);
    }
    let got = lease_all((0..8).map(|i| format!("new-{i}")).collect()).await;
    let ips: BTreeSet<_> = got.iter().map(|(_, ip)| *ip).collect();
    assert_eq!(ips, freed);
    let listed = handles[0].list_leases(net).await.unwrap();
    assert_eq!(listed.len(), 16);
    assert_eq!(
        listed.iter().map(|l| l.ip).collect::<BTreeSet<_>>().len(),
        16
    );
}
