//! [`Store`] on SQLite. The store itself, and how it opens its file, is [`super::sql::SqlStore`].

use aetherium_types::{Execution, Task, Vm, VmStatus, Worker};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::SqliteRow;
use sqlx::{AssertSqlSafe, Row};

pub use super::sql::SqliteStore;
use super::{Page, Store, TaskFilter, VmFilter};
use crate::error::{CoreError, CoreResult};

pub use super::sql::{from_ms, to_ms};

fn opt_from_ms(ms: Option<i64>) -> Option<DateTime<Utc>> {
    ms.map(from_ms)
}

fn json_map(text: &str) -> serde_json::Map<String, serde_json::Value> {
    serde_json::from_str(text).unwrap_or_default()
}

pub(crate) use super::sql::parse_enum;

fn vm_from_row(row: &SqliteRow) -> CoreResult<Vm> {
    Ok(Vm {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        status: parse_enum(row.try_get::<&str, _>("status")?)?,
        orchestrator: parse_enum(row.try_get::<&str, _>("orchestrator")?)?,
        image: row.try_get("image")?,
        vcpu_count: row.try_get::<i64, _>("vcpu_count")? as u32,
        memory_mb: row.try_get::<i64, _>("memory_mb")? as u64,
        disk_mb: row
            .try_get::<Option<i64>, _>("disk_mb")?
            .map(|mb| mb as u64),
        created_by: row.try_get("created_by")?,
        network_policy: row
            .try_get::<Option<sqlx::types::Json<aetherium_types::NetworkPolicy>>, _>(
                "network_policy",
            )?
            .map(|p| p.0),
        placement: row
            .try_get::<Option<sqlx::types::Json<aetherium_types::Placement>>, _>("placement")?
            .map(|p| p.0),
        kernel_path: row.try_get("kernel_path")?,
        rootfs_path: row.try_get("rootfs_path")?,
        socket_path: row.try_get("socket_path")?,
        worker_id: row.try_get("worker_id")?,
        error: row.try_get("error")?,
        created_at: from_ms(row.try_get("created_at")?),
        started_at: opt_from_ms(row.try_get("started_at")?),
        stopped_at: opt_from_ms(row.try_get("stopped_at")?),
        metadata: json_map(row.try_get("metadata")?),
    })
}

fn execution_from_row(row: &SqliteRow) -> CoreResult<Execution> {
    Ok(Execution {
        id: row.try_get("id")?,
        vm_id: row.try_get("vm_id")?,
        task_id: row.try_get("task_id")?,
        command: row.try_get("command")?,
        args: serde_json::from_str(row.try_get("args")?).unwrap_or_default(),
        status: parse_enum(row.try_get::<&str, _>("status")?)?,
        exit_code: row
            .try_get::<Option<i64>, _>("exit_code")?
            .map(|c| c as i32),
        stdout: row.try_get("stdout")?,
        stderr: row.try_get("stderr")?,
        error: row.try_get("error")?,
        created_at: from_ms(row.try_get("created_at")?),
        started_at: opt_from_ms(row.try_get("started_at")?),
        completed_at: opt_from_ms(row.try_get("completed_at")?),
        duration_ms: row.try_get("duration_ms")?,
        metadata: json_map(row.try_get("metadata")?),
        created_by: row.try_get("created_by")?,
    })
}

pub fn task_from_row(row: &SqliteRow) -> CoreResult<Task> {
    let result: Option<String> = row.try_get("result")?;
    Ok(Task {
        id: row.try_get("id")?,
        task_type: parse_enum(row.try_get::<&str, _>("type")?)?,
        status: parse_enum(row.try_get::<&str, _>("status")?)?,
        payload: serde_json::from_str(row.try_get("payload")?).unwrap_or_default(),
        result: result.and_then(|r| serde_json::from_str(&r).ok()),
        error: row.try_get("error")?,
        priority: row.try_get::<i64, _>("priority")? as i32,
        retry_count: row.try_get::<i64, _>("retry_count")? as u32,
        max_retries: row.try_get::<i64, _>("max_retries")? as u32,
        timeout_seconds: row.try_get::<i64, _>("timeout_seconds")? as u64,
        worker_id: row.try_get("worker_id")?,
        target_worker_id: row.try_get("target_worker_id")?,
        vm_id: row.try_get("vm_id")?,
        created_at: from_ms(row.try_get("created_at")?),
        scheduled_at: from_ms(row.try_get("scheduled_at")?),
        started_at: opt_from_ms(row.try_get("started_at")?),
        completed_at: opt_from_ms(row.try_get("completed_at")?),
        // The archive is the queue's state: the platform fills it in.
        archived_at: None,
    })
}

fn worker_from_row(row: &SqliteRow) -> CoreResult<Worker> {
    Ok(Worker {
        id: row.try_get("id")?,
        hostname: row.try_get("hostname")?,
        address: row.try_get("address")?,
        zone: row.try_get("zone")?,
        status: parse_enum(row.try_get::<&str, _>("status")?)?,
        status_message: row.try_get("status_message")?,
        capabilities: serde_json::from_str(row.try_get("capabilities")?).unwrap_or_default(),
        labels: json_map(row.try_get("labels")?),
        cpu_cores: row.try_get::<i64, _>("cpu_cores")? as u32,
        memory_mb: row.try_get::<i64, _>("memory_mb")? as u64,
        max_vms: row.try_get::<i64, _>("max_vms")? as u32,
        vm_count: row.try_get::<i64, _>("vm_count")? as u32,
        started_at: from_ms(row.try_get("started_at")?),
        last_seen: from_ms(row.try_get("last_seen")?),
    })
}

pub(crate) use super::sql::is_unique_violation;

fn to_json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

/// Keyset condition for lists ordered `created_at DESC, id DESC`: rows strictly after
/// the cursor, whose created_at is bound as `?n` and id as `?n+1` (both NULL on the
/// first page).
fn keyset_sql(n: u32) -> String {
    let m = n + 1;
    format!("(?{n} IS NULL OR created_at < ?{n} OR (created_at = ?{n} AND id < ?{m}))")
}

fn keyset(page: &Page) -> (Option<i64>, Option<&str>) {
    match &page.cursor {
        Some(c) => (Some(c.created_at_ms), Some(c.id.as_str())),
        None => (None, None),
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> CoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn close(&self) {
        self.pool.close().await;
    }

    async fn insert_vm(&self, vm: &Vm) -> CoreResult<()> {
        let result = sqlx::query(
            "INSERT INTO vms (id, name, status, orchestrator, image, vcpu_count, memory_mb,
                kernel_path, rootfs_path, socket_path, worker_id, error, created_at, started_at,
                stopped_at, metadata, disk_mb, created_by, network_policy, placement)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
        .bind(to_json(&vm.metadata))
        .bind(vm.disk_mb.map(|mb| mb as i64))
        .bind(&vm.created_by)
        .bind(vm.network_policy.as_ref().map(sqlx::types::Json))
        .bind(vm.placement.as_ref().map(sqlx::types::Json))
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
        sqlx::query("SELECT * FROM vms WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(vm_from_row)
            .transpose()
    }

    async fn get_vm_by_name(&self, name: &str) -> CoreResult<Option<Vm>> {
        sqlx::query("SELECT * FROM vms WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(vm_from_row)
            .transpose()
    }

    async fn list_vms(&self, filter: &VmFilter, page: &Page) -> CoreResult<(Vec<Vm>, u64)> {
        const FILTER: &str = "(?1 IS NULL OR status = ?1) AND (?2 IS NULL OR worker_id = ?2)
              AND (?3 IS NULL OR name = ?3) AND (?4 IS NULL OR created_by = ?4)";
        let status = filter.status.map(|s| s.as_str());
        let (after_ms, after_id) = keyset(page);
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT * FROM vms WHERE {FILTER} AND {}
             ORDER BY created_at DESC, id DESC LIMIT ?7",
            keyset_sql(5)
        )))
        .bind(status)
        .bind(&filter.worker_id)
        .bind(&filter.name)
        .bind(&filter.created_by)
        .bind(after_ms)
        .bind(after_id)
        .bind(page.limit as i64)
        .fetch_all(&self.pool)
        .await?;
        let total: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM vms WHERE {FILTER}"
        )))
        .bind(status)
        .bind(&filter.worker_id)
        .bind(&filter.name)
        .bind(&filter.created_by)
        .fetch_one(&self.pool)
        .await?;
        let vms = rows.iter().map(vm_from_row).collect::<CoreResult<_>>()?;
        Ok((vms, total as u64))
    }

    async fn count_vms_by_status(&self) -> CoreResult<Vec<(VmStatus, u64)>> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, COUNT(*) FROM vms GROUP BY status")
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
        let done = sqlx::query("UPDATE vms SET network_policy = ? WHERE id = ?")
            .bind(policy.map(sqlx::types::Json))
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn update_vm(&self, vm: &Vm) -> CoreResult<()> {
        sqlx::query(
            "UPDATE vms SET status = ?, socket_path = ?, worker_id = ?, error = ?,
                started_at = ?, stopped_at = ?, metadata = ?, kernel_path = ?, rootfs_path = ?
             WHERE id = ?",
        )
        .bind(vm.status.as_str())
        .bind(&vm.socket_path)
        .bind(&vm.worker_id)
        .bind(&vm.error)
        .bind(vm.started_at.map(to_ms))
        .bind(vm.stopped_at.map(to_ms))
        .bind(to_json(&vm.metadata))
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
        let from: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
        let stopped = matches!(to, VmStatus::Stopped | VmStatus::Failed).then(|| to_ms(Utc::now()));
        let changed = sqlx::query(
            "UPDATE vms SET status = ?1, error = COALESCE(?2, error),
                stopped_at = COALESCE(?3, stopped_at)
             WHERE id = ?4 AND status IN (SELECT value FROM json_each(?5))",
        )
        .bind(to.as_str())
        .bind(error)
        .bind(stopped)
        .bind(id)
        .bind(to_json(&from))
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(changed > 0)
    }

    async fn move_vm(&self, id: &str, from: &str, to: &str) -> CoreResult<bool> {
        let moved = sqlx::query(super::MOVE_VM)
            .bind(to)
            .bind(id)
            .bind(from)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(moved > 0)
    }

    async fn delete_vm(&self, id: &str) -> CoreResult<()> {
        sqlx::query("DELETE FROM vms WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn insert_execution(&self, e: &Execution) -> CoreResult<()> {
        sqlx::query(
            "INSERT INTO executions (id, vm_id, task_id, command, args, status, exit_code,
                stdout, stderr, error, created_at, started_at, completed_at, duration_ms, metadata,
                created_by)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&e.id)
        .bind(&e.vm_id)
        .bind(&e.task_id)
        .bind(&e.command)
        .bind(to_json(&e.args))
        .bind(e.status.as_str())
        .bind(e.exit_code.map(i64::from))
        .bind(&e.stdout)
        .bind(&e.stderr)
        .bind(&e.error)
        .bind(to_ms(e.created_at))
        .bind(e.started_at.map(to_ms))
        .bind(e.completed_at.map(to_ms))
        .bind(e.duration_ms)
        .bind(to_json(&e.metadata))
        .bind(&e.created_by)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn get_execution(&self, id: &str) -> CoreResult<Option<Execution>> {
        sqlx::query("SELECT * FROM executions WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(execution_from_row)
            .transpose()
    }

    async fn update_execution(&self, e: &Execution) -> CoreResult<()> {
        sqlx::query(
            "UPDATE executions SET status = ?, exit_code = ?, stdout = ?, stderr = ?, error = ?,
                started_at = ?, completed_at = ?, duration_ms = ?, metadata = ?, task_id = ?
             WHERE id = ?",
        )
        .bind(e.status.as_str())
        .bind(e.exit_code.map(i64::from))
        .bind(&e.stdout)
        .bind(&e.stderr)
        .bind(&e.error)
        .bind(e.started_at.map(to_ms))
        .bind(e.completed_at.map(to_ms))
        .bind(e.duration_ms)
        .bind(to_json(&e.metadata))
        .bind(&e.task_id)
        .bind(&e.id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn list_executions(&self, vm_id: &str, page: &Page) -> CoreResult<(Vec<Execution>, u64)> {
        let (after_ms, after_id) = keyset(page);
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT * FROM executions WHERE vm_id = ?1 AND {}
             ORDER BY created_at DESC, id DESC LIMIT ?4",
            keyset_sql(2)
        )))
        .bind(vm_id)
        .bind(after_ms)
        .bind(after_id)
        .bind(page.limit as i64)
        .fetch_all(&self.pool)
        .await?;
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM executions WHERE vm_id = ?")
            .bind(vm_id)
            .fetch_one(&self.pool)
            .await?;
        let list = rows
            .iter()
            .map(execution_from_row)
            .collect::<CoreResult<_>>()?;
        Ok((list, total as u64))
    }

    async fn fail_unfinished_executions(&self, vm_id: &str, error: &str) -> CoreResult<u64> {
        let now = to_ms(Utc::now());
        let done = sqlx::query(
            "UPDATE executions SET status = 'failed', error = ?, completed_at = ?
             WHERE vm_id = ? AND status IN ('pending', 'running')",
        )
        .bind(error)
        .bind(now)
        .bind(vm_id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(done)
    }

    async fn fail_interrupted_direct_executions(&self, error: &str) -> CoreResult<u64> {
        let done = sqlx::query(
            "UPDATE executions SET status = 'failed', error = ?, completed_at = ?
             WHERE status = 'running' AND json_extract(metadata, '$.mode') IS NOT NULL",
        )
        .bind(error)
        .bind(to_ms(Utc::now()))
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(done)
    }

    async fn fail_orphaned_executions(
        &self,
        before: DateTime<Utc>,
        error: &str,
    ) -> CoreResult<u64> {
        let done = sqlx::query(super::FAIL_ORPHANED_EXECUTIONS)
            .bind(error)
            .bind(to_ms(Utc::now()))
            .bind(to_ms(before))
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(done)
    }

    async fn unfinished_executions_by(&self, created_by: &str) -> CoreResult<u64> {
        let count: i64 = sqlx::query_scalar(super::UNFINISHED_EXECUTIONS_BY)
            .bind(created_by)
            .fetch_one(&self.pool)
            .await?;
        Ok(count.max(0) as u64)
    }

    async fn delete_execution(&self, id: &str) -> CoreResult<()> {
        sqlx::query("DELETE FROM executions WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn get_task(&self, id: &str) -> CoreResult<Option<Task>> {
        sqlx::query("SELECT * FROM tasks WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(task_from_row)
            .transpose()
    }

    async fn list_tasks(&self, filter: &TaskFilter, page: &Page) -> CoreResult<(Vec<Task>, u64)> {
        const FILTER: &str = "(?1 IS NULL OR status = ?1) AND (?2 IS NULL OR type = ?2)
              AND (?3 IS NULL OR vm_id = ?3) AND (?4 IS NULL OR worker_id = ?4)
              AND (?5 IS NULL OR queue = ?5) AND (?6 IS NULL OR created_at >= ?6)
              AND (?7 IS NULL OR created_at < ?7)";
        let status = filter.status.map(|s| s.as_str());
        let task_type = filter.task_type.map(|t| t.as_str());
        let queue = filter.queue.map(|q| q.as_str());
        let after = filter.created_after.map(to_ms);
        let before = filter.created_before.map(to_ms);
        let (after_ms, after_id) = keyset(page);
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT * FROM tasks WHERE {FILTER} AND {}
             ORDER BY created_at DESC, id DESC LIMIT ?10",
            keyset_sql(8)
        )))
        .bind(status)
        .bind(task_type)
        .bind(&filter.vm_id)
        .bind(&filter.worker_id)
        .bind(queue)
        .bind(after)
        .bind(before)
        .bind(after_ms)
        .bind(after_id)
        .bind(page.limit as i64)
        .fetch_all(&self.pool)
        .await?;
        let total: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM tasks WHERE {FILTER}"
        )))
        .bind(status)
        .bind(task_type)
        .bind(&filter.vm_id)
        .bind(&filter.worker_id)
        .bind(queue)
        .bind(after)
        .bind(before)
        .fetch_one(&self.pool)
        .await?;
        let tasks = rows.iter().map(task_from_row).collect::<CoreResult<_>>()?;
        Ok((tasks, total as u64))
    }

    async fn delete_task(&self, id: &str) -> CoreResult<bool> {
        let done = sqlx::query("DELETE FROM tasks WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(done > 0)
    }

    async fn task_history(
        &self,
        from: chrono::DateTime<Utc>,
        minutes: u32,
    ) -> CoreResult<Vec<aetherium_types::QueueHistoryBucket>> {
        let start = to_ms(from);
        let end = start + i64::from(minutes) * 60_000;
        let created: Vec<(i64, i64)> = sqlx::query_as(super::TASK_HISTORY_CREATED)
            .bind(start)
            .bind(end)
            .fetch_all(&self.pool)
            .await?;
        let finished: Vec<(i64, String, i64)> = sqlx::query_as(super::TASK_HISTORY_FINISHED)
            .bind(start)
            .bind(end)
            .fetch_all(&self.pool)
            .await?;
        Ok(super::history_buckets(from, minutes, &created, &finished))
    }

    async fn upsert_worker(&self, w: &Worker) -> CoreResult<()> {
        sqlx::query(
            "INSERT INTO workers (id, hostname, address, zone, status, status_message,
                capabilities, labels, cpu_cores, memory_mb, max_vms, vm_count, started_at, last_seen)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (id) DO UPDATE SET hostname = excluded.hostname,
                address = excluded.address, zone = excluded.zone, status = excluded.status,
                status_message = excluded.status_message, capabilities = excluded.capabilities,
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
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn get_worker(&self, id: &str) -> CoreResult<Option<Worker>> {
        sqlx::query("SELECT * FROM workers WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(worker_from_row)
            .transpose()
    }

    async fn list_workers(&self) -> CoreResult<Vec<Worker>> {
        sqlx::query("SELECT * FROM workers ORDER BY id")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(worker_from_row)
            .collect()
    }

    // Worker lifecycle, one statement each: see `sqlite_workers.rs`.
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
        seen_before: DateTime<Utc>,
        message: &str,
    ) -> CoreResult<Vec<Worker>> {
        self.mark_stale_workers_offline_sql(seen_before, message)
            .await
    }

    async fn worker_usage(&self) -> CoreResult<Vec<(String, aetherium_types::WorkerUsage)>> {
        self.worker_usage_sql().await
    }
}
