//! `aetherium events` (follow the platform's events) and `aetherium logs` (query or
//! follow the platform's own logs). Both streams are Server-Sent Events; when the
//! connection drops, the command reconnects and resumes after the last id it
//! printed, so nothing is missed or printed twice.

use std::io::Write as _;
use std::time::Duration;

use aetherium_types::Event;
use aetherium_types::logs::{LogQueryResponse, LogRecord};
use anyhow::{Context as _, bail};
use clap::Args;
use futures::StreamExt as _;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::client::{Client, api_error, seg};
use crate::{ClientOpts, OutputFormat};

#[derive(Args)]
pub struct EventsArgs {
    #[command(flatten)]
    pub opts: ClientOpts,
    /// Only these event types: a name (vm.started) or a category (vm.*); repeatable.
    #[arg(long = "type", short = 't')]
    pub types: Vec<String>,
    /// Only events about this VM, task, execution or worker id.
    #[arg(long = "resource")]
    pub resource: Option<String>,
    /// First replay the stored events after this seq (0: everything kept).
    #[arg(long)]
    pub after: Option<i64>,
}

#[derive(Args)]
pub struct LogsArgs {
    #[command(flatten)]
    pub opts: ClientOpts,
    /// Only records of this task.
    #[arg(long)]
    pub task: Option<String>,
    /// Only records about this VM (id or name).
    #[arg(long)]
    pub vm: Option<String>,
    /// Only records of this worker.
    #[arg(long)]
    pub worker: Option<String>,
    /// Only records about this execution.
    #[arg(long)]
    pub execution: Option<String>,
    /// Minimum level: trace, debug, info, warn, error.
    #[arg(long)]
    pub level: Option<String>,
    /// Only records whose message contains this text.
    #[arg(long)]
    pub contains: Option<String>,
    /// How many of the newest records to print first.
    #[arg(long, short = 'n', default_value_t = 100)]
    pub limit: u32,
    /// Keep printing new records as they come.
    #[arg(long, short = 'f')]
    pub follow: bool,
}

/// Pause before the n-th reconnection attempt in a row: 0.5 s doubling to 10 s.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(500u64.saturating_mul(1 << attempt.min(5))).min(Duration::from_secs(10))
}

/// Follows the SSE stream at `path` with the query `params`, resuming after the last id seen when the connection drops. `print` gets each
/// item. Errors the server answers with (4xx) end the command; lost connections and
/// 5xx are retried for ever.
async fn follow<T: DeserializeOwned>(
    client: &Client,
    path: &str,
    params: &[(&str, String)],
    mut after: Option<i64>,
    seq: impl Fn(&T) -> Option<i64>,
    mut print: impl FnMut(&T) -> anyhow::Result<()>,
) -> anyhow::Result<u8> {
    let mut attempt = 0u32;
    loop {
        let mut pairs: Vec<String> = params
            .iter()
            .map(|(key, value)| format!("{key}={}", seg(value)))
            .collect();
        if let Some(after) = after {
            pairs.push(format!("after={after}"));
        }
        let path = if pairs.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{}", pairs.join("&"))
        };
        let sent = client
            .request(reqwest::Method::GET, &path)
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .send()
            .await;
        let response = match sent {
            Ok(r) if r.status().is_success() => r,
            Ok(r) if r.status().is_client_error() => {
                let status = r.status();
                let body = r.bytes().await.unwrap_or_default();
                return Err(api_error(status, &body));
            }
            Ok(r) => {
                eprintln!("aetherium: server answered {}; reconnecting", r.status());
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
                continue;
            }
            Err(e) => {
                eprintln!("aetherium: cannot reach {}: {e}; reconnecting", client.base);
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
                continue;
            }
        };
        attempt = 0;
        let mut body = response.bytes_stream();
        let mut buffer = String::new();
        while let Some(chunk) = body.next().await {
            let Ok(chunk) = chunk else { break };
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                let data: String = block
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim_start)
                    .collect::<Vec<_>>()
                    .join("\n");
                if data.is_empty() {
                    continue; // keepalive comment
                }
                let item: T = serde_json::from_str(&data)
                    .with_context(|| format!("unexpected stream item: {data}"))?;
                if let Some(s) = seq(&item) {
                    after = Some(s);
                }
                print(&item)?;
            }
        }
        eprintln!("aetherium: the stream ended; reconnecting");
        tokio::time::sleep(backoff(0)).await;
    }
}

fn print_event(event: &Event, format: OutputFormat) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match format {
        OutputFormat::Json => writeln!(out, "{}", serde_json::to_string(event)?)?,
        OutputFormat::Table => writeln!(
            out,
            "{:>6}  {}  {:<20} {}  {}",
            event
                .seq
                .map(|s| s.to_string())
                .unwrap_or_else(|| "-".into()),
            event.timestamp.format("%Y-%m-%d %H:%M:%S%.3f"),
            event.event_type.as_str(),
            event.resource_id,
            serde_json::to_string(&event.data)?
        )?,
    }
    out.flush()?;
    Ok(())
}

pub async fn events(args: EventsArgs) -> anyhow::Result<u8> {
    let client = Client::new(&args.opts)?;
    let format = args.opts.output;
    let mut params = Vec::new();
    if !args.types.is_empty() {
        params.push(("types", args.types.join(",")));
    }
    if let Some(r) = args.resource {
        params.push(("resource_id", r));
    }
    follow(
        &client,
        "/events",
        &params,
        args.after,
        |e: &Event| e.seq,
        |e| print_event(e, format),
    )
    .await
}

fn print_log(record: &LogRecord, format: OutputFormat) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match format {
        OutputFormat::Json => writeln!(out, "{}", serde_json::to_string(record)?)?,
        OutputFormat::Table => {
            let mut line = format!(
                "{}  {:<5}  {}",
                record.timestamp.format("%Y-%m-%d %H:%M:%S%.3f"),
                record.level.as_str().to_uppercase(),
                record.message
            );
            for (key, value) in [
                ("task", &record.task_id),
                ("vm", &record.vm_id),
                ("execution", &record.execution_id),
            ] {
                if let Some(v) = value {
                    line.push_str(&format!(" {key}={v}"));
                }
            }
            for (key, value) in &record.fields {
                match value {
                    serde_json::Value::String(s) => line.push_str(&format!(" {key}={s}")),
                    other => line.push_str(&format!(" {key}={other}")),
                }
            }
            writeln!(out, "{line}")?;
        }
    }
    out.flush()?;
    Ok(())
}

/// A VM's id from its id or name (records are tagged with ids).
async fn resolve_vm_id(client: &Client, vm: &str) -> anyhow::Result<String> {
    let response = client
        .execute(client.request(reqwest::Method::GET, &format!("/vms/{}", seg(vm))))
        .await?;
    let vm: aetherium_types::Vm = response.json().await.context("reading the VM")?;
    Ok(vm.id)
}

pub async fn logs(args: LogsArgs) -> anyhow::Result<u8> {
    let client = Client::new(&args.opts)?;
    let format = args.opts.output;
    if args.limit == 0 || args.limit > aetherium_types::logs::MAX_LOG_LIMIT {
        bail!(
            "--limit must be between 1 and {}",
            aetherium_types::logs::MAX_LOG_LIMIT
        );
    }
    let mut args = args;
    if let Some(vm) = args.vm.take() {
        args.vm = Some(resolve_vm_id(&client, &vm).await?);
    }
    let body = json!({
        "task_id": args.task,
        "vm_id": args.vm,
        "worker_id": args.worker,
        "execution_id": args.execution,
        "level": args.level,
        "contains": args.contains,
        "limit": args.limit,
    });
    let response = client
        .execute(
            client
                .request(reqwest::Method::POST, "/logs/query")
                .json(&body),
        )
        .await?;
    let page: LogQueryResponse = response.json().await.context("reading the logs")?;
    // Newest first from the server; printed oldest first, like a log file.
    for record in page.logs.iter().rev() {
        print_log(record, format)?;
    }
    if !args.follow {
        return Ok(0);
    }
    let after = page.logs.first().map(|r| r.id).unwrap_or(0);
    let params: Vec<(&str, String)> = [
        ("task_id", args.task),
        ("vm_id", args.vm),
        ("worker_id", args.worker),
        ("execution_id", args.execution),
        ("level", args.level),
        ("contains", args.contains),
    ]
    .into_iter()
    .filter_map(|(key, value)| value.map(|v| (key, v)))
    .collect();
    follow(
        &client,
        "/logs/stream",
        &params,
        Some(after),
        |r: &LogRecord| Some(r.id),
        |r| print_log(r, format),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(0), Duration::from_millis(500));
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(10), Duration::from_secs(10));
    }
}
