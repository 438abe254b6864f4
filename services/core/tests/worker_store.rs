//! Worker rows in every store (SQLite and PostgreSQL): heartbeats keep an
//! administrator's drain, status changes are compare-and-sets, the offline sweep
//! hands each stale worker to one caller, and usage counts the VMs that hold
//! resources.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use aetherium_core::store::workers::DRAINED_BY_REQUEST;
use aetherium_core::store::{Database, Store};
use aetherium_testkit::postgres::TempPostgres;
use aetherium_types::{Orchestrator, Vm, VmStatus, Worker, WorkerStatus, new_id};
use chrono::Utc;

fn worker(id: &str, status: WorkerStatus, age: Duration) -> Worker {
    let seen = Utc::now() - chrono::Duration::from_std(age).unwrap();
    Worker {
        id: id.into(),
        hostname: "h".into(),
        address: String::new(),
        zone: "z".into(),
        status,
        capabilities: vec!["docker".into()],
        labels: Default::default(),
        cpu_cores: 4,
        memory_mb: 4096,
        max_vms: 10,
        vm_count: 0,
        status_message: None,
        started_at: seen,
        last_seen: seen,
    }
}

fn vm(worker_id: &str, status: VmStatus, vcpus: u32, memory_mb: u64) -> Vm {
    let id = new_id();
    Vm {
        name: format!("vm-{}", &id[..8]),
        id,
        status,
        orchestrator: Orchestrator::Docker,
        image: "i".into(),
        vcpu_count: vcpus,
        memory_mb,
        disk_mb: None,
        created_by: None,
        network_policy: None,
        placement: None,
        kernel_path: None,
        rootfs_path: None,
        socket_path: None,
        worker_id: Some(worker_id.into()),
        error: None,
        created_at: Utc::now(),
        started_at: None,
        stopped_at: None,
        expires_at: None,
        metadata: Default::default(),
    }
}

async fn suite(store: Arc<dyn Store>) {
    // A heartbeat registers; an administrator's drain outlives heartbeats.
    let w = worker("w1", WorkerStatus::Active, Duration::ZERO);
    let stored = store.heartbeat_worker(&w).await.unwrap();
    assert_eq!(stored.status, WorkerStatus::Active);
    let drained = store
        .set_worker_status(
            "w1",
            &[WorkerStatus::Active],
            WorkerStatus::Draining,
            Some(DRAINED_BY_REQUEST),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(drained.status, WorkerStatus::Draining);
    for reported in [WorkerStatus::Active, WorkerStatus::Unhealthy] {
        let stored = store
            .heartbeat_worker(&worker("w1", reported, Duration::ZERO))
            .await
            .unwrap();
        assert_eq!(stored.status, WorkerStatus::Draining, "{reported:?}");
        assert_eq!(stored.status_message.as_deref(), Some(DRAINED_BY_REQUEST));
    }
    // The worker's own shutdown (draining, then offline) is not kept.
    let mut own = worker("w1", WorkerStatus::Offline, Duration::ZERO);
    own.status_message = Some("stopped".into());
    assert_eq!(
        store.heartbeat_worker(&own).await.unwrap().status,
        WorkerStatus::Offline
    );
    assert_eq!(
        store
            .heartbeat_worker(&worker("w1", WorkerStatus::Active, Duration::ZERO))
            .await
            .unwrap()
            .status,
        WorkerStatus::Active
    );

    // Compare-and-set: no change from a status not listed; unknown worker: None.
    let same = store
        .set_worker_status("w1", &[WorkerStatus::Draining], WorkerStatus::Active, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(same.status, WorkerStatus::Active);
    assert!(
        store
            .set_worker_status(
                "nope",
                &[WorkerStatus::Active],
                WorkerStatus::Draining,
                None
            )
            .await
            .unwrap()
            .is_none()
    );

    // The sweep: stale workers go offline once; fresh ones stay.
    store
        .upsert_worker(&worker(
            "stale",
            WorkerStatus::Active,
            Duration::from_secs(600),
        ))
        .await
        .unwrap();
    let cutoff = Utc::now() - chrono::Duration::seconds(60);
    let first = store
        .mark_stale_workers_offline(cutoff, "gone")
        .await
        .unwrap();
    assert_eq!(
        first.iter().map(|w| w.id.as_str()).collect::<Vec<_>>(),
        ["stale"]
    );
    assert_eq!(first[0].status, WorkerStatus::Offline);
    assert_eq!(first[0].status_message.as_deref(), Some("gone"));
    assert!(
        store
            .mark_stale_workers_offline(cutoff, "gone")
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.get_worker("w1").await.unwrap().unwrap().status,
        WorkerStatus::Active
    );

    // Usage: only VMs that hold resources count.
    for (status, vcpus, memory) in [
        (VmStatus::Running, 2, 512),
        (VmStatus::Created, 1, 256),
        (VmStatus::Stopping, 1, 128),
        (VmStatus::Failed, 8, 8192),
        (VmStatus::Stopped, 8, 8192),
    ] {
        store
            .insert_vm(&vm("w1", status, vcpus, memory))
            .await
            .unwrap();
    }
    store
        .insert_vm(&vm("stale", VmStatus::Running, 1, 128))
        .await
        .unwrap();
    let usage = store.worker_usage().await.unwrap();
    let w1 = usage.iter().find(|(id, _)| id == "w1").unwrap().1;
    assert_eq!((w1.vms, w1.vcpus, w1.memory_mb), (3, 4, 896));
    let stale = usage.iter().find(|(id, _)| id == "stale").unwrap().1;
    assert_eq!((stale.vms, stale.vcpus, stale.memory_mb), (1, 1, 128));
}

#[tokio::test]
async fn sqlite_worker_rows() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("w.db").display());
    let db = aetherium_core::store::connect(&url).await.unwrap();
    assert!(matches!(db, Database::Sqlite(_)));
    suite(db.store()).await;
}

#[tokio::test]
async fn postgres_worker_rows() {
    let pg = tokio::task::spawn_blocking(TempPostgres::start)
        .await
        .unwrap()
        .unwrap();
    let db = aetherium_core::store::connect(&pg.url()).await.unwrap();
    assert!(matches!(db, Database::Postgres(_)));
    suite(db.store()).await;
}
