//! `vm:execute`: a queued command run through the core's execution engine
//! (`services::engine`), retried only when it cannot have run.

use super::*;

impl Worker {
    // ---- vm:execute ----------------------------------------------------------------

    pub(super) async fn handle_execute(
        &self,
        task: &Task,
        payload: ExecPayload,
        cancel: watch::Receiver<bool>,
    ) -> TaskResult {
        let store = &self.platform.store;
        let Some(mut execution) = store.get_execution(&payload.execution_id).await? else {
            return Err(TaskError::permanent("the execution record is gone"));
        };
        if execution.status.is_finished() {
            return Ok(execution_result(&execution));
        }
        if execution.status == ExecutionStatus::Running {
            // An earlier attempt started it and its worker died mid-run (the lease
            // expired). The command may have had effects: never run it twice.
            execution.status = ExecutionStatus::Failed;
            execution.error =
                Some("the worker stopped while the command ran; it was not run again".into());
            execution.completed_at = Some(Utc::now());
            store.update_execution(&execution).await?;
            self.platform.publish_execution_done(&execution);
            return Ok(execution_result(&execution));
        }
        match store.get_vm(&payload.vm_id).await? {
            Some(vm) if vm.status == VmStatus::Running => {}
            Some(vm) => return Err(TaskError::permanent(format!("the VM is {}", vm.status))),
            None => return Err(TaskError::permanent("the VM was deleted")),
        }
        if *cancel.borrow() {
            // `on_cancelled` fails the execution: nothing ran.
            return Err(TaskError::permanent(CANCELLED_WHILE_RUNNING));
        }
        execution.status = ExecutionStatus::Running;
        execution.started_at = Some(Utc::now());
        execution.task_id = Some(task.id.clone());
        store.update_execution(&execution).await?;
        self.platform.publish(
            EventType::ExecutionStarted,
            &execution.id,
            json!({"vm_id": execution.vm_id}),
        );
        // The program's name only: arguments and environment may hold secrets.
        tracing::info!(execution_id = %execution.id, command = %payload.command, "execution started");

        let run = self.run_in_sandbox(&payload, cancel).await;
        let (capture, outcome) = match run {
            Ok(run) => run,
            Err(RunFailure::BeforeStart(e)) => {
                // Nothing ran, so trying again is safe — unless the sandbox is gone.
                match self.backend.status(&payload.vm_id).await {
                    Ok(SandboxState::Running) | Err(_) => {
                        execution.status = ExecutionStatus::Pending;
                        execution.started_at = None;
                        execution.completed_at = None;
                        execution.duration_ms = None;
                        store.update_execution(&execution).await?;
                        return Err(TaskError::retry(format!("cannot reach the agent: {e}")));
                    }
                    Ok(state) => {
                        let message = format!("the sandbox is not running ({state:?})");
                        self.mark_vm_failed(&payload.vm_id, &[VmStatus::Running], &message)
                            .await;
                        (self.capture(), Outcome::Failed(message))
                    }
                }
            }
            // The command may have run: never run it twice.
            Err(RunFailure::Lost(e)) => (
                self.capture(),
                Outcome::Failed(format!("lost the connection to the agent mid-run: {e}")),
            ),
        };
        self.platform
            .finish_execution(&mut execution, &capture, &outcome)
            .await?;
        if matches!(outcome, Outcome::Cancelled) {
            return Err(TaskError::permanent(CANCELLED_WHILE_RUNNING));
        }
        Ok(execution_result(&execution))
    }

    /// An empty capture of this worker's output cap.
    fn capture(&self) -> Capture {
        Capture::new(self.settings.output_cap_bytes)
    }

    /// Runs the command on the VM's agent to its end, its timeout, or the task's
    /// cancellation; `Err` when the agent could not be followed (before or after the
    /// start: the caller decides whether running it again is safe).
    async fn run_in_sandbox(
        &self,
        payload: &ExecPayload,
        cancel: watch::Receiver<bool>,
    ) -> Result<(Capture, Outcome), RunFailure> {
        let mut capture = self.capture();
        let not_started = |code: &str, message: &str| Outcome::NotStarted {
            code: code.to_string(),
            message: message.to_string(),
        };
        let env = match self.platform.exec_env(payload) {
            Ok(env) => env,
            Err(e) => return Ok((capture, not_started("invalid_argument", &e.to_string()))),
        };
        let agent = self.backend.agent(&payload.vm_id);
        let command = Command {
            program: payload.command.clone(),
            args: payload.args.clone(),
            env,
            cwd: payload.cwd.clone(),
        };
        let mut stream = match agent.start(&command.start_request(Attach::default())).await {
            Ok(stream) => stream,
            Err(AgentError::Connect(e)) => return Ok((capture, not_started(&e.code, &e.message))),
            Err(e) => return Err(RunFailure::BeforeStart(e.to_string())),
        };
        let mut pid = None;
        let deadline =
            tokio::time::Instant::now() + Duration::from_secs(payload.timeout_seconds.max(1));
        let cancelled = until_cancelled(cancel);
        tokio::pin!(cancelled);
        let mut cancelling = false;
        loop {
            let next = tokio::select! {
                next = stream.next() => next,
                _ = &mut cancelled, if !cancelling => {
                    cancelling = true;
                    match pid {
                        Some(pid) => {
                            kill_cancelled(&agent, pid).await;
                            return Ok((capture, Outcome::Cancelled));
                        }
                        // Not started yet: killed as soon as its start is seen.
                        None => continue,
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    if let Some(pid) = pid {
                        let _ = agent.send_signal(pid, Signal::Sigkill).await;
                    }
                    return Ok((capture, Outcome::TimedOut { seconds: payload.timeout_seconds }));
                }
            };
            match next {
                Some(Ok(ProcessEvent::Start(start))) => {
                    pid = Some(start.pid);
                    if cancelling {
                        kill_cancelled(&agent, start.pid).await;
                        return Ok((capture, Outcome::Cancelled));
                    }
                }
                Some(Ok(ProcessEvent::Data(data))) => match data {
                    DataEvent::Stdout(b) | DataEvent::Pty(b) => capture.stdout(&b.0),
                    DataEvent::Stderr(b) => capture.stderr(&b.0),
                },
                Some(Ok(ProcessEvent::Keepalive(_))) => {}
                Some(Ok(ProcessEvent::End(end))) => return Ok((capture, Outcome::Ended(end))),
                Some(Err(AgentError::Connect(e))) if pid.is_none() => {
                    return Ok((capture, not_started(&e.code, &e.message)));
                }
                Some(Err(e)) => {
                    return Err(if pid.is_none() {
                        RunFailure::BeforeStart(e.to_string())
                    } else {
                        RunFailure::Lost(e.to_string())
                    });
                }
                None => {
                    return Err(if pid.is_none() {
                        RunFailure::BeforeStart("the agent closed the stream".into())
                    } else {
                        RunFailure::Lost("the stream ended without an end event".into())
                    });
                }
            }
        }
    }
}

/// The task was cancelled: kills the command's process group.
async fn kill_cancelled(agent: &crate::agent_client::AgentClient, pid: u32) {
    if let Err(e) = agent.send_signal(pid, Signal::Sigkill).await {
        tracing::warn!(pid, error = %e, "cannot kill a cancelled command");
    }
}

enum RunFailure {
    /// Could not start: nothing ran.
    BeforeStart(String),
    /// The connection dropped after the command started.
    Lost(String),
}
