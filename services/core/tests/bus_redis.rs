//! The Redis event bus: two bus instances (two "processes") on one Redis and one
//! shared event log. Every stored event reaches every subscriber once, in `seq`
//! order, whichever instance published it — also across a Redis restart, when the
//! gap is filled from the log.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use aetherium_common::EventBus;
use aetherium_core::bus_redis::{RedisBusOptions, RedisEventBus};
use aetherium_core::store::{EventLog, SqliteStore};
use aetherium_testkit::redis::TempRedis;
use aetherium_types::{Event, EventType};
use tokio::sync::broadcast;

fn options() -> RedisBusOptions {
    RedisBusOptions {
        gap_grace: Duration::from_millis(100),
        gap_give_up: Duration::from_secs(2),
        poll_interval: Duration::from_millis(500),
        reconnect_delay: Duration::from_millis(50),
        ..Default::default()
    }
}

async fn shared_log() -> (tempfile::TempDir, Arc<SqliteStore>) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("db.sqlite").display());
    let store = Arc::new(SqliteStore::connect(&url).await.unwrap());
    (dir, store)
}

fn event(n: usize, from: &str) -> Event {
    Event::new(
        EventType::VmStarted,
        format!("{from}-{n}"),
        serde_json::json!({"n": n, "from": from}),
    )
}

/// Receives `count` events (at most `secs`), in the order they arrive.
async fn receive(rx: &mut broadcast::Receiver<Event>, count: usize, secs: u64) -> Vec<Event> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while got.len() < count {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Ok(e)) => got.push(e),
            Ok(Err(e)) => panic!("subscriber: {e}"),
            Err(_) => break,
        }
    }
    got
}

fn assert_in_order_once(got: &[Event]) {
    let seqs: Vec<i64> = got.iter().map(|e| e.seq.expect("a stored event")).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "not in seq order or duplicated: {seqs:?}"
    );
}

#[tokio::test]
async fn every_event_reaches_every_process_once_in_seq_order() {
    let redis = TempRedis::start().unwrap();
    let (_dir, store) = shared_log().await;
    let a = RedisEventBus::start(store.clone(), &redis.url(), options())
        .await
        .unwrap();
    let b = RedisEventBus::start(store.clone(), &redis.url(), options())
        .await
        .unwrap();
    assert!(a.wait_connected(Duration::from_secs(10)).await);
    assert!(b.wait_connected(Duration::from_secs(10)).await);
    let mut on_a = a.subscribe();
    let mut on_b = b.subscribe();

    // Both publish, interleaved.
    for n in 0..20 {
        a.publish(event(n, "a"));
        b.publish(event(n, "b"));
    }
    let got_a = receive(&mut on_a, 40, 10).await;
    let got_b = receive(&mut on_b, 40, 10).await;
    assert_eq!(got_a.len(), 40);
    assert_eq!(got_b.len(), 40);
    assert_in_order_once(&got_a);
    assert_in_order_once(&got_b);
    // The same events, in the same order, everywhere; and as the log has them.
    let ids = |v: &[Event]| v.iter().map(|e| e.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&got_a), ids(&got_b));
    let stored = store
        .read_events(0, &Default::default(), 1000)
        .await
        .unwrap();
    assert_eq!(ids(&stored), ids(&got_a));
    // Nothing more comes (no duplicates later).
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(on_a.try_recv().is_err());
    assert!(on_b.try_recv().is_err());
}

#[tokio::test]
async fn a_redis_restart_is_survived_and_the_gap_filled_from_the_log() {
    let mut redis = TempRedis::start().unwrap();
    let (_dir, store) = shared_log().await;
    let a = RedisEventBus::start(store.clone(), &redis.url(), options())
        .await
        .unwrap();
    let b = RedisEventBus::start(store.clone(), &redis.url(), options())
        .await
        .unwrap();
    assert!(a.wait_connected(Duration::from_secs(10)).await);
    assert!(b.wait_connected(Duration::from_secs(10)).await);
    let mut on_b = b.subscribe();

    a.publish(event(0, "before"));
    let got = receive(&mut on_b, 1, 10).await;
    assert_eq!(got.len(), 1);

    // Redis goes away; A keeps publishing (stored, not sent).
    redis.stop();
    for n in 0..5 {
        a.publish(event(n, "during"));
    }
    a.flush().await;
    // B still gets them, from the log, in order (the poll, as Redis is down).
    let during = receive(&mut on_b, 5, 10).await;
    assert_eq!(during.len(), 5, "{during:?}");
    assert_in_order_once(&during);
    assert!(during[0].seq > got[0].seq);

    // Redis comes back: both reconnect, and live delivery resumes.
    redis.restart().unwrap();
    assert!(a.wait_connected(Duration::from_secs(15)).await);
    assert!(b.wait_connected(Duration::from_secs(15)).await);
    for n in 0..5 {
        a.publish(event(n, "after"));
    }
    let after = receive(&mut on_b, 5, 10).await;
    assert_eq!(after.len(), 5, "{after:?}");
    assert_in_order_once(&after);
    assert!(after[0].seq > during[4].seq);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(on_b.try_recv().is_err(), "an event came twice");
}

#[tokio::test]
async fn a_lost_publication_is_found_in_the_log() {
    // An event stored by a process whose publication never reached Redis (it died
    // between the two): the other processes still deliver it, in its place.
    let redis = TempRedis::start().unwrap();
    let (_dir, store) = shared_log().await;
    let b = RedisEventBus::start(store.clone(), &redis.url(), options())
        .await
        .unwrap();
    let a = RedisEventBus::start(store.clone(), &redis.url(), options())
        .await
        .unwrap();
    assert!(a.wait_connected(Duration::from_secs(10)).await);
    assert!(b.wait_connected(Duration::from_secs(10)).await);
    let mut on_b = b.subscribe();
    // Written straight to the log: no Redis message at all.
    store.append_events(&[event(0, "silent")]).await.unwrap();
    a.publish(event(1, "loud"));
    let got = receive(&mut on_b, 2, 10).await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].resource_id, "silent-0");
    assert_eq!(got[1].resource_id, "loud-1");
    assert_in_order_once(&got);
}
