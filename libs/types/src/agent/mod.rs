//! The in-sandbox agent's protocol: E2B envd's Connect services `process.Process`
//! ([`process`]) and `filesystem.Filesystem` ([`filesystem`]), wire-compatible with
//! `packages/envd/spec/{process,filesystem}/*.proto` in `e2b-dev/infra`.
//!
//! Every message is a hand-written prost message (exact field numbers and types, no
//! code generation) that also carries serde for the protobuf JSON mapping, so one
//! type serves both Connect codecs: [`Codec::Proto`] (`application/proto`,
//! `application/connect+proto`) and [`Codec::Json`] (`application/json`,
//! `application/connect+json`). Plus the Connect framing both sides share:
//! envelopes, errors, end-of-stream messages.

pub mod filesystem;
mod json;
pub mod process;
mod wire;

pub use filesystem::*;
pub use json::{ProtoEnum, decode_base64, encode_base64};
pub use process::*;

use bytes::{Buf, Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The envd port E2B's SDKs dial; our agent listens on it when asked for TCP.
pub const ENVD_PORT: u16 = 49983;
/// Version of the agent protocol this crate describes.
pub const PROTOCOL_VERSION: &str = "envd-0.1/aetherium-2";

/// The envd version the agent stands for towards E2B's SDKs (the `envdVersion` of
/// the E2B control plane). The SDKs turn features on by it: 0.4.0 default user,
/// 0.5.2 close-stdin, 0.5.7 octet-stream uploads, 0.6.2 file metadata (which the
/// agent does not keep), 0.6.3 watch entries. So: the highest version below the
/// first gate the agent does not meet.
pub const ENVD_COMPAT_VERSION: &str = "0.6.1";

/// What a sandbox uses now, as the agent's (envd's) `GET /metrics` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SandboxUsage {
    /// Unix seconds.
    pub ts: i64,
    pub cpu_count: u32,
    /// Percent (0 to 100) of all its CPUs since the previous sample.
    pub cpu_used_pct: f64,
    pub mem_total: u64,
    pub mem_used: u64,
    pub disk_used: u64,
    pub disk_total: u64,
}

pub const PROCESS_LIST_PATH: &str = "/process.Process/List";
pub const PROCESS_START_PATH: &str = "/process.Process/Start";
pub const PROCESS_CONNECT_PATH: &str = "/process.Process/Connect";
pub const PROCESS_UPDATE_PATH: &str = "/process.Process/Update";
pub const PROCESS_STREAM_INPUT_PATH: &str = "/process.Process/StreamInput";
pub const PROCESS_SEND_INPUT_PATH: &str = "/process.Process/SendInput";
pub const PROCESS_SEND_SIGNAL_PATH: &str = "/process.Process/SendSignal";
pub const PROCESS_CLOSE_STDIN_PATH: &str = "/process.Process/CloseStdin";

pub const FILESYSTEM_STAT_PATH: &str = "/filesystem.Filesystem/Stat";
pub const FILESYSTEM_MAKE_DIR_PATH: &str = "/filesystem.Filesystem/MakeDir";
pub const FILESYSTEM_MOVE_PATH: &str = "/filesystem.Filesystem/Move";
pub const FILESYSTEM_LIST_DIR_PATH: &str = "/filesystem.Filesystem/ListDir";
pub const FILESYSTEM_REMOVE_PATH: &str = "/filesystem.Filesystem/Remove";
pub const FILESYSTEM_WATCH_DIR_PATH: &str = "/filesystem.Filesystem/WatchDir";
pub const FILESYSTEM_CREATE_WATCHER_PATH: &str = "/filesystem.Filesystem/CreateWatcher";
pub const FILESYSTEM_GET_WATCHER_EVENTS_PATH: &str = "/filesystem.Filesystem/GetWatcherEvents";
pub const FILESYSTEM_REMOVE_WATCHER_PATH: &str = "/filesystem.Filesystem/RemoveWatcher";

/// Content type of Connect unary calls with the JSON codec.
pub const CONNECT_UNARY_JSON: &str = "application/json";
/// Content type of Connect unary calls with the protobuf codec.
pub const CONNECT_UNARY_PROTO: &str = "application/proto";
/// Content type of Connect streaming calls with the JSON codec.
pub const CONNECT_STREAM_JSON: &str = "application/connect+json";
/// Content type of Connect streaming calls with the protobuf codec.
pub const CONNECT_STREAM_PROTO: &str = "application/connect+proto";
/// Envelope flag of a compressed message.
pub const CONNECT_COMPRESSED_FLAG: u8 = 0x01;
/// Envelope flag marking the end-of-stream message of a Connect stream.
pub const CONNECT_END_STREAM_FLAG: u8 = 0x02;
/// Largest envelope either side accepts (keeps a bad peer from making us allocate).
pub const MAX_ENVELOPE_BYTES: usize = 16 * 1024 * 1024;

/// A message of the protocol: encodable with either codec.
pub trait WireMessage: prost::Message + Default + Serialize + DeserializeOwned {}
impl<T: prost::Message + Default + Serialize + DeserializeOwned> WireMessage for T {}

/// The two Connect codecs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    Proto,
    Json,
}

impl Codec {
    /// From a unary call's media type (`application/proto`, `application/json`).
    pub fn from_unary_media_type(media: &str) -> Option<Codec> {
        match media {
            CONNECT_UNARY_PROTO => Some(Codec::Proto),
            CONNECT_UNARY_JSON => Some(Codec::Json),
            _ => None,
        }
    }

    /// From a streaming call's media type (`application/connect+proto`, `+json`).
    pub fn from_stream_media_type(media: &str) -> Option<Codec> {
        match media {
            CONNECT_STREAM_PROTO => Some(Codec::Proto),
            CONNECT_STREAM_JSON => Some(Codec::Json),
            _ => None,
        }
    }

    pub fn unary_content_type(self) -> &'static str {
        match self {
            Codec::Proto => CONNECT_UNARY_PROTO,
            Codec::Json => CONNECT_UNARY_JSON,
        }
    }

    pub fn stream_content_type(self) -> &'static str {
        match self {
            Codec::Proto => CONNECT_STREAM_PROTO,
            Codec::Json => CONNECT_STREAM_JSON,
        }
    }

    pub fn encode<M: WireMessage>(self, message: &M) -> Vec<u8> {
        match self {
            Codec::Proto => message.encode_to_vec(),
            // Our messages are structs with string keys and no maps with non-string
            // keys, for which serde_json cannot fail; the fallback keeps this total.
            Codec::Json => serde_json::to_vec(message).unwrap_or_else(|_| b"{}".to_vec()),
        }
    }

    /// A message in a Connect envelope (`flags`, big-endian length, message), encoded
    /// straight after the header: no second buffer, no copy.
    pub fn encode_enveloped<M: WireMessage>(self, flags: u8, message: &M) -> Vec<u8> {
        let mut out = match self {
            Codec::Proto => Vec::with_capacity(5 + message.encoded_len()),
            Codec::Json => Vec::with_capacity(128),
        };
        out.extend_from_slice(&[flags, 0, 0, 0, 0]);
        match self {
            Codec::Proto => message.encode_raw(&mut out),
            Codec::Json => {
                if serde_json::to_writer(&mut out, message).is_err() {
                    out.truncate(5);
                    out.extend_from_slice(b"{}");
                }
            }
        }
        let len = (out.len() - 5) as u32;
        out[1..5].copy_from_slice(&len.to_be_bytes());
        out
    }

    /// Decodes a message from shared buffers (a [`Bytes`], or any `Buf` over them):
    /// with the protobuf codec, `bytes` fields held as [`Bytes`] (output chunks) are
    /// slices of what was received (when the buffer's `copy_to_bytes` slices), not
    /// copies.
    pub fn decode_buf<M: WireMessage>(self, mut buf: impl Buf) -> Result<M, ConnectError> {
        match self {
            Codec::Proto => M::decode(buf).map_err(|e| {
                ConnectError::new(
                    code::INVALID_ARGUMENT,
                    format!("malformed {}: {e}", short_type_name::<M>()),
                )
            }),
            Codec::Json => self.decode(&buf.copy_to_bytes(buf.remaining())),
        }
    }

    /// Decodes a message; a malformed one is an `invalid_argument` error. An empty
    /// JSON body reads as `{}` (the empty message), as it does in protobuf.
    pub fn decode<M: WireMessage>(self, bytes: &[u8]) -> Result<M, ConnectError> {
        let name = short_type_name::<M>();
        match self {
            Codec::Proto => M::decode(bytes).map_err(|e| {
                ConnectError::new(code::INVALID_ARGUMENT, format!("malformed {name}: {e}"))
            }),
            Codec::Json => {
                let bytes = if bytes.iter().all(u8::is_ascii_whitespace) {
                    b"{}"
                } else {
                    bytes
                };
                serde_json::from_slice(bytes).map_err(|e| {
                    ConnectError::new(
                        code::INVALID_ARGUMENT,
                        format!("malformed {name} JSON: {e}"),
                    )
                })
            }
        }
    }
}

fn short_type_name<M>() -> &'static str {
    std::any::type_name::<M>()
        .rsplit("::")
        .next()
        .unwrap_or("message")
}

/// Connect error codes.
pub mod code {
    pub const CANCELED: &str = "canceled";
    pub const UNKNOWN: &str = "unknown";
    pub const INVALID_ARGUMENT: &str = "invalid_argument";
    pub const DEADLINE_EXCEEDED: &str = "deadline_exceeded";
    pub const NOT_FOUND: &str = "not_found";
    pub const ALREADY_EXISTS: &str = "already_exists";
    pub const PERMISSION_DENIED: &str = "permission_denied";
    pub const RESOURCE_EXHAUSTED: &str = "resource_exhausted";
    pub const FAILED_PRECONDITION: &str = "failed_precondition";
    pub const ABORTED: &str = "aborted";
    pub const OUT_OF_RANGE: &str = "out_of_range";
    pub const UNIMPLEMENTED: &str = "unimplemented";
    pub const INTERNAL: &str = "internal";
    pub const UNAVAILABLE: &str = "unavailable";
    pub const DATA_LOSS: &str = "data_loss";
    pub const UNAUTHENTICATED: &str = "unauthenticated";
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
            code::CANCELED => 499,
            code::INVALID_ARGUMENT | code::OUT_OF_RANGE => 400,
            code::DEADLINE_EXCEEDED => 504,
            code::NOT_FOUND => 404,
            code::ALREADY_EXISTS | code::ABORTED => 409,
            code::PERMISSION_DENIED => 403,
            code::RESOURCE_EXHAUSTED => 429,
            code::FAILED_PRECONDITION => 412,
            code::UNIMPLEMENTED => 501,
            code::UNAVAILABLE => 503,
            code::UNAUTHENTICATED => 401,
            _ => 500,
        }
    }

    /// The Connect code for a unary response's HTTP status when its body is not a
    /// Connect error (Connect's "HTTP to error code" table).
    pub fn code_for_http_status(status: u16) -> &'static str {
        match status {
            400 => code::INTERNAL,
            401 => code::UNAUTHENTICATED,
            403 => code::PERMISSION_DENIED,
            404 => code::UNIMPLEMENTED,
            429 | 502..=504 => code::UNAVAILABLE,
            _ => code::UNKNOWN,
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

/// The header of the envelope at the front of `buf`: its flags and its message
/// length, once 5 bytes are there. An error when the length is over
/// [`MAX_ENVELOPE_BYTES`] (decided from the header alone, before anything is
/// allocated for the message).
pub fn envelope_header(buf: &[u8]) -> Result<Option<(u8, usize)>, ConnectError> {
    let Some(header) = buf.get(..5) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if len > MAX_ENVELOPE_BYTES {
        return Err(ConnectError::new(
            code::RESOURCE_EXHAUSTED,
            format!("message of {len} bytes is over the {MAX_ENVELOPE_BYTES} byte limit"),
        ));
    }
    Ok(Some((header[0], len)))
}

/// Splits one complete envelope off the front of `buf`. Returns `Ok(None)` while more
/// bytes are needed; an error when the declared length is over `MAX_ENVELOPE_BYTES`.
pub fn take_envelope(buf: &mut Vec<u8>) -> Result<Option<(u8, Vec<u8>)>, ConnectError> {
    let Some((flags, len)) = envelope_header(buf)? else {
        return Ok(None);
    };
    if buf.len() < 5 + len {
        return Ok(None);
    }
    let message = buf[5..5 + len].to_vec();
    buf.drain(..5 + len);
    Ok(Some((flags, message)))
}

/// [`take_envelope`] on a shared buffer: the message is split off `buf` (no copy,
/// nothing moved), ready for [`Codec::decode_buf`].
pub fn split_envelope(buf: &mut BytesMut) -> Result<Option<(u8, Bytes)>, ConnectError> {
    let Some((flags, len)) = envelope_header(buf)? else {
        return Ok(None);
    };
    if buf.len() < 5 + len {
        return Ok(None);
    }
    buf.advance(5);
    Ok(Some((flags, buf.split_to(len).freeze())))
}

#[cfg(test)]
mod tests;
