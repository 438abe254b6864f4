//! Live feeds backed by the database: the persistent event bus (every event gets its
//! sequence number in the event log *before* any subscriber sees it, so a stream that
//! reconnects with the last seq it saw misses nothing and sees nothing twice), the
//! writer that stores the platform's captured log records and re-broadcasts them
//! with their ids, and the pruner that bounds both tables.

use std::sync::Arc;
use std::time::Duration;

use aetherium_common::EventBus;
use aetherium_types::Event;
use aetherium_types::logs::LogRecord;
use chrono::Utc;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::store::{EventLog, LogStore};

/// Most events stored in one transaction.
const EVENT_BATCH: usize = 256;
/// Most log records stored in one transaction.
const LOG_BATCH: usize = 500;
/// Records the capture layer may buffer for the writer before it drops them.
pub const LOG_CHANNEL_CAPACITY: usize = 8192;
/// Live subscribers that fall this far behind lose events (and re-read the log).
const LIVE_CAPACITY: usize = 4096;

enum Command {
    Publish(Event),
    Flush(oneshot::Sender<()>),
}

/// An [`EventBus`] that appends every event to an [`EventLog`] (assigning its `seq`)
/// and only then broadcasts it. Publishing never blocks: events queue for one writer
/// task, which keeps their order.
pub struct PersistentEventBus {
    commands: mpsc::UnboundedSender<Command>,
    live: broadcast::Sender<Event>,
}

impl PersistentEventBus {
    /// Starts the writer task on the current tokio runtime.
    pub fn start(log: Arc<dyn EventLog>) -> Arc<PersistentEventBus> {
        let (commands, rx) = mpsc::unbounded_channel();
        let (live, _) = broadcast::channel(LIVE_CAPACITY);
        tokio::spawn(write_events(log, rx, live.clone()));
        Arc::new(PersistentEventBus { commands, live })
    }

    /// Waits until every event published so far is stored and broadcast.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

impl EventBus for PersistentEventBus {
    fn publish(&self, event: Event) {
        let _ = self.commands.send(Command::Publish(event));
    }

    fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.live.subscribe()
    }
}

async fn write_events(
    log: Arc<dyn EventLog>,
    mut rx: mpsc::UnboundedReceiver<Command>,
    live: broadcast::Sender<Event>,
) {
    while let Some(first) = rx.recv().await {
        let mut events = Vec::new();
        let mut flushes = Vec::new();
        let mut next = Some(first);
        while let Some(command) = next.take() {
            match command {
                Command::Publish(e) => events.push(e),
                Command::Flush(done) => flushes.push(done),
            }
            if events.len() < EVENT_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !events.is_empty() {
            match log.append_events(&events).await {
                Ok(seqs) => {
                    for (e, seq) in events.iter_mut().zip(seqs) {
                        e.seq = Some(seq);
                    }
                }
                // Live subscribers (and `wait`) still get the event, without a seq.
                Err(e) => tracing::warn!(error = %e, count = events.len(), "cannot store events"),
            }
            for e in events {
                tracing::debug!(event = e.event_type.as_str(), resource = %e.resource_id, seq = ?e.seq, "event");
                // No subscribers is not an error: nobody is listening right now.
                let _ = live.send(e);
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

/// The live side of the platform's logs: stored records, with their ids, as they
/// are written.
#[derive(Clone)]
pub struct LogFeed {
    live: broadcast::Sender<LogRecord>,
}

impl Default for LogFeed {
    fn default() -> Self {
        let (live, _) = broadcast::channel(LIVE_CAPACITY);
        LogFeed { live }
    }
}

impl LogFeed {
    pub fn subscribe(&self) -> broadcast::Receiver<LogRecord> {
        self.live.subscribe()
    }
}

/// Stores the records of a capture sink ([`aetherium_common::logcapture::attach`])
/// in batches and broadcasts them on `feed`. Stops when `stop` turns true, after
/// storing what was already captured.
pub fn spawn_log_writer(
    store: Arc<dyn LogStore>,
    mut records: mpsc::Receiver<LogRecord>,
    feed: LogFeed,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut failures = 0u64;
        loop {
            let first = tokio::select! {
                r = records.recv() => match r { Some(r) => r, None => return },
                _ = stop.changed() => {
                    records.close();
                    let mut rest = Vec::new();
                    while let Ok(r) = records.try_recv() {
                        rest.push(r);
                    }
                    for chunk in rest.chunks_mut(LOG_BATCH) {
                        let _ = store.append_logs(chunk).await;
                    }
                    return;
                }
            };
            let mut batch = vec![first];
            while batch.len() < LOG_BATCH {
                match records.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            if let Err(e) = store.append_logs(&mut batch).await {
                // Not through tracing: that would feed the failure back into the log.
                failures += 1;
                if failures == 1 || failures.is_multiple_of(1000) {
                    eprintln!(
                        "aetherium: cannot store {} log records ({failures} failures so far): {e}",
                        batch.len()
                    );
                }
                continue;
            }
            for r in batch {
                let _ = feed.live.send(r);
            }
        }
    })
}

/// How much of each table to keep.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub events_max_age: Duration,
    pub events_max_rows: u64,
    pub logs_max_age: Duration,
    pub logs_max_rows: u64,
    /// How often to prune.
    pub interval: Duration,
}

/// Prunes both tables now and then every `retention.interval` until `stop`, and
/// reports log records the capture had to drop since the last round.
pub fn spawn_pruner(
    events: Arc<dyn EventLog>,
    logs: Arc<dyn LogStore>,
    retention: Retention,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(retention.interval);
        let mut dropped_before = aetherium_common::logcapture::dropped();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            let dropped = aetherium_common::logcapture::dropped();
            if dropped > dropped_before {
                tracing::warn!(
                    dropped = dropped - dropped_before,
                    "log records were dropped: the log writer fell behind"
                );
                dropped_before = dropped;
            }
            let age = |d: Duration| Utc::now() - chrono::Duration::from_std(d).unwrap_or_default();
            match events
                .prune_events(age(retention.events_max_age), retention.events_max_rows)
                .await
            {
                Ok(0) => {}
                Ok(n) => tracing::debug!(pruned = n, "pruned old events"),
                Err(e) => tracing::warn!(error = %e, "pruning events failed"),
            }
            match logs
                .prune_logs(age(retention.logs_max_age), retention.logs_max_rows)
                .await
            {
                Ok(0) => {}
                Ok(n) => tracing::debug!(pruned = n, "pruned old log records"),
                Err(e) => tracing::warn!(error = %e, "pruning log records failed"),
            }
        }
    })
}
