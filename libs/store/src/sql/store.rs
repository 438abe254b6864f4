//! [`Store`]: VMs, executions, tasks and workers.

use aetherium_types::{Execution, Task, Vm, VmStatus, Worker};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::AssertSqlSafe;
use sqlx::types::Json;

use super::dialect::{Arg, Dialect};
use super::{SqlStore, is_unique_violation, json, keyset, keyset_sql, parse_enum, to_ms};
use crate::error::{CoreError, CoreResult};
use crate::{Page, Store, TaskFilter, VmFilter};

#[async_trait]
impl<DB: Dialect> Store for SqlStore<DB> {
    async fn ping(&self) -> CoreResult<()> {
        self.query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn close(&self) {
        self.pool.close().await;
    }

    async fn insert_vm(&self, vm: &Vm) -> CoreResult<()> {
        let result = self.query(
            "INSERT INTO vms (id, name, status, orchestrator, image, vcpu_count, memory_mb,
                kernel_path, rootfs_path, socket_path, worker_id, error, created_at, started_at,
                stopped_at, metadata, disk_mb, created_by, network_policy, placement, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21)",
        )
        .bind(&vm.id)
        .bind(&vm.name)
        .bind(vm.status.as_str())
        .bind(vm.orchestrator.as_str())
        .bind(&vm.image)
        .bind(vm.vcpu_count as i64)
        .bind(vm.memory_mb as i64)
        .bind(&vm.kernel_path)
        .bind(&vm.rootfs_path)
        .bind(&vm.socket_path)
        .bind(&vm.worker_id)
        .bind(&vm.error)
        .bind(to_ms(vm.created_at))
        .bind(vm.started_at.map(to_ms))
        .bind(vm.stopped_at.map(to_ms))
        .bind(json(&vm.metadata))
        .bind(vm.disk_mb.map(|mb| mb as i64))
        .bind(&vm.created_by)
        .bind(vm.network_policy.as_ref().map(Json))
        .bind(vm.placement.as_ref().map(Json))
        .bind(vm.expires_at.map(to_ms))
        .execute(&self.pool)
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(CoreError::Conflict(format!(
                "a VM named {:?} already exists",
                vm.name
            ))),
            Err(e) => Err(e.into()),
        }
    }

    async fn get_vm(&self, id: &str) -> CoreResult<Option<Vm>> {
        self.query("SELECT * FROM vms WHERE id = $1")
            .bind(id)
            .optional(&self.pool)
            .await
    }

    async fn get_vm_by_name(&self, name: &str) -> CoreResult<Option<Vm>> {
        self.query("SELECT * FROM vms WHERE name = $1")
            .bind(name)
            .optional(&self.pool)
            .await
    }

    async fn list_vms(&self, filter: &VmFilter, page: &Page) -> CoreResult<(Vec<Vm>, u64)> {
        const FILTER: &str = "(CAST($1 AS TEXT) IS NULL OR status = $1)
              AND (CAST($2 AS TEXT) IS NULL OR worker_id = $2) AND (CAST($3 AS TEXT) IS NULL OR name = $3)
              AND (CAST($4 AS TEXT) IS NULL OR created_by = $4)";
        let status = filter.status.map(|s| s.as_str());
        let (after_ms, after_id) = keyset(page);
        let filters = [
            Arg::from(status),
            Arg::from(&filter.worker_id),
            Arg::from(&filter.name),
            Arg::from(&filter.created_by),
        ];
        let vms: Vec<Vm> = self
            .query(AssertSqlSafe(format!(
                "SELECT * FROM vms WHERE {FILTER} AND {}
             ORDER BY created_at DESC, id DESC LIMIT $7",
                keyset_sql(5)
            )))
            .binds(filters.clone())
            .bind(after_ms)
            .bind(after_id)
            .bind(page.limit as i64)
            .all(&self.pool)
            .await?;
        let total: i64 = self
            .query(AssertSqlSafe(format!(
                "SELECT COUNT(*) FROM vms WHERE {FILTER}"
            )))
            .binds(filters)
            .scalar(&self.pool)
            .await?;
        Ok((vms, total as u64))
    }

    async fn count_vms_by_status(&self) -> CoreResult<Vec<(VmStatus, u64)>> {
        let rows: Vec<(String, i64)> = self
            .query("SELECT status, COUNT(*) FROM vms GROUP BY status")
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|(status, n)| Ok((parse_enum(&status)?, n as u64)))
            .collect()
    }

    async fn set_vm_network_policy(
        &self,
        id: &str,
        policy: Option<&aetherium_types::NetworkPolicy>,
    ) -> CoreResult<bool> {
        let done = self
            .query("UPDATE vms SET network_policy = $1 WHERE id = $2")
            .bind(policy.map(Json))
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done > 0)
    }

    async fn set_vm_expiry(&self, id: &str, at: Option<DateTime<Utc>>) -> CoreResult<bool> {
        let done = self
            .query("UPDATE vms SET expires_at = $1 WHERE id = $2")
            .bind(at.map(to_ms))
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done > 0)
    }

    async fn expired_vms(&self, worker_id: &str, now: DateTime<Utc>) -> CoreResult<Vec<String>> {
        let ids: Vec<(String,)> = self
            .query(
                "SELECT id FROM vms WHERE worker_id = $1 AND expires_at IS NOT NULL
                   AND expires_at <= $2 AND status <> $3 ORDER BY expires_at LIMIT 100",
            )
            .bind(worker_id)
            .bind(to_ms(now))
            .bind(VmStatus::Stopping.as_str())
            .fetch_all(&self.pool)
            .await?;
        Ok(ids.into_iter().map(|(id,)| id).collect())
    }

    async fn update_vm(&self, vm: &Vm) -> CoreResult<()> {
        self.query(
            "UPDATE vms SET status = $1, socket_path = $2, worker_id = $3, error = $4,
                started_at = $5, stopped_at = $6, metadata = $7, kernel_path = $8,
                rootfs_path = $9
             WHERE id = $10",
        )
        .bind(vm.status.as_str())
        .bind(&vm.socket_path)
        .bind(&vm.worker_id)
        .bind(&vm.error)
        .bind(vm.started_at.map(to_ms))
        .bind(vm.stopped_at.map(to_ms))
        .bind(json(&vm.metadata))
        .bind(&vm.kernel_path)
        .bind(&vm.rootfs_path)
        .bind(&vm.id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn transition_vm(
        &self,
        id: &str,
        from: &[VmStatus],
        to: VmStatus,
        error: Option<&str>,
    ) -> CoreResult<bool> {
        // One UPDATE with the expected statuses in its WHERE: SQLite runs one writer at a
        // time, and PostgreSQL re-checks the
        // condition on the latest row version after waiting for a concurrent writer,
        // so of two racing transitions from the same status only one changes the row.

        let stopped = matches!(to, VmStatus::Stopped | VmStatus::Failed).then(|| to_ms(Utc::now()));
        let changed = self
            .query(AssertSqlSafe(format!(
                "UPDATE vms SET status = $1, error = COALESCE($2, error),
                stopped_at = COALESCE($3, stopped_at)
             WHERE id = $4 AND {}",
                DB::any("status", 5)
            )))
            .bind(to.as_str())
            .bind(error)
            .bind(stopped)
            .bind(id)
            .bind(Arg::list(from.iter().map(|s| s.as_str())))
            .execute(&self.pool)
            .await?;
        Ok(changed > 0)
    }

    async fn move_vm(&self, id: &str, from: &str, to: &str) -> CoreResult<bool> {
        let moved = self
            .query(crate::MOVE_VM)
            .bind(to)
            .bind(id)
            .bind(from)
            .execute(&self.pool)
            .await?;
        Ok(moved > 0)
    }

    async fn delete_vm(&self, id: &str) -> CoreResult<()> {
        self.query("DELETE FROM vms WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn insert_execution(&self, e: &Execution) -> CoreResult<()> {
        self.query(
            "INSERT INTO executions (id, vm_id, task_id, command, args, status, exit_code,
                stdout, stderr, error, created_at, started_at, completed_at, duration_ms, metadata,
                created_by)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
        )
        .bind(&e.id)
        .bind(&e.vm_id)
        .bind(&e.task_id)
        .bind(&e.command)
        .bind(json(&e.args))
        .bind(e.status.as_str())
        .bind(e.exit_code.map(i64::from))
        .bind(&e.stdout)
        .bind(&e.stderr)
        .bind(&e.error)
        .bind(to_ms(e.created_at))
        .bind(e.started_at.map(to_ms))
        .bind(e.completed_at.map(to_ms))
        .bind(e.duration_ms)
        .bind(json(&e.metadata))
        .bind(&e.created_by)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn get_execution(&self, id: &str) -> CoreResult<Option<Execution>> {
        self.query("SELECT * FROM executions WHERE id = $1")
            .bind(id)
            .optional(&self.pool)
            .await
    }

    async fn update_execution(&self, e: &Execution) -> CoreResult<()> {
        self.query(
            "UPDATE executions SET status = $1, exit_code = $2, stdout = $3, stderr = $4,
                error = $5, started_at = $6, completed_at = $7, duration_ms = $8,
                metadata = $9, task_id = $10
             WHERE id = $11",
        )
        .bind(e.status.as_str())
        .bind(e.exit_code.map(i64::from))
        .bind(&e.stdout)
        .bind(&e.stderr)
        .bind(&e.error)
        .bind(e.started_at.map(to_ms))
        .bind(e.completed_at.map(to_ms))
        .bind(e.duration_ms)
        .bind(json(&e.metadata))
        .bind(&e.task_id)
        .bind(&e.id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn list_executions(&self, vm_id: &str, page: &Page) -> CoreResult<(Vec<Execution>, u64)> {
        let (after_ms, after_id) = keyset(page);
        let list: Vec<Execution> = self
            .query(AssertSqlSafe(format!(
                "SELECT * FROM executions WHERE vm_id = $1 AND {}
             ORDER BY created_at DESC, id DESC LIMIT $4",
                keyset_sql(2)
            )))
            .bind(vm_id)
            .bind(after_ms)
            .bind(after_id)
            .bind(page.limit as i64)
            .all(&self.pool)
            .await?;
        let total: i64 = self
            .query("SELECT COUNT(*) FROM executions WHERE vm_id = $1")
            .bind(vm_id)
            .scalar(&self.pool)
            .await?;
        Ok((list, total as u64))
    }

    async fn fail_unfinished_executions(&self, vm_id: &str, error: &str) -> CoreResult<u64> {
        let done = self
            .query(
                "UPDATE executions SET status = 'failed', error = $1, completed_at = $2
             WHERE vm_id = $3 AND status IN ('pending', 'running')",
            )
            .bind(error)
            .bind(to_ms(Utc::now()))
            .bind(vm_id)
            .execute(&self.pool)
            .await?;
        Ok(done)
    }

    async fn fail_interrupted_direct_executions(&self, error: &str) -> CoreResult<u64> {
        let done = self
            .query(AssertSqlSafe(format!(
                "UPDATE executions SET status = 'failed', error = $1, completed_at = $2
             WHERE status = 'running' AND {}",
                DB::json_has("metadata", "mode")
            )))
            .bind(error)
            .bind(to_ms(Utc::now()))
            .execute(&self.pool)
            .await?;
        Ok(done)
    }

    async fn fail_orphaned_executions(
        &self,
        before: DateTime<Utc>,
        error: &str,
    ) -> CoreResult<u64> {
        let done = self
            .query(crate::FAIL_ORPHANED_EXECUTIONS)
            .bind(error)
            .bind(to_ms(Utc::now()))
            .bind(to_ms(before))
            .execute(&self.pool)
            .await?;
        Ok(done)
    }

    async fn unfinished_executions_by(&self, created_by: &str) -> CoreResult<u64> {
        let count: i64 = self
            .query(crate::UNFINISHED_EXECUTIONS_BY)
            .bind(created_by)
            .scalar(&self.pool)
            .await?;
        Ok(count.max(0) as u64)
    }

    async fn delete_execution(&self, id: &str) -> CoreResult<()> {
        self.query("DELETE FROM executions WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn get_task(&self, id: &str) -> CoreResult<Option<Task>> {
        self.query("SELECT * FROM tasks WHERE id = $1")
            .bind(id)
            .optional(&self.pool)
            .await
    }

    async fn list_tasks(&self, filter: &TaskFilter, page: &Page) -> CoreResult<(Vec<Task>, u64)> {
        const FILTER: &str = "(CAST($1 AS TEXT) IS NULL OR status = $1)
              AND (CAST($2 AS TEXT) IS NULL OR type = $2)
              AND (CAST($3 AS TEXT) IS NULL OR vm_id = $3) AND (CAST($4 AS TEXT) IS NULL OR worker_id = $4)
              AND (CAST($5 AS TEXT) IS NULL OR queue = $5)
              AND (CAST($6 AS BIGINT) IS NULL OR created_at >= $6)
              AND (CAST($7 AS BIGINT) IS NULL OR created_at < $7)";
        let status = filter.status.map(|s| s.as_str());
        let task_type = filter.task_type.map(|t| t.as_str());
        let queue = filter.queue.map(|q| q.as_str());
        let after = filter.created_after.map(to_ms);
        let before = filter.created_before.map(to_ms);
        let (after_ms, after_id) = keyset(page);
        let filters = [
            Arg::from(status),
            Arg::from(task_type),
            Arg::from(&filter.vm_id),
            Arg::from(&filter.worker_id),
            Arg::from(queue),
            Arg::from(after),
            Arg::from(before),
        ];
        let tasks: Vec<Task> = self
            .query(AssertSqlSafe(format!(
                "SELECT * FROM tasks WHERE {FILTER} AND {}
             ORDER BY created_at DESC, id DESC LIMIT $10",
                keyset_sql(8)
            )))
            .binds(filters.clone())
            .bind(after_ms)
            .bind(after_id)
            .bind(page.limit as i64)
            .all(&self.pool)
            .await?;
        let total: i64 = self
            .query(AssertSqlSafe(format!(
                "SELECT COUNT(*) FROM tasks WHERE {FILTER}"
            )))
            .binds(filters)
            .scalar(&self.pool)
            .await?;
        Ok((tasks, total as u64))
    }

    async fn delete_task(&self, id: &str) -> CoreResult<bool> {
        let done = self
            .query("DELETE FROM tasks WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done > 0)
    }

    async fn task_history(
        &self,
        from: chrono::DateTime<Utc>,
        minutes: u32,
    ) -> CoreResult<Vec<aetherium_types::QueueHistoryBucket>> {
        let start = to_ms(from);
        let end = start + i64::from(minutes) * 60_000;
        let created: Vec<(i64, i64)> = self
            .query(crate::TASK_HISTORY_CREATED)
            .bind(start)
            .bind(end)
            .fetch_all(&self.pool)
            .await?;
        let finished: Vec<(i64, String, i64)> = self
            .query(crate::TASK_HISTORY_FINISHED)
            .bind(start)
            .bind(end)
            .fetch_all(&self.pool)
            .await?;
        Ok(crate::history_buckets(from, minutes, &created, &finished))
    }

    async fn upsert_worker(&self, w: &Worker) -> CoreResult<()> {
        let sql = super::workers::upsert_worker_sql(
            "status = excluded.status, status_message = excluded.status_message",
        );
        super::workers::bind_worker(self.query(AssertSqlSafe(sql)), w)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn get_worker(&self, id: &str) -> CoreResult<Option<Worker>> {
        self.query("SELECT * FROM workers WHERE id = $1")
            .bind(id)
            .optional(&self.pool)
            .await
    }

    async fn list_workers(&self) -> CoreResult<Vec<Worker>> {
        self.query("SELECT * FROM workers ORDER BY id")
            .all(&self.pool)
            .await
    }

    // Worker lifecycle, one statement each: see `workers.rs`.
    async fn heartbeat_worker(&self, reported: &Worker) -> CoreResult<Worker> {
        self.heartbeat_worker_sql(reported).await
    }

    async fn set_worker_status(
        &self,
        id: &str,
        from: &[aetherium_types::WorkerStatus],
        to: aetherium_types::WorkerStatus,
        message: Option<&str>,
    ) -> CoreResult<Option<Worker>> {
        self.set_worker_status_sql(id, from, to, message).await
    }

    async fn mark_stale_workers_offline(
        &self,
        seen_before: chrono::DateTime<Utc>,
        message: &str,
    ) -> CoreResult<Vec<Worker>> {
        self.mark_stale_workers_offline_sql(seen_before, message)
            .await
    }

    async fn worker_usage(&self) -> CoreResult<Vec<(String, aetherium_types::WorkerUsage)>> {
        self.worker_usage_sql().await
    }
}
