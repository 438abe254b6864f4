//! `aetherium env create|ls|get|rm` (workspace templates) and `aetherium secret
//! set|ls|rm` (global secrets: the value is read from stdin, never from the command
//! line, where `ps` and shell history would keep it).

use std::collections::BTreeMap;
use std::io::Read as _;

use aetherium_types::{Environment, EnvironmentList, Secret, SecretList};
use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use serde_json::json;

use crate::client::{Client, seg};
use crate::output::{print_json, print_table, short};
use crate::{ClientOpts, OutputFormat};

#[derive(Args)]
pub struct EnvArgs {
    #[command(flatten)]
    pub opts: ClientOpts,
    #[command(subcommand)]
    pub command: EnvCommand,
}

#[derive(Subcommand)]
pub enum EnvCommand {
    /// Create an environment (a template for workspaces).
    Create(Box<CreateEnv>),
    /// List environments.
    Ls,
    /// Show one environment (by id or name).
    Get { environment: String },
    /// Delete an environment.
    Rm { environment: String },
}

#[derive(Args)]
pub struct CreateEnv {
    name: String,
    #[arg(long, default_value = "")]
    description: String,
    /// Image its sandboxes run (default: the platform's).
    #[arg(long)]
    image: Option<String>,
    #[arg(long)]
    vcpus: Option<u32>,
    /// Memory in MiB.
    #[arg(long = "memory")]
    memory_mb: Option<u64>,
    /// Git repository to clone into the working directory.
    #[arg(long = "repo")]
    git_repo_url: Option<String>,
    #[arg(long = "branch")]
    git_branch: Option<String>,
    /// Working directory in the sandbox (default /workspace).
    #[arg(long = "workdir")]
    working_directory: Option<String>,
    /// A tool to install, `name` or `name@version` (repeatable).
    #[arg(long = "tool")]
    tools: Vec<String>,
    /// An environment variable, KEY=VALUE (repeatable). Not for secrets: use
    /// `aetherium secret set`.
    #[arg(long = "env", short = 'e')]
    env: Vec<String>,
    /// Seconds without activity before a workspace is stopped (0: never).
    #[arg(long)]
    idle_timeout: Option<u64>,
}

#[derive(Args)]
pub struct SecretArgs {
    #[command(flatten)]
    pub opts: ClientOpts,
    #[command(subcommand)]
    pub command: SecretCommand,
}

#[derive(Subcommand)]
pub enum SecretCommand {
    /// Set a global secret; its value is read from stdin (`... | aetherium secret set NAME`).
    Set {
        /// Its name, which is also the environment variable it becomes.
        name: String,
        /// api_key, ssh_key, token, password or other.
        #[arg(long = "type", default_value = "other")]
        secret_type: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List global secrets (names and types; values are never shown).
    Ls,
    /// Delete a global secret by id.
    Rm { id: String },
}

fn parse_env(pairs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => bail!("--env {pair:?}: want KEY=VALUE"),
        })
        .collect()
}

fn environment_rows(environments: &[Environment]) -> Vec<Vec<String>> {
    environments
        .iter()
        .map(|e| {
            vec![
                short(&e.id),
                e.name.clone(),
                format!("{}/{}", e.vcpus, e.memory_mb),
                e.tools.join(","),
                e.git_repo_url.clone().unwrap_or_else(|| "-".into()),
                e.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            ]
        })
        .collect()
}

const ENVIRONMENT_HEADERS: [&str; 6] = ["ID", "NAME", "CPU/MEM", "TOOLS", "REPO", "CREATED"];

pub async fn env(args: EnvArgs) -> anyhow::Result<u8> {
    let client = Client::new(&args.opts)?;
    let format = args.opts.output;
    let show = |environments: &[Environment]| -> anyhow::Result<()> {
        match format {
            OutputFormat::Json => print_json(&environments),
            OutputFormat::Table => {
                print_table(&ENVIRONMENT_HEADERS, &environment_rows(environments));
                Ok(())
            }
        }
    };
    match args.command {
        EnvCommand::Create(create) => {
            let CreateEnv {
                name,
                description,
                image,
                vcpus,
                memory_mb,
                git_repo_url,
                git_branch,
                working_directory,
                tools,
                env,
                idle_timeout,
            } = *create;
            let mut body = json!({
                "name": name,
                "description": description,
                "tools": tools,
                "env_vars": parse_env(&env)?,
            });
            let fields = [
                ("image", image.map(Into::into)),
                ("vcpus", vcpus.map(Into::into)),
                ("memory_mb", memory_mb.map(Into::into)),
                ("git_repo_url", git_repo_url.map(Into::into)),
                ("git_branch", git_branch.map(Into::into)),
                ("working_directory", working_directory.map(Into::into)),
                ("idle_timeout_seconds", idle_timeout.map(Into::into)),
            ];
            for (key, value) in fields {
                if let Some(value) = value {
                    body[key] = value;
                }
            }
            let created: Environment = client
                .send(reqwest::Method::POST, "/environments", Some(body))
                .await?;
            match format {
                OutputFormat::Json => print_json(&created)?,
                OutputFormat::Table => show(std::slice::from_ref(&created))?,
            }
        }
        EnvCommand::Ls => {
            let mut list: EnvironmentList = client.get("/environments?limit=1000").await?;
            while let Some(cursor) = list.next_cursor.take() {
                let next: EnvironmentList = client
                    .get(&format!("/environments?limit=1000&cursor={}", seg(&cursor)))
                    .await?;
                list.environments.extend(next.environments);
                list.next_cursor = next.next_cursor;
            }
            show(&list.environments)?;
        }
        EnvCommand::Get { environment } => {
            let environment: Environment = client
                .get(&format!("/environments/{}", seg(&environment)))
                .await?;
            // One environment is best read whole.
            print_json(&environment)?;
        }
        EnvCommand::Rm { environment } => {
            client
                .execute(client.request(
                    reqwest::Method::DELETE,
                    &format!("/environments/{}", seg(&environment)),
                ))
                .await?;
            println!("deleted {environment}");
        }
    }
    Ok(0)
}

fn secret_rows(secrets: &[Secret]) -> Vec<Vec<String>> {
    secrets
        .iter()
        .map(|s| {
            vec![
                s.id.clone(),
                s.name.clone(),
                s.secret_type.to_string(),
                s.key_id.clone(),
                s.updated_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                s.description.clone(),
            ]
        })
        .collect()
}

const SECRET_HEADERS: [&str; 6] = ["ID", "NAME", "TYPE", "KEY", "UPDATED", "DESCRIPTION"];

pub async fn secret(args: SecretArgs) -> anyhow::Result<u8> {
    let client = Client::new(&args.opts)?;
    let format = args.opts.output;
    match args.command {
        SecretCommand::Set {
            name,
            secret_type,
            description,
        } => {
            let mut value = String::new();
            std::io::stdin()
                .read_to_string(&mut value)
                .context("reading the secret's value from stdin")?;
            // `echo value |` adds a newline nobody means as part of a key.
            let value = value.strip_suffix('\n').unwrap_or(&value);
            let value = value.strip_suffix('\r').unwrap_or(value);
            if value.is_empty() {
                bail!(
                    "no value on stdin: pipe it in, e.g. `printf %s \"$KEY\" | aetherium secret set {name}`"
                );
            }
            let stored: Secret = client
                .send(
                    reqwest::Method::POST,
                    "/secrets",
                    Some(json!({
                        "name": name,
                        "value": value,
                        "type": secret_type,
                        "description": description,
                    })),
                )
                .await?;
            match format {
                OutputFormat::Json => print_json(&stored)?,
                OutputFormat::Table => print_table(&SECRET_HEADERS, &secret_rows(&[stored])),
            }
        }
        SecretCommand::Ls => {
            let list: SecretList = client.get("/secrets").await?;
            match format {
                OutputFormat::Json => print_json(&list)?,
                OutputFormat::Table => print_table(&SECRET_HEADERS, &secret_rows(&list.secrets)),
            }
        }
        SecretCommand::Rm { id } => {
            client
                .execute(client.request(reqwest::Method::DELETE, &format!("/secrets/{}", seg(&id))))
                .await?;
            println!("deleted {id}");
        }
    }
    Ok(0)
}
