//! What the platform lets callers watch: its events and its own logs (live, and from
//! a position in their logs), and the counts its metrics show. The gateway's streams
//! and `/metrics` read through these, never the store or the bus directly.

use aetherium_types::logs::{LogFilter, LogOrder, LogRecord};
use aetherium_types::{Event, EventFilter, VmStatus, Worker};
use tokio::sync::broadcast;

use super::Platform;
use crate::error::CoreResult;
use crate::queue::QueueDepth;

impl Platform {
    /// Every event published from now on. Subscribe before reading a position
    /// ([`Platform::latest_event_seq`]) so that nothing falls in between.
    pub fn subscribe_events(&self) -> broadcast::Receiver<Event> {
        self.bus.subscribe()
    }

    /// The newest stored event's number (0 when there is none).
    pub async fn latest_event_seq(&self) -> CoreResult<i64> {
        self.events.latest_event_seq().await
    }

    /// Stored events numbered after `after` that pass `filter`, oldest first.
    pub async fn events_after(
        &self,
        after: i64,
        filter: &EventFilter,
        limit: u32,
    ) -> CoreResult<Vec<Event>> {
        self.events.read_events(after, filter, limit).await
    }

    /// The platform's own log records from now on (see [`Platform::subscribe_events`]).
    pub fn subscribe_logs(&self) -> broadcast::Receiver<LogRecord> {
        self.log_feed.subscribe()
    }

    /// The newest stored log record's id (0 when there is none).
    pub async fn latest_log_id(&self) -> CoreResult<i64> {
        self.logs.latest_log_id().await
    }

    /// Stored log records that pass `filter`, from `cursor` (exclusive) in `order`.
    pub async fn query_logs(
        &self,
        filter: &LogFilter,
        cursor: Option<i64>,
        order: LogOrder,
        limit: u32,
    ) -> CoreResult<Vec<LogRecord>> {
        self.logs.query_logs(filter, cursor, order, limit).await
    }

    /// How many VMs are in each status.
    pub async fn vm_counts_by_status(&self) -> CoreResult<Vec<(VmStatus, u64)>> {
        self.store.count_vms_by_status().await
    }

    /// Tasks by queue and state.
    pub async fn queue_depths(&self) -> CoreResult<Vec<QueueDepth>> {
        self.queue.depths().await
    }

    /// Every registered worker, as stored.
    pub async fn list_workers(&self) -> CoreResult<Vec<Worker>> {
        self.store.list_workers().await
    }
}
