//! The event bus of distributed mode: every process stores its events in the shared
//! event log (which numbers them) and publishes them on one Redis pub/sub channel;
//! every process hands every stored event to its subscribers **once, in `seq`
//! order**, whichever process published it.
//!
//! Redis pub/sub is fire-and-forget: a message published while a subscriber is
//! disconnected (or while Redis restarts) is gone. The event log is the record, so
//! a sequencer per process fills every gap from it:
//!
//! - events arrive from Redis (other processes' and this one's) and, without the
//!   round trip, from this process's own writer; duplicates are dropped by `seq`;
//! - an event whose predecessors have not arrived waits (at most
//!   [`RedisBusOptions::gap_grace`]); then the log is read after the last delivered
//!   `seq`, which brings the missing ones;
//! - a `seq` the log does not hold after [`RedisBusOptions::gap_give_up`] is skipped
//!   (a rolled-back insert leaves such a hole in a PostgreSQL sequence);
//! - after a reconnect, and every [`RedisBusOptions::poll_interval`] anyway, the log
//!   is read after the last delivered `seq`: events whose publication never reached
//!   Redis are delivered too.
//!
//! Events that could not be stored (no `seq`) are delivered at once, live only.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aetherium_common::EventBus;
use aetherium_types::{Event, EventFilter};
use futures::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::error::CoreResult;
use crate::store::EventLog;

/// Most events stored in one transaction.
const EVENT_BATCH: usize = 256;
/// Most events read from the log in one catch-up query.
const CATCH_UP_BATCH: u32 = 1000;
/// Live subscribers that fall this far behind lose events (and re-read the log).
const LIVE_CAPACITY: usize = 4096;

#[derive(Debug, Clone)]
pub struct RedisBusOptions {
    /// The pub/sub channel every process of one deployment shares.
    pub channel: String,
    /// How long an event waits for its predecessors before the log is read.
    pub gap_grace: Duration,
    /// How long a `seq` missing from the log too is waited for before it is skipped.
    pub gap_give_up: Duration,
    /// How often the log is read anyway (events whose publication was lost).
    pub poll_interval: Duration,
    /// Wait between reconnection attempts to Redis (doubling up to 5 s).
    pub reconnect_delay: Duration,
    /// TLS files for a `rediss://` URL.
    pub tls: crate::RedisTls,
}

impl Default for RedisBusOptions {
    fn default() -> Self {
        RedisBusOptions {
            channel: "aetherium:events".into(),
            gap_grace: Duration::from_millis(250),
            gap_give_up: Duration::from_secs(3),
            poll_interval: Duration::from_secs(2),
            reconnect_delay: Duration::from_millis(100),
            tls: Default::default(),
        }
    }
}

enum Command {
    Publish(Event),
    Flush(oneshot::Sender<()>),
}

/// What the sequencer is fed.
enum Input {
    /// An event, from Redis or from this process's writer.
    Event(Event),
    /// (Re)subscribed to Redis: what was published meanwhile is only in the log.
    Resubscribed,
}

/// An [`EventBus`] on Redis pub/sub, backed by an [`EventLog`] (see the module
/// docs). Publishing never blocks; [`RedisEventBus::flush`] waits until every event
/// published so far is stored and sent to Redis.
pub struct RedisEventBus {
    commands: mpsc::UnboundedSender<Command>,
    live: broadcast::Sender<Event>,
    stop: watch::Sender<bool>,
    connected: watch::Receiver<bool>,
}

impl RedisEventBus {
    /// Starts the writer, the Redis subscriber and the sequencer on the current
    /// runtime. Delivery starts after the newest event stored now. Redis need not be
    /// up yet: the bus connects (and reconnects) on its own.
    pub async fn start(
        log: Arc<dyn EventLog>,
        redis_url: &str,
        options: RedisBusOptions,
    ) -> CoreResult<Arc<RedisEventBus>> {
        let client = crate::redis_client(redis_url, &options.tls)?;
        let start_after = log.latest_event_seq().await?;
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (live, _) = broadcast::channel(LIVE_CAPACITY);
        let (stop, stop_rx) = watch::channel(false);
        let (connected_tx, connected) = watch::channel(false);
        let (inputs, inputs_rx) = mpsc::unbounded_channel();
        tokio::spawn(write_events(
            log.clone(),
            client.clone(),
            options.channel.clone(),
            commands_rx,
            inputs.clone(),
        ));
        tokio::spawn(subscribe_loop(
            client,
            options.clone(),
            inputs,
            connected_tx,
            stop_rx.clone(),
        ));
        tokio::spawn(
            Sequencer {
                log,
                live: live.clone(),
                last: start_after,
                waiting: BTreeMap::new(),
                gap_since: None,
                next_gap_check: None,
                options,
            }
            .run(inputs_rx, stop_rx),
        );
        Ok(Arc::new(RedisEventBus {
            commands,
            live,
            stop,
            connected,
        }))
    }

    /// Waits until every event published so far is stored and sent to Redis (or
    /// found Redis down).
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Whether the bus is subscribed to Redis right now.
    pub fn is_connected(&self) -> bool {
        *self.connected.borrow()
    }

    /// Waits (at most `timeout`) until the bus is subscribed; `false` if it is not.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let mut connected = self.connected.clone();
        tokio::time::timeout(timeout, connected.wait_for(|c| *c))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Stops the subscriber and the sequencer (the writer stops with the bus).
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for RedisEventBus {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

impl EventBus for RedisEventBus {
    fn publish(&self, event: Event) {
        let _ = self.commands.send(Command::Publish(event));
    }

    fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.live.subscribe()
    }
}

/// Stores events in batches (assigning their `seq`), hands them to this process's
/// sequencer and publishes them on Redis, in order.
async fn write_events(
    log: Arc<dyn EventLog>,
    client: redis::Client,
    channel: String,
    mut rx: mpsc::UnboundedReceiver<Command>,
    local: mpsc::UnboundedSender<Input>,
) {
    let mut conn: Option<ConnectionManager> = None;
    let mut failures = 0u64;
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
                Err(e) => tracing::warn!(error = %e, count = events.len(), "cannot store events"),
            }
            for e in &events {
                let _ = local.send(Input::Event(e.clone()));
            }
            // Events without a seq are live only: the other processes would have no
            // way to order them, so they stay here.
            let stored: Vec<&Event> = events.iter().filter(|e| e.seq.is_some()).collect();
            if !stored.is_empty() {
                match publish_all(&client, &mut conn, &channel, &stored).await {
                    Ok(()) => failures = 0,
                    Err(e) => {
                        // The others find them in the log (gap or poll).
                        conn = None;
                        failures += 1;
                        if failures == 1 || failures.is_multiple_of(100) {
                            tracing::warn!(error = %e, count = stored.len(), "cannot publish events on Redis; other processes read them from the event log");
                        }
                    }
                }
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

async fn publish_all(
    client: &redis::Client,
    conn: &mut Option<ConnectionManager>,
    channel: &str,
    events: &[&Event],
) -> redis::RedisResult<()> {
    if conn.is_none() {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1);
        *conn = Some(ConnectionManager::new_with_config(client.clone(), config).await?);
    }
    let Some(c) = conn.as_mut() else {
        return Ok(());
    };
    let mut pipe = redis::pipe();
    for e in events {
        let text = serde_json::to_string(e).unwrap_or_default();
        pipe.publish(channel, text).ignore();
    }
    pipe.query_async::<()>(c).await
}

/// Subscribes to the channel and feeds the sequencer; reconnects with backoff, and
/// says so (`Resubscribed`) so that the sequencer reads what it missed.
async fn subscribe_loop(
    client: redis::Client,
    options: RedisBusOptions,
    inputs: mpsc::UnboundedSender<Input>,
    connected: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let mut delay = options.reconnect_delay;
    let mut failures = 0u64;
    loop {
        if *stop.borrow() {
            return;
        }
        let subscribed = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&options.channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let attempt = tokio::select! {
            r = tokio::time::timeout(Duration::from_secs(2), subscribed) => r,
            _ = stop.changed() => return,
        };
        match attempt {
            Ok(Ok(pubsub)) => {
                if failures > 0 {
                    tracing::info!(channel = %options.channel, "event bus reconnected to Redis");
                }
                failures = 0;
                delay = options.reconnect_delay;
                let _ = connected.send(true);
                let _ = inputs.send(Input::Resubscribed);
                let mut messages = pubsub.into_on_message();
                loop {
                    let msg = tokio::select! {
                        m = messages.next() => m,
                        _ = stop.changed() => return,
                    };
                    let Some(msg) = msg else { break };
                    match serde_json::from_slice::<Event>(msg.get_payload_bytes()) {
                        Ok(event) => {
                            if inputs.send(Input::Event(event)).is_err() {
                                return;
                            }
                        }
                        Err(e) => tracing::debug!(error = %e, "ignoring a malformed event message"),
                    }
                }
                let _ = connected.send(false);
                tracing::warn!(channel = %options.channel, "event bus lost its Redis subscription; reconnecting");
            }
            Ok(Err(e)) => {
                failures += 1;
                if failures == 1 || failures.is_multiple_of(100) {
                    tracing::warn!(error = %e, "event bus cannot subscribe on Redis; retrying");
                }
            }
            Err(_) => {
                failures += 1;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => return,
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Puts events in `seq` order, once, filling gaps from the log.
struct Sequencer {
    log: Arc<dyn EventLog>,
    live: broadcast::Sender<Event>,
    /// The last `seq` delivered (or skipped).
    last: i64,
    /// Events that arrived before their predecessors, by `seq`.
    waiting: BTreeMap<i64, Event>,
    /// Since when the oldest gap has been waited for.
    gap_since: Option<Instant>,
    /// When to read the log for the gap next.
    next_gap_check: Option<Instant>,
    options: RedisBusOptions,
}

impl Sequencer {
    async fn run(
        mut self,
        mut inputs: mpsc::UnboundedReceiver<Input>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut poll = tokio::time::interval(self.options.poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let gap_check = self.next_gap_check;
            tokio::select! {
                input = inputs.recv() => match input {
                    Some(Input::Event(e)) => self.accept(e),
                    Some(Input::Resubscribed) => self.catch_up().await,
                    None => return,
                },
                _ = poll.tick() => self.catch_up().await,
                _ = sleep_until_opt(gap_check) => self.on_gap().await,
                _ = stop.changed() => return,
            }
        }
    }

    fn deliver(&self, event: Event) {
        let _ = self.live.send(event);
    }

    /// Takes one event: delivers it (and whatever waited for it) when it is next.
    fn accept(&mut self, event: Event) {
        let Some(seq) = event.seq else {
            self.deliver(event);
            return;
        };
        if seq <= self.last || self.waiting.contains_key(&seq) {
            return;
        }
        self.waiting.insert(seq, event);
        self.release();
    }

    /// Delivers the waiting events that follow `last` without a gap.
    fn release(&mut self) {
        while let Some(event) = self.waiting.remove(&(self.last + 1)) {
            self.last += 1;
            self.deliver(event);
        }
        if self.waiting.is_empty() {
            self.gap_since = None;
            self.next_gap_check = None;
        } else if self.gap_since.is_none() {
            let now = Instant::now();
            self.gap_since = Some(now);
            self.next_gap_check = Some(now + self.options.gap_grace);
        }
    }

    /// Reads the log after `last` (until it has nothing more, or what waits is
    /// reached) and takes what it finds.
    async fn catch_up(&mut self) {
        loop {
            let events = match self
                .log
                .read_events(self.last, &EventFilter::default(), CATCH_UP_BATCH)
                .await
            {
                Ok(events) => events,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the event log to fill a gap");
                    return;
                }
            };
            let full = events.len() as u32 >= CATCH_UP_BATCH;
            for e in events {
                self.accept(e);
            }
            if !full {
                break;
            }
        }
        self.skip_stale_gap();
    }

    async fn on_gap(&mut self) {
        self.catch_up().await;
        // Still a gap: look again a grace later (until it is given up).
        if self.gap_since.is_some() {
            self.next_gap_check = Some(Instant::now() + self.options.gap_grace);
        }
    }

    /// A `seq` neither Redis nor the log brought within `gap_give_up` does not exist
    /// (or is too late): skip to the next event that waits.
    fn skip_stale_gap(&mut self) {
        let Some(since) = self.gap_since else { return };
        if since.elapsed() < self.options.gap_give_up {
            return;
        }
        if let Some((&first, _)) = self.waiting.iter().next() {
            tracing::debug!(
                from = self.last + 1,
                to = first - 1,
                "skipping event seqs the log does not hold"
            );
            self.last = first - 1;
            self.gap_since = None;
            self.release();
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
