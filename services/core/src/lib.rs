//! Aetherium's core: sandbox backends, the agent client, the store, the queue, the
//! worker, and the use cases ([`services::Platform`]) that the gateway calls.

pub mod agent_client;
pub mod auth;
pub mod bus_redis;
pub mod cluster;
pub mod cluster_tls;
pub mod distributed;
pub mod environments;
pub mod error;
pub mod feed;
pub mod host;
pub mod identity;
pub mod image;
pub mod metrics;
pub mod net;
pub mod queue;
pub mod runtime;
pub mod secrets;
pub mod services;
pub mod store;
pub mod tools;
pub mod tunnel;
pub mod vmm;
pub mod worker;
pub mod workspaces;

pub use distributed::{DistributedRole, DistributedRuntime};
pub use error::{CoreError, CoreResult};
pub use runtime::EmbeddedRuntime;
pub use services::Platform;
