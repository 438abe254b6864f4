//! Persistent state: VMs, tasks, executions, workers. One set of traits ([`Store`],
//! [`AuthStore`], [`EventLog`], [`LogStore`], …), one SQL implementation of them,
//! [`SqlStore`], generic over the database ([`sql::Dialect`]): [`SqliteStore`]
//! (embedded mode) and [`PgStore`] (distributed mode) are its two instances, both
//! held to one conformance suite (`tests/store_conformance.rs`). [`connect`] picks
//! one by the database URL.

pub mod auth;
pub mod environments;
pub mod error;
pub mod events;
pub mod leases;
pub mod logs;
pub mod secrets;
pub mod sql;
pub mod tasks;
pub mod workers;
pub mod workspaces;

use aetherium_types::task::QueueName;
use aetherium_types::{
    Execution, Task, TaskStatus, TaskType, Vm, VmStatus, Worker, WorkerStatus, WorkerUsage,
};
use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};

pub use auth::{AuditFilter, AuthStore, Session};
pub use environments::EnvironmentStore;
pub use events::EventLog;
pub use leases::{IpLease, IpLeases};
pub use logs::LogStore;
pub use secrets::SecretStore;
pub use sql::{PgStore, PgStoreOptions, SqlStore, SqliteStore};
pub use tasks::{TaskCount, TaskRecords};
pub use workspaces::{PromptStore, WorkspaceStore};

use crate::error::{CoreError, CoreResult};

/// An open database, whichever the URL named. The concrete store is kept (the queue
/// needs its pool); [`Database::store`] and friends give the trait objects the
/// use cases take.
#[derive(Clone)]
pub enum Database {
    Sqlite(std::sync::Arc<SqliteStore>),
    Postgres(std::sync::Arc<PgStore>),
}

/// Opens the database named by `url` and runs its migrations:
/// `sqlite://<path>` (or `sqlite:<path>`) opens (creating) a SQLite file,
/// `postgres://…` / `postgresql://…` connects to PostgreSQL. Anything else is
/// `InvalidInput`; a PostgreSQL server that cannot be reached is `Unavailable`.
pub async fn connect(url: &str) -> CoreResult<Database> {
    match DatabaseKind::of(url) {
        Some(DatabaseKind::Sqlite) => Ok(Database::Sqlite(std::sync::Arc::new(
            SqliteStore::connect(url).await?,
        ))),
        Some(DatabaseKind::Postgres) => Ok(Database::Postgres(std::sync::Arc::new(
            PgStore::connect(url).await?,
        ))),
        None => Err(CoreError::InvalidInput(format!(
            "database url {:?} names no supported database (sqlite://<path> or postgres://…)",
            redact_url(url)
        ))),
    }
}

/// Which database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseKind {
    Sqlite,
    Postgres,
}

impl DatabaseKind {
    pub fn of(url: &str) -> Option<DatabaseKind> {
        if url.starts_with("sqlite:") {
            Some(DatabaseKind::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(DatabaseKind::Postgres)
        } else {
            None
        }
    }
}

/// `url` with any password replaced by `***`, for messages and logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

impl Database {
    pub fn kind(&self) -> DatabaseKind {
        match self {
            Database::Sqlite(_) => DatabaseKind::Sqlite,
            Database::Postgres(_) => DatabaseKind::Postgres,
        }
    }

    pub fn store(&self) -> std::sync::Arc<dyn Store> {
        match self {
            Database::Sqlite(s) => s.clone(),
            Database::Postgres(s) => s.clone(),
        }
    }

    pub fn auth(&self) -> std::sync::Arc<dyn AuthStore> {
        match self {
            Database::Sqlite(s) => s.clone(),
            Database::Postgres(s) => s.clone(),
        }
    }

    pub fn events(&self) -> std::sync::Arc<dyn EventLog> {
        match self {
            Database::Sqlite(s) => s.clone(),
            Database::Postgres(s) => s.clone(),
        }
    }

    pub fn logs(&self) -> std::sync::Arc<dyn LogStore> {
        match self {
            Database::Sqlite(s) => s.clone(),
            Database::Postgres(s) => s.clone(),
        }
    }

    /// Guest address leases of microVMs.
    pub fn leases(&self) -> std::sync::Arc<dyn IpLeases> {
        match self {
            Database::Sqlite(s) => s.clone(),
            Database::Postgres(s) => s.clone(),
        }
    }

    /// Environments (workspace templates).
    pub fn environments(&self) -> std::sync::Arc<dyn EnvironmentStore> {
        match self {
            Database::Sqlite(s) => s.clone(),
            Database::Postgres(s) => s.clone(),
        }
    }

    /// Workspace and global secrets (sealed values).
    pub fn secrets(&self) -> std::sync::Arc<dyn SecretStore> {
        match self {
            Database::Sqlite(s) => s.clone(),
            Database::Postgres(s) => s.clone(),
        }
    }

    /// Workspaces and their preparation steps.
    pub fn workspaces(&self) -> std::sync::Arc<dyn WorkspaceStore> {
        match self {
            Database::Sqlite(s) => s.clone(),
            Database::Postgres(s) => s.clone(),
        }
    }

    /// The prompts queued to workspaces.
    pub fn prompts(&self) -> std::sync::Arc<dyn PromptStore> {
        match self {
            Database::Sqlite(s) => s.clone(),
            Database::Postgres(s) => s.clone(),
        }
    }
}

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
    /// The API key's or user's id that created the VMs.
    pub created_by: Option<String>,
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

impl TaskFilter {
    /// Whether `task` passes the filter (for tasks not read through a store query,
    /// such as the queue's archive).
    pub fn matches(&self, task: &Task) -> bool {
        self.status.is_none_or(|s| task.status == s)
            && self.task_type.is_none_or(|t| task.task_type == t)
            && self
                .vm_id
                .as_ref()
                .is_none_or(|v| task.vm_id.as_ref() == Some(v))
            && self
                .worker_id
                .as_ref()
                .is_none_or(|w| task.worker_id.as_ref() == Some(w))
            && self
                .queue
                .is_none_or(|q| QueueName::for_priority(task.priority) == q)
            && self.created_after.is_none_or(|t| task.created_at >= t)
            && self.created_before.is_none_or(|t| task.created_at < t)
    }
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
    /// Sets (or clears) when a VM's time to live runs out; false: no such VM.
    async fn set_vm_expiry(&self, id: &str, at: Option<DateTime<Utc>>) -> CoreResult<bool>;
    /// Ids of worker `worker_id`'s VMs whose time to live ran out by `now` (at most
    /// 100 per call, the longest expired first).
    async fn expired_vms(&self, worker_id: &str, now: DateTime<Utc>) -> CoreResult<Vec<String>>;
    /// Records the network policy a VM's worker applied; false: no such VM.
    async fn set_vm_network_policy(
        &self,
        id: &str,
        policy: Option<&aetherium_types::NetworkPolicy>,
    ) -> CoreResult<bool>;
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
    /// Hands a VM not made yet (CREATED, or STARTING on a worker that died) from
    /// worker `from` to worker `to`, CREATED again; only if `from` still has it (a
    /// compare-and-set). Returns whether it moved.
    async fn move_vm(&self, id: &str, from: &str, to: &str) -> CoreResult<bool>;

    async fn insert_execution(&self, execution: &Execution) -> CoreResult<()>;
    async fn get_execution(&self, id: &str) -> CoreResult<Option<Execution>>;
    async fn update_execution(&self, execution: &Execution) -> CoreResult<()>;
    async fn list_executions(&self, vm_id: &str, page: &Page) -> CoreResult<(Vec<Execution>, u64)>;
    /// Marks every unfinished execution of a VM as failed with `error`.
    async fn fail_unfinished_executions(&self, vm_id: &str, error: &str) -> CoreResult<u64>;
    /// Marks direct (streamed or interactive) executions still `running` as failed:
    /// their connection died with the process that served them.
    async fn fail_interrupted_direct_executions(&self, error: &str) -> CoreResult<u64>;
    /// Marks as failed the queued executions (`pending` or `running`) created before
    /// `before` whose task does not exist or finished before `before`: a database or
    /// queue outage between writing the execution and queueing (or finishing) its
    /// task left them so, and nothing else will ever end them.
    async fn fail_orphaned_executions(&self, before: DateTime<Utc>, error: &str)
    -> CoreResult<u64>;
    /// How many executions `created_by` ran are unfinished (`pending` or `running`).
    async fn unfinished_executions_by(&self, created_by: &str) -> CoreResult<u64>;
    /// Removes an execution record (one refused before anything ran).
    async fn delete_execution(&self, id: &str) -> CoreResult<()>;

    async fn get_task(&self, id: &str) -> CoreResult<Option<Task>>;
    async fn list_tasks(&self, filter: &TaskFilter, page: &Page) -> CoreResult<(Vec<Task>, u64)>;
    /// Removes a task's record (an archived task an operator deleted); `false` when
    /// there was none.
    async fn delete_task(&self, id: &str) -> CoreResult<bool>;
    /// Tasks created, completed and failed in each of the `minutes` whole minutes
    /// starting at `from` (a minute's start), oldest first: exactly `minutes` buckets.
    async fn task_history(
        &self,
        from: DateTime<Utc>,
        minutes: u32,
    ) -> CoreResult<Vec<aetherium_types::QueueHistoryBucket>>;

    async fn upsert_worker(&self, worker: &Worker) -> CoreResult<()>;
    async fn get_worker(&self, id: &str) -> CoreResult<Option<Worker>>;
    async fn list_workers(&self) -> CoreResult<Vec<Worker>>;

    /// Writes a worker's heartbeat and returns the row as stored: like
    /// [`Store::upsert_worker`], except that a drain an administrator asked for
    /// ([`workers::DRAINED_BY_REQUEST`]) stays while the worker reports `active` or
    /// `unhealthy` (see [`workers::merge_heartbeat`]). Implementations should do it
    /// in one statement; this default reads, then writes.
    async fn heartbeat_worker(&self, reported: &Worker) -> CoreResult<Worker> {
        let stored = self.get_worker(&reported.id).await?;
        let next = workers::merge_heartbeat(stored.as_ref(), reported);
        self.upsert_worker(&next).await?;
        Ok(next)
    }

    /// Sets a worker's status (and message) if it is in one of `from` (a
    /// compare-and-set); returns the row as it is then, or `None` for an unknown
    /// worker. Whether it changed: compare the returned status.
    async fn set_worker_status(
        &self,
        id: &str,
        from: &[WorkerStatus],
        to: WorkerStatus,
        message: Option<&str>,
    ) -> CoreResult<Option<Worker>> {
        let Some(mut w) = self.get_worker(id).await? else {
            return Ok(None);
        };
        if from.contains(&w.status) {
            w.status = to;
            w.status_message = message.map(str::to_string);
            self.upsert_worker(&w).await?;
        }
        Ok(Some(w))
    }

    /// Marks every worker not seen since `seen_before` (and not offline yet)
    /// `offline` with `message`; returns those it changed, so that exactly one caller
    /// handles each (implementations should do it in one statement).
    async fn mark_stale_workers_offline(
        &self,
        seen_before: DateTime<Utc>,
        message: &str,
    ) -> CoreResult<Vec<Worker>> {
        let mut changed = Vec::new();
        for w in self.list_workers().await? {
            if w.status == WorkerStatus::Offline || w.last_seen >= seen_before {
                continue;
            }
            let from = [w.status];
            if let Some(now) = self
                .set_worker_status(&w.id, &from, WorkerStatus::Offline, Some(message))
                .await?
                && now.status == WorkerStatus::Offline
            {
                changed.push(now);
            }
        }
        Ok(changed)
    }

    /// What the live VMs (not STOPPED or FAILED) that `created_by` made take, for
    /// its quota (PAUSED ones keep their memory, so they count).
    async fn usage_by(&self, created_by: &str) -> CoreResult<WorkerUsage> {
        let filter = VmFilter {
            created_by: Some(created_by.to_string()),
            ..Default::default()
        };
        let mut usage = WorkerUsage::default();
        for vm in self.all_vms(&filter).await? {
            if !matches!(vm.status, VmStatus::Stopped | VmStatus::Failed) {
                usage.vms += 1;
                usage.vcpus += u64::from(vm.vcpu_count);
                usage.memory_mb += vm.memory_mb;
            }
        }
        Ok(usage)
    }

    /// Every VM `filter` matches, page after page (newest first).
    async fn all_vms(&self, filter: &VmFilter) -> CoreResult<Vec<Vm>> {
        let mut all: Vec<Vm> = Vec::new();
        let mut page = Page::new(Some(Page::MAX_LIMIT), None);
        loop {
            let (vms, _) = self.list_vms(filter, &page).await?;
            let full = vms.len() as u32 >= page.limit;
            all.extend(vms);
            match all.last() {
                Some(last) if full => page.cursor = Some(Cursor::after(last.created_at, &last.id)),
                _ => return Ok(all),
            }
        }
    }

    /// What each worker's VMs take (VMs in [`workers::HOLDING`] states), by worker
    /// id; workers without such VMs are left out.
    async fn worker_usage(&self) -> CoreResult<Vec<(String, WorkerUsage)>> {
        let mut usage: std::collections::BTreeMap<String, WorkerUsage> = Default::default();
        for vm in self.all_vms(&VmFilter::default()).await? {
            if let Some(worker) = &vm.worker_id {
                workers::add_usage(usage.entry(worker.clone()).or_default(), &vm);
            }
        }
        Ok(usage.into_iter().filter(|(_, u)| u.vms > 0).collect())
    }
}

/// The statement behind [`Store::fail_orphaned_executions`], the same on SQLite and
/// PostgreSQL (`$1` the error, `$2` now, `$3` the cutoff; times are ms integers).
pub(crate) const FAIL_ORPHANED_EXECUTIONS: &str = "UPDATE executions
     SET status = 'failed', error = $1, completed_at = $2
     WHERE status IN ('pending', 'running') AND task_id IS NOT NULL AND created_at < $3
       AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.id = executions.task_id
         AND (t.status IN ('pending', 'running') OR t.completed_at >= $3))";

/// The statement behind [`Store::move_vm`], the same on SQLite and PostgreSQL.
pub(crate) const MOVE_VM: &str = "UPDATE vms SET worker_id = $1, status = 'CREATED',
       socket_path = NULL, error = NULL
     WHERE id = $2 AND worker_id = $3 AND status IN ('CREATED', 'STARTING')";

/// The statement behind [`Store::unfinished_executions_by`], the same on SQLite and
/// PostgreSQL.
pub(crate) const UNFINISHED_EXECUTIONS_BY: &str = "SELECT COUNT(*) FROM executions
     WHERE created_by = $1 AND status IN ('pending', 'running')";

/// The statements behind [`Store::task_history`], the same on SQLite and PostgreSQL
/// (times are ms integers; `$1` is the first minute's start, `$2` the end).
pub(crate) const TASK_HISTORY_CREATED: &str = "SELECT (created_at - $1) / 60000, COUNT(*)
     FROM tasks WHERE created_at >= $1 AND created_at < $2 GROUP BY 1";
pub(crate) const TASK_HISTORY_FINISHED: &str =
    "SELECT (completed_at - $1) / 60000, status, COUNT(*)
     FROM tasks WHERE completed_at >= $1 AND completed_at < $2
       AND status IN ('completed', 'failed') GROUP BY 1, 2";

/// Exactly `minutes` buckets from `from`, filled from the grouped counts.
pub(crate) fn history_buckets(
    from: DateTime<Utc>,
    minutes: u32,
    created: &[(i64, i64)],
    finished: &[(i64, String, i64)],
) -> Vec<aetherium_types::QueueHistoryBucket> {
    let mut buckets: Vec<aetherium_types::QueueHistoryBucket> = (0..i64::from(minutes))
        .map(|i| aetherium_types::QueueHistoryBucket {
            start: from + chrono::Duration::minutes(i),
            created: 0,
            completed: 0,
            failed: 0,
        })
        .collect();
    let len = buckets.len();
    let index = |b: i64| usize::try_from(b).ok().filter(|&i| i < len);
    for &(b, n) in created {
        if let Some(i) = index(b) {
            buckets[i].created = n as u64;
        }
    }
    for (b, status, n) in finished {
        if let Some(i) = index(*b) {
            match status.as_str() {
                "completed" => buckets[i].completed = *n as u64,
                _ => buckets[i].failed = *n as u64,
            }
        }
    }
    buckets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_pick_the_database_and_hide_passwords() {
        assert_eq!(
            DatabaseKind::of("sqlite:///x.db"),
            Some(DatabaseKind::Sqlite)
        );
        assert_eq!(DatabaseKind::of("sqlite:x.db"), Some(DatabaseKind::Sqlite));
        assert_eq!(
            DatabaseKind::of("postgres://u@h/db"),
            Some(DatabaseKind::Postgres)
        );
        assert_eq!(
            DatabaseKind::of("postgresql://u@h/db"),
            Some(DatabaseKind::Postgres)
        );
        assert_eq!(DatabaseKind::of("mysql://u@h/db"), None);
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db?sslmode=disable"),
            "postgres://u:***@h:5432/db?sslmode=disable"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("sqlite:///a/b.db"), "sqlite:///a/b.db");
    }

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
