//! The process service and the HTTP basics of the real agent binary, over a unix
//! socket, with a bare hyper client in both Connect codecs.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::time::{Duration, Instant};

use aetherium_types::agent::{
    Base64Bytes, CONNECT_STREAM_JSON, CONNECT_STREAM_PROTO, Codec, ConnectRequest, DataEvent,
    Empty, KeepAlive, ListResponse, PROCESS_CLOSE_STDIN_PATH, PROCESS_CONNECT_PATH,
    PROCESS_LIST_PATH, PROCESS_SEND_INPUT_PATH, PROCESS_SEND_SIGNAL_PATH, PROCESS_START_PATH,
    PROCESS_STREAM_INPUT_PATH, PROCESS_UPDATE_PATH, ProcessEvent, ProcessInput, ProcessSelector,
    Pty, PtySize, SendInputRequest, SendSignalRequest, Signal, StreamInputData, StreamInputRequest,
    StreamInputStart, UpdateRequest, code, envelope,
};
use common::{Agent, Message, Stream, collect, command, sh};
use http::{Method, StatusCode};

async fn list(agent: &Agent) -> Vec<u32> {
    let list: ListResponse = agent
        .unary(Codec::Proto, PROCESS_LIST_PATH, &Empty {})
        .await
        .expect("list");
    list.processes.iter().map(|p| p.pid).collect()
}

async fn wait_until_gone(agent: &Agent, pid: u32) {
    let deadline = Instant::now() + common::WAIT;
    while list(agent).await.contains(&pid) {
        assert!(Instant::now() < deadline, "pid {pid} still listed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn signal(
    agent: &Agent,
    selector: ProcessSelector,
    signal: Signal,
) -> Result<Empty, (StatusCode, aetherium_types::agent::ConnectError)> {
    agent
        .unary(
            Codec::Json,
            PROCESS_SEND_SIGNAL_PATH,
            &SendSignalRequest {
                process: Some(selector),
                signal: signal as i32,
            },
        )
        .await
}

#[tokio::test]
async fn health_routes_and_socket_setup() {
    let agent = Agent::spawn().await;
    let mode = std::fs::metadata(&agent.socket)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o666, "socket connectable by any user");

    let health = agent.request(Method::GET, "/health", &[], Vec::new()).await;
    assert_eq!(health.status(), StatusCode::NO_CONTENT);
    let unknown = agent.request(Method::GET, "/nope", &[], Vec::new()).await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    let wrong_method = agent
        .request(Method::GET, PROCESS_LIST_PATH, &[], Vec::new())
        .await;
    assert_eq!(wrong_method.status(), StatusCode::METHOD_NOT_ALLOWED);
    let wrong_method = agent
        .request(Method::POST, "/health", &[], Vec::new())
        .await;
    assert_eq!(wrong_method.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn replaces_a_stale_socket_and_exits_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("agent.sock");
    // A socket file nobody listens on, as a crashed agent leaves behind.
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("stale socket"));
    let mut agent = Agent::spawn_at(dir, socket.clone(), &[]).await;
    let health = agent.request(Method::GET, "/health", &[], Vec::new()).await;
    assert_eq!(health.status(), StatusCode::NO_CONTENT);

    let pid = rustix::process::Pid::from_child(&agent.child);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
    let deadline = Instant::now() + common::WAIT;
    let status = loop {
        if let Some(status) = agent.child.try_wait().expect("try_wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "agent ignored SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}");
    assert!(!socket.exists(), "socket removed on shutdown");
}

#[tokio::test]
async fn start_streams_output_and_exit_code_in_both_codecs() {
    let agent = Agent::spawn().await;
    for codec in [Codec::Json, Codec::Proto] {
        let stream = agent
            .stream(
                codec,
                PROCESS_START_PATH,
                &sh("echo out; echo err >&2; exit 3"),
            )
            .await;
        assert_eq!(stream.status, StatusCode::OK);
        assert_eq!(
            stream.content_type,
            match codec {
                Codec::Json => CONNECT_STREAM_JSON,
                Codec::Proto => CONNECT_STREAM_PROTO,
            }
        );
        let finished = stream.finish().await;
        assert!(finished.pid.is_some_and(|pid| pid > 0));
        assert_eq!(finished.stdout, b"out\n");
        assert_eq!(finished.stderr, b"err\n");
        let end = finished.end.as_ref().expect("end event");
        assert_eq!(
            (end.exit_code, end.exited, end.status.as_str()),
            (3, true, "exit status 3")
        );
        assert!(finished.ended && finished.error.is_none());
    }

    // Many chunks, each stream in order.
    let finished = agent
        .start(&sh(
            "i=0; while [ $i -lt 200 ]; do echo o$i; echo e$i >&2; i=$((i+1)); done",
        ))
        .await
        .finish()
        .await;
    let expected = |prefix: &str| -> Vec<u8> {
        (0..200)
            .map(|i| format!("{prefix}{i}\n"))
            .collect::<String>()
            .into_bytes()
    };
    assert_eq!(finished.stdout, expected("o"));
    assert_eq!(finished.stderr, expected("e"));
    assert_eq!(finished.end.map(|e| e.exit_code), Some(0));
}

#[tokio::test]
async fn output_streams_before_exit_with_keepalives() {
    let agent = Agent::spawn().await;
    let started = Instant::now();
    let mut stream = agent.start(&sh("echo first; sleep 3; echo second")).await;
    stream.pid().await;
    match stream.next_real().await {
        ProcessEvent::Data(DataEvent::Stdout(bytes)) => assert_eq!(&bytes.0[..], b"first\n"),
        other => panic!("expected stdout, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "output was held back until exit"
    );
    let rest = stream.finish().await;
    assert_eq!(rest.stdout, b"second\n");
    // The agent was started with a 200 ms keepalive interval.
    assert!(rest.keepalives >= 3, "{} keepalives", rest.keepalives);

    // envd's Keepalive-Ping-Interval header (seconds) overrides it per stream.
    let stream = agent
        .stream_with(
            Codec::Json,
            PROCESS_START_PATH,
            &sh("sleep 1.5"),
            &[("keepalive-ping-interval", "1")],
        )
        .await;
    let finished = stream.finish().await;
    assert_eq!(finished.keepalives, 1, "one keepalive in 1.5 s at 1 s");
}

#[tokio::test]
async fn envs_cwd_and_defaults() {
    let agent = Agent::spawn().await;
    let cwd = agent.dir.path().canonicalize().expect("canonical dir");
    let mut request = sh("echo \"$GREETING\"; pwd");
    request
        .process
        .envs
        .insert("GREETING".into(), "hello there".into());
    request.process.cwd = Some(cwd.display().to_string());
    let finished = agent.start(&request).await.finish().await;
    assert_eq!(
        String::from_utf8_lossy(&finished.stdout),
        format!("hello there\n{}\n", cwd.display())
    );

    // Without a cwd, processes start in the user's home (as envd); HOME, USER and
    // LOGNAME are the user's.
    let home = std::env::var("HOME").unwrap_or_else(|_| "/".into());
    let mut request = sh("pwd; echo $HOME; test -n \"$USER\" && echo user-set");
    request.stdin = Some(false);
    let finished = agent.start(&request).await.finish().await;
    let out = String::from_utf8_lossy(&finished.stdout).into_owned();
    let mut lines = out.lines();
    let pwd = lines.next().expect("pwd");
    assert!(pwd == home || pwd == "/", "{out}");
    assert_eq!(lines.next(), Some(home.as_str()));
    assert_eq!(lines.next(), Some("user-set"));
}

#[tokio::test]
async fn stdin_is_a_pipe_by_default_and_null_when_disabled() {
    let agent = Agent::spawn().await;
    // stdin: false → /dev/null: `cat` sees EOF at once.
    let mut request = sh("cat; echo done");
    request.stdin = Some(false);
    let finished = agent.start(&request).await.finish().await;
    assert_eq!(finished.stdout, b"done\n");

    // Absent → a pipe (envd's default): input reaches the process, CloseStdin ends it.
    let mut stream = agent.start(&command("cat", &[])).await;
    let pid = stream.pid().await;
    for codec in [Codec::Json, Codec::Proto] {
        let sent: Result<Empty, _> = agent
            .unary(
                codec,
                PROCESS_SEND_INPUT_PATH,
                &SendInputRequest {
                    process: Some(ProcessSelector::Pid(pid)),
                    input: Some(ProcessInput::Stdin(Base64Bytes(b"ping\n".to_vec()))),
                },
            )
            .await;
        sent.expect("send input");
        match stream.next_real().await {
            ProcessEvent::Data(DataEvent::Stdout(bytes)) => assert_eq!(&bytes.0[..], b"ping\n"),
            other => panic!("expected the echo, got {other:?}"),
        }
    }
    // pty input to a pipe process is refused.
    let wrong: Result<Empty, _> = agent
        .unary(
            Codec::Json,
            PROCESS_SEND_INPUT_PATH,
            &SendInputRequest {
                process: Some(ProcessSelector::Pid(pid)),
                input: Some(ProcessInput::Pty(Base64Bytes(b"x".to_vec()))),
            },
        )
        .await;
    assert_eq!(
        wrong.map_err(|e| e.1.code).err().as_deref(),
        Some(code::FAILED_PRECONDITION)
    );
    let closed: Empty = agent
        .unary(
            Codec::Proto,
            PROCESS_CLOSE_STDIN_PATH,
            &ConnectRequest {
                process: Some(ProcessSelector::Pid(pid)),
            },
        )
        .await
        .expect("close stdin");
    assert_eq!(closed, Empty {});
    let finished = stream.finish().await;
    assert_eq!(finished.end.map(|e| e.exit_code), Some(0), "cat saw EOF");
}

#[tokio::test]
async fn stream_input_is_a_client_stream() {
    let agent = Agent::spawn().await;
    let mut request = command("cat", &[]);
    request.tag = Some("catter".into());
    let mut stream = agent.start(&request).await;
    stream.pid().await;
    for codec in [Codec::Proto, Codec::Json] {
        let mut body = Vec::new();
        let messages = [
            StreamInputRequest::Start(StreamInputStart {
                process: Some(ProcessSelector::Tag("catter".into())),
            }),
            StreamInputRequest::Keepalive(KeepAlive {}),
            StreamInputRequest::Data(StreamInputData {
                input: Some(ProcessInput::Stdin(Base64Bytes(b"one ".to_vec()))),
            }),
            StreamInputRequest::Data(StreamInputData {
                input: Some(ProcessInput::Stdin(Base64Bytes(b"two\n".to_vec()))),
            }),
        ];
        for message in &messages {
            body.extend(envelope(0, &codec.encode(message)));
        }
        let response = agent
            .request(
                Method::POST,
                PROCESS_STREAM_INPUT_PATH,
                &[("content-type", codec.stream_content_type())],
                body,
            )
            .await;
        let mut response = Stream::new(response, codec);
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(response.next_message::<Empty>().await, Ok(Empty {}));
        assert!(
            matches!(response.next().await, Some(Message::EndOfStream(end)) if end.error.is_none())
        );
        let mut got = Vec::new();
        while got != b"one two\n" {
            match stream.next_real().await {
                ProcessEvent::Data(DataEvent::Stdout(bytes)) => got.extend(bytes.0),
                other => panic!("expected output, got {other:?}"),
            }
        }
    }
    // Data before the start message is refused in the end-of-stream message.
    let body = envelope(
        0,
        &Codec::Json.encode(&StreamInputRequest::Data(StreamInputData::default())),
    );
    let response = agent
        .request(
            Method::POST,
            PROCESS_STREAM_INPUT_PATH,
            &[("content-type", CONNECT_STREAM_JSON)],
            body,
        )
        .await;
    let mut response = Stream::new(response, Codec::Json);
    assert_eq!(
        response
            .next_message::<Empty>()
            .await
            .map_err(|e| e.map(|e| e.code)),
        Err(Some(code::FAILED_PRECONDITION.into()))
    );
    signal(
        &agent,
        ProcessSelector::Tag("catter".into()),
        Signal::Sigkill,
    )
    .await
    .expect("kill");
    stream.finish().await;
}

#[tokio::test]
async fn connect_reattaches_by_pid_and_tag() {
    let agent = Agent::spawn().await;
    let mut request = sh("read line; echo got $line; read line; echo again $line");
    request.tag = Some("reader".into());
    let mut first = agent.start(&request).await;
    let pid = first.pid().await;
    // The first client goes away; the process stays.
    drop(first);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(list(&agent).await.contains(&pid));

    let mut by_pid = agent
        .stream(
            Codec::Proto,
            PROCESS_CONNECT_PATH,
            &ConnectRequest {
                process: Some(ProcessSelector::Pid(pid)),
            },
        )
        .await;
    assert_eq!(
        by_pid.pid().await,
        pid,
        "Connect starts with the start event"
    );
    let mut by_tag = agent
        .stream(
            Codec::Json,
            PROCESS_CONNECT_PATH,
            &ConnectRequest {
                process: Some(ProcessSelector::Tag("reader".into())),
            },
        )
        .await;
    assert_eq!(by_tag.pid().await, pid);
    let input = |text: &str| SendInputRequest {
        process: Some(ProcessSelector::Pid(pid)),
        input: Some(ProcessInput::Stdin(Base64Bytes(text.as_bytes().to_vec()))),
    };
    let _: Empty = agent
        .unary(Codec::Json, PROCESS_SEND_INPUT_PATH, &input("a\n"))
        .await
        .expect("input");
    for stream in [&mut by_pid, &mut by_tag] {
        match stream.next_real().await {
            ProcessEvent::Data(DataEvent::Stdout(bytes)) => assert_eq!(&bytes.0[..], b"got a\n"),
            other => panic!("{other:?}"),
        }
    }
    drop(by_tag);
    let _: Empty = agent
        .unary(Codec::Json, PROCESS_SEND_INPUT_PATH, &input("b\n"))
        .await
        .expect("input");
    let rest = by_pid.finish().await;
    assert_eq!(rest.stdout, b"again b\n");
    assert_eq!(rest.end.map(|e| e.exit_code), Some(0));

    // Unknown pid or tag: a not_found stream error.
    let missing = agent
        .stream(
            Codec::Json,
            PROCESS_CONNECT_PATH,
            &ConnectRequest {
                process: Some(ProcessSelector::Pid(pid)),
            },
        )
        .await
        .finish()
        .await;
    assert_eq!(missing.code(), Some(code::NOT_FOUND));
}

#[tokio::test]
async fn pty_echo_and_resize() {
    let agent = Agent::spawn().await;
    let mut request = command("sh", &[]);
    request.pty = Some(Pty {
        size: PtySize { cols: 80, rows: 24 },
    });
    let mut stream = agent.start(&request).await;
    let pid = stream.pid().await;
    let type_in = |text: &str| SendInputRequest {
        process: Some(ProcessSelector::Pid(pid)),
        input: Some(ProcessInput::Pty(Base64Bytes(text.as_bytes().to_vec()))),
    };
    let mut screen = Vec::new();
    async fn read_until(stream: &mut Stream, screen: &mut Vec<u8>, needle: &str) {
        while !String::from_utf8_lossy(screen).contains(needle) {
            let next = tokio::time::timeout(Duration::from_secs(30), stream.next_real())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "no {needle:?} after 30 s; the terminal shows {:?}",
                        String::from_utf8_lossy(screen)
                    )
                });
            match next {
                ProcessEvent::Data(DataEvent::Pty(bytes)) => screen.extend(bytes.0),
                other => panic!(
                    "expected pty output, got {other:?} after {:?}",
                    String::from_utf8_lossy(screen)
                ),
            }
        }
    }
    let _: Empty = agent
        .unary(
            Codec::Proto,
            PROCESS_SEND_INPUT_PATH,
            &type_in("echo hi; tty; echo $TERM\n"),
        )
        .await
        .expect("type");
    // The output lines, not the echoed command line (which the shell's first
    // prompt may follow on the same line when the typing came before it).
    read_until(&mut stream, &mut screen, "hi\r\n/dev/pts/").await;
    read_until(&mut stream, &mut screen, "xterm-256color\r\n").await;

    let _: Empty = agent
        .unary(
            Codec::Json,
            PROCESS_UPDATE_PATH,
            &UpdateRequest {
                process: Some(ProcessSelector::Pid(pid)),
                pty: Some(Pty {
                    size: PtySize {
                        cols: 100,
                        rows: 40,
                    },
                }),
            },
        )
        .await
        .expect("resize");
    let _: Empty = agent
        .unary(
            Codec::Json,
            PROCESS_SEND_INPUT_PATH,
            &type_in("stty size\n"),
        )
        .await
        .expect("type");
    read_until(&mut stream, &mut screen, "40 100").await;

    // stdin input and CloseStdin are for pipes only.
    let stdin: Result<Empty, _> = agent
        .unary(
            Codec::Json,
            PROCESS_SEND_INPUT_PATH,
            &SendInputRequest {
                process: Some(ProcessSelector::Pid(pid)),
                input: Some(ProcessInput::Stdin(Base64Bytes(b"x".to_vec()))),
            },
        )
        .await;
    assert_eq!(
        stdin.map_err(|e| e.1.code).err().as_deref(),
        Some(code::FAILED_PRECONDITION)
    );

    // Ctrl-D at an empty prompt ends the shell.
    let _: Empty = agent
        .unary(Codec::Json, PROCESS_SEND_INPUT_PATH, &type_in("\x04"))
        .await
        .expect("ctrl-d");
    let finished = stream.finish().await;
    assert_eq!(finished.end.map(|e| e.exit_code), Some(0));
}

#[tokio::test]
async fn spawn_failures_are_connect_errors() {
    let agent = Agent::spawn().await;
    let finished = agent
        .start(&command("definitely-not-a-command-aetherium", &[]))
        .await
        .finish()
        .await;
    assert_eq!(finished.pid, None, "no start event");
    assert_eq!(finished.code(), Some(code::NOT_FOUND));

    let mut request = command("true", &[]);
    request.process.cwd = Some(agent.path("missing"));
    let finished = agent.start(&request).await.finish().await;
    assert_eq!(finished.pid, None);
    assert_eq!(finished.code(), Some(code::INVALID_ARGUMENT));
}

#[tokio::test]
async fn malformed_requests_get_connect_errors() {
    let agent = Agent::spawn().await;
    let raw_start = |body: Vec<u8>, content_type: &'static str| {
        let agent = &agent;
        async move {
            let response = agent
                .request(
                    Method::POST,
                    PROCESS_START_PATH,
                    &[("content-type", content_type)],
                    body,
                )
                .await;
            Stream::new(response, Codec::Json).finish().await
        }
    };
    // JSON without an envelope.
    let finished = raw_start(
        br#"{"process":{"cmd":"true"}}"#.to_vec(),
        CONNECT_STREAM_JSON,
    )
    .await;
    assert_eq!(finished.code(), Some(code::INVALID_ARGUMENT));
    // An envelope around broken JSON, or broken protobuf.
    let finished = raw_start(envelope(0, b"{\"process\":"), CONNECT_STREAM_JSON).await;
    assert_eq!(finished.code(), Some(code::INVALID_ARGUMENT));
    let finished = raw_start(envelope(0, &[0x0a, 0x7f, 0x01]), CONNECT_STREAM_PROTO).await;
    assert_eq!(finished.code(), Some(code::INVALID_ARGUMENT));
    // A compressed message without negotiated compression.
    let finished = raw_start(envelope(1, b"{}"), CONNECT_STREAM_JSON).await;
    assert_eq!(finished.code(), Some(code::INVALID_ARGUMENT));
    // A header announcing 2 GiB: refused without reading (or allocating) it.
    let finished = raw_start(vec![0, 0x7f, 0xff, 0xff, 0xff, b'{'], CONNECT_STREAM_JSON).await;
    assert_eq!(finished.code(), Some(code::RESOURCE_EXHAUSTED));
    // gzip is not negotiable: unimplemented.
    let response = agent
        .request(
            Method::POST,
            PROCESS_START_PATH,
            &[
                ("content-type", CONNECT_STREAM_JSON),
                ("connect-content-encoding", "gzip"),
            ],
            envelope(0, b"{}"),
        )
        .await;
    let finished = Stream::new(response, Codec::Json).finish().await;
    assert_eq!(finished.code(), Some(code::UNIMPLEMENTED));
    // Wrong content type.
    let response = agent
        .request(
            Method::POST,
            PROCESS_START_PATH,
            &[("content-type", "application/json")],
            b"{}".to_vec(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // Unary calls: bad JSON is a 400 with a Connect error body.
    let response = agent
        .request(
            Method::POST,
            PROCESS_SEND_SIGNAL_PATH,
            &[("content-type", "application/json")],
            b"{nope".to_vec(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let error: aetherium_types::agent::ConnectError =
        serde_json::from_slice(&collect(response).await).expect("ConnectError");
    assert_eq!(error.code, code::INVALID_ARGUMENT);
    // The agent is still fine.
    let health = agent.request(Method::GET, "/health", &[], Vec::new()).await;
    assert_eq!(health.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn send_signal_kills_the_process_group() {
    let agent = Agent::spawn().await;
    let mut stream = agent.start(&sh("sleep 60 & sleep 60; echo never")).await;
    let pid = stream.pid().await;
    assert_eq!(list(&agent).await, vec![pid]);

    signal(&agent, ProcessSelector::Pid(pid), Signal::Sigkill)
        .await
        .expect("signal");
    let finished = stream.finish().await;
    assert_eq!(finished.stdout, b"");
    let end = finished.end.expect("end event");
    assert_eq!(
        (end.exit_code, end.exited, end.status.as_str()),
        (-1, false, "signal: killed")
    );
    assert!(list(&agent).await.is_empty());

    // By tag, with SIGTERM.
    let mut request = command("sleep", &["60"]);
    request.tag = Some("napper".into());
    let mut stream = agent.start(&request).await;
    stream.pid().await;
    signal(
        &agent,
        ProcessSelector::Tag("napper".into()),
        Signal::Sigterm,
    )
    .await
    .expect("signal");
    let end = stream.finish().await.end.expect("end event");
    assert_eq!(end.status, "signal: terminated");

    // Unknown pid: 404 with a Connect error; unspecified signal: 400.
    let (status, error) = signal(&agent, ProcessSelector::Pid(pid), Signal::Sigkill)
        .await
        .expect_err("gone");
    assert_eq!(
        (status, error.code.as_str()),
        (StatusCode::NOT_FOUND, code::NOT_FOUND)
    );
    let (status, _) = signal(&agent, ProcessSelector::Pid(pid), Signal::Unspecified)
        .await
        .expect_err("unspecified");
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_process_ignoring_sigterm_dies_of_sigkill() {
    let agent = Agent::spawn().await;
    let mut stream = agent
        .start(&sh(
            "trap '' TERM; echo armed; while true; do sleep 0.1; done",
        ))
        .await;
    let pid = stream.pid().await;
    assert!(matches!(stream.next_real().await, ProcessEvent::Data(_)));
    signal(&agent, ProcessSelector::Pid(pid), Signal::Sigterm)
        .await
        .expect("sigterm");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(list(&agent).await.contains(&pid), "SIGTERM was ignored");
    signal(&agent, ProcessSelector::Pid(pid), Signal::Sigkill)
        .await
        .expect("sigkill");
    let end = stream.finish().await.end.expect("end");
    assert_eq!(end.status, "signal: killed");
    wait_until_gone(&agent, pid).await;
}

#[tokio::test]
async fn connect_timeout_ms_bounds_the_process() {
    let agent = Agent::spawn().await;
    let started = Instant::now();
    let finished = agent
        .stream_with(
            Codec::Json,
            PROCESS_START_PATH,
            &command("sleep", &["30"]),
            &[("connect-timeout-ms", "300")],
        )
        .await
        .finish()
        .await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        finished.end.map(|e| e.status).as_deref(),
        Some("signal: killed")
    );
}

#[tokio::test]
async fn survives_clients_that_disconnect_mid_stream() {
    let agent = Agent::spawn().await;

    // A flood of output: after the client leaves, the agent must keep draining it or
    // the process would block forever on a full pipe.
    let mut request = sh("head -c 50000000 /dev/zero; echo done");
    request.tag = Some("flood".into());
    let mut stream = agent.start(&request).await;
    let flood = stream.pid().await;
    assert!(matches!(stream.next_event().await, ProcessEvent::Data(_)));
    drop(stream);

    // A quiet process outlives its connection too.
    let mut stream = agent.start(&sh("sleep 0.5; echo late")).await;
    let quiet = stream.pid().await;
    drop(stream);
    assert!(list(&agent).await.contains(&quiet));

    wait_until_gone(&agent, flood).await;
    wait_until_gone(&agent, quiet).await;
    let finished = agent.start(&sh("echo still here")).await.finish().await;
    assert_eq!(finished.stdout, b"still here\n");
}

#[tokio::test]
async fn a_background_grandchild_does_not_hold_the_stream_open() {
    let agent = Agent::spawn().await;
    let started = Instant::now();
    // The backgrounded sleep inherits stdout and stderr and keeps them open.
    let finished = agent.start(&sh("sleep 30 & echo hi")).await.finish().await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(finished.stdout, b"hi\n");
    assert_eq!(finished.end.map(|e| e.exit_code), Some(0));
    // Clean up the sleep: it is in the group the agent made for sh.
    let pgid = finished
        .pid
        .and_then(|pid| rustix::process::Pid::from_raw(pid as i32))
        .expect("pid");
    let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
}

#[tokio::test]
async fn list_shows_running_processes_with_their_config() {
    let agent = Agent::spawn().await;
    let mut request = command("sleep", &["60"]);
    request.tag = Some("listed".into());
    let mut stream = agent.start(&request).await;
    let pid = stream.pid().await;
    for codec in [Codec::Json, Codec::Proto] {
        let list: ListResponse = agent
            .unary(codec, PROCESS_LIST_PATH, &Empty {})
            .await
            .expect("list");
        assert_eq!(list.processes.len(), 1);
        assert_eq!(list.processes[0].pid, pid);
        assert_eq!(list.processes[0].tag.as_deref(), Some("listed"));
        assert_eq!(list.processes[0].config, request.process);
    }
    signal(&agent, ProcessSelector::Pid(pid), Signal::Sigkill)
        .await
        .expect("kill");
    stream.finish().await;
}

#[tokio::test]
async fn speaks_h2c() {
    let agent = Agent::spawn().await;
    let stream = tokio::net::UnixStream::connect(&agent.socket)
        .await
        .expect("connect");
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    let request = http::Request::builder()
        .method(Method::POST)
        .uri("http://localhost/process.Process/Start")
        .header("content-type", CONNECT_STREAM_PROTO)
        .body(http_body_util::Full::new(bytes::Bytes::from(envelope(
            0,
            &Codec::Proto.encode(&sh("echo over h2")),
        ))))
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    assert_eq!(response.version(), http::Version::HTTP_2);
    let finished = Stream::new(response, Codec::Proto).finish().await;
    assert_eq!(finished.stdout, b"over h2\n");
}
