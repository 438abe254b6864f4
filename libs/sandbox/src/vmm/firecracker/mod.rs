//! The Firecracker backend: microVMs under `firecracker`, driven over its API socket
//! by our own thin client ([`api`]), one directory per VM ([`layout`]), and a probe of
//! what this host can run ([`probe`]).

pub mod api;
mod backend;
pub mod layout;
pub mod probe;

pub use backend::{FirecrackerBackend, FirecrackerConfig, GUEST_CID};
pub use probe::{ProbeResult, probe};
