//! `GET /events`: the platform's events (`vm.*`, `task.*`, `execution.*`,
//! `worker.*`), live, as Server-Sent Events or — on an upgrade request — a
//! WebSocket. Filters: `types` (comma list of names or `category.*`), `resource_id`.
//! Resume: `after=<seq>` or the `Last-Event-ID` header replays what was missed (from
//! the event log), then continues live; without either the stream starts now.

use aetherium_types::{Event, EventFilter};
use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::response::Response;
use http::HeaderMap;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::ApiResult;
use super::feed::{self, BACKLOG_PAGE};
use crate::AppState;
use crate::error::ApiError;
use crate::extract::Query;

/// Query of `GET /events`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventStreamQuery {
    /// Comma-separated event types: exact (`vm.started`) or a category (`vm.*`).
    /// Default: every type.
    pub types: Option<String>,
    /// Only events about this VM, task, execution or worker id.
    pub resource_id: Option<String>,
    /// Replay events with a greater seq first (overrides `Last-Event-ID`).
    pub after: Option<String>,
    /// The API token, on WebSocket upgrades only (see the authentication).
    pub token: Option<String>,
}

impl EventStreamQuery {
    pub fn filter(&self) -> Result<EventFilter, ApiError> {
        let (types, categories) = EventFilter::parse_types(self.types.as_deref().unwrap_or(""))
            .map_err(ApiError::bad_request)?;
        let resource_id = match self.resource_id.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(r) if r.len() > 128 => {
                return Err(ApiError::bad_request("resource_id is too long"));
            }
            Some(r) => Some(r.to_string()),
        };
        Ok(EventFilter {
            types,
            categories,
            resource_id,
        })
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/events",
    tag = "events",
    summary = "Live platform events (SSE or WebSocket), resumable",
    description = "Replays stored events after `after` (or `Last-Event-ID`), then continues live, with no gap and no duplicate. Server-Sent Events by default (keep-alive comments every 15 s); a WebSocket upgrade gets the same events as text frames. Endless: fuzzers and request/response clients should skip it.",
    params(
        EventStreamQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this id (SSE reconnects send it); `after` wins"),
    ),
    responses(
        (status = 200, description = "The stream: one aetherium_types::Event per SSE event (`id:` is its sequence number, `event:` its type)", content_type = "text/event-stream", body = aetherium_types::Event),
        (status = 101, description = "Switching protocols: the same items as WebSocket text frames"),
        (status = 400, description = "Bad filter or resume position", body = aetherium_types::ErrorResponse),
    )
)]
pub async fn stream_events(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<EventStreamQuery>,
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
    // Subscribe before reading the position, so nothing falls in between.
    let live = platform.subscribe_events();
    let position = match after {
        Some(after) => after,
        None => platform.latest_event_seq().await?,
    };
    let (tx, rx) = mpsc::channel::<Event>(256);
    let backlog_filter = filter.clone();
    tokio::spawn(feed::produce(
        live,
        position,
        move |after| {
            let platform = platform.clone();
            let filter = backlog_filter.clone();
            async move {
                platform
                    .events_after(after, &filter, BACKLOG_PAGE)
                    .await
                    .map_err(ApiError::from)
            }
        },
        move |e: &Event| filter.matches(e),
        tx,
    ));
    Ok(feed::respond(rx, upgrade))
}
