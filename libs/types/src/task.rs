use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The kinds of queued work. Wire names are the Go original's (`vm:create`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum TaskType {
    #[serde(rename = "vm:create")]
    VmCreate,
    #[serde(rename = "vm:delete")]
    VmDelete,
    #[serde(rename = "vm:execute")]
    VmExecute,
    #[serde(rename = "vm:pause")]
    VmPause,
    #[serde(rename = "vm:resume")]
    VmResume,
    #[serde(rename = "vm:snapshot")]
    VmSnapshot,
    /// Applies a VM's new network policy on its worker.
    #[serde(rename = "vm:network")]
    VmNetwork,
    /// Runs an integration's work (GitHub, Slack, Discord): produced by the
    /// integrations' webhooks, which are being built (see docs/architecture.md).
    #[serde(rename = "integration:run")]
    IntegrationRun,
    #[serde(rename = "workspace:create")]
    WorkspaceCreate,
    #[serde(rename = "prompt:execute")]
    PromptExecute,
}

/// Retry and timeout policy of one task type (the original's Asynq options).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskPolicy {
    pub max_retries: u32,
    pub timeout: Duration,
}

impl TaskType {
    pub const ALL: [TaskType; 10] = [
        TaskType::VmCreate,
        TaskType::VmDelete,
        TaskType::VmExecute,
        TaskType::VmPause,
        TaskType::VmResume,
        TaskType::VmSnapshot,
        TaskType::VmNetwork,
        TaskType::IntegrationRun,
        TaskType::WorkspaceCreate,
        TaskType::PromptExecute,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskType::VmCreate => "vm:create",
            TaskType::VmDelete => "vm:delete",
            TaskType::VmExecute => "vm:execute",
            TaskType::VmPause => "vm:pause",
            TaskType::VmResume => "vm:resume",
            TaskType::VmSnapshot => "vm:snapshot",
            TaskType::VmNetwork => "vm:network",
            TaskType::IntegrationRun => "integration:run",
            TaskType::WorkspaceCreate => "workspace:create",
            TaskType::PromptExecute => "prompt:execute",
        }
    }

    pub fn policy(self) -> TaskPolicy {
        let (max_retries, minutes) = match self {
            TaskType::VmCreate => (3, 25),
            TaskType::VmDelete => (2, 2),
            TaskType::VmExecute => (2, 10),
            // A freeze or thaw either works at once or the VM is broken: no retries.
            TaskType::VmPause | TaskType::VmResume => (0, 2),
            TaskType::VmSnapshot => (0, 10),
            TaskType::VmNetwork => (2, 2),
            TaskType::IntegrationRun => (2, 30),
            TaskType::WorkspaceCreate => (2, 30),
            TaskType::PromptExecute => (1, 30),
        };
        TaskPolicy {
            max_retries,
            timeout: Duration::from_secs(minutes * 60),
        }
    }
}

wire_names!(TaskType, "task type");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Waiting to be leased (possibly scheduled for later, e.g. a retry's backoff).
    Pending,
    /// Leased by a worker.
    Running,
    Completed,
    /// Failed for good: retries are used up or the error is permanent.
    Failed,
    Cancelled,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 5] = [
        TaskStatus::Pending,
        TaskStatus::Running,
        TaskStatus::Completed,
        TaskStatus::Failed,
        TaskStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "pending",
            TaskStatus::Running => "running",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
        }
    }

    pub fn is_finished(self) -> bool {
        matches!(
            self,
            TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled
        )
    }
}

wire_names!(TaskStatus, "task status");

/// The original's four weighted queues. Priority 0-10 maps onto them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum QueueName {
    Critical,
    High,
    Default,
    Low,
}

impl QueueName {
    pub fn for_priority(priority: i32) -> QueueName {
        match priority {
            p if p >= 8 => QueueName::Critical,
            p if p >= 5 => QueueName::High,
            p if p >= 2 => QueueName::Default,
            _ => QueueName::Low,
        }
    }

    pub fn weight(self) -> u32 {
        match self {
            QueueName::Critical => 6,
            QueueName::High => 5,
            QueueName::Default => 3,
            QueueName::Low => 1,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            QueueName::Critical => "critical",
            QueueName::High => "high",
            QueueName::Default => "default",
            QueueName::Low => "low",
        }
    }
}

/// A unit of queued work. Every task is persisted, so it can be looked up at any time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Task {
    pub id: String,
    #[serde(rename = "type")]
    pub task_type: TaskType,
    pub status: TaskStatus,
    pub payload: serde_json::Value,
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
    pub priority: i32,
    pub retry_count: u32,
    pub max_retries: u32,
    pub timeout_seconds: u64,
    /// The worker that leased the task last.
    pub worker_id: Option<String>,
    /// When set, only this worker may run the task (VM-bound work).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_worker_id: Option<String>,
    pub vm_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub scheduled_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    /// When the task went to the archive of dead tasks (it failed for good and can
    /// still be retried or deleted); absent otherwise. The queue's state, not the
    /// record's: filled in when the task is read through the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archived_at: Option<DateTime<Utc>>,
}

/// Task counts by state (`GET /api/v1/queue/stats`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QueueStats {
    pub pending: u64,
    /// Pending, but not before a later time (a retry's backoff).
    pub scheduled: u64,
    pub running: u64,
    pub completed: u64,
    pub failed: u64,
    pub cancelled: u64,
    /// The same per queue (always all four: critical, high, default, low), with
    /// retries and the archive apart.
    pub queues: Vec<QueueCounts>,
}

/// One queue's tasks by state, as Asynq reports them (`GET /queue/stats` →
/// `queues`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QueueCounts {
    /// critical, high, default or low.
    pub queue: String,
    /// Due now, waiting for a worker.
    pub pending: u64,
    /// Leased by a worker and running.
    pub active: u64,
    /// Due later (delayed or scheduled).
    pub scheduled: u64,
    /// Failed an attempt and waiting for its backoff.
    pub retry: u64,
    /// Dead: out of retries or past their deadline (listed, retried and deleted
    /// through the archive); counted in `failed` too.
    pub archived: u64,
    /// Completed.
    pub processed: u64,
    pub failed: u64,
    pub cancelled: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_type_names_round_trip_in_wire_format() {
        for t in TaskType::ALL {
            let json = serde_json::to_string(&t).expect("serialize");
            assert_eq!(json, format!("\"{}\"", t.as_str()));
            assert_eq!(t.as_str().parse::<TaskType>(), Ok(t));
        }
        assert!("vm:explode".parse::<TaskType>().is_err());
    }

    #[test]
    fn priorities_map_to_the_original_queues() {
        assert_eq!(QueueName::for_priority(10), QueueName::Critical);
        assert_eq!(QueueName::for_priority(8), QueueName::Critical);
        assert_eq!(QueueName::for_priority(7), QueueName::High);
        assert_eq!(QueueName::for_priority(5), QueueName::High);
        assert_eq!(QueueName::for_priority(4), QueueName::Default);
        assert_eq!(QueueName::for_priority(2), QueueName::Default);
        assert_eq!(QueueName::for_priority(1), QueueName::Low);
        assert_eq!(QueueName::for_priority(0), QueueName::Low);
    }

    #[test]
    fn policies_follow_the_original() {
        assert_eq!(TaskType::VmCreate.policy().max_retries, 3);
        assert_eq!(
            TaskType::VmCreate.policy().timeout,
            Duration::from_secs(25 * 60)
        );
        assert_eq!(TaskType::VmDelete.policy().max_retries, 2);
        assert_eq!(
            TaskType::VmExecute.policy().timeout,
            Duration::from_secs(600)
        );
        assert_eq!(TaskType::PromptExecute.policy().max_retries, 1);
    }
}
