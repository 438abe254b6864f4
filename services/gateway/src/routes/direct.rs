//! What streamed and interactive exec share: output chunks as JSON, the capped copy
//! of the output that is persisted, and how a run's end becomes an execution record.
//!
//! These commands run directly on the VM's agent ([`aetherium_core::Platform::open_sandbox`]),
//! not through the queue, but are recorded like queued ones
//! (`begin_direct_execution` / `finish_direct_execution`), so they appear in
//! `GET /vms/{id}/executions` with `metadata.mode` = `stream` or `interactive`.

use aetherium_core::Platform;
use aetherium_types::agent::EndEvent;
use aetherium_types::{Execution, ExecutionStatus};
use base64::Engine as _;
use serde::Serialize;

/// One chunk of output as JSON: exactly one of `data` (the bytes are UTF-8 text) or
/// `data_b64` (they are not; standard base64). Decoding and concatenating the chunks
/// of a stream gives its exact bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Chunk {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_b64: Option<String>,
}

impl Chunk {
    fn text(s: String) -> Chunk {
        Chunk {
            data: Some(s),
            data_b64: None,
        }
    }

    fn binary(bytes: &[u8]) -> Chunk {
        Chunk {
            data: None,
            data_b64: Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
        }
    }
}

/// Splits one output stream into [`Chunk`]s without cutting a UTF-8 character in
/// two: an incomplete character at the end of a read waits for the next read, so
/// text stays text however the process's writes were split.
#[derive(Debug, Default)]
pub struct Utf8Chunker {
    pending: Vec<u8>,
}

impl Utf8Chunker {
    /// The chunk for `bytes` (with whatever was held back before), or `None` when
    /// everything is held back.
    pub fn push(&mut self, bytes: &[u8]) -> Option<Chunk> {
        self.pending.extend_from_slice(bytes);
        match std::str::from_utf8(&self.pending) {
            Ok(text) => {
                let chunk = (!text.is_empty()).then(|| Chunk::text(text.to_string()));
                self.pending.clear();
                chunk
            }
            // An incomplete character at the very end (at most 3 bytes): hold it.
            Err(e) if e.error_len().is_none() && self.pending.len() - e.valid_up_to() < 4 => {
                let valid = e.valid_up_to();
                if valid == 0 {
                    return None;
                }
                let rest = self.pending.split_off(valid);
                let text = String::from_utf8(std::mem::replace(&mut self.pending, rest)).ok()?;
                Some(Chunk::text(text))
            }
            // Not text: send the bytes as they are.
            Err(_) => {
                let chunk = Chunk::binary(&self.pending);
                self.pending.clear();
                Some(chunk)
            }
        }
    }

    /// Whatever is still held back, at the end of the stream.
    pub fn flush(&mut self) -> Option<Chunk> {
        if self.pending.is_empty() {
            return None;
        }
        let chunk = Chunk::binary(&self.pending);
        self.pending.clear();
        Some(chunk)
    }
}

/// The persisted copy of a run's output: at most `cap` bytes of stdout and of
/// stderr each (the configured `vmm.output_cap_bytes`), like queued executions.
#[derive(Debug)]
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

/// How a direct run ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The process ended (on its own or by a signal).
    Ended(EndEvent),
    /// The agent refused to start it (`not_found` → 127, else 126, as a shell does).
    NotStarted { code: String, message: String },
    /// Killed after its timeout.
    TimedOut { seconds: u64 },
    /// Could not be followed to its end (agent gone, client gone and process killed).
    Failed(String),
}

impl Outcome {
    /// The execution status, exit code and error this outcome records.
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
            Outcome::Failed(why) => (ExecutionStatus::Failed, None, Some(why.clone())),
        }
    }
}

/// Stores the outcome and the capped output of a direct execution. Failures to
/// store are logged: the client has had its answer by then.
pub async fn record(
    platform: &Platform,
    execution: &mut Execution,
    capture: &Capture,
    outcome: &Outcome,
) {
    let (status, exit_code, mut error) = outcome.result();
    execution.status = status;
    execution.exit_code = exit_code;
    execution.stdout = String::from_utf8_lossy(&capture.stdout).into_owned();
    execution.stderr = String::from_utf8_lossy(&capture.stderr).into_owned();
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
    if let Err(e) = platform.finish_direct_execution(execution).await {
        tracing::error!(execution = %execution.id, error = %e, "could not record a direct execution");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(c: Option<Chunk>) -> Option<String> {
        c.and_then(|c| c.data)
    }

    #[test]
    fn utf8_split_across_reads_stays_text() {
        let mut chunker = Utf8Chunker::default();
        let euro = "€".as_bytes(); // 3 bytes
        assert_eq!(text(chunker.push(b"a")), Some("a".into()));
        let mut first = b"b".to_vec();
        first.extend_from_slice(&euro[..2]);
        assert_eq!(text(chunker.push(&first)), Some("b".into()));
        assert_eq!(chunker.push(&[]), None);
        assert_eq!(text(chunker.push(&euro[2..])), Some("€".into()));
        assert_eq!(chunker.flush(), None);
    }

    #[test]
    fn invalid_bytes_go_as_base64() {
        let mut chunker = Utf8Chunker::default();
        let chunk = chunker.push(&[0xff, 0x00, b'a']).expect("chunk");
        assert_eq!(chunk.data, None);
        assert_eq!(chunk.data_b64.as_deref(), Some("/wBh"));
        // A dangling lead byte at the end of the stream is flushed as base64.
        assert_eq!(chunker.push(&[0xe2]), None);
        assert_eq!(
            chunker.flush().and_then(|c| c.data_b64).as_deref(),
            Some("4g==")
        );
    }

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
    fn outcomes_map_like_queued_executions() {
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
    }
}
