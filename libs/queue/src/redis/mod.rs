//! The Redis queue (distributed mode), with Asynq's semantics: four weighted queues,
//! per-worker queues for VM-bound work, scheduled and retry sets, leases extended by
//! heartbeat and recovered from crashed workers, an archive of dead tasks, unique
//! tasks and deadlines. Every step that touches more than one key is one Lua script
//! (`queue/lua/*.lua`), so no state is lost between two commands.
//!
//! Redis holds the queue; the task records live in the database ([`TaskRecords`]),
//! which `GET /tasks` reads and where each task's terminal state is written. The
//! order of the two writes is chosen so that a crash between them never loses a
//! task nor runs it twice (docs/architecture.md, "The Redis queue"):
//!
//! - enqueue: the record first (`pending`), then Redis. A record missing from Redis
//!   is re-enqueued by [`RedisQueue::reconcile`] (idempotent: a task Redis knows,
//!   even one that just finished — a tombstone stays for a while — is left alone).
//! - lease: Redis first, then the record (`running`). A record that is finished
//!   (cancelled meanwhile, or finished by a lost worker) means the task must not run:
//!   it is dropped from Redis and the next one is leased.
//! - every terminal state (completed, failed, cancelled): the record first, guarded by
//!   status and worker, then Redis. If Redis is not told, the lease expires, the task
//!   comes back, and its next lease finds the record finished and drops it.
//! - lease recovery and deadlines decide in Redis (one script for any worker) and
//!   then write the records; a crash between leaves a record `running`/`pending`
//!   whose Redis state says otherwise, which the reconcile sweep writes back.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use aetherium_types::task::QueueName;
use aetherium_types::{Task, TaskStatus, TaskType};
use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, RedisError, Script};
use tokio::sync::{Mutex, Notify};

use super::{
    ArchivedTask, CancelOutcome, EnqueueOptions, EnqueueOutcome, FailOutcome, QueueDepth,
    QueueStats, TaskQueue, backoff, weighted_queue_order,
};
use crate::error::{CoreError, CoreResult};
use crate::store::TaskRecords;

const QUEUES: [QueueName; 4] = [
    QueueName::Critical,
    QueueName::High,
    QueueName::Default,
    QueueName::Low,
];

/// How a task type's failed attempts are spaced: `base * 2^attempt`, at most `cap`,
/// plus a random extra of up to `jitter` of that (so that many tasks failing
/// together do not come back together).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    pub base: Duration,
    pub cap: Duration,
    pub jitter: f64,
}

impl RetryPolicy {
    pub fn new(base: Duration) -> RetryPolicy {
        RetryPolicy {
            base,
            cap: Duration::from_secs(300),
            jitter: 0.2,
        }
    }

    /// The wait before attempt `attempt + 1`, jitter drawn from `roll` in `[0, 1)`.
    pub fn delay(&self, attempt: u32, roll: f64) -> Duration {
        let plain = backoff(self.base, attempt).min(self.cap);
        plain + plain.mul_f64(self.jitter.clamp(0.0, 1.0) * roll.clamp(0.0, 1.0))
    }
}

#[derive(Debug, Clone)]
pub struct RedisQueueOptions {
    /// Every key starts with it (several deployments can share one Redis).
    pub prefix: String,
    /// The retry policy of task types not in `policies`.
    pub retry: RetryPolicy,
    pub policies: HashMap<TaskType, RetryPolicy>,
    /// Lease recovery runs at most this often per queue handle (on `lease`).
    pub recover_interval: Duration,
    /// The reconcile sweep runs at most this often per queue handle (on `lease`).
    pub reconcile_interval: Duration,
    /// Records younger than this are left alone by the reconcile sweep (their Redis
    /// write may be under way).
    pub reconcile_grace: Duration,
    /// How long a finished task's tombstone stays (longer than any reconcile sweep).
    pub tombstone_ttl: Duration,
    /// The archive keeps at most this many dead tasks per queue (the oldest go).
    pub archive_max: u64,
    /// A command that gets no answer within this fails as `Unavailable`.
    pub response_timeout: Duration,
    /// TLS files for a `rediss://` URL (see [`redis_client`]).
    pub tls: RedisTls,
}

impl Default for RedisQueueOptions {
    fn default() -> Self {
        RedisQueueOptions {
            prefix: "aetherium:".into(),
            retry: RetryPolicy::new(Duration::from_secs(2)),
            policies: HashMap::new(),
            recover_interval: Duration::from_millis(500),
            reconcile_interval: Duration::from_secs(60),
            reconcile_grace: Duration::from_secs(60),
            tombstone_ttl: Duration::from_secs(3600),
            archive_max: 10_000,
            response_timeout: Duration::from_secs(3),
            tls: RedisTls::default(),
        }
    }
}

/// PEM files for Redis over TLS (`rediss://` URLs), each optional: the CA that signs
/// the server's certificate (else the system's roots), and a client certificate and
/// key for servers that ask for one (`tls-auth-clients`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisTls {
    pub ca: Option<std::path::PathBuf>,
    pub cert: Option<std::path::PathBuf>,
    pub key: Option<std::path::PathBuf>,
}

/// The one way a Redis client is made (queue and event bus alike). `redis://` is
/// plain TCP; `rediss://` is TLS (rustls) that verifies the server's certificate
/// and name against `tls.ca` or the system's roots. Errors never show the URL's
/// password.
pub fn redis_client(url: &str, tls: &RedisTls) -> CoreResult<redis::Client> {
    let shown = crate::store::redact_url(url);
    let bad = |e: &dyn std::fmt::Display| {
        CoreError::InvalidInput(format!("bad Redis URL {shown:?}: {e}"))
    };
    let is_tls = url.starts_with("rediss://");
    if !is_tls {
        if *tls != RedisTls::default() {
            return Err(CoreError::InvalidInput(format!(
                "Redis TLS files are set but the URL {shown:?} is not rediss://"
            )));
        }
        return redis::Client::open(url).map_err(|e| bad(&e));
    }
    let read = |path: &std::path::Path, what: &str| {
        std::fs::read(path).map_err(|e| {
            CoreError::InvalidInput(format!(
                "cannot read the Redis TLS {what} {}: {e}",
                path.display()
            ))
        })
    };
    let client_tls = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read(cert, "certificate")?,
            client_key: read(key, "key")?,
        }),
        (None, None) => None,
        _ => {
            return Err(CoreError::InvalidInput(
                "a Redis TLS client certificate needs its key, and a key its certificate".into(),
            ));
        }
    };
    let root_cert = tls.ca.as_deref().map(|ca| read(ca, "CA")).transpose()?;
    redis::Client::build_with_tls(
        url,
        redis::TlsCertificates {
            client_tls,
            root_cert,
        },
    )
    .map_err(|e| bad(&e))
}

/// A task hash's `state`, `outcome`, `error` and `retried` fields.
type HashState = (Option<String>, Option<String>, Option<String>, Option<u32>);

/// What one [`RedisQueue::reconcile`] sweep repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Pending records Redis did not know, enqueued again.
    pub requeued: u64,
    /// Records whose Redis state had moved on (archived, cancelled, back in line).
    pub records_fixed: u64,
}

struct Scripts {
    enqueue: Script,
    lease: Script,
    extend: Script,
    remove: Script,
    retry: Script,
    archive: Script,
    recover: Script,
    cancel: Script,
    unarchive: Script,
    stats: Script,
}

impl Scripts {
    fn load() -> Scripts {
        let common = include_str!("lua/common.lua");
        let script = |body: &str| Script::new(&format!("{common}\n{body}"));
        Scripts {
            enqueue: script(include_str!("lua/enqueue.lua")),
            lease: script(include_str!("lua/lease.lua")),
            extend: script(include_str!("lua/extend.lua")),
            remove: script(include_str!("lua/remove.lua")),
            retry: script(include_str!("lua/retry.lua")),
            archive: script(include_str!("lua/archive.lua")),
            recover: script(include_str!("lua/recover.lua")),
            cancel: script(include_str!("lua/cancel.lua")),
            unarchive: script(include_str!("lua/unarchive.lua")),
            stats: script(include_str!("lua/stats.lua")),
        }
    }
}

pub struct RedisQueue {
    conn: ConnectionManager,
    records: Arc<dyn TaskRecords>,
    scripts: Scripts,
    options: RedisQueueOptions,
    notify: Arc<Notify>,
    listener: tokio::task::JoinHandle<()>,
    last_recover_ms: AtomicI64,
    last_reconcile_ms: AtomicI64,
    /// Where the reconcile sweep continues (keyset position per status).
    reconcile_cursor: Mutex<HashMap<&'static str, (i64, String)>>,
}

impl Drop for RedisQueue {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn from_ms(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// Connection trouble, and a server that is loading its data, read-only (a replica
/// during failover) or without its master, is `Unavailable` (503: try again);
/// anything else is a bug.
fn redis_error(e: RedisError) -> CoreError {
    use redis::{ErrorKind, ServerErrorKind};
    let passing = matches!(
        e.kind(),
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
                | ServerErrorKind::ReadOnly
                | ServerErrorKind::MasterDown
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
        )
    );
    if passing
        || e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_timeout()
        || e.is_unrecoverable_error()
    {
        CoreError::Unavailable(format!("queue unavailable (redis): {e}"))
    } else {
        CoreError::Internal(anyhow::Error::new(e).context("redis queue"))
    }
}

fn unsupported_state(what: &str) -> CoreError {
    CoreError::Internal(anyhow::anyhow!("redis queue: unexpected reply {what:?}"))
}

impl RedisQueue {
    /// Connects to `url` (`redis://host:port/db`, `rediss://` for TLS with
    /// `options.tls`). The connection reconnects by
    /// itself: while Redis is down every call fails with `Unavailable`, and works
    /// again once it is back, with no new queue handle.
    pub async fn connect(
        url: &str,
        records: Arc<dyn TaskRecords>,
        options: RedisQueueOptions,
    ) -> CoreResult<RedisQueue> {
        let client = redis_client(url, &options.tls)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(options.response_timeout))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_with_config(client.clone(), config)
            .await
            .map_err(redis_error)?;
        let notify = Arc::new(Notify::new());
        let listener = tokio::spawn(listen_for_work(
            client,
            format!("{}wake", options.prefix),
            notify.clone(),
        ));
        Ok(RedisQueue {
            conn,
            records,
            scripts: Scripts::load(),
            options,
            notify,
            listener,
            last_recover_ms: AtomicI64::new(0),
            last_reconcile_ms: AtomicI64::new(now_ms()),
            reconcile_cursor: Mutex::new(HashMap::new()),
        })
    }

    pub fn records(&self) -> &Arc<dyn TaskRecords> {
        &self.records
    }

    fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    fn policy(&self, task_type: Option<TaskType>) -> RetryPolicy {
        task_type
            .and_then(|t| self.options.policies.get(&t).copied())
            .unwrap_or(self.options.retry)
    }

    fn tombstone_ms(&self) -> u64 {
        self.options.tombstone_ttl.as_millis() as u64
    }

    fn unique_key(&self, key: &str) -> String {
        format!("{}unique:{key}", self.options.prefix)
    }

    /// Adds a task whose record exists to Redis (idempotent). `retried` and the state
    /// come from the record (a record scheduled later waits in the scheduled set).
    async fn push(&self, task: &Task, unique: &str, deadline_ms: i64) -> CoreResult<bool> {
        let queue = QueueName::for_priority(task.priority);
        let due = task.scheduled_at.timestamp_millis();
        let state = if due > now_ms() {
            "scheduled"
        } else {
            "pending"
        };
        let added: i64 = self
            .scripts
            .enqueue
            .arg(&self.options.prefix)
            .arg(&task.id)
            .arg(state)
            .arg(due)
            .arg(queue.as_str())
            .arg(task.target_worker_id.as_deref().unwrap_or(""))
            .arg(task.retry_count)
            .arg(task.max_retries)
            .arg(task.task_type.as_str())
            .arg(unique)
            .arg(deadline_ms)
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_error)?;
        Ok(added == 1)
    }

    /// Takes a task out of Redis for good (see `remove.lua`). Returns the state it
    /// was in, or `None` when it was not in one of `allowed` (or not held by
    /// `worker`).
    async fn remove(
        &self,
        id: &str,
        allowed: &[&str],
        worker: Option<&str>,
        outcome: &str,
    ) -> CoreResult<Option<String>> {
        let reply: String = self
            .scripts
            .remove
            .arg(&self.options.prefix)
            .arg(id)
            .arg(format!(",{},", allowed.join(",")))
            .arg(worker.unwrap_or(""))
            .arg(outcome)
            .arg(self.tombstone_ms())
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_error)?;
        Ok((reply != "missing" && !reply.starts_with("no:")).then_some(reply))
    }

    /// Runs lease recovery when it has not run for `recover_interval` (any worker's
    /// call does it for everyone), and the reconcile sweep likewise.
    async fn housekeeping(&self) -> CoreResult<()> {
        let now = now_ms();
        let last = self.last_recover_ms.load(Ordering::Relaxed);
        if now - last >= self.options.recover_interval.as_millis() as i64
            && self
                .last_recover_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.recover_expired_leases().await?;
        }
        let last = self.last_reconcile_ms.load(Ordering::Relaxed);
        if now - last >= self.options.reconcile_interval.as_millis() as i64
            && self
                .last_reconcile_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            && let Err(e) = self.reconcile(self.options.reconcile_grace).await
        {
            tracing::warn!(error = %e, "queue reconcile sweep failed");
        }
        Ok(())
    }

    /// Puts tasks whose worker stopped heartbeating back in line (one attempt
    /// counted), archives those out of retries, and ends `cancelled` those asked to
    /// stop; then writes the records. Returns how many were recovered.
    pub async fn recover_expired_leases(&self) -> CoreResult<usize> {
        let mut invocation = self.scripts.recover.prepare_invoke();
        invocation
            .arg(&self.options.prefix)
            .arg(now_ms())
            .arg(1000)
            .arg(self.tombstone_ms());
        for q in QUEUES {
            invocation.arg(q.as_str());
        }
        let recovered: Vec<Vec<String>> = invocation
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_error)?;
        if !recovered.is_empty() {
            tracing::warn!(
                recovered = recovered.len(),
                "recovered tasks with expired leases"
            );
        }
        for item in &recovered {
            let [id, outcome, retried, error] = item.as_slice() else {
                return Err(unsupported_state(&format!("{item:?}")));
            };
            let retried: u32 = retried.parse().unwrap_or(0);
            self.record_redis_outcome(id, outcome, retried, error)
                .await?;
        }
        Ok(recovered.len())
    }

    /// Writes what Redis decided for a task (by recovery or a deadline) into its
    /// record.
    async fn record_redis_outcome(
        &self,
        id: &str,
        outcome: &str,
        retried: u32,
        error: &str,
    ) -> CoreResult<()> {
        let unfinished = [TaskStatus::Pending, TaskStatus::Running];
        match outcome {
            "retry" => {
                // Guarded by the count: a worker that leased the task again since
                // (and recorded it `running` as this attempt) keeps its record.
                self.records
                    .record_recovered(id, retried, error, Utc::now())
                    .await?;
            }
            "failed" => {
                self.records
                    .record_finished(
                        id,
                        &unfinished,
                        None,
                        TaskStatus::Failed,
                        None,
                        Some(error),
                        Some(retried),
                    )
                    .await?;
            }
            "cancelled" => {
                if let Some(task) = self
                    .records
                    .record_finished(
                        id,
                        &unfinished,
                        None,
                        TaskStatus::Cancelled,
                        None,
                        Some(error),
                        Some(retried),
                    )
                    .await?
                {
                    self.records
                        .cancel_orphaned_work(
                            &task,
                            "cancelled by request; its worker stopped before it could finish",
                        )
                        .await?;
                }
            }
            other => return Err(unsupported_state(other)),
        }
        Ok(())
    }

    /// Makes the records and Redis agree after a crash between their two writes:
    /// a `pending` record Redis does not know is enqueued again; a `pending` or
    /// `running` record whose task Redis archived or cancelled is written so; a
    /// `running` record Redis lost (e.g. Redis restarted without persistence) goes
    /// back in line as a retry. Records younger than `grace` are left alone. Any
    /// worker may run it; it runs on its own every `reconcile_interval`.
    pub async fn reconcile(&self, grace: Duration) -> CoreResult<ReconcileReport> {
        let mut report = ReconcileReport::default();
        let before = Utc::now() - chrono::Duration::from_std(grace).unwrap_or_default();
        for status in [TaskStatus::Pending, TaskStatus::Running] {
            let mut cursor = self.reconcile_cursor.lock().await;
            let after = cursor.get(status.as_str()).cloned();
            let rows = self
                .records
                .unfinished_tasks(status, before, after, 500)
                .await?;
            match rows.last() {
                Some(last) if rows.len() == 500 => {
                    cursor.insert(
                        status.as_str(),
                        (last.created_at.timestamp_millis(), last.id.clone()),
                    );
                }
                _ => {
                    cursor.remove(status.as_str());
                }
            }
            drop(cursor);
            if rows.is_empty() {
                continue;
            }
            let mut pipe = redis::pipe();
            for task in &rows {
                pipe.cmd("HMGET")
                    .arg(format!("{}t:{}", self.options.prefix, task.id))
                    .arg("state")
                    .arg("outcome")
                    .arg("error")
                    .arg("retried");
            }
            let states: Vec<HashState> = pipe
                .query_async(&mut self.conn())
                .await
                .map_err(redis_error)?;
            for (task, (state, outcome, error, retried)) in rows.iter().zip(states) {
                let error = error.unwrap_or_default();
                let retried = retried.unwrap_or(task.retry_count);
                match (status, state.as_deref(), outcome.as_deref()) {
                    (TaskStatus::Pending, None, _) => {
                        report.requeued += u64::from(self.push(task, "", 0).await?);
                    }
                    (TaskStatus::Running, None, _) => {
                        // Redis lost it while a worker ran it (or its record never
                        // heard of the end). Its lease is long gone: one attempt.
                        let error = "the queue lost this task while it ran";
                        if task.retry_count < task.max_retries {
                            let mut again = task.clone();
                            again.retry_count += 1;
                            again.scheduled_at = Utc::now();
                            if self
                                .records
                                .record_retry(
                                    &task.id,
                                    None,
                                    again.retry_count,
                                    error,
                                    again.scheduled_at,
                                )
                                .await?
                            {
                                self.push(&again, "", 0).await?;
                                report.requeued += 1;
                            }
                        } else if self
                            .records
                            .record_finished(
                                &task.id,
                                &[TaskStatus::Running],
                                None,
                                TaskStatus::Failed,
                                None,
                                Some(error),
                                None,
                            )
                            .await?
                            .is_some()
                        {
                            report.records_fixed += 1;
                        }
                    }
                    (_, Some("archived"), _) => {
                        self.record_redis_outcome(&task.id, "failed", retried, &error)
                            .await?;
                        report.records_fixed += 1;
                    }
                    (_, Some("done"), Some("cancelled")) => {
                        self.record_redis_outcome(&task.id, "cancelled", retried, &error)
                            .await?;
                        report.records_fixed += 1;
                    }
                    (TaskStatus::Running, Some("pending" | "scheduled" | "retry"), _) => {
                        // Back in line in Redis; the record missed it.
                        self.records
                            .record_retry(&task.id, None, retried, &error, Utc::now())
                            .await?;
                        report.records_fixed += 1;
                    }
                    _ => {}
                }
            }
        }
        if report != ReconcileReport::default() {
            tracing::warn!(?report, "queue reconcile sweep repaired records");
        }
        Ok(report)
    }

    /// Best effort: frees a unique key claimed for a task that was not enqueued.
    async fn release_unique(&self, key: &str, id: &str) {
        if key.is_empty() {
            return;
        }
        let script = Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end",
        );
        let _: Result<(), _> = script.key(key).arg(id).invoke_async(&mut self.conn()).await;
    }

    /// Best effort: a leased task whose record could not be written goes back in
    /// line with no attempt counted.
    async fn unlease(&self, id: &str, worker_id: &str, retried: u32) {
        let result: Result<i64, _> = self
            .scripts
            .retry
            .arg(&self.options.prefix)
            .arg(id)
            .arg(worker_id)
            .arg(now_ms())
            .arg(retried)
            .arg("")
            .invoke_async(&mut self.conn())
            .await;
        if let Err(e) = result {
            tracing::warn!(task_id = id, error = %e, "cannot put back a task (its lease will expire)");
        }
    }
}

/// Wakes idle workers when a task is enqueued anywhere (Redis pub/sub on
/// `<prefix>wake`), reconnecting when the connection drops. `wait_for_work` also
/// polls, so a lost message only delays a task by one poll interval.
async fn listen_for_work(client: redis::Client, channel: String, notify: Arc<Notify>) {
    use futures::StreamExt;
    loop {
        match client.get_async_pubsub().await {
            Ok(mut pubsub) => {
                if pubsub.subscribe(&channel).await.is_ok() {
                    // Something may have been enqueued while we were away.
                    notify.notify_one();
                    let mut messages = pubsub.on_message();
                    while messages.next().await.is_some() {
                        notify.notify_one();
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "queue wake-up subscription failed"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[async_trait]
impl TaskQueue for RedisQueue {
    async fn enqueue(&self, task: &Task) -> CoreResult<()> {
        self.enqueue_with(task, &EnqueueOptions::default())
            .await
            .map(|_| ())
    }

    async fn enqueue_with(
        &self,
        task: &Task,
        options: &EnqueueOptions,
    ) -> CoreResult<EnqueueOutcome> {
        // A unique task claims its key first, so that a duplicate leaves no record.
        let mut unique_key = String::new();
        if let Some(unique) = &options.unique {
            unique_key = self.unique_key(&unique.key);
            let claimed: Option<String> = redis::cmd("SET")
                .arg(&unique_key)
                .arg(&task.id)
                .arg("NX")
                .arg("PX")
                .arg(unique.ttl.as_millis().max(1) as u64)
                .query_async(&mut self.conn())
                .await
                .map_err(redis_error)?;
            if claimed.is_none() {
                let holder: Option<String> =
                    self.conn().get(&unique_key).await.map_err(redis_error)?;
                return Ok(EnqueueOutcome::Duplicate {
                    task_id: holder.unwrap_or_default(),
                });
            }
        }
        if let Err(e) = self.records.insert_task(task).await {
            self.release_unique(&unique_key, &task.id).await;
            return Err(e);
        }
        let deadline = options.deadline.map_or(0, |d| d.timestamp_millis());
        if let Err(e) = self.push(task, &unique_key, deadline).await {
            // The caller hears that the task was not queued: the record says so too
            // (should Redis have taken it after all, its lease finds the record
            // finished and drops it).
            let _ = self
                .records
                .record_finished(
                    &task.id,
                    &[TaskStatus::Pending],
                    None,
                    TaskStatus::Failed,
                    None,
                    Some(&format!("could not be queued: {e}")),
                    None,
                )
                .await;
            self.release_unique(&unique_key, &task.id).await;
            return Err(e);
        }
        Ok(EnqueueOutcome::Enqueued)
    }

    async fn lease(&self, worker_id: &str, lease: Duration) -> CoreResult<Option<Task>> {
        self.housekeeping().await?;
        for _ in 0..32 {
            let order = weighted_queue_order(|total| rand::random_range(0..total));
            let now = Utc::now();
            let until = now + lease;
            let mut invocation = self.scripts.lease.prepare_invoke();
            invocation
                .arg(&self.options.prefix)
                .arg(now.timestamp_millis())
                .arg(until.timestamp_millis())
                .arg(worker_id);
            for q in &order {
                invocation.arg(q.as_str());
            }
            let reply: Option<Vec<String>> = invocation
                .invoke_async(&mut self.conn())
                .await
                .map_err(redis_error)?;
            let Some(reply) = reply else {
                return Ok(None);
            };
            match reply.as_slice() {
                [kind, id, retried] if kind == "deadline" => {
                    let retried = retried.parse().unwrap_or(0);
                    self.record_redis_outcome(
                        id,
                        "failed",
                        retried,
                        "its deadline passed before it could run",
                    )
                    .await?;
                }
                [kind, id, retried, deadline] if kind == "leased" => {
                    let retried: u32 = retried.parse().unwrap_or(0);
                    let deadline: i64 = deadline.parse().unwrap_or(0);
                    let record = match self
                        .records
                        .record_running(id, worker_id, retried, now, until)
                        .await
                    {
                        Ok(record) => record,
                        Err(e) => {
                            self.unlease(id, worker_id, retried).await;
                            return Err(e);
                        }
                    };
                    let Some(mut task) = record else {
                        // Finished meanwhile (or unknown): it must not run.
                        self.remove(id, &["active"], Some(worker_id), "dropped")
                            .await?;
                        continue;
                    };
                    if deadline > 0 {
                        // The task's timeout never outlasts its deadline.
                        let left = ((deadline - now.timestamp_millis()).max(1000) / 1000) as u64;
                        task.timeout_seconds = task.timeout_seconds.min(left);
                    }
                    return Ok(Some(task));
                }
                other => return Err(unsupported_state(&format!("{other:?}"))),
            }
        }
        Ok(None)
    }

    async fn extend_lease(
        &self,
        task_id: &str,
        worker_id: &str,
        lease: Duration,
    ) -> CoreResult<bool> {
        let until = Utc::now() + lease;
        let held: i64 = self
            .scripts
            .extend
            .arg(&self.options.prefix)
            .arg(task_id)
            .arg(worker_id)
            .arg(until.timestamp_millis())
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_error)?;
        Ok(held == 1)
    }

    async fn complete(
        &self,
        task_id: &str,
        worker_id: &str,
        result: serde_json::Value,
    ) -> CoreResult<()> {
        let finished = self
            .records
            .record_finished(
                task_id,
                &[TaskStatus::Running],
                Some(worker_id),
                TaskStatus::Completed,
                Some(&result),
                None,
                None,
            )
            .await?;
        if finished.is_some() {
            self.remove(task_id, &["active"], Some(worker_id), "completed")
                .await?;
        }
        Ok(())
    }

    async fn fail(
        &self,
        task_id: &str,
        worker_id: &str,
        error: &str,
        retryable: bool,
    ) -> CoreResult<FailOutcome> {
        let (state, holder, retried, max_retry, task_type): (
            Option<String>,
            Option<String>,
            Option<u32>,
            Option<u32>,
            Option<String>,
        ) = redis::cmd("HMGET")
            .arg(format!("{}t:{task_id}", self.options.prefix))
            .arg(&["state", "worker", "retried", "max_retry", "type"])
            .query_async(&mut self.conn())
            .await
            .map_err(redis_error)?;
        if state.as_deref() != Some("active") || holder.as_deref() != Some(worker_id) {
            // The lease was lost (expired and recovered): that path counted it.
            return Ok(FailOutcome::Failed);
        }
        let retried = retried.unwrap_or(0);
        if retryable && retried < max_retry.unwrap_or(0) {
            let task_type = task_type.and_then(|t| t.parse::<TaskType>().ok());
            let after = self
                .policy(task_type)
                .delay(retried, rand::random_range(0.0..1.0));
            let due = Utc::now() + after;
            let moved: i64 = self
                .scripts
                .retry
                .arg(&self.options.prefix)
                .arg(task_id)
                .arg(worker_id)
                .arg(due.timestamp_millis())
                .arg(retried + 1)
                .arg(error)
                .invoke_async(&mut self.conn())
                .await
                .map_err(redis_error)?;
            if moved == 0 {
                return Ok(FailOutcome::Failed);
            }
            self.records
                .record_retry(task_id, Some(worker_id), retried + 1, error, due)
                .await?;
            return Ok(FailOutcome::WillRetry { after });
        }
        let finished = self
            .records
            .record_finished(
                task_id,
                &[TaskStatus::Running],
                Some(worker_id),
                TaskStatus::Failed,
                None,
                Some(error),
                None,
            )
            .await?;
        if finished.is_some() {
            let _: i64 = self
                .scripts
                .archive
                .arg(&self.options.prefix)
                .arg(task_id)
                .arg(worker_id)
                .arg(now_ms())
                .arg(error)
                .arg(retried)
                .arg(self.options.archive_max)
                .invoke_async(&mut self.conn())
                .await
                .map_err(redis_error)?;
        }
        Ok(FailOutcome::Failed)
    }

    async fn wait_for_work(&self, poll: Duration) {
        let _ = tokio::time::timeout(poll, self.notify.notified()).await;
    }

    async fn stats(&self) -> CoreResult<QueueStats> {
        let mut stats = QueueStats::default();
        for d in self.depths().await? {
            match d.state.as_str() {
                "pending" => stats.pending += d.count,
                "scheduled" => stats.scheduled += d.count,
                "running" => stats.running += d.count,
                "completed" => stats.completed += d.count,
                "failed" => stats.failed += d.count,
                "cancelled" => stats.cancelled += d.count,
                _ => {}
            }
        }
        Ok(stats)
    }

    /// Live states (pending, scheduled — delayed or waiting for a retry —, running,
    /// archived) from Redis; finished ones (completed, failed, cancelled) from the
    /// records. `archived` is a subset of `failed`: the dead tasks still retriable.
    async fn depths(&self) -> CoreResult<Vec<QueueDepth>> {
        let mut invocation = self.scripts.stats.prepare_invoke();
        invocation.arg(&self.options.prefix);
        for q in QUEUES {
            invocation.arg(q.as_str());
        }
        let live: Vec<(String, u64, u64, u64, u64, u64)> = invocation
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_error)?;
        let mut depths = Vec::new();
        let mut push = |queue: &str, state: &str, count: u64| {
            if count > 0 {
                depths.push(QueueDepth {
                    queue: queue.to_string(),
                    state: state.to_string(),
                    count,
                });
            }
        };
        for (queue, pending, scheduled, retry, active, archived) in &live {
            push(queue, "pending", *pending);
            push(queue, "scheduled", *scheduled);
            push(queue, "retry", *retry);
            push(queue, "running", *active);
            push(queue, "archived", *archived);
        }
        for count in self.records.count_tasks().await? {
            if count.status.is_finished() {
                push(&count.queue, count.status.as_str(), count.count);
            }
        }
        depths.sort_by(|a, b| (&a.queue, &a.state).cmp(&(&b.queue, &b.state)));
        Ok(depths)
    }

    async fn cancel(&self, task_id: &str, reason: &str) -> CoreResult<CancelOutcome> {
        // A few rounds: the task may move (leased, finished) while we look.
        for _ in 0..3 {
            let state: String = self
                .scripts
                .cancel
                .arg(&self.options.prefix)
                .arg(task_id)
                .invoke_async(&mut self.conn())
                .await
                .map_err(redis_error)?;
            match state.as_str() {
                "active" => {
                    // Flagged in Redis first: a crash before the record is written
                    // still stops it (its worker, or lease recovery, sees the flag).
                    let task = match self.records.record_cancel_requested(task_id).await? {
                        Some(task) => task,
                        None => match self.records.task_record(task_id).await? {
                            Some(task) if task.status.is_finished() => {
                                return Ok(CancelOutcome::Finished(task));
                            }
                            Some(task) => task,
                            None => return Ok(CancelOutcome::NotFound),
                        },
                    };
                    return Ok(CancelOutcome::Requested(task));
                }
                "pending" | "scheduled" | "retry" | "missing" | "done" | "archived" => {
                    // Not started (or Redis does not hold it): the record decides.
                    let cancelled = self
                        .records
                        .record_finished(
                            task_id,
                            &[TaskStatus::Pending],
                            None,
                            TaskStatus::Cancelled,
                            None,
                            Some(reason),
                            None,
                        )
                        .await?;
                    if let Some(task) = cancelled {
                        self.remove(
                            task_id,
                            &["pending", "scheduled", "retry"],
                            None,
                            "cancelled",
                        )
                        .await?;
                        return Ok(CancelOutcome::Cancelled(task));
                    }
                    match self.records.task_record(task_id).await? {
                        None => return Ok(CancelOutcome::NotFound),
                        Some(task) if task.status.is_finished() => {
                            return Ok(CancelOutcome::Finished(task));
                        }
                        // Running in the record: leased meanwhile; look again.
                        Some(_) => continue,
                    }
                }
                other => return Err(unsupported_state(other)),
            }
        }
        match self.records.task_record(task_id).await? {
            Some(task) if task.status.is_finished() => Ok(CancelOutcome::Finished(task)),
            Some(task) => Ok(CancelOutcome::Requested(task)),
            None => Ok(CancelOutcome::NotFound),
        }
    }

    async fn cancel_requested(&self, task_id: &str) -> CoreResult<bool> {
        let flag: Option<String> = self
            .conn()
            .hget(format!("{}t:{task_id}", self.options.prefix), "cancel")
            .await
            .map_err(redis_error)?;
        Ok(flag.as_deref() == Some("1"))
    }

    async fn mark_cancelled(&self, task_id: &str, worker_id: &str, reason: &str) -> CoreResult<()> {
        let finished = self
            .records
            .record_finished(
                task_id,
                &[TaskStatus::Running],
                Some(worker_id),
                TaskStatus::Cancelled,
                None,
                Some(reason),
                None,
            )
            .await?;
        if finished.is_some() {
            self.remove(task_id, &["active"], Some(worker_id), "cancelled")
                .await?;
        }
        Ok(())
    }

    async fn release(&self, task_id: &str, worker_id: &str) -> CoreResult<bool> {
        let retried: Option<u32> = self
            .conn()
            .hget(format!("{}t:{task_id}", self.options.prefix), "retried")
            .await
            .map_err(redis_error)?;
        let retried = retried.unwrap_or(0);
        let error = "its worker shut down; back in line";
        // Redis first (it checks that the worker holds it); a crash before the record
        // follows leaves a `running` record, which the next lease overwrites.
        let moved: i64 = self
            .scripts
            .retry
            .arg(&self.options.prefix)
            .arg(task_id)
            .arg(worker_id)
            .arg(now_ms())
            .arg(retried)
            .arg(error)
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_error)?;
        if moved == 0 {
            return Ok(false);
        }
        self.records
            .record_retry(task_id, Some(worker_id), retried, error, Utc::now())
            .await?;
        self.notify.notify_one();
        Ok(true)
    }

    async fn list_archived(&self, limit: u32) -> CoreResult<Vec<ArchivedTask>> {
        let limit = limit.clamp(1, 1000) as isize;
        let mut all: Vec<(String, i64)> = Vec::new();
        for q in QUEUES {
            let key = format!("{}q:{}:archive", self.options.prefix, q.as_str());
            let mut entries: Vec<(String, i64)> = self
                .conn()
                .zrevrange_withscores(&key, 0, limit - 1)
                .await
                .map_err(redis_error)?;
            all.append(&mut entries);
        }
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
        all.truncate(limit as usize);
        let mut out = Vec::with_capacity(all.len());
        for (id, archived_at) in all {
            let error: Option<String> = self
                .conn()
                .hget(format!("{}t:{id}", self.options.prefix), "error")
                .await
                .map_err(redis_error)?;
            if let Some(task) = self.records.task_record(&id).await? {
                out.push(ArchivedTask {
                    task,
                    archived_at: from_ms(archived_at),
                    error: error.filter(|e| !e.is_empty()),
                });
            }
        }
        Ok(out)
    }

    async fn retry_archived(&self, task_id: &str) -> CoreResult<bool> {
        let state: Option<String> = self
            .conn()
            .hget(format!("{}t:{task_id}", self.options.prefix), "state")
            .await
            .map_err(redis_error)?;
        if state.as_deref() != Some("archived") {
            return Ok(false);
        }
        // The record first (a crash before Redis follows leaves a pending record
        // whose task Redis archived, which the reconcile sweep fails again).
        if self.records.record_reopened(task_id).await?.is_none() {
            return Ok(false);
        }
        let moved: i64 = self
            .scripts
            .unarchive
            .arg(&self.options.prefix)
            .arg(task_id)
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_error)?;
        Ok(moved == 1)
    }

    async fn archived_times(&self, ids: &[&str]) -> CoreResult<HashMap<String, DateTime<Utc>>> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("HMGET")
                .arg(format!("{}t:{id}", self.options.prefix))
                .arg("state")
                .arg("archived_at");
        }
        let fields: Vec<(Option<String>, Option<i64>)> = pipe
            .query_async(&mut self.conn())
            .await
            .map_err(redis_error)?;
        Ok(ids
            .iter()
            .zip(fields)
            .filter_map(|(id, (state, at))| match (state.as_deref(), at) {
                (Some("archived"), Some(at)) => Some((id.to_string(), from_ms(at))),
                _ => None,
            })
            .collect())
    }

    async fn delete_archived(&self, task_id: &str) -> CoreResult<bool> {
        Ok(self
            .remove(task_id, &["archived"], None, "deleted")
            .await?
            .is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_grow_with_jitter_and_cap() {
        let policy = RetryPolicy::new(Duration::from_secs(2));
        assert_eq!(policy.delay(0, 0.0), Duration::from_secs(2));
        assert_eq!(policy.delay(3, 0.0), Duration::from_secs(16));
        assert_eq!(policy.delay(3, 0.5), Duration::from_millis(17_600));
        assert_eq!(policy.delay(30, 0.0), Duration::from_secs(300));
        assert!(policy.delay(30, 0.999) < Duration::from_secs(360));
    }
}
