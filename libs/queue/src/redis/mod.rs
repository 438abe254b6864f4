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

mod task_queue;

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

#[cfg(test)]
mod tests;
