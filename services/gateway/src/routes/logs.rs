//! The platform's own logs: `POST /logs/query` (pages, newest first by default) and
//! `GET /logs/stream` (live, SSE or WebSocket, resumable like `/events`).

use aetherium_types::logs::{
    DEFAULT_LOG_LIMIT, LogFilter, LogOrder, LogQueryRequest, LogQueryResponse, LogRecord,
    MAX_LOG_LIMIT,
};
use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::response::Response;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderMap;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::ApiResult;
use super::feed::{self, BACKLOG_PAGE};
use crate::AppState;
use crate::error::ApiError;
use crate::extract::{Json, Query};

/// The opaque cursor of a log page: base64url of `logs:v1:<id>`.
fn encode_cursor(id: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("logs:v1:{id}"))
}

fn decode_cursor(text: &str) -> Result<i64, ApiError> {
    let bad =
        || ApiError::bad_request(format!("cursor {text:?} is not a cursor this API returned"));
    let bytes = URL_SAFE_NO_PAD.decode(text.trim()).map_err(|_| bad())?;
    let plain = String::from_utf8(bytes).map_err(|_| bad())?;
    plain
        .strip_prefix("logs:v1:")
        .and_then(|id| id.parse::<i64>().ok())
        .filter(|id| *id >= 0)
        .ok_or_else(bad)
}

#[utoipa::path(
    post,
    path = "/api/v1/logs/query",
    tag = "logs",
    summary = "Query the platform's own logs (pages, newest first by default)",
    request_body = aetherium_types::logs::LogQueryRequest,
    responses(
        (status = 200, description = "A page of records", body = aetherium_types::logs::LogQueryResponse),
    )
)]
pub async fn query_logs(
    State(state): State<AppState>,
    Json(req): Json<LogQueryRequest>,
) -> ApiResult<Json<LogQueryResponse>> {
    req.filter.validate().map_err(ApiError::bad_request)?;
    let limit = req.limit.unwrap_or(DEFAULT_LOG_LIMIT);
    if limit == 0 || limit > MAX_LOG_LIMIT {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_LOG_LIMIT} (default {DEFAULT_LOG_LIMIT})"
        )));
    }
    let cursor = match req.cursor.as_deref() {
        Some(c) if !c.is_empty() => Some(decode_cursor(c)?),
        _ => None,
    };
    let order = req.order.unwrap_or_default();
    let mut logs = state
        .platform
        .query_logs(&req.filter, cursor, order, limit + 1)
        .await?;
    let next_cursor = if logs.len() > limit as usize {
        logs.truncate(limit as usize);
        logs.last().map(|r| encode_cursor(r.id))
    } else {
        None
    };
    Ok(Json(LogQueryResponse { logs, next_cursor }))
}

/// Query of `GET /logs/stream`: the filters of `POST /logs/query` (but `since` and
/// `until`, which a live stream has no use for), plus the resume position.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogStreamQuery {
    pub task_id: Option<String>,
    pub vm_id: Option<String>,
    pub worker_id: Option<String>,
    pub execution_id: Option<String>,
    /// Minimum level: trace, debug, info, warn or error.
    pub level: Option<String>,
    /// Case-sensitive substring of the message.
    pub contains: Option<String>,
    /// Replay records with a greater id first (overrides `Last-Event-ID`).
    pub after: Option<String>,
    /// The API token, on WebSocket upgrades only.
    pub token: Option<String>,
}

impl LogStreamQuery {
    pub fn filter(&self) -> Result<LogFilter, ApiError> {
        let nonempty = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
        let filter = LogFilter {
            task_id: nonempty(&self.task_id),
            vm_id: nonempty(&self.vm_id),
            worker_id: nonempty(&self.worker_id),
            execution_id: nonempty(&self.execution_id),
            level: nonempty(&self.level)
                .map(|l| l.parse())
                .transpose()
                .map_err(|e: String| {
                    ApiError::bad_request(format!("{e}: use trace, debug, info, warn or error"))
                })?,
            since: None,
            until: None,
            contains: nonempty(&self.contains),
        };
        filter.validate().map_err(ApiError::bad_request)?;
        Ok(filter)
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/logs/stream",
    tag = "logs",
    summary = "The platform's own logs, live (SSE or WebSocket), resumable",
    description = "As `/events`: replays records after `after` (or `Last-Event-ID`), then continues live. Endless: fuzzers and request/response clients should skip it.",
    params(
        LogStreamQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this id (SSE reconnects send it); `after` wins"),
    ),
    responses(
        (status = 200, description = "The stream: one aetherium_types::logs::LogRecord per SSE event (`id:` is its sequence number, `event:` its type)", content_type = "text/event-stream", body = aetherium_types::logs::LogRecord),
        (status = 101, description = "Switching protocols: the same items as WebSocket text frames"),
        (status = 400, description = "Bad filter or resume position", body = aetherium_types::ErrorResponse),
    )
)]
pub async fn stream_logs(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<LogStreamQuery>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let filter = query.filter()?;
    let after = feed::resume_position(query.after.as_deref(), &headers)?;
    let upgrade = if feed::wants_websocket(&headers) {
        Some(upgrade.map_err(|r| ApiError::new(r.status(), r.body_text()))?)
    } else {
        None
    };
    let platform = state.platform.clone();
    let live = platform.subscribe_logs();
    let position = match after {
        Some(after) => after,
        None => platform.latest_log_id().await?,
    };
    let (tx, rx) = mpsc::channel::<LogRecord>(1024);
    let backlog_filter = filter.clone();
    tokio::spawn(feed::produce(
        live,
        position,
        move |after| {
            let platform = platform.clone();
            let filter = backlog_filter.clone();
            async move {
                platform
                    .query_logs(&filter, Some(after), LogOrder::Asc, BACKLOG_PAGE)
                    .await
                    .map_err(ApiError::from)
            }
        },
        move |r: &LogRecord| filter.matches(r),
        tx,
    ));
    Ok(feed::respond(rx, upgrade))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_strangers() {
        assert_eq!(decode_cursor(&encode_cursor(42)).ok(), Some(42));
        assert!(decode_cursor("42").is_err());
        assert!(decode_cursor(&URL_SAFE_NO_PAD.encode("v1:1:x")).is_err());
    }

    #[test]
    fn stream_filters_validate() {
        let q = LogStreamQuery {
            level: Some("warn".into()),
            task_id: Some("t".into()),
            ..Default::default()
        };
        let f = q.filter().ok().unwrap_or_default();
        assert_eq!(f.task_id.as_deref(), Some("t"));
        assert!(f.level.is_some());
        let bad = LogStreamQuery {
            level: Some("loud".into()),
            ..Default::default()
        };
        assert!(bad.filter().is_err());
    }
}
