//! Persistent state: VMs, tasks, executions, workers. One trait, one implementation
//! per database (SQLite now; PostgreSQL joins it for distributed mode and must pass
//! the same conformance tests).

pub mod auth;
pub mod events;
pub mod logs;
pub(crate) mod sqlite;
mod sqlite_auth;
mod sqlite_events;

use aetherium_types::task::QueueName;
use aetherium_types::{Execution, Task, TaskStatus, TaskType, Vm, VmStatus, Worker};
use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};

pub use auth::{AuditFilter, AuthStore, Session};
pub use events::EventLog;
pub use logs::LogStore;
pub use sqlite::SqliteStore;

use crate::error::CoreResult;

/// A position in a list ordered newest first (`created_at DESC, id DESC`): the last
/// row of the page before. Keyset paging, so rows inserted meanwhile never shift the
/// pages (each row that existed when paging began is visited exactly once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub created_at_ms: i64,
    pub id: String,
}

impl Cursor {
    pub fn after(created_at: DateTime<Utc>, id: &str) -> Cursor {
        Cursor {
            created_at_ms: created_at.timestamp_millis(),
            id: id.to_string(),
        }
    }

    /// The opaque form clients pass back: base64url of `v1:<ms>:<id>`.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("v1:{}:{}", self.created_at_ms, self.id))
    }

    pub fn decode(text: &str) -> Result<Cursor, String> {
        let bad = || format!("cursor {text:?} is not a cursor this API returned");
        let bytes = URL_SAFE_NO_PAD.decode(text.trim()).map_err(|_| bad())?;
        let plain = String::from_utf8(bytes).map_err(|_| bad())?;
        let rest = plain.strip_prefix("v1:").ok_or_else(bad)?;
        let (ms, id) = rest.split_once(':').ok_or_else(bad)?;
        let created_at_ms = ms.parse::<i64>().map_err(|_| bad())?;
        if id.is_empty() || id.len() > 128 {
            return Err(bad());
        }
        Ok(Cursor {
            created_at_ms,
            id: id.to_string(),
        })
    }
}

/// Paging for list calls: at most `limit` rows, after `cursor`. Lists are ordered
/// newest first (`created_at DESC, id DESC`).
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub limit: u32,
    pub cursor: Option<Cursor>,
}

impl Page {
    pub const DEFAULT_LIMIT: u32 = 100;
    pub const MAX_LIMIT: u32 = 1000;

    /// For internal callers: the limit is clamped to `1..=MAX_LIMIT`.
    pub fn new(limit: Option<u32>, cursor: Option<Cursor>) -> Page {
        Page {
            limit: limit
                .unwrap_or(Self::DEFAULT_LIMIT)
                .clamp(1, Self::MAX_LIMIT),
            cursor,
        }
    }

    /// For the API: a `limit` of 0 or above [`Page::MAX_LIMIT`], or a cursor this API
    /// did not make, is refused (the message says why).
    pub fn parse(limit: Option<u32>, cursor: Option<&str>) -> Result<Page, String> {
        let limit = limit.unwrap_or(Self::DEFAULT_LIMIT);
        if limit == 0 || limit > Self::MAX_LIMIT {
            return Err(format!(
                "limit must be between 1 and {} (default {})",
                Self::MAX_LIMIT,
                Self::DEFAULT_LIMIT
            ));
        }
        let cursor = match cursor {
            Some(c) if !c.is_empty() => Some(Cursor::decode(c)?),
            _ => None,
        };
        Ok(Page { limit, cursor })
    }

    /// This page with one row more, so that the result tells whether a next page
    /// exists (see [`Page::finish`]).
    pub fn probe(&self) -> Page {
        Page {
            limit: self.limit.saturating_add(1),
            cursor: self.cursor.clone(),
        }
    }

    /// Cuts rows fetched with [`Page::probe`] to this page, and returns the next
    /// page's cursor (`None` when this is the last page).
    pub fn finish<T>(
        &self,
        mut rows: Vec<T>,
        key: impl Fn(&T) -> Cursor,
    ) -> (Vec<T>, Option<String>) {
        let limit = self.limit as usize;
        if rows.len() <= limit {
            return (rows, None);
        }
        rows.truncate(limit);
        let next = rows.last().map(|last| key(last).encode());
        (rows, next)
    }
}

#[derive(Debug, Clone, Default)]
pub struct VmFilter {
    pub status: Option<VmStatus>,
    pub worker_id: Option<String>,
    pub name: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub status: Option<TaskStatus>,
    pub task_type: Option<TaskType>,
    pub vm_id: Option<String>,
    /// The worker that leased the task last.
    pub worker_id: Option<String>,
    pub queue: Option<QueueName>,
    /// `created_at >= created_after`
    pub created_after: Option<DateTime<Utc>>,
    /// `created_at < created_before`
    pub created_before: Option<DateTime<Utc>>,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Cheap round trip, for health checks.
    async fn ping(&self) -> CoreResult<()>;

    /// Closes the connections (waits for in-flight queries).
    async fn close(&self);

    /// Inserts a VM; a live VM with the same name is a `Conflict`.
    async fn insert_vm(&self, vm: &Vm) -> CoreResult<()>;
    async fn get_vm(&self, id: &str) -> CoreResult<Option<Vm>>;
    async fn get_vm_by_name(&self, name: &str) -> CoreResult<Option<Vm>>;
    async fn list_vms(&self, filter: &VmFilter, page: &Page) -> CoreResult<(Vec<Vm>, u64)>;
    /// How many VMs are in each status (statuses with none are left out).
    async fn count_vms_by_status(&self) -> CoreResult<Vec<(VmStatus, u64)>> {
        let mut counts = Vec::new();
        for status in VmStatus::ALL {
            let filter = VmFilter {
                status: Some(status),
                ..Default::default()
            };
            let (_, total) = self.list_vms(&filter, &Page::new(Some(1), None)).await?;
            if total > 0 {
                counts.push((status, total));
            }
        }
        Ok(counts)
    }
    async fn update_vm(&self, vm: &Vm) -> CoreResult<()>;
    /// Sets the status only if the VM is currently in one of `from` (a compare-and-set,
    /// so that concurrent transitions cannot both win). Returns whether it changed.
    async fn transition_vm(
        &self,
        id: &str,
        from: &[VmStatus],
        to: VmStatus,
        error: Option<&str>,
    ) -> CoreResult<bool>;
    async fn delete_vm(&self, id: &str) -> CoreResult<()>;

    async fn insert_execution(&self, execution: &Execution) -> CoreResult<()>;
    async fn get_execution(&self, id: &str) -> CoreResult<Option<Execution>>;
    async fn update_execution(&self, execution: &Execution) -> CoreResult<()>;
    async fn list_executions(&self, vm_id: &str, page: &Page) -> CoreResult<(Vec<Execution>, u64)>;
    /// Marks every unfinished execution of a VM as failed with `error`.
    async fn fail_unfinished_executions(&self, vm_id: &str, error: &str) -> CoreResult<u64>;
    /// Marks direct (streamed or interactive) executions still `running` as failed:
    /// their connection died with the process that served them.
    async fn fail_interrupted_direct_executions(&self, error: &str) -> CoreResult<u64>;

    async fn get_task(&self, id: &str) -> CoreResult<Option<Task>>;
    async fn list_tasks(&self, filter: &TaskFilter, page: &Page) -> CoreResult<(Vec<Task>, u64)>;

    async fn upsert_worker(&self, worker: &Worker) -> CoreResult<()>;
    async fn get_worker(&self, id: &str) -> CoreResult<Option<Worker>>;
    async fn list_workers(&self) -> CoreResult<Vec<Worker>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_forgeries() {
        let c = Cursor {
            created_at_ms: 1_700_000_000_123,
            id: "abc-def".into(),
        };
        assert_eq!(Cursor::decode(&c.encode()), Ok(c.clone()));
        for bad in ["", "!!!", "djE6", "djI6MTox", "djE6eDph", "djE6MTo"] {
            assert!(Cursor::decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn api_limits_are_checked_and_pages_find_their_end() {
        assert_eq!(Page::parse(None, None).map(|p| p.limit), Ok(100));
        assert!(Page::parse(Some(0), None).is_err());
        assert!(Page::parse(Some(1001), None).is_err());
        assert!(Page::parse(Some(1000), Some("x")).is_err());
        assert!(Page::parse(Some(1000), Some("")).is_ok_and(|p| p.cursor.is_none()));
        let page = Page::parse(Some(2), None).unwrap_or_default();
        assert_eq!(page.probe().limit, 3);
        let key = |n: &i64| Cursor {
            created_at_ms: *n,
            id: n.to_string(),
        };
        let (rows, next) = page.finish(vec![5, 4, 3], key);
        assert_eq!(rows, vec![5, 4]);
        assert_eq!(next.as_deref().map(Cursor::decode), Some(Ok(key(&4))));
        let (rows, next) = page.finish(vec![2, 1], key);
        assert_eq!((rows, next), (vec![2, 1], None));
    }
}
