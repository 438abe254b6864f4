//! Prometheus metrics: `GET /metrics` (and `/api/v1/metrics`), viewer role.
//!
//! - `aetherium_http_requests_total{method,route,status}` and
//!   `aetherium_http_request_duration_seconds{method,route}` (time to the response's
//!   head), recorded by [`track`] for every request. `route` is the route template
//!   axum matched (`/api/v1/vms/{id}`), never the raw path, so ids cannot blow up
//!   the label set; requests that matched no route are `unmatched`.
//! - `aetherium_exec_duration_seconds{kind,outcome}`: recorded by the core when an
//!   execution finishes (`kind`: queued, stream, interactive).
//! - Gauges read at scrape time from this instance's platform:
//!   `aetherium_vms{status}`, `aetherium_queue_tasks{queue,state}`,
//!   `aetherium_workers{status}`.
//!
//! Counters and histograms live in one process-wide recorder (installed once, on the
//! first [`crate::router`]); the gauges are rendered per platform.

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::Instant;

use aetherium_types::task::QueueName;
use aetherium_types::{VmStatus, WorkerStatus};
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::AppState;
use crate::error::ApiError;

pub const HTTP_REQUESTS_TOTAL: &str = "aetherium_http_requests_total";
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "aetherium_http_request_duration_seconds";

/// Latency buckets (seconds) of every `_seconds` histogram: from a fast API call to
/// a long command.
const BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide recorder, installed on first use. If another recorder was
/// installed first, ours still renders (the gauges), but records nothing.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = match PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &BUCKETS)
        {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "metrics buckets refused; histograms become summaries");
                PrometheusBuilder::new()
            }
        };
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics shows gauges only");
        }
        handle
    })
}

/// Middleware: counts every request and times it, by route template.
pub async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = match *request.method() {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!(
        HTTP_REQUESTS_TOTAL,
        "method" => method,
        "route" => route.clone(),
        "status" => status,
    )
    .increment(1);
    metrics::histogram!(
        HTTP_REQUEST_DURATION_SECONDS,
        "method" => method,
        "route" => route,
    )
    .record(started.elapsed().as_secs_f64());
    response
}

/// `GET /metrics`, `GET /api/v1/metrics`: Prometheus text format.
#[utoipa::path(
    get,
    path = "/api/v1/metrics",
    tag = "operations",
    summary = "Prometheus metrics",
    description = "Prometheus text exposition format (also at `/metrics`); needs the viewer role (Prometheus sends the key as a bearer token). Request counts and latencies by route, execution durations by kind and outcome, and, read at scrape time, VMs by status, queue depths by queue and state, and workers by status.",
    responses(
        (status = 200, description = "The metrics", body = String, content_type = "text/plain"),
    )
)]
pub async fn render(State(state): State<AppState>) -> Result<Response, ApiError> {
    let handle = handle();
    handle.run_upkeep();
    let mut text = handle.render();
    text.push_str(&gauges(&state).await?);
    Ok((
        [(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// VMs by status, tasks by queue and state, workers by status: read now, from this
/// instance's platform (every label value is listed, with 0 when there are none).
async fn gauges(state: &AppState) -> Result<String, ApiError> {
    let platform = &state.platform;
    let mut out = String::new();

    let vms = platform.vm_counts_by_status().await?;
    header(&mut out, "aetherium_vms", "VMs by status.");
    for status in VmStatus::ALL {
        let n = vms
            .iter()
            .find(|(s, _)| *s == status)
            .map_or(0, |(_, n)| *n);
        let _ = writeln!(out, "aetherium_vms{{status=\"{}\"}} {n}", status.as_str());
    }

    let depths = platform.queue_depths().await?;
    header(
        &mut out,
        "aetherium_queue_tasks",
        "Tasks by queue and state (pending: due now; scheduled: due later, e.g. a retry's backoff).",
    );
    const STATES: [&str; 8] = [
        "pending",
        "scheduled",
        "retry",
        "archived",
        "running",
        "completed",
        "failed",
        "cancelled",
    ];
    for queue in [
        QueueName::Critical,
        QueueName::High,
        QueueName::Default,
        QueueName::Low,
    ] {
        for state in STATES {
            let n = depths
                .iter()
                .find(|d| d.queue == queue.as_str() && d.state == state)
                .map_or(0, |d| d.count);
            let _ = writeln!(
                out,
                "aetherium_queue_tasks{{queue=\"{}\",state=\"{state}\"}} {n}",
                queue.as_str()
            );
        }
    }

    let workers = platform.list_workers().await?;
    let stale_after = platform.defaults.worker_stale_after;
    header(
        &mut out,
        "aetherium_workers",
        "Workers by status (one not seen for too long counts as offline).",
    );
    for status in WorkerStatus::ALL {
        let n = workers
            .iter()
            .filter(|w| {
                let age = chrono::Utc::now()
                    .signed_duration_since(w.last_seen)
                    .to_std()
                    .unwrap_or_default();
                let effective = if age > stale_after {
                    WorkerStatus::Offline
                } else {
                    w.status
                };
                effective == status
            })
            .count();
        let _ = writeln!(
            out,
            "aetherium_workers{{status=\"{}\"}} {n}",
            status.as_str()
        );
    }
    Ok(out)
}

fn header(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
}
