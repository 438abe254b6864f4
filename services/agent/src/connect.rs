//! The Connect protocol (<https://connectrpc.com/docs/protocol>) as the agent serves
//! it: unary calls (`application/proto` or `application/json`, errors as an HTTP
//! status plus a JSON body), server streams and client streams (enveloped messages,
//! `application/connect+proto` or `+json`, errors in the end-of-stream message).
//! No compression: a request that uses some gets `unimplemented`; responses are never
//! compressed, whatever `Connect-Accept-Encoding` says (identity is always allowed).

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use aetherium_types::agent::{
    CONNECT_COMPRESSED_FLAG, CONNECT_END_STREAM_FLAG, Codec, ConnectError, EndStreamMessage,
    MAX_ENVELOPE_BYTES, ProcessEvent, StartResponse, WatchDirResponse, WireMessage, code, envelope,
    envelope_header,
};
use bytes::{Buf as _, Bytes, BytesMut};
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Empty, Full, LengthLimitError, Limited};
use hyper::body::{Body, Frame, Incoming};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};

/// Every response body the agent produces. An error aborts the response (a file
/// that cannot be read any further mid-download).
pub type ResponseBody = UnsyncBoxBody<Bytes, io::Error>;

pub fn error(code: &str, message: impl Into<String>) -> ConnectError {
    ConnectError::new(code, message)
}

pub fn invalid_argument(message: impl Into<String>) -> ConnectError {
    ConnectError::new(code::INVALID_ARGUMENT, message)
}

/// The request's media type without parameters, lowercased (`Application/JSON;
/// charset=utf-8` → `application/json`).
pub fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(CONTENT_TYPE)?.to_str().ok()?;
    let media = value.split(';').next().unwrap_or_default().trim();
    Some(media.to_ascii_lowercase())
}

/// The shapes of Connect calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Unary,
    ServerStream,
    ClientStream,
}

/// Picks the codec from the content type and refuses compressed requests. The error
/// is the complete response to send.
pub fn negotiate(headers: &HeaderMap, kind: Kind) -> Result<Codec, Response<ResponseBody>> {
    let media = media_type(headers).unwrap_or_default();
    let codec = match kind {
        Kind::Unary => Codec::from_unary_media_type(&media),
        Kind::ServerStream | Kind::ClientStream => Codec::from_stream_media_type(&media),
    };
    let Some(codec) = codec else {
        // Connect: an unsupported content type is HTTP 415.
        return Err(status_only(StatusCode::UNSUPPORTED_MEDIA_TYPE));
    };
    let encoding_header = match kind {
        Kind::Unary => "content-encoding",
        Kind::ServerStream | Kind::ClientStream => "connect-content-encoding",
    };
    if let Some(encoding) = headers.get(encoding_header) {
        let encoding = encoding.to_str().unwrap_or("?").trim();
        if !encoding.is_empty() && !encoding.eq_ignore_ascii_case("identity") {
            let e = error(
                code::UNIMPLEMENTED,
                format!("unsupported compression {encoding:?}: this agent speaks identity only"),
            );
            return Err(match kind {
                Kind::Unary => unary_error(&e),
                Kind::ServerStream | Kind::ClientStream => stream_error(codec, e),
            });
        }
    }
    Ok(codec)
}

/// `Connect-Timeout-Ms`, if the client set one (at most 10 digits, as the spec says).
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("connect-timeout-ms")?.to_str().ok()?.trim();
    if value.is_empty() || value.len() > 10 {
        return None;
    }
    value
        .parse::<u64>()
        .ok()
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis)
}

/// envd's `Keepalive-Ping-Interval` (seconds): how often a silent stream gets a
/// keepalive message.
pub fn keepalive(headers: &HeaderMap, default: Duration) -> Duration {
    headers
        .get("keepalive-ping-interval")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|secs| (1..=86_400).contains(secs))
        .map_or(default, Duration::from_secs)
}

/// Collects a request body of at most `limit` bytes.
pub async fn read_bounded<B>(body: B, limit: usize) -> Result<Bytes, ConnectError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(error(
            code::RESOURCE_EXHAUSTED,
            format!("request body is over the {limit} byte limit"),
        )),
        Err(e) => Err(invalid_argument(format!("reading request body: {e}"))),
    }
}

/// The message of a unary request.
pub async fn read_unary<M: WireMessage>(body: Incoming, codec: Codec) -> Result<M, ConnectError> {
    let body = read_bounded(body, MAX_ENVELOPE_BYTES).await?;
    codec.decode(&body)
}

/// Checks the flags of an enveloped request message.
fn check_request_flags(flags: u8) -> Result<(), ConnectError> {
    if flags & CONNECT_COMPRESSED_FLAG != 0 {
        return Err(invalid_argument(
            "compressed message, but no compression was negotiated",
        ));
    }
    if flags != 0 {
        return Err(invalid_argument(format!(
            "unexpected envelope flags {flags:#04x} on a request message"
        )));
    }
    Ok(())
}

/// The single enveloped message of a server-streaming request body.
pub fn decode_single<M: WireMessage>(codec: Codec, body: &[u8]) -> Result<M, ConnectError> {
    // Checked first so that an unenveloped message (`{"pro...`) reads as what it is,
    // not as an envelope announcing a gigantic message.
    if let Some(flags) = body
        .first()
        .filter(|f| **f & !(CONNECT_COMPRESSED_FLAG | CONNECT_END_STREAM_FLAG) != 0)
    {
        return Err(invalid_argument(format!(
            "request body is not a Connect envelope (flags byte {flags:#04x})"
        )));
    }
    let Some((flags, len)) = envelope_header(body)? else {
        return Err(invalid_argument(
            "request body is not one complete Connect envelope",
        ));
    };
    let Some(message) = body.get(5..5 + len) else {
        return Err(invalid_argument(
            "request body is not one complete Connect envelope",
        ));
    };
    if body.len() != 5 + len {
        return Err(invalid_argument(
            "a server-streaming call takes exactly one request message",
        ));
    }
    check_request_flags(flags)?;
    codec.decode(message)
}

/// Reads the request of a server-streaming call.
pub async fn read_single<M: WireMessage>(body: Incoming, codec: Codec) -> Result<M, ConnectError> {
    let body = read_bounded(body, MAX_ENVELOPE_BYTES + 5).await?;
    decode_single(codec, &body)
}

/// The messages of a client-streaming request body, decoded as they arrive. Holds at
/// most one envelope plus one body frame in memory.
pub struct RequestStream {
    body: Incoming,
    buf: BytesMut,
    codec: Codec,
    done: bool,
}

impl RequestStream {
    pub fn new(body: Incoming, codec: Codec) -> RequestStream {
        RequestStream {
            body,
            buf: BytesMut::new(),
            codec,
            done: false,
        }
    }

    /// The next message; `Ok(None)` once the client has closed its side.
    pub async fn next<M: WireMessage>(&mut self) -> Result<Option<M>, ConnectError> {
        loop {
            if let Some((flags, len)) = envelope_header(&self.buf)?
                && self.buf.len() >= 5 + len
            {
                self.buf.advance(5);
                let message = self.buf.split_to(len);
                check_request_flags(flags)?;
                return self.codec.decode(&message).map(Some);
            }
            if self.done {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(invalid_argument("request stream ended inside an envelope"))
                };
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => {
                    return Err(error(
                        code::CANCELED,
                        format!("reading the request stream: {e}"),
                    ));
                }
                None => self.done = true,
            }
        }
    }
}

pub fn response(
    status: StatusCode,
    content_type: Option<&'static str>,
    body: ResponseBody,
) -> Response<ResponseBody> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    if let Some(content_type) = content_type {
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    response
}

pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into())
        .map_err(|e: Infallible| match e {})
        .boxed_unsync()
}

/// A bodiless response (204, 404, 405, 415, ...).
pub fn status_only(status: StatusCode) -> Response<ResponseBody> {
    response(
        status,
        None,
        Empty::new()
            .map_err(|e: Infallible| match e {})
            .boxed_unsync(),
    )
}

/// JSON of a plain (non-Connect) value; our types cannot fail to serialize.
pub fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_else(|e| {
        crate::log!("encoding a response failed: {e}");
        br#"{"code":500,"message":"encoding the response failed"}"#.to_vec()
    })
}

pub fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response<ResponseBody> {
    response(status, Some("application/json"), full(to_json(value)))
}

/// An error of the plain HTTP routes, in envd's shape: `{"code": 404, "message": ...}`.
pub fn http_error(status: StatusCode, message: impl Into<String>) -> Response<ResponseBody> {
    #[derive(Serialize)]
    struct HttpError {
        code: u16,
        message: String,
    }
    json_response(
        status,
        &HttpError {
            code: status.as_u16(),
            message: message.into(),
        },
    )
}

/// A successful unary response.
pub fn unary_ok<M: WireMessage>(codec: Codec, message: &M) -> Response<ResponseBody> {
    response(
        StatusCode::OK,
        Some(codec.unary_content_type()),
        full(codec.encode(message)),
    )
}

/// A failed unary call: the HTTP status from Connect's code table, the error as JSON
/// (whatever the codec).
pub fn unary_error(error: &ConnectError) -> Response<ResponseBody> {
    let status =
        StatusCode::from_u16(error.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response(status, Some("application/json"), full(to_json(error)))
}

/// One message of a Connect stream, enveloped.
pub fn stream_message(codec: Codec, message: &impl WireMessage) -> Bytes {
    Bytes::from(codec.encode_enveloped(0, message))
}

/// The end-of-stream envelope (always JSON): `{}` on success, `{"error": ...}` on
/// failure.
pub fn end_of_stream(error: Option<ConnectError>) -> Bytes {
    Bytes::from(envelope(
        CONNECT_END_STREAM_FLAG,
        &to_json(&EndStreamMessage { error }),
    ))
}

/// A failed streaming call: still HTTP 200; the error rides in the end-of-stream
/// message, which is the only message of the stream.
pub fn stream_error(codec: Codec, error: ConnectError) -> Response<ResponseBody> {
    response(
        StatusCode::OK,
        Some(codec.stream_content_type()),
        full(end_of_stream(Some(error))),
    )
}

/// The response of a client-streaming call: its one message, then the end of stream.
pub fn stream_single(codec: Codec, message: &impl WireMessage) -> Response<ResponseBody> {
    let mut body = BytesMut::new();
    body.extend_from_slice(&stream_message(codec, message));
    body.extend_from_slice(&end_of_stream(None));
    response(
        StatusCode::OK,
        Some(codec.stream_content_type()),
        full(body.freeze()),
    )
}

/// One enveloped response message, in one or two parts sent in turn: a chunk of
/// output goes out as the second part, as it was read, never copied.
pub struct Enveloped {
    pub head: Bytes,
    pub tail: Option<Bytes>,
}

/// What a server stream carries: each item becomes one enveloped response message.
pub trait StreamItem: Send + 'static {
    fn encode(&self, codec: Codec) -> Enveloped;
    /// The message sent when the stream has been silent for the keepalive interval.
    fn keepalive() -> Self;
    /// Whether this is the stream's last message (then the end of stream follows).
    fn is_last(&self) -> bool;
}

/// Process events are shared between a process's subscribers, each encoding them in
/// its own codec as `StartResponse`/`ConnectResponse` (`{event: ...}`, field 1).
impl StreamItem for Arc<ProcessEvent> {
    fn encode(&self, codec: Codec) -> Enveloped {
        if let (Codec::Proto, ProcessEvent::Data(data)) = (codec, &**self) {
            let mut head = Vec::with_capacity(32);
            head.extend_from_slice(&[0; 5]);
            let tail = data.encode_response_split(&mut head);
            // Chunks are at most CHUNK_BYTES: far below the u32 limit.
            let len = (head.len() - 5 + tail.len()) as u32;
            head[1..5].copy_from_slice(&len.to_be_bytes());
            return Enveloped {
                head: Bytes::from(head),
                tail: (!tail.is_empty()).then_some(tail),
            };
        }
        // Cheap: events other than data are small, and data is a shared `Bytes`.
        let response = StartResponse {
            event: Some((**self).clone()),
        };
        Enveloped {
            head: Bytes::from(codec.encode_enveloped(0, &response)),
            tail: None,
        }
    }

    fn keepalive() -> Self {
        Arc::new(ProcessEvent::default())
    }

    fn is_last(&self) -> bool {
        matches!(**self, ProcessEvent::End(_))
    }
}

impl StreamItem for WatchDirResponse {
    fn encode(&self, codec: Codec) -> Enveloped {
        Enveloped {
            head: stream_message(codec, self),
            tail: None,
        }
    }

    fn keepalive() -> Self {
        WatchDirResponse::default()
    }

    fn is_last(&self) -> bool {
        false
    }
}

/// The body of a server stream: the items of a channel as enveloped messages, a
/// keepalive whenever the stream has been silent for `interval`, and the end of
/// stream after the last item (or carrying the error the channel delivers). When the
/// client goes away hyper drops this body, which the sender notices on its next
/// send. Holds nothing but the channel: memory is bounded by the channel's capacity.
pub struct ServerStream<T> {
    rx: mpsc::Receiver<Result<T, ConnectError>>,
    codec: Codec,
    keepalive: Pin<Box<Sleep>>,
    interval: Duration,
    state: StreamState,
    /// The second part of the message being sent.
    tail: Option<Bytes>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamState {
    Streaming,
    /// The last item went out; the end of stream is next.
    Ending,
    Done,
}

impl<T: StreamItem> ServerStream<T> {
    pub fn new(
        rx: mpsc::Receiver<Result<T, ConnectError>>,
        codec: Codec,
        interval: Duration,
    ) -> Self {
        ServerStream {
            rx,
            codec,
            keepalive: Box::pin(tokio::time::sleep(interval)),
            interval,
            state: StreamState::Streaming,
            tail: None,
        }
    }

    pub fn into_response(self) -> Response<ResponseBody> {
        let content_type = self.codec.stream_content_type();
        response(StatusCode::OK, Some(content_type), self.boxed_unsync())
    }
}

impl<T: StreamItem> Body for ServerStream<T> {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        if let Some(tail) = this.tail.take() {
            return Poll::Ready(Some(Ok(Frame::data(tail))));
        }
        let frame = match this.state {
            StreamState::Done => return Poll::Ready(None),
            StreamState::Ending => {
                this.state = StreamState::Done;
                end_of_stream(None)
            }
            StreamState::Streaming => match this.rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(item))) => {
                    if item.is_last() {
                        this.state = StreamState::Ending;
                    }
                    let Enveloped { head, tail } = item.encode(this.codec);
                    this.tail = tail;
                    head
                }
                Poll::Ready(Some(Err(e))) => {
                    this.state = StreamState::Done;
                    end_of_stream(Some(e))
                }
                Poll::Ready(None) => {
                    this.state = StreamState::Done;
                    end_of_stream(Some(error(
                        code::UNAVAILABLE,
                        "the stream's source went away (is the agent shutting down?)",
                    )))
                }
                Poll::Pending => match this.keepalive.as_mut().poll(cx) {
                    Poll::Ready(()) => T::keepalive().encode(this.codec).head,
                    Poll::Pending => return Poll::Pending,
                },
            },
        };
        // Rearmed on every message: keepalives fill silences only. hyper polls again
        // after writing this frame, which registers the new deadline.
        let deadline = Instant::now() + this.interval;
        this.keepalive.as_mut().reset(deadline);
        Poll::Ready(Some(Ok(Frame::data(frame))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aetherium_types::agent::{CONNECT_STREAM_JSON, ProcessConfig, StartRequest, take_envelope};

    fn start_json() -> Vec<u8> {
        br#"{"process":{"cmd":"sh","args":["-c","exit 3"],"envs":{"A":"1"}},"tag":"t"}"#.to_vec()
    }

    #[test]
    fn decodes_one_enveloped_request_in_either_codec() {
        let request: StartRequest =
            decode_single(Codec::Json, &envelope(0, &start_json())).expect("decode");
        assert_eq!(
            request.process,
            ProcessConfig {
                cmd: "sh".into(),
                args: vec!["-c".into(), "exit 3".into()],
                envs: [("A".to_string(), "1".to_string())].into(),
                cwd: None,
            }
        );
        assert_eq!(request.tag.as_deref(), Some("t"));
        let proto = Codec::Proto.encode(&request);
        assert_eq!(
            decode_single::<StartRequest>(Codec::Proto, &envelope(0, &proto)),
            Ok(request)
        );
        // An empty message is a valid (if useless) request.
        assert_eq!(
            decode_single::<StartRequest>(Codec::Json, &envelope(0, b"{}")),
            Ok(StartRequest::default())
        );
        assert_eq!(
            decode_single::<StartRequest>(Codec::Proto, &envelope(0, b"")),
            Ok(StartRequest::default())
        );
    }

    #[test]
    fn rejects_malformed_envelopes() {
        let code =
            |body: Vec<u8>| decode_single::<StartRequest>(Codec::Json, &body).map_err(|e| e.code);
        let invalid = Err(code::INVALID_ARGUMENT.to_string());
        assert_eq!(code(Vec::new()), invalid);
        assert_eq!(code(start_json()), invalid, "raw JSON without an envelope");
        let mut truncated = envelope(0, &start_json());
        truncated.pop();
        assert_eq!(code(truncated), invalid);
        let mut two = envelope(0, b"{}");
        two.extend(envelope(0, b"{}"));
        assert_eq!(code(two), invalid);
        assert_eq!(code(envelope(CONNECT_COMPRESSED_FLAG, b"{}")), invalid);
        assert_eq!(code(envelope(CONNECT_END_STREAM_FLAG, b"{}")), invalid);
        assert_eq!(code(envelope(0, b"{\"process\":")), invalid);
        assert_eq!(code(envelope(0, b"{\"process\":{\"cmd\":7}}")), invalid);
        let huge = vec![0, 0x7f, 0xff, 0xff, 0xff, b'{'];
        assert_eq!(code(huge), Err(code::RESOURCE_EXHAUSTED.to_string()));
    }

    #[test]
    fn negotiation_picks_the_codec_and_refuses_compression() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut map = HeaderMap::new();
            for (k, v) in pairs {
                map.insert(*k, HeaderValue::from_static(v));
            }
            map
        };
        let ok = |h: &HeaderMap, kind| negotiate(h, kind).ok();
        assert_eq!(
            ok(
                &headers(&[("content-type", "application/proto")]),
                Kind::Unary
            ),
            Some(Codec::Proto)
        );
        assert_eq!(
            ok(
                &headers(&[("content-type", "Application/JSON; charset=utf-8")]),
                Kind::Unary
            ),
            Some(Codec::Json)
        );
        assert_eq!(
            ok(
                &headers(&[("content-type", CONNECT_STREAM_JSON)]),
                Kind::ServerStream
            ),
            Some(Codec::Json)
        );
        let wrong = negotiate(
            &headers(&[("content-type", "application/json")]),
            Kind::ServerStream,
        )
        .expect_err("unary type on a stream");
        assert_eq!(wrong.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let gzip = negotiate(
            &headers(&[
                ("content-type", "application/proto"),
                ("content-encoding", "gzip"),
            ]),
            Kind::Unary,
        )
        .expect_err("gzip");
        assert_eq!(gzip.status(), StatusCode::NOT_IMPLEMENTED);
        assert!(
            negotiate(
                &headers(&[
                    ("content-type", "application/connect+proto"),
                    ("connect-content-encoding", "identity"),
                ]),
                Kind::ServerStream
            )
            .is_ok()
        );
    }

    #[test]
    fn timeouts_and_keepalives_from_headers() {
        let mut headers = HeaderMap::new();
        assert_eq!(timeout(&headers), None);
        headers.insert("connect-timeout-ms", HeaderValue::from_static("1500"));
        assert_eq!(timeout(&headers), Some(Duration::from_millis(1500)));
        headers.insert(
            "connect-timeout-ms",
            HeaderValue::from_static("12345678901"),
        );
        assert_eq!(timeout(&headers), None, "over 10 digits");
        let default = Duration::from_secs(30);
        assert_eq!(keepalive(&headers, default), default);
        headers.insert("keepalive-ping-interval", HeaderValue::from_static("50"));
        assert_eq!(keepalive(&headers, default), Duration::from_secs(50));
        headers.insert("keepalive-ping-interval", HeaderValue::from_static("0"));
        assert_eq!(keepalive(&headers, default), default);
    }

    #[test]
    fn end_of_stream_carries_the_error() {
        let mut bytes = end_of_stream(Some(error(code::NOT_FOUND, "no such file"))).to_vec();
        let (flags, message) = take_envelope(&mut bytes)
            .expect("bounded")
            .expect("complete");
        assert_eq!(flags, CONNECT_END_STREAM_FLAG);
        let end: EndStreamMessage = serde_json::from_slice(&message).expect("json");
        assert_eq!(end.error.map(|e| e.code).as_deref(), Some(code::NOT_FOUND));
        let mut ok = end_of_stream(None).to_vec();
        assert_eq!(
            take_envelope(&mut ok),
            Ok(Some((CONNECT_END_STREAM_FLAG, b"{}".to_vec())))
        );
    }

    #[test]
    fn process_events_encode_as_start_responses() {
        let event = Arc::new(ProcessEvent::Start(aetherium_types::agent::StartEvent {
            pid: 42,
        }));
        let data = Arc::new(ProcessEvent::Data(
            aetherium_types::agent::DataEvent::Stderr(vec![9u8; 200_000].into()),
        ));
        let empty = Arc::new(ProcessEvent::Data(
            aetherium_types::agent::DataEvent::Stdout(Vec::new().into()),
        ));
        for event in [event, data, empty] {
            let expected = StartResponse {
                event: Some((*event).clone()),
            };
            for codec in [Codec::Proto, Codec::Json] {
                let Enveloped { head, tail } = StreamItem::encode(&event, codec);
                let mut whole = head.to_vec();
                whole.extend_from_slice(&tail.unwrap_or_default());
                assert_eq!(whole, envelope(0, &codec.encode(&expected)));
            }
        }
    }

    #[tokio::test]
    async fn bodies_over_the_limit_are_refused() {
        let body = Full::new(Bytes::from(vec![0u8; 100]));
        let err = read_bounded(body, 99).await.expect_err("over limit");
        assert_eq!(err.code, code::RESOURCE_EXHAUSTED);
        let body = Full::new(Bytes::from(vec![0u8; 100]));
        assert_eq!(read_bounded(body, 100).await.map(|b| b.len()), Ok(100));
    }
}
