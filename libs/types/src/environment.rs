//! Environments (reusable workspace templates) and secrets, with the Go original's
//! snake_case fields. Requests reject unknown fields; each has a `validate()` whose
//! message says what is wrong and what is allowed.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use crate::validate::{
    MAX_BRANCH_LEN, MAX_ENV_NAME_LEN, MAX_ENV_VALUE_LEN, MAX_ENV_VARS, MAX_TOOLS, MAX_URL_LEN,
    validate_env_var_name, validate_env_vars, validate_git_branch, validate_git_url,
    validate_tool_spec, validate_tools,
};
use crate::validate::{MIN_MEMORY_MB, validate_name};

/// Idle timeout of a new environment when none is given (the original's default).
pub const DEFAULT_IDLE_TIMEOUT_SECONDS: u64 = 1800;
/// Shortest idle timeout (0 means "never idle out").
pub const MIN_IDLE_TIMEOUT_SECONDS: u64 = 60;
/// Longest idle timeout: seven days.
pub const MAX_IDLE_TIMEOUT_SECONDS: u64 = 7 * 24 * 3600;
pub const DEFAULT_WORKING_DIRECTORY: &str = "/workspace";
/// A coding agent plus a language toolchain needs more than a bare sandbox.
pub const DEFAULT_ENVIRONMENT_VCPUS: u32 = 2;
pub const DEFAULT_ENVIRONMENT_MEMORY_MB: u64 = 2048;
pub const MAX_VCPUS: u32 = 64;
pub const MAX_MEMORY_MB: u64 = 1024 * 1024;
pub const MAX_DESCRIPTION_LEN: usize = 1024;
pub const MAX_MCP_SERVERS: usize = 32;
pub const MAX_PATH_LEN: usize = 4096;
/// Largest secret value: 64 KiB (an SSH key or a token fits many times over).
pub const MAX_SECRET_VALUE_LEN: usize = 64 * 1024;

/// A reusable template for workspaces: what to run, which tools to install, what
/// to clone and how long it may sit idle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Environment {
    pub id: String,
    pub name: String,
    pub description: String,
    /// Sandbox image; the configured default when absent.
    pub image: Option<String>,
    pub vcpus: u32,
    pub memory_mb: u64,
    pub git_repo_url: Option<String>,
    /// Branch to check out; the remote's default when absent.
    pub git_branch: Option<String>,
    pub working_directory: String,
    /// Tools to install, each `name` or `name@version`.
    pub tools: Vec<String>,
    pub env_vars: BTreeMap<String, String>,
    pub mcp_servers: Vec<McpServer>,
    /// Seconds without activity before a workspace is stopped; 0: never.
    pub idle_timeout_seconds: u64,
    /// What its workspaces' sandboxes may reach (see `NetworkPolicy`; their
    /// preparation too: allow the git host and tool mirrors it needs). `None`: the
    /// isolated network's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy: Option<crate::NetworkPolicy>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// How an MCP server is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum McpServerType {
    /// A command the agent starts, talking over its stdin/stdout.
    Stdio,
    /// A server at a URL.
    Http,
}

impl McpServerType {
    pub const ALL: [McpServerType; 2] = [McpServerType::Stdio, McpServerType::Http];

    pub fn as_str(self) -> &'static str {
        match self {
            McpServerType::Stdio => "stdio",
            McpServerType::Http => "http",
        }
    }
}

wire_names!(McpServerType, "MCP server type");

/// An MCP server the coding agent is configured with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct McpServer {
    pub name: String,
    #[serde(rename = "type")]
    pub server_type: McpServerType,
    /// `stdio`: the command to start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    /// `http`: the server's URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

impl McpServer {
    pub fn validate(&self) -> Result<(), String> {
        validate_name(&self.name).map_err(|e| format!("mcp server {e}"))?;
        let what = format!("mcp server {:?}", self.name);
        match self.server_type {
            McpServerType::Stdio => {
                let command = self.command.as_deref().unwrap_or("");
                if command.trim().is_empty() {
                    return Err(format!("{what}: type stdio needs a command"));
                }
                if command.contains('\0') || self.args.iter().any(|a| a.contains('\0')) {
                    return Err(format!(
                        "{what}: command and args must not contain NUL bytes"
                    ));
                }
            }
            McpServerType::Http => {
                let url = self.url.as_deref().unwrap_or("");
                if !(url.starts_with("https://") || url.starts_with("http://"))
                    || url.len() > MAX_URL_LEN
                    || url.chars().any(|c| c.is_whitespace() || c.is_control())
                {
                    return Err(format!(
                        "{what}: type http needs a url starting with https:// or http://"
                    ));
                }
            }
        }
        for (key, value) in &self.headers {
            if key.is_empty()
                || !key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
            {
                return Err(format!("{what}: invalid header name {key:?}"));
            }
            if value.contains(['\r', '\n', '\0']) {
                return Err(format!(
                    "{what}: header {key:?} must not contain line breaks or NUL"
                ));
            }
        }
        validate_env_vars(&self.env).map_err(|e| format!("{what}: {e}"))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateEnvironmentRequest {
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$", max_length = 63)
    )]
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[cfg_attr(feature = "openapi", schema(pattern = r"^[!-~]{1,255}$"))]
    #[serde(default)]
    pub image: Option<String>,
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 64))]
    #[serde(default = "default_vcpus")]
    pub vcpus: u32,
    #[cfg_attr(feature = "openapi", schema(minimum = 128, maximum = 1048576))]
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u64,
    #[serde(default)]
    pub git_repo_url: Option<String>,
    #[serde(default)]
    pub git_branch: Option<String>,
    #[serde(default = "default_working_directory")]
    pub working_directory: String,
    #[serde(default)]
    pub tools: Vec<String>,
    #[serde(default)]
    pub env_vars: BTreeMap<String, String>,
    #[serde(default)]
    pub mcp_servers: Vec<McpServer>,
    /// 0 (never) or 60 to 604800 seconds.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_seconds: u64,
    /// What its workspaces' sandboxes may reach; none: the network's defaults.
    #[serde(default, deserialize_with = "crate::validate::object_only")]
    pub network_policy: Option<crate::NetworkPolicy>,
}

fn default_vcpus() -> u32 {
    DEFAULT_ENVIRONMENT_VCPUS
}

fn default_memory_mb() -> u64 {
    DEFAULT_ENVIRONMENT_MEMORY_MB
}

fn default_working_directory() -> String {
    DEFAULT_WORKING_DIRECTORY.to_string()
}

fn default_idle_timeout() -> u64 {
    DEFAULT_IDLE_TIMEOUT_SECONDS
}

impl CreateEnvironmentRequest {
    /// A request with only a name: every other field at its default.
    pub fn named(name: &str) -> CreateEnvironmentRequest {
        CreateEnvironmentRequest {
            name: name.to_string(),
            description: String::new(),
            image: None,
            vcpus: DEFAULT_ENVIRONMENT_VCPUS,
            memory_mb: DEFAULT_ENVIRONMENT_MEMORY_MB,
            git_repo_url: None,
            git_branch: None,
            working_directory: DEFAULT_WORKING_DIRECTORY.to_string(),
            tools: Vec::new(),
            env_vars: BTreeMap::new(),
            mcp_servers: Vec::new(),
            idle_timeout_seconds: DEFAULT_IDLE_TIMEOUT_SECONDS,
            network_policy: None,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        validate_name(&self.name)?;
        validate_description(&self.description)?;
        if let Some(image) = &self.image {
            validate_image(image)?;
        }
        validate_size(self.vcpus, self.memory_mb)?;
        if let Some(url) = &self.git_repo_url {
            validate_git_url("git_repo_url", url)?;
        }
        if let Some(branch) = &self.git_branch {
            validate_git_branch("git_branch", branch)?;
        }
        validate_working_directory(&self.working_directory)?;
        validate_tools(&self.tools, &BTreeMap::new())?;
        validate_env_vars(&self.env_vars)?;
        validate_mcp_servers(&self.mcp_servers)?;
        if let Some(policy) = &self.network_policy {
            policy.normalized()?;
        }
        validate_idle_timeout(self.idle_timeout_seconds)
    }

    /// The environment this request describes (call [`Self::validate`] first).
    pub fn into_environment(self, id: String, now: DateTime<Utc>) -> Environment {
        Environment {
            id,
            name: self.name,
            description: self.description,
            image: self.image,
            vcpus: self.vcpus,
            memory_mb: self.memory_mb,
            git_repo_url: self.git_repo_url,
            git_branch: self.git_branch,
            working_directory: self.working_directory,
            tools: self.tools,
            env_vars: self.env_vars,
            mcp_servers: self.mcp_servers,
            idle_timeout_seconds: self.idle_timeout_seconds,
            network_policy: policy_or_defaults(self.network_policy),
            created_at: now,
            updated_at: now,
        }
    }
}

/// A policy in CIDR form, or `None` for one that is the network's defaults (or not
/// valid: call `validate` first).
fn policy_or_defaults(policy: Option<crate::NetworkPolicy>) -> Option<crate::NetworkPolicy> {
    policy
        .filter(|p| *p != crate::NetworkPolicy::default())
        .and_then(|p| p.normalized().ok())
}

/// Changes to an environment: absent fields stay as they are. For `image`,
/// `git_repo_url` and `git_branch`, an empty string clears the value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UpdateEnvironmentRequest {
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$", max_length = 63)
    )]
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub image: Option<String>,
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 64))]
    #[serde(default)]
    pub vcpus: Option<u32>,
    #[cfg_attr(feature = "openapi", schema(minimum = 128, maximum = 1048576))]
    #[serde(default)]
    pub memory_mb: Option<u64>,
    #[serde(default)]
    pub git_repo_url: Option<String>,
    #[serde(default)]
    pub git_branch: Option<String>,
    #[serde(default)]
    pub working_directory: Option<String>,
    #[serde(default)]
    pub tools: Option<Vec<String>>,
    #[serde(default)]
    pub env_vars: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub mcp_servers: Option<Vec<McpServer>>,
    #[serde(default)]
    pub idle_timeout_seconds: Option<u64>,
    /// A new policy for its workspaces' sandboxes made from now on; `{}`: the
    /// network's defaults.
    #[serde(default, deserialize_with = "crate::validate::object_only")]
    pub network_policy: Option<crate::NetworkPolicy>,
}

impl UpdateEnvironmentRequest {
    pub fn validate(&self) -> Result<(), String> {
        if let Some(name) = &self.name {
            validate_name(name)?;
        }
        if let Some(d) = &self.description {
            validate_description(d)?;
        }
        if let Some(image) = self.image.as_deref().filter(|i| !i.is_empty()) {
            validate_image(image)?;
        }
        if let Some(v) = self.vcpus {
            validate_size(v, MIN_MEMORY_MB)?;
        }
        if let Some(m) = self.memory_mb {
            validate_size(1, m)?;
        }
        if let Some(url) = self.git_repo_url.as_deref().filter(|u| !u.is_empty()) {
            validate_git_url("git_repo_url", url)?;
        }
        if let Some(branch) = self.git_branch.as_deref().filter(|b| !b.is_empty()) {
            validate_git_branch("git_branch", branch)?;
        }
        if let Some(dir) = &self.working_directory {
            validate_working_directory(dir)?;
        }
        if let Some(tools) = &self.tools {
            validate_tools(tools, &BTreeMap::new())?;
        }
        if let Some(vars) = &self.env_vars {
            validate_env_vars(vars)?;
        }
        if let Some(servers) = &self.mcp_servers {
            validate_mcp_servers(servers)?;
        }
        if let Some(t) = self.idle_timeout_seconds {
            validate_idle_timeout(t)?;
        }
        if let Some(policy) = &self.network_policy {
            policy.normalized()?;
        }
        Ok(())
    }

    /// Applies the changes to `env` (call [`Self::validate`] first) and stamps
    /// `updated_at`.
    pub fn apply_to(self, env: &mut Environment, now: DateTime<Utc>) {
        let clearable = |v: String| (!v.is_empty()).then_some(v);
        if let Some(v) = self.name {
            env.name = v;
        }
        if let Some(v) = self.description {
            env.description = v;
        }
        if let Some(v) = self.image {
            env.image = clearable(v);
        }
        if let Some(v) = self.vcpus {
            env.vcpus = v;
        }
        if let Some(v) = self.memory_mb {
            env.memory_mb = v;
        }
        if let Some(v) = self.git_repo_url {
            env.git_repo_url = clearable(v);
        }
        if let Some(v) = self.git_branch {
            env.git_branch = clearable(v);
        }
        if let Some(v) = self.working_directory {
            env.working_directory = v;
        }
        if let Some(v) = self.tools {
            env.tools = v;
        }
        if let Some(v) = self.env_vars {
            env.env_vars = v;
        }
        if let Some(policy) = self.network_policy {
            env.network_policy = policy_or_defaults(Some(policy));
        }
        if let Some(v) = self.mcp_servers {
            env.mcp_servers = v;
        }
        if let Some(v) = self.idle_timeout_seconds {
            env.idle_timeout_seconds = v;
        }
        env.updated_at = now;
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnvironmentList {
    pub environments: Vec<Environment>,
    pub total: u64,
    /// Pass as `?cursor=` for the next page; `null` on the last page.
    #[serde(default)]
    pub next_cursor: Option<String>,
}

fn validate_description(description: &str) -> Result<(), String> {
    if description.len() > MAX_DESCRIPTION_LEN {
        return Err(format!(
            "description must be at most {MAX_DESCRIPTION_LEN} bytes"
        ));
    }
    Ok(())
}

fn validate_image(image: &str) -> Result<(), String> {
    crate::validate::validate_image_reference(image)
}

/// The same bounds as a VM's.
fn validate_size(vcpus: u32, memory_mb: u64) -> Result<(), String> {
    if !(1..=MAX_VCPUS).contains(&vcpus) {
        return Err(format!("vcpus must be between 1 and {MAX_VCPUS}"));
    }
    if !(MIN_MEMORY_MB..=MAX_MEMORY_MB).contains(&memory_mb) {
        return Err(format!(
            "memory_mb must be between {MIN_MEMORY_MB} and {MAX_MEMORY_MB}"
        ));
    }
    Ok(())
}

/// An absolute path without `..` components.
pub fn validate_working_directory(dir: &str) -> Result<(), String> {
    if !dir.starts_with('/') || dir.len() > MAX_PATH_LEN {
        return Err(format!(
            "working_directory must be an absolute path (like {DEFAULT_WORKING_DIRECTORY}) of at most {MAX_PATH_LEN} bytes"
        ));
    }
    if dir.contains('\0') || dir.chars().any(char::is_control) {
        return Err("working_directory must not contain control characters".into());
    }
    if dir.split('/').any(|part| part == "..") {
        return Err("working_directory must not contain '..'".into());
    }
    Ok(())
}

fn validate_mcp_servers(servers: &[McpServer]) -> Result<(), String> {
    if servers.len() > MAX_MCP_SERVERS {
        return Err(format!("at most {MAX_MCP_SERVERS} mcp servers"));
    }
    let mut seen = std::collections::BTreeSet::new();
    for server in servers {
        server.validate()?;
        if !seen.insert(server.name.as_str()) {
            return Err(format!("mcp server {:?} is listed twice", server.name));
        }
    }
    Ok(())
}

pub fn validate_idle_timeout(seconds: u64) -> Result<(), String> {
    if seconds != 0 && !(MIN_IDLE_TIMEOUT_SECONDS..=MAX_IDLE_TIMEOUT_SECONDS).contains(&seconds) {
        return Err(format!(
            "idle_timeout_seconds must be 0 (never) or between {MIN_IDLE_TIMEOUT_SECONDS} and {MAX_IDLE_TIMEOUT_SECONDS}"
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// Secrets

/// What a secret is (informational, and `ssh_key` tells git clones to use it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum SecretType {
    ApiKey,
    SshKey,
    Token,
    Password,
    #[default]
    Other,
}

impl SecretType {
    pub const ALL: [SecretType; 5] = [
        SecretType::ApiKey,
        SecretType::SshKey,
        SecretType::Token,
        SecretType::Password,
        SecretType::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SecretType::ApiKey => "api_key",
            SecretType::SshKey => "ssh_key",
            SecretType::Token => "token",
            SecretType::Password => "password",
            SecretType::Other => "other",
        }
    }
}

wire_names!(SecretType, "secret type");

/// Who sees a secret: one workspace, or every workspace (a workspace's own secret
/// wins over a global one of the same name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum SecretScope {
    #[default]
    Workspace,
    Global,
}

impl SecretScope {
    pub const ALL: [SecretScope; 2] = [SecretScope::Workspace, SecretScope::Global];

    pub fn as_str(self) -> &'static str {
        match self {
            SecretScope::Workspace => "workspace",
            SecretScope::Global => "global",
        }
    }
}

wire_names!(SecretScope, "secret scope");

/// Adds (or replaces, by name) a secret. Its name is the environment variable it
/// is injected as. The value is never returned nor printed: `Debug` hides it.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AddSecretRequest {
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$", max_length = 255)
    )]
    pub name: String,
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 65536))]
    pub value: String,
    #[serde(rename = "type", default)]
    pub secret_type: SecretType,
    #[serde(default)]
    pub description: String,
    /// Left out: the route's own scope (`/secrets` global, a workspace's its own).
    #[serde(default)]
    pub scope: Option<SecretScope>,
}

impl std::fmt::Debug for AddSecretRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddSecretRequest")
            .field("name", &self.name)
            .field("value", &"<redacted>")
            .field("type", &self.secret_type)
            .field("description", &self.description)
            .field("scope", &self.scope)
            .finish()
    }
}

impl AddSecretRequest {
    /// Messages never quote the value.
    pub fn validate(&self) -> Result<(), String> {
        validate_env_var_name(&self.name).map_err(|e| format!("secret name {e}"))?;
        crate::validate::refuse_reserved_secret_name(&self.name)?;
        if self.value.is_empty() || self.value.len() > MAX_SECRET_VALUE_LEN {
            return Err(format!(
                "secret value must be 1 to {MAX_SECRET_VALUE_LEN} bytes"
            ));
        }
        if self.value.contains('\0') {
            return Err(
                "secret value must not contain NUL bytes (it becomes an environment variable)"
                    .into(),
            );
        }
        validate_description(&self.description)
    }
}

/// A secret's metadata as stored and listed: never its value nor its ciphertext.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Secret {
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub secret_type: SecretType,
    pub description: String,
    pub scope: SecretScope,
    /// The owning workspace; absent for global secrets.
    pub workspace_id: Option<String>,
    /// Which encryption key sealed the value (changes when keys are rotated).
    pub key_id: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SecretList {
    pub secrets: Vec<Secret>,
}

#[cfg(test)]
mod tests;
