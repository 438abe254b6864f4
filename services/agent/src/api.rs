//! The agent's state and its routes: envd's Connect services and HTTP endpoints,
//! and our extensions (`/info`, `/secrets`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use aetherium_types::agent::{
    self as proto, Codec, ConnectError, Empty, PROTOCOL_VERSION, Signal, code,
};
use http::header::{ALLOW, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::cli::Config;
use crate::connect::{
    self, Kind, ResponseBody, ServerStream, error, http_error, json_response, negotiate,
    stream_error, unary_error, unary_ok,
};
use crate::filesystem::{self, Context};
use crate::process::{self, EVENT_QUEUE, Launch, ProcessTable};
use crate::users::{self, User};
use crate::watch::{self, Watch, Watchers};
use crate::{files, system};

/// Largest JSON body of the plain routes (`/init`, `/secrets`).
const MAX_JSON_BODY: usize = 1024 * 1024;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What `/init` and the command line configure.
struct Settings {
    access_token: Option<String>,
    default_user: User,
    default_workdir: Option<PathBuf>,
    /// `/init`'s `envVars`: added to every process's environment.
    env_vars: BTreeMap<String, String>,
}

pub struct State {
    pub processes: Arc<ProcessTable>,
    watchers: Watchers,
    keepalive: Duration,
    settings: Mutex<Settings>,
    /// Our extension: variables injected into every process, kept in memory only and
    /// never logged or returned.
    secrets: Mutex<BTreeMap<String, String>>,
    started: Instant,
    pub activity: Arc<Activity>,
    pub idle_timeout: Option<Duration>,
    cpu: Mutex<Option<system::CpuTimes>>,
}

impl State {
    pub fn new(config: &Config) -> Result<State, String> {
        let default_user = match &config.default_user {
            Some(name) => users::by_name(name)
                .ok_or_else(|| format!("--default-user {name:?} is not in /etc/passwd"))?,
            None => users::current(),
        };
        Ok(State {
            processes: Arc::default(),
            watchers: Watchers::default(),
            keepalive: config.keepalive,
            settings: Mutex::new(Settings {
                access_token: config.access_token.clone(),
                default_user,
                default_workdir: config.default_workdir.clone(),
                env_vars: BTreeMap::new(),
            }),
            secrets: Mutex::default(),
            started: Instant::now(),
            activity: Arc::new(Activity::new()),
            idle_timeout: config.idle_timeout,
            cpu: Mutex::new(None),
        })
    }

    /// Whether a request may pass: always when no token is set; otherwise only with
    /// the right `X-Access-Token` (compared in constant time).
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let settings = lock(&self.settings);
        let Some(token) = &settings.access_token else {
            return true;
        };
        let given = headers
            .get("x-access-token")
            .map(HeaderValue::as_bytes)
            .unwrap_or_default();
        constant_time_eq(given, token.as_bytes())
    }

    /// The user a request runs as (Basic auth or the default) and how its paths
    /// resolve.
    fn context(&self, name: Option<&str>) -> Result<Context, ConnectError> {
        let settings = lock(&self.settings);
        Ok(Context {
            user: users::resolve(name, &settings.default_user)?,
            default_workdir: settings.default_workdir.clone(),
        })
    }

    /// The environment every process gets on top of the agent's own: `/init`'s
    /// variables, then the secrets (the request's own come last).
    fn process_env(&self) -> Vec<(String, String)> {
        let mut env: Vec<_> = lock(&self.settings)
            .env_vars
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        env.extend(
            lock(&self.secrets)
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        env
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, byte) in b.iter().enumerate() {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ byte);
    }
    diff == 0
}

/// Requests in flight and the time of the last one, for the idle shutdown.
pub struct Activity {
    in_flight: AtomicUsize,
    last: Mutex<Instant>,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            in_flight: AtomicUsize::new(0),
            last: Mutex::new(Instant::now()),
        }
    }

    pub fn touch(&self) {
        *lock(&self.last) = Instant::now();
    }

    /// How long nothing has happened; zero while a request is in flight.
    pub fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return Duration::ZERO;
        }
        lock(&self.last).elapsed()
    }

    pub fn begin(self: &Arc<Self>) -> RequestGuard {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.touch();
        RequestGuard(Arc::clone(self))
    }
}

/// Counts a request as in flight until its response body is done (or dropped).
pub struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

fn method_not_allowed(allow: &'static str) -> Response<ResponseBody> {
    let mut response = connect::status_only(StatusCode::METHOD_NOT_ALLOWED);
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    response
}

/// Routes one request.
pub async fn route(state: Arc<State>, request: Request<Incoming>) -> Response<ResponseBody> {
    let path = request.uri().path().to_string();
    let method = request.method().clone();
    // envd answers its liveness probe without a token.
    if path == "/health" {
        return match method {
            Method::GET | Method::HEAD => connect::status_only(StatusCode::NO_CONTENT),
            _ => method_not_allowed("GET, HEAD"),
        };
    }
    let is_rpc =
        path.starts_with("/process.Process/") || path.starts_with("/filesystem.Filesystem/");
    if !state.authorized(request.headers()) {
        crate::log!("refused {method} {path}: missing or wrong access token");
        let message = "unauthorized access, please provide a valid access token";
        return if is_rpc {
            unary_error(&error(code::UNAUTHENTICATED, message))
        } else {
            http_error(StatusCode::UNAUTHORIZED, message)
        };
    }
    if is_rpc {
        if method != Method::POST {
            return method_not_allowed("POST");
        }
        return rpc(&state, &path, request).await;
    }
    match (path.as_str(), method) {
        ("/files", Method::GET) => get_files(&state, request).await,
        ("/files", Method::POST) => post_files(&state, request).await,
        ("/files", _) => method_not_allowed("GET, POST"),
        ("/init", Method::POST) => init(&state, request).await,
        ("/init", _) => method_not_allowed("POST"),
        ("/envs", Method::GET) => json_response(StatusCode::OK, &lock(&state.settings).env_vars),
        ("/envs", _) => method_not_allowed("GET"),
        ("/metrics", Method::GET) => {
            let mut cpu = lock(&state.cpu);
            json_response(StatusCode::OK, &system::metrics(&mut cpu))
        }
        ("/metrics", _) => method_not_allowed("GET"),
        ("/info", Method::GET) => info(&state),
        ("/info", _) => method_not_allowed("GET"),
        ("/secrets", Method::GET | Method::POST | Method::DELETE) => secrets(&state, request).await,
        ("/secrets", _) => method_not_allowed("GET, POST, DELETE"),
        _ => connect::status_only(StatusCode::NOT_FOUND),
    }
}

/// A unary call: decode, run, encode; or the Connect error response.
async fn unary<Req, Resp, F, Fut>(request: Request<Incoming>, run: F) -> Response<ResponseBody>
where
    Req: proto::WireMessage,
    Resp: proto::WireMessage,
    F: FnOnce(Req, HeaderMap) -> Fut,
    Fut: Future<Output = Result<Resp, ConnectError>>,
{
    let codec = match negotiate(request.headers(), Kind::Unary) {
        Ok(codec) => codec,
        Err(response) => return response,
    };
    let (parts, body) = request.into_parts();
    let message = match connect::read_unary::<Req>(body, codec).await {
        Ok(message) => message,
        Err(e) => return unary_error(&e),
    };
    match run(message, parts.headers).await {
        Ok(response) => unary_ok(codec, &response),
        Err(e) => unary_error(&e),
    }
}

/// Runs blocking filesystem work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ConnectError> + Send + 'static,
) -> Result<T, ConnectError> {
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|e| {
        Err(error(
            code::INTERNAL,
            format!("filesystem task failed: {e}"),
        ))
    })
}

fn basic_user(headers: &HeaderMap) -> Option<String> {
    users::basic_auth_user(headers)
}

async fn rpc(state: &Arc<State>, path: &str, request: Request<Incoming>) -> Response<ResponseBody> {
    use aetherium_types::agent::{
        CloseStdinRequest, ConnectRequest, CreateWatcherResponse, FILESYSTEM_CREATE_WATCHER_PATH,
        FILESYSTEM_GET_WATCHER_EVENTS_PATH, FILESYSTEM_LIST_DIR_PATH, FILESYSTEM_MAKE_DIR_PATH,
        FILESYSTEM_MOVE_PATH, FILESYSTEM_REMOVE_PATH, FILESYSTEM_REMOVE_WATCHER_PATH,
        FILESYSTEM_STAT_PATH, FILESYSTEM_WATCH_DIR_PATH, GetWatcherEventsRequest,
        GetWatcherEventsResponse, ListDirRequest, ListResponse, MoveRequest,
        PROCESS_CLOSE_STDIN_PATH, PROCESS_CONNECT_PATH, PROCESS_LIST_PATH, PROCESS_SEND_INPUT_PATH,
        PROCESS_SEND_SIGNAL_PATH, PROCESS_START_PATH, PROCESS_STREAM_INPUT_PATH,
        PROCESS_UPDATE_PATH, PathRequest, RemoveWatcherRequest, SendInputRequest,
        SendSignalRequest, UpdateRequest, WatchDirRequest,
    };
    let table = Arc::clone(&state.processes);
    match path {
        PROCESS_START_PATH => start(state, request).await,
        PROCESS_CONNECT_PATH => {
            let (codec, headers, message) = match server_stream::<ConnectRequest>(request).await {
                Ok(call) => call,
                Err(response) => return response,
            };
            match process::connect(&table, message.process.as_ref()) {
                Ok(events) => {
                    ServerStream::new(events, codec, connect::keepalive(&headers, state.keepalive))
                        .into_response()
                }
                Err(e) => stream_error(codec, e),
            }
        }
        PROCESS_LIST_PATH => {
            unary(request, |_: Empty, _| async move {
                Ok(ListResponse {
                    processes: table.list(),
                })
            })
            .await
        }
        PROCESS_UPDATE_PATH => {
            unary(request, |m: UpdateRequest, _| async move {
                process::update(&table, m.process.as_ref(), m.pty.as_ref()).map(|()| Empty {})
            })
            .await
        }
        PROCESS_SEND_INPUT_PATH => {
            unary(request, |m: SendInputRequest, _| async move {
                process::send_input(&table, m.process.as_ref(), m.input.as_ref())
                    .await
                    .map(|()| Empty {})
            })
            .await
        }
        PROCESS_SEND_SIGNAL_PATH => {
            unary(request, |m: SendSignalRequest, _| async move {
                let signal = Signal::try_from(m.signal).unwrap_or(Signal::Unspecified);
                process::send_signal(&table, m.process.as_ref(), signal).map(|()| Empty {})
            })
            .await
        }
        PROCESS_CLOSE_STDIN_PATH => {
            unary(request, |m: CloseStdinRequest, _| async move {
                process::close_stdin(&table, m.process.as_ref())
                    .await
                    .map(|()| Empty {})
            })
            .await
        }
        PROCESS_STREAM_INPUT_PATH => stream_input(&table, request).await,
        FILESYSTEM_STAT_PATH => {
            fs_unary(state, request, |ctx, m: PathRequest| {
                filesystem::stat(&ctx, &m)
            })
            .await
        }
        FILESYSTEM_MAKE_DIR_PATH => {
            fs_unary(state, request, |ctx, m: PathRequest| {
                filesystem::make_dir(&ctx, &m)
            })
            .await
        }
        FILESYSTEM_MOVE_PATH => {
            fs_unary(state, request, |ctx, m: MoveRequest| {
                filesystem::move_entry(&ctx, &m)
            })
            .await
        }
        FILESYSTEM_LIST_DIR_PATH => {
            fs_unary(state, request, |ctx, m: ListDirRequest| {
                filesystem::list_dir(&ctx, &m)
            })
            .await
        }
        FILESYSTEM_REMOVE_PATH => {
            fs_unary(state, request, |ctx, m: PathRequest| {
                filesystem::remove(&ctx, &m).map(|()| Empty {})
            })
            .await
        }
        FILESYSTEM_WATCH_DIR_PATH => watch_dir(state, request).await,
        FILESYSTEM_CREATE_WATCHER_PATH => {
            let state = Arc::clone(state);
            unary(request, |m: WatchDirRequest, headers| async move {
                let ctx = state.context(basic_user(&headers).as_deref())?;
                let root = ctx.resolve(&m.path)?;
                let watch = blocking(move || Watch::new(root, &m)).await?;
                let watcher_id = state.watchers.create(watch)?;
                Ok(CreateWatcherResponse { watcher_id })
            })
            .await
        }
        FILESYSTEM_GET_WATCHER_EVENTS_PATH => {
            let state = Arc::clone(state);
            unary(request, |m: GetWatcherEventsRequest, _| async move {
                let events = state.watchers.take(&m.watcher_id)?;
                Ok(GetWatcherEventsResponse { events })
            })
            .await
        }
        FILESYSTEM_REMOVE_WATCHER_PATH => {
            let state = Arc::clone(state);
            unary(request, |m: RemoveWatcherRequest, _| async move {
                state.watchers.remove(&m.watcher_id).map(|()| Empty {})
            })
            .await
        }
        _ => connect::status_only(StatusCode::NOT_FOUND),
    }
}

/// A unary filesystem call, run as the request's user on a blocking thread.
async fn fs_unary<Req, Resp>(
    state: &Arc<State>,
    request: Request<Incoming>,
    run: impl FnOnce(Context, Req) -> Result<Resp, ConnectError> + Send + 'static,
) -> Response<ResponseBody>
where
    Req: proto::WireMessage + Send + 'static,
    Resp: proto::WireMessage + Send + 'static,
{
    let state = Arc::clone(state);
    unary(request, |message: Req, headers| async move {
        let ctx = state.context(basic_user(&headers).as_deref())?;
        blocking(move || run(ctx, message)).await
    })
    .await
}

/// Negotiates and reads the one message of a server-streaming call.
async fn server_stream<M: proto::WireMessage>(
    request: Request<Incoming>,
) -> Result<(Codec, HeaderMap, M), Response<ResponseBody>> {
    let codec = negotiate(request.headers(), Kind::ServerStream)?;
    let (parts, body) = request.into_parts();
    match connect::read_single::<M>(body, codec).await {
        Ok(message) => Ok((codec, parts.headers, message)),
        Err(e) => Err(stream_error(codec, e)),
    }
}

async fn start(state: &Arc<State>, request: Request<Incoming>) -> Response<ResponseBody> {
    let (codec, headers, message) = match server_stream::<proto::StartRequest>(request).await {
        Ok(call) => call,
        Err(response) => return response,
    };
    let started = state
        .context(basic_user(&headers).as_deref())
        .and_then(|ctx| {
            let launch = Launch {
                user: ctx.user,
                default_workdir: ctx.default_workdir,
                env: state.process_env(),
                timeout: connect::timeout(&headers),
            };
            process::start(&state.processes, message, launch)
        });
    match started {
        Ok(events) => {
            ServerStream::new(events, codec, connect::keepalive(&headers, state.keepalive))
                .into_response()
        }
        Err(e) => {
            crate::log!("start refused: {e}");
            stream_error(codec, e)
        }
    }
}

/// `StreamInput`: a client stream whose first message names the process and whose
/// data messages are written to it in order.
async fn stream_input(
    table: &Arc<ProcessTable>,
    request: Request<Incoming>,
) -> Response<ResponseBody> {
    let codec = match negotiate(request.headers(), Kind::ClientStream) {
        Ok(codec) => codec,
        Err(response) => return response,
    };
    let mut messages = connect::RequestStream::new(request.into_body(), codec);
    let mut target = None;
    loop {
        let message = match messages.next::<proto::StreamInputRequest>().await {
            Ok(Some(message)) => message,
            Ok(None) => break,
            Err(e) => return stream_error(codec, e),
        };
        let handled = match message {
            proto::StreamInputRequest::Start(start) => {
                process::input_target(table, start.process.as_ref()).map(|p| target = Some(p))
            }
            proto::StreamInputRequest::Data(data) => match &target {
                Some(process) => process::write_input(process, data.input.as_ref()).await,
                None => Err(error(
                    code::FAILED_PRECONDITION,
                    "input before the start message naming the process",
                )),
            },
            proto::StreamInputRequest::Keepalive(_) => Ok(()),
        };
        if let Err(e) = handled {
            return stream_error(codec, e);
        }
    }
    connect::stream_single(codec, &Empty {})
}

async fn watch_dir(state: &Arc<State>, request: Request<Incoming>) -> Response<ResponseBody> {
    let (codec, headers, message) = match server_stream::<proto::WatchDirRequest>(request).await {
        Ok(call) => call,
        Err(response) => return response,
    };
    let watch = match state.context(basic_user(&headers).as_deref()) {
        Ok(ctx) => match ctx.resolve(&message.path) {
            Ok(root) => blocking(move || Watch::new(root, &message)).await,
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    match watch {
        Ok(watch) => {
            let (tx, rx) = mpsc::channel(EVENT_QUEUE);
            watch::stream(watch, tx);
            ServerStream::new(rx, codec, connect::keepalive(&headers, state.keepalive))
                .into_response()
        }
        Err(e) => stream_error(codec, e),
    }
}

/// The user and path of a `/files` call: `?username=` (else the default user) and
/// `?path=`, resolved.
fn files_target(
    state: &State,
    request: &Request<Incoming>,
) -> Result<(Context, Option<PathBuf>), files::Failure> {
    let query = request.uri().query();
    let username = files::query_param(query, "username");
    let ctx = state.context(username.as_deref()).map_err(|e| {
        files::Failure(
            StatusCode::UNAUTHORIZED,
            format!("error looking up user: {}", e.message),
        )
    })?;
    let path = match files::query_param(query, "path") {
        Some(path) => Some(
            ctx.resolve(&path)
                .map_err(|e| files::Failure(StatusCode::BAD_REQUEST, e.message))?,
        ),
        None => None,
    };
    Ok((ctx, path))
}

async fn get_files(state: &State, request: Request<Incoming>) -> Response<ResponseBody> {
    let result = match files_target(state, &request) {
        Ok((ctx, path)) => {
            let path = path.unwrap_or_else(|| ctx.default_workdir.unwrap_or(ctx.user.home));
            files::download(&path).await
        }
        Err(failure) => Err(failure),
    };
    result.unwrap_or_else(files::Failure::into_response)
}

async fn post_files(state: &State, request: Request<Incoming>) -> Response<ResponseBody> {
    let (ctx, path) = match files_target(state, &request) {
        Ok(target) => target,
        Err(failure) => return failure.into_response(),
    };
    let (parts, body) = request.into_parts();
    let resolve = |name: &str| ctx.resolve(name).map_err(|e| e.message);
    match files::upload(&parts.headers, body, path, &ctx.user, resolve).await {
        Ok(written) => json_response(StatusCode::OK, &written),
        Err(failure) => {
            crate::log!("upload failed: {}", failure.1);
            failure.into_response()
        }
    }
}

/// `POST /init`'s body (envd's fields; `volumeMounts` and `hyperloopIP` are
/// accepted and ignored).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct InitRequest {
    env_vars: Option<BTreeMap<String, String>>,
    access_token: Option<String>,
    timestamp: Option<String>,
    default_user: Option<String>,
    default_workdir: Option<String>,
}

async fn read_json<T: for<'de> Deserialize<'de> + Default>(
    body: Incoming,
) -> Result<T, Response<ResponseBody>> {
    let bytes = connect::read_bounded(body, MAX_JSON_BODY)
        .await
        .map_err(|e| http_error(StatusCode::BAD_REQUEST, e.message))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| http_error(StatusCode::BAD_REQUEST, format!("malformed JSON body: {e}")))
}

async fn init(state: &State, request: Request<Incoming>) -> Response<ResponseBody> {
    let init: InitRequest = match read_json(request.into_body()).await {
        Ok(init) => init,
        Err(response) => return response,
    };
    let default_user = match init.default_user.as_deref().filter(|u| !u.is_empty()) {
        Some(name) => match users::by_name(name) {
            Some(user) => Some(user),
            None => {
                return http_error(
                    StatusCode::BAD_REQUEST,
                    format!("default user {name:?} does not exist"),
                );
            }
        },
        None => None,
    };
    let default_workdir = match init.default_workdir.as_deref().filter(|w| !w.is_empty()) {
        Some(dir) if dir.starts_with('/') => Some(users::normalize(std::path::Path::new(dir))),
        Some(dir) => {
            return http_error(
                StatusCode::BAD_REQUEST,
                format!("default workdir {dir:?} is not an absolute path"),
            );
        }
        None => None,
    };
    {
        let mut settings = lock(&state.settings);
        if let Some(token) = init.access_token.filter(|t| !t.is_empty()) {
            match &settings.access_token {
                Some(current) if !constant_time_eq(current.as_bytes(), token.as_bytes()) => {
                    return http_error(
                        StatusCode::CONFLICT,
                        "access token is already set and cannot be changed",
                    );
                }
                _ => settings.access_token = Some(token),
            }
        }
        if let Some(vars) = init.env_vars {
            settings.env_vars.extend(vars);
        }
        if let Some(user) = default_user {
            settings.default_user = user;
        }
        if default_workdir.is_some() {
            settings.default_workdir = default_workdir;
        }
    }
    if let Some(timestamp) = init.timestamp {
        system::sync_clock(&timestamp);
    }
    let mut response = connect::status_only(StatusCode::NO_CONTENT);
    response
        .headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-store"));
    response
}

/// Our extension: `GET /info`.
fn info(state: &State) -> Response<ResponseBody> {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Info {
        version: &'static str,
        protocol: &'static str,
        uptime_seconds: f64,
        pid: u32,
        processes: usize,
        load: Option<[f64; 3]>,
        memory: Option<system::Memory>,
        idle_timeout_seconds: Option<u64>,
        idle_seconds: f64,
    }
    let uptime = state.started.elapsed();
    json_response(
        StatusCode::OK,
        &Info {
            version: env!("CARGO_PKG_VERSION"),
            protocol: PROTOCOL_VERSION,
            uptime_seconds: uptime.as_secs_f64(),
            pid: std::process::id(),
            processes: state.processes.len(),
            load: system::load(),
            memory: system::memory(),
            idle_timeout_seconds: state.idle_timeout.map(|d| d.as_secs()),
            idle_seconds: state.activity.idle_for().as_secs_f64(),
        },
    )
}

/// Our extension: `GET /secrets` lists the names, `POST /secrets` with
/// `{"NAME": "value", ...}` sets some, `DELETE /secrets?name=NAME` removes one and
/// `DELETE /secrets` all. Values are never returned or logged.
async fn secrets(state: &State, request: Request<Incoming>) -> Response<ResponseBody> {
    #[derive(Serialize)]
    struct Names<'a> {
        names: Vec<&'a String>,
    }
    match request.method().clone() {
        Method::GET => {
            let secrets = lock(&state.secrets);
            json_response(
                StatusCode::OK,
                &Names {
                    names: secrets.keys().collect(),
                },
            )
        }
        Method::POST => {
            let new: BTreeMap<String, String> = match read_json(request.into_body()).await {
                Ok(new) => new,
                Err(response) => return response,
            };
            if let Some(bad) = new
                .keys()
                .find(|k| k.is_empty() || k.contains('=') || k.contains('\0'))
            {
                return http_error(
                    StatusCode::BAD_REQUEST,
                    format!("invalid variable name {bad:?}"),
                );
            }
            if new.values().any(|v| v.contains('\0')) {
                return http_error(StatusCode::BAD_REQUEST, "a secret contains a NUL byte");
            }
            let count = new.len();
            lock(&state.secrets).extend(new);
            crate::log!("{count} secret(s) set");
            connect::status_only(StatusCode::NO_CONTENT)
        }
        _ => {
            let name = files::query_param(request.uri().query(), "name");
            let mut secrets = lock(&state.secrets);
            match name {
                Some(name) => {
                    if secrets.remove(&name).is_none() {
                        return http_error(StatusCode::NOT_FOUND, format!("no secret {name:?}"));
                    }
                }
                None => secrets.clear(),
            }
            connect::status_only(StatusCode::NO_CONTENT)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_exactly() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abd", b"abc"));
        assert!(!constant_time_eq(b"ab", b"abc"));
        assert!(!constant_time_eq(b"abcd", b"abc"));
        assert!(!constant_time_eq(b"", b"abc"));
    }
}
