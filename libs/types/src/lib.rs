//! Aetherium's shared vocabulary: domain models, API shapes, events and the agent
//! protocol messages. This crate does no I/O and holds no business logic, so every
//! other crate (including the in-sandbox agent) can depend on it cheaply.

/// `Display` and `FromStr` for an enum with `ALL` and `as_str`: its wire names,
/// parsed case-insensitively (so `?status=running` works as well as `RUNNING`).
macro_rules! wire_names {
    ($ty:ty, $what:literal) => {
        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                <$ty>::ALL
                    .into_iter()
                    .find(|v| v.as_str().eq_ignore_ascii_case(s))
                    .ok_or_else(|| format!(concat!("unknown ", $what, " {:?}"), s))
            }
        }
    };
}

pub mod agent;
pub mod api;
pub mod auth;
pub mod environment;
pub mod event;
pub mod execution;
pub mod logs;
pub mod task;
pub mod validate;
pub mod vm;
pub mod worker;
pub mod workspace;

pub use api::*;
pub use auth::{
    ApiKey, ApiKeyList, AuditEntry, AuditList, CreateApiKeyRequest, CreateApiKeyResponse,
    CreateUserRequest, KeyQuota, LoginRequest, LoginResponse, Principal, PrincipalKind, Role,
    UpdateApiKeyRequest, UpdateUserRequest, User, UserList, WhoAmI,
};
pub use environment::{
    AddSecretRequest, CreateEnvironmentRequest, Environment, EnvironmentList, McpServer,
    McpServerType, Secret, SecretList, SecretScope, SecretType, UpdateEnvironmentRequest,
};
pub use event::{Event, EventFilter, EventType};
pub use execution::{Execution, ExecutionStatus};
pub use task::{QueueCounts, QueueStats, Task, TaskStatus, TaskType};
pub use vm::{Egress, NameVerdict, NetworkPolicy, Orchestrator, Vm, VmNetwork, VmStatus};
pub use worker::{
    ClusterDistribution, ClusterStats, Placement, Worker, WorkerCounts, WorkerDistribution,
    WorkerList, WorkerStatus, WorkerUsage, WorkerView, ZoneDistribution,
};
pub use workspace::{
    AiAssistant, CreateWorkspaceRequest, PrepStep, PrepStepRun, PrepStepStatus, PrepStepType,
    Prompt, PromptList, PromptStatus, SessionClientMessage, SessionServerMessage, SessionStream,
    SubmitPromptRequest, Workspace, WorkspaceList, WorkspaceSecretInput, WorkspaceSecretType,
    WorkspaceStatus,
};

/// A new random identifier, as used for every resource (UUID v4, hyphenated).
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}
