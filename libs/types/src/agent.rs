//! Messages of the in-sandbox agent's protocol: E2B envd's `process.Process` service
//! (`packages/envd/spec/process/process.proto`), in the protobuf JSON mapping that the
//! Connect protocol's `json` codec uses: lowerCamelCase names, `bytes` as base64,
//! default values may be omitted, oneofs as one present field.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The envd port E2B's SDKs dial; our agent listens on it when asked for TCP.
pub const ENVD_PORT: u16 = 49983;
/// Version of the agent protocol this crate describes.
pub const PROTOCOL_VERSION: &str = "envd-0.1/aetherium-1";

pub const PROCESS_START_PATH: &str = "/process.Process/Start";
pub const PROCESS_SEND_SIGNAL_PATH: &str = "/process.Process/SendSignal";
pub const PROCESS_LIST_PATH: &str = "/process.Process/List";

/// Content type of Connect streaming calls with the JSON codec.
pub const CONNECT_STREAM_JSON: &str = "application/connect+json";
/// Envelope flag marking the end-of-stream message of a Connect stream.
pub const CONNECT_END_STREAM_FLAG: u8 = 0x02;
/// Largest envelope either side accepts (keeps a bad peer from making us allocate).
pub const MAX_ENVELOPE_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ProcessConfig {
    pub cmd: String,
    pub args: Vec<String>,
    pub envs: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PtySize {
    pub cols: u32,
    pub rows: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Pty {
    pub size: PtySize,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct StartRequest {
    pub process: ProcessConfig,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pty: Option<Pty>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Whether the process gets a stdin pipe (envd's default is true).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdin: Option<bool>,
}

/// Bytes carried as base64 text, as protobuf's JSON mapping does for `bytes`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Base64Bytes(pub Vec<u8>);

impl Serialize for Base64Bytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use base64::Engine as _;
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Base64Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use base64::Engine as _;
        let text = String::deserialize(d)?;
        // protobuf JSON accepts both the standard and the URL-safe alphabet.
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(text.as_bytes()))
            .map(Base64Bytes)
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DataEvent {
    Stdout(Base64Bytes),
    Stderr(Base64Bytes),
    Pty(Base64Bytes),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StartEvent {
    pub pid: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct EndEvent {
    pub exit_code: i32,
    pub exited: bool,
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeepAlive {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ProcessEvent {
    Start(StartEvent),
    Data(DataEvent),
    End(EndEvent),
    Keepalive(KeepAlive),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartResponse {
    pub event: ProcessEvent,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ProcessSelector {
    Pid(u32),
    Tag(String),
}

/// envd's `Signal` enum; JSON carries the value's name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Signal {
    #[default]
    #[serde(rename = "SIGNAL_UNSPECIFIED")]
    Unspecified,
    #[serde(rename = "SIGNAL_SIGTERM")]
    Sigterm,
    #[serde(rename = "SIGNAL_SIGKILL")]
    Sigkill,
}

impl Signal {
    pub fn number(self) -> Option<i32> {
        match self {
            Signal::Unspecified => None,
            Signal::Sigterm => Some(15),
            Signal::Sigkill => Some(9),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendSignalRequest {
    pub process: ProcessSelector,
    #[serde(default)]
    pub signal: Signal,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ProcessInfo {
    pub config: ProcessConfig,
    pub pid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ListResponse {
    pub processes: Vec<ProcessInfo>,
}

/// A Connect protocol error: `{"code": "not_found", "message": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectError {
    pub code: String,
    #[serde(default)]
    pub message: String,
}

impl ConnectError {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        ConnectError {
            code: code.to_string(),
            message: message.into(),
        }
    }

    /// HTTP status for a unary error response, per the Connect protocol's table.
    pub fn http_status(&self) -> u16 {
        match self.code.as_str() {
            "canceled" => 499,
            "invalid_argument" | "out_of_range" => 400,
            "deadline_exceeded" => 504,
            "not_found" => 404,
            "already_exists" | "aborted" => 409,
            "permission_denied" => 403,
            "resource_exhausted" => 429,
            "failed_precondition" => 412,
            "unimplemented" => 501,
            "unavailable" => 503,
            "unauthenticated" => 401,
            _ => 500,
        }
    }
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// The end-of-stream message of a Connect stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndStreamMessage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ConnectError>,
}

/// Prefix a message with a Connect envelope header (flags byte + big-endian length).
pub fn envelope(flags: u8, message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + message.len());
    out.push(flags);
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// Splits one complete envelope off the front of `buf`. Returns `Ok(None)` while more
/// bytes are needed; an error when the declared length is over `MAX_ENVELOPE_BYTES`.
pub fn take_envelope(buf: &mut Vec<u8>) -> Result<Option<(u8, Vec<u8>)>, ConnectError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len > MAX_ENVELOPE_BYTES {
        return Err(ConnectError::new(
            "resource_exhausted",
            format!("message of {len} bytes is over the {MAX_ENVELOPE_BYTES} byte limit"),
        ));
    }
    if buf.len() < 5 + len {
        return Ok(None);
    }
    let flags = buf[0];
    let message = buf[5..5 + len].to_vec();
    buf.drain(..5 + len);
    Ok(Some((flags, message)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_use_protobuf_json_names() {
        let end = StartResponse {
            event: ProcessEvent::End(EndEvent {
                exit_code: 3,
                exited: true,
                status: "exit status 3".into(),
                error: None,
            }),
        };
        let json = serde_json::to_value(&end).expect("serialize");
        assert_eq!(json["event"]["end"]["exitCode"], 3);
        let data: StartResponse =
            serde_json::from_str(r#"{"event":{"data":{"stdout":"aGk="}}}"#).expect("parse");
        assert_eq!(
            data.event,
            ProcessEvent::Data(DataEvent::Stdout(Base64Bytes(b"hi".to_vec())))
        );
        // proto3 JSON may omit default values.
        let end: StartResponse = serde_json::from_str(r#"{"event":{"end":{"exited":true}}}"#)
            .expect("parse with omitted defaults");
        assert!(matches!(
            end.event,
            ProcessEvent::End(EndEvent { exit_code: 0, .. })
        ));
    }

    #[test]
    fn envelopes_split_only_when_complete_and_bounded() {
        let mut buf = envelope(0, b"{}");
        buf.extend_from_slice(&envelope(CONNECT_END_STREAM_FLAG, b"{}")[..3]);
        assert_eq!(take_envelope(&mut buf), Ok(Some((0, b"{}".to_vec()))));
        assert_eq!(take_envelope(&mut buf), Ok(None));
        let mut huge = vec![0, 0xff, 0xff, 0xff, 0xff];
        assert!(take_envelope(&mut huge).is_err());
    }
}
