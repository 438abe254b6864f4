//! The filesystem service, `/files`, `/init`, auth and our extensions, against the
//! real agent binary.

mod common;

use std::time::{Duration, Instant};

use aetherium_types::agent::{
    Codec, ConnectError, CreateWatcherResponse, Empty, EntryResponse, EventType,
    FILESYSTEM_CREATE_WATCHER_PATH, FILESYSTEM_GET_WATCHER_EVENTS_PATH, FILESYSTEM_LIST_DIR_PATH,
    FILESYSTEM_MAKE_DIR_PATH, FILESYSTEM_MOVE_PATH, FILESYSTEM_REMOVE_PATH,
    FILESYSTEM_REMOVE_WATCHER_PATH, FILESYSTEM_STAT_PATH, FILESYSTEM_WATCH_DIR_PATH, FileType,
    GetWatcherEventsResponse, ListDirRequest, ListDirResponse, ListResponse, MoveRequest,
    PROCESS_LIST_PATH, PathRequest, WatchDirRequest, WatchDirResponse, code,
};
use common::{Agent, collect, sh};
use http::{Method, StatusCode};
use serde_json::{Value, json};

fn path_request(path: String) -> PathRequest {
    PathRequest { path }
}

#[tokio::test]
async fn filesystem_calls_in_both_codecs() {
    let agent = Agent::spawn().await;
    std::fs::create_dir_all(agent.dir.path().join("tree/a/b")).expect("tree");
    std::fs::write(agent.dir.path().join("tree/a/f"), b"12345").expect("file");
    for codec in [Codec::Proto, Codec::Json] {
        let stat: EntryResponse = agent
            .unary(
                codec,
                FILESYSTEM_STAT_PATH,
                &path_request(agent.path("tree/a/f")),
            )
            .await
            .expect("stat");
        let entry = stat.entry.expect("entry");
        assert_eq!(
            (entry.name.as_str(), entry.size, entry.r#type),
            ("f", 5, FileType::File as i32)
        );
        assert!(entry.modified_time.is_some());
        let missing: Result<EntryResponse, _> = agent
            .unary(
                codec,
                FILESYSTEM_STAT_PATH,
                &path_request(agent.path("nope")),
            )
            .await;
        assert_eq!(
            missing.map_err(|(status, e)| (status, e.code)).err(),
            Some((StatusCode::NOT_FOUND, code::NOT_FOUND.into()))
        );
        let listed: ListDirResponse = agent
            .unary(
                codec,
                FILESYSTEM_LIST_DIR_PATH,
                &ListDirRequest {
                    path: agent.path("tree"),
                    depth: 2,
                },
            )
            .await
            .expect("list");
        let names: Vec<_> = listed.entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "f"]);
    }
    let made: EntryResponse = agent
        .unary(
            Codec::Json,
            FILESYSTEM_MAKE_DIR_PATH,
            &path_request(agent.path("new/deep")),
        )
        .await
        .expect("mkdir");
    assert_eq!(
        made.entry.map(|e| e.r#type),
        Some(FileType::Directory as i32)
    );
    let again: Result<EntryResponse, _> = agent
        .unary(
            Codec::Json,
            FILESYSTEM_MAKE_DIR_PATH,
            &path_request(agent.path("new/deep")),
        )
        .await;
    assert_eq!(
        again.map_err(|e| e.1.code).err().as_deref(),
        Some(code::ALREADY_EXISTS)
    );
    let moved: EntryResponse = agent
        .unary(
            Codec::Proto,
            FILESYSTEM_MOVE_PATH,
            &MoveRequest {
                source: agent.path("tree/a/f"),
                destination: agent.path("moved/g"),
            },
        )
        .await
        .expect("move");
    assert_eq!(moved.entry.map(|e| e.path), Some(agent.path("moved/g")));
    let _: Empty = agent
        .unary(
            Codec::Proto,
            FILESYSTEM_REMOVE_PATH,
            &path_request(agent.path("tree")),
        )
        .await
        .expect("remove");
    assert!(!agent.dir.path().join("tree").exists());
}

#[tokio::test]
async fn watch_dir_streams_and_polled_watchers_collect() {
    let agent = Agent::spawn().await;
    let dir = agent.path("watched");
    std::fs::create_dir(&dir).expect("dir");
    let mut stream = agent
        .stream(
            Codec::Json,
            FILESYSTEM_WATCH_DIR_PATH,
            &WatchDirRequest {
                path: dir.clone(),
                recursive: true,
                include_entry: true,
            },
        )
        .await;
    assert_eq!(
        stream.next_message::<WatchDirResponse>().await.ok(),
        Some(WatchDirResponse::Start(Default::default()))
    );
    let created: CreateWatcherResponse = agent
        .unary(
            Codec::Proto,
            FILESYSTEM_CREATE_WATCHER_PATH,
            &WatchDirRequest {
                path: dir.clone(),
                recursive: false,
                include_entry: false,
            },
        )
        .await
        .expect("create watcher");
    std::fs::write(format!("{dir}/new.txt"), b"x").expect("write");
    loop {
        match stream.next_message::<WatchDirResponse>().await {
            Ok(WatchDirResponse::Filesystem(event)) => {
                assert_eq!(event.name, "new.txt");
                assert_eq!(event.r#type, EventType::Create as i32);
                assert_eq!(event.entry.map(|e| e.name).as_deref(), Some("new.txt"));
                break;
            }
            Ok(WatchDirResponse::Keepalive(_)) => continue,
            other => panic!("expected a filesystem event, got {other:?}"),
        }
    }
    let deadline = Instant::now() + common::WAIT;
    let events = loop {
        let got: GetWatcherEventsResponse = agent
            .unary(Codec::Json, FILESYSTEM_GET_WATCHER_EVENTS_PATH, &created)
            .await
            .expect("events");
        if !got.events.is_empty() {
            break got.events;
        }
        assert!(Instant::now() < deadline, "no events");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(events[0].name, "new.txt");
    let _: Empty = agent
        .unary(Codec::Json, FILESYSTEM_REMOVE_WATCHER_PATH, &created)
        .await
        .expect("remove watcher");
    let gone: Result<GetWatcherEventsResponse, _> = agent
        .unary(Codec::Json, FILESYSTEM_GET_WATCHER_EVENTS_PATH, &created)
        .await;
    assert_eq!(
        gone.map_err(|e| e.1.code).err().as_deref(),
        Some(code::NOT_FOUND)
    );
    // Watching a file is refused.
    let refused = agent
        .stream(
            Codec::Json,
            FILESYSTEM_WATCH_DIR_PATH,
            &WatchDirRequest {
                path: format!("{dir}/new.txt"),
                ..WatchDirRequest::default()
            },
        )
        .await
        .next_message::<WatchDirResponse>()
        .await;
    assert_eq!(
        refused.map_err(|e| e.map(|e| e.code)),
        Err(Some(code::INVALID_ARGUMENT.into()))
    );
}

fn multipart(parts: &[(&str, Option<&str>, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "aetherium-test-boundary";
    let mut body = Vec::new();
    for (name, filename, content) in parts {
        body.extend(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"").bytes(),
        );
        if let Some(filename) = filename {
            body.extend(format!("; filename=\"{filename}\"").bytes());
        }
        body.extend(b"\r\nContent-Type: application/octet-stream\r\n\r\n");
        body.extend_from_slice(content);
        body.extend(b"\r\n");
    }
    body.extend(format!("--{boundary}--\r\n").bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

async fn json(response: http::Response<hyper::body::Incoming>) -> (StatusCode, Value) {
    let status = response.status();
    let body = collect(response).await;
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn files_upload_and_download() {
    let agent = Agent::spawn().await;
    // Raw body to ?path=, creating parent directories.
    let target = agent.path("up/raw.bin");
    let (status, written) = json(
        agent
            .request(
                Method::POST,
                &format!("/files?path={target}"),
                &[("content-type", "application/octet-stream")],
                b"raw bytes".to_vec(),
            )
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        written,
        json!([{"path": target, "name": "raw.bin", "type": "file"}])
    );
    assert_eq!(std::fs::read(&target).expect("written"), b"raw bytes");

    // Multipart: the part's file name is the path when ?path= is absent.
    let (content_type, body) = multipart(&[
        ("file", Some(&agent.path("mp/one.txt")), b"first"),
        ("ignored", None, b"x"),
        (
            "file",
            Some(&agent.path("mp/two.txt")),
            b"second\r\n--not-a-boundary",
        ),
    ]);
    let (status, written) = json(
        agent
            .request(
                Method::POST,
                "/files",
                &[("content-type", &content_type)],
                body,
            )
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{written}");
    assert_eq!(written.as_array().map(Vec::len), Some(2));
    assert_eq!(
        std::fs::read(agent.path("mp/two.txt")).expect("two"),
        b"second\r\n--not-a-boundary"
    );

    // Overwriting keeps the mode.
    std::fs::set_permissions(&target, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let (content_type, body) = multipart(&[("file", Some("ignored-name"), b"new")]);
    let (status, _) = json(
        agent
            .request(
                Method::POST,
                &format!("/files?path={target}"),
                &[("content-type", &content_type)],
                body,
            )
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let meta = std::fs::metadata(&target).expect("meta");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o600
    );
    assert_eq!(std::fs::read(&target).expect("read"), b"new");

    // Download.
    let response = agent
        .request(
            Method::GET,
            &format!("/files?path={target}"),
            &[],
            Vec::new(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "application/octet-stream"
    );
    assert_eq!(response.headers()["content-length"], "3");
    assert_eq!(
        response.headers()["content-disposition"],
        "attachment; filename=\"raw.bin\""
    );
    assert_eq!(collect(response).await.as_ref(), b"new");

    // Errors as envd: missing → 404, directory → 400, raw body without path → 400.
    let (status, body) = json(
        agent
            .request(
                Method::GET,
                &format!("/files?path={}", agent.path("nope")),
                &[],
                Vec::new(),
            )
            .await,
    )
    .await;
    assert_eq!(
        (status, body["code"].as_u64()),
        (StatusCode::NOT_FOUND, Some(404))
    );
    let (status, _) = json(
        agent
            .request(
                Method::GET,
                &format!("/files?path={}", agent.path("up")),
                &[],
                Vec::new(),
            )
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = json(
        agent
            .request(
                Method::POST,
                "/files",
                &[("content-type", "application/octet-stream")],
                b"x".to_vec(),
            )
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // gzip-encoded raw uploads are inflated (E2B's `files.write(gzip=True)`);
    // corrupt gzip is a 400, other encodings a 415.
    let text = "compressible ".repeat(10_000);
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut encoder, text.as_bytes()).expect("gzip");
    let compressed = encoder.finish().expect("gzip");
    for (encoding, body, expected) in [
        ("gzip", compressed.clone(), StatusCode::OK),
        (
            "gzip",
            compressed[..compressed.len() - 4].to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        ("br", b"x".to_vec(), StatusCode::UNSUPPORTED_MEDIA_TYPE),
    ] {
        let gz_target = agent.path("up/gz.txt");
        let (status, _) = json(
            agent
                .request(
                    Method::POST,
                    &format!("/files?path={gz_target}"),
                    &[
                        ("content-type", "application/octet-stream"),
                        ("content-encoding", encoding),
                    ],
                    body,
                )
                .await,
        )
        .await;
        assert_eq!(status, expected, "{encoding}");
        if expected == StatusCode::OK {
            assert_eq!(std::fs::read_to_string(&gz_target).expect("inflated"), text);
        }
    }
    // Relative paths are in the user's home; an unknown user is 401.
    let (status, _) = json(
        agent
            .request(
                Method::GET,
                "/files?path=x&username=no-such-user-aetherium",
                &[],
                Vec::new(),
            )
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn access_token_guards_everything_but_health() {
    let agent = Agent::spawn_with(&["--access-token", "s3cret"]).await;
    let health = agent.request(Method::GET, "/health", &[], Vec::new()).await;
    assert_eq!(health.status(), StatusCode::NO_CONTENT);
    let refused: Result<ListResponse, (StatusCode, ConnectError)> =
        agent.unary(Codec::Json, PROCESS_LIST_PATH, &Empty {}).await;
    assert_eq!(
        refused.map_err(|(s, e)| (s, e.code)).err(),
        Some((StatusCode::UNAUTHORIZED, code::UNAUTHENTICATED.into()))
    );
    let wrong: Result<ListResponse, _> = agent
        .unary_with(
            Codec::Json,
            PROCESS_LIST_PATH,
            &Empty {},
            &[("x-access-token", "s3creT")],
        )
        .await;
    assert!(wrong.is_err());
    let ok: ListResponse = agent
        .unary_with(
            Codec::Json,
            PROCESS_LIST_PATH,
            &Empty {},
            &[("x-access-token", "s3cret")],
        )
        .await
        .expect("with the token");
    assert!(ok.processes.is_empty());
    let files = agent
        .request(Method::GET, "/files?path=/etc/hostname", &[], Vec::new())
        .await;
    assert_eq!(files.status(), StatusCode::UNAUTHORIZED);
    let init = agent
        .request(Method::POST, "/init", &[], b"{}".to_vec())
        .await;
    assert_eq!(init.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn init_envs_secrets_and_info() {
    let agent = Agent::spawn().await;
    let init = |body: Value, headers: Vec<(&'static str, &'static str)>| {
        let agent = &agent;
        async move {
            agent
                .request(
                    Method::POST,
                    "/init",
                    &headers,
                    body.to_string().into_bytes(),
                )
                .await
                .status()
        }
    };
    let workdir = agent.path("");
    let status = init(
        json!({"envVars": {"FROM_INIT": "1", "SHARED": "init"}, "defaultWorkdir": workdir, "accessToken": "tok", "timestamp": "2001-01-01T00:00:00Z", "hyperloopIP": "10.0.0.1"}),
        vec![],
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let auth = [("x-access-token", "tok")];
    // Now the token is required, and cannot be changed.
    assert_eq!(init(json!({}), vec![]).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        init(
            json!({"accessToken": "other"}),
            vec![("x-access-token", "tok")]
        )
        .await,
        StatusCode::CONFLICT
    );
    let (status, envs) = json(agent.request(Method::GET, "/envs", &auth, Vec::new()).await).await;
    assert_eq!(
        (status, envs),
        (StatusCode::OK, json!({"FROM_INIT": "1", "SHARED": "init"}))
    );

    // Secrets: set, listed by name only, injected into processes, removable.
    let secrets = agent
        .request(
            Method::POST,
            "/secrets",
            &auth,
            json!({"API_KEY": "hunter2", "SHARED": "secret"})
                .to_string()
                .into_bytes(),
        )
        .await;
    assert_eq!(secrets.status(), StatusCode::NO_CONTENT);
    let (_, names) = json(
        agent
            .request(Method::GET, "/secrets", &auth, Vec::new())
            .await,
    )
    .await;
    assert_eq!(names, json!({"names": ["API_KEY", "SHARED"]}));
    let mut request = sh("echo $FROM_INIT $API_KEY $SHARED; pwd");
    request.stdin = Some(false);
    let finished = agent
        .stream_with(
            Codec::Json,
            aetherium_types::agent::PROCESS_START_PATH,
            &request,
            &auth,
        )
        .await
        .finish()
        .await;
    let workdir_canon = agent.dir.path().canonicalize().expect("canonical");
    let out = String::from_utf8_lossy(&finished.stdout).into_owned();
    assert!(out.starts_with("1 hunter2 secret\n"), "{out}");
    assert!(
        out.ends_with(&format!("{}\n", workdir_canon.display()))
            || out.ends_with(&format!("{workdir}\n")),
        "the default workdir: {out}"
    );
    let removed = agent
        .request(Method::DELETE, "/secrets?name=API_KEY", &auth, Vec::new())
        .await;
    assert_eq!(removed.status(), StatusCode::NO_CONTENT);
    let removed = agent
        .request(Method::DELETE, "/secrets?name=API_KEY", &auth, Vec::new())
        .await;
    assert_eq!(removed.status(), StatusCode::NOT_FOUND);

    let (status, info) = json(agent.request(Method::GET, "/info", &auth, Vec::new()).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    assert!(info["uptimeSeconds"].as_f64().is_some());
    assert!(info["memory"]["totalBytes"].as_u64().is_some_and(|b| b > 0));
    assert_eq!(info["load"].as_array().map(Vec::len), Some(3));
    let (status, metrics) = json(
        agent
            .request(Method::GET, "/metrics", &auth, Vec::new())
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    for key in [
        "ts",
        "cpu_count",
        "cpu_used_pct",
        "mem_total",
        "mem_used",
        "disk_used",
        "disk_total",
    ] {
        assert!(metrics[key].is_number(), "{key} in {metrics}");
    }
}

#[tokio::test]
async fn idle_timeout_exits_only_when_idle() {
    let mut agent = Agent::spawn_with(&["--idle-timeout", "1"]).await;
    // A running process keeps the agent alive past the timeout.
    let mut request = sh("sleep 2");
    request.stdin = Some(false);
    let started = Instant::now();
    let finished = agent.start(&request).await.finish().await;
    assert_eq!(finished.end.map(|e| e.exit_code), Some(0));
    assert!(
        agent.child.try_wait().expect("try_wait").is_none(),
        "still up"
    );
    let deadline = Instant::now() + common::WAIT;
    let status = loop {
        if let Some(status) = agent.child.try_wait().expect("try_wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "agent did not exit when idle");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success());
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "idle measured after the process"
    );
    assert!(!agent.socket.exists());
}
