//! [`EventLog`] and [`LogStore`] for PostgreSQL (tables from
//! `migrations/postgres/0003_events_logs.sql`).
//!
//! **Seq order = visibility order.** `events.seq` and `logs.id` come from identity
//! sequences, which hand out numbers at insert time; two transactions inserting at
//! once can commit in the other order, so a reader could see seq 11 before 10 is
//! committed, resume "after 11", and never see 10. Readers resume by seq
//! (`GET /events?after=`, the logs stream), so every append takes a
//! transaction-scoped advisory lock (one key per table) before inserting: appends
//! across all processes are serialised, each commits before the next one draws its
//! numbers, and rows become visible in seq order. Appends are batched by one writer
//! task per process, so the lock is taken once per batch and is never contended for
//! long.

use aetherium_types::logs::{LogFilter, LogLevel, LogOrder, LogRecord};
use aetherium_types::{Event, EventFilter};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, Row};

use super::events::EventLog;
use super::logs::LogStore;
use super::postgres::{PgStore, jsonb};
use super::sqlite::{from_ms, parse_enum, to_ms};
use crate::error::CoreResult;

/// Advisory lock keys (arbitrary constants, "AEthEVNT"/"AEthLOGS"-ish) serialising
/// appends to `events` and `logs`.
const EVENTS_APPEND_LOCK: i64 = 0x4145_7468_4556_4e54;
const LOGS_APPEND_LOCK: i64 = 0x4145_7468_4c4f_4753;

/// Rows deleted per statement while pruning.
const PRUNE_BATCH: i64 = 5000;

fn event_from_row(row: &PgRow) -> CoreResult<Event> {
    Ok(Event {
        seq: Some(row.try_get("seq")?),
        id: row.try_get("id")?,
        event_type: parse_enum(row.try_get::<&str, _>("type")?)?,
        resource_id: row.try_get("resource_id")?,
        timestamp: from_ms(row.try_get("timestamp")?),
        data: row.try_get("data")?,
    })
}

fn log_from_row(row: &PgRow) -> CoreResult<LogRecord> {
    let fields: serde_json::Value = row.try_get("fields")?;
    Ok(LogRecord {
        id: row.try_get("id")?,
        timestamp: from_ms(row.try_get("timestamp")?),
        level: LogLevel::from_rank(row.try_get("level")?),
        target: row.try_get("target")?,
        message: row.try_get("message")?,
        task_id: row.try_get("task_id")?,
        vm_id: row.try_get("vm_id")?,
        worker_id: row.try_get("worker_id")?,
        execution_id: row.try_get("execution_id")?,
        fields: serde_json::from_value(fields).unwrap_or_default(),
    })
}

impl PgStore {
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
        let cutoff: Option<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT {key} FROM {table} ORDER BY {key} DESC LIMIT 1 OFFSET $1"
        )))
        .bind(keep)
        .fetch_optional(self.pool())
        .await?;
        let mut total = 0u64;
        loop {
            let deleted = sqlx::query(AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE {key} IN (
                    SELECT {key} FROM {table}
                    WHERE timestamp < $1 OR ($2::BIGINT IS NOT NULL AND {key} <= $2)
                    ORDER BY {key} LIMIT $3)"
            )))
            .bind(to_ms(older_than))
            .bind(cutoff)
            .bind(PRUNE_BATCH)
            .execute(self.pool())
            .await?
            .rows_affected();
            total += deleted;
            if deleted < PRUNE_BATCH as u64 {
                return Ok(total);
            }
        }
    }
}

#[async_trait]
impl EventLog for PgStore {
    async fn append_events(&self, events: &[Event]) -> CoreResult<Vec<i64>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.pool().begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(EVENTS_APPEND_LOCK)
            .execute(&mut *tx)
            .await?;
        let mut seqs = Vec::with_capacity(events.len());
        for e in events {
            let seq: i64 = sqlx::query_scalar(
                "INSERT INTO events (id, type, resource_id, timestamp, data)
                 VALUES ($1, $2, $3, $4, $5) RETURNING seq",
            )
            .bind(&e.id)
            .bind(e.event_type.as_str())
            .bind(&e.resource_id)
            .bind(to_ms(e.timestamp))
            .bind(jsonb(&e.data))
            .fetch_one(&mut *tx)
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
            "SELECT * FROM events WHERE seq > $1 AND ($2::TEXT IS NULL OR resource_id = $2)
             AND {type_sql} ORDER BY seq LIMIT ${n}"
        );
        let mut query = sqlx::query(AssertSqlSafe(sql))
            .bind(after)
            .bind(&filter.resource_id);
        for t in &filter.types {
            query = query.bind(t.as_str());
        }
        for c in &filter.categories {
            query = query.bind(format!("{c}.%"));
        }
        let rows = query.bind(i64::from(limit)).fetch_all(self.pool()).await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn latest_event_seq(&self) -> CoreResult<i64> {
        let seq: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM events")
            .fetch_one(self.pool())
            .await?;
        Ok(seq.unwrap_or(0))
    }

    async fn prune_events(&self, older_than: DateTime<Utc>, keep: u64) -> CoreResult<u64> {
        self.prune("events", "seq", older_than, keep).await
    }
}

#[async_trait]
impl LogStore for PgStore {
    async fn append_logs(&self, records: &mut [LogRecord]) -> CoreResult<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool().begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(LOGS_APPEND_LOCK)
            .execute(&mut *tx)
            .await?;
        for r in records.iter_mut() {
            r.id = sqlx::query_scalar(
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
            .bind(jsonb(&r.fields))
            .fetch_one(&mut *tx)
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
        // strpos() is a case-sensitive substring test with no wildcards to escape.
        let sql = format!(
            "SELECT * FROM logs
             WHERE ($1::TEXT IS NULL OR task_id = $1) AND ($2::TEXT IS NULL OR vm_id = $2)
               AND ($3::TEXT IS NULL OR worker_id = $3)
               AND ($4::TEXT IS NULL OR execution_id = $4)
               AND ($5::BIGINT IS NULL OR level >= $5)
               AND ($6::BIGINT IS NULL OR timestamp >= $6)
               AND ($7::BIGINT IS NULL OR timestamp < $7)
               AND ($8::TEXT IS NULL OR strpos(message, $8) > 0)
               AND ($9::BIGINT IS NULL OR id {cmp} $9)
             ORDER BY id {dir} LIMIT $10"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
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
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(log_from_row).collect()
    }

    async fn latest_log_id(&self) -> CoreResult<i64> {
        let id: Option<i64> = sqlx::query_scalar("SELECT MAX(id) FROM logs")
            .fetch_one(self.pool())
            .await?;
        Ok(id.unwrap_or(0))
    }

    async fn prune_logs(&self, older_than: DateTime<Utc>, keep: u64) -> CoreResult<u64> {
        self.prune("logs", "id", older_than, keep).await
    }
}
