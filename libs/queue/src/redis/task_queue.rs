//! `TaskQueue` on Redis: each operation one Lua script call (atomic), with the
//! records kept in the database through `TaskRecords`.

use super::*;

#[async_trait]
impl TaskQueue for RedisQueue {
    async fn enqueue(&self, task: &Task) -> CoreResult<()> {
        self.enqueue_with(task, &EnqueueOptions::default())
            .await
            .map(|_| ())
    }

    async fn enqueue_with(
        &self,
        task: &Task,
        options: &EnqueueOptions,
    ) -> CoreResult<EnqueueOutcome> {
        // A unique task claims its key first, so that a duplicate leaves no record.
        let mut unique_key = String::new();
        if let Some(unique) = &options.unique {
            unique_key = self.unique_key(&unique.key);
            let claimed: Option<String> = redis::cmd("SET")
                .arg(&unique_key)
                .arg(&task.id)
                .arg("NX")
                .arg("PX")
                .arg(unique.ttl.as_millis().max(1) as u64)
                .query_async(&mut self.conn())
                .await
                .map_err(redis_error)?;
            if claimed.is_none() {
                let holder: Option<String> =
                    self.conn().get(&unique_key).await.map_err(redis_error)?;
                return Ok(EnqueueOutcome::Duplicate {
                    task_id: holder.unwrap_or_default(),
                });
            }
        }
        if let Err(e) = self.records.insert_task(task).await {
            self.release_unique(&unique_key, &task.id).await;
            return Err(e);
        }
        let deadline = options.deadline.map_or(0, |d| d.timestamp_millis());
        if let Err(e) = self.push(task, &unique_key, deadline).await {
            // The caller hears that the task was not queued: the record says so too
            // (should Redis have taken it after all, its lease finds the record
            // finished and drops it).
            let _ = self
                .records
                .record_finished(
                    &task.id,
                    &[TaskStatus::Pending],
                    None,
                    TaskStatus::Failed,
                    None,
                    Some(&format!("could not be queued: {e}")),
                    None,
                )
                .await;
            self.release_unique(&unique_key, &task.id).await;
            return Err(e);
        }
        Ok(EnqueueOutcome::Enqueued)
    }

    async fn lease(&self, worker_id: &str, lease: Duration) -> CoreResult<Option<Task>> {
        self.housekeeping().await?;
        for _ in 0..32 {
            let order = weighted_queue_order(|total| rand::random_range(0..total));
            let now = Utc::now();
            let until = now + lease;
            let mut invocation = self.scripts.lease.prepare_invoke();
            invocation
                .arg(&self.options.prefix)
                .arg(now.timestamp_millis())
                .arg(until.timestamp_millis())
                .arg(worker_id);
            for q in &order {
                invocation.arg(q.as_str());
            }
            let reply: Option<Vec<String>> = invocation
                .invoke_async(&mut self.conn())
                .await
                .map_err(redis_error)?;
            let Some(reply) = reply else {
                return Ok(None);
            };
            match reply.as_slice() {
                [kind, id, retried] if kind == "deadline" => {
                    let retried = retried.parse().unwrap_or(0);
                    self.record_redis_outcome(
                        id,
                        "failed",
                        retried,
                        "its deadline passed before it could run",
                    )
                    .await?;
                }
                [kind, id, retried, deadline] if kind == "leased" => {
                    let retried: u32 = retried.parse().unwrap_or(0);
                    let deadline: i64 = deadline.parse().unwrap_or(0);
                    let record = match self
                        .records
                        .record_running(id, worker_id, retried, now, until)
                        .await
                    {
                        Ok(record) => record,
                        Err(e) => {
                            self.unlease(id, worker_id, retried).await;
                            return Err(e);
                        }
                    };
                    let Some(mut task) = record else {
                        // Finished meanwhile (or unknown): it must not run.
                        self.remove(id, &["active"], Some(worker_id), "dropped")
                            .await?;
                        continue;
                    };
                    if deadline > 0 {
                        // The task's timeout never outlasts its deadline.
                        let left = ((deadline - now.timestamp_millis()).max(1000) / 1000) as u64;
                        task.timeout_seconds = task.timeout_seconds.min(left);
                    }
                    return Ok(Some(task));
                }
                other => return Err(unsupported_state(&format!("{other:?}"))),
            }
        }
        Ok(None)
    }

    async fn extend_lease(
        &self,
        task_id: &str,
        worker_id: &str,
        lease: Duration,
    ) -> CoreResult<bool> {
        let until = Utc::now() + lease;
        let held: i64 = self
            .scripts
            .extend
            .arg(&self.options.prefix)
            .arg(task_id)
            .arg(worker_id)
            .arg(until.timestamp_millis())
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_error)?;
        Ok(held == 1)
    }

    async fn complete(
        &self,
        task_id: &str,
        worker_id: &str,
        result: serde_json::Value,
    ) -> CoreResult<()> {
        let finished = self
            .records
            .record_finished(
                task_id,
                &[TaskStatus::Running],
                Some(worker_id),
                TaskStatus::Completed,
                Some(&result),
                None,
                None,
            )
            .await?;
        if finished.is_some() {
            self.remove(task_id, &["active"], Some(worker_id), "completed")
                .await?;
        }
        Ok(())
    }

    async fn fail(
        &self,
        task_id: &str,
        worker_id: &str,
        error: &str,
        retryable: bool,
    ) -> CoreResult<FailOutcome> {
        let (state, holder, retried, max_retry, task_type): (
            Option<String>,
            Option<String>,
            Option<u32>,
            Option<u32>,
            Option<String>,
        ) = redis::cmd("HMGET")
            .arg(format!("{}t:{task_id}", self.options.prefix))
            .arg(&["state", "worker", "retried", "max_retry", "type"])
            .query_async(&mut self.conn())
            .await
            .map_err(redis_error)?;
        if state.as_deref() != Some("active") || holder.as_deref() != Some(worker_id) {
            // The lease was lost (expired and recovered): that path counted it.
            return Ok(FailOutcome::Failed);
        }
        let retried = retried.unwrap_or(0);
        if retryable && retried < max_retry.unwrap_or(0) {
            let task_type = task_type.and_then(|t| t.parse::<TaskType>().ok());
            let after = self
                .policy(task_type)
                .delay(retried, rand::random_range(0.0..1.0));
            let due = Utc::now() + after;
            let moved: i64 = self
                .scripts
                .retry
                .arg(&self.options.prefix)
                .arg(task_id)
                .arg(worker_id)
                .arg(due.timestamp_millis())
                .arg(retried + 1)
                .arg(error)
                .invoke_async(&mut self.conn())
                .await
                .map_err(redis_error)?;
            if moved == 0 {
                return Ok(FailOutcome::Failed);
            }
            self.records
                .record_retry(task_id, Some(worker_id), retried + 1, error, due)
                .await?;
            return Ok(FailOutcome::WillRetry { after });
        }
        let finished = self
            .records
            .record_finished(
                task_id,
                &[TaskStatus::Running],
                Some(worker_id),
                TaskStatus::Failed,
                None,
                Some(error),
                None,
            )
            .await?;
        if finished.is_some() {
            let _: i64 = self
                .scripts
                .archive
                .arg(&self.options.prefix)
                .arg(task_id)
                .arg(worker_id)
                .arg(now_ms())
                .arg(error)
                .arg(retried)
                .arg(self.options.archive_max)
                .invoke_async(&mut self.conn())
                .await
                .map_err(redis_error)?;
        }
        Ok(FailOutcome::Failed)
    }

    async fn wait_for_work(&self, poll: Duration) {
        let _ = tokio::time::timeout(poll, self.notify.notified()).await;
    }

    async fn stats(&self) -> CoreResult<QueueStats> {
        let mut stats = QueueStats::default();
        for d in self.depths().await? {
            match d.state.as_str() {
                "pending" => stats.pending += d.count,
                "scheduled" => stats.scheduled += d.count,
                "running" => stats.running += d.count,
                "completed" => stats.completed += d.count,
                "failed" => stats.failed += d.count,
                "cancelled" => stats.cancelled += d.count,
                _ => {}
            }
        }
        Ok(stats)
    }

    /// Live states (pending, scheduled — delayed or waiting for a retry —, running,
    /// archived) from Redis; finished ones (completed, failed, cancelled) from the
    /// records. `archived` is a subset of `failed`: the dead tasks still retriable.
    async fn depths(&self) -> CoreResult<Vec<QueueDepth>> {
        let mut invocation = self.scripts.stats.prepare_invoke();
        invocation.arg(&self.options.prefix);
        for q in QUEUES {
            invocation.arg(q.as_str());
        }
        let live: Vec<(String, u64, u64, u64, u64, u64)> = invocation
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_error)?;
        let mut depths = Vec::new();
        let mut push = |queue: &str, state: &str, count: u64| {
            if count > 0 {
                depths.push(QueueDepth {
                    queue: queue.to_string(),
                    state: state.to_string(),
                    count,
                });
            }
        };
        for (queue, pending, scheduled, retry, active, archived) in &live {
            push(queue, "pending", *pending);
            push(queue, "scheduled", *scheduled);
            push(queue, "retry", *retry);
            push(queue, "running", *active);
            push(queue, "archived", *archived);
        }
        for count in self.records.count_tasks().await? {
            if count.status.is_finished() {
                push(&count.queue, count.status.as_str(), count.count);
            }
        }
        depths.sort_by(|a, b| (&a.queue, &a.state).cmp(&(&b.queue, &b.state)));
        Ok(depths)
    }

    async fn cancel(&self, task_id: &str, reason: &str) -> CoreResult<CancelOutcome> {
        // A few rounds: the task may move (leased, finished) while we look.
        for _ in 0..3 {
            let state: String = self
                .scripts
                .cancel
                .arg(&self.options.prefix)
                .arg(task_id)
                .invoke_async(&mut self.conn())
                .await
                .map_err(redis_error)?;
            match state.as_str() {
                "active" => {
                    // Flagged in Redis first: a crash before the record is written
                    // still stops it (its worker, or lease recovery, sees the flag).
                    let task = match self.records.record_cancel_requested(task_id).await? {
                        Some(task) => task,
                        None => match self.records.task_record(task_id).await? {
                            Some(task) if task.status.is_finished() => {
                                return Ok(CancelOutcome::Finished(task));
                            }
                            Some(task) => task,
                            None => return Ok(CancelOutcome::NotFound),
                        },
                    };
                    return Ok(CancelOutcome::Requested(task));
                }
                "pending" | "scheduled" | "retry" | "missing" | "done" | "archived" => {
                    // Not started (or Redis does not hold it): the record decides.
                    let cancelled = self
                        .records
                        .record_finished(
                            task_id,
                            &[TaskStatus::Pending],
                            None,
                            TaskStatus::Cancelled,
                            None,
                            Some(reason),
                            None,
                        )
                        .await?;
                    if let Some(task) = cancelled {
                        self.remove(
                            task_id,
                            &["pending", "scheduled", "retry"],
                            None,
                            "cancelled",
                        )
                        .await?;
                        return Ok(CancelOutcome::Cancelled(task));
                    }
                    match self.records.task_record(task_id).await? {
                        None => return Ok(CancelOutcome::NotFound),
                        Some(task) if task.status.is_finished() => {
                            return Ok(CancelOutcome::Finished(task));
                        }
                        // Running in the record: leased meanwhile; look again.
                        Some(_) => continue,
                    }
                }
                other => return Err(unsupported_state(other)),
            }
        }
        match self.records.task_record(task_id).await? {
            Some(task) if task.status.is_finished() => Ok(CancelOutcome::Finished(task)),
            Some(task) => Ok(CancelOutcome::Requested(task)),
            None => Ok(CancelOutcome::NotFound),
        }
    }

    async fn cancel_requested(&self, task_id: &str) -> CoreResult<bool> {
        let flag: Option<String> = self
            .conn()
            .hget(format!("{}t:{task_id}", self.options.prefix), "cancel")
            .await
            .map_err(redis_error)?;
        Ok(flag.as_deref() == Some("1"))
    }

    async fn mark_cancelled(&self, task_id: &str, worker_id: &str, reason: &str) -> CoreResult<()> {
        let finished = self
            .records
            .record_finished(
                task_id,
                &[TaskStatus::Running],
                Some(worker_id),
                TaskStatus::Cancelled,
                None,
                Some(reason),
                None,
            )
            .await?;
        if finished.is_some() {
            self.remove(task_id, &["active"], Some(worker_id), "cancelled")
                .await?;
        }
        Ok(())
    }

    async fn release(&self, task_id: &str, worker_id: &str) -> CoreResult<bool> {
        let retried: Option<u32> = self
            .conn()
            .hget(format!("{}t:{task_id}", self.options.prefix), "retried")
            .await
            .map_err(redis_error)?;
        let retried = retried.unwrap_or(0);
        let error = "its worker shut down; back in line";
        // Redis first (it checks that the worker holds it); a crash before the record
        // follows leaves a `running` record, which the next lease overwrites.
        let moved: i64 = self
            .scripts
            .retry
            .arg(&self.options.prefix)
            .arg(task_id)
            .arg(worker_id)
            .arg(now_ms())
            .arg(retried)
            .arg(error)
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_error)?;
        if moved == 0 {
            return Ok(false);
        }
        self.records
            .record_retry(task_id, Some(worker_id), retried, error, Utc::now())
            .await?;
        self.notify.notify_one();
        Ok(true)
    }

    async fn list_archived(&self, limit: u32) -> CoreResult<Vec<ArchivedTask>> {
        let limit = limit.clamp(1, 1000) as isize;
        let mut all: Vec<(String, i64)> = Vec::new();
        for q in QUEUES {
            let key = format!("{}q:{}:archive", self.options.prefix, q.as_str());
            let mut entries: Vec<(String, i64)> = self
                .conn()
                .zrevrange_withscores(&key, 0, limit - 1)
                .await
                .map_err(redis_error)?;
            all.append(&mut entries);
        }
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
        all.truncate(limit as usize);
        let mut out = Vec::with_capacity(all.len());
        for (id, archived_at) in all {
            let error: Option<String> = self
                .conn()
                .hget(format!("{}t:{id}", self.options.prefix), "error")
                .await
                .map_err(redis_error)?;
            if let Some(task) = self.records.task_record(&id).await? {
                out.push(ArchivedTask {
                    task,
                    archived_at: from_ms(archived_at),
                    error: error.filter(|e| !e.is_empty()),
                });
            }
        }
        Ok(out)
    }

    async fn retry_archived(&self, task_id: &str) -> CoreResult<bool> {
        let state: Option<String> = self
            .conn()
            .hget(format!("{}t:{task_id}", self.options.prefix), "state")
            .await
            .map_err(redis_error)?;
        if state.as_deref() != Some("archived") {
            return Ok(false);
        }
        // The record first (a crash before Redis follows leaves a pending record
        // whose task Redis archived, which the reconcile sweep fails again).
        if self.records.record_reopened(task_id).await?.is_none() {
            return Ok(false);
        }
        let moved: i64 = self
            .scripts
            .unarchive
            .arg(&self.options.prefix)
            .arg(task_id)
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_error)?;
        Ok(moved == 1)
    }

    async fn archived_times(&self, ids: &[&str]) -> CoreResult<HashMap<String, DateTime<Utc>>> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("HMGET")
                .arg(format!("{}t:{id}", self.options.prefix))
                .arg("state")
                .arg("archived_at");
        }
        let fields: Vec<(Option<String>, Option<i64>)> = pipe
            .query_async(&mut self.conn())
            .await
            .map_err(redis_error)?;
        Ok(ids
            .iter()
            .zip(fields)
            .filter_map(|(id, (state, at))| match (state.as_deref(), at) {
                (Some("archived"), Some(at)) => Some((id.to_string(), from_ms(at))),
                _ => None,
            })
            .collect())
    }

    async fn delete_archived(&self, task_id: &str) -> CoreResult<bool> {
        Ok(self
            .remove(task_id, &["archived"], None, "deleted")
            .await?
            .is_some())
    }
}
