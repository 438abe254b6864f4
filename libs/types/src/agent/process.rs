//! envd's `process.Process` service (`packages/envd/spec/process/process.proto`):
//! every message, with its exact field numbers and types for the protobuf codec and
//! the protobuf JSON mapping for the JSON codec. Messages that are a single `oneof`
//! are Rust enums (`ProcessEvent`, `DataEvent`, `ProcessSelector`, ...).

use std::collections::BTreeMap;

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
/// `bytes`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Base64Bytes(pub Vec<u8>);

impl std::fmt::Debug for Base64Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match std::str::from_utf8(&self.0) {
            Ok(text) if text.len() <= 256 => write!(f, "Base64Bytes({text:?})"),
            _ => write!(f, "Base64Bytes({} bytes)", self.0.len()),
        }
    }
}

impl Serialize for Base64Bytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&json::encode_base64(&self.0))
    }
}

impl<'de> Deserialize<'de> for Base64Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = Option::<String>::deserialize(d)?.unwrap_or_default();
        json::decode_base64(&text)
            .map(Base64Bytes)
            .map_err(serde::de::Error::custom)
    }
}

/// `ProcessEvent.DataEvent`: a chunk of output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DataEvent {
    Stdout(Base64Bytes),
    Stderr(Base64Bytes),
    Pty(Base64Bytes),
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
