//! Worker rows in SQLite, each change in one statement: heartbeats that keep an
//! administrator's drain, status compare-and-sets, the offline sweep, and what each
//! worker's VMs take.

use aetherium_types::{Worker, WorkerStatus, WorkerUsage};
use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, Row};

use super::Store;
use super::sqlite::{SqliteStore, to_ms};
use super::workers::{DRAINED_BY_REQUEST, HOLDING};
use crate::error::{CoreError, CoreResult};

fn to_json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

impl SqliteStore {
    pub(crate) async fn heartbeat_worker_sql(&self, w: &Worker) -> CoreResult<Worker> {
        // An administrator's drain (status draining with DRAINED_BY_REQUEST) stays
        // while the worker reports active or unhealthy.
        sqlx::query(
            "INSERT INTO workers (id, hostname, address, zone, status, status_message,
                capabilities, labels, cpu_cores, memory_mb, max_vms, vm_count, started_at, last_seen)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
             ON CONFLICT (id) DO UPDATE SET hostname = excluded.hostname,
                address = excluded.address, zone = excluded.zone,
                status = CASE WHEN workers.status = 'draining' AND workers.status_message = ?15
                    AND excluded.status IN ('active', 'unhealthy') THEN 'draining'
                    ELSE excluded.status END,
                status_message = CASE WHEN workers.status = 'draining' AND workers.status_message = ?15
                    AND excluded.status IN ('active', 'unhealthy') THEN ?15
                    ELSE excluded.status_message END,
                capabilities = excluded.capabilities,
                labels = excluded.labels, cpu_cores = excluded.cpu_cores,
                memory_mb = excluded.memory_mb, max_vms = excluded.max_vms,
                vm_count = excluded.vm_count, started_at = excluded.started_at,
                last_seen = excluded.last_seen",
        )
        .bind(&w.id)
        .bind(&w.hostname)
        .bind(&w.address)
        .bind(&w.zone)
        .bind(w.status.as_str())
        .bind(&w.status_message)
        .bind(to_json(&w.capabilities))
        .bind(to_json(&w.labels))
        .bind(w.cpu_cores as i64)
        .bind(w.memory_mb as i64)
        .bind(w.max_vms as i64)
        .bind(w.vm_count as i64)
        .bind(to_ms(w.started_at))
        .bind(to_ms(w.last_seen))
        .bind(DRAINED_BY_REQUEST)
        .execute(self.pool())
        .await?;
        self.get_worker(&w.id)
            .await?
            .ok_or_else(|| CoreError::Internal(anyhow::anyhow!("worker {} vanished", w.id)))
    }

    pub(crate) async fn set_worker_status_sql(
        &self,
        id: &str,
        from: &[WorkerStatus],
        to: WorkerStatus,
        message: Option<&str>,
    ) -> CoreResult<Option<Worker>> {
        let from: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
        sqlx::query(
            "UPDATE workers SET status = ?1, status_message = ?2
             WHERE id = ?3 AND status IN (SELECT value FROM json_each(?4))",
        )
        .bind(to.as_str())
        .bind(message)
        .bind(id)
        .bind(to_json(&from))
        .execute(self.pool())
        .await?;
        self.get_worker(id).await
    }

    pub(crate) async fn mark_stale_workers_offline_sql(
        &self,
        seen_before: DateTime<Utc>,
        message: &str,
    ) -> CoreResult<Vec<Worker>> {
        let ids: Vec<String> = sqlx::query_scalar(
            "UPDATE workers SET status = 'offline', status_message = ?1
             WHERE status != 'offline' AND last_seen < ?2
             RETURNING id",
        )
        .bind(message)
        .bind(to_ms(seen_before))
        .fetch_all(self.pool())
        .await?;
        let mut changed = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(w) = self.get_worker(&id).await? {
                changed.push(w);
            }
        }
        Ok(changed)
    }

    pub(crate) async fn worker_usage_sql(&self) -> CoreResult<Vec<(String, WorkerUsage)>> {
        let holding: Vec<&str> = HOLDING.iter().map(|s| s.as_str()).collect();
        let sql = format!(
            "SELECT worker_id, COUNT(*) AS vms, COALESCE(SUM(vcpu_count), 0) AS vcpus,
                COALESCE(SUM(memory_mb), 0) AS memory_mb
             FROM vms WHERE worker_id IS NOT NULL AND status IN ({})
             GROUP BY worker_id ORDER BY worker_id",
            holding
                .iter()
                .map(|s| format!("'{s}'"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
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
