//! What the event and log streams share: replay from the database, then continue
//! live, with no gap and no duplicate, over SSE or a WebSocket.
//!
//! The producer subscribes to the live broadcast *first*, then reads the backlog
//! after the client's position, then forwards live items whose sequence number is
//! past the last one sent. Items are stored (and numbered) before they are
//! broadcast, so anything missing from the backlog read arrives live; anything in
//! both is recognised by its number. A subscriber that lags behind the broadcast
//! re-reads the database from its position instead of losing items.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use http::HeaderMap;
use serde::Serialize;
use tokio::sync::{broadcast, mpsc};

use crate::error::ApiError;

/// Items read from the database per backlog query.
pub const BACKLOG_PAGE: u32 = 500;
/// Keepalive comment (SSE) or ping (WebSocket) interval.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// An item with its position in its log (`None`: never stored, live only).
pub trait Sequenced: Serialize + Clone + Send + 'static {
    fn seq(&self) -> Option<i64>;
}

impl Sequenced for aetherium_types::Event {
    fn seq(&self) -> Option<i64> {
        self.seq
    }
}

impl Sequenced for aetherium_types::logs::LogRecord {
    fn seq(&self) -> Option<i64> {
        (self.id > 0).then_some(self.id)
    }
}

/// Whether the request asks for a WebSocket (`Upgrade: websocket`).
pub fn wants_websocket(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// The resume position: `?after=` wins over the `Last-Event-ID` header (which
/// browsers' EventSource sends on reconnect).
pub fn resume_position(after: Option<&str>, headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let (name, raw) = match after {
        Some(a) => ("after", Some(a.to_string())),
        None => (
            "Last-Event-ID",
            headers
                .get("last-event-id")
                .map(|v| v.to_str().unwrap_or("?").to_string()),
        ),
    };
    match raw.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(text) => match text.parse::<i64>() {
            Ok(n) if n >= 0 => Ok(Some(n)),
            _ => Err(ApiError::bad_request(format!(
                "{name} {text:?} is not an event id (a non-negative integer)"
            ))),
        },
    }
}

/// Runs the replay-then-live loop, sending matching items to `out` until the client
/// goes away or the feed closes. `backlog(after)` returns matching items with
/// `seq > after`, oldest first, at most [`BACKLOG_PAGE`].
pub async fn produce<T, B, Fut>(
    mut live: broadcast::Receiver<T>,
    mut position: i64,
    backlog: B,
    matches: impl Fn(&T) -> bool + Send,
    out: mpsc::Sender<T>,
) where
    T: Sequenced,
    B: Fn(i64) -> Fut + Send,
    Fut: Future<Output = Result<Vec<T>, ApiError>> + Send,
{
    // Catches up from the database; false when the client is gone or reading failed.
    async fn catch_up<T, B, Fut>(position: &mut i64, backlog: &B, out: &mpsc::Sender<T>) -> bool
    where
        T: Sequenced,
        B: Fn(i64) -> Fut,
        Fut: Future<Output = Result<Vec<T>, ApiError>>,
    {
        loop {
            let page = match backlog(*position).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(error = %e.message, "reading a stream's backlog failed");
                    return false;
                }
            };
            let full = page.len() >= BACKLOG_PAGE as usize;
            for item in page {
                if let Some(seq) = item.seq() {
                    *position = (*position).max(seq);
                }
                if out.send(item).await.is_err() {
                    return false;
                }
            }
            if !full {
                return true;
            }
        }
    }

    if !catch_up(&mut position, &backlog, &out).await {
        return;
    }
    loop {
        let next = tokio::select! {
            next = live.recv() => next,
            _ = out.closed() => return,
        };
        match next {
            Ok(item) => {
                match item.seq() {
                    Some(seq) if seq <= position => continue,
                    Some(seq) => position = seq,
                    None => {}
                }
                if matches(&item) && out.send(item).await.is_err() {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::debug!(
                    missed,
                    "stream fell behind the live feed; re-reading the log"
                );
                if !catch_up(&mut position, &backlog, &out).await {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Serves the items of `rx` as Server-Sent Events (`id:` = seq, `data:` = JSON) or,
/// when `upgrade` is given, as WebSocket text messages (one JSON item each).
pub fn respond<T: Sequenced>(rx: mpsc::Receiver<T>, upgrade: Option<WebSocketUpgrade>) -> Response {
    match upgrade {
        Some(upgrade) => upgrade.on_upgrade(move |socket| websocket(socket, rx)),
        None => {
            let stream = futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|item| (item, rx))
            })
            .map(|item| {
                let data = serde_json::to_string(&item).unwrap_or_else(|_| "null".into());
                let mut event = SseEvent::default().data(data);
                if let Some(seq) = item.seq() {
                    event = event.id(seq.to_string());
                }
                Ok::<_, Infallible>(event)
            });
            Sse::new(stream)
                .keep_alive(KeepAlive::new().interval(KEEPALIVE).text("keepalive"))
                .into_response()
        }
    }
}

async fn websocket<T: Sequenced>(mut socket: WebSocket, mut rx: mpsc::Receiver<T>) {
    let mut ping = tokio::time::interval(KEEPALIVE);
    ping.tick().await;
    loop {
        tokio::select! {
            item = rx.recv() => {
                let Some(item) = item else { break };
                let text = serde_json::to_string(&item).unwrap_or_else(|_| "null".into());
                if socket.send(Message::Text(text.into())).await.is_err() {
                    return;
                }
            }
            incoming = socket.recv() => match incoming {
                // The stream is one-way; pings are answered by axum.
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
            _ = ping.tick() => {
                if socket.send(Message::Ping(Default::default())).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = socket.send(Message::Close(None)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_positions() {
        let mut headers = HeaderMap::new();
        assert_eq!(resume_position(None, &headers).ok(), Some(None));
        assert_eq!(resume_position(Some("42"), &headers).ok(), Some(Some(42)));
        assert!(resume_position(Some("-1"), &headers).is_err());
        assert!(resume_position(Some("x"), &headers).is_err());
        headers.insert("last-event-id", http::HeaderValue::from_static("7"));
        assert_eq!(resume_position(None, &headers).ok(), Some(Some(7)));
        assert_eq!(resume_position(Some("9"), &headers).ok(), Some(Some(9)));
        headers.insert("last-event-id", http::HeaderValue::from_static("nope"));
        assert!(resume_position(None, &headers).is_err());
    }

    #[tokio::test]
    async fn replay_then_live_has_no_gap_and_no_duplicate() {
        use aetherium_types::{Event, EventType};
        let make = |seq: i64| {
            let mut e = Event::new(
                EventType::VmStarted,
                format!("r{seq}"),
                serde_json::json!({}),
            );
            e.seq = Some(seq);
            e
        };
        let (live_tx, live_rx) = broadcast::channel(4);
        // 3 and 4 are both stored (backlog) and broadcast (live): sent once each.
        for seq in [3, 4, 5] {
            let _ = live_tx.send(make(seq));
        }
        let stored: Vec<Event> = (1..=4).map(make).collect();
        let (out_tx, mut out_rx) = mpsc::channel(16);
        let producer = tokio::spawn(produce(
            live_rx,
            1,
            move |after| {
                let page: Vec<Event> = stored
                    .iter()
                    .filter(|e| e.seq.unwrap_or(0) > after)
                    .cloned()
                    .collect();
                async move { Ok(page) }
            },
            |e: &Event| e.resource_id != "r4",
            out_tx,
        ));
        let mut got = Vec::new();
        for _ in 0..3 {
            if let Some(e) = out_rx.recv().await {
                got.push(e.seq.unwrap_or(0));
            }
        }
        // The backlog is sent unfiltered by `matches` (the store filters it); live
        // items are filtered here: 4 came from the backlog, 5 live.
        assert_eq!(got, vec![2, 3, 4]);
        let _ = live_tx.send(make(6));
        let next = out_rx.recv().await.and_then(|e| e.seq);
        assert_eq!(next, Some(5));
        assert_eq!(out_rx.recv().await.and_then(|e| e.seq), Some(6));
        drop(out_rx);
        let _ = live_tx.send(make(7));
        let _ = tokio::time::timeout(Duration::from_secs(5), producer).await;
    }

    #[tokio::test]
    async fn a_lagging_subscriber_rereads_the_log() {
        use aetherium_types::{Event, EventType};
        let make = |seq: i64| {
            let mut e = Event::new(EventType::TaskStarted, "t", serde_json::json!({}));
            e.seq = Some(seq);
            e
        };
        // Capacity 2: the receiver loses 1..=4 of the live items and must read the
        // log to deliver them.
        let (live_tx, live_rx) = broadcast::channel(2);
        let stored: Vec<Event> = (1..=6).map(make).collect();
        let (out_tx, mut out_rx) = mpsc::channel(1);
        let reads = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = reads.clone();
        let producer = tokio::spawn(produce(
            live_rx,
            0,
            move |after| {
                // The first read (the initial catch-up) sees nothing yet.
                let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let page: Vec<Event> = if n == 0 {
                    Vec::new()
                } else {
                    stored
                        .iter()
                        .filter(|e| e.seq.unwrap_or(0) > after)
                        .cloned()
                        .collect()
                };
                async move { Ok(page) }
            },
            |_: &Event| true,
            out_tx,
        ));
        tokio::time::sleep(Duration::from_millis(50)).await;
        for seq in 1..=6 {
            let _ = live_tx.send(make(seq));
        }
        let mut got = Vec::new();
        while got.len() < 6 {
            let e = tokio::time::timeout(Duration::from_secs(5), out_rx.recv())
                .await
                .ok()
                .flatten();
            match e {
                Some(e) => got.push(e.seq.unwrap_or(0)),
                None => break,
            }
        }
        assert_eq!(got, vec![1, 2, 3, 4, 5, 6]);
        drop(out_rx);
        producer.abort();
    }
}
