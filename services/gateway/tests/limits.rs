//! The API server's own limits, on a bare router: slow clients and connection floods
//! cannot hold it.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use aetherium_gateway::{ConnectionLimits, serve_with_limits};
use axum::Router;
use axum::routing::get;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

async fn server(limits: ConnectionLimits) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route("/health", get(|| async { "ok" }));
    tokio::spawn(serve_with_limits(
        listener,
        app,
        limits,
        std::future::pending(),
    ));
    addr
}

/// Reads until the peer closes; `None` if it has not within `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(seen),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
            Err(_) => return None,
        }
    }
}

#[tokio::test]
async fn slow_headers_and_idle_connections_are_closed() {
    let addr = server(ConnectionLimits {
        max_connections: 16,
        header_read_timeout: Duration::from_millis(500),
    })
    .await;
    // Slowloris: a request line and half a header, then nothing.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    assert!(
        closed_within(&mut slow, Duration::from_secs(5))
            .await
            .is_some(),
        "a client that never finishes its headers keeps its connection"
    );
    // A client that connects and says nothing.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    assert!(
        closed_within(&mut silent, Duration::from_secs(5))
            .await
            .is_some()
    );
    // A served keep-alive connection that goes idle.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = closed_within(&mut idle, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn connections_past_the_cap_wait_for_a_free_slot() {
    let addr = server(ConnectionLimits {
        max_connections: 2,
        header_read_timeout: Duration::from_secs(2),
    })
    .await;
    let _held: Vec<TcpStream> = vec![
        TcpStream::connect(addr).await.unwrap(),
        TcpStream::connect(addr).await.unwrap(),
    ];
    // Give the server time to accept both.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let mut third = TcpStream::connect(addr).await.unwrap();
    third
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = closed_within(&mut third, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    // Served only once a held connection timed out and freed its slot.
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "answered after {:?} although both slots were held",
        started.elapsed()
    );
}
