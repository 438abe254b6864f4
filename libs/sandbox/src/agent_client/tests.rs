use super::*;

#[test]
fn decodes_events_and_end_of_stream() {
    let start = StartResponse {
        event: Some(ProcessEvent::Start(aetherium_types::agent::StartEvent {
            pid: 7,
        })),
    };
    let event = decode_message(0, Bytes::from(CODEC.encode(&start))).expect("event");
    assert!(matches!(event, Message::Event(ProcessEvent::Start(s)) if s.pid == 7));
    let end = decode_message(
        CONNECT_END_STREAM_FLAG,
        Bytes::from_static(br#"{"error":{"code":"not_found","message":"x"}}"#),
    )
    .expect("end");
    assert!(
        matches!(end, Message::End(EndStreamMessage { error: Some(e) }) if e.code == "not_found")
    );
    assert!(matches!(
        decode_message(COMPRESSED_FLAG, Bytes::from_static(b"{}")),
        Err(AgentError::Protocol(_))
    ));
    assert!(matches!(
        decode_message(0, Bytes::from_static(&[0x0a, 0x7f])),
        Err(AgentError::Protocol(_))
    ));
}

#[test]
fn query_values_are_percent_encoded() {
    assert_eq!(percent_encode("/tmp/a b&c=d.txt"), "/tmp/a%20b%26c%3Dd.txt");
    assert_eq!(percent_encode("é"), "%C3%A9");
}

#[test]
fn tokens_are_not_printed() {
    let client = AgentClient::unix("/x").with_access_token("s3cret");
    assert!(!format!("{client:?}").contains("s3cret"));
}

#[tokio::test]
async fn hybrid_vsock_handshake_leaves_following_bytes() {
    let (mut client, mut server) = tokio::io::duplex(64);
    let server = tokio::spawn(async move {
        let mut line = [0u8; 13];
        server.read_exact(&mut line).await.expect("read");
        assert_eq!(&line, b"CONNECT 1024\n");
        // The answer and the first bytes of the agent's side in one write.
        server.write_all(b"OK 1024\nHTTP").await.expect("write");
        server
    });
    hybrid_vsock_handshake(&mut client, 1024)
        .await
        .expect("handshake");
    let mut rest = [0u8; 4];
    client.read_exact(&mut rest).await.expect("rest");
    assert_eq!(&rest, b"HTTP");
    drop(server.await.expect("server"));

    let (mut client, mut server) = tokio::io::duplex(64);
    tokio::spawn(async move {
        let mut line = [0u8; 11];
        let _ = server.read_exact(&mut line).await;
        let _ = server.write_all(b"FAILURE\n").await;
    });
    assert!(hybrid_vsock_handshake(&mut client, 52).await.is_err());
}
