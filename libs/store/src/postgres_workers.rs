//! Worker rows in PostgreSQL, each change in one statement (twin of
//! `sqlite_workers.rs`): heartbeats that keep an administrator's drain, status
//! compare-and-sets, the offline sweep (each stale worker is returned to exactly one
//! caller, however many gateways sweep at once), and what each worker's VMs take.

use aetherium_types::{Worker, WorkerStatus, WorkerUsage};
use chrono::{DateTime, Utc};
use sqlx::Row;

use super::Store;
use super::postgres::{PgStore, jsonb, worker_from_row};
use super::sqlite::to_ms;
use super::workers::{DRAINED_BY_REQUEST, HOLDING};
use crate::error::CoreResult;

impl PgStore {
    pub(crate) async fn heartbeat_worker_sql(&self, w: &Worker) -> CoreResult<Worker> {
        // An administrator's drain (status draining with DRAINED_BY_REQUEST) stays
        // while the worker reports active or unhealthy.
        let row = sqlx::query(
            "INSERT INTO workers (id, hostname, address, zone, status, status_message,
                capabilities, labels, cpu_cores, memory_mb, max_vms, vm_count, started_at, last_seen)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
             ON CONFLICT (id) DO UPDATE SET hostname = excluded.hostname,
                address = excluded.address, zone = excluded.zone,
                status = CASE WHEN workers.status = 'draining' AND workers.status_message = $15
                    AND excluded.status IN ('active', 'unhealthy') THEN 'draining'
                    ELSE excluded.status END,
                status_message = CASE WHEN workers.status = 'draining'
                    AND workers.status_message = $15
                    AND excluded.status IN ('active', 'unhealthy') THEN $15
                    ELSE excluded.status_message END,
                capabilities = excluded.capabilities,
                labels = excluded.labels, cpu_cores = excluded.cpu_cores,
                memory_mb = excluded.memory_mb, max_vms = excluded.max_vms,
                vm_count = excluded.vm_count, started_at = excluded.started_at,
                last_seen = excluded.last_seen
             RETURNING *",
        )
        .bind(&w.id)
        .bind(&w.hostname)
        .bind(&w.address)
        .bind(&w.zone)
        .bind(w.status.as_str())
        .bind(&w.status_message)
        .bind(jsonb(&w.capabilities))
        .bind(jsonb(&w.labels))
        .bind(w.cpu_cores as i64)
        .bind(w.memory_mb as i64)
        .bind(w.max_vms as i64)
        .bind(w.vm_count as i64)
        .bind(to_ms(w.started_at))
        .bind(to_ms(w.last_seen))
        .bind(DRAINED_BY_REQUEST)
        .fetch_one(self.pool())
        .await?;
        worker_from_row(&row)
    }

    pub(crate) async fn set_worker_status_sql(
        &self,
        id: &str,
        from: &[WorkerStatus],
        to: WorkerStatus,
        message: Option<&str>,
    ) -> CoreResult<Option<Worker>> {
        let from: Vec<String> = from.iter().map(|s| s.as_str().to_string()).collect();
        sqlx::query(
            "UPDATE workers SET status = $1, status_message = $2
             WHERE id = $3 AND status = ANY($4)",
        )
        .bind(to.as_str())
        .bind(message)
        .bind(id)
        .bind(&from)
        .execute(self.pool())
        .await?;
        self.get_worker(id).await
    }

    pub(crate) async fn mark_stale_workers_offline_sql(
        &self,
        seen_before: DateTime<Utc>,
        message: &str,
    ) -> CoreResult<Vec<Worker>> {
        let rows = sqlx::query(
            "UPDATE workers SET status = 'offline', status_message = $1
             WHERE status <> 'offline' AND last_seen < $2
             RETURNING *",
        )
        .bind(message)
        .bind(to_ms(seen_before))
        .fetch_all(self.pool())
        .await?;
        let mut changed = rows
            .iter()
            .map(worker_from_row)
            .collect::<CoreResult<Vec<_>>>()?;
        changed.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(changed)
    }

    pub(crate) async fn worker_usage_sql(&self) -> CoreResult<Vec<(String, WorkerUsage)>> {
        let holding: Vec<String> = HOLDING.iter().map(|s| s.as_str().to_string()).collect();
        let rows = sqlx::query(
            "SELECT worker_id, COUNT(*) AS vms, COALESCE(SUM(vcpu_count), 0)::BIGINT AS vcpus,
                COALESCE(SUM(memory_mb), 0)::BIGINT AS memory_mb
             FROM vms WHERE worker_id IS NOT NULL AND status = ANY($1)
             GROUP BY worker_id ORDER BY worker_id",
        )
        .bind(&holding)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get::<String, _>("worker_id")?,
                    WorkerUsage {
                        vms: row.try_get::<i64, _>("vms")? as u32,
                        vcpus: row.try_get::<i64, _>("vcpus")? as u64,
                        memory_mb: row.try_get::<i64, _>("memory_mb")? as u64,
                    },
                ))
            })
            .collect()
    }
}
