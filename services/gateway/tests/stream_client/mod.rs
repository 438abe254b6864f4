//! Clients for the SSE and WebSocket streams of `/events` and `/logs/stream`.
#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use futures::StreamExt as _;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use crate::common::{TOKEN, TestServer};

/// One Server-Sent Event: its `id:` and its `data:` as JSON.
#[derive(Debug, Clone)]
pub struct Sse {
    pub id: Option<String>,
    pub data: Value,
}

pub struct SseClient {
    stream: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
}

impl SseClient {
    /// Opens `GET /api/v1{path}` as an event stream; `last_event_id` sets the header.
    pub async fn open(server: &TestServer, path: &str, last_event_id: Option<&str>) -> SseClient {
        let mut req = server.request(reqwest::Method::GET, path);
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let ct = resp
            .headers()
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        assert!(ct.starts_with("text/event-stream"), "{ct}");
        SseClient {
            stream: resp.bytes_stream().boxed(),
            buffer: String::new(),
        }
    }

    /// The next event (keepalive comments skipped); `None` after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<Sse> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut id = None;
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().to_string());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if data.is_empty() {
                    continue; // a comment (keepalive)
                }
                return Some(Sse {
                    id,
                    data: serde_json::from_str(&data).unwrap(),
                });
            }
            let chunk = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .ok()??
                .unwrap();
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens `/api/v1{path}` (which must carry a query string) as a WebSocket, with the
/// token in the query as browsers must.
pub async fn open_ws(server: &TestServer, path: &str) -> Ws {
    let url = format!(
        "{}/api/v1{path}&token={TOKEN}",
        server.url.replacen("http://", "ws://", 1)
    );
    let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws
}

/// The next JSON text message; `None` after `timeout` or when the socket closes.
pub async fn ws_next(ws: &mut Ws, timeout: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .ok()??
            .ok()?;
        match msg {
            Message::Text(text) => return Some(serde_json::from_str(&text).unwrap()),
            Message::Close(_) => return None,
            _ => continue,
        }
    }
}
