//! The task queue's throughput and latency, with Redis's own figures on the same
//! server as the ceiling.
//!
//! - throughput: `BENCH_TASKS` no-op tasks enqueued by one producer while one (then
//!   two) consumers lease and complete them; tasks per second from the first enqueue
//!   to the last completion;
//! - latency: one idle consumer waiting in `wait_for_work` (woken by Redis pub/sub),
//!   a task enqueued every 5 ms; enqueue → lease, p50 and p99;
//! - the ceiling: `redis-benchmark -q` LPUSH, RPOP and an EVALSHA of a one-command
//!   script on the same redis-server.
//!
//! Each queue is measured: Redis with its records in SQLite, Redis with records in
//! PostgreSQL (when `initdb` is installed), Redis with records that cost nothing (the
//! Redis side's own ceiling), and the embedded queue for reference.
//!
//! Run: `cargo bench -p aetherium-core --bench queue_throughput`. Needs
//! `redis-server` and `redis-benchmark` (package `redis-server`). Options through the
//! environment: `BENCH_TASKS` (default 2000), `BENCH_LATENCY_SAMPLES` (default 300).
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aetherium_core::CoreResult;
use aetherium_core::queue::{EmbeddedQueue, RedisQueue, RedisQueueOptions, TaskQueue};
use aetherium_core::services::new_task;
use aetherium_core::store::{PgStore, SqliteStore, TaskCount, TaskRecords};
use aetherium_testkit::postgres::TempPostgres;
use aetherium_testkit::redis::TempRedis;
use aetherium_types::TaskType;
use aetherium_types::{Task, TaskStatus};
use chrono::{DateTime, Utc};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const LEASE: Duration = Duration::from_secs(60);

/// Records that cost nothing: what the Redis side alone can do.
struct NullRecords;

#[async_trait::async_trait]
impl TaskRecords for NullRecords {
    async fn insert_task(&self, _: &Task) -> CoreResult<()> {
        Ok(())
    }
    async fn task_record(&self, _: &str) -> CoreResult<Option<Task>> {
        Ok(None)
    }
    async fn record_running(
        &self,
        id: &str,
        worker_id: &str,
        retry_count: u32,
        started_at: DateTime<Utc>,
        _: DateTime<Utc>,
    ) -> CoreResult<Option<Task>> {
        let mut t = new_task(TaskType::VmExecute, serde_json::json!({}), None);
        t.id = id.to_string();
        t.status = TaskStatus::Running;
        t.worker_id = Some(worker_id.to_string());
        t.retry_count = retry_count;
        t.started_at = Some(started_at);
        Ok(Some(t))
    }
    async fn record_retry(
        &self,
        _: &str,
        _: Option<&str>,
        _: u32,
        _: &str,
        _: DateTime<Utc>,
    ) -> CoreResult<bool> {
        Ok(true)
    }
    async fn record_finished(
        &self,
        id: &str,
        _: &[TaskStatus],
        _: Option<&str>,
        _: TaskStatus,
        _: Option<&serde_json::Value>,
        _: Option<&str>,
        _: Option<u32>,
    ) -> CoreResult<Option<Task>> {
        self.record_running(id, "", 0, Utc::now(), Utc::now()).await
    }
    async fn record_cancel_requested(&self, _: &str) -> CoreResult<Option<Task>> {
        Ok(None)
    }
    async fn record_reopened(&self, _: &str) -> CoreResult<Option<Task>> {
        Ok(None)
    }
    async fn unfinished_tasks(
        &self,
        _: TaskStatus,
        _: DateTime<Utc>,
        _: Option<(i64, String)>,
        _: u32,
    ) -> CoreResult<Vec<Task>> {
        Ok(Vec::new())
    }
    async fn count_tasks(&self) -> CoreResult<Vec<TaskCount>> {
        Ok(Vec::new())
    }
    async fn cancel_orphaned_work(&self, _: &Task, _: &str) -> CoreResult<()> {
        Ok(())
    }
}

/// Enqueues `n` tasks while `consumers` lease and complete them; tasks per second.
async fn throughput(queue: Arc<dyn TaskQueue>, n: usize, consumers: usize) -> f64 {
    let started = Instant::now();
    let producer = {
        let queue = queue.clone();
        tokio::spawn(async move {
            for _ in 0..n {
                let t = new_task(TaskType::VmExecute, serde_json::json!({}), None);
                queue.enqueue(&t).await.unwrap();
            }
        })
    };
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut handles = Vec::new();
    for c in 0..consumers {
        let (queue, done) = (queue.clone(), done.clone());
        handles.push(tokio::spawn(async move {
            let worker = format!("bench-{c}");
            while done.load(std::sync::atomic::Ordering::Relaxed) < n {
                match queue.lease(&worker, LEASE).await.unwrap() {
                    Some(t) => {
                        queue
                            .complete(&t.id, &worker, serde_json::json!(null))
                            .await
                            .unwrap();
                        done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    None => queue.wait_for_work(Duration::from_millis(5)).await,
                }
            }
        }));
    }
    producer.await.unwrap();
    for h in handles {
        h.await.unwrap();
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// Enqueue → lease latencies (ms) seen by one idle consumer: p50, p99.
async fn latency(queue: Arc<dyn TaskQueue>, samples: usize) -> (f64, f64) {
    let sent = Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    let consumer = {
        let (queue, sent) = (queue.clone(), sent.clone());
        tokio::spawn(async move {
            let mut seen = Vec::with_capacity(samples);
            while seen.len() < samples {
                match queue.lease("lat", LEASE).await.unwrap() {
                    Some(t) => {
                        let at: Instant = sent.lock().unwrap().remove(&t.id).unwrap();
                        seen.push(at.elapsed().as_secs_f64() * 1000.0);
                        queue
                            .complete(&t.id, "lat", serde_json::json!(null))
                            .await
                            .unwrap();
                    }
                    None => queue.wait_for_work(Duration::from_millis(500)).await,
                }
            }
            seen
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..samples {
        let t = new_task(TaskType::VmExecute, serde_json::json!({}), None);
        sent.lock().unwrap().insert(t.id.clone(), Instant::now());
        queue.enqueue(&t).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut seen = consumer.await.unwrap();
    seen.sort_by(|a, b| a.total_cmp(b));
    let pick = |q: f64| seen[((seen.len() as f64 - 1.0) * q).round() as usize];
    (pick(0.5), pick(0.99))
}

async fn measure(name: &str, make: impl AsyncFn() -> Arc<dyn TaskQueue>) {
    let n = env_or("BENCH_TASKS", 2000usize);
    let samples = env_or("BENCH_LATENCY_SAMPLES", 300usize);
    let one = throughput(make().await, n, 1).await;
    let two = throughput(make().await, n, 2).await;
    let (p50, p99) = latency(make().await, samples).await;
    println!(
        "{name:<34} {one:>9.0} tasks/s (1 consumer) {two:>9.0} tasks/s (2 consumers)   enqueue→lease p50 {p50:.2} ms  p99 {p99:.2} ms"
    );
}

fn redis_benchmark(port: u16) {
    let out = Command::new("redis-benchmark")
        .args([
            "-p",
            &port.to_string(),
            "-q",
            "-n",
            "100000",
            "-t",
            "lpush,rpop",
        ])
        .output();
    let eval = Command::new("redis-benchmark")
        .args([
            "-p",
            &port.to_string(),
            "-q",
            "-n",
            "100000",
            "EVAL",
            "redis.call('LPUSH', KEYS[1], ARGV[1]); return redis.call('RPOP', KEYS[1])",
            "1",
            "bench:list",
            "x",
        ])
        .output();
    match (out, eval) {
        (Ok(out), Ok(eval)) => {
            for line in String::from_utf8_lossy(&out.stdout)
                .lines()
                .chain(String::from_utf8_lossy(&eval.stdout).lines())
            {
                // redis-benchmark -q redraws its progress line with \r.
                let line = line.rsplit('\r').next().unwrap_or(line).trim();
                if !line.is_empty() {
                    println!("  redis-benchmark: {line}");
                }
            }
        }
        _ => println!("  redis-benchmark not found (package redis-server)"),
    }
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let counter = std::sync::atomic::AtomicUsize::new(0);
        let sqlite = async || {
            let i = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let url = format!("sqlite://{}", dir.path().join(format!("{i}.db")).display());
            SqliteStore::connect(&url).await.unwrap()
        };
        let redis = TempRedis::start().unwrap();
        let options = RedisQueueOptions {
            prefix: "bench:".into(),
            ..Default::default()
        };
        let flush = |redis: &TempRedis| {
            let _ = Command::new("redis-cli")
                .args(["-p", &redis.port().to_string(), "FLUSHALL"])
                .output();
        };

        println!("queue throughput (no-op tasks) and enqueue→lease latency");
        measure("embedded (SQLite)", async || {
            let store = sqlite().await;
            Arc::new(EmbeddedQueue::new(
                store.pool().clone(),
                Duration::from_secs(2),
            )) as Arc<dyn TaskQueue>
        })
        .await;
        measure("redis + SQLite records", async || {
            flush(&redis);
            let records: Arc<dyn TaskRecords> = Arc::new(sqlite().await);
            Arc::new(
                RedisQueue::connect(&redis.url(), records, options.clone())
                    .await
                    .unwrap(),
            ) as Arc<dyn TaskQueue>
        })
        .await;
        measure("redis, records cost nothing", async || {
            flush(&redis);
            Arc::new(
                RedisQueue::connect(&redis.url(), Arc::new(NullRecords), options.clone())
                    .await
                    .unwrap(),
            ) as Arc<dyn TaskQueue>
        })
        .await;
        match TempPostgres::start() {
            Ok(pg) => {
                let store = PgStore::connect(&pg.url()).await.unwrap();
                measure("redis + PostgreSQL records", async || {
                    flush(&redis);
                    sqlx::query("TRUNCATE tasks")
                        .execute(store.pool())
                        .await
                        .unwrap();
                    let records: Arc<dyn TaskRecords> = Arc::new(store.clone());
                    Arc::new(
                        RedisQueue::connect(&redis.url(), records, options.clone())
                            .await
                            .unwrap(),
                    ) as Arc<dyn TaskQueue>
                })
                .await;
            }
            Err(e) => println!("(no PostgreSQL: {e})"),
        }
        println!("ceiling: redis-benchmark on the same redis-server");
        redis_benchmark(redis.port());
    });
}
