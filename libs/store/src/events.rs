//! The event log: every published event, in publication order, with a sequence
//! number, so that event streams can resume after a reconnect (`GET /events?after=`).
//! A trait of its own (not part of [`super::Store`]) so that each database implements
//! it separately: SQLite now, PostgreSQL later.

use aetherium_types::{Event, EventFilter};
use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::error::CoreResult;

#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Appends `events` in order and returns their sequence numbers (increasing).
    async fn append_events(&self, events: &[Event]) -> CoreResult<Vec<i64>>;

    /// Events with `seq > after` that pass `filter`, oldest first, at most `limit`.
    async fn read_events(
        &self,
        after: i64,
        filter: &EventFilter,
        limit: u32,
    ) -> CoreResult<Vec<Event>>;

    /// The newest sequence number (0 when the log is empty).
    async fn latest_event_seq(&self) -> CoreResult<i64>;

    /// Deletes events older than `older_than` and all but the newest `keep` rows;
    /// returns how many went.
    async fn prune_events(&self, older_than: DateTime<Utc>, keep: u64) -> CoreResult<u64>;
}
