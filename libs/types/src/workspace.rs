//! Workspaces for coding agents: a long-lived sandbox where an AI assistant
//! (claude-code, ampcode) works in a prepared directory, the preparation steps that
//! set it up (git clone, scripts, env vars) and the prompts queued to it. Field
//! names and statuses follow the Go original (snake_case); requests reject unknown
//! fields, as every API request does.
//!
//! # Session wire protocol
//!
//! `GET /api/v1/workspaces/{id}/session` upgrades to a WebSocket carrying one JSON
//! object per text message, tagged by `type`:
//!
//! - client → server ([`SessionClientMessage`]):
//!   `{"type":"prompt","prompt":"…","priority":5}` (priority optional, default 5),
//!   `{"type":"cancel","prompt_id":"…"}`.
//! - server → client ([`SessionServerMessage`]):
//!   `{"type":"status","workspace_status":"ready"}`,
//!   `{"type":"prompt_queued","prompt":{…}}`,
//!   `{"type":"output","prompt_id":"…","stream":"stdout","data":"…"}`,
//!   `{"type":"prompt_done","prompt":{…}}`,
//!   `{"type":"error","message":"…"}`.
//!
//! Over 800 lines: the workspace API's shapes and the validation of each, kept beside the fields they check.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use crate::validate::{
    MAX_TOOLS, RESERVED_ENV_NAMES, refuse_reserved_secret_name, validate_tools,
};
use crate::validate::{
    validate_env_var_name, validate_git_branch, validate_git_url, validate_name,
};

/// Where the working directory goes when a request names none.
pub const DEFAULT_WORKING_DIRECTORY: &str = "/workspace";
/// Idle timeout of a workspace whose environment sets none (the original's 30 min).
pub const DEFAULT_IDLE_TIMEOUT_SECONDS: u64 = 1800;
/// The longest idle timeout (a year); 0 means never.
pub const MAX_IDLE_TIMEOUT_SECONDS: u64 = 365 * 24 * 3600;
pub const MAX_DESCRIPTION_LEN: usize = 1024;
pub const MAX_PREP_STEPS: usize = 64;
pub const MAX_SCRIPT_BYTES: usize = 64 * 1024;
pub const MAX_SCRIPT_TIMEOUT_SECONDS: u64 = 1800;
pub const MAX_ENV_VALUE_BYTES: usize = 32 * 1024;
pub const MAX_PROMPT_BYTES: usize = 256 * 1024;
pub const MAX_PROMPT_PRIORITY: u8 = 10;
pub const DEFAULT_PROMPT_PRIORITY: u8 = 5;
pub const MAX_SECRETS: usize = 64;
pub const MAX_SECRET_VALUE_BYTES: usize = 64 * 1024;
/// Stored output of one preparation step; the rest is cut (see [`cap_output`]).
pub const MAX_STEP_OUTPUT_BYTES: usize = 256 * 1024;
/// Stored output of one prompt; the rest is cut (see [`cap_output`]).
pub const MAX_PROMPT_OUTPUT_BYTES: usize = 1024 * 1024;

/// Lifecycle of a workspace: `creating → preparing → ready | failed`, and `stopped`
/// once its idle timeout stopped its sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum WorkspaceStatus {
    Creating,
    Preparing,
    Ready,
    Failed,
    Stopped,
}

impl WorkspaceStatus {
    pub const ALL: [WorkspaceStatus; 5] = [
        WorkspaceStatus::Creating,
        WorkspaceStatus::Preparing,
        WorkspaceStatus::Ready,
        WorkspaceStatus::Failed,
        WorkspaceStatus::Stopped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WorkspaceStatus::Creating => "creating",
            WorkspaceStatus::Preparing => "preparing",
            WorkspaceStatus::Ready => "ready",
            WorkspaceStatus::Failed => "failed",
            WorkspaceStatus::Stopped => "stopped",
        }
    }
}

wire_names!(WorkspaceStatus, "workspace status");

/// The coding agent a workspace runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum AiAssistant {
    #[default]
    #[serde(rename = "claude-code")]
    ClaudeCode,
    #[serde(rename = "ampcode")]
    Ampcode,
}

impl AiAssistant {
    pub const ALL: [AiAssistant; 2] = [AiAssistant::ClaudeCode, AiAssistant::Ampcode];

    pub fn as_str(self) -> &'static str {
        match self {
            AiAssistant::ClaudeCode => "claude-code",
            AiAssistant::Ampcode => "ampcode",
        }
    }
}

wire_names!(AiAssistant, "AI assistant");

/// What a preparation step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum PrepStepType {
    GitClone,
    Script,
    EnvVar,
}

impl PrepStepType {
    pub const ALL: [PrepStepType; 3] = [
        PrepStepType::GitClone,
        PrepStepType::Script,
        PrepStepType::EnvVar,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PrepStepType::GitClone => "git_clone",
            PrepStepType::Script => "script",
            PrepStepType::EnvVar => "env_var",
        }
    }
}

wire_names!(PrepStepType, "preparation step type");

/// One preparation step as requested. Steps run in ascending `order`; `config`
/// depends on the type (see [`PrepStep::spec`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PrepStep {
    #[serde(rename = "type")]
    pub step_type: PrepStepType,
    #[serde(default)]
    pub order: u32,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    #[serde(default)]
    pub config: serde_json::Map<String, serde_json::Value>,
}

/// `git_clone` config: `{url, branch?, directory?, ssh_key_secret?}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitCloneConfig {
    /// `https://`, `http://`, `ssh://`, `git@host:path` or `file://`.
    pub url: String,
    #[serde(default)]
    pub branch: Option<String>,
    /// Where to clone, relative to the working directory or absolute; the
    /// repository's name when omitted.
    #[serde(default)]
    pub directory: Option<String>,
    /// The name of a secret holding the private key for an SSH URL.
    #[serde(default)]
    pub ssh_key_secret: Option<String>,
}

/// `script` config: `{script, timeout_seconds?}` (run by `sh` in the working
/// directory).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptConfig {
    pub script: String,
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
}

/// `env_var` config: `{name, value}` (set for every later step and prompt).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvVarConfig {
    pub name: String,
    pub value: String,
}

/// A preparation step's config, checked and typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrepStepSpec {
    GitClone(GitCloneConfig),
    Script(ScriptConfig),
    EnvVar(EnvVarConfig),
}

impl PrepStep {
    /// The config read for this step's type and checked; the error names the step.
    pub fn spec(&self) -> Result<PrepStepSpec, String> {
        let what = format!("prep step {} ({})", self.order, self.step_type);
        let config = serde_json::Value::Object(self.config.clone());
        let bad_config = |e: serde_json::Error| format!("{what}: invalid config: {e}");
        let spec = match self.step_type {
            PrepStepType::GitClone => {
                PrepStepSpec::GitClone(serde_json::from_value(config).map_err(bad_config)?)
            }
            PrepStepType::Script => {
                PrepStepSpec::Script(serde_json::from_value(config).map_err(bad_config)?)
            }
            PrepStepType::EnvVar => {
                PrepStepSpec::EnvVar(serde_json::from_value(config).map_err(bad_config)?)
            }
        };
        spec.check().map_err(|e| format!("{what}: {e}"))?;
        Ok(spec)
    }

    pub fn validate(&self) -> Result<(), String> {
        self.spec().map(|_| ())
    }
}

impl PrepStepSpec {
    fn check(&self) -> Result<(), String> {
        match self {
            PrepStepSpec::GitClone(c) => {
                validate_git_url("url", &c.url)?;
                if let Some(branch) = &c.branch {
                    validate_git_branch("branch", branch)?;
                }
                if let Some(dir) = &c.directory {
                    validate_directory(dir, "directory")?;
                }
                if let Some(secret) = &c.ssh_key_secret {
                    validate_secret_name(secret).map_err(|e| format!("ssh_key_secret: {e}"))?;
                }
                Ok(())
            }
            PrepStepSpec::Script(c) => {
                if c.script.trim().is_empty() {
                    return Err("script must not be empty".into());
                }
                if c.script.len() > MAX_SCRIPT_BYTES {
                    return Err(format!("script must be at most {MAX_SCRIPT_BYTES} bytes"));
                }
                if c.script.contains('\0') {
                    return Err("script must not contain NUL bytes".into());
                }
                if let Some(t) = c.timeout_seconds
                    && (t == 0 || t > MAX_SCRIPT_TIMEOUT_SECONDS)
                {
                    return Err(format!(
                        "timeout_seconds must be between 1 and {MAX_SCRIPT_TIMEOUT_SECONDS}"
                    ));
                }
                Ok(())
            }
            PrepStepSpec::EnvVar(c) => {
                validate_env_var_name(&c.name)?;
                validate_env_value(&c.name, &c.value)
            }
        }
    }
}

fn validate_directory(dir: &str, what: &str) -> Result<(), String> {
    if dir.is_empty() || dir.len() > 4096 {
        return Err(format!("{what} must be 1 to 4096 characters long"));
    }
    if dir.chars().any(char::is_control) {
        return Err(format!("{what} must not contain control characters"));
    }
    Ok(())
}

fn validate_absolute_dir(dir: &str, what: &str) -> Result<(), String> {
    validate_directory(dir, what)?;
    if !dir.starts_with('/') {
        return Err(format!("{what} {dir:?} must be an absolute path"));
    }
    Ok(())
}

fn validate_env_value(name: &str, value: &str) -> Result<(), String> {
    if value.len() > MAX_ENV_VALUE_BYTES {
        return Err(format!(
            "the value of {name} must be at most {MAX_ENV_VALUE_BYTES} bytes"
        ));
    }
    if value.contains('\0') {
        return Err(format!("the value of {name} must not contain NUL bytes"));
    }
    Ok(())
}

/// A secret's name: 1-128 characters of `[A-Za-z0-9_.-]`, starting with a letter,
/// digit or `_`.
pub fn validate_secret_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if !ok {
        return Err(format!(
            "secret name {name:?} must be 1 to 128 characters of letters, digits, '_', '.' and '-'"
        ));
    }
    refuse_reserved_secret_name(name)
}

/// The kind of a secret given with a workspace (the original's types).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum WorkspaceSecretType {
    ApiKey,
    SshKey,
    Token,
    Password,
    #[default]
    Other,
}

impl WorkspaceSecretType {
    pub const ALL: [WorkspaceSecretType; 5] = [
        WorkspaceSecretType::ApiKey,
        WorkspaceSecretType::SshKey,
        WorkspaceSecretType::Token,
        WorkspaceSecretType::Password,
        WorkspaceSecretType::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WorkspaceSecretType::ApiKey => "api_key",
            WorkspaceSecretType::SshKey => "ssh_key",
            WorkspaceSecretType::Token => "token",
            WorkspaceSecretType::Password => "password",
            WorkspaceSecretType::Other => "other",
        }
    }
}

wire_names!(WorkspaceSecretType, "secret type");

/// A secret handed over when a workspace is created. Its `Debug` hides the value, so
/// that logging a request never leaks it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct WorkspaceSecretInput {
    pub name: String,
    pub value: String,
    #[serde(rename = "type", default)]
    pub secret_type: WorkspaceSecretType,
    #[serde(default)]
    pub description: String,
}

impl std::fmt::Debug for WorkspaceSecretInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkspaceSecretInput")
            .field("name", &self.name)
            .field("value", &"<redacted>")
            .field("secret_type", &self.secret_type)
            .field("description", &self.description)
            .finish()
    }
}

impl WorkspaceSecretInput {
    /// Errors name the secret, never its value.
    pub fn validate(&self) -> Result<(), String> {
        validate_secret_name(&self.name)?;
        if self.value.is_empty() || self.value.len() > MAX_SECRET_VALUE_BYTES {
            return Err(format!(
                "secret {}: value must be 1 to {MAX_SECRET_VALUE_BYTES} bytes",
                self.name
            ));
        }
        if self.value.contains('\0') {
            return Err(format!(
                "secret {}: value must not contain NUL bytes",
                self.name
            ));
        }
        if self.description.len() > MAX_DESCRIPTION_LEN {
            return Err(format!(
                "secret {}: description must be at most {MAX_DESCRIPTION_LEN} bytes",
                self.name
            ));
        }
        Ok(())
    }
}

fn default_working_directory() -> String {
    DEFAULT_WORKING_DIRECTORY.to_string()
}

/// `POST /api/v1/workspaces`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateWorkspaceRequest {
    /// Unique among workspaces.
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$", max_length = 63)
    )]
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// The environment to start from; its settings fill what the request leaves out.
    #[serde(default)]
    pub environment_id: Option<String>,
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 64))]
    #[serde(default)]
    pub vcpus: Option<u32>,
    #[cfg_attr(feature = "openapi", schema(minimum = 128, maximum = 1048576))]
    #[serde(default)]
    pub memory_mb: Option<u64>,
    #[serde(default)]
    pub ai_assistant: AiAssistant,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    #[serde(default)]
    pub ai_assistant_config: serde_json::Map<String, serde_json::Value>,
    #[serde(default = "default_working_directory")]
    pub working_directory: String,
    #[serde(default)]
    pub secrets: Vec<WorkspaceSecretInput>,
    #[serde(default)]
    pub prep_steps: Vec<PrepStep>,
    #[serde(default)]
    pub additional_tools: Vec<String>,
    #[serde(default)]
    pub tool_versions: BTreeMap<String, String>,
}

impl CreateWorkspaceRequest {
    /// A request with just a name; everything else at its default.
    pub fn named(name: &str) -> CreateWorkspaceRequest {
        CreateWorkspaceRequest {
            name: name.to_string(),
            description: String::new(),
            environment_id: None,
            vcpus: None,
            memory_mb: None,
            ai_assistant: AiAssistant::default(),
            ai_assistant_config: serde_json::Map::new(),
            working_directory: default_working_directory(),
            secrets: Vec::new(),
            prep_steps: Vec::new(),
            additional_tools: Vec::new(),
            tool_versions: BTreeMap::new(),
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        validate_name(&self.name)?;
        if self.description.len() > MAX_DESCRIPTION_LEN {
            return Err(format!(
                "description must be at most {MAX_DESCRIPTION_LEN} bytes"
            ));
        }
        if let Some(env) = &self.environment_id
            && (env.is_empty() || env.len() > 128)
        {
            return Err("environment_id must be 1 to 128 characters long".into());
        }
        if let Some(vcpus) = self.vcpus
            && !(1..=64).contains(&vcpus)
        {
            return Err("vcpus must be between 1 and 64".into());
        }
        if let Some(memory) = self.memory_mb
            && !(crate::validate::MIN_MEMORY_MB..=1024 * 1024).contains(&memory)
        {
            return Err(format!(
                "memory_mb must be between {} and 1048576",
                crate::validate::MIN_MEMORY_MB
            ));
        }
        validate_absolute_dir(&self.working_directory, "working_directory")?;
        if self.secrets.len() > MAX_SECRETS {
            return Err(format!("at most {MAX_SECRETS} secrets"));
        }
        let mut secret_names = std::collections::BTreeSet::new();
        for secret in &self.secrets {
            secret.validate()?;
            if !secret_names.insert(secret.name.as_str()) {
                return Err(format!("secret {} is given twice", secret.name));
            }
        }
        if self.prep_steps.len() > MAX_PREP_STEPS {
            return Err(format!("at most {MAX_PREP_STEPS} prep steps"));
        }
        let mut orders = std::collections::BTreeSet::new();
        for step in &self.prep_steps {
            if !orders.insert(step.order) {
                return Err(format!(
                    "two prep steps have order {}: orders must be distinct",
                    step.order
                ));
            }
            // An ssh_key_secret may name a global secret, so it is not matched
            // against this request's secrets here; the service resolves it.
            step.validate()?;
        }
        validate_tools(&self.additional_tools, &self.tool_versions)
    }

    /// The prep steps in the order they run.
    pub fn ordered_prep_steps(&self) -> Vec<PrepStep> {
        let mut steps = self.prep_steps.clone();
        steps.sort_by_key(|s| s.order);
        steps
    }
}

/// A workspace, as stored and as returned by the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Workspace {
    pub id: String,
    pub name: String,
    pub description: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment_id: Option<String>,
    /// The sandbox it runs in, once created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm_id: Option<String>,
    pub status: WorkspaceStatus,
    /// What is happening or what went wrong (a failed step, the idle stop).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_message: Option<String>,
    pub ai_assistant: AiAssistant,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub ai_assistant_config: serde_json::Map<String, serde_json::Value>,
    pub working_directory: String,
    /// Tools installed in it (`name` or `name@version`).
    pub tools: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
    /// A ready workspace without activity for this long is stopped; 0: never.
    pub idle_timeout_seconds: u64,
    pub last_activity_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkspaceList {
    pub workspaces: Vec<Workspace>,
    pub total: u64,
    /// Pass back as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Where a preparation step is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum PrepStepStatus {
    #[default]
    Pending,
    Running,
    Completed,
    Failed,
    /// Not run, because an earlier step failed.
    Skipped,
}

impl PrepStepStatus {
    pub const ALL: [PrepStepStatus; 5] = [
        PrepStepStatus::Pending,
        PrepStepStatus::Running,
        PrepStepStatus::Completed,
        PrepStepStatus::Failed,
        PrepStepStatus::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PrepStepStatus::Pending => "pending",
            PrepStepStatus::Running => "running",
            PrepStepStatus::Completed => "completed",
            PrepStepStatus::Failed => "failed",
            PrepStepStatus::Skipped => "skipped",
        }
    }
}

wire_names!(PrepStepStatus, "preparation step status");

/// One preparation step of a workspace as it ran: status and (capped) output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PrepStepRun {
    pub workspace_id: String,
    pub order: u32,
    #[serde(rename = "type")]
    pub step_type: PrepStepType,
    pub status: PrepStepStatus,
    /// stdout and stderr as they came, at most [`MAX_STEP_OUTPUT_BYTES`].
    pub output: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<DateTime<Utc>>,
}

impl PrepStepRun {
    /// A step not run yet.
    pub fn pending(workspace_id: &str, step: &PrepStep) -> PrepStepRun {
        PrepStepRun {
            workspace_id: workspace_id.to_string(),
            order: step.order,
            step_type: step.step_type,
            status: PrepStepStatus::Pending,
            output: String::new(),
            exit_code: None,
            error: None,
            started_at: None,
            completed_at: None,
        }
    }
}

/// Where a prompt is. Names follow the original.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum PromptStatus {
    #[default]
    Pending,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl PromptStatus {
    pub const ALL: [PromptStatus; 5] = [
        PromptStatus::Pending,
        PromptStatus::Running,
        PromptStatus::Completed,
        PromptStatus::Failed,
        PromptStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PromptStatus::Pending => "pending",
            PromptStatus::Running => "running",
            PromptStatus::Completed => "completed",
            PromptStatus::Failed => "failed",
            PromptStatus::Cancelled => "cancelled",
        }
    }

    pub fn is_finished(self) -> bool {
        matches!(
            self,
            PromptStatus::Completed | PromptStatus::Failed | PromptStatus::Cancelled
        )
    }
}

wire_names!(PromptStatus, "prompt status");

fn default_priority() -> u8 {
    DEFAULT_PROMPT_PRIORITY
}

/// `POST /api/v1/workspaces/{id}/prompts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SubmitPromptRequest {
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 262144))]
    pub prompt: String,
    #[serde(default)]
    pub system_prompt: Option<String>,
    /// The workspace's working directory when omitted.
    #[serde(default)]
    pub working_directory: Option<String>,
    /// Extra environment variables for the agent.
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    /// 0 (lowest) to 10 (highest); higher runs first, then older.
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 10))]
    #[serde(default = "default_priority")]
    pub priority: u8,
}

impl SubmitPromptRequest {
    pub fn new(prompt: &str) -> SubmitPromptRequest {
        SubmitPromptRequest {
            prompt: prompt.to_string(),
            system_prompt: None,
            working_directory: None,
            environment: BTreeMap::new(),
            priority: DEFAULT_PROMPT_PRIORITY,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        validate_prompt_text(&self.prompt, "prompt")?;
        if let Some(system) = &self.system_prompt {
            if system.len() > MAX_PROMPT_BYTES {
                return Err(format!(
                    "system_prompt must be at most {MAX_PROMPT_BYTES} bytes"
                ));
            }
            if system.contains('\0') {
                return Err("system_prompt must not contain NUL bytes".into());
            }
        }
        if let Some(dir) = &self.working_directory {
            validate_absolute_dir(dir, "working_directory")?;
        }
        for (name, value) in &self.environment {
            validate_env_var_name(name)?;
            validate_env_value(name, value)?;
        }
        validate_priority(self.priority)
    }
}

fn validate_prompt_text(text: &str, what: &str) -> Result<(), String> {
    if text.trim().is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    if text.len() > MAX_PROMPT_BYTES {
        return Err(format!("{what} must be at most {MAX_PROMPT_BYTES} bytes"));
    }
    if text.contains('\0') {
        return Err(format!("{what} must not contain NUL bytes"));
    }
    Ok(())
}

fn validate_priority(priority: u8) -> Result<(), String> {
    if priority > MAX_PROMPT_PRIORITY {
        return Err(format!(
            "priority must be between 0 and {MAX_PROMPT_PRIORITY}"
        ));
    }
    Ok(())
}

/// A prompt queued to a workspace's agent, as stored and returned by the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Prompt {
    pub id: String,
    pub workspace_id: String,
    pub prompt: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_directory: Option<String>,
    pub environment: BTreeMap<String, String>,
    pub priority: u8,
    pub status: PromptStatus,
    /// The agent's stdout, at most [`MAX_PROMPT_OUTPUT_BYTES`].
    pub output: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The queue task that runs it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    pub created_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<DateTime<Utc>>,
}

impl Prompt {
    /// A new pending prompt (with a fresh id) from a request.
    pub fn pending(
        workspace_id: &str,
        request: &SubmitPromptRequest,
        now: DateTime<Utc>,
    ) -> Prompt {
        Prompt {
            id: crate::new_id(),
            workspace_id: workspace_id.to_string(),
            prompt: request.prompt.clone(),
            system_prompt: request.system_prompt.clone(),
            working_directory: request.working_directory.clone(),
            environment: request.environment.clone(),
            priority: request.priority,
            status: PromptStatus::Pending,
            output: String::new(),
            error: None,
            exit_code: None,
            task_id: None,
            created_at: now,
            started_at: None,
            completed_at: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PromptList {
    pub prompts: Vec<Prompt>,
    pub total: u64,
}

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum SessionStream {
    Stdout,
    Stderr,
}

/// A message from the client on the session WebSocket (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SessionClientMessage {
    /// Queue a prompt (priority 5 when omitted).
    Prompt {
        prompt: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        priority: Option<u8>,
    },
    /// Cancel a pending or running prompt of this workspace.
    Cancel { prompt_id: String },
}

impl SessionClientMessage {
    pub fn validate(&self) -> Result<(), String> {
        match self {
            SessionClientMessage::Prompt { prompt, priority } => {
                validate_prompt_text(prompt, "prompt")?;
                validate_priority(priority.unwrap_or(DEFAULT_PROMPT_PRIORITY))
            }
            SessionClientMessage::Cancel { prompt_id } => {
                if prompt_id.is_empty() || prompt_id.len() > 128 {
                    return Err("prompt_id must be 1 to 128 characters long".into());
                }
                Ok(())
            }
        }
    }
}

/// A message from the server on the session WebSocket (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SessionServerMessage {
    /// The workspace's status: sent on connect and on every change.
    Status { workspace_status: WorkspaceStatus },
    /// A prompt was queued (by this session or another client).
    PromptQueued { prompt: Prompt },
    /// A chunk of a running prompt's output (secrets already redacted).
    Output {
        prompt_id: String,
        stream: SessionStream,
        data: String,
    },
    /// A prompt finished (completed, failed or cancelled).
    PromptDone { prompt: Prompt },
    /// A message the server could not act on, or a fault; the session stays open.
    Error { message: String },
}

/// `text` as it may be stored: at most `max` bytes (cut at a character boundary,
/// with a note saying so) and without NUL bytes, which PostgreSQL text cannot hold.
pub fn cap_output(text: &str, max: usize) -> String {
    const NOTE: &str = "\n[output truncated]";
    let clean = |s: &str| s.replace('\0', "\u{FFFD}");
    if text.len() <= max {
        return clean(text);
    }
    let mut end = max.saturating_sub(NOTE.len());
    while end > 0 && !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut capped = clean(&text[..end]);
    // U+FFFD is longer than NUL: cut again if replacing grew it past the budget.
    while capped.len() + NOTE.len() > max && !capped.is_empty() {
        capped.pop();
    }
    capped.push_str(NOTE);
    capped
}

#[cfg(test)]
mod tests;
