//! [`EventLog`] and [`LogStore`] (tables from `0003_events_logs.sql`).
//!
//! **Seq order = visibility order.** `events.seq` and `logs.id` are handed out at
//! insert time; on PostgreSQL two transactions inserting at once can commit in the
//! other order, so a reader could see seq 11 before 10 is committed, resume "after
//! 11", and never see 10. Readers resume by seq (`GET /events?after=`, the logs
//! stream), so every append takes a transaction-scoped lock ([`Dialect::XACT_LOCK`],
//! one key per table) before inserting: appends across all processes are serialised,
//! each commits before the next one draws its numbers, and rows become visible in seq
//! order. SQLite runs one writer at a time anyway. Appends are batched by one writer
//! task per process, so the lock is taken once per batch and is never contended for
//! long.

use aetherium_types::logs::{LogFilter, LogLevel, LogOrder, LogRecord};
use aetherium_types::{Event, EventFilter};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::AssertSqlSafe;
use sqlx::types::Json;

use super::dialect::{Dialect, Model};
use super::{SqlStore, from_ms, json, parse_enum, to_ms};
use crate::error::CoreResult;
use crate::events::EventLog;
use crate::logs::LogStore;

/// Advisory lock keys (arbitrary constants, "AEthEVNT"/"AEthLOGS"-ish) serialising
/// appends to `events` and `logs`.
const EVENTS_APPEND_LOCK: i64 = 0x4145_7468_4556_4e54;
const LOGS_APPEND_LOCK: i64 = 0x4145_7468_4c4f_4753;

/// Rows deleted per statement while pruning, so no lock is held long.
const PRUNE_BATCH: i64 = 5000;

#[derive(sqlx::FromRow)]
pub struct EventRow {
    seq: i64,
    id: String,
    #[sqlx(rename = "type")]
    event_type: String,
    resource_id: String,
    timestamp: i64,
    data: Json<serde_json::Value>,
}

impl Model for Event {
    type Row = EventRow;
    fn from_row(row: EventRow) -> CoreResult<Event> {
        Ok(Event {
            seq: Some(row.seq),
            id: row.id,
            event_type: parse_enum(&row.event_type)?,
            resource_id: row.resource_id,
            timestamp: from_ms(row.timestamp),
            data: row.data.0,
        })
    }
}

#[derive(sqlx::FromRow)]
pub struct LogRow {
    id: i64,
    timestamp: i64,
    level: i64,
    target: String,
    message: String,
    task_id: Option<String>,
    vm_id: Option<String>,
    worker_id: Option<String>,
    execution_id: Option<String>,
    fields: Json<serde_json::Value>,
}

impl Model for LogRecord {
    type Row = LogRow;
    fn from_row(row: LogRow) -> CoreResult<LogRecord> {
        Ok(LogRecord {
            id: row.id,
            timestamp: from_ms(row.timestamp),
            level: LogLevel::from_rank(row.level),
            target: row.target,
            message: row.message,
            task_id: row.task_id,
            vm_id: row.vm_id,
            worker_id: row.worker_id,
            execution_id: row.execution_id,
            fields: serde_json::from_value(row.fields.0).unwrap_or_default(),
        })
    }
}

/// Takes the dialect's append lock on `key`, if it has one.
async fn lock<DB: Dialect>(conn: &mut DB::Connection, key: i64) -> CoreResult<()> {
    if let Some(sql) = DB::XACT_LOCK {
        super::dialect::query::<DB>(sql)
            .bind(key)
            .execute(conn)
            .await?;
    }
    Ok(())
}

impl<DB: Dialect> SqlStore<DB> {
    /// Deletes, in batches, rows of `table` (keyed by `key`) older than `older_than`
    /// or beyond the newest `keep`.
    async fn prune(
        &self,
        table: &str,
        key: &str,
        older_than: DateTime<Utc>,
        keep: u64,
    ) -> CoreResult<u64> {
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        // The newest key that falls outside `keep` (none when there are fewer rows).
        let cutoff: Option<i64> = self
            .query(AssertSqlSafe(format!(
                "SELECT {key} FROM {table} ORDER BY {key} DESC LIMIT 1 OFFSET $1"
            )))
            .bind(keep)
            .optional_scalar(self.pool())
            .await?;
        let mut total = 0u64;
        loop {
            let deleted = self
                .query(AssertSqlSafe(format!(
                    "DELETE FROM {table} WHERE {key} IN (
                    SELECT {key} FROM {table}
                    WHERE timestamp < $1 OR (CAST($2 AS BIGINT) IS NOT NULL AND {key} <= $2)
                    ORDER BY {key} LIMIT $3)"
                )))
                .bind(to_ms(older_than))
                .bind(cutoff)
                .bind(PRUNE_BATCH)
                .execute(self.pool())
                .await?;
            total += deleted;
            if deleted < PRUNE_BATCH as u64 {
                return Ok(total);
            }
        }
    }
}

#[async_trait]
impl<DB: Dialect> EventLog for SqlStore<DB> {
    async fn append_events(&self, events: &[Event]) -> CoreResult<Vec<i64>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.pool().begin().await?;
        lock::<DB>(&mut tx, EVENTS_APPEND_LOCK).await?;
        let mut seqs = Vec::with_capacity(events.len());
        for e in events {
            let seq: i64 = self
                .query(
                    "INSERT INTO events (id, type, resource_id, timestamp, data)
                 VALUES ($1, $2, $3, $4, $5) RETURNING seq",
                )
                .bind(&e.id)
                .bind(e.event_type.as_str())
                .bind(&e.resource_id)
                .bind(to_ms(e.timestamp))
                .bind(json(&e.data))
                .scalar(&mut *tx)
                .await?;
            seqs.push(seq);
        }
        tx.commit().await?;
        Ok(seqs)
    }

    async fn read_events(
        &self,
        after: i64,
        filter: &EventFilter,
        limit: u32,
    ) -> CoreResult<Vec<Event>> {
        // Placeholders only; every value is bound.
        let mut type_terms = Vec::new();
        let mut n = 3;
        for _ in &filter.types {
            type_terms.push(format!("type = ${n}"));
            n += 1;
        }
        for _ in &filter.categories {
            type_terms.push(format!("type LIKE ${n}"));
            n += 1;
        }
        let type_sql = if type_terms.is_empty() {
            "TRUE".to_string()
        } else {
            format!("({})", type_terms.join(" OR "))
        };
        let sql = format!(
            "SELECT * FROM events WHERE seq > $1 AND (CAST($2 AS TEXT) IS NULL OR resource_id = $2)
             AND {type_sql} ORDER BY seq LIMIT ${n}"
        );
        let mut query = self
            .query(AssertSqlSafe(sql))
            .bind(after)
            .bind(&filter.resource_id);
        for t in &filter.types {
            query = query.bind(t.as_str());
        }
        for c in &filter.categories {
            query = query.bind(format!("{c}.%"));
        }
        query.bind(i64::from(limit)).all(self.pool()).await
    }

    async fn latest_event_seq(&self) -> CoreResult<i64> {
        let seq: Option<i64> = self
            .query("SELECT MAX(seq) FROM events")
            .scalar(self.pool())
            .await?;
        Ok(seq.unwrap_or(0))
    }

    async fn prune_events(&self, older_than: DateTime<Utc>, keep: u64) -> CoreResult<u64> {
        self.prune("events", "seq", older_than, keep).await
    }
}

#[async_trait]
impl<DB: Dialect> LogStore for SqlStore<DB> {
    async fn append_logs(&self, records: &mut [LogRecord]) -> CoreResult<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool().begin().await?;
        lock::<DB>(&mut tx, LOGS_APPEND_LOCK).await?;
        for r in records.iter_mut() {
            r.id = self
                .query(
                    "INSERT INTO logs (timestamp, level, target, message, task_id, vm_id,
                                   worker_id, execution_id, fields)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
                )
                .bind(to_ms(r.timestamp))
                .bind(r.level.rank())
                .bind(&r.target)
                .bind(&r.message)
                .bind(&r.task_id)
                .bind(&r.vm_id)
                .bind(&r.worker_id)
                .bind(&r.execution_id)
                .bind(json(&r.fields))
                .scalar(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn query_logs(
        &self,
        filter: &LogFilter,
        cursor: Option<i64>,
        order: LogOrder,
        limit: u32,
    ) -> CoreResult<Vec<LogRecord>> {
        let (cmp, dir) = match order {
            LogOrder::Desc => ("<", "DESC"),
            LogOrder::Asc => (">", "ASC"),
        };
        let strpos = DB::STRPOS;
        // STRPOS is a case-sensitive substring test with no wildcards to escape.
        let sql = format!(
            "SELECT * FROM logs
             WHERE (CAST($1 AS TEXT) IS NULL OR task_id = $1) AND (CAST($2 AS TEXT) IS NULL OR vm_id = $2)
               AND (CAST($3 AS TEXT) IS NULL OR worker_id = $3)
               AND (CAST($4 AS TEXT) IS NULL OR execution_id = $4)
               AND (CAST($5 AS BIGINT) IS NULL OR level >= $5)
               AND (CAST($6 AS BIGINT) IS NULL OR timestamp >= $6)
               AND (CAST($7 AS BIGINT) IS NULL OR timestamp < $7)
               AND (CAST($8 AS TEXT) IS NULL OR {strpos}(message, $8) > 0)
               AND (CAST($9 AS BIGINT) IS NULL OR id {cmp} $9)
             ORDER BY id {dir} LIMIT $10"
        );
        self.query(AssertSqlSafe(sql))
            .bind(&filter.task_id)
            .bind(&filter.vm_id)
            .bind(&filter.worker_id)
            .bind(&filter.execution_id)
            .bind(filter.level.map(LogLevel::rank))
            .bind(filter.since.map(to_ms))
            .bind(filter.until.map(to_ms))
            .bind(&filter.contains)
            .bind(cursor)
            .bind(i64::from(limit))
            .all(self.pool())
            .await
    }

    async fn latest_log_id(&self) -> CoreResult<i64> {
        let id: Option<i64> = self
            .query("SELECT MAX(id) FROM logs")
            .scalar(self.pool())
            .await?;
        Ok(id.unwrap_or(0))
    }

    async fn prune_logs(&self, older_than: DateTime<Utc>, keep: u64) -> CoreResult<u64> {
        self.prune("logs", "id", older_than, keep).await
    }
}
