//! `aetherium login|logout`, `aetherium apikey …`, `aetherium user …`: credentials
//! on this machine, API keys and user accounts on the server.

use std::io::{BufRead as _, Write as _};

use aetherium_types::{
    ApiKey, ApiKeyList, CreateApiKeyResponse, KeyQuota, LoginResponse, User, UserList, WhoAmI,
};
use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use serde_json::json;

use crate::client::{Client, DEFAULT_URL, seg};
use crate::credentials::Credentials;
use crate::output::{print_json, print_table, short};
use crate::{ClientOpts, OutputFormat};

/// One line from stdin; without echo when stdin is a terminal.
fn read_secret(prompt: &str) -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    let echo_off = if crate::term::stdin_is_terminal() {
        eprint!("{prompt}");
        let _ = std::io::stderr().flush();
        crate::term::EchoOff::enable().ok()
    } else {
        None
    };
    let mut line = String::new();
    stdin.lock().read_line(&mut line).context("reading stdin")?;
    if echo_off.is_some() {
        eprintln!();
    }
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

// ---- login / logout -----------------------------------------------------------

#[derive(Args)]
pub struct LoginArgs {
    /// The platform's URL [default: http://127.0.0.1:8080].
    #[arg(long, env = "AETHERIUM_URL")]
    url: Option<String>,
    /// Log in as this user (password from a prompt or --password-stdin) and keep
    /// the session; without it, an API key is read from stdin.
    #[arg(long, short = 'u')]
    username: Option<String>,
    /// Read the password (or the API key) from stdin without prompting.
    #[arg(long)]
    password_stdin: bool,
}

pub async fn login(args: LoginArgs) -> anyhow::Result<u8> {
    let url = args
        .url
        .unwrap_or_else(|| DEFAULT_URL.to_string())
        .trim_end_matches('/')
        .to_string();
    let token = match &args.username {
        Some(username) => {
            let password = read_secret("Password: ")?;
            let anonymous = Client::with(url.clone(), String::new())?;
            let session: LoginResponse = anonymous
                .send(
                    reqwest::Method::POST,
                    "/auth/login",
                    Some(json!({"username": username, "password": password})),
                )
                .await?;
            session.token
        }
        None => {
            let key = read_secret("API key: ")?;
            if key.is_empty() {
                bail!("no API key given");
            }
            key
        }
    };
    let client = Client::with(url.clone(), token.clone())?;
    let me: WhoAmI = client.get("/auth/me").await?;
    let path = Credentials {
        url: url.clone(),
        token,
    }
    .save()?;
    println!(
        "Logged in to {url} as {} ({}); credentials in {}",
        me.principal.name,
        me.principal.role,
        path.display()
    );
    Ok(0)
}

#[derive(Args)]
pub struct LogoutArgs {}

/// Ends a saved session on the server (API keys stay valid) and forgets it here.
pub async fn logout(_: LogoutArgs) -> anyhow::Result<u8> {
    let Some(saved) = Credentials::load()? else {
        println!("Not logged in.");
        return Ok(0);
    };
    if saved.token.starts_with("as_") {
        let client = Client::with(saved.url.clone(), saved.token.clone())?;
        let request = client.request(reqwest::Method::POST, "/auth/logout");
        if let Err(e) = client.execute(request).await {
            eprintln!("warning: the server did not end the session: {e:#}");
        }
    }
    if let Some(path) = Credentials::path() {
        std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
    }
    println!("Logged out of {}.", saved.url);
    Ok(0)
}

// ---- API keys -------------------------------------------------------------------

#[derive(Args)]
pub struct ApiKeyArgs {
    #[command(flatten)]
    pub opts: ClientOpts,
    #[command(subcommand)]
    pub command: ApiKeyCommand,
}

#[derive(Subcommand)]
pub enum ApiKeyCommand {
    /// Create a key; it is printed once and cannot be shown again.
    Create {
        #[arg(long)]
        name: String,
        /// viewer, operator or admin.
        #[arg(long)]
        role: String,
        /// Lifetime, e.g. 30d, 12h, 90m (default: no expiry).
        #[arg(long)]
        expires_in: Option<String>,
        /// Requests per second (default: the server's).
        #[arg(long)]
        rate_limit: Option<u32>,
        #[command(flatten)]
        quota: QuotaArgs,
    },
    /// List keys (never the keys themselves).
    Ls,
    /// Revoke a key: it stops working at once.
    Revoke { id: String },
    /// Set what the live sandboxes a key creates may take at once (replaces the
    /// key's quota; no limit given: the key is not limited).
    Quota {
        id: String,
        #[command(flatten)]
        quota: QuotaArgs,
    },
}

/// A key's quota as flags; none given: no quota.
#[derive(Args)]
pub struct QuotaArgs {
    /// At most this many live sandboxes.
    #[arg(long)]
    max_vms: Option<u32>,
    /// At most this many vCPUs over its live sandboxes.
    #[arg(long)]
    max_vcpus: Option<u32>,
    /// At most this much memory (MiB) over its live sandboxes.
    #[arg(long = "max-memory")]
    max_memory_mb: Option<u64>,
    /// At most this many commands running at once (queued, streamed or
    /// interactive).
    #[arg(long = "max-executions")]
    max_concurrent_executions: Option<u32>,
    /// The network policy every sandbox of the key gets (it cannot ask for another).
    #[command(flatten)]
    network_policy: crate::NetworkPolicyArgs,
}

impl QuotaArgs {
    fn to_quota(&self) -> anyhow::Result<Option<KeyQuota>> {
        let network_policy = self
            .network_policy
            .to_json()
            .map(serde_json::from_value)
            .transpose()
            .context("bad network policy")?;
        let quota = KeyQuota {
            max_vms: self.max_vms,
            max_vcpus: self.max_vcpus,
            max_memory_mb: self.max_memory_mb,
            max_concurrent_executions: self.max_concurrent_executions,
            network_policy,
        };
        Ok((quota != KeyQuota::default()).then_some(quota))
    }
}

fn limit_text(limit: Option<u64>) -> String {
    limit.map_or_else(|| "-".into(), |n| n.to_string())
}

/// `30d`, `12h`, `90m`, `45s` or plain seconds.
fn parse_lifetime(text: &str) -> anyhow::Result<u64> {
    let text = text.trim();
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = number
        .parse()
        .with_context(|| format!("bad duration {text:?}: use e.g. 30d, 12h, 90m"))?;
    let factor = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => bail!("bad duration {text:?}: use e.g. 30d, 12h, 90m"),
    };
    n.checked_mul(factor).context("duration too long")
}

fn key_rows(keys: &[ApiKey]) -> Vec<Vec<String>> {
    keys.iter()
        .map(|k| {
            let state = if k.revoked_at.is_some() {
                "revoked"
            } else if k.expires_at.is_some_and(|e| e <= chrono::Utc::now()) {
                "expired"
            } else {
                "active"
            };
            vec![
                short(&k.id),
                k.name.clone(),
                format!("{}…", k.prefix),
                k.role.to_string(),
                state.to_string(),
                k.expires_at
                    .map(|e| e.format("%Y-%m-%d %H:%M").to_string())
                    .unwrap_or_else(|| "never".into()),
                k.last_used_at
                    .map(|e| e.format("%Y-%m-%d %H:%M").to_string())
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect()
}

pub async fn apikey(args: ApiKeyArgs) -> anyhow::Result<u8> {
    let client = Client::new(&args.opts)?;
    let json_out = args.opts.output == OutputFormat::Json;
    match args.command {
        ApiKeyCommand::Create {
            name,
            role,
            expires_in,
            rate_limit,
            quota,
        } => {
            let expires = expires_in.as_deref().map(parse_lifetime).transpose()?;
            let created: CreateApiKeyResponse = client
                .send(
                    reqwest::Method::POST,
                    "/api-keys",
                    Some(json!({
                        "name": name,
                        "role": role,
                        "expires_in_seconds": expires,
                        "rate_limit_per_second": rate_limit,
                        "quota": quota.to_quota()?,
                    })),
                )
                .await?;
            if json_out {
                print_json(&created)?;
            } else {
                println!("{}", created.key);
                eprintln!(
                    "API key {} ({}, {}) created. This is the only time it is shown: store it now.",
                    created.api_key.id, created.api_key.name, created.api_key.role
                );
            }
        }
        ApiKeyCommand::Ls => {
            let list: ApiKeyList = client.get("/api-keys").await?;
            if json_out {
                print_json(&list)?;
            } else {
                print_table(
                    &[
                        "ID",
                        "NAME",
                        "PREFIX",
                        "ROLE",
                        "STATE",
                        "EXPIRES",
                        "LAST USED",
                    ],
                    &key_rows(&list.api_keys),
                );
            }
        }
        ApiKeyCommand::Revoke { id } => {
            let key: ApiKey = client
                .send(
                    reqwest::Method::POST,
                    &format!("/api-keys/{}/revoke", seg(&id)),
                    None,
                )
                .await?;
            if json_out {
                print_json(&key)?;
            } else {
                println!("Revoked API key {} ({}).", key.id, key.name);
            }
        }
        ApiKeyCommand::Quota { id, quota } => {
            let key: ApiKey = client
                .send(
                    reqwest::Method::PATCH,
                    &format!("/api-keys/{}", seg(&id)),
                    Some(json!({"quota": quota.to_quota()?})),
                )
                .await?;
            if json_out {
                print_json(&key)?;
            } else {
                match &key.quota {
                    Some(q) => println!(
                        "API key {} ({}) quota: max_vms={} max_vcpus={} max_memory_mb={} max_concurrent_executions={}",
                        key.id,
                        key.name,
                        limit_text(q.max_vms.map(u64::from)),
                        limit_text(q.max_vcpus.map(u64::from)),
                        limit_text(q.max_memory_mb),
                        limit_text(q.max_concurrent_executions.map(u64::from)),
                    ),
                    None => println!("API key {} ({}) has no quota.", key.id, key.name),
                }
            }
        }
    }
    Ok(0)
}

// ---- Users ----------------------------------------------------------------------

#[derive(Args)]
pub struct UserArgs {
    #[command(flatten)]
    pub opts: ClientOpts,
    #[command(subcommand)]
    pub command: UserCommand,
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// Create a user (password from a prompt, or stdin with --password-stdin).
    Create {
        username: String,
        /// viewer, operator or admin.
        #[arg(long)]
        role: String,
        #[arg(long)]
        password_stdin: bool,
        /// What the sandboxes of the user's sessions may take (none: not limited).
        #[command(flatten)]
        quota: QuotaArgs,
    },
    /// List users.
    Ls,
    /// Change a user's role, password, state or quota.
    Update {
        /// User id or username.
        user: String,
        #[arg(long)]
        role: Option<String>,
        /// Set a new password (from a prompt, or stdin with --password-stdin).
        #[arg(long)]
        password: bool,
        #[arg(long)]
        password_stdin: bool,
        #[arg(long, conflicts_with = "enable")]
        disable: bool,
        #[arg(long)]
        enable: bool,
        /// A new quota for the user's sessions, in place of the old one.
        #[command(flatten)]
        quota: QuotaArgs,
        /// Remove the user's quota.
        #[arg(long)]
        no_quota: bool,
    },
    /// Delete a user and end their sessions.
    Rm {
        /// User id or username.
        user: String,
    },
}

async fn user_id(client: &Client, user: &str) -> anyhow::Result<String> {
    let list: UserList = client.get("/users").await?;
    list.users
        .into_iter()
        .find(|u| u.id == user || u.username == user)
        .map(|u| u.id)
        .with_context(|| format!("no user {user:?}"))
}

fn user_rows(users: &[User]) -> Vec<Vec<String>> {
    users
        .iter()
        .map(|u| {
            vec![
                short(&u.id),
                u.username.clone(),
                u.role.to_string(),
                if u.disabled { "disabled" } else { "active" }.to_string(),
                u.last_login_at
                    .map(|e| e.format("%Y-%m-%d %H:%M").to_string())
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect()
}

fn new_password(from_stdin: bool) -> anyhow::Result<String> {
    if from_stdin {
        return read_secret("");
    }
    let first = read_secret("New password: ")?;
    let second = read_secret("Repeat it: ")?;
    if first != second {
        bail!("the passwords differ");
    }
    Ok(first)
}

pub async fn user(args: UserArgs) -> anyhow::Result<u8> {
    let client = Client::new(&args.opts)?;
    let json_out = args.opts.output == OutputFormat::Json;
    let show = |user: &User, verb: &str| -> anyhow::Result<()> {
        if json_out {
            print_json(user)
        } else {
            println!(
                "{verb} user {} ({}, {}).",
                user.username, user.id, user.role
            );
            Ok(())
        }
    };
    match args.command {
        UserCommand::Create {
            username,
            role,
            password_stdin,
            quota,
        } => {
            let password = new_password(password_stdin)?;
            let user: User = client
                .send(
                    reqwest::Method::POST,
                    "/users",
                    Some(
                        json!({"username": username, "password": password, "role": role,
                                "quota": quota.to_quota()?}),
                    ),
                )
                .await?;
            show(&user, "Created")?;
        }
        UserCommand::Ls => {
            let list: UserList = client.get("/users").await?;
            if json_out {
                print_json(&list)?;
            } else {
                print_table(
                    &["ID", "USERNAME", "ROLE", "STATE", "LAST LOGIN"],
                    &user_rows(&list.users),
                );
            }
        }
        UserCommand::Update {
            user,
            role,
            password,
            password_stdin,
            disable,
            enable,
            quota,
            no_quota,
        } => {
            let id = user_id(&client, &user).await?;
            let mut body = serde_json::Map::new();
            match (quota.to_quota()?, no_quota) {
                (Some(_), true) => bail!("--no-quota takes no limits"),
                (Some(quota), false) => {
                    body.insert("quota".into(), json!(quota));
                }
                (None, true) => {
                    body.insert("quota".into(), json!({}));
                }
                (None, false) => {}
            }
            if let Some(role) = role {
                body.insert("role".into(), json!(role));
            }
            if password || password_stdin {
                body.insert("password".into(), json!(new_password(password_stdin)?));
            }
            if disable || enable {
                body.insert("disabled".into(), json!(disable));
            }
            let user: User = client
                .send(
                    reqwest::Method::PATCH,
                    &format!("/users/{}", seg(&id)),
                    Some(body.into()),
                )
                .await?;
            show(&user, "Updated")?;
        }
        UserCommand::Rm { user } => {
            let id = user_id(&client, &user).await?;
            let request = client.request(reqwest::Method::DELETE, &format!("/users/{}", seg(&id)));
            client.execute(request).await?;
            if !json_out {
                println!("Deleted user {user}.");
            }
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_parse() {
        assert_eq!(parse_lifetime("30d").unwrap(), 30 * 86_400);
        assert_eq!(parse_lifetime("12h").unwrap(), 12 * 3600);
        assert_eq!(parse_lifetime("90m").unwrap(), 5400);
        assert_eq!(parse_lifetime("45").unwrap(), 45);
        assert!(parse_lifetime("soon").is_err());
        assert!(parse_lifetime("3w").is_err());
    }
}
