//! Sandbox backends. Each one creates, inspects and removes sandboxes and tells the
//! worker how to reach the agent inside. Docker now; Firecracker and QEMU next.

pub mod docker;

use std::path::PathBuf;

use aetherium_types::Orchestrator;
use async_trait::async_trait;
use futures::stream::BoxStream;

use crate::agent_client::AgentClient;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxSpec {
    pub vm_id: String,
    pub name: String,
    pub image: String,
    pub vcpus: u32,
    pub memory_mb: u64,
}

/// What a backend reports about one sandbox it owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SandboxState {
    Running,
    /// Created or restarting: not serving yet.
    Starting,
    Paused,
    Exited {
        exit_code: i64,
        oom_killed: bool,
    },
    /// The backend has no such sandbox.
    Missing,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxInfo {
    pub vm_id: String,
    pub state: SandboxState,
}

/// A sandbox that stopped on its own (observed by [`Backend::watch_exits`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxExit {
    pub vm_id: String,
    pub exit_code: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The backend itself does not answer (engine down, socket missing). Retryable.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// The request cannot succeed as asked (e.g. unknown image). Not retryable.
    #[error("{0}")]
    Rejected(String),
    #[error("backend error: {0}")]
    Other(String),
}

impl BackendError {
    pub fn is_retryable(&self) -> bool {
        !matches!(self, BackendError::Rejected(_))
    }
}

#[async_trait]
pub trait Backend: Send + Sync + 'static {
    fn kind(&self) -> Orchestrator;

    /// Whether the backend answers at all.
    async fn ping(&self) -> Result<(), BackendError>;

    /// Creates and starts a sandbox running the agent. Leaves nothing behind on error.
    async fn create(&self, spec: &SandboxSpec) -> Result<(), BackendError>;

    /// Removes a sandbox and everything made for it. Absent sandboxes are fine.
    async fn delete(&self, vm_id: &str) -> Result<(), BackendError>;

    async fn status(&self, vm_id: &str) -> Result<SandboxState, BackendError>;

    /// Every sandbox this worker owns, per the backend (not the database).
    async fn list(&self) -> Result<Vec<SandboxInfo>, BackendError>;

    /// Sandboxes of this worker that exit on their own, as they exit. Ends when the
    /// backend connection drops; the caller reconciles and watches again.
    fn watch_exits(&self) -> BoxStream<'static, Result<SandboxExit, BackendError>>;

    /// The host-side path of the sandbox's agent socket.
    fn agent_socket(&self, vm_id: &str) -> PathBuf;

    fn agent(&self, vm_id: &str) -> AgentClient {
        AgentClient::unix(self.agent_socket(vm_id))
    }
}
