//! One worker, several backends: Docker containers beside Firecracker or QEMU
//! microVMs. [`Backends`] is itself a [`Backend`] so that the worker stays unaware:
//! a new sandbox goes to the backend its spec names, and every later call for that
//! sandbox to the backend that has it (remembered, and found again after a restart by
//! asking each backend).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use aetherium_types::Orchestrator;
use async_trait::async_trait;
use futures::StreamExt as _;
use futures::stream::BoxStream;

use super::{Backend, BackendError, SandboxExit, SandboxInfo, SandboxSpec, SandboxState};
use crate::agent_client::AgentClient;
use crate::identity::AgentTokens;

pub struct Backends {
    default: Orchestrator,
    /// Grows when a backend whose probe takes time turns out to work ([`Backends::add`]).
    backends: RwLock<BTreeMap<Orchestrator, Arc<dyn Backend>>>,
    /// Which backend has which sandbox, as far as this process has seen.
    placed: RwLock<HashMap<String, Orchestrator>>,
    /// Bumped by [`Backends::add`], so that the exit watch restarts with the newcomer.
    generation: tokio::sync::watch::Sender<u64>,
    /// Each sandbox's agent token: handed to new sandboxes, sent on every call.
    tokens: Option<AgentTokens>,
}

impl Backends {
    /// `default` must be one of `backends` (it answers `kind()`).
    pub fn new(default: Orchestrator, backends: Vec<Arc<dyn Backend>>) -> Backends {
        Backends {
            default,
            backends: RwLock::new(backends.into_iter().map(|b| (b.kind(), b)).collect()),
            placed: RwLock::new(HashMap::new()),
            generation: tokio::sync::watch::Sender::new(0),
            tokens: None,
        }
    }

    /// Every sandbox made from now on requires its token from `tokens`, and every
    /// agent client carries it.
    pub fn with_agent_tokens(mut self, tokens: AgentTokens) -> Backends {
        self.tokens = Some(tokens);
        self
    }

    pub fn get(&self, kind: Orchestrator) -> Option<Arc<dyn Backend>> {
        self.backends.read().ok()?.get(&kind).cloned()
    }

    /// Offers one more backend (replacing one of the same kind).
    pub fn add(&self, backend: Arc<dyn Backend>) {
        if let Ok(mut backends) = self.backends.write() {
            backends.insert(backend.kind(), backend);
        }
        self.generation.send_modify(|g| *g += 1);
    }

    fn all(&self) -> Vec<(Orchestrator, Arc<dyn Backend>)> {
        self.backends
            .read()
            .map(|b| b.iter().map(|(k, v)| (*k, v.clone())).collect())
            .unwrap_or_default()
    }

    fn remember(&self, vm_id: &str, kind: Orchestrator) {
        if let Ok(mut placed) = self.placed.write() {
            placed.insert(vm_id.to_string(), kind);
        }
    }

    fn forget(&self, vm_id: &str) {
        if let Ok(mut placed) = self.placed.write() {
            placed.remove(vm_id);
        }
    }

    fn remembered(&self, vm_id: &str) -> Option<Arc<dyn Backend>> {
        let kind = *self.placed.read().ok()?.get(vm_id)?;
        self.get(kind)
    }

    /// The backend that has the sandbox: remembered, else the first that knows it.
    async fn owner(&self, vm_id: &str) -> Result<Option<Arc<dyn Backend>>, BackendError> {
        if let Some(backend) = self.remembered(vm_id) {
            return Ok(Some(backend));
        }
        for (kind, backend) in self.all() {
            if backend.status(vm_id).await? != SandboxState::Missing {
                self.remember(vm_id, kind);
                return Ok(Some(backend));
            }
        }
        Ok(None)
    }

    /// The backend for a synchronous call: remembered, else the one whose agent socket
    /// exists on disk, else the default.
    fn owner_now(&self, vm_id: &str) -> Arc<dyn Backend> {
        if let Some(backend) = self.remembered(vm_id) {
            return backend;
        }
        let all = self.all();
        all.iter()
            .find(|(_, b)| b.agent_socket(vm_id).exists())
            .or_else(|| all.iter().find(|(k, _)| *k == self.default))
            .or_else(|| all.first())
            .map(|(_, b)| b.clone())
            .expect("Backends holds at least one backend")
    }

    async fn require_owner(&self, vm_id: &str) -> Result<Arc<dyn Backend>, BackendError> {
        self.owner(vm_id)
            .await?
            .ok_or_else(|| BackendError::Rejected(format!("no sandbox {vm_id} on this worker")))
    }
}

#[async_trait]
impl Backend for Backends {
    fn kind(&self) -> Orchestrator {
        self.default
    }

    fn kinds(&self) -> Vec<Orchestrator> {
        self.all().into_iter().map(|(kind, _)| kind).collect()
    }

    fn boot_timeout(&self, vm_id: &str) -> Option<Duration> {
        self.owner_now(vm_id).boot_timeout(vm_id)
    }

    /// Healthy when every backend answers (a broken one is named).
    async fn ping(&self) -> Result<(), BackendError> {
        let mut broken = Vec::new();
        for (kind, backend) in self.all() {
            if let Err(e) = backend.ping().await {
                broken.push(format!("{kind}: {e}"));
            }
        }
        if broken.is_empty() {
            Ok(())
        } else {
            Err(BackendError::Unavailable(broken.join("; ")))
        }
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<(), BackendError> {
        let backend = self.get(spec.orchestrator).ok_or_else(|| {
            BackendError::Rejected(format!(
                "this worker does not run {} sandboxes",
                spec.orchestrator
            ))
        })?;
        self.remember(&spec.vm_id, spec.orchestrator);
        let mut spec = spec.clone();
        if let Some(tokens) = &self.tokens {
            spec.access_token = Some(tokens.for_vm(&spec.vm_id));
        }
        let created = backend.create(&spec).await;
        if created.is_err() {
            self.forget(&spec.vm_id);
        }
        created
    }

    async fn delete(&self, vm_id: &str) -> Result<(), BackendError> {
        match self.remembered(vm_id) {
            Some(backend) => backend.delete(vm_id).await?,
            // Not seen by this process: whichever backend has it removes it.
            None => {
                for (_, backend) in self.all() {
                    backend.delete(vm_id).await?;
                }
            }
        }
        self.forget(vm_id);
        Ok(())
    }

    async fn status(&self, vm_id: &str) -> Result<SandboxState, BackendError> {
        match self.owner(vm_id).await? {
            Some(backend) => backend.status(vm_id).await,
            None => Ok(SandboxState::Missing),
        }
    }

    async fn list(&self) -> Result<Vec<SandboxInfo>, BackendError> {
        let mut all = Vec::new();
        for (kind, backend) in self.all() {
            for sandbox in backend.list().await? {
                self.remember(&sandbox.vm_id, kind);
                all.push(sandbox);
            }
        }
        Ok(all)
    }

    /// Exits of every backend; ends when any backend's stream ends, so that the
    /// worker reconciles and watches them all again.
    fn watch_exits(&self) -> BoxStream<'static, Result<SandboxExit, BackendError>> {
        let mut added = self.generation.subscribe();
        added.mark_unchanged();
        let grown = futures::stream::once(async move {
            let _ = added.changed().await;
            Err(ended())
        })
        .boxed();
        let streams: Vec<_> = self
            .all()
            .into_iter()
            .map(|(_, b)| {
                b.watch_exits()
                    .chain(futures::stream::iter([Err(ended())]))
                    .boxed()
            })
            .chain([grown])
            .collect();
        let merged = futures::stream::select_all(streams);
        // Stop at the first end-of-stream marker.
        merged
            .scan(false, |done, item| {
                if *done {
                    return std::future::ready(None);
                }
                if matches!(&item, Err(BackendError::Other(m)) if m == ENDED) {
                    *done = true;
                }
                std::future::ready(Some(item))
            })
            .boxed()
    }

    fn failure_context(&self, vm_id: &str) -> Option<String> {
        self.owner_now(vm_id).failure_context(vm_id)
    }

    fn agent_socket(&self, vm_id: &str) -> PathBuf {
        self.owner_now(vm_id).agent_socket(vm_id)
    }

    fn agent(&self, vm_id: &str) -> AgentClient {
        let agent = self.owner_now(vm_id).agent(vm_id);
        match &self.tokens {
            Some(tokens) => agent.with_access_token(tokens.for_vm(vm_id)),
            None => agent,
        }
    }

    async fn pause(&self, vm_id: &str) -> Result<(), BackendError> {
        self.require_owner(vm_id).await?.pause(vm_id).await
    }

    async fn resume(&self, vm_id: &str) -> Result<(), BackendError> {
        self.require_owner(vm_id).await?.resume(vm_id).await
    }

    async fn snapshot(&self, vm_id: &str, dir: &Path) -> Result<(), BackendError> {
        self.require_owner(vm_id).await?.snapshot(vm_id, dir).await
    }

    async fn set_network_policy(
        &self,
        vm_id: &str,
        policy: Option<&aetherium_types::NetworkPolicy>,
    ) -> Result<(), BackendError> {
        self.require_owner(vm_id)
            .await?
            .set_network_policy(vm_id, policy)
            .await
    }
}

const ENDED: &str = "a backend's exit stream ended";

fn ended() -> BackendError {
    BackendError::Other(ENDED.into())
}
