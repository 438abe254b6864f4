//! Worker rows, each change in one statement: heartbeats that keep an administrator's
//! drain, status compare-and-sets, the offline sweep (each stale worker is returned
//! to exactly one caller, however many gateways sweep at once), and what each
//! worker's VMs take.

use aetherium_types::{Worker, WorkerStatus, WorkerUsage};
use chrono::{DateTime, Utc};
use sqlx::AssertSqlSafe;

use super::dialect::{Arg, Dialect, Query};
use super::{SqlStore, json, to_ms};
use crate::error::CoreResult;
use crate::workers::{DRAINED_BY_REQUEST, HOLDING};

/// `INSERT INTO workers` of a whole row (bound by [`bind_worker`] as `$1`…`$14`),
/// updating an existing one: every column from the new row, except `status` and
/// `status_message`, which `status` assigns.
pub(super) fn upsert_worker_sql(status: &str) -> String {
    format!(
        "INSERT INTO workers (id, hostname, address, zone, status, status_message,
            capabilities, labels, cpu_cores, memory_mb, max_vms, vm_count, started_at, last_seen)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
         ON CONFLICT (id) DO UPDATE SET hostname = excluded.hostname,
            address = excluded.address, zone = excluded.zone, {status},
            capabilities = excluded.capabilities,
            labels = excluded.labels, cpu_cores = excluded.cpu_cores,
            memory_mb = excluded.memory_mb, max_vms = excluded.max_vms,
            vm_count = excluded.vm_count, started_at = excluded.started_at,
            last_seen = excluded.last_seen"
    )
}

/// Binds a worker's row as `$1`…`$14` of [`upsert_worker_sql`].
pub(super) fn bind_worker<DB: Dialect>(query: Query<DB>, w: &Worker) -> Query<DB> {
    query
        .bind(&w.id)
        .bind(&w.hostname)
        .bind(&w.address)
        .bind(&w.zone)
        .bind(w.status.as_str())
        .bind(&w.status_message)
        .bind(json(&w.capabilities))
        .bind(json(&w.labels))
        .bind(w.cpu_cores as i64)
        .bind(w.memory_mb as i64)
        .bind(w.max_vms as i64)
        .bind(w.vm_count as i64)
        .bind(to_ms(w.started_at))
        .bind(to_ms(w.last_seen))
}

impl<DB: Dialect> SqlStore<DB> {
    pub(crate) async fn heartbeat_worker_sql(&self, w: &Worker) -> CoreResult<Worker> {
        // An administrator's drain (status draining with DRAINED_BY_REQUEST) stays
        // while the worker reports active or unhealthy.
        let keep_drain = upsert_worker_sql(
            "status = CASE WHEN workers.status = 'draining' AND workers.status_message = $15
                AND excluded.status IN ('active', 'unhealthy') THEN 'draining'
                ELSE excluded.status END,
            status_message = CASE WHEN workers.status = 'draining'
                AND workers.status_message = $15
                AND excluded.status IN ('active', 'unhealthy') THEN $15
                ELSE excluded.status_message END",
        );
        let sql = format!("{keep_drain} RETURNING *");
        bind_worker(self.query(AssertSqlSafe(sql)), w)
            .bind(DRAINED_BY_REQUEST)
            .one(self.pool())
            .await
    }

    pub(crate) async fn set_worker_status_sql(
        &self,
        id: &str,
        from: &[WorkerStatus],
        to: WorkerStatus,
        message: Option<&str>,
    ) -> CoreResult<Option<Worker>> {
        self.query(AssertSqlSafe(format!(
            "UPDATE workers SET status = $1, status_message = $2 WHERE id = $3 AND {}",
            DB::any("status", 4)
        )))
        .bind(to.as_str())
        .bind(message)
        .bind(id)
        .bind(Arg::list(from.iter().map(|s| s.as_str())))
        .execute(self.pool())
        .await?;
        self.query("SELECT * FROM workers WHERE id = $1")
            .bind(id)
            .optional(self.pool())
            .await
    }

    pub(crate) async fn mark_stale_workers_offline_sql(
        &self,
        seen_before: DateTime<Utc>,
        message: &str,
    ) -> CoreResult<Vec<Worker>> {
        let mut changed: Vec<Worker> = self
            .query(
                "UPDATE workers SET status = 'offline', status_message = $1
                 WHERE status <> 'offline' AND last_seen < $2
                 RETURNING *",
            )
            .bind(message)
            .bind(to_ms(seen_before))
            .all(self.pool())
            .await?;
        changed.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(changed)
    }

    pub(crate) async fn worker_usage_sql(&self) -> CoreResult<Vec<(String, WorkerUsage)>> {
        let rows: Vec<(String, i64, i64, i64)> = self
            .query(AssertSqlSafe(format!(
                "SELECT worker_id, COUNT(*), CAST(COALESCE(SUM(vcpu_count), 0) AS BIGINT),
                    CAST(COALESCE(SUM(memory_mb), 0) AS BIGINT)
                 FROM vms WHERE worker_id IS NOT NULL AND {}
                 GROUP BY worker_id ORDER BY worker_id",
                DB::any("status", 1)
            )))
            .bind(Arg::list(HOLDING.iter().map(|s| s.as_str())))
            .fetch_all(self.pool())
            .await?;
        let usage = rows.into_iter().map(|(worker, vms, vcpus, memory_mb)| {
            let usage = WorkerUsage {
                vms: vms as u32,
                vcpus: vcpus as u64,
                memory_mb: memory_mb as u64,
            };
            (worker, usage)
        });
        Ok(usage.collect())
    }
}
