//! envd's `process.Process` service (`packages/envd/spec/process/process.proto`):
//! every message, with its exact field numbers and types for the protobuf codec and
//! the protobuf JSON mapping for the JSON codec. Messages that are a single `oneof`
//! are Rust enums (`ProcessEvent`, `DataEvent`, `ProcessSelector`, ...).

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::json::{self, ProtoEnum};
use super::wire::oneof_message;

#[derive(Clone, PartialEq, Eq, prost::Message, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ProcessConfig {
    #[prost(string, tag = "1")]
    pub cmd: String,
    #[prost(string, repeated, tag = "2")]
    pub args: Vec<String>,
    #[prost(btree_map = "string, string", tag = "3")]
    pub envs: BTreeMap<String, String>,
    #[prost(string, optional, tag = "4")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
}

/// `PTY.Size`.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct PtySize {
    #[prost(uint32, tag = "1")]
    #[serde(deserialize_with = "json::de_u32")]
    pub cols: u32,
    #[prost(uint32, tag = "2")]
    #[serde(deserialize_with = "json::de_u32")]
    pub rows: u32,
}

#[derive(Clone, PartialEq, Eq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct Pty {
    #[prost(message, required, tag = "1")]
    pub size: PtySize,
}

#[derive(Clone, PartialEq, Eq, prost::Message, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct StartRequest {
    #[prost(message, required, tag = "1")]
    pub process: ProcessConfig,
    #[prost(message, optional, tag = "2")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pty: Option<Pty>,
    #[prost(string, optional, tag = "3")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Whether the process gets a stdin pipe; absent means yes (envd's default).
    #[prost(bool, optional, tag = "4")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdin: Option<bool>,
}

/// Bytes carried as base64 text in JSON, as the protobuf JSON mapping does for
/// `bytes`. `B` is the container: `Vec<u8>` (input, the default) or [`Bytes`] (output
/// chunks, which the agent shares between its streams and the client decodes by
/// slicing what it received, without copying).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Base64Bytes<B = Vec<u8>>(pub B);

impl<B: AsRef<[u8]>> std::fmt::Debug for Base64Bytes<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bytes = self.0.as_ref();
        match std::str::from_utf8(bytes) {
            Ok(text) if text.len() <= 256 => write!(f, "Base64Bytes({text:?})"),
            _ => write!(f, "Base64Bytes({} bytes)", bytes.len()),
        }
    }
}

impl<B: AsRef<[u8]>> Serialize for Base64Bytes<B> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&json::encode_base64(self.0.as_ref()))
    }
}

impl<'de, B: From<Vec<u8>>> Deserialize<'de> for Base64Bytes<B> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = Option::<String>::deserialize(d)?.unwrap_or_default();
        json::decode_base64(&text)
            .map(|bytes| Base64Bytes(B::from(bytes)))
            .map_err(serde::de::Error::custom)
    }
}

impl From<Vec<u8>> for Base64Bytes<Bytes> {
    fn from(bytes: Vec<u8>) -> Self {
        Base64Bytes(Bytes::from(bytes))
    }
}

impl From<&'static [u8]> for Base64Bytes<Bytes> {
    fn from(bytes: &'static [u8]) -> Self {
        Base64Bytes(Bytes::from_static(bytes))
    }
}

/// `ProcessEvent.DataEvent`: a chunk of output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DataEvent {
    Stdout(Base64Bytes<Bytes>),
    Stderr(Base64Bytes<Bytes>),
    Pty(Base64Bytes<Bytes>),
}

impl DataEvent {
    /// The chunk, whichever output it came from.
    pub fn bytes(&self) -> &Bytes {
        match self {
            DataEvent::Stdout(b) | DataEvent::Stderr(b) | DataEvent::Pty(b) => &b.0,
        }
    }

    /// Its field number in `ProcessEvent.DataEvent`.
    fn tag(&self) -> u32 {
        match self {
            DataEvent::Stdout(_) => 1,
            DataEvent::Stderr(_) => 2,
            DataEvent::Pty(_) => 3,
        }
    }

    /// The protobuf encoding of `StartResponse{event: {data: self}}` in two parts:
    /// everything up to the output bytes (appended to `prefix`: a dozen bytes), then
    /// the output itself, returned as is. A stream sends both in turn and never
    /// copies the chunk; together they are exactly the message's encoding.
    pub fn encode_response_split(&self, prefix: &mut impl prost::bytes::BufMut) -> Bytes {
        use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
        let payload = self.bytes();
        let field = |tag: u32, len: usize| key_len(tag) + encoded_len_varint(len as u64) + len;
        // DataEvent{<stream>: payload} inside ProcessEvent{data (2)} inside
        // StartResponse{event (1)}.
        let data_len = field(self.tag(), payload.len());
        let event_len = field(2, data_len);
        for (tag, len) in [(1, event_len), (2, data_len), (self.tag(), payload.len())] {
            encode_key(tag, WireType::LengthDelimited, prefix);
            encode_varint(len as u64, prefix);
        }
        payload.clone()
    }
}

impl Default for DataEvent {
    fn default() -> Self {
        DataEvent::Stdout(Base64Bytes::default())
    }
}

oneof_message!(DataEvent {
    1 => Stdout(bytes),
    2 => Stderr(bytes),
    3 => Pty(bytes),
});

#[derive(Clone, Copy, PartialEq, Eq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct StartEvent {
    #[prost(uint32, tag = "1")]
    #[serde(deserialize_with = "json::de_u32")]
    pub pid: u32,
}

#[derive(Clone, PartialEq, Eq, prost::Message, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct EndEvent {
    #[prost(sint32, tag = "1")]
    #[serde(alias = "exit_code", deserialize_with = "json::de_i32")]
    pub exit_code: i32,
    #[prost(bool, tag = "2")]
    pub exited: bool,
    #[prost(string, tag = "3")]
    pub status: String,
    #[prost(string, optional, tag = "4")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl EndEvent {
    /// The exit code a shell would report: the process's own, or 128 + N when signal
    /// N ended it (envd's `status` names the signal as Go does: `signal: killed`).
    pub fn shell_exit_code(&self) -> i32 {
        if self.exited {
            return self.exit_code;
        }
        let signal = match self.status.rsplit(' ').next().unwrap_or_default() {
            "hangup" => 1,
            "interrupt" => 2,
            "quit" => 3,
            "aborted" => 6,
            "killed" => 9,
            "terminated" => 15,
            other => other.parse().unwrap_or(0),
        };
        128 + signal
    }
}

/// An empty message (`ProcessEvent.KeepAlive` and every empty request or response).
#[derive(Clone, Copy, PartialEq, Eq, prost::Message, Serialize, Deserialize)]
pub struct KeepAlive {}

/// `ProcessEvent`: what a Start or Connect stream carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ProcessEvent {
    Start(StartEvent),
    Data(DataEvent),
    End(EndEvent),
    Keepalive(KeepAlive),
}

impl Default for ProcessEvent {
    fn default() -> Self {
        ProcessEvent::Keepalive(KeepAlive {})
    }
}

oneof_message!(ProcessEvent {
    1 => Start(message),
    2 => Data(message),
    3 => End(message),
    4 => Keepalive(message),
});

/// `StartResponse` and `ConnectResponse` (the same shape).
#[derive(Clone, PartialEq, Eq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct StartResponse {
    #[prost(message, optional, tag = "1")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<ProcessEvent>,
}

pub type ConnectResponse = StartResponse;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ProcessSelector {
    Pid(#[serde(deserialize_with = "json::de_u32")] u32),
    Tag(String),
}

impl Default for ProcessSelector {
    fn default() -> Self {
        ProcessSelector::Pid(0)
    }
}

impl std::fmt::Display for ProcessSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProcessSelector::Pid(pid) => write!(f, "pid {pid}"),
            ProcessSelector::Tag(tag) => write!(f, "tag {tag:?}"),
        }
    }
}

oneof_message!(ProcessSelector {
    1 => Pid(uint32),
    2 => Tag(string),
});

/// `ProcessInput`: bytes for a process's stdin pipe or its terminal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ProcessInput {
    Stdin(Base64Bytes),
    Pty(Base64Bytes),
}

impl Default for ProcessInput {
    fn default() -> Self {
        ProcessInput::Stdin(Base64Bytes::default())
    }
}

oneof_message!(ProcessInput {
    1 => Stdin(bytes),
    2 => Pty(bytes),
});

/// envd's `Signal` enum; JSON carries the value's name.
/// `Default` (from prost) is `Unspecified`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, prost::Enumeration, Serialize, Deserialize)]
#[repr(i32)]
pub enum Signal {
    #[serde(rename = "SIGNAL_UNSPECIFIED")]
    Unspecified = 0,
    #[serde(rename = "SIGNAL_SIGTERM")]
    Sigterm = 15,
    #[serde(rename = "SIGNAL_SIGKILL")]
    Sigkill = 9,
}

impl ProtoEnum for Signal {
    const VALUES: &'static [(i32, &'static str)] = &[
        (0, "SIGNAL_UNSPECIFIED"),
        (15, "SIGNAL_SIGTERM"),
        (9, "SIGNAL_SIGKILL"),
    ];
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

#[derive(Clone, PartialEq, Eq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct SendSignalRequest {
    #[prost(message, optional, tag = "1")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessSelector>,
    #[prost(enumeration = "Signal", tag = "2")]
    #[serde(
        serialize_with = "json::ser_enum::<Signal, _>",
        deserialize_with = "json::de_enum::<Signal, _>"
    )]
    pub signal: i32,
}

/// `ConnectRequest`, `CloseStdinRequest`: a process selector only.
#[derive(Clone, PartialEq, Eq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct ConnectRequest {
    #[prost(message, optional, tag = "1")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessSelector>,
}

pub type CloseStdinRequest = ConnectRequest;

#[derive(Clone, PartialEq, Eq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct UpdateRequest {
    #[prost(message, optional, tag = "1")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessSelector>,
    #[prost(message, optional, tag = "2")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pty: Option<Pty>,
}

#[derive(Clone, PartialEq, Eq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct SendInputRequest {
    #[prost(message, optional, tag = "1")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessSelector>,
    #[prost(message, optional, tag = "2")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<ProcessInput>,
}

/// `StreamInputRequest.StartEvent`: which process the stream's input is for.
#[derive(Clone, PartialEq, Eq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct StreamInputStart {
    #[prost(message, optional, tag = "1")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessSelector>,
}

/// `StreamInputRequest.DataEvent` (its one field is number 2 in envd's spec).
#[derive(Clone, PartialEq, Eq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct StreamInputData {
    #[prost(message, optional, tag = "2")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<ProcessInput>,
}

/// One message of a `StreamInput` client stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StreamInputRequest {
    Start(StreamInputStart),
    Data(StreamInputData),
    Keepalive(KeepAlive),
}

impl Default for StreamInputRequest {
    fn default() -> Self {
        StreamInputRequest::Keepalive(KeepAlive {})
    }
}

oneof_message!(StreamInputRequest {
    1 => Start(message),
    2 => Data(message),
    3 => Keepalive(message),
});

#[derive(Clone, PartialEq, Eq, prost::Message, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ProcessInfo {
    #[prost(message, required, tag = "1")]
    pub config: ProcessConfig,
    #[prost(uint32, tag = "2")]
    #[serde(deserialize_with = "json::de_u32")]
    pub pid: u32,
    #[prost(string, optional, tag = "3")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

#[derive(Clone, PartialEq, Eq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct ListResponse {
    #[prost(message, repeated, tag = "1")]
    pub processes: Vec<ProcessInfo>,
}

/// Every empty message of the service: `ListRequest`, `UpdateResponse`,
/// `SendInputResponse`, `StreamInputResponse`, `SendSignalResponse`,
/// `CloseStdinResponse`.
pub type Empty = KeepAlive;
