//! Aetherium's shared vocabulary: domain models, API shapes, events and the agent
//! protocol messages. This crate does no I/O and holds no business logic, so every
//! other crate (including the in-sandbox agent) can depend on it cheaply.

pub mod agent;
pub mod api;
pub mod event;
pub mod execution;
pub mod task;
pub mod vm;
pub mod worker;

pub use api::*;
pub use event::{Event, EventType};
pub use execution::{Execution, ExecutionStatus};
pub use task::{Task, TaskStatus, TaskType};
pub use vm::{Orchestrator, Vm, VmStatus};
pub use worker::{Worker, WorkerStatus};

/// A new random identifier, as used for every resource (UUID v4, hyphenated).
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}
