//! The slice of the Connect protocol the agent speaks: unary calls with the JSON codec
//! (`application/json`), server-streaming calls with enveloped JSON
//! (`application/connect+json`), and the error shapes of both.
//! Spec: <https://connectrpc.com/docs/protocol>.

use std::convert::Infallible;

use aetherium_types::agent::{
    CONNECT_END_STREAM_FLAG, CONNECT_STREAM_JSON, ConnectError, EndStreamMessage,
    MAX_ENVELOPE_BYTES, StartRequest, envelope, take_envelope,
};
use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Empty, Full, LengthLimitError, Limited};
use hyper::body::Body;
use serde::Serialize;

/// Content type of Connect unary calls with the JSON codec.
pub const CONNECT_UNARY_JSON: &str = "application/json";
/// Envelope flag of a compressed message; we negotiate no compression.
const COMPRESSED_FLAG: u8 = 0x01;
/// Every flag an envelope may carry.
const KNOWN_FLAGS: u8 = COMPRESSED_FLAG | CONNECT_END_STREAM_FLAG;
/// Unary requests (List, SendSignal) are tiny; anything bigger is abuse.
pub const MAX_UNARY_BYTES: usize = 64 * 1024;

/// Every response body the agent produces.
pub type ResponseBody = UnsyncBoxBody<Bytes, Infallible>;

pub fn invalid_argument(message: impl Into<String>) -> ConnectError {
    ConnectError::new("invalid_argument", message)
}

/// The request's media type without parameters, lowercased (`Application/JSON;
/// charset=utf-8` → `application/json`).
pub fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(CONTENT_TYPE)?.to_str().ok()?;
    let media = value.split(';').next().unwrap_or_default().trim();
    Some(media.to_ascii_lowercase())
}

/// Collects a request body of at most `limit` bytes.
pub async fn read_bounded<B>(body: B, limit: usize) -> Result<Vec<u8>, ConnectError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes().to_vec()),
        Err(e) if e.is::<LengthLimitError>() => Err(ConnectError::new(
            "resource_exhausted",
            format!("request body is over the {limit} byte limit"),
        )),
        Err(e) => Err(invalid_argument(format!("reading request body: {e}"))),
    }
}

/// Largest body a Start request may have: one envelope of the maximum size.
pub const MAX_START_BODY_BYTES: usize = MAX_ENVELOPE_BYTES + 5;

/// Decodes the single enveloped message of a server-streaming Start call.
pub fn decode_start_request(mut body: Vec<u8>) -> Result<StartRequest, ConnectError> {
    // Checked first so that un-enveloped JSON (`{"pro...`) reads as what it is, not
    // as an envelope announcing a gigantic message.
    if let Some(flags) = body.first().filter(|f| *f & !KNOWN_FLAGS != 0) {
        return Err(invalid_argument(format!(
            "request body is not a Connect envelope (flags byte {flags:#04x})"
        )));
    }
    let Some((flags, message)) = take_envelope(&mut body)? else {
        return Err(invalid_argument(
            "request body is not one complete Connect envelope",
        ));
    };
    if !body.is_empty() {
        return Err(invalid_argument(
            "a server-streaming call takes exactly one request message",
        ));
    }
    if flags & COMPRESSED_FLAG != 0 {
        return Err(invalid_argument(
            "compressed message, but no compression was negotiated",
        ));
    }
    if flags != 0 {
        return Err(invalid_argument(format!(
            "unexpected envelope flags {flags:#04x} on a request message"
        )));
    }
    serde_json::from_slice(&message)
        .map_err(|e| invalid_argument(format!("malformed StartRequest JSON: {e}")))
}

/// JSON of a message type. Our types are plain structs with string keys, for which
/// serde_json cannot fail; the fallback only keeps this function total.
pub fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_else(|e| {
        crate::log!("encoding a response failed: {e}");
        br#"{"code":"internal","message":"encoding the response failed"}"#.to_vec()
    })
}

/// One message of a Connect stream, enveloped.
pub fn stream_message<T: Serialize>(message: &T) -> Bytes {
    Bytes::from(envelope(0, &to_json(message)))
}

/// The end-of-stream envelope: `{}` on success, `{"error": ...}` on failure.
pub fn end_of_stream(error: Option<ConnectError>) -> Bytes {
    Bytes::from(envelope(
        CONNECT_END_STREAM_FLAG,
        &to_json(&EndStreamMessage { error }),
    ))
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
    Full::new(bytes.into()).boxed_unsync()
}

/// A bodiless response (204, 404, 405, 415, ...).
pub fn status_only(status: StatusCode) -> Response<ResponseBody> {
    response(status, None, Empty::new().boxed_unsync())
}

/// A successful unary response.
pub fn unary_ok<T: Serialize>(message: &T) -> Response<ResponseBody> {
    response(
        StatusCode::OK,
        Some(CONNECT_UNARY_JSON),
        full(to_json(message)),
    )
}

/// A failed unary call: the HTTP status from Connect's code table, the error as JSON.
pub fn unary_error(error: &ConnectError) -> Response<ResponseBody> {
    let status =
        StatusCode::from_u16(error.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response(status, Some(CONNECT_UNARY_JSON), full(to_json(error)))
}

/// A failed streaming call: still HTTP 200; the error rides in the end-of-stream
/// message, which is the only message of the stream.
pub fn stream_error(error: ConnectError) -> Response<ResponseBody> {
    response(
        StatusCode::OK,
        Some(CONNECT_STREAM_JSON),
        full(end_of_stream(Some(error))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use aetherium_types::agent::ProcessConfig;

    fn start_json() -> Vec<u8> {
        br#"{"process":{"cmd":"sh","args":["-c","exit 3"],"envs":{"A":"1"}},"tag":"t"}"#.to_vec()
    }

    #[test]
    fn decodes_one_enveloped_start_request() {
        let request = decode_start_request(envelope(0, &start_json())).expect("decode");
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
        // Proto3 JSON: an empty object is a valid (if useless) request.
        assert_eq!(
            decode_start_request(envelope(0, b"{}")).expect("empty"),
            StartRequest::default()
        );
    }

    #[test]
    fn rejects_malformed_envelopes() {
        let code = |body: Vec<u8>| decode_start_request(body).map_err(|e| e.code);
        let invalid = Err("invalid_argument".to_string());
        assert_eq!(code(Vec::new()), invalid);
        assert_eq!(code(start_json()), invalid, "raw JSON without an envelope");
        let mut truncated = envelope(0, &start_json());
        truncated.pop();
        assert_eq!(code(truncated), invalid);
        let mut two = envelope(0, b"{}");
        two.extend(envelope(0, b"{}"));
        assert_eq!(code(two), invalid);
        assert_eq!(code(envelope(COMPRESSED_FLAG, b"{}")), invalid);
        assert_eq!(code(envelope(CONNECT_END_STREAM_FLAG, b"{}")), invalid);
        assert_eq!(code(envelope(0, b"{\"process\":")), invalid);
        assert_eq!(code(envelope(0, b"{\"process\":{\"cmd\":7}}")), invalid);
        let huge = vec![0, 0x7f, 0xff, 0xff, 0xff, b'{'];
        assert_eq!(code(huge), Err("resource_exhausted".to_string()));
    }

    #[test]
    fn media_type_ignores_parameters_and_case() {
        let mut headers = HeaderMap::new();
        assert_eq!(media_type(&headers), None);
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("Application/JSON; charset=utf-8"),
        );
        assert_eq!(media_type(&headers).as_deref(), Some(CONNECT_UNARY_JSON));
    }

    #[test]
    fn end_of_stream_carries_the_error() {
        let mut bytes =
            end_of_stream(Some(ConnectError::new("not_found", "no such file"))).to_vec();
        let (flags, message) = take_envelope(&mut bytes)
            .expect("bounded")
            .expect("complete");
        assert_eq!(flags, CONNECT_END_STREAM_FLAG);
        let end: EndStreamMessage = serde_json::from_slice(&message).expect("json");
        assert_eq!(end.error.map(|e| e.code).as_deref(), Some("not_found"));
        let mut ok = end_of_stream(None).to_vec();
        assert_eq!(
            take_envelope(&mut ok),
            Ok(Some((CONNECT_END_STREAM_FLAG, b"{}".to_vec())))
        );
    }

    #[tokio::test]
    async fn bodies_over_the_limit_are_refused() {
        let body = Full::new(Bytes::from(vec![0u8; 100]));
        let err = read_bounded(body, 99).await.expect_err("over limit");
        assert_eq!(err.code, "resource_exhausted");
        let body = Full::new(Bytes::from(vec![0u8; 100]));
        assert_eq!(read_bounded(body, 100).await.map(|b| b.len()), Ok(100));
    }
}
