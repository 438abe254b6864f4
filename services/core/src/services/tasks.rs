//! The task queue as users see it: look up, list, retry, delete, cancel, wait.

use super::*;

impl Platform {
    pub async fn get_task(&self, id: &str) -> CoreResult<Task> {
        let mut task = self
            .store
            .get_task(id)
            .await?
            .ok_or_else(|| CoreError::NotFound(format!("task {id} not found")))?;
        self.mark_archived(std::slice::from_mut(&mut task)).await?;
        Self::hide_env(std::slice::from_mut(&mut task));
        Ok(task)
    }

    pub async fn list_tasks(
        &self,
        filter: &TaskFilter,
        page: &Page,
    ) -> CoreResult<(Vec<Task>, u64)> {
        let (mut tasks, total) = self.store.list_tasks(filter, page).await?;
        self.mark_archived(&mut tasks).await?;
        Self::hide_env(&mut tasks);
        Ok((tasks, total))
    }

    /// Fills in `archived_at` of the failed tasks still in the queue's archive (the
    /// records do not hold it: with the Redis queue, the archive lives in Redis).
    /// Hides the values of a command's environment in a task's payload (kept in
    /// clear only without a secrets key) from whoever reads tasks.
    pub(super) fn hide_env(tasks: &mut [Task]) {
        for task in tasks {
            hide_env_values(&mut task.payload);
        }
    }

    pub(super) async fn mark_archived(&self, tasks: &mut [Task]) -> CoreResult<()> {
        let failed: Vec<&str> = tasks
            .iter()
            .filter(|t| t.status == TaskStatus::Failed)
            .map(|t| t.id.as_str())
            .collect();
        if failed.is_empty() {
            return Ok(());
        }
        let times = self.queue.archived_times(&failed).await?;
        for task in tasks {
            task.archived_at = times.get(&task.id).copied();
        }
        Ok(())
    }

    /// The most recently archived (dead) tasks, at most `limit`, with `archived_at`.
    pub async fn list_archived_tasks(&self, limit: u32) -> CoreResult<Vec<Task>> {
        let mut tasks: Vec<Task> = self
            .queue
            .list_archived(limit)
            .await?
            .into_iter()
            .map(|archived| Task {
                archived_at: Some(archived.archived_at),
                ..archived.task
            })
            .collect();
        Self::hide_env(&mut tasks);
        Ok(tasks)
    }

    /// Puts an archived (dead) task back in line with no retries used: it is
    /// `pending` again and announced as `task.created` (with `retried: true`), as a
    /// new task would be. Anything not in the archive is a `Conflict`.
    pub async fn retry_task(&self, id: &str) -> CoreResult<Task> {
        let task = self.get_task(id).await?;
        if task.archived_at.is_none() || !self.queue.retry_archived(id).await? {
            return Err(not_archived(&task, "retried"));
        }
        let task = self.get_task(id).await?;
        self.publish(
            EventType::TaskCreated,
            &task.id,
            serde_json::json!({"type": task.task_type, "vm_id": task.vm_id, "retried": true}),
        );
        Ok(task)
    }

    /// Deletes an archived (dead) task: out of the archive, and its record gone
    /// (`task.deleted`). Anything not in the archive is a `Conflict`: live tasks are
    /// cancelled, finished ones kept as history.
    pub async fn delete_task(&self, id: &str) -> CoreResult<()> {
        let task = self.get_task(id).await?;
        if task.archived_at.is_none() || !self.queue.delete_archived(id).await? {
            return Err(not_archived(&task, "deleted"));
        }
        self.store.delete_task(id).await?;
        self.publish(
            EventType::TaskDeleted,
            &task.id,
            serde_json::json!({"type": task.task_type, "vm_id": task.vm_id}),
        );
        Ok(())
    }

    /// Tasks created, completed and failed per minute over the last `minutes`
    /// minutes, the current one last.
    pub async fn task_history(
        &self,
        minutes: u32,
    ) -> CoreResult<Vec<aetherium_types::QueueHistoryBucket>> {
        let now = Utc::now().timestamp();
        let current = now - now.rem_euclid(60);
        let from = chrono::DateTime::from_timestamp(current - 60 * i64::from(minutes - 1), 0)
            .ok_or_else(|| CoreError::Internal(anyhow::anyhow!("the clock is out of range")))?;
        self.store.task_history(from, minutes).await
    }

    /// Totals by state, and the same per queue (Asynq's pending, active, scheduled,
    /// retry, archived, processed, failed).
    pub async fn queue_stats(&self) -> CoreResult<QueueStats> {
        let mut stats = self.queue.stats().await?;
        stats.queues = crate::queue::counts_from_depths(&self.queue.depths().await?);
        Ok(stats)
    }

    /// Cancels a task. One that has not started (pending, scheduled, waiting for a
    /// retry) is `cancelled` at once and what it was for is marked so (a VM it would
    /// have created ends FAILED, an execution it would have run ends failed); a
    /// running one is stopped by its worker, which kills what it runs and records the
    /// task `cancelled` ([`CancelledTask::done`] is false until then). A finished
    /// task is a `Conflict`; `vm:delete` cannot be cancelled (a VM being deleted has
    /// no state to go back to).
    pub async fn cancel_task(&self, id: &str) -> CoreResult<CancelledTask> {
        let task = self.get_task(id).await?;
        if task.status.is_finished() {
            return Err(finished_conflict(&task));
        }
        if task.task_type == TaskType::VmDelete {
            return Err(CoreError::Conflict(format!(
                "task {id} is a vm:delete, which cannot be cancelled: once asked for, a deletion runs to its end"
            )));
        }
        match self.queue.cancel(id, CANCELLED_BEFORE_START).await? {
            CancelOutcome::Cancelled(task) => {
                self.cancelled_before_start(&task).await;
                self.publish(
                    EventType::TaskCancelled,
                    &task.id,
                    serde_json::json!({"type": task.task_type, "vm_id": task.vm_id, "reason": CANCELLED_BEFORE_START}),
                );
                Ok(CancelledTask { task, done: true })
            }
            CancelOutcome::Requested(task) => {
                // Wakes the worker that runs it (in this process) at once; other
                // workers notice on their next lease extension.
                self.publish(
                    EventType::TaskCancelRequested,
                    &task.id,
                    serde_json::json!({"type": task.task_type, "worker_id": task.worker_id}),
                );
                Ok(CancelledTask { task, done: false })
            }
            CancelOutcome::Finished(task) => Err(finished_conflict(&task)),
            CancelOutcome::NotFound => Err(CoreError::NotFound(format!("task {id} not found"))),
        }
    }

    /// What a task cancelled before it ran was for ends in a state that says so.
    pub(super) async fn cancelled_before_start(&self, task: &Task) {
        match task.task_type {
            TaskType::VmCreate => {
                let Ok(payload) = serde_json::from_value::<CreatePayload>(task.payload.clone())
                else {
                    return;
                };
                let message = "VM creation was cancelled before it started";
                if let Ok(true) = self
                    .store
                    .transition_vm(
                        &payload.vm_id,
                        &[VmStatus::Created, VmStatus::Starting],
                        VmStatus::Failed,
                        Some(message),
                    )
                    .await
                {
                    let _ = self
                        .store
                        .fail_unfinished_executions(&payload.vm_id, message)
                        .await;
                    self.publish(
                        EventType::VmFailed,
                        &payload.vm_id,
                        serde_json::json!({"status": VmStatus::Failed, "error": message}),
                    );
                }
                if let Some(exec) = payload.then_execute {
                    self.fail_pending_execution(&exec.execution_id, message)
                        .await;
                }
            }
            TaskType::VmExecute => {
                if let Ok(payload) = serde_json::from_value::<ExecPayload>(task.payload.clone()) {
                    self.fail_pending_execution(
                        &payload.execution_id,
                        "the command was cancelled before it ran",
                    )
                    .await;
                }
            }
            _ => {}
        }
    }

    pub(crate) async fn fail_pending_execution(&self, execution_id: &str, message: &str) {
        if let Ok(Some(mut e)) = self.store.get_execution(execution_id).await
            && !e.status.is_finished()
        {
            e.status = ExecutionStatus::Failed;
            e.error = Some(message.to_string());
            e.completed_at = Some(Utc::now());
            if self.store.update_execution(&e).await.is_ok() {
                self.publish(
                    EventType::ExecutionFailed,
                    &e.id,
                    serde_json::json!({"vm_id": e.vm_id, "status": e.status, "exit_code": e.exit_code}),
                );
            }
        }
    }

    // ---- waiting ---------------------------------------------------------------

    /// Waits until the VM is RUNNING, STOPPED or FAILED (or gone), at most `timeout`.
    /// Returns the VM as it is then (`None` if it was deleted).
    pub async fn wait_vm_settled(&self, id: &str, timeout: Duration) -> CoreResult<Option<Vm>> {
        self.wait_until(timeout, id, || async {
            let vm = self.store.get_vm(id).await?;
            let done = vm.as_ref().is_none_or(|v| v.status.is_settled());
            Ok((done, vm))
        })
        .await
    }

    /// Waits until the VM is in one of `wanted`, FAILED or gone, at most `timeout`;
    /// the VM as it is then.
    pub async fn wait_vm_status(
        &self,
        id: &str,
        wanted: &[VmStatus],
        timeout: Duration,
    ) -> CoreResult<Vm> {
        self.wait_until(timeout, id, || async {
            let vm = self.get_vm(id).await?;
            let done = wanted.contains(&vm.status) || vm.status == VmStatus::Failed;
            Ok((done, vm))
        })
        .await
    }

    /// Waits until the execution has finished, at most `timeout`.
    pub async fn wait_execution_finished(
        &self,
        id: &str,
        timeout: Duration,
    ) -> CoreResult<Execution> {
        self.wait_until(timeout, id, || async {
            let e = self.get_execution(id).await?;
            Ok((e.status.is_finished(), e))
        })
        .await
    }

    /// Re-reads state whenever an event about `resource_id` arrives (or every 500 ms,
    /// in case events were missed) until `check` says done or time is up.
    pub(super) async fn wait_until<T, F, Fut>(
        &self,
        timeout: Duration,
        resource_id: &str,
        check: F,
    ) -> CoreResult<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = CoreResult<(bool, T)>>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        // Subscribe before the first read, so no change can slip in between.
        let mut events = self.bus.subscribe();
        loop {
            let (done, value) = check().await?;
            if done || tokio::time::Instant::now() >= deadline {
                return Ok(value);
            }
            let tick = tokio::time::sleep_until(
                deadline.min(tokio::time::Instant::now() + Duration::from_millis(500)),
            );
            tokio::pin!(tick);
            loop {
                tokio::select! {
                    _ = &mut tick => break,
                    event = events.recv() => match event {
                        Ok(e) if e.resource_id == resource_id => break,
                        Ok(_) => continue,
                        // Lagged or closed: fall back to re-reading state.
                        Err(_) => break,
                    },
                }
            }
        }
    }

    // ---- health ----------------------------------------------------------------
}

/// `error` of a task cancelled before it started.
pub const CANCELLED_BEFORE_START: &str = "cancelled by request before it started";
/// `error` of a running task its worker stopped.
pub const CANCELLED_WHILE_RUNNING: &str = "cancelled by request while it ran";

fn not_archived(task: &Task, action: &str) -> CoreError {
    let why = if task.status == TaskStatus::Failed {
        "failed, but no longer in the archive of dead tasks".to_string()
    } else {
        task.status.to_string()
    };
    CoreError::Conflict(format!(
        "only an archived task can be {action}: task {} is {why}",
        task.id
    ))
}

fn finished_conflict(task: &Task) -> CoreError {
    CoreError::Conflict(format!(
        "task {} is already {}: only pending, scheduled or running tasks can be cancelled",
        task.id, task.status
    ))
}

/// What [`Platform::cancel_task`] did.
#[derive(Debug, Clone)]
pub struct CancelledTask {
    /// The task as it is now.
    pub task: Task,
    /// `true` once the task is `cancelled`; `false` while its worker is stopping it.
    pub done: bool,
}

/// What `smart_execute` did.
#[derive(Debug, Clone)]
pub struct SmartExecution {
    pub execution: Execution,
    /// The `vm:execute` task, or the `vm:create` task that will queue it.
    pub task: Task,
    pub vm: Vm,
    pub vm_created: bool,
}

// ---- gateway use cases (added with the streaming/interactive/files API) --------------

impl Platform {
    /// Waits until the task has finished (completed, failed or cancelled), at most
    /// `timeout`; returns it as it is then. The worker finishes a task's work (e.g.
    /// removes a VM) before it records the task as done, so a caller that saw the
    /// work's effect and wants the task's final status waits here.
    pub async fn wait_task_finished(&self, id: &str, timeout: Duration) -> CoreResult<Task> {
        self.wait_until(timeout, id, || async {
            let task = self.get_task(id).await?;
            Ok((task.status.is_finished(), task))
        })
        .await
    }
}
