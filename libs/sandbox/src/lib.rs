//! Sandboxes on one host, and the way to their agents: the backends ([`vmm`]: Docker,
//! QEMU, Firecracker), guest images ([`image`]), host networking and its firewall
//! ([`net`]), the agent client ([`agent_client`]), the cluster tunnel that reaches an
//! agent on another host ([`tunnel`], [`agents`]), and the host's backends as the
//! configuration asks ([`host`]). Knows the store (IP leases, who owns a VM), never
//! the queue or the use cases.

pub mod agent_client;
pub mod agents;
pub mod cluster_tls;
pub mod host;
pub mod identity;
pub mod image;
pub mod net;
pub mod tunnel;
pub mod vmm;

// The store's modules under the names the code has always used.
use aetherium_store as store;
use aetherium_store::error;
