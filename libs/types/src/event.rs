use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Event topics. Names are the original's (`task.created`, `vm.started`, …) plus
/// `execution.*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventType {
    #[serde(rename = "task.created")]
    TaskCreated,
    #[serde(rename = "task.started")]
    TaskStarted,
    #[serde(rename = "task.completed")]
    TaskCompleted,
    #[serde(rename = "task.failed")]
    TaskFailed,
    #[serde(rename = "vm.created")]
    VmCreated,
    #[serde(rename = "vm.started")]
    VmStarted,
    #[serde(rename = "vm.stopped")]
    VmStopped,
    #[serde(rename = "vm.failed")]
    VmFailed,
    #[serde(rename = "vm.deleted")]
    VmDeleted,
    #[serde(rename = "execution.started")]
    ExecutionStarted,
    #[serde(rename = "execution.completed")]
    ExecutionCompleted,
    #[serde(rename = "integration.webhook_received")]
    IntegrationWebhookReceived,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::TaskCreated => "task.created",
            EventType::TaskStarted => "task.started",
            EventType::TaskCompleted => "task.completed",
            EventType::TaskFailed => "task.failed",
            EventType::VmCreated => "vm.created",
            EventType::VmStarted => "vm.started",
            EventType::VmStopped => "vm.stopped",
            EventType::VmFailed => "vm.failed",
            EventType::VmDeleted => "vm.deleted",
            EventType::ExecutionStarted => "execution.started",
            EventType::ExecutionCompleted => "execution.completed",
            EventType::IntegrationWebhookReceived => "integration.webhook_received",
        }
    }
}

/// Something that happened to a resource, published on the event bus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// The id of the VM, task or execution the event is about.
    pub resource_id: String,
    pub timestamp: DateTime<Utc>,
    pub data: serde_json::Value,
}

impl Event {
    pub fn new(
        event_type: EventType,
        resource_id: impl Into<String>,
        data: serde_json::Value,
    ) -> Self {
        Event {
            id: crate::new_id(),
            event_type,
            resource_id: resource_id.into(),
            timestamp: Utc::now(),
            data,
        }
    }
}
