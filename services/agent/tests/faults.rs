//! Faults and load: many processes at once, clients that vanish mid-upload, and
//! arbitrary bytes thrown at every Connect endpoint. None may leak file
//! descriptors, leave garbage behind or take the agent down.

mod common;

use std::time::{Duration, Instant};

use aetherium_types::agent::{
    CONNECT_STREAM_JSON, CONNECT_STREAM_PROTO, Codec, Empty, ListResponse, PROCESS_LIST_PATH,
};
use common::{Agent, sh};
use http::Method;
use proptest::prelude::*;
use tokio::io::AsyncWriteExt as _;

/// The agent's fd count once it has settled (a closing connection may take a moment
/// to be reaped).
async fn settled_fds(agent: &Agent, at_most: usize) -> usize {
    let deadline = Instant::now() + common::WAIT;
    loop {
        let fds = agent.fd_count();
        if fds <= at_most || Instant::now() > deadline {
            return fds;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn two_hundred_concurrent_processes() {
    let agent = Agent::spawn().await;
    let before = agent.fd_count();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let agent = &agent;
        tasks.push(async move {
            let mut request = sh(&format!(
                "sleep 0.5; echo out-{i}; echo err-{i} >&2; exit {}",
                i % 7
            ));
            request.stdin = Some(i % 2 == 0);
            agent.start(&request).await.finish().await
        });
    }
    // All 200 run at once: each sleeps half a second.
    let results = futures_join_all(tasks).await;
    for (i, finished) in results.iter().enumerate() {
        assert_eq!(finished.stdout, format!("out-{i}\n").as_bytes());
        assert_eq!(finished.stderr, format!("err-{i}\n").as_bytes());
        assert_eq!(
            finished.end.as_ref().map(|e| e.exit_code),
            Some((i % 7) as i32)
        );
    }
    let elapsed = started.elapsed();
    let listed: ListResponse = agent
        .unary(Codec::Proto, PROCESS_LIST_PATH, &Empty {})
        .await
        .expect("list");
    assert!(listed.processes.is_empty());
    let after = settled_fds(&agent, before).await;
    eprintln!("200 processes in {elapsed:?}; agent fds before {before}, after {after}");
    assert!(after <= before, "fd leak: {before} before, {after} after");
    assert!(elapsed < Duration::from_secs(30), "{elapsed:?}");
}

/// Joins futures concurrently on this task (no futures crate in the agent).
async fn futures_join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut set = Vec::new();
    for future in futures {
        set.push(Box::pin(future));
    }
    let mut outputs: Vec<Option<F::Output>> = (0..set.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, future) in set.iter_mut().enumerate() {
            if outputs[i].is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(out) => outputs[i] = Some(out),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

#[tokio::test]
async fn a_client_vanishing_mid_upload_leaves_nothing_behind() {
    let agent = Agent::spawn().await;
    // One request first, so the runtime's lazily created fds exist before counting.
    let warm = agent.request(Method::GET, "/health", &[], Vec::new()).await;
    assert_eq!(warm.status(), http::StatusCode::NO_CONTENT);
    let before = settled_fds(&agent, usize::MAX).await;
    let target = agent.path("up/partial.bin");
    for raw in [true, false] {
        let mut stream = tokio::net::UnixStream::connect(&agent.socket)
            .await
            .expect("connect");
        let head = if raw {
            format!(
                "POST /files?path={target} HTTP/1.1\r\nhost: x\r\ncontent-type: application/octet-stream\r\ncontent-length: 100000000\r\n\r\n"
            )
        } else {
            format!(
                "POST /files?path={target} HTTP/1.1\r\nhost: x\r\ncontent-type: multipart/form-data; boundary=b\r\ntransfer-encoding: chunked\r\n\r\n"
            )
        };
        stream.write_all(head.as_bytes()).await.expect("head");
        let chunk = vec![b'x'; 64 * 1024];
        if raw {
            for _ in 0..16 {
                stream.write_all(&chunk).await.expect("body");
            }
        } else {
            let part =
                b"--b\r\ncontent-disposition: form-data; name=\"file\"; filename=\"f\"\r\n\r\n";
            stream
                .write_all(format!("{:x}\r\n", part.len()).as_bytes())
                .await
                .expect("chunk");
            stream.write_all(part).await.expect("part");
            stream.write_all(b"\r\n").await.expect("crlf");
            for _ in 0..16 {
                stream
                    .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                    .await
                    .expect("chunk");
                stream.write_all(&chunk).await.expect("body");
                stream.write_all(b"\r\n").await.expect("crlf");
            }
        }
        // Let the agent start writing, then vanish.
        let deadline = Instant::now() + common::WAIT;
        while !std::path::Path::new(&target).exists() {
            assert!(Instant::now() < deadline, "upload never started");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(stream);
        let deadline = Instant::now() + common::WAIT;
        while std::path::Path::new(&target).exists() {
            assert!(
                Instant::now() < deadline,
                "the partial upload was left behind"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let after = settled_fds(&agent, before).await;
    assert!(after <= before, "fd leak: {before} before, {after} after");
    let health = agent.request(Method::GET, "/health", &[], Vec::new()).await;
    assert_eq!(health.status(), http::StatusCode::NO_CONTENT);
}

const ENDPOINTS: &[&str] = &[
    "/process.Process/Start",
    "/process.Process/Connect",
    "/process.Process/List",
    "/process.Process/SendInput",
    "/process.Process/StreamInput",
    "/process.Process/SendSignal",
    "/process.Process/Update",
    "/process.Process/CloseStdin",
    "/filesystem.Filesystem/Stat",
    "/filesystem.Filesystem/ListDir",
    "/filesystem.Filesystem/WatchDir",
    "/filesystem.Filesystem/CreateWatcher",
    "/filesystem.Filesystem/GetWatcherEvents",
    "/files",
    "/init",
    "/secrets",
];

const CONTENT_TYPES: &[&str] = &[
    "application/json",
    "application/proto",
    CONNECT_STREAM_JSON,
    CONNECT_STREAM_PROTO,
    "multipart/form-data; boundary=x",
    "application/octet-stream",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Arbitrary bodies (raw, or inside an envelope that may lie about its length)
    /// to every endpoint with every content type: an answer, never a crash.
    #[test]
    fn arbitrary_bodies_never_take_the_agent_down(
        endpoint in 0..ENDPOINTS.len(),
        content_type in 0..CONTENT_TYPES.len(),
        flags in prop_oneof![Just(0u8), Just(1u8), Just(2u8), any::<u8>()],
        declared in prop_oneof![Just(None), any::<u32>().prop_map(Some)],
        payload in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let agent = Agent::spawn().await;
            let mut body = Vec::new();
            if let Some(declared) = declared {
                body.push(flags);
                body.extend_from_slice(&declared.to_be_bytes());
            }
            body.extend_from_slice(&payload);
            let response = tokio::time::timeout(
                common::WAIT,
                agent.request(
                    Method::POST,
                    &format!("{}?path={}", ENDPOINTS[endpoint], agent.path("fuzz")),
                    &[("content-type", CONTENT_TYPES[content_type])],
                    body,
                ),
            )
            .await
            .expect("an answer in time");
            // Streams that were accepted are cut short here; that must be fine too.
            drop(response);
            let health = agent.request(Method::GET, "/health", &[], Vec::new()).await;
            assert_eq!(health.status(), http::StatusCode::NO_CONTENT);
        });
    }
}
