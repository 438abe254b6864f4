//! PostgreSQL and Redis over TLS when their URLs ask (`sslmode=…`, `rediss://`):
//! real servers with TLS on and certificates of a CA each test makes. The
//! platform's own clients (the PostgreSQL store, the Redis queue, the event bus)
//! verify the server, and fail — never fall back to clear text — for a server
//! another CA signed, for a URL that asks TLS of a server without it, and, where
//! Redis asks for one, without a client certificate. (The distributed tests run
//! whole clusters over both: `cli/tests/distributed.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use aetherium_core::bus_redis::{RedisBusOptions, RedisEventBus};
use aetherium_core::queue::{RedisQueue, RedisQueueOptions, RedisTls, TaskQueue};
use aetherium_core::services::new_task;
use aetherium_core::store::{PgStore, SqliteStore, Store, TaskRecords};
use aetherium_testkit::postgres::TempPostgres;
use aetherium_testkit::redis::{RedisTlsFiles, TempRedis};
use aetherium_testkit::tls::TestPki;
use aetherium_types::{TaskStatus, TaskType};

fn verify_full(pg: &TempPostgres, ca: &std::path::Path) -> String {
    format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        pg.url(),
        ca.display()
    )
}

#[tokio::test]
async fn postgres_speaks_tls_when_the_url_asks_and_verifies_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::make(&dir.path().join("pki")).unwrap();
    let stranger = TestPki::make(&dir.path().join("stranger")).unwrap();
    let mut pg = tokio::task::spawn_blocking(TempPostgres::start)
        .await
        .unwrap()
        .unwrap();

    // Asking TLS of a server without it is an error, not a connection in clear.
    let refused = PgStore::connect(&format!("{}?sslmode=require", pg.url()))
        .await
        .err()
        .expect("sslmode=require of a server without TLS");
    assert!(
        refused
            .to_string()
            .contains("cannot connect to the database"),
        "{refused}"
    );

    let (cert, key) = (
        std::fs::read_to_string(&pki.server_cert).unwrap(),
        std::fs::read_to_string(&pki.server_key).unwrap(),
    );
    let mut pg = tokio::task::spawn_blocking(move || {
        pg.enable_tls(&cert, &key).unwrap();
        pg
    })
    .await
    .unwrap();

    let store = PgStore::connect(&verify_full(&pg, &pki.ca)).await.unwrap();
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert!(ssl, "the store's connection is not TLS");
    // The store works over it (its migrations ran; it reads and writes).
    let task = new_task(TaskType::VmCreate, serde_json::json!({}), None);
    store.insert_task(&task).await.unwrap();
    assert_eq!(
        store.get_task(&task.id).await.unwrap().unwrap().status,
        TaskStatus::Pending
    );
    drop(store);

    // A server whose certificate another CA signed is refused.
    let refused = PgStore::connect(&verify_full(&pg, &stranger.ca))
        .await
        .err()
        .expect("a server certificate of another CA");
    assert!(
        refused
            .to_string()
            .contains("cannot connect to the database"),
        "{refused}"
    );
    tokio::task::spawn_blocking(move || pg.stop().unwrap())
        .await
        .unwrap();
}

async fn sqlite_records(dir: &tempfile::TempDir) -> Arc<SqliteStore> {
    let url = format!("sqlite://{}", dir.path().join("db.sqlite").display());
    Arc::new(SqliteStore::connect(&url).await.unwrap())
}

/// Whether a queue made with `tls` for `url` gets an answer from Redis (an error
/// at connect or at the first command both count as none).
async fn queue_answers(url: &str, tls: RedisTls, records: Arc<SqliteStore>) -> Result<(), String> {
    let options = RedisQueueOptions {
        tls,
        response_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let records: Arc<dyn TaskRecords> = records;
    let queue = RedisQueue::connect(url, records, options)
        .await
        .map_err(|e| e.to_string())?;
    queue.stats().await.map(|_| ()).map_err(|e| e.to_string())
}

#[tokio::test]
async fn redis_speaks_tls_for_rediss_urls_and_verifies_both_ends() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::make(&dir.path().join("pki")).unwrap();
    let stranger = TestPki::make(&dir.path().join("stranger")).unwrap();
    let files = RedisTlsFiles {
        cert: pki.server_cert.clone(),
        key: pki.server_key.clone(),
        ca: pki.ca.clone(),
        require_client_cert: true,
    };
    let redis = tokio::task::spawn_blocking(move || TempRedis::start_tls(files, false))
        .await
        .unwrap()
        .unwrap();
    let url = redis.tls_url().unwrap();
    let records = sqlite_records(&dir).await;
    let full = RedisTls {
        ca: Some(pki.ca.clone()),
        cert: Some(pki.client_cert.clone()),
        key: Some(pki.client_key.clone()),
    };

    // The queue works over TLS: a task goes in and is leased back.
    let queue = RedisQueue::connect(
        &url,
        records.clone(),
        RedisQueueOptions {
            tls: full.clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let task = new_task(TaskType::VmCreate, serde_json::json!({}), None);
    queue.enqueue(&task).await.unwrap();
    let leased = queue
        .lease("w1", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(leased.id, task.id);

    // So does the event bus.
    let bus = RedisEventBus::start(
        records.clone(),
        &url,
        RedisBusOptions {
            tls: full.clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(bus.wait_connected(Duration::from_secs(10)).await);

    // Without the client certificate the server asks for: no answer.
    let no_client_cert = RedisTls {
        ca: Some(pki.ca.clone()),
        ..Default::default()
    };
    queue_answers(&url, no_client_cert, records.clone())
        .await
        .expect_err("a client without a certificate");
    // A server another CA signed (or only the system's roots to trust): no answer.
    let other_ca = RedisTls {
        ca: Some(stranger.ca.clone()),
        ..full.clone()
    };
    queue_answers(&url, other_ca.clone(), records.clone())
        .await
        .expect_err("a server certificate of another CA");
    queue_answers(
        &url,
        RedisTls {
            ca: None,
            ..full.clone()
        },
        records.clone(),
    )
    .await
    .expect_err("a server certificate the system's roots do not know");
    let bus = RedisEventBus::start(
        records.clone(),
        &url,
        RedisBusOptions {
            tls: other_ca,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(!bus.wait_connected(Duration::from_secs(2)).await);
    // TLS files with a plain URL are a clear error, before any connection.
    let plain = queue_answers(&redis.url(), full.clone(), records.clone())
        .await
        .expect_err("TLS files with redis://");
    assert!(plain.contains("not rediss://"), "{plain}");
    // A certificate without its key is refused as such.
    let half = queue_answers(&url, RedisTls { key: None, ..full }, records)
        .await
        .expect_err("a certificate without its key");
    assert!(half.contains("needs its key"), "{half}");
}
