//! Metrics the core records through the `metrics` facade. The gateway installs the
//! Prometheus recorder and renders them at `/metrics`; without a recorder (tests of
//! the core alone, other embedders) recording is a no-op.

use aetherium_types::Execution;

/// Histogram: how long commands ran, by `kind` (`queued`, `stream`, `interactive`)
/// and `outcome` (the execution's final status: `completed`, `failed`, `timed_out`).
pub const EXEC_DURATION_SECONDS: &str = "aetherium_exec_duration_seconds";

/// Records a finished execution's duration. `kind` is its metadata `mode` for
/// direct executions, `queued` otherwise.
pub fn record_execution(execution: &Execution) {
    let Some(ms) = execution.duration_ms else {
        return;
    };
    let kind = execution
        .metadata
        .get("mode")
        .and_then(|m| m.as_str())
        .unwrap_or("queued")
        .to_string();
    ::metrics::histogram!(
        EXEC_DURATION_SECONDS,
        "kind" => kind,
        "outcome" => execution.status.as_str(),
    )
    .record(ms.max(0) as f64 / 1000.0);
}
