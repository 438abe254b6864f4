//! The platform's own log records (captured by
//! [`aetherium_common::logcapture`]), for `POST /logs/query` and `GET /logs/stream`.
//! A trait of its own so that each database implements it separately.

use aetherium_types::logs::{LogFilter, LogOrder, LogRecord};
use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::error::CoreResult;

#[async_trait]
pub trait LogStore: Send + Sync + 'static {
    /// Stores `records` in order and sets their `id`s (increasing).
    async fn append_logs(&self, records: &mut [LogRecord]) -> CoreResult<()>;

    /// Records passing `filter` in `order` (by id), strictly after `cursor` in that
    /// order (`id < cursor` newest first, `id > cursor` oldest first), at most `limit`.
    async fn query_logs(
        &self,
        filter: &LogFilter,
        cursor: Option<i64>,
        order: LogOrder,
        limit: u32,
    ) -> CoreResult<Vec<LogRecord>>;

    /// The newest record's id (0 when there is none).
    async fn latest_log_id(&self) -> CoreResult<i64>;

    /// Deletes records older than `older_than` and all but the newest `keep`;
    /// returns how many went.
    async fn prune_logs(&self, older_than: DateTime<Utc>, keep: u64) -> CoreResult<u64>;
}
