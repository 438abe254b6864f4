use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Event topics. Names are the original's (`task.created`, `vm.started`, …) plus
/// `execution.*` and `worker.*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum EventType {
    #[serde(rename = "task.created")]
    TaskCreated,
    #[serde(rename = "task.started")]
    TaskStarted,
    #[serde(rename = "task.completed")]
    TaskCompleted,
    #[serde(rename = "task.failed")]
    TaskFailed,
    /// A running task was asked to stop; the worker that runs it is stopping it.
    #[serde(rename = "task.cancel_requested")]
    TaskCancelRequested,
    /// The task was cancelled (before it ran, or stopped by its worker).
    #[serde(rename = "task.cancelled")]
    TaskCancelled,
    /// An archived (dead) task was deleted; its record is gone. (A retried one is
    /// published as `task.created` with `retried: true`: it is back in line.)
    #[serde(rename = "task.deleted")]
    TaskDeleted,
    #[serde(rename = "vm.created")]
    VmCreated,
    #[serde(rename = "vm.started")]
    VmStarted,
    #[serde(rename = "vm.stopped")]
    VmStopped,
    #[serde(rename = "vm.failed")]
    VmFailed,
    #[serde(rename = "vm.paused")]
    VmPaused,
    #[serde(rename = "vm.resumed")]
    VmResumed,
    #[serde(rename = "vm.deleted")]
    VmDeleted,
    #[serde(rename = "execution.started")]
    ExecutionStarted,
    /// The command ran to its end (any exit code) or was killed at its timeout.
    #[serde(rename = "execution.completed")]
    ExecutionCompleted,
    /// The command could not run, or its outcome is unknown (agent lost, VM gone).
    #[serde(rename = "execution.failed")]
    ExecutionFailed,
    /// A worker registered (first heartbeat) or became healthy again.
    #[serde(rename = "worker.online")]
    WorkerOnline,
    /// A worker's backend stopped answering; it takes no new sandboxes.
    #[serde(rename = "worker.unhealthy")]
    WorkerUnhealthy,
    /// A worker stopped leasing new tasks and is finishing the ones it has.
    #[serde(rename = "worker.draining")]
    WorkerDraining,
    /// A worker stopped.
    #[serde(rename = "worker.offline")]
    WorkerOffline,
    #[serde(rename = "integration.webhook_received")]
    IntegrationWebhookReceived,
    /// A workspace changed status (data: `status`, `message`).
    #[serde(rename = "workspace.status")]
    WorkspaceStatus,
    /// A preparation step (or tool install) started or ended (data: the step run).
    #[serde(rename = "workspace.step")]
    WorkspaceStep,
    /// A workspace was deleted (its sandbox, secrets, steps and prompts with it).
    #[serde(rename = "workspace.deleted")]
    WorkspaceDeleted,
    /// Resource id: the workspace; data: the prompt.
    #[serde(rename = "prompt.queued")]
    PromptQueued,
    #[serde(rename = "prompt.started")]
    PromptStarted,
    /// Live output of a running prompt (data: `prompt_id`, `stream`, `data`), with
    /// secrets redacted.
    #[serde(rename = "prompt.output")]
    PromptOutput,
    /// A prompt ended: completed, failed or cancelled (data: the prompt).
    #[serde(rename = "prompt.done")]
    PromptDone,
}

impl EventType {
    pub const ALL: [EventType; 29] = [
        EventType::TaskCreated,
        EventType::TaskStarted,
        EventType::TaskCompleted,
        EventType::TaskFailed,
        EventType::TaskCancelRequested,
        EventType::TaskCancelled,
        EventType::TaskDeleted,
        EventType::VmCreated,
        EventType::VmStarted,
        EventType::VmStopped,
        EventType::VmFailed,
        EventType::VmPaused,
        EventType::VmResumed,
        EventType::VmDeleted,
        EventType::ExecutionStarted,
        EventType::ExecutionCompleted,
        EventType::ExecutionFailed,
        EventType::WorkerOnline,
        EventType::WorkerUnhealthy,
        EventType::WorkerDraining,
        EventType::WorkerOffline,
        EventType::IntegrationWebhookReceived,
        EventType::WorkspaceStatus,
        EventType::WorkspaceStep,
        EventType::WorkspaceDeleted,
        EventType::PromptQueued,
        EventType::PromptStarted,
        EventType::PromptOutput,
        EventType::PromptDone,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::TaskCreated => "task.created",
            EventType::TaskStarted => "task.started",
            EventType::TaskCompleted => "task.completed",
            EventType::TaskFailed => "task.failed",
            EventType::TaskCancelRequested => "task.cancel_requested",
            EventType::TaskCancelled => "task.cancelled",
            EventType::TaskDeleted => "task.deleted",
            EventType::VmCreated => "vm.created",
            EventType::VmStarted => "vm.started",
            EventType::VmStopped => "vm.stopped",
            EventType::VmFailed => "vm.failed",
            EventType::VmPaused => "vm.paused",
            EventType::VmResumed => "vm.resumed",
            EventType::VmDeleted => "vm.deleted",
            EventType::ExecutionStarted => "execution.started",
            EventType::ExecutionCompleted => "execution.completed",
            EventType::ExecutionFailed => "execution.failed",
            EventType::WorkerOnline => "worker.online",
            EventType::WorkerUnhealthy => "worker.unhealthy",
            EventType::WorkerDraining => "worker.draining",
            EventType::WorkerOffline => "worker.offline",
            EventType::IntegrationWebhookReceived => "integration.webhook_received",
            EventType::WorkspaceStatus => "workspace.status",
            EventType::WorkspaceStep => "workspace.step",
            EventType::WorkspaceDeleted => "workspace.deleted",
            EventType::PromptQueued => "prompt.queued",
            EventType::PromptStarted => "prompt.started",
            EventType::PromptOutput => "prompt.output",
            EventType::PromptDone => "prompt.done",
        }
    }

    /// The part before the dot: `vm`, `task`, `execution`, `worker`, `integration`.
    pub fn category(self) -> &'static str {
        self.as_str().split('.').next().unwrap_or_default()
    }
}

wire_names!(EventType, "event type");

/// Something that happened to a resource, published on the event bus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Event {
    /// Position in the event log, increasing by publication order; set once the
    /// event is persisted (resume a stream with `?after=<seq>`). `None` only for an
    /// event that could not be persisted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<i64>,
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// The id of the VM, task, execution or worker the event is about.
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
            seq: None,
            id: crate::new_id(),
            event_type,
            resource_id: resource_id.into(),
            timestamp: Utc::now(),
            data,
        }
    }
}

/// Which events a stream delivers: `types` (exact names or `category.*`; empty means
/// every type) and `resource_id` (exact). Parsed from `?types=vm.*,task.failed`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Exact types asked for.
    pub types: Vec<EventType>,
    /// Categories asked for with `category.*` (`vm`, `task`, …).
    pub categories: Vec<String>,
    pub resource_id: Option<String>,
}

impl EventFilter {
    /// Parses a comma-separated list of event types: exact names (`vm.started`),
    /// `category.*` (`vm.*`) or `*`. Unknown names are an error, so typos fail loudly.
    pub fn parse_types(list: &str) -> Result<(Vec<EventType>, Vec<String>), String> {
        let mut types = Vec::new();
        let mut categories: Vec<String> = Vec::new();
        let mut all = false;
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if item == "*" {
                all = true;
                continue;
            }
            if let Some(category) = item.strip_suffix(".*") {
                if !EventType::ALL.iter().any(|t| t.category() == category) {
                    let known: Vec<&str> = EventType::ALL.iter().map(|t| t.category()).collect();
                    let mut known = known;
                    known.dedup();
                    return Err(format!(
                        "unknown event category {category:?} in {item:?} (known: {})",
                        known.join(", ")
                    ));
                }
                if !categories.iter().any(|c| c == category) {
                    categories.push(category.to_string());
                }
                continue;
            }
            let t: EventType = item.parse().map_err(|_| {
                format!(
                    "unknown event type {item:?}: use a name like vm.started or a prefix like vm.*"
                )
            })?;
            if !types.contains(&t) {
                types.push(t);
            }
        }
        if all {
            return Ok((Vec::new(), Vec::new()));
        }
        Ok((types, categories))
    }

    /// Whether the event passes the filter.
    pub fn matches(&self, event: &Event) -> bool {
        let type_ok = (self.types.is_empty() && self.categories.is_empty())
            || self.types.contains(&event.event_type)
            || self
                .categories
                .iter()
                .any(|c| c == event.event_type.category());
        type_ok
            && self
                .resource_id
                .as_deref()
                .is_none_or(|r| r == event.resource_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_and_match() {
        let (types, cats) = EventFilter::parse_types("vm.*, task.failed,vm.*").unwrap_or_default();
        assert_eq!(types, vec![EventType::TaskFailed]);
        assert_eq!(cats, vec!["vm".to_string()]);
        let filter = EventFilter {
            types,
            categories: cats,
            resource_id: Some("r1".into()),
        };
        assert!(filter.matches(&Event::new(
            EventType::VmStarted,
            "r1",
            serde_json::json!({})
        )));
        assert!(filter.matches(&Event::new(
            EventType::TaskFailed,
            "r1",
            serde_json::json!({})
        )));
        assert!(!filter.matches(&Event::new(
            EventType::TaskStarted,
            "r1",
            serde_json::json!({})
        )));
        assert!(!filter.matches(&Event::new(
            EventType::VmStarted,
            "r2",
            serde_json::json!({})
        )));
        assert!(EventFilter::default().matches(&Event::new(
            EventType::WorkerOnline,
            "w",
            serde_json::json!({})
        )));
        assert_eq!(
            EventFilter::parse_types("*,vm.started"),
            Ok((vec![], vec![]))
        );
        assert_eq!(EventFilter::parse_types(""), Ok((vec![], vec![])));
        assert!(EventFilter::parse_types("vm.nope").is_err());
        assert!(EventFilter::parse_types("nope.*").is_err());
        assert!(EventFilter::parse_types("VM.STARTED").is_ok());
    }

    #[test]
    fn names_round_trip() {
        for t in EventType::ALL {
            assert_eq!(t.as_str().parse::<EventType>().ok(), Some(t));
            let json = serde_json::to_value(t).ok();
            assert_eq!(json, Some(serde_json::Value::String(t.as_str().into())));
        }
        assert_eq!(EventType::WorkerOnline.category(), "worker");
    }
}
