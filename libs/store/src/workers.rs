//! Worker rows: the rules every store applies when a heartbeat meets a status an
//! administrator set (drain), shared by the trait's default methods and the SQL of
//! each implementation.

use aetherium_types::{Vm, VmStatus, Worker, WorkerStatus, WorkerUsage};

/// `status_message` of a worker drained through the API (`POST /workers/{id}/drain`).
/// Its heartbeats keep it `draining` until `activate`; a worker that drains itself
/// while shutting down says something else, so its next start is active again.
pub const DRAINED_BY_REQUEST: &str = "drained by request: takes no new VMs";

/// The row a heartbeat leaves, given the row stored before (if any): an
/// administrator's drain outlives heartbeats that report `active` or `unhealthy`;
/// everything else is what the worker reports.
pub fn merge_heartbeat(stored: Option<&Worker>, reported: &Worker) -> Worker {
    let mut next = reported.clone();
    if let Some(stored) = stored
        && stored.status == WorkerStatus::Draining
        && stored.status_message.as_deref() == Some(DRAINED_BY_REQUEST)
        && matches!(
            reported.status,
            WorkerStatus::Active | WorkerStatus::Unhealthy
        )
    {
        next.status = WorkerStatus::Draining;
        next.status_message = Some(DRAINED_BY_REQUEST.to_string());
    }
    next
}

/// VM statuses that hold a worker's resources (a slot, its vCPUs and memory).
pub const HOLDING: [VmStatus; 4] = [
    VmStatus::Created,
    VmStatus::Starting,
    VmStatus::Running,
    VmStatus::Stopping,
];

/// Adds `vm` to its worker's usage when it holds resources.
pub fn add_usage(usage: &mut WorkerUsage, vm: &Vm) {
    if HOLDING.contains(&vm.status) {
        usage.vms += 1;
        usage.vcpus += u64::from(vm.vcpu_count);
        usage.memory_mb += vm.memory_mb;
    }
}
