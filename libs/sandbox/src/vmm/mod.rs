//! Sandbox backends. Each one creates, inspects and removes sandboxes and tells the
//! worker how to reach the agent inside: Docker containers, and microVMs under
//! Firecracker or QEMU (which share [`vmproc`] for their VMM processes).

pub mod cgroup;
pub mod docker;
pub mod firecracker;
pub mod multi;
pub mod qemu;
pub mod qmp;
pub mod vmproc;

use std::path::{Path, PathBuf};

use aetherium_types::Orchestrator;
use async_trait::async_trait;
use futures::stream::BoxStream;

use crate::agent_client::AgentClient;
pub use crate::net::GuestNetwork;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxSpec {
    pub vm_id: String,
    /// Which backend runs it (a worker may run several: see [`multi::Backends`]).
    pub orchestrator: Orchestrator,
    pub name: String,
    pub image: String,
    pub vcpus: u32,
    pub memory_mb: u64,
    /// What the sandbox may write to its filesystem, in MiB (containers; `None`:
    /// unlimited).
    pub disk_mb: Option<u64>,
    /// What the sandbox may reach besides its network's defaults (containers on the
    /// isolated network), in CIDR form.
    pub network_policy: Option<aetherium_types::NetworkPolicy>,
    /// The guest's network, made by the worker before `create` (microVM backends
    /// attach the TAP device; Docker uses its own networking). `None`: no network.
    pub network: Option<GuestNetwork>,
    /// The token the sandbox's agent will require (`X-Access-Token`). Backends that
    /// can hand it over at start do (Docker); microVM agents get it through
    /// [`AgentClient::claim`] once they answer. [`multi::Backends`] fills it in.
    pub access_token: Option<String>,
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
        /// Set when the sandbox was stopped for going over one of its limits.
        killed_for: Option<Limit>,
    },
    /// The backend has no such sandbox.
    Missing,
}

/// A limit a sandbox can be stopped for exceeding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Memory,
    /// Its disk quota (`SandboxSpec::disk_mb`).
    Disk,
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
    /// The backend cannot do this at all (e.g. snapshots under QEMU). Not retryable.
    #[error("{0}")]
    Unsupported(String),
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
        !matches!(
            self,
            BackendError::Rejected(_) | BackendError::Unsupported(_)
        )
    }
}

#[async_trait]
pub trait Backend: Send + Sync + 'static {
    fn kind(&self) -> Orchestrator;

    /// Every kind of sandbox this backend can run (several for [`multi::Backends`]).
    fn kinds(&self) -> Vec<Orchestrator> {
        vec![self.kind()]
    }

    /// How long a new sandbox may take until its agent answers (microVMs boot a
    /// kernel first; under QEMU's software emulation that takes seconds).
    fn boot_timeout(&self, vm_id: &str) -> Option<std::time::Duration> {
        let _ = vm_id;
        None
    }

    /// What to quote when a sandbox fails to come up: the last lines of its VMM log
    /// and guest console. Read before `delete` removes them.
    fn failure_context(&self, vm_id: &str) -> Option<String> {
        let _ = vm_id;
        None
    }

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

    /// Freezes the sandbox's vCPUs (its memory stays). Backends that cannot answer
    /// [`BackendError::Unsupported`].
    async fn pause(&self, vm_id: &str) -> Result<(), BackendError> {
        let _ = vm_id;
        Err(BackendError::Unsupported(format!(
            "the {} backend cannot pause sandboxes",
            self.kind()
        )))
    }

    async fn resume(&self, vm_id: &str) -> Result<(), BackendError> {
        let _ = vm_id;
        Err(BackendError::Unsupported(format!(
            "the {} backend cannot resume sandboxes",
            self.kind()
        )))
    }

    /// Puts `policy` in place of the sandbox's current network policy (`None`: the
    /// network's defaults), at once, for new and existing connections.
    async fn set_network_policy(
        &self,
        vm_id: &str,
        policy: Option<&aetherium_types::NetworkPolicy>,
    ) -> Result<(), BackendError> {
        let _ = (vm_id, policy);
        Err(BackendError::Unsupported(format!(
            "the {} backend has no network policies",
            self.kind()
        )))
    }

    /// Writes a snapshot of a paused sandbox (VM state and memory) into `dir`.
    async fn snapshot(&self, vm_id: &str, dir: &Path) -> Result<(), BackendError> {
        let _ = (vm_id, dir);
        Err(BackendError::Unsupported(format!(
            "the {} backend cannot snapshot sandboxes",
            self.kind()
        )))
    }
}
