//! One behaviour for every `EventBus`: the in-process bus (`libs/common`), embedded
//! mode's persistent bus (`feed::PersistentEventBus`, numbered through the event log)
//! and distributed mode's Redis bus (`bus_redis::RedisEventBus`, a real Redis from the
//! test kit). Each case runs on all three; what only the stored buses promise (a
//! `seq` per event, the events in the log) is checked where it is promised.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use aetherium_common::EventBus;
use aetherium_common::events::InProcessEventBus;
use aetherium_core::bus_redis::{RedisBusOptions, RedisEventBus};
use aetherium_core::feed::PersistentEventBus;
use aetherium_core::store::{EventLog, SqliteStore};
use aetherium_testkit::redis::TempRedis;
use aetherium_types::{Event, EventFilter, EventType};
use tokio::sync::broadcast;

#[derive(Debug, Clone, Copy)]
enum Kind {
    InProcess,
    Persistent,
    Redis,
}

const KINDS: [Kind; 3] = [Kind::InProcess, Kind::Persistent, Kind::Redis];

/// A bus under test and what it needs to live (its log, its Redis).
struct Bus {
    bus: Arc<dyn EventBus>,
    /// The stored buses' event log.
    log: Option<Arc<SqliteStore>>,
    _dir: tempfile::TempDir,
    _redis: Option<TempRedis>,
}

impl Bus {
    async fn start(kind: Kind) -> Bus {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("db.sqlite").display());
        let store = Arc::new(SqliteStore::connect(&url).await.unwrap());
        let (bus, log, redis): (Arc<dyn EventBus>, _, _) = match kind {
            Kind::InProcess => (Arc::new(InProcessEventBus::new(1024)), None, None),
            Kind::Persistent => (
                PersistentEventBus::start(store.clone() as Arc<dyn EventLog>),
                Some(store),
                None,
            ),
            Kind::Redis => {
                let redis = TempRedis::start().unwrap();
                let bus = RedisEventBus::start(
                    store.clone() as Arc<dyn EventLog>,
                    &redis.url(),
                    RedisBusOptions {
                        gap_grace: Duration::from_millis(100),
                        gap_give_up: Duration::from_secs(2),
                        poll_interval: Duration::from_millis(500),
                        reconnect_delay: Duration::from_millis(50),
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
                assert!(bus.wait_connected(Duration::from_secs(10)).await);
                (bus as Arc<dyn EventBus>, Some(store), Some(redis))
            }
        };
        Bus {
            bus,
            log,
            _dir: dir,
            _redis: redis,
        }
    }
}

fn event(n: usize, tag: &str) -> Event {
    Event::new(
        EventType::VmStarted,
        format!("{tag}-{n}"),
        serde_json::json!({"n": n}),
    )
}

/// Receives `count` events (at most 10 s), in the order they arrive.
async fn receive(rx: &mut broadcast::Receiver<Event>, count: usize) -> Vec<Event> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while got.len() < count {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Ok(e)) => got.push(e),
            Ok(Err(e)) => panic!("subscriber: {e}"),
            Err(_) => break,
        }
    }
    got
}

fn ids(events: &[Event]) -> Vec<String> {
    events.iter().map(|e| e.resource_id.clone()).collect()
}

#[tokio::test]
async fn every_subscriber_gets_every_event_once_in_publish_order() {
    for kind in KINDS {
        let bus = Bus::start(kind).await;
        let mut first = bus.bus.subscribe();
        let mut second = bus.bus.subscribe();
        let sent: Vec<Event> = (0..50).map(|n| event(n, "e")).collect();
        for e in &sent {
            bus.bus.publish(e.clone());
        }
        let want = ids(&sent);
        assert_eq!(ids(&receive(&mut first, 50).await), want, "{kind:?}: first");
        assert_eq!(
            ids(&receive(&mut second, 50).await),
            want,
            "{kind:?}: second"
        );
        // Nothing more: each event once.
        let extra = tokio::time::timeout(Duration::from_millis(300), first.recv()).await;
        assert!(extra.is_err(), "{kind:?}: a duplicate arrived: {extra:?}");
    }
}

#[tokio::test]
async fn a_subscriber_sees_only_what_is_published_after_it_subscribed() {
    for kind in KINDS {
        let bus = Bus::start(kind).await;
        // Nobody listens: not an error, and nothing is kept for later subscribers.
        bus.bus.publish(event(0, "before"));
        if let Some(log) = &bus.log {
            // Stored buses store before they broadcast: wait until it is in the log.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while log.latest_event_seq().await.unwrap() == 0 {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{kind:?}: never stored"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        } else {
            tokio::task::yield_now().await;
        }
        let mut rx = bus.bus.subscribe();
        bus.bus.publish(event(1, "after"));
        let got = receive(&mut rx, 1).await;
        assert_eq!(ids(&got), vec!["after-1".to_string()], "{kind:?}");
    }
}

#[tokio::test]
async fn stored_buses_number_every_event_and_keep_it_in_the_log() {
    for kind in KINDS {
        let bus = Bus::start(kind).await;
        let mut rx = bus.bus.subscribe();
        let sent: Vec<Event> = (0..20).map(|n| event(n, "s")).collect();
        for e in &sent {
            bus.bus.publish(e.clone());
        }
        let got = receive(&mut rx, 20).await;
        assert_eq!(ids(&got), ids(&sent), "{kind:?}");
        let Some(log) = &bus.log else {
            // The in-process bus stores nothing and numbers nothing.
            assert!(got.iter().all(|e| e.seq.is_none()), "{kind:?}");
            continue;
        };
        let seqs: Vec<i64> = got.iter().map(|e| e.seq.expect("a stored event")).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "{kind:?}: not in seq order: {seqs:?}"
        );
        let stored = log
            .read_events(0, &EventFilter::default(), 100)
            .await
            .unwrap();
        assert_eq!(ids(&stored), ids(&sent), "{kind:?}: the log");
        assert_eq!(
            stored.iter().map(|e| e.seq).collect::<Vec<_>>(),
            got.iter().map(|e| e.seq).collect::<Vec<_>>(),
            "{kind:?}: the log's numbers are the ones delivered"
        );
    }
}
