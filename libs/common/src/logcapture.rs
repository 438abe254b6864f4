//! Captures the platform's own log records so the API can serve them
//! (`POST /logs/query`, `GET /logs/stream`).
//!
//! [`CaptureLayer`] is a `tracing_subscriber::Layer`: for every event that passes its
//! filter it builds a [`LogRecord`] — level, target, message, fields — and tags it
//! with `task_id`, `vm_id`, `worker_id` and `execution_id` taken from the event's own
//! fields or, failing that, from the fields of its enclosing spans (innermost wins).
//! Records go to every attached sink ([`attach`]) through a bounded channel with
//! `try_send`: the logging thread never blocks; a full sink drops the record and
//! counts it ([`dropped`]). The core's log writer is such a sink: it stores records
//! in batches and broadcasts them with their ids.
//!
//! Fields whose name suggests a secret (`token`, `password`, `secret`,
//! `authorization`, `api_key`) are stored as `"[redacted]"`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use aetherium_types::logs::{LogLevel, LogRecord};
use chrono::Utc;
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Record};
use tracing::{Event, Id, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// Targets never captured: the database driver (the log writer's own queries would
/// otherwise feed back into the log).
const SKIPPED_TARGETS: &[&str] = &["sqlx"];
const SECRET_HINTS: &[&str] = &["token", "password", "secret", "authorization", "api_key"];
/// Longest message or field value kept, in bytes.
const MAX_VALUE_BYTES: usize = 8 * 1024;

struct Hub {
    sinks: Mutex<Vec<mpsc::Sender<LogRecord>>>,
    live_sinks: AtomicUsize,
    dropped: AtomicU64,
}

fn hub() -> &'static Hub {
    static HUB: OnceLock<Hub> = OnceLock::new();
    HUB.get_or_init(|| Hub {
        sinks: Mutex::new(Vec::new()),
        live_sinks: AtomicUsize::new(0),
        dropped: AtomicU64::new(0),
    })
}

/// A new sink receiving every captured record from now on, buffering up to
/// `capacity`. Dropping the receiver detaches it.
pub fn attach(capacity: usize) -> mpsc::Receiver<LogRecord> {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let hub = hub();
    let mut sinks = hub.sinks.lock().unwrap_or_else(|e| e.into_inner());
    sinks.push(tx);
    hub.live_sinks.store(sinks.len(), Ordering::Release);
    rx
}

/// Records dropped because a sink was full, since the process started.
pub fn dropped() -> u64 {
    hub().dropped.load(Ordering::Relaxed)
}

fn deliver(record: LogRecord) {
    let hub = hub();
    let mut sinks = hub.sinks.lock().unwrap_or_else(|e| e.into_inner());
    sinks.retain(|tx| match tx.try_send(record.clone()) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            hub.dropped.fetch_add(1, Ordering::Relaxed);
            true
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    });
    hub.live_sinks.store(sinks.len(), Ordering::Release);
}

/// The layer; install it with [`crate::telemetry::init`] (or add it to any
/// subscriber built on a registry).
#[derive(Debug, Clone, Copy, Default)]
pub struct CaptureLayer;

/// Fields recorded on a span, kept in its extensions.
#[derive(Default)]
struct SpanFields(Map<String, Value>);

#[derive(Default)]
struct Collect {
    message: Option<String>,
    fields: Map<String, Value>,
}

fn truncate(mut s: String) -> String {
    if s.len() > MAX_VALUE_BYTES {
        let mut cut = MAX_VALUE_BYTES;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

fn is_secret(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_HINTS.iter().any(|hint| name.contains(hint))
}

impl Collect {
    fn put(&mut self, field: &Field, value: Value) {
        let name = field.name();
        if name == "message" {
            self.message = Some(match value {
                Value::String(s) => truncate(s),
                other => other.to_string(),
            });
            return;
        }
        // `log` crate records arrive with `log.*` metadata fields: not worth keeping.
        if name.starts_with("log.") {
            return;
        }
        let value = if is_secret(name) {
            Value::String("[redacted]".into())
        } else {
            value
        };
        self.fields.insert(name.to_string(), value);
    }
}

impl Visit for Collect {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let mut s = String::new();
        let _ = write!(s, "{value:?}");
        self.put(field, Value::String(truncate(s)));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(truncate(value.to_string())));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::String(truncate(value.to_string())));
    }
}

fn level_of(level: &tracing::Level) -> LogLevel {
    match *level {
        tracing::Level::TRACE => LogLevel::Trace,
        tracing::Level::DEBUG => LogLevel::Debug,
        tracing::Level::INFO => LogLevel::Info,
        tracing::Level::WARN => LogLevel::Warn,
        _ => LogLevel::Error,
    }
}

/// Takes a resource id out of `fields` under `names` (first wins), as a string.
fn take_id(fields: &mut Map<String, Value>, names: &[&str]) -> Option<String> {
    for name in names {
        if let Some(v) = fields.remove(*name) {
            return Some(match v {
                Value::String(s) => s,
                other => other.to_string(),
            });
        }
    }
    None
}

/// Builds a record from an event's fields and its spans' fields (innermost first).
fn build_record(
    level: LogLevel,
    target: &str,
    event_fields: Collect,
    spans: impl Iterator<Item = Map<String, Value>>,
) -> LogRecord {
    let mut fields = event_fields.fields;
    for span in spans {
        for (k, v) in span {
            fields.entry(k).or_insert(v);
        }
    }
    LogRecord {
        id: 0,
        timestamp: Utc::now(),
        level,
        target: target.to_string(),
        message: event_fields.message.unwrap_or_default(),
        task_id: take_id(&mut fields, &["task_id"]),
        vm_id: take_id(&mut fields, &["vm_id"]),
        worker_id: take_id(&mut fields, &["worker_id", "worker"]),
        execution_id: take_id(&mut fields, &["execution_id"]),
        fields,
    }
}

impl<S> tracing_subscriber::Layer<S> for CaptureLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut collect = Collect::default();
        attrs.record(&mut collect);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields(collect.fields));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let mut collect = Collect::default();
        values.record(&mut collect);
        if let Some(span) = ctx.span(id) {
            let mut ext = span.extensions_mut();
            match ext.get_mut::<SpanFields>() {
                Some(SpanFields(fields)) => fields.extend(collect.fields),
                None => ext.insert(SpanFields(collect.fields)),
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        if hub().live_sinks.load(Ordering::Acquire) == 0 {
            return;
        }
        let meta = event.metadata();
        let target = meta.target();
        if SKIPPED_TARGETS
            .iter()
            .any(|t| target == *t || target.starts_with(&format!("{t}::")))
        {
            return;
        }
        let mut collect = Collect::default();
        event.record(&mut collect);
        let spans: Vec<Map<String, Value>> = ctx
            .event_scope(event)
            .map(|scope| {
                scope
                    .filter_map(|span| span.extensions().get::<SpanFields>().map(|f| f.0.clone()))
                    .collect()
            })
            .unwrap_or_default();
        deliver(build_record(
            level_of(meta.level()),
            target,
            collect,
            spans.into_iter(),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt as _;

    #[tokio::test]
    async fn records_carry_ids_from_fields_and_spans() {
        let subscriber = tracing_subscriber::registry().with(CaptureLayer);
        let mut rx = attach(16);
        tracing::subscriber::with_default(subscriber, || {
            let outer = tracing::info_span!(
                "task",
                task_id = "t-1",
                vm_id = tracing::field::Empty,
                worker = "w-1"
            );
            let _o = outer.enter();
            outer.record("vm_id", "vm-from-record");
            let inner = tracing::info_span!("exec", execution_id = "e-1", vm_id = "vm-inner");
            let _i = inner.enter();
            tracing::info!(attempt = 2, api_token = "hunter2", "running {}", "it");
            tracing::warn!(task_id = "t-own", "own field wins");
            tracing::info!(target: "sqlx::query", "never captured");
        });
        let first = rx.recv().await.unwrap_or_else(|| panic!("no record"));
        assert_eq!(first.message, "running it");
        assert_eq!(first.level, LogLevel::Info);
        assert_eq!(first.task_id.as_deref(), Some("t-1"));
        assert_eq!(first.vm_id.as_deref(), Some("vm-inner"));
        assert_eq!(first.worker_id.as_deref(), Some("w-1"));
        assert_eq!(first.execution_id.as_deref(), Some("e-1"));
        assert_eq!(first.fields.get("attempt"), Some(&Value::from(2)));
        assert_eq!(
            first.fields.get("api_token"),
            Some(&Value::from("[redacted]"))
        );
        let second = rx.recv().await.unwrap_or_else(|| panic!("no record"));
        assert_eq!(second.task_id.as_deref(), Some("t-own"));
        assert_eq!(second.level, LogLevel::Warn);
        assert!(rx.try_recv().is_err(), "sqlx records are skipped");
        drop(rx);

        // A full sink drops (and counts) instead of blocking the logging thread.
        let subscriber = tracing_subscriber::registry().with(CaptureLayer);
        let mut rx = attach(1);
        let before = dropped();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("one");
            tracing::info!("two");
            tracing::info!("three");
        });
        assert!(dropped() >= before + 2);
        assert_eq!(
            rx.try_recv().map(|r| r.message).ok().as_deref(),
            Some("one")
        );
    }
}
