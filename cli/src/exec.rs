//! `vm exec --stream` (output as it happens, over NDJSON) and `vm exec -i/-t`
//! (an interactive session over the exec WebSocket, like `docker exec -it`).

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};

use anyhow::{Context as _, anyhow, bail};
use base64::Engine as _;
use futures::{SinkExt as _, StreamExt as _};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use crate::client::{Client, api_error, seg};
use crate::term;

/// What to run, as given on the command line.
pub struct ExecSpec {
    pub vm: String,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: Option<String>,
    pub timeout: Option<u64>,
}

/// The exit status the CLI takes from a finished command: its exit code, 124 when
/// it timed out (as `timeout(1)`), 1 when it could not be followed to its end.
fn exit_status(exit_code: Option<i32>, status: &str) -> u8 {
    match exit_code {
        Some(code) => u8::try_from(code.rem_euclid(256)).unwrap_or(1),
        None if status == "timed_out" => 124,
        None => 1,
    }
}

/// One output chunk of the stream or the WebSocket: `data` (text) or `data_b64`.
#[derive(Debug, Deserialize)]
struct Chunk {
    data: Option<String>,
    data_b64: Option<String>,
}

impl Chunk {
    fn bytes(&self) -> anyhow::Result<Vec<u8>> {
        match (&self.data, &self.data_b64) {
            (Some(text), _) => Ok(text.as_bytes().to_vec()),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .context("malformed base64 output from the server"),
            (None, None) => Ok(Vec::new()),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StreamLine {
    Start {},
    Stdout(Chunk),
    Stderr(Chunk),
    End {
        exit_code: Option<i32>,
        status: String,
        error: Option<String>,
    },
    Error {
        message: String,
    },
}

/// `vm exec --stream`: prints output as the command produces it.
pub async fn stream(client: &Client, spec: ExecSpec, json: bool) -> anyhow::Result<u8> {
    let (cmd, args) = spec
        .command
        .split_first()
        .ok_or_else(|| anyhow!("no command given after --"))?;
    let body = serde_json::json!({
        "command": cmd, "args": args, "env": spec.env, "cwd": spec.cwd, "timeout_seconds": spec.timeout,
    });
    let request = client
        .request(
            reqwest::Method::POST,
            &format!("/vms/{}/exec/stream", seg(&spec.vm)),
        )
        .json(&body);
    let mut response = client.execute(request).await?;
    let mut buf = Vec::new();
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    let mut code = None;
    while let Some(chunk) = response
        .chunk()
        .await
        .context("reading the output stream")?
    {
        buf.extend_from_slice(&chunk);
        while let Some(i) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            if json {
                stdout.write_all(&line)?;
                stdout.flush()?;
            }
            let event: StreamLine =
                serde_json::from_slice(&line).context("malformed line in the output stream")?;
            match event {
                StreamLine::Start {} => {}
                StreamLine::Stdout(c) if !json => {
                    stdout.write_all(&c.bytes()?)?;
                    stdout.flush()?;
                }
                StreamLine::Stderr(c) if !json => {
                    stderr.write_all(&c.bytes()?)?;
                    stderr.flush()?;
                }
                StreamLine::Stdout(_) | StreamLine::Stderr(_) => {}
                StreamLine::Error { message } if !json => eprintln!("aetherium: {message}"),
                StreamLine::Error { .. } => {}
                StreamLine::End {
                    exit_code,
                    status,
                    error,
                } => {
                    if let Some(error) = error.filter(|_| !json) {
                        eprintln!("aetherium: {error}");
                    }
                    code = Some(exit_status(exit_code, &status));
                }
            }
        }
    }
    code.ok_or_else(|| anyhow!("the output stream ended before the command did"))
}

/// Server → client text messages of the exec WebSocket.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ServerMessage {
    Start {},
    Stderr(Chunk),
    Error {
        message: String,
    },
    Exit {
        exit_code: Option<i32>,
        status: String,
        error: Option<String>,
    },
}

/// The WebSocket URL of an exec session: `ws://…/api/v1/vms/{vm}/exec/ws?cmd=…`.
fn session_url(base: &str, spec: &ExecSpec, tty: Option<(u16, u16)>) -> anyhow::Result<String> {
    let ws_base = if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if base.starts_with("https://") {
        bail!("interactive exec over https is not supported yet: use an http:// URL");
    } else {
        bail!("the platform URL {base:?} must start with http://");
    };
    let (cmd, args) = spec
        .command
        .split_first()
        .ok_or_else(|| anyhow!("no command given after --"))?;
    let mut query = format!("cmd={}", seg(cmd));
    for arg in args {
        query.push_str(&format!("&arg={}", seg(arg)));
    }
    for (k, v) in &spec.env {
        query.push_str(&format!("&env={}", seg(&format!("{k}={v}"))));
    }
    if let Some(cwd) = &spec.cwd {
        query.push_str(&format!("&cwd={}", seg(cwd)));
    }
    if let Some(t) = spec.timeout {
        query.push_str(&format!("&timeout_seconds={t}"));
    }
    if let Some((cols, rows)) = tty {
        query.push_str(&format!("&tty=true&cols={cols}&rows={rows}"));
    }
    Ok(format!(
        "{ws_base}/api/v1/vms/{}/exec/ws?{query}",
        seg(&spec.vm)
    ))
}

/// Reads stdin on a thread of its own (a blocking read cannot be cancelled, and
/// the process exits without waiting for it). `None` marks the end of input.
fn read_stdin() -> mpsc::Receiver<Option<Vec<u8>>> {
    let (tx, rx) = mpsc::channel(8);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = tx.blocking_send(None);
                    return;
                }
                Ok(n) => {
                    if tx.blocking_send(Some(buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

/// `vm exec -i` / `-t` / `-it`.
pub async fn interactive(
    client: &Client,
    mut spec: ExecSpec,
    stdin: bool,
    tty: bool,
) -> anyhow::Result<u8> {
    if tty && stdin && !term::stdin_is_terminal() {
        bail!("the input device is not a TTY: drop -t, or run from a terminal");
    }
    let size = tty.then(|| term::size().unwrap_or((80, 24)));
    if tty && !spec.env.contains_key("TERM") {
        let term = std::env::var("TERM").unwrap_or_else(|_| "xterm".into());
        spec.env.insert("TERM".into(), term);
    }
    let url = session_url(&client.base, &spec, size)?;
    let mut request = url
        .as_str()
        .into_client_request()
        .context("building the WebSocket request")?;
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", client.token)
            .parse()
            .context("the token is not a valid header value")?,
    );
    let (socket, _) = match tokio_tungstenite::connect_async(request).await {
        Ok(connected) => connected,
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body = response.body().as_deref().unwrap_or_default();
            return Err(api_error(response.status(), body));
        }
        Err(e) => {
            return Err(anyhow!(
                "cannot reach aetherium at {}: {e} (is `aetherium up` running?)",
                client.base
            ));
        }
    };
    let (mut sink, mut source) = socket.split();

    // From here on, the terminal is raw until `_raw` drops (any return, error or
    // panic).
    let _raw = if tty && stdin {
        Some(term::RawMode::enable().context("cannot put the terminal in raw mode")?)
    } else {
        None
    };
    // In raw mode the terminal does not turn "\n" into "\r\n" for our own messages.
    let newline = if tty && stdin { "\r\n" } else { "\n" };
    let mut input = stdin.then(read_stdin);
    let mut winch = if tty {
        Some(
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
                .context("cannot watch the terminal size")?,
        )
    } else {
        None
    };
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    let mut exit = None;
    loop {
        tokio::select! {
            message = source.next() => {
                let message = match message {
                    Some(Ok(message)) => message,
                    Some(Err(e)) => {
                        if exit.is_some() {
                            break;
                        }
                        return Err(anyhow!("the session broke: {e}"));
                    }
                    None => break,
                };
                match message {
                    Message::Binary(bytes) => {
                        stdout.write_all(&bytes)?;
                        stdout.flush()?;
                    }
                    Message::Text(text) => match serde_json::from_str::<ServerMessage>(text.as_str()) {
                        Ok(ServerMessage::Start {}) => {}
                        Ok(ServerMessage::Stderr(chunk)) => {
                            stderr.write_all(&chunk.bytes()?)?;
                            stderr.flush()?;
                        }
                        Ok(ServerMessage::Error { message }) => {
                            write!(stderr, "aetherium: {message}{newline}")?;
                        }
                        Ok(ServerMessage::Exit { exit_code, status, error }) => {
                            if let Some(error) = error.filter(|_| exit_code.is_none()) {
                                write!(stderr, "aetherium: {error}{newline}")?;
                            }
                            exit = Some(exit_status(exit_code, &status));
                        }
                        Err(_) => {}
                    },
                    Message::Close(_) => break,
                    Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                }
            }
            bytes = async { input.as_mut()?.recv().await }, if input.is_some() => {
                match bytes.flatten() {
                    Some(bytes) => sink.send(Message::Binary(bytes.into())).await?,
                    None => {
                        input = None;
                        // A terminal's end of input is a byte (Ctrl-D), not this.
                        if !tty {
                            sink.send(Message::Text(r#"{"type":"stdin_eof"}"#.into())).await?;
                        }
                    }
                }
            }
            _ = async { winch.as_mut()?.recv().await }, if winch.is_some() => {
                if let Some((cols, rows)) = term::size() {
                    let resize = serde_json::json!({"type": "resize", "cols": cols, "rows": rows});
                    sink.send(Message::Text(resize.to_string().into())).await?;
                }
            }
        }
    }
    let _ = sink.close().await;
    exit.ok_or_else(|| anyhow!("the session ended before the command exited"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_urls_encode_everything() {
        let spec = ExecSpec {
            vm: "my vm".into(),
            command: vec!["sh".into(), "-c".into(), "echo a&b".into()],
            env: [("K".to_string(), "v=1".to_string())].into(),
            cwd: Some("/tmp".into()),
            timeout: None,
        };
        let url = session_url("http://127.0.0.1:8080", &spec, Some((100, 30))).expect("url");
        assert_eq!(
            url,
            "ws://127.0.0.1:8080/api/v1/vms/my%20vm/exec/ws?cmd=sh&arg=-c&arg=echo%20a%26b&env=K%3Dv%3D1&cwd=%2Ftmp&tty=true&cols=100&rows=30"
        );
        assert!(session_url("https://x", &spec, None).is_err());
    }

    #[test]
    fn exit_statuses() {
        assert_eq!(exit_status(Some(3), "completed"), 3);
        assert_eq!(exit_status(Some(-1), "completed"), 255);
        assert_eq!(exit_status(None, "timed_out"), 124);
        assert_eq!(exit_status(None, "failed"), 1);
    }
}
