//! Aetherium's core: the use cases ([`services::Platform`]) that the gateway calls,
//! placement across workers ([`services::cluster`]), the worker that runs queued tasks
//! ([`worker`]), environments, workspaces, secrets, auth, and the runtimes that put
//! it together in one process ([`runtime`]) or across hosts ([`distributed`]).
//!
//! Below it, each in its own crate: [`store`] (persistent state), [`queue`] (tasks
//! and the Redis event bus) and the sandbox layer (backends, images, networking,
//! agent client, tunnel), re-exported here under their module names.

pub mod auth;
pub mod distributed;
pub mod feed;
pub mod metrics;
pub mod runtime;
pub mod secrets;
pub mod services;
pub mod tools;
pub mod worker;

pub use aetherium_queue::{self as queue, bus_redis};
pub use aetherium_sandbox::{
    agent_client, agents, cluster_tls, host, identity, image, net, tunnel, vmm,
};
pub use aetherium_store::{self as store, error};

pub use distributed::{DistributedRole, DistributedRuntime};
pub use error::{CoreError, CoreResult};
pub use runtime::EmbeddedRuntime;
pub use services::Platform;
