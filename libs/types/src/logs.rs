//! The platform's own logs as the API serves them (`POST /logs/query`,
//! `GET /logs/stream`): records captured from the services' tracing output, tagged
//! with the task, VM, worker and execution they concern.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Severity, least to most severe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub const ALL: [LogLevel; 5] = [
        LogLevel::Trace,
        LogLevel::Debug,
        LogLevel::Info,
        LogLevel::Warn,
        LogLevel::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }

    /// 0 (trace) to 4 (error), as stored.
    pub fn rank(self) -> i64 {
        self as i64
    }

    pub fn from_rank(rank: i64) -> LogLevel {
        LogLevel::ALL
            .into_iter()
            .find(|l| l.rank() == rank)
            .unwrap_or(LogLevel::Info)
    }
}

wire_names!(LogLevel, "log level");

/// One log record of the platform.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LogRecord {
    /// Position in the log, increasing by arrival; `0` until the record is stored.
    /// Streams use it as the event id (resume with `?after=<id>`), queries as the
    /// cursor's anchor.
    pub id: i64,
    pub timestamp: DateTime<Utc>,
    pub level: LogLevel,
    /// Where it was logged (a Rust module path such as `aetherium_core::worker`).
    pub target: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_id: Option<String>,
    /// The record's other fields (and those of its enclosing spans).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// Largest page of `POST /logs/query`.
pub const MAX_LOG_LIMIT: u32 = 1000;
/// Page size when `limit` is left out.
pub const DEFAULT_LOG_LIMIT: u32 = 100;

/// Order of a log query's results.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum LogOrder {
    /// Newest first (the default).
    #[default]
    Desc,
    /// Oldest first.
    Asc,
}

/// Which records a query or a stream wants. Every filter is optional; they combine
/// with AND.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct LogFilter {
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 128))]
    pub task_id: Option<String>,
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 128))]
    pub vm_id: Option<String>,
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 128))]
    pub worker_id: Option<String>,
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 128))]
    pub execution_id: Option<String>,
    /// Minimum level (`warn` returns warn and error).
    pub level: Option<LogLevel>,
    /// Records at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Records before this time.
    pub until: Option<DateTime<Utc>>,
    /// Case-sensitive substring of the message (at most 200 characters).
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 200))]
    pub contains: Option<String>,
}

pub const MAX_CONTAINS_LEN: usize = 200;

impl LogFilter {
    pub fn validate(&self) -> Result<(), String> {
        for (name, value) in [
            ("task_id", &self.task_id),
            ("vm_id", &self.vm_id),
            ("worker_id", &self.worker_id),
            ("execution_id", &self.execution_id),
        ] {
            if let Some(v) = value
                && (v.is_empty() || v.len() > 128)
            {
                return Err(format!("{name} must be 1 to 128 characters long"));
            }
        }
        if let Some(c) = &self.contains
            && (c.is_empty() || c.chars().count() > MAX_CONTAINS_LEN)
        {
            return Err(format!(
                "contains must be 1 to {MAX_CONTAINS_LEN} characters long"
            ));
        }
        if let (Some(since), Some(until)) = (self.since, self.until)
            && since >= until
        {
            return Err("since must be before until".into());
        }
        Ok(())
    }

    /// Whether a record passes the filter (the same test the store's query applies).
    pub fn matches(&self, r: &LogRecord) -> bool {
        fn same(want: &Option<String>, have: &Option<String>) -> bool {
            want.is_none() || want == have
        }
        same(&self.task_id, &r.task_id)
            && same(&self.vm_id, &r.vm_id)
            && same(&self.worker_id, &r.worker_id)
            && same(&self.execution_id, &r.execution_id)
            && self.level.is_none_or(|l| r.level >= l)
            && self.since.is_none_or(|s| r.timestamp >= s)
            && self.until.is_none_or(|u| r.timestamp < u)
            && self
                .contains
                .as_deref()
                .is_none_or(|c| r.message.contains(c))
    }
}

/// Body of `POST /logs/query`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LogQueryRequest {
    #[serde(flatten)]
    pub filter: LogFilter,
    /// Page size, 1 to 1000 (default 100).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1000))]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[serde(default)]
    pub cursor: Option<String>,
    /// `desc` (newest first, default) or `asc`.
    #[serde(default)]
    pub order: Option<LogOrder>,
}

/// Answer of `POST /logs/query`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LogQueryResponse {
    pub logs: Vec<LogRecord>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_rejects_unknown_fields_and_parses_levels() {
        let q: Result<LogQueryRequest, _> =
            serde_json::from_str(r#"{"task_id":"t","level":"warn","limit":5}"#);
        let q = q.ok().unwrap_or_default();
        assert_eq!(q.filter.task_id.as_deref(), Some("t"));
        assert_eq!(q.filter.level, Some(LogLevel::Warn));
        assert_eq!(q.limit, Some(5));
        assert!(serde_json::from_str::<LogQueryRequest>(r#"{"tsak_id":"t"}"#).is_err());
        assert!(serde_json::from_str::<LogQueryRequest>(r#"{"level":"loud"}"#).is_err());
        assert!(LogLevel::Error > LogLevel::Warn);
        assert_eq!(LogLevel::from_rank(LogLevel::Debug.rank()), LogLevel::Debug);
    }
}
