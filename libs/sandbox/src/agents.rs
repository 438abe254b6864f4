//! Which agent serves a VM's direct work (streamed and interactive exec, files):
//! [`AgentRouter`] and its two answers — this process's own worker
//! ([`LocalAgents`]) or the owner's tunnel endpoint ([`RemoteAgents`]) — and what a
//! worker's endpoint opens for an authenticated peer ([`OwnedAgents`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aetherium_types::{Vm, VmStatus, Worker, WorkerStatus};
use async_trait::async_trait;
use chrono::Utc;

use crate::agent_client::AgentClient;
use crate::cluster_tls::ClusterTls;
use crate::error::{CoreError, CoreResult};
use crate::store::Store;
use crate::tunnel::{AgentStream, Refusal, TunnelSecret, TunnelTargets};
use crate::vmm::Backend;

/// Reaches the agent of a VM for direct work (streamed and interactive exec, files),
/// which cannot wait in a queue. Embedded mode reaches it through the local worker's
/// backend ([`LocalAgents`]); distributed mode through the owning worker's tunnel
/// endpoint ([`RemoteAgents`]).
#[async_trait::async_trait]
pub trait AgentRouter: Send + Sync + 'static {
    /// A client of the agent of `vm` (which the caller has found RUNNING), or why it
    /// cannot be reached (`Unavailable` for an owner that is gone, `Conflict` for a
    /// VM with no owner yet). Builds the client only: nothing is connected yet.
    async fn agent_for(&self, vm: &Vm) -> CoreResult<AgentClient>;
}

/// The agents of the sandboxes of the worker in this process.
pub struct LocalAgents {
    pub worker_id: String,
    pub backend: Arc<dyn Backend>,
}

#[async_trait::async_trait]
impl AgentRouter for LocalAgents {
    async fn agent_for(&self, vm: &Vm) -> CoreResult<AgentClient> {
        match vm.worker_id.as_deref() {
            Some(owner) if owner == self.worker_id => Ok(self.backend.agent(&vm.id)),
            Some(owner) => Err(CoreError::Unavailable(format!(
                "VM {} is owned by worker {owner}, which this process cannot reach",
                vm.id
            ))),
            None => Err(CoreError::Conflict(format!(
                "VM {} has not started yet",
                vm.id
            ))),
        }
    }
}

/// A stream to `agent`, or `no-agent` when it does not answer.
async fn open_agent(agent: &AgentClient, vm_id: &str) -> Result<AgentStream, Refusal> {
    agent
        .open_stream()
        .await
        .map_err(|e| Refusal::NoAgent(format!("VM {vm_id}'s agent does not answer: {e}")))
}

/// VMs not in the map are not this worker's.
#[async_trait]
impl TunnelTargets for BTreeMap<String, AgentClient> {
    async fn open(&self, vm_id: &str) -> Result<AgentStream, Refusal> {
        let agent = self
            .get(vm_id)
            .ok_or_else(|| Refusal::NotOwner(format!("VM {vm_id} is not on this worker")))?;
        open_agent(agent, vm_id).await
    }
}

/// A worker's tunnel targets: the RUNNING VMs the store says it owns, reached
/// through its backend ([`Backend::agent`]).
pub struct OwnedAgents {
    pub worker_id: String,
    pub store: Arc<dyn Store>,
    pub backend: Arc<dyn Backend>,
}

#[async_trait]
impl TunnelTargets for OwnedAgents {
    async fn open(&self, vm_id: &str) -> Result<AgentStream, Refusal> {
        let vm = self
            .store
            .get_vm(vm_id)
            .await
            .map_err(|e| Refusal::Unavailable(format!("cannot look the VM up: {e}")))?;
        match vm {
            None => Err(Refusal::NotOwner(format!("no VM {vm_id}"))),
            Some(vm) if vm.worker_id.as_deref() != Some(self.worker_id.as_str()) => Err(
                Refusal::NotOwner(format!("VM {vm_id} is not on worker {}", self.worker_id)),
            ),
            Some(vm) if vm.status != VmStatus::Running => {
                Err(Refusal::NoAgent(format!("VM {vm_id} is {}", vm.status)))
            }
            Some(_) => open_agent(&self.backend.agent(vm_id), vm_id).await,
        }
    }
}

/// Distributed mode's [`AgentRouter`]: a VM of this process's own worker (if it runs
/// one) through its backend, like [`LocalAgents`]; any other VM through the tunnel
/// endpoint its owner advertises ([`Worker::address`], from the store's `workers`
/// table). An owner that is offline, has not heartbeated within `stale_after`, is
/// not registered or advertises no address is refused at once with `Unavailable`
/// (503), never left to hang.
pub struct RemoteAgents {
    /// This process's worker: its VMs are reached directly. `None` in a gateway.
    pub local: Option<LocalAgents>,
    pub store: Arc<dyn Store>,
    /// The cluster's shared tunnel secret (the same in every gateway and worker).
    pub secret: TunnelSecret,
    /// A worker not seen for this long is offline (`PlatformDefaults::worker_stale_after`).
    pub stale_after: Duration,
    /// TLS to the owners' endpoints (their certificates must name them); `None`:
    /// plaintext, by the operator's explicit choice.
    pub tls: Option<ClusterTls>,
}

fn worker_is_live(worker: &Worker, stale_after: Duration) -> bool {
    worker.status != WorkerStatus::Offline
        && Utc::now()
            .signed_duration_since(worker.last_seen)
            .to_std()
            .unwrap_or_default()
            <= stale_after
}

#[async_trait]
impl AgentRouter for RemoteAgents {
    async fn agent_for(&self, vm: &Vm) -> CoreResult<AgentClient> {
        let Some(owner) = vm.worker_id.as_deref() else {
            return Err(CoreError::Conflict(format!(
                "VM {} has not started yet",
                vm.id
            )));
        };
        if let Some(local) = &self.local
            && local.worker_id == owner
        {
            return local.agent_for(vm).await;
        }
        let Some(worker) = self.store.get_worker(owner).await? else {
            return Err(CoreError::Unavailable(format!(
                "VM {} is on worker {owner}, which is not registered: it cannot be reached",
                vm.id
            )));
        };
        if !worker_is_live(&worker, self.stale_after) {
            return Err(CoreError::Unavailable(format!(
                "VM {} is on worker {owner}, which is offline (last seen {}): it cannot be reached",
                vm.id,
                worker
                    .last_seen
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )));
        }
        let address = worker.address.trim();
        if address.is_empty() {
            return Err(CoreError::Unavailable(format!(
                "VM {} is on worker {owner}, which advertises no tunnel address (worker.address): it cannot be reached from here",
                vm.id
            )));
        }
        let client = AgentClient::tunnel(address, vm.id.clone(), self.secret.clone())
            .with_access_token(self.secret.agent_tokens().for_vm(&vm.id));
        Ok(match &self.tls {
            Some(tls) => client.with_tunnel_tls(tls.clone(), owner),
            None => client,
        })
    }
}
