use std::collections::BTreeMap;

use proptest::prelude::*;
use prost::Message as _;

use super::*;

fn roundtrip<M: WireMessage + PartialEq + std::fmt::Debug>(message: &M) {
    for codec in [Codec::Proto, Codec::Json] {
        let bytes = codec.encode(message);
        let back: M = codec.decode(&bytes).expect("decode what we encoded");
        assert_eq!(
            &back,
            message,
            "{codec:?}: {}",
            String::from_utf8_lossy(&bytes)
        );
    }
}

#[test]
fn events_use_protobuf_json_names() {
    let end = StartResponse {
        event: Some(ProcessEvent::End(EndEvent {
            exit_code: 3,
            exited: true,
            status: "exit status 3".into(),
            error: None,
        })),
    };
    let json = serde_json::to_value(&end).expect("serialize");
    assert_eq!(json["event"]["end"]["exitCode"], 3);
    let data: StartResponse =
        serde_json::from_str(r#"{"event":{"data":{"stdout":"aGk="}}}"#).expect("parse");
    assert_eq!(
        data.event,
        Some(ProcessEvent::Data(DataEvent::Stdout(b"hi".to_vec().into())))
    );
    // proto3 JSON may omit default values, and use the proto field names.
    let end: StartResponse =
        serde_json::from_str(r#"{"event":{"end":{"exited":true,"exit_code":"-2"}}}"#)
            .expect("parse with omitted defaults");
    assert!(matches!(
        end.event,
        Some(ProcessEvent::End(EndEvent { exit_code: -2, .. }))
    ));
}

#[test]
fn binary_encoding_matches_the_proto_spec() {
    // StartResponse{event: ProcessEvent{start: StartEvent{pid: 42}}}
    let start = StartResponse {
        event: Some(ProcessEvent::Start(StartEvent { pid: 42 })),
    };
    assert_eq!(start.encode_to_vec(), [0x0a, 0x04, 0x0a, 0x02, 0x08, 42]);
    // EndEvent.exit_code is sint32: -1 zigzags to 1.
    let end = ProcessEvent::End(EndEvent {
        exit_code: -1,
        exited: false,
        status: "x".into(),
        error: None,
    });
    assert_eq!(
        prost::Message::encode_to_vec(&end),
        [0x1a, 0x05, 0x08, 0x01, 0x1a, 0x01, b'x']
    );
    // ProcessSelector{tag: "t"}, in a SendSignalRequest with SIGKILL (9).
    let signal = SendSignalRequest {
        process: Some(ProcessSelector::Tag("t".into())),
        signal: Signal::Sigkill as i32,
    };
    assert_eq!(
        signal.encode_to_vec(),
        [0x0a, 0x03, 0x12, 0x01, b't', 0x10, 0x09]
    );
    assert_eq!(signal.signal(), Signal::Sigkill);
    // DataEvent{pty: "a"} inside ProcessEvent (field 2).
    let data = ProcessEvent::Data(DataEvent::Pty(b"a"[..].into()));
    assert_eq!(
        prost::Message::encode_to_vec(&data),
        [0x12, 0x03, 0x1a, 0x01, b'a']
    );
    // StreamInputRequest.DataEvent carries its input as field 2.
    let input = StreamInputRequest::Data(StreamInputData {
        input: Some(ProcessInput::Stdin(Base64Bytes(b"z".to_vec()))),
    });
    assert_eq!(
        prost::Message::encode_to_vec(&input),
        [0x12, 0x05, 0x12, 0x03, 0x0a, 0x01, b'z']
    );
    // A oneof message with a field we do not know is still read.
    let unknown_then_pid = [0x28, 0x01, 0x08, 0x07];
    assert_eq!(
        Codec::Proto.decode::<ProcessSelector>(&unknown_then_pid),
        Ok(ProcessSelector::Pid(7))
    );
}

#[test]
fn split_data_responses_encode_like_whole_ones() {
    for len in [0usize, 1, 127, 128, 300, 16_383, 16_384, 131_072, 2_200_000] {
        let payload = bytes::Bytes::from(vec![7u8; len]);
        for data in [
            DataEvent::Stdout(Base64Bytes(payload.clone())),
            DataEvent::Stderr(Base64Bytes(payload.clone())),
            DataEvent::Pty(Base64Bytes(payload.clone())),
        ] {
            let mut prefix = Vec::new();
            let rest = data.encode_response_split(&mut prefix);
            assert!(prefix.len() <= 20, "{len}: prefix of {}", prefix.len());
            assert_eq!(
                rest.as_ptr(),
                payload.as_ptr(),
                "the chunk itself, not a copy"
            );
            prefix.extend_from_slice(&rest);
            let whole = StartResponse {
                event: Some(ProcessEvent::Data(data)),
            };
            assert_eq!(prefix, Codec::Proto.encode(&whole), "{len}");
        }
    }
}

#[test]
fn decoding_from_bytes_slices_output_chunks() {
    let response = StartResponse {
        event: Some(ProcessEvent::Data(DataEvent::Stdout(
            vec![1u8; 1000].into(),
        ))),
    };
    let encoded = bytes::Bytes::from(Codec::Proto.encode(&response));
    let decoded: StartResponse = Codec::Proto.decode_buf(encoded.clone()).expect("decode");
    assert_eq!(decoded, response);
    let Some(ProcessEvent::Data(data)) = decoded.event else {
        unreachable!()
    };
    let range = encoded.as_ptr_range();
    assert!(
        range.contains(&data.bytes().as_ptr()),
        "a slice, not a copy"
    );
    // The JSON codec goes through the same entry point.
    let json = bytes::Bytes::from(Codec::Json.encode(&response));
    assert_eq!(Codec::Json.decode_buf::<StartResponse>(json), Ok(response));
    assert_eq!(
        Codec::Proto
            .decode_buf::<StartResponse>(bytes::Bytes::from_static(&[0x0a, 0x7f]))
            .map_err(|e| e.code),
        Err(code::INVALID_ARGUMENT.to_string())
    );
}

#[test]
fn enveloped_encoding_matches_envelope() {
    let messages = [
        StartResponse {
            event: Some(ProcessEvent::Start(StartEvent { pid: 9 })),
        },
        StartResponse::default(),
        StartResponse {
            event: Some(ProcessEvent::Data(DataEvent::Stdout(
                vec![3u8; 70_000].into(),
            ))),
        },
    ];
    for codec in [Codec::Proto, Codec::Json] {
        for message in &messages {
            assert_eq!(
                codec.encode_enveloped(CONNECT_END_STREAM_FLAG, message),
                envelope(CONNECT_END_STREAM_FLAG, &codec.encode(message))
            );
        }
    }
}

/// Bytes and JSON produced by the `e2b` Python SDK's own message classes (2.63).
#[test]
fn matches_the_e2b_sdk_encoding() {
    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
    let start = StartRequest {
        process: ProcessConfig {
            cmd: "sh".into(),
            args: vec!["-c".into(), "x".into()],
            envs: BTreeMap::from([("A".into(), "1".into())]),
            cwd: Some("/t".into()),
        },
        pty: Some(Pty {
            size: PtySize { cols: 80, rows: 24 },
        }),
        tag: Some("t".into()),
        stdin: Some(false),
    };
    assert_eq!(
        hex(&start.encode_to_vec()),
        "0a170a02736812022d631201781a060a014112013122022f7412060a04085010181a01742000"
    );
    let sdk_json = r#"{"process":{"cmd":"sh","args":["-c","x"],"envs":{"A":"1"},"cwd":"/t"},"pty":{"size":{"cols":80,"rows":24}},"tag":"t","stdin":false}"#;
    assert_eq!(
        Codec::Json.decode::<StartRequest>(sdk_json.as_bytes()),
        Ok(start)
    );
    let end = StartResponse {
        event: Some(ProcessEvent::End(EndEvent {
            exit_code: -1,
            exited: false,
            status: "x".into(),
            error: Some("e".into()),
        })),
    };
    assert_eq!(hex(&end.encode_to_vec()), "0a0a1a0808011a0178220165");
    assert_eq!(
        Codec::Json.decode::<StartResponse>(
            br#"{"event":{"end":{"exitCode":-1,"status":"x","error":"e"}}}"#
        ),
        Ok(end)
    );
}

#[test]
fn every_message_roundtrips_through_both_codecs() {
    let config = ProcessConfig {
        cmd: "sh".into(),
        args: vec!["-c".into(), "echo hi".into()],
        envs: BTreeMap::from([("A".into(), "1".into()), ("B".into(), "".into())]),
        cwd: Some("/tmp".into()),
    };
    roundtrip(&StartRequest {
        process: config.clone(),
        pty: Some(Pty {
            size: PtySize { cols: 80, rows: 24 },
        }),
        tag: Some("t".into()),
        stdin: Some(false),
    });
    roundtrip(&StartRequest::default());
    for event in [
        ProcessEvent::Start(StartEvent { pid: 7 }),
        ProcessEvent::Data(DataEvent::Stdout(vec![0, 255, 10].into())),
        ProcessEvent::Data(DataEvent::Stderr(b"e"[..].into())),
        ProcessEvent::Data(DataEvent::Pty(Vec::new().into())),
        ProcessEvent::End(EndEvent {
            exit_code: -1,
            exited: false,
            status: "signal: killed".into(),
            error: Some("signal: killed".into()),
        }),
        ProcessEvent::Keepalive(KeepAlive {}),
    ] {
        roundtrip(&StartResponse { event: Some(event) });
    }
    roundtrip(&ListResponse {
        processes: vec![ProcessInfo {
            config,
            pid: 3,
            tag: None,
        }],
    });
    roundtrip(&SendInputRequest {
        process: Some(ProcessSelector::Pid(9)),
        input: Some(ProcessInput::Pty(Base64Bytes(b"ls\n".to_vec()))),
    });
    roundtrip(&UpdateRequest {
        process: Some(ProcessSelector::Tag("x".into())),
        pty: Some(Pty {
            size: PtySize { cols: 1, rows: 2 },
        }),
    });
    roundtrip(&StreamInputRequest::Start(StreamInputStart {
        process: Some(ProcessSelector::Pid(1)),
    }));
    roundtrip(&StreamInputRequest::Keepalive(KeepAlive {}));
    roundtrip(&ConnectRequest {
        process: Some(ProcessSelector::Pid(u32::MAX)),
    });
    roundtrip(&SendSignalRequest {
        process: Some(ProcessSelector::Pid(1)),
        signal: Signal::Sigterm as i32,
    });

    let entry = EntryInfo {
        name: "f".into(),
        r#type: FileType::Symlink as i32,
        path: "/tmp/f".into(),
        size: i64::MAX,
        mode: 0o644,
        permissions: "Lrwxrwxrwx".into(),
        owner: "root".into(),
        group: "root".into(),
        modified_time: Some(Timestamp {
            seconds: 1_700_000_000,
            nanos: 5,
        }),
        symlink_target: Some("/etc/passwd".into()),
    };
    roundtrip(&EntryResponse {
        entry: Some(entry.clone()),
    });
    roundtrip(&ListDirResponse {
        entries: vec![entry.clone(), EntryInfo::default()],
    });
    roundtrip(&MoveRequest {
        source: "a".into(),
        destination: "b".into(),
    });
    roundtrip(&ListDirRequest {
        path: "/".into(),
        depth: 3,
    });
    roundtrip(&WatchDirRequest {
        path: "/".into(),
        recursive: true,
        include_entry: true,
    });
    for event in [
        WatchDirResponse::Start(KeepAlive {}),
        WatchDirResponse::Filesystem(FilesystemEvent {
            name: "a/b".into(),
            r#type: EventType::Chmod as i32,
            entry: Some(entry),
        }),
        WatchDirResponse::Keepalive(KeepAlive {}),
    ] {
        roundtrip(&event);
    }
    roundtrip(&CreateWatcherResponse {
        watcher_id: "w1".into(),
    });
}

#[test]
fn json_follows_the_mapping() {
    let entry = EntryInfo {
        r#type: FileType::Directory as i32,
        size: 5,
        modified_time: Some(Timestamp {
            seconds: 0,
            nanos: 500_000_000,
        }),
        ..EntryInfo::default()
    };
    let json = serde_json::to_value(&entry).expect("json");
    assert_eq!(json["type"], "FILE_TYPE_DIRECTORY");
    assert_eq!(json["size"], "5", "int64 is a string");
    assert_eq!(json["modifiedTime"], "1970-01-01T00:00:00.500Z");
    let back: EntryInfo = serde_json::from_str(
        r#"{"type":2,"size":5,"modified_time":"1970-01-01T01:00:00.5+01:00","mode":"420"}"#,
    )
    .expect("lenient forms");
    assert_eq!(back.r#type, FileType::Directory as i32);
    assert_eq!(back.modified_time, entry.modified_time);
    assert_eq!(back.mode, 420);
    let signal: SendSignalRequest =
        serde_json::from_str(r#"{"process":{"pid":"12"},"signal":"SIGNAL_SIGKILL"}"#)
            .expect("signal by name");
    assert_eq!(signal.process, Some(ProcessSelector::Pid(12)));
    assert_eq!(signal.signal(), Signal::Sigkill);
    let signal: SendSignalRequest =
        serde_json::from_str(r#"{"signal":15}"#).expect("signal by number");
    assert_eq!(signal.signal(), Signal::Sigterm);
    assert!(serde_json::from_str::<SendSignalRequest>(r#"{"signal":"SIGHUP"}"#).is_err());
    assert_eq!(
        serde_json::to_value(&signal).expect("json"),
        serde_json::json!({"signal": "SIGNAL_SIGTERM"})
    );
    // Unknown fields are ignored (forward compatibility).
    assert_eq!(
        Codec::Json.decode::<ListDirRequest>(br#"{"path":"/x","future":1}"#),
        Ok(ListDirRequest {
            path: "/x".into(),
            depth: 0
        })
    );
    // An empty body is the empty message in both codecs.
    assert_eq!(Codec::Json.decode::<Empty>(b""), Ok(Empty {}));
    assert_eq!(Codec::Proto.decode::<Empty>(b""), Ok(Empty {}));
}

#[test]
fn malformed_messages_are_invalid_argument() {
    let code = |r: Result<StartRequest, ConnectError>| r.map(|_| ()).map_err(|e| e.code);
    let invalid = Err(code::INVALID_ARGUMENT.to_string());
    assert_eq!(code(Codec::Json.decode(b"{\"process\":")), invalid);
    assert_eq!(
        code(Codec::Json.decode(b"{\"process\":{\"cmd\":7}}")),
        invalid
    );
    // A length prefix running past the end, a bad wire type, a truncated varint.
    assert_eq!(code(Codec::Proto.decode(&[0x0a, 0x10, 0x0a])), invalid);
    assert_eq!(code(Codec::Proto.decode(&[0x0f])), invalid);
    assert_eq!(code(Codec::Proto.decode(&[0x20, 0xff])), invalid);
}

#[test]
fn envelopes_split_only_when_complete_and_bounded() {
    let mut buf = envelope(0, b"{}");
    buf.extend_from_slice(&envelope(CONNECT_END_STREAM_FLAG, b"{}")[..3]);
    assert_eq!(take_envelope(&mut buf), Ok(Some((0, b"{}".to_vec()))));
    assert_eq!(take_envelope(&mut buf), Ok(None));
    let mut huge = vec![0, 0xff, 0xff, 0xff, 0xff];
    assert!(take_envelope(&mut huge).is_err());
    assert_eq!(envelope_header(&[2, 0, 0, 0]), Ok(None));
    assert_eq!(envelope_header(&[2, 0, 0, 1, 0]), Ok(Some((2, 256))));
}

/// Every message type the agent decodes from a peer.
fn decode_all(codec: Codec, bytes: &[u8]) -> Vec<Result<(), ConnectError>> {
    fn one<M: WireMessage>(codec: Codec, bytes: &[u8]) -> Result<(), ConnectError> {
        codec.decode::<M>(bytes).map(|_| ())
    }
    vec![
        one::<StartRequest>(codec, bytes),
        one::<StartResponse>(codec, bytes),
        one::<ConnectRequest>(codec, bytes),
        one::<UpdateRequest>(codec, bytes),
        one::<SendInputRequest>(codec, bytes),
        one::<StreamInputRequest>(codec, bytes),
        one::<SendSignalRequest>(codec, bytes),
        one::<ListResponse>(codec, bytes),
        one::<Empty>(codec, bytes),
        one::<PathRequest>(codec, bytes),
        one::<MoveRequest>(codec, bytes),
        one::<ListDirRequest>(codec, bytes),
        one::<ListDirResponse>(codec, bytes),
        one::<WatchDirRequest>(codec, bytes),
        one::<WatchDirResponse>(codec, bytes),
        one::<EntryResponse>(codec, bytes),
        one::<GetWatcherEventsResponse>(codec, bytes),
        one::<CreateWatcherResponse>(codec, bytes),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Arbitrary bytes: decoded or refused with invalid_argument, never a panic.
    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        for codec in [Codec::Proto, Codec::Json] {
            for result in decode_all(codec, &bytes) {
                if let Err(e) = result {
                    prop_assert_eq!(e.code.as_str(), code::INVALID_ARGUMENT);
                }
            }
        }
    }

    /// Valid messages cut short or with a byte flipped: still no panic.
    #[test]
    fn mangled_messages_never_panic(
        pid in any::<u32>(),
        data in proptest::collection::vec(any::<u8>(), 0..64),
        cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
        xor in 1u8..,
    ) {
        let message = StartResponse {
            event: Some(ProcessEvent::Data(DataEvent::Stdout(data.into()))),
        };
        let start = StartResponse { event: Some(ProcessEvent::Start(StartEvent { pid })) };
        for codec in [Codec::Proto, Codec::Json] {
            for bytes in [codec.encode(&message), codec.encode(&start)] {
                let truncated = &bytes[..cut.index(bytes.len() + 1)];
                let _ = decode_all(codec, truncated);
                let mut flipped = bytes.clone();
                if !flipped.is_empty() {
                    let at = flip.index(flipped.len());
                    flipped[at] ^= xor;
                }
                let _ = decode_all(codec, &flipped);
            }
        }
    }

    /// The envelope reader: whatever the input, it never yields more than it was
    /// given, never a message over the limit, and never panics.
    #[test]
    fn envelope_reader_is_bounded(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut buf = bytes.clone();
        let mut total = 0usize;
        loop {
            match take_envelope(&mut buf) {
                Ok(Some((_, message))) => {
                    prop_assert!(message.len() <= MAX_ENVELOPE_BYTES);
                    total += 5 + message.len();
                }
                Ok(None) => break,
                Err(e) => {
                    prop_assert_eq!(e.code.as_str(), code::RESOURCE_EXHAUSTED);
                    break;
                }
            }
        }
        prop_assert_eq!(total + buf.len(), bytes.len());
    }

    /// The shared-buffer reader agrees with the copying one.
    #[test]
    fn split_envelope_matches_take_envelope(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut vec = bytes.clone();
        let mut shared = bytes::BytesMut::from(&bytes[..]);
        loop {
            let taken = take_envelope(&mut vec);
            let split = split_envelope(&mut shared);
            prop_assert_eq!(
                &taken,
                &split.map(|o| o.map(|(flags, message)| (flags, message.to_vec())))
            );
            if !matches!(taken, Ok(Some(_))) {
                break;
            }
        }
        prop_assert_eq!(&vec[..], &shared[..]);
    }

    /// Envelopes of any size and flags survive a split at any point.
    #[test]
    fn envelopes_reassemble(
        flags in any::<u8>(),
        message in proptest::collection::vec(any::<u8>(), 0..300),
        split in any::<prop::sample::Index>(),
    ) {
        let framed = envelope(flags, &message);
        let at = split.index(framed.len() + 1);
        let mut buf = framed[..at].to_vec();
        if at < framed.len() {
            prop_assert_eq!(take_envelope(&mut buf), Ok(None));
        }
        buf.extend_from_slice(&framed[at..]);
        prop_assert_eq!(take_envelope(&mut buf), Ok(Some((flags, message))));
        prop_assert!(buf.is_empty());
    }
}

#[test]
fn shell_exit_codes_follow_the_shell() {
    use super::EndEvent;
    let exited = EndEvent {
        exit_code: 3,
        exited: true,
        status: "exit status 3".into(),
        error: None,
    };
    assert_eq!(exited.shell_exit_code(), 3);
    let killed = EndEvent {
        exit_code: -1,
        exited: false,
        status: "signal: killed".into(),
        error: None,
    };
    assert_eq!(killed.shell_exit_code(), 137);
    let terminated = EndEvent {
        status: "signal: terminated".into(),
        ..killed
    };
    assert_eq!(terminated.shell_exit_code(), 143);
}
