//! Persistent state: VMs, tasks, executions, workers. One trait, one implementation
//! per database (SQLite now; PostgreSQL joins it for distributed mode and must pass
//! the same conformance tests).

pub(crate) mod sqlite;

use aetherium_types::{Execution, Task, TaskStatus, TaskType, Vm, VmStatus, Worker};
use async_trait::async_trait;

pub use sqlite::SqliteStore;

use crate::error::CoreResult;

/// Paging and filters for list calls. Lists are ordered newest first.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub limit: u32,
    pub offset: u32,
}

impl Page {
    pub const DEFAULT_LIMIT: u32 = 100;
    pub const MAX_LIMIT: u32 = 1000;

    pub fn new(limit: Option<u32>, offset: Option<u32>) -> Page {
        Page {
            limit: limit
                .unwrap_or(Self::DEFAULT_LIMIT)
                .clamp(1, Self::MAX_LIMIT),
            offset: offset.unwrap_or(0),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct VmFilter {
    pub status: Option<VmStatus>,
    pub worker_id: Option<String>,
    pub name: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub status: Option<TaskStatus>,
    pub task_type: Option<TaskType>,
    pub vm_id: Option<String>,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Cheap round trip, for health checks.
    async fn ping(&self) -> CoreResult<()>;

    /// Closes the connections (waits for in-flight queries).
    async fn close(&self);

    /// Inserts a VM; a live VM with the same name is a `Conflict`.
    async fn insert_vm(&self, vm: &Vm) -> CoreResult<()>;
    async fn get_vm(&self, id: &str) -> CoreResult<Option<Vm>>;
    async fn get_vm_by_name(&self, name: &str) -> CoreResult<Option<Vm>>;
    async fn list_vms(&self, filter: &VmFilter, page: &Page) -> CoreResult<(Vec<Vm>, u64)>;
    async fn update_vm(&self, vm: &Vm) -> CoreResult<()>;
    /// Sets the status only if the VM is currently in one of `from` (a compare-and-set,
    /// so that concurrent transitions cannot both win). Returns whether it changed.
    async fn transition_vm(
        &self,
        id: &str,
        from: &[VmStatus],
        to: VmStatus,
        error: Option<&str>,
    ) -> CoreResult<bool>;
    async fn delete_vm(&self, id: &str) -> CoreResult<()>;

    async fn insert_execution(&self, execution: &Execution) -> CoreResult<()>;
    async fn get_execution(&self, id: &str) -> CoreResult<Option<Execution>>;
    async fn update_execution(&self, execution: &Execution) -> CoreResult<()>;
    async fn list_executions(&self, vm_id: &str, page: &Page) -> CoreResult<(Vec<Execution>, u64)>;
    /// Marks every unfinished execution of a VM as failed with `error`.
    async fn fail_unfinished_executions(&self, vm_id: &str, error: &str) -> CoreResult<u64>;
    /// Marks direct (streamed or interactive) executions still `running` as failed:
    /// their connection died with the process that served them.
    async fn fail_interrupted_direct_executions(&self, error: &str) -> CoreResult<u64>;

    async fn get_task(&self, id: &str) -> CoreResult<Option<Task>>;
    async fn list_tasks(&self, filter: &TaskFilter, page: &Page) -> CoreResult<(Vec<Task>, u64)>;

    async fn upsert_worker(&self, worker: &Worker) -> CoreResult<()>;
    async fn get_worker(&self, id: &str) -> CoreResult<Option<Worker>>;
    async fn list_workers(&self) -> CoreResult<Vec<Worker>>;
}
