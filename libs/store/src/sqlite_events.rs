//! [`EventLog`] and [`LogStore`] for SQLite (tables from `0003_events_logs.sql`).
//! Their behaviour is tested, on SQLite and PostgreSQL alike, by
//! `tests/store_conformance.rs`.

use aetherium_types::logs::{LogFilter, LogLevel, LogOrder, LogRecord};
use aetherium_types::{Event, EventFilter};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::SqliteRow;
use sqlx::{AssertSqlSafe, Row};

use super::events::EventLog;
use super::logs::LogStore;
use super::sqlite::{SqliteStore, from_ms, parse_enum, to_ms};
use crate::error::CoreResult;

/// Rows deleted per statement while pruning, so the writer lock is never held long.
const PRUNE_BATCH: i64 = 5000;

fn event_from_row(row: &SqliteRow) -> CoreResult<Event> {
    let data: String = row.try_get("data")?;
    Ok(Event {
        seq: Some(row.try_get("seq")?),
        id: row.try_get("id")?,
        event_type: parse_enum(row.try_get::<&str, _>("type")?)?,
        resource_id: row.try_get("resource_id")?,
        timestamp: from_ms(row.try_get("timestamp")?),
        data: serde_json::from_str(&data).unwrap_or(serde_json::Value::Null),
    })
}

fn log_from_row(row: &SqliteRow) -> CoreResult<LogRecord> {
    let fields: String = row.try_get("fields")?;
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
        fields: serde_json::from_str(&fields).unwrap_or_default(),
    })
}

impl SqliteStore {
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
        // The newest key that falls outside `keep` (NULL when there are fewer rows).
        let cutoff: Option<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT {key} FROM {table} ORDER BY {key} DESC LIMIT 1 OFFSET ?1"
        )))
        .bind(keep)
        .fetch_optional(self.pool())
        .await?;
        let mut total = 0u64;
        loop {
            let deleted = sqlx::query(AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE {key} IN (
                    SELECT {key} FROM {table}
                    WHERE timestamp < ?1 OR (?2 IS NOT NULL AND {key} <= ?2)
                    ORDER BY {key} LIMIT ?3)"
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
impl EventLog for SqliteStore {
    async fn append_events(&self, events: &[Event]) -> CoreResult<Vec<i64>> {
        let mut tx = self.pool().begin().await?;
        let mut seqs = Vec::with_capacity(events.len());
        for e in events {
            let seq: i64 = sqlx::query_scalar(
                "INSERT INTO events (id, type, resource_id, timestamp, data)
                 VALUES (?1, ?2, ?3, ?4, ?5) RETURNING seq",
            )
            .bind(&e.id)
            .bind(e.event_type.as_str())
            .bind(&e.resource_id)
            .bind(to_ms(e.timestamp))
            .bind(serde_json::to_string(&e.data).unwrap_or_else(|_| "null".into()))
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
            type_terms.push(format!("type = ?{n}"));
            n += 1;
        }
        for _ in &filter.categories {
            type_terms.push(format!("type LIKE ?{n}"));
            n += 1;
        }
        let type_sql = if type_terms.is_empty() {
            "1".to_string()
        } else {
            format!("({})", type_terms.join(" OR "))
        };
        let sql = format!(
            "SELECT * FROM events WHERE seq > ?1 AND (?2 IS NULL OR resource_id = ?2)
             AND {type_sql} ORDER BY seq LIMIT ?{n}"
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
impl LogStore for SqliteStore {
    async fn append_logs(&self, records: &mut [LogRecord]) -> CoreResult<()> {
        let mut tx = self.pool().begin().await?;
        for r in records.iter_mut() {
            r.id = sqlx::query_scalar(
                "INSERT INTO logs (timestamp, level, target, message, task_id, vm_id,
                                   worker_id, execution_id, fields)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) RETURNING id",
            )
            .bind(to_ms(r.timestamp))
            .bind(r.level.rank())
            .bind(&r.target)
            .bind(&r.message)
            .bind(&r.task_id)
            .bind(&r.vm_id)
            .bind(&r.worker_id)
            .bind(&r.execution_id)
            .bind(serde_json::to_string(&r.fields).unwrap_or_else(|_| "{}".into()))
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
        // instr() is a case-sensitive substring test with no wildcards to escape.
        let sql = format!(
            "SELECT * FROM logs
             WHERE (?1 IS NULL OR task_id = ?1) AND (?2 IS NULL OR vm_id = ?2)
               AND (?3 IS NULL OR worker_id = ?3) AND (?4 IS NULL OR execution_id = ?4)
               AND (?5 IS NULL OR level >= ?5)
               AND (?6 IS NULL OR timestamp >= ?6) AND (?7 IS NULL OR timestamp < ?7)
               AND (?8 IS NULL OR instr(message, ?8) > 0)
               AND (?9 IS NULL OR id {cmp} ?9)
             ORDER BY id {dir} LIMIT ?10"
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
