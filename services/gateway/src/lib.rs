//! Aetherium's gateway: the REST API under `/api/v1`. Handlers validate and
//! authenticate, then call the core's use cases ([`aetherium_core::Platform`]).

pub mod access;
pub mod auth;
mod dashboard;
pub mod e2b;
mod error;
mod extract;
pub mod metrics;
pub mod openapi;
mod ratelimit;
mod routes;
mod timeout;

use std::sync::Arc;
use std::time::Duration;

use aetherium_core::Platform;
use aetherium_core::auth::Auth;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post, put};
use tokio::net::TcpListener;

pub use aetherium_core::auth::token_hash;
pub use error::ApiError;

/// Request bodies larger than this are refused with 413 (file uploads excepted: see
/// [`AppState::max_upload_bytes`]).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Default for [`AppState::max_upload_bytes`]: 10 GiB.
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 10 * 1024 * 1024 * 1024;

/// Default for [`AppState::output_cap_bytes`]: 1 MiB, as `vmm.output_cap_bytes`.
pub const DEFAULT_OUTPUT_CAP_BYTES: usize = 1024 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub platform: Platform,
    /// API keys, users, sessions, audit log.
    pub auth: Auth,
    pub max_wait: Duration,
    /// Most bytes of stdout (and of stderr) persisted for a streamed or interactive
    /// execution (`vmm.output_cap_bytes`); the live stream itself is not capped.
    pub output_cap_bytes: usize,
    /// Largest file `PUT /vms/{id}/files` accepts (the only route exempt from
    /// [`MAX_BODY_BYTES`]); the body is streamed to the sandbox, never held whole.
    pub max_upload_bytes: u64,
    /// Default requests per second per API key or session (0: unlimited).
    pub rate_limit_per_second: f64,
    pub rate_limit_burst: u32,
    pub login_attempts_per_minute: u32,
    pub rate_limits: Arc<ratelimit::RateLimiter>,
    pub login_limits: Arc<ratelimit::RateLimiter>,
    /// Origins allowed to call from a browser (`server.cors_allowed_origins`).
    pub cors_allowed_origins: Vec<String>,
    /// Longest a non-streaming request may take (`server.request_timeout_seconds`).
    pub request_timeout: Duration,
    /// The dashboard's static export served at `/` (`server.dashboard_dir`, when it
    /// holds a build); `None`: `/` says how to build it.
    pub dashboard_dir: Option<std::path::PathBuf>,
    /// Connections open at once (`server.max_connections`).
    pub max_connections: usize,
    /// `server.e2b_domain`: envd by host name, and the E2B API's `domain`.
    pub e2b_domain: Option<String>,
}

impl AppState {
    /// State with the defaults of [`aetherium_common::Config`] for everything else.
    pub fn new(platform: Platform, auth: Auth, max_wait: Duration) -> AppState {
        let defaults = aetherium_common::Config::default();
        AppState {
            platform,
            auth,
            max_wait,
            output_cap_bytes: DEFAULT_OUTPUT_CAP_BYTES,
            max_upload_bytes: DEFAULT_MAX_UPLOAD_BYTES,
            rate_limit_per_second: f64::from(defaults.auth.rate_limit_per_second),
            rate_limit_burst: defaults.auth.rate_limit_burst,
            login_attempts_per_minute: defaults.auth.login_attempts_per_minute,
            rate_limits: Arc::default(),
            login_limits: Arc::default(),
            cors_allowed_origins: Vec::new(),
            request_timeout: max_wait + Duration::from_secs(60),
            dashboard_dir: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            e2b_domain: None,
        }
    }

    /// State configured from `config` (limits, CORS, timeouts).
    pub fn from_config(
        platform: Platform,
        auth: Auth,
        config: &aetherium_common::Config,
    ) -> AppState {
        let mut state = AppState::new(
            platform,
            auth,
            Duration::from_secs(config.server.max_wait_seconds),
        );
        state.output_cap_bytes = config.vmm.output_cap_bytes;
        state.rate_limit_per_second = f64::from(config.auth.rate_limit_per_second);
        state.rate_limit_burst = config.auth.rate_limit_burst;
        state.login_attempts_per_minute = config.auth.login_attempts_per_minute;
        state.cors_allowed_origins = config.server.cors_allowed_origins.clone();
        state.request_timeout = Duration::from_secs(config.server.request_timeout_seconds);
        state.dashboard_dir = config.server.dashboard();
        state.max_connections = config.server.max_connections;
        state.e2b_domain = config.server.e2b_domain.clone();
        state
    }
}

pub fn router(state: AppState) -> Router {
    let authenticated = Router::new()
        .route("/vms", post(routes::create_vm).get(routes::list_vms))
        .route("/vms/{id}", get(routes::get_vm).delete(routes::delete_vm))
        .route("/vms/{id}/pause", post(routes::pause_vm))
        .route("/vms/{id}/resume", post(routes::resume_vm))
        .route("/vms/{id}/snapshot", post(routes::snapshot_vm))
        .route("/vms/{id}/network-policy", put(routes::set_network_policy))
        .route("/vms/{id}/execute", post(routes::execute))
        .route("/vms/{id}/executions", get(routes::list_executions))
        .route("/vms/{id}/exec/stream", post(routes::stream::exec_stream))
        .route("/vms/{id}/exec/ws", get(routes::ws::exec_ws))
        .route(
            "/vms/{id}/files",
            // Uploads stream to the sandbox under their own limit
            // (`AppState::max_upload_bytes`), not the 1 MiB one for JSON bodies.
            get(routes::files::download)
                .put(routes::files::upload)
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/vms/{id}/files/stat", get(routes::files::stat))
        .route("/executions/{id}", get(routes::get_execution))
        .route("/smart-execute", post(routes::smart_execute))
        .route("/tasks", get(routes::list_tasks))
        .route(
            "/tasks/{id}",
            get(routes::get_task).delete(routes::ops::delete_task),
        )
        .route("/tasks/{id}/cancel", post(routes::ops::cancel_task))
        .route("/tasks/{id}/retry", post(routes::ops::retry_task))
        .route("/metrics", get(metrics::render))
        .route("/queue/stats", get(routes::queue_stats))
        .route("/queue/history", get(routes::ops::queue_history))
        .route("/events", get(routes::events::stream_events))
        .route("/logs/query", post(routes::logs::query_logs))
        .route("/logs/stream", get(routes::logs::stream_logs))
        .route("/auth/logout", post(routes::admin::logout))
        .route("/auth/me", get(routes::admin::me))
        .route(
            "/api-keys",
            post(routes::admin::create_api_key).get(routes::admin::list_api_keys),
        )
        .route(
            "/api-keys/{id}",
            get(routes::admin::get_api_key).patch(routes::admin::update_api_key),
        )
        .route("/api-keys/{id}/revoke", post(routes::admin::revoke_api_key))
        .route(
            "/users",
            post(routes::admin::create_user).get(routes::admin::list_users),
        )
        .route(
            "/users/{id}",
            get(routes::admin::get_user)
                .patch(routes::admin::update_user)
                .delete(routes::admin::delete_user),
        )
        .route("/audit", get(routes::admin::list_audit))
        .route(
            "/environments",
            post(routes::environments::create_environment)
                .get(routes::environments::list_environments),
        )
        .route(
            "/environments/{id}",
            get(routes::environments::get_environment)
                .put(routes::environments::update_environment)
                .delete(routes::environments::delete_environment),
        )
        .route(
            "/secrets",
            post(routes::environments::put_global_secret)
                .get(routes::environments::list_global_secrets),
        )
        .route(
            "/secrets/{id}",
            delete(routes::environments::delete_global_secret),
        )
        .route(
            "/workspaces",
            post(routes::workspaces::create_workspace).get(routes::workspaces::list_workspaces),
        )
        .route(
            "/workspaces/{id}",
            get(routes::workspaces::get_workspace).delete(routes::workspaces::delete_workspace),
        )
        .route(
            "/workspaces/{id}/steps",
            get(routes::workspaces::list_steps),
        )
        .route(
            "/workspaces/{id}/prompts",
            post(routes::workspaces::submit_prompt).get(routes::workspaces::list_prompts),
        )
        .route(
            "/workspaces/{id}/prompts/{prompt_id}",
            get(routes::workspaces::get_prompt),
        )
        .route(
            "/workspaces/{id}/prompts/{prompt_id}/cancel",
            post(routes::workspaces::cancel_prompt),
        )
        .route(
            "/workspaces/{id}/secrets",
            post(routes::workspaces::put_secret).get(routes::workspaces::list_secrets),
        )
        .route(
            "/workspaces/{id}/secrets/{secret_id}",
            delete(routes::workspaces::delete_secret),
        )
        .route("/workspaces/{id}/session", get(routes::workspaces::session))
        .route("/workers", get(routes::workers::list_workers))
        .route("/workers/{id}", get(routes::workers::get_worker))
        .route("/workers/{id}/vms", get(routes::workers::list_worker_vms))
        .route("/workers/{id}/drain", post(routes::workers::drain_worker))
        .route(
            "/workers/{id}/activate",
            post(routes::workers::activate_worker),
        )
        .route("/cluster/stats", get(routes::workers::cluster_stats))
        .route(
            "/cluster/distribution",
            get(routes::workers::cluster_distribution),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            timeout::limit_duration,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_auth,
        ));
    // Prometheus scrapes the root path; it needs a key (viewer) like the API.
    let root_authenticated = Router::new()
        .route("/metrics", get(metrics::render))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_auth,
        ));
    let api = Router::new()
        .route("/health", get(routes::health))
        .route("/ready", get(routes::ops::ready))
        .route("/auth/login", post(routes::admin::login))
        // The contract and its docs page are documentation: public, like health.
        .route("/openapi.json", get(openapi::openapi_json))
        .merge(authenticated);
    // Installs the process-wide recorder before the first request is counted.
    metrics::handle();
    Router::new()
        .route("/health", get(e2b::root_health))
        .route("/ready", get(routes::ops::ready))
        .merge(root_authenticated)
        .nest("/api/v1", api)
        .merge(e2b::router(state.clone()))
        .merge(openapi::docs_router())
        // What no route claims: envd by host name (E2B's SDKs with a domain), else
        // the dashboard's files (API paths keep the JSON 404).
        .fallback(e2b::root_fallback)
        .method_not_allowed_fallback(routes::method_not_allowed)
        // Inside the routing, so the matched route template is known.
        .layer(axum::middleware::from_fn(metrics::track))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(cors_layer(&state.cors_allowed_origins))
        .layer(
            // The path only: a WebSocket's URL may carry `?token=`, which must not be logged.
            tower_http::trace::TraceLayer::new_for_http()
                .make_span_with(|request: &axum::extract::Request| {
                    tracing::debug_span!("request", method = %request.method(), path = %request.uri().path())
                })
                // A 5xx is logged once, with its reason, where it is made (ApiError);
                // some are routine (envd's 502 for a killed sandbox an SDK probes).
                .on_failure(
                    tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG),
                ),
        )
        .with_state(state)
}

/// CORS for the configured origins only. Credentials are bearer tokens, never
/// cookies, so `allow_credentials` stays off (and `*` can never pair with it).
fn cors_layer(origins: &[String]) -> tower_http::cors::CorsLayer {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let layer = CorsLayer::new()
        .allow_methods([
            http::Method::GET,
            http::Method::POST,
            http::Method::PUT,
            http::Method::PATCH,
            http::Method::DELETE,
        ])
        .allow_headers([
            http::header::AUTHORIZATION,
            http::header::CONTENT_TYPE,
            http::HeaderName::from_static("last-event-id"),
        ])
        .expose_headers([http::header::RETRY_AFTER])
        .max_age(Duration::from_secs(600));
    if origins.iter().any(|o| o == "*") {
        return layer.allow_origin(AllowOrigin::any());
    }
    let list: Vec<http::HeaderValue> = origins
        .iter()
        .filter_map(|o| http::HeaderValue::from_str(o).ok())
        .collect();
    layer.allow_origin(AllowOrigin::list(list))
}

/// Serves the API until `shutdown` resolves, then finishes in-flight requests.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = ConnectionLimits {
        max_connections: state.max_connections,
        header_read_timeout: HEADER_READ_TIMEOUT,
    };
    serve_with_limits(listener, router(state), limits, shutdown).await
}

/// How long a client may take to send a request's headers, and how long an idle
/// keep-alive connection stays open (hyper starts the same clock while it waits for
/// the next request): slow or silent clients cannot hold connections forever.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Default for [`AppState::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// Bounds on the connections a server holds.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections open at once; past it the server stops accepting until one
    /// closes (the kernel's backlog holds the rest).
    pub max_connections: usize,
    pub header_read_timeout: Duration,
}

/// Serves `app` on `listener` (HTTP/1.1 with upgrades for WebSockets, and h2c),
/// within `limits`, until `shutdown` resolves; then lets open requests finish.
/// axum's own `serve` sets no timer, so hyper's header timeout never fired there.
pub async fn serve_with_limits(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    use tower::ServiceExt as _;

    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.map_err(std::io::Error::other)?,
            () = &mut shutdown => break,
        };
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and the like: pausing keeps a persistent error from spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        // Set by the first request: until then hyper is still telling HTTP/1 from
        // h2 by the first bytes, with no timeout of its own.
        let served = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let first_request = served.clone();
        let service = app
            .clone()
            .map_request(move |mut request: axum::extract::Request| {
                first_request.store(true, std::sync::atomic::Ordering::Relaxed);
                request
                    .extensions_mut()
                    .insert(axum::extract::ConnectInfo(remote));
                request
            });
        let service = hyper_util::service::TowerToHyperService::new(service.map_request(
            |request: http::Request<hyper::body::Incoming>| request.map(axum::body::Body::new),
        ));
        let mut builder = Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout);
        builder
            .http2()
            .timer(TokioTimer::new())
            .enable_connect_protocol()
            // Dead peers of an h2 connection are found by pings.
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(20));
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        let header_read_timeout = limits.header_read_timeout;
        tokio::spawn(async move {
            tokio::pin!(connection);
            let first_deadline = tokio::time::sleep(header_read_timeout);
            tokio::pin!(first_deadline);
            let mut awaiting_first = true;
            loop {
                tokio::select! {
                    ended = connection.as_mut() => {
                        if let Err(e) = ended {
                            tracing::trace!(error = %e, "connection ended");
                        }
                        break;
                    }
                    () = &mut first_deadline, if awaiting_first => {
                        if !served.load(std::sync::atomic::Ordering::Relaxed) {
                            tracing::debug!(%remote, "no request within the header timeout: closing");
                            break;
                        }
                        awaiting_first = false;
                    }
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
