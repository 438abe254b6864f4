//! The execution engine: the one place that turns "run this in that sandbox" into an
//! [`Execution`], whoever drives the run — the worker for queued commands, the
//! gateway's streamed and interactive routes for direct ones. It owns the agent's
//! [`StartRequest`] for a command, the capped copy of its output ([`Capture`]), how a
//! run's end becomes a status, exit code and error ([`Outcome`]), and recording it
//! ([`Platform::finish_execution`]: redaction, timings, metrics, events). The drivers
//! only move bytes and decide how the run ended.

use std::collections::BTreeMap;

use aetherium_types::agent::{EndEvent, ProcessConfig, Pty, PtySize, StartRequest};
use aetherium_types::{EventType, ExecuteCommandRequest, Execution, ExecutionStatus};
use chrono::Utc;

use super::Platform;
use crate::error::CoreResult;

/// What the agent is asked to run: a program, its arguments, environment and
/// working directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Command {
    pub program: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: Option<String>,
}

impl From<&ExecuteCommandRequest> for Command {
    fn from(req: &ExecuteCommandRequest) -> Command {
        Command {
            program: req.command.clone(),
            args: req.args.clone(),
            env: req.env.clone(),
            cwd: req.cwd.clone(),
        }
    }
}

/// How the command is attached: a terminal of this size or plain pipes, and whether
/// its stdin stays open for the caller.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Attach {
    pub tty: Option<PtySize>,
    pub stdin: bool,
}

impl Command {
    /// The agent's request for this command. A terminal gets `TERM=xterm` unless the
    /// command sets one (what `docker exec -t` does: full-screen programs need it).
    pub fn start_request(&self, attach: Attach) -> StartRequest {
        let mut envs = self.env.clone();
        if attach.tty.is_some() {
            envs.entry("TERM".into()).or_insert_with(|| "xterm".into());
        }
        StartRequest {
            process: ProcessConfig {
                cmd: self.program.clone(),
                args: self.args.clone(),
                envs,
                cwd: self.cwd.clone(),
            },
            pty: attach.tty.map(|size| Pty { size }),
            tag: None,
            stdin: Some(attach.stdin),
        }
    }
}

/// The persisted copy of a run's output: at most `cap` bytes of stdout and of
/// stderr each (`vmm.output_cap_bytes`); a terminal's output counts as stdout.
#[derive(Debug, Clone)]
pub struct Capture {
    cap: usize,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub truncated: bool,
}

impl Capture {
    pub fn new(cap: usize) -> Capture {
        Capture {
            cap,
            stdout: Vec::new(),
            stderr: Vec::new(),
            truncated: false,
        }
    }

    pub fn stdout(&mut self, bytes: &[u8]) {
        Self::keep(&mut self.stdout, &mut self.truncated, self.cap, bytes);
    }

    pub fn stderr(&mut self, bytes: &[u8]) {
        Self::keep(&mut self.stderr, &mut self.truncated, self.cap, bytes);
    }

    fn keep(buf: &mut Vec<u8>, truncated: &mut bool, cap: usize, bytes: &[u8]) {
        let room = cap.saturating_sub(buf.len());
        if bytes.len() > room {
            *truncated = true;
        }
        buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }
}

/// How a run ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The process ended (on its own or by a signal).
    Ended(EndEvent),
    /// The agent refused to start it (`not_found` → 127, else 126, as a shell does).
    NotStarted { code: String, message: String },
    /// Killed after its timeout.
    TimedOut { seconds: u64 },
    /// Killed because its task was cancelled.
    Cancelled,
    /// Could not be followed to its end (agent gone, client gone and process killed).
    Failed(String),
}

impl Outcome {
    /// The execution status, exit code and error this outcome records. A non-zero
    /// exit is a result, not an error (envd puts "exit status N" in its `error`):
    /// only a signal is worth a note.
    pub fn result(&self) -> (ExecutionStatus, Option<i32>, Option<String>) {
        match self {
            Outcome::Ended(end) if end.exited => {
                (ExecutionStatus::Completed, Some(end.exit_code), None)
            }
            Outcome::Ended(end) => (
                ExecutionStatus::Completed,
                Some(end.shell_exit_code()),
                Some(format!("terminated: {}", end.status)),
            ),
            Outcome::NotStarted { code, message } => (
                ExecutionStatus::Failed,
                Some(if code == "not_found" { 127 } else { 126 }),
                Some(message.clone()),
            ),
            Outcome::TimedOut { seconds } => (
                ExecutionStatus::TimedOut,
                None,
                Some(format!("killed after the {seconds}s timeout")),
            ),
            Outcome::Cancelled => (
                ExecutionStatus::Failed,
                None,
                Some("cancelled by request: the command was killed".into()),
            ),
            Outcome::Failed(why) => (ExecutionStatus::Failed, None, Some(why.clone())),
        }
    }
}

impl Platform {
    /// Records how a run ended: status, exit code and error from `outcome`, the
    /// captured output with the VM's secrets redacted (records are readable by every
    /// role), a note when output was cut, timings; then metrics and the
    /// `execution.completed`/`execution.failed` event.
    pub async fn finish_execution(
        &self,
        execution: &mut Execution,
        capture: &Capture,
        outcome: &Outcome,
    ) -> CoreResult<()> {
        let (status, exit_code, mut error) = outcome.result();
        execution.status = status;
        execution.exit_code = exit_code;
        if capture.truncated {
            let note = format!("output truncated at {} bytes per stream", capture.cap);
            error = Some(match error {
                Some(e) => format!("{e}; {note}"),
                None => note,
            });
            execution
                .metadata
                .insert("output_truncated".into(), true.into());
        }
        execution.error = error;
        let vm = self.store.get_vm(&execution.vm_id).await?;
        let redactor = match &vm {
            Some(vm) => self.execution_redactor(vm).await,
            None => Default::default(),
        };
        execution.stdout =
            String::from_utf8_lossy(&redactor.redact_bytes(&capture.stdout)).into_owned();
        execution.stderr =
            String::from_utf8_lossy(&redactor.redact_bytes(&capture.stderr)).into_owned();
        let now = Utc::now();
        execution.completed_at = Some(now);
        if let Some(started) = execution.started_at {
            execution.duration_ms = Some((now - started).num_milliseconds());
        }
        self.store.update_execution(execution).await?;
        crate::metrics::record_execution(execution);
        self.publish_execution_done(execution);
        Ok(())
    }

    /// Logs a finished execution (the program's name is never logged: arguments may
    /// hold secrets) and publishes `execution.completed` or `execution.failed`.
    pub fn publish_execution_done(&self, execution: &Execution) {
        tracing::info!(
            execution_id = %execution.id,
            vm_id = %execution.vm_id,
            status = %execution.status,
            exit_code = ?execution.exit_code,
            duration_ms = ?execution.duration_ms,
            "execution finished"
        );
        let event = if execution.status == ExecutionStatus::Failed {
            EventType::ExecutionFailed
        } else {
            EventType::ExecutionCompleted
        };
        self.publish(
            event,
            &execution.id,
            serde_json::json!({"vm_id": execution.vm_id, "status": execution.status, "exit_code": execution.exit_code}),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_keeps_at_most_the_cap() {
        let mut capture = Capture::new(4);
        capture.stdout(b"abc");
        capture.stdout(b"def");
        capture.stderr(b"xy");
        assert_eq!(capture.stdout, b"abcd");
        assert_eq!(capture.stderr, b"xy");
        assert!(capture.truncated);
    }

    #[test]
    fn outcomes_map_like_a_shell() {
        let killed = Outcome::Ended(EndEvent {
            exit_code: -1,
            exited: false,
            status: "signal: killed".into(),
            error: None,
        });
        assert_eq!(killed.result().1, Some(137));
        let missing = Outcome::NotStarted {
            code: "not_found".into(),
            message: "no such file".into(),
        };
        assert_eq!(missing.result().0, ExecutionStatus::Failed);
        assert_eq!(missing.result().1, Some(127));
        assert_eq!(
            Outcome::TimedOut { seconds: 1 }.result().0,
            ExecutionStatus::TimedOut
        );
        assert_eq!(Outcome::Cancelled.result().0, ExecutionStatus::Failed);
    }

    #[test]
    fn a_terminal_gets_term_unless_the_command_sets_it() {
        let mut command = Command {
            program: "vi".into(),
            ..Command::default()
        };
        let size = PtySize { cols: 80, rows: 24 };
        let piped = command.start_request(Attach::default());
        assert!(piped.pty.is_none() && piped.stdin == Some(false));
        assert!(!piped.process.envs.contains_key("TERM"));
        let tty = command.start_request(Attach {
            tty: Some(size),
            stdin: true,
        });
        assert_eq!(tty.process.envs["TERM"], "xterm");
        assert_eq!(tty.stdin, Some(true));
        command.env.insert("TERM".into(), "dumb".into());
        let own = command.start_request(Attach {
            tty: Some(size),
            stdin: true,
        });
        assert_eq!(own.process.envs["TERM"], "dumb");
    }
}
