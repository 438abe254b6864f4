//! A small client for the QEMU Machine Protocol: JSON lines over the unix socket
//! QEMU opens with `-qmp unix:<path>,server=on,wait=off`. Only what the QEMU backend
//! needs: the handshake, status, stop/cont, Ctrl-Alt-Del and quit. One connection per
//! operation keeps it simple (QEMU serves one QMP client per socket at a time).

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// QMP messages are small; a longer line means we are not talking to QEMU.
const MAX_LINE_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket is missing or nobody accepts on it (QEMU gone or not up yet).
    #[error("cannot connect to QMP at {path}: {reason}")]
    Connect { path: String, reason: String },
    #[error("QMP {what} timed out after {timeout:?}")]
    Timeout { what: String, timeout: Duration },
    /// QEMU answered the command with an error.
    #[error("QMP {command} failed: {desc} ({class})")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
    /// The peer closed the connection or sent something that is not QMP.
    #[error("QMP protocol error: {0}")]
    Protocol(String),
}

/// The guest's run state as `query-status` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QmpStatus {
    pub running: bool,
    /// QEMU's RunState: `running`, `paused`, `prelaunch`, `shutdown`, …
    pub status: String,
}

/// One QMP session, past the capabilities negotiation.
pub struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    timeout: Duration,
    next_id: u64,
}

impl std::fmt::Debug for Qmp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qmp").finish_non_exhaustive()
    }
}

impl Qmp {
    /// Connects, reads the greeting and enters command mode. `timeout` bounds every
    /// step here and every later command.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let stream = tokio::time::timeout(timeout, UnixStream::connect(path))
            .await
            .map_err(|_| QmpError::Timeout {
                what: format!("connect to {}", path.display()),
                timeout,
            })?
            .map_err(|e| QmpError::Connect {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        let (read, writer) = stream.into_split();
        let mut qmp = Qmp {
            reader: BufReader::new(read),
            writer,
            timeout,
            next_id: 0,
        };
        let greeting = qmp.read_message("greeting").await?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol(format!(
                "expected the QMP greeting, got {greeting}"
            )));
        }
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    /// Runs one command and returns its `return` value. Asynchronous events that
    /// arrive meanwhile are skipped.
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        self.next_id += 1;
        let id = self.next_id;
        let mut request = json!({ "execute": command, "id": id });
        if let Some(arguments) = arguments {
            request["arguments"] = arguments;
        }
        let mut line = request.to_string();
        line.push('\n');
        let write = async {
            self.writer.write_all(line.as_bytes()).await?;
            self.writer.flush().await
        };
        tokio::time::timeout(self.timeout, write)
            .await
            .map_err(|_| QmpError::Timeout {
                what: format!("sending {command}"),
                timeout: self.timeout,
            })?
            .map_err(|e| QmpError::Protocol(format!("sending {command}: {e}")))?;
        loop {
            let message = self.read_message(command).await?;
            if message.get("event").is_some() {
                continue;
            }
            if message.get("id").and_then(Value::as_u64) != Some(id) {
                continue;
            }
            if let Some(value) = message.get("return") {
                return Ok(value.clone());
            }
            if let Some(error) = message.get("error") {
                let text = |key: &str| {
                    error
                        .get(key)
                        .and_then(Value::as_str)
                        .unwrap_or("unknown")
                        .to_string()
                };
                return Err(QmpError::Command {
                    command: command.to_string(),
                    class: text("class"),
                    desc: text("desc"),
                });
            }
            return Err(QmpError::Protocol(format!(
                "unexpected answer to {command}: {message}"
            )));
        }
    }

    pub async fn query_status(&mut self) -> Result<QmpStatus, QmpError> {
        let value = self.execute("query-status", None).await?;
        let running = value.get("running").and_then(Value::as_bool);
        let status = value.get("status").and_then(Value::as_str);
        match (running, status) {
            (Some(running), Some(status)) => Ok(QmpStatus {
                running,
                status: status.to_string(),
            }),
            _ => Err(QmpError::Protocol(format!(
                "unexpected query-status answer: {value}"
            ))),
        }
    }

    /// Freezes the vCPUs.
    pub async fn stop(&mut self) -> Result<(), QmpError> {
        self.execute("stop", None).await.map(drop)
    }

    /// Lets the vCPUs run again (also starts a VM started with `-S`).
    pub async fn cont(&mut self) -> Result<(), QmpError> {
        self.execute("cont", None).await.map(drop)
    }

    /// Presses Ctrl-Alt-Del on the guest's keyboard: the guest's init reboots, and
    /// QEMU started with `-no-reboot` then exits.
    pub async fn send_ctrl_alt_delete(&mut self) -> Result<(), QmpError> {
        let keys: Vec<Value> = ["ctrl", "alt", "delete"]
            .iter()
            .map(|key| json!({ "type": "qcode", "data": key }))
            .collect();
        self.execute("send-key", Some(json!({ "keys": keys })))
            .await
            .map(drop)
    }

    /// Asks QEMU to exit at once. QEMU may close the socket before or right after
    /// answering; both count as done.
    pub async fn quit(&mut self) -> Result<(), QmpError> {
        match self.execute("quit", None).await {
            Ok(_) => Ok(()),
            Err(QmpError::Protocol(reason)) if reason.contains("closed") => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn read_message(&mut self, waiting_for: &str) -> Result<Value, QmpError> {
        let mut line = Vec::new();
        let read = async {
            let mut limited = (&mut self.reader).take(MAX_LINE_BYTES as u64);
            limited.read_until(b'\n', &mut line).await
        };
        let n = tokio::time::timeout(self.timeout, read)
            .await
            .map_err(|_| QmpError::Timeout {
                what: format!("answer to {waiting_for}"),
                timeout: self.timeout,
            })?
            .map_err(|e| QmpError::Protocol(format!("reading the answer to {waiting_for}: {e}")))?;
        if n == 0 {
            return Err(QmpError::Protocol(format!(
                "QEMU closed the connection before answering {waiting_for}"
            )));
        }
        if !line.ends_with(b"\n") {
            return Err(QmpError::Protocol(format!(
                "a QMP message longer than {MAX_LINE_BYTES} bytes"
            )));
        }
        serde_json::from_slice(&line).map_err(|e| {
            QmpError::Protocol(format!(
                "not JSON ({e}): {}",
                String::from_utf8_lossy(&line).trim_end()
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    #[tokio::test]
    async fn a_silent_peer_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (_stream, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let err = Qmp::connect(&path, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(err, QmpError::Timeout { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_missing_socket_is_a_connect_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = Qmp::connect(&dir.path().join("none.sock"), Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(err, QmpError::Connect { .. }), "{err}");
    }
}
