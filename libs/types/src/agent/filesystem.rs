//! envd's `filesystem.Filesystem` service
//! (`packages/envd/spec/filesystem/filesystem.proto`), every message with its exact
//! field numbers and types, plus `google.protobuf.Timestamp`.

use serde::{Deserialize, Serialize};

use super::json::{self, ProtoEnum};
use super::process::KeepAlive;
use super::wire::oneof_message;

/// `google.protobuf.Timestamp`; JSON is an RFC 3339 string in UTC
/// (`"2024-05-01T12:00:00.5Z"`).
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct Timestamp {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

impl Timestamp {
    pub fn from_system_time(time: std::time::SystemTime) -> Timestamp {
        let (seconds, nanos) = match time.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => (d.as_secs() as i64, d.subsec_nanos() as i32),
            Err(e) => {
                // Before 1970: seconds rounds down, nanos stays positive.
                let d = e.duration();
                let secs = -(d.as_secs() as i64);
                match d.subsec_nanos() {
                    0 => (secs, 0),
                    n => (secs - 1, 1_000_000_000 - n as i32),
                }
            }
        };
        Timestamp { seconds, nanos }
    }

    fn to_datetime(self) -> Option<chrono::DateTime<chrono::Utc>> {
        chrono::DateTime::from_timestamp(self.seconds, u32::try_from(self.nanos).ok()?)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.to_datetime() {
            Some(time) => s.collect_str(&time.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
            None => Err(serde::ser::Error::custom("timestamp out of range")),
        }
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let time = chrono::DateTime::parse_from_rfc3339(&text).map_err(serde::de::Error::custom)?;
        Ok(Timestamp {
            seconds: time.timestamp(),
            nanos: time.timestamp_subsec_nanos() as i32,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, prost::Enumeration)]
#[repr(i32)]
pub enum FileType {
    Unspecified = 0,
    File = 1,
    Directory = 2,
    Symlink = 3,
}

impl ProtoEnum for FileType {
    const VALUES: &'static [(i32, &'static str)] = &[
        (0, "FILE_TYPE_UNSPECIFIED"),
        (1, "FILE_TYPE_FILE"),
        (2, "FILE_TYPE_DIRECTORY"),
        (3, "FILE_TYPE_SYMLINK"),
    ];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, prost::Enumeration)]
#[repr(i32)]
pub enum EventType {
    Unspecified = 0,
    Create = 1,
    Write = 2,
    Remove = 3,
    Rename = 4,
    Chmod = 5,
}

impl ProtoEnum for EventType {
    const VALUES: &'static [(i32, &'static str)] = &[
        (0, "EVENT_TYPE_UNSPECIFIED"),
        (1, "EVENT_TYPE_CREATE"),
        (2, "EVENT_TYPE_WRITE"),
        (3, "EVENT_TYPE_REMOVE"),
        (4, "EVENT_TYPE_RENAME"),
        (5, "EVENT_TYPE_CHMOD"),
    ];
}

#[derive(Clone, PartialEq, Eq, prost::Message, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct EntryInfo {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(enumeration = "FileType", tag = "2")]
    #[serde(
        serialize_with = "json::ser_enum::<FileType, _>",
        deserialize_with = "json::de_enum::<FileType, _>"
    )]
    pub r#type: i32,
    #[prost(string, tag = "3")]
    pub path: String,
    /// int64: a string in JSON.
    #[prost(int64, tag = "4")]
    #[serde(
        serialize_with = "json::ser_i64_string",
        deserialize_with = "json::de_i64"
    )]
    pub size: i64,
    /// Permission bits (`0o755`); for a symlink, its target's.
    #[prost(uint32, tag = "5")]
    #[serde(deserialize_with = "json::de_u32")]
    pub mode: u32,
    /// As Go's `FileMode.String()`: `-rw-r--r--`, `drwxr-xr-x`, `Lrwxrwxrwx`.
    #[prost(string, tag = "6")]
    pub permissions: String,
    #[prost(string, tag = "7")]
    pub owner: String,
    #[prost(string, tag = "8")]
    pub group: String,
    #[prost(message, optional, tag = "9")]
    #[serde(alias = "modified_time", skip_serializing_if = "Option::is_none")]
    pub modified_time: Option<Timestamp>,
    #[prost(string, optional, tag = "10")]
    #[serde(alias = "symlink_target", skip_serializing_if = "Option::is_none")]
    pub symlink_target: Option<String>,
}

/// `StatRequest`, `MakeDirRequest`, `RemoveRequest`: a path only.
#[derive(Clone, PartialEq, Eq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct PathRequest {
    #[prost(string, tag = "1")]
    pub path: String,
}

pub type StatRequest = PathRequest;
pub type MakeDirRequest = PathRequest;
pub type RemoveRequest = PathRequest;

/// `StatResponse`, `MakeDirResponse`, `MoveResponse`: one entry.
#[derive(Clone, PartialEq, Eq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct EntryResponse {
    #[prost(message, optional, tag = "1")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry: Option<EntryInfo>,
}

pub type StatResponse = EntryResponse;
pub type MakeDirResponse = EntryResponse;
pub type MoveResponse = EntryResponse;

#[derive(Clone, PartialEq, Eq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct MoveRequest {
    #[prost(string, tag = "1")]
    pub source: String,
    #[prost(string, tag = "2")]
    pub destination: String,
}

#[derive(Clone, PartialEq, Eq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct ListDirRequest {
    #[prost(string, tag = "1")]
    pub path: String,
    /// 0 means 1 (the directory's own entries).
    #[prost(uint32, tag = "2")]
    #[serde(deserialize_with = "json::de_u32")]
    pub depth: u32,
}

#[derive(Clone, PartialEq, Eq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct ListDirResponse {
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<EntryInfo>,
}

/// `WatchDirRequest` and `CreateWatcherRequest` (the same fields).
#[derive(Clone, PartialEq, Eq, prost::Message, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct WatchDirRequest {
    #[prost(string, tag = "1")]
    pub path: String,
    #[prost(bool, tag = "2")]
    pub recursive: bool,
    #[prost(bool, tag = "3")]
    #[serde(alias = "include_entry")]
    pub include_entry: bool,
}

pub type CreateWatcherRequest = WatchDirRequest;

#[derive(Clone, PartialEq, Eq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct FilesystemEvent {
    /// The path relative to the watched directory.
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(enumeration = "EventType", tag = "2")]
    #[serde(
        serialize_with = "json::ser_enum::<EventType, _>",
        deserialize_with = "json::de_enum::<EventType, _>"
    )]
    pub r#type: i32,
    #[prost(message, optional, tag = "3")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry: Option<EntryInfo>,
}

/// One message of a `WatchDir` stream. (Unboxed: messages are short-lived and
/// mostly filesystem events anyway.)
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum WatchDirResponse {
    /// The watch is in place (an empty `StartEvent`).
    Start(KeepAlive),
    Filesystem(FilesystemEvent),
    Keepalive(KeepAlive),
}

impl Default for WatchDirResponse {
    fn default() -> Self {
        WatchDirResponse::Keepalive(KeepAlive {})
    }
}

oneof_message!(WatchDirResponse {
    1 => Start(message),
    2 => Filesystem(message),
    3 => Keepalive(message),
});

/// `CreateWatcherResponse`; also `GetWatcherEventsRequest` and
/// `RemoveWatcherRequest`, which carry the same one field.
#[derive(Clone, PartialEq, Eq, prost::Message, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CreateWatcherResponse {
    #[prost(string, tag = "1")]
    #[serde(alias = "watcher_id")]
    pub watcher_id: String,
}

pub type GetWatcherEventsRequest = CreateWatcherResponse;
pub type RemoveWatcherRequest = CreateWatcherResponse;

#[derive(Clone, PartialEq, Eq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct GetWatcherEventsResponse {
    #[prost(message, repeated, tag = "1")]
    pub events: Vec<FilesystemEvent>,
}
