//! `aetherium ws create|ls|get|prompt|logs|rm`: workspaces for coding agents.
//! `ws prompt` follows the agent's output live over the workspace's session
//! WebSocket until the prompt is done. Secret values come from files
//! (`--secret-file NAME=PATH`), never from the command line, where `ps` and shell
//! history would keep them.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::time::Duration;

use aetherium_types::{
    PrepStepRun, PrepStepStatus, Prompt, PromptList, PromptStatus, SessionClientMessage,
    SessionServerMessage, SessionStream, Workspace, WorkspaceList, WorkspaceStatus,
};
use anyhow::{Context as _, anyhow, bail};
use clap::{Args, Subcommand};
use futures::{SinkExt as _, StreamExt as _};
use serde::Deserialize;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use crate::client::{Client, api_error, seg};
use crate::output::{print_json, print_table, short};
use crate::{ClientOpts, OutputFormat};

#[derive(Args)]
pub struct WsArgs {
    #[command(flatten)]
    pub opts: ClientOpts,
    #[command(subcommand)]
    pub command: WsCommand,
}

#[derive(Subcommand)]
pub enum WsCommand {
    /// Create a workspace: a prepared sandbox for a coding agent.
    Create(Box<CreateWs>),
    /// List workspaces.
    Ls,
    /// Show one workspace (by id or name) with its preparation steps.
    Get { workspace: String },
    /// Send a prompt to the workspace's agent and follow its output until it is
    /// done (exit code 0 if it completed).
    Prompt {
        workspace: String,
        /// The prompt text.
        text: String,
        /// 0 (lowest) to 10 (highest).
        #[arg(long)]
        priority: Option<u8>,
        /// Queue it and return at once (prints the prompt).
        #[arg(long)]
        no_follow: bool,
    },
    /// The workspace's prompts and their outputs, oldest first.
    Logs { workspace: String },
    /// Delete a workspace (its sandbox, secrets, steps and prompts).
    Rm { workspace: String },
}

#[derive(Args)]
pub struct CreateWs {
    name: String,
    #[arg(long, default_value = "")]
    description: String,
    /// The environment (id or name) to start from.
    #[arg(long = "env")]
    environment: Option<String>,
    /// The coding agent: claude-code or ampcode.
    #[arg(long, default_value = "claude-code")]
    assistant: String,
    /// A tool to install, `name` or `name@version` (repeatable).
    #[arg(long = "tool")]
    tools: Vec<String>,
    /// A git repository to clone into the working directory.
    #[arg(long)]
    repo: Option<String>,
    /// The branch of --repo.
    #[arg(long, requires = "repo")]
    branch: Option<String>,
    /// A script file to run while preparing (repeatable, run in order after the clone).
    #[arg(long = "script")]
    scripts: Vec<std::path::PathBuf>,
    /// A secret of the workspace, NAME=PATH: the value is read from the file
    /// (repeatable; one trailing newline is dropped).
    #[arg(long = "secret-file")]
    secret_files: Vec<String>,
    /// Working directory in the sandbox (default /workspace).
    #[arg(long = "workdir")]
    working_directory: Option<String>,
    #[arg(long)]
    vcpus: Option<u32>,
    /// Memory in MiB.
    #[arg(long = "memory")]
    memory_mb: Option<u64>,
    /// Wait until it is ready or failed, printing the steps' progress (e.g. 10m).
    #[arg(long)]
    wait: Option<String>,
}

#[derive(Debug, Deserialize)]
struct StepList {
    steps: Vec<PrepStepRun>,
}

/// `90`, `90s`, `5m`, `1h`.
fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| anyhow!("{text:?} is not a duration like 90s, 5m or 1h"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => bail!("{text:?} is not a duration like 90s, 5m or 1h"),
    };
    Ok(Duration::from_secs(secs))
}

fn read_secret_file(spec: &str) -> anyhow::Result<serde_json::Value> {
    let (name, path) = spec
        .split_once('=')
        .filter(|(n, p)| !n.is_empty() && !p.is_empty())
        .ok_or_else(|| anyhow!("--secret-file {spec:?}: want NAME=PATH"))?;
    let value = std::fs::read_to_string(path)
        .with_context(|| format!("reading secret {name} from {path}"))?;
    let value = value.strip_suffix('\n').unwrap_or(&value);
    let value = value.strip_suffix('\r').unwrap_or(value);
    if value.is_empty() {
        bail!("secret {name}: {path} is empty");
    }
    Ok(json!({"name": name, "value": value}))
}

fn workspace_rows(workspaces: &[Workspace]) -> Vec<Vec<String>> {
    workspaces
        .iter()
        .map(|w| {
            vec![
                short(&w.id),
                w.name.clone(),
                w.status.to_string(),
                w.ai_assistant.to_string(),
                w.vm_id.as_deref().map(short).unwrap_or_else(|| "-".into()),
                w.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                w.status_message.clone().unwrap_or_default(),
            ]
        })
        .collect()
}

const WORKSPACE_HEADERS: [&str; 7] = [
    "ID",
    "NAME",
    "STATUS",
    "ASSISTANT",
    "VM",
    "CREATED",
    "MESSAGE",
];

fn step_rows(steps: &[PrepStepRun]) -> Vec<Vec<String>> {
    steps
        .iter()
        .map(|s| {
            vec![
                s.order.to_string(),
                s.step_type.to_string(),
                s.status.to_string(),
                s.exit_code.map(|c| c.to_string()).unwrap_or_default(),
                s.error.clone().unwrap_or_default(),
            ]
        })
        .collect()
}

const STEP_HEADERS: [&str; 5] = ["ORDER", "TYPE", "STATUS", "EXIT", "ERROR"];

pub async fn ws(args: WsArgs) -> anyhow::Result<u8> {
    let client = Client::new(&args.opts)?;
    let format = args.opts.output;
    match args.command {
        WsCommand::Create(create) => create_workspace(&client, *create, format).await,
        WsCommand::Ls => {
            let mut list: WorkspaceList = client.get("/workspaces?limit=1000").await?;
            while let Some(cursor) = list.next_cursor.take() {
                let next: WorkspaceList = client
                    .get(&format!("/workspaces?limit=1000&cursor={}", seg(&cursor)))
                    .await?;
                list.workspaces.extend(next.workspaces);
                list.next_cursor = next.next_cursor;
            }
            match format {
                OutputFormat::Json => print_json(&list.workspaces)?,
                OutputFormat::Table => {
                    print_table(&WORKSPACE_HEADERS, &workspace_rows(&list.workspaces))
                }
            }
            Ok(0)
        }
        WsCommand::Get { workspace } => {
            let ws: Workspace = client
                .get(&format!("/workspaces/{}", seg(&workspace)))
                .await?;
            let steps: StepList = client
                .get(&format!("/workspaces/{}/steps", seg(&ws.id)))
                .await?;
            match format {
                OutputFormat::Json => print_json(&json!({"workspace": ws, "steps": steps.steps}))?,
                OutputFormat::Table => {
                    print_table(
                        &WORKSPACE_HEADERS,
                        &workspace_rows(std::slice::from_ref(&ws)),
                    );
                    if !steps.steps.is_empty() {
                        println!();
                        print_table(&STEP_HEADERS, &step_rows(&steps.steps));
                    }
                    for step in steps
                        .steps
                        .iter()
                        .filter(|s| s.status == PrepStepStatus::Failed)
                    {
                        println!("\n--- output of step {} ({}):", step.order, step.step_type);
                        println!("{}", step.output.trim_end());
                    }
                }
            }
            Ok(0)
        }
        WsCommand::Prompt {
            workspace,
            text,
            priority,
            no_follow,
        } => {
            if no_follow {
                let mut body = json!({"prompt": text});
                if let Some(p) = priority {
                    body["priority"] = p.into();
                }
                let prompt: Prompt = client
                    .send(
                        reqwest::Method::POST,
                        &format!("/workspaces/{}/prompts", seg(&workspace)),
                        Some(body),
                    )
                    .await?;
                match format {
                    OutputFormat::Json => print_json(&prompt)?,
                    OutputFormat::Table => println!("{} {}", prompt.id, prompt.status),
                }
                return Ok(0);
            }
            follow_prompt(&client, &workspace, text, priority).await
        }
        WsCommand::Logs { workspace } => {
            let list: PromptList = client
                .get(&format!("/workspaces/{}/prompts", seg(&workspace)))
                .await?;
            let mut prompts = list.prompts;
            prompts.reverse();
            match format {
                OutputFormat::Json => print_json(&prompts)?,
                OutputFormat::Table => {
                    for p in &prompts {
                        println!(
                            "=== {} [{}] {}: {}",
                            p.created_at.format("%Y-%m-%d %H:%M:%S"),
                            p.status,
                            short(&p.id),
                            p.prompt
                        );
                        if !p.output.is_empty() {
                            println!("{}", p.output.trim_end());
                        }
                        if let Some(e) = &p.error {
                            println!("error: {e}");
                        }
                    }
                }
            }
            Ok(0)
        }
        WsCommand::Rm { workspace } => {
            client
                .execute(client.request(
                    reqwest::Method::DELETE,
                    &format!("/workspaces/{}", seg(&workspace)),
                ))
                .await?;
            println!("deleted {workspace}");
            Ok(0)
        }
    }
}

async fn create_workspace(
    client: &Client,
    create: CreateWs,
    format: OutputFormat,
) -> anyhow::Result<u8> {
    let wait = create.wait.as_deref().map(parse_duration).transpose()?;
    let mut prep_steps = Vec::new();
    let mut order = 0u32;
    if let Some(url) = &create.repo {
        let mut config = json!({"url": url});
        if let Some(branch) = &create.branch {
            config["branch"] = branch.clone().into();
        }
        prep_steps.push(json!({"type": "git_clone", "order": order, "config": config}));
        order += 1;
    }
    for path in &create.scripts {
        let script = std::fs::read_to_string(path)
            .with_context(|| format!("reading the script {}", path.display()))?;
        prep_steps.push(json!({"type": "script", "order": order, "config": {"script": script}}));
        order += 1;
    }
    let secrets = create
        .secret_files
        .iter()
        .map(|s| read_secret_file(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut body = json!({
        "name": create.name,
        "description": create.description,
        "ai_assistant": create.assistant,
        "additional_tools": create.tools,
        "prep_steps": prep_steps,
        "secrets": secrets,
    });
    let fields: [(&str, Option<serde_json::Value>); 4] = [
        ("environment_id", create.environment.map(Into::into)),
        (
            "working_directory",
            create.working_directory.map(Into::into),
        ),
        ("vcpus", create.vcpus.map(Into::into)),
        ("memory_mb", create.memory_mb.map(Into::into)),
    ];
    for (key, value) in fields {
        if let Some(value) = value {
            body[key] = value;
        }
    }
    let mut ws: Workspace = client
        .send(reqwest::Method::POST, "/workspaces", Some(body))
        .await?;
    let Some(wait) = wait else {
        match format {
            OutputFormat::Json => print_json(&ws)?,
            OutputFormat::Table => print_table(&WORKSPACE_HEADERS, &workspace_rows(&[ws])),
        }
        return Ok(0);
    };
    let deadline = tokio::time::Instant::now() + wait;
    let mut seen: BTreeMap<u32, PrepStepStatus> = BTreeMap::new();
    let mut last_status = None;
    let steps = loop {
        if last_status != Some(ws.status) {
            eprintln!("workspace {}: {}", ws.name, ws.status);
            last_status = Some(ws.status);
        }
        let steps: StepList = client
            .get(&format!("/workspaces/{}/steps", seg(&ws.id)))
            .await?;
        for step in &steps.steps {
            if seen.get(&step.order) != Some(&step.status) {
                eprintln!(
                    "  step {} ({}): {}",
                    step.order, step.step_type, step.status
                );
                seen.insert(step.order, step.status);
            }
        }
        if matches!(
            ws.status,
            WorkspaceStatus::Ready | WorkspaceStatus::Failed | WorkspaceStatus::Stopped
        ) {
            break steps.steps;
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "workspace {} is still {} after {}s",
                ws.name,
                ws.status,
                wait.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        ws = client.get(&format!("/workspaces/{}", seg(&ws.id))).await?;
    };
    match format {
        OutputFormat::Json => print_json(&json!({"workspace": ws, "steps": steps}))?,
        OutputFormat::Table => print_table(
            &WORKSPACE_HEADERS,
            &workspace_rows(std::slice::from_ref(&ws)),
        ),
    }
    if ws.status == WorkspaceStatus::Ready {
        return Ok(0);
    }
    for step in steps.iter().filter(|s| s.status == PrepStepStatus::Failed) {
        eprintln!("--- output of step {} ({}):", step.order, step.step_type);
        eprintln!("{}", step.output.trim_end());
    }
    Ok(1)
}

/// Sends the prompt over the session WebSocket and prints its output as it comes,
/// until it is done: 0 if it completed, 1 otherwise.
async fn follow_prompt(
    client: &Client,
    workspace: &str,
    text: String,
    priority: Option<u8>,
) -> anyhow::Result<u8> {
    let url = format!(
        "{}/api/v1/workspaces/{}/session",
        client.base.replacen("http", "ws", 1),
        seg(workspace)
    );
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
    let (mut socket, _) = match tokio_tungstenite::connect_async(request).await {
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
    let message = SessionClientMessage::Prompt {
        prompt: text,
        priority,
    };
    socket
        .send(Message::Text(serde_json::to_string(&message)?.into()))
        .await
        .context("sending the prompt")?;
    let mut prompt_id: Option<String> = None;
    while let Some(msg) = socket.next().await {
        let msg = msg.context("the session broke off")?;
        let text = match msg {
            Message::Text(text) => text,
            Message::Close(_) => break,
            _ => continue,
        };
        let Ok(msg) = serde_json::from_str::<SessionServerMessage>(&text) else {
            continue;
        };
        match msg {
            SessionServerMessage::PromptQueued { prompt } if prompt_id.is_none() => {
                eprintln!("queued prompt {}", prompt.id);
                prompt_id = Some(prompt.id);
            }
            SessionServerMessage::Output {
                prompt_id: id,
                stream,
                data,
            } if prompt_id.as_deref() == Some(id.as_str()) => match stream {
                SessionStream::Stdout => {
                    print!("{data}");
                    let _ = std::io::stdout().flush();
                }
                SessionStream::Stderr => eprint!("{data}"),
            },
            SessionServerMessage::PromptDone { prompt }
                if prompt_id.as_deref() == Some(prompt.id.as_str()) =>
            {
                let _ = socket.close(None).await;
                if let Some(e) = &prompt.error {
                    eprintln!("prompt {}: {e}", prompt.status);
                }
                return Ok(if prompt.status == PromptStatus::Completed {
                    0
                } else {
                    1
                });
            }
            SessionServerMessage::Error { message } if prompt_id.is_none() => {
                let _ = socket.close(None).await;
                bail!("{message}");
            }
            SessionServerMessage::Error { message } => eprintln!("session: {message}"),
            _ => {}
        }
    }
    bail!("the session closed before the prompt was done")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn secret_files_read_values_from_files() {
        let dir = std::env::temp_dir().join(format!("aeth-ws-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tok");
        std::fs::write(&path, "v4lue\n").unwrap();
        let v = read_secret_file(&format!("TOK={}", path.display())).unwrap();
        assert_eq!(v, json!({"name": "TOK", "value": "v4lue"}));
        assert!(read_secret_file("TOK").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
