//! The listener, the accept loop and the HTTP routes.

use std::convert::Infallible;
use std::io;
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use aetherium_types::agent::{
    CONNECT_STREAM_JSON, KeepAlive, ListResponse, PROCESS_LIST_PATH, PROCESS_SEND_SIGNAL_PATH,
    PROCESS_START_PATH, PROTOCOL_VERSION, ProcessEvent, SendSignalRequest, StartResponse,
};
use bytes::Bytes;
use http::header::{ALLOW, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};

use crate::cli::{Config, Listen};
use crate::connect::{
    self, CONNECT_UNARY_JSON, MAX_START_BODY_BYTES, MAX_UNARY_BYTES, ResponseBody,
};
use crate::process::{self, ProcessTable};

struct State {
    processes: Arc<ProcessTable>,
    keepalive: Duration,
}

enum Listener {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener),
}

impl Listener {
    async fn bind(listen: &Listen) -> io::Result<Listener> {
        match listen {
            Listen::Unix(path) => Ok(Listener::Unix(bind_unix(path)?, path.clone())),
            // A `SocketAddr` goes straight to bind(2): no name resolution.
            Listen::Tcp(addr) => Ok(Listener::Tcp(TcpListener::bind(*addr).await?)),
        }
    }

    /// Removes the socket file, so a stopped agent leaves no stale socket behind.
    fn cleanup(&self) {
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn bind_unix(path: &Path) -> io::Result<UnixListener> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    // Replace a stale socket from an earlier run, but never delete anything else.
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    // The host side may run as another user than the agent.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(listener)
}

/// Serves until SIGTERM or SIGINT. Processes already started keep running.
pub async fn run(config: Config) -> io::Result<()> {
    let listener = Listener::bind(&config.listen).await?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let state = Arc::new(State {
        processes: Arc::default(),
        keepalive: config.keepalive,
    });
    // The bound address, which differs from the requested one for port 0.
    let bound = match &listener {
        Listener::Tcp(tcp) => tcp.local_addr().map_or(config.listen.clone(), Listen::Tcp),
        Listener::Unix(..) => config.listen.clone(),
    };
    crate::log!("listening on {bound} (protocol {PROTOCOL_VERSION})");

    loop {
        let accepted = tokio::select! {
            accepted = accept(&listener) => accepted,
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        };
        match accepted {
            Ok(Connection::Unix(stream)) => {
                tokio::spawn(serve_connection(stream, Arc::clone(&state)));
            }
            Ok(Connection::Tcp(stream)) => {
                tokio::spawn(serve_connection(stream, Arc::clone(&state)));
            }
            Err(e) => {
                // Typically EMFILE; pausing keeps a persistent error from spinning.
                crate::log!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    crate::log!("shutting down");
    listener.cleanup();
    Ok(())
}

enum Connection {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
}

async fn accept(listener: &Listener) -> io::Result<Connection> {
    match listener {
        Listener::Unix(listener, _) => Ok(Connection::Unix(listener.accept().await?.0)),
        Listener::Tcp(listener) => {
            let (stream, _) = listener.accept().await?;
            // Output events are small writes that should leave at once.
            stream.set_nodelay(true)?;
            Ok(Connection::Tcp(stream))
        }
    }
}

async fn serve_connection<S>(stream: S, state: Arc<State>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request| {
        let state = Arc::clone(&state);
        async move { Ok::<_, Infallible>(route(&state, request).await) }
    });
    let served = http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(e) = served {
        crate::log!("connection closed: {e}");
    }
}

async fn route(state: &State, request: Request<Incoming>) -> Response<ResponseBody> {
    let path = request.uri().path();
    let (allowed, allow) = if path == "/health" {
        (Method::GET, "GET")
    } else if [
        PROCESS_START_PATH,
        PROCESS_SEND_SIGNAL_PATH,
        PROCESS_LIST_PATH,
    ]
    .contains(&path)
    {
        (Method::POST, "POST")
    } else {
        return connect::status_only(StatusCode::NOT_FOUND);
    };
    if request.method() != allowed {
        let mut response = connect::status_only(StatusCode::METHOD_NOT_ALLOWED);
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static(allow));
        return response;
    }
    match path {
        PROCESS_START_PATH => start(state, request).await,
        PROCESS_SEND_SIGNAL_PATH => match unary::<SendSignalRequest>(request).await {
            Ok(call) => match process::send_signal(&state.processes, &call.process, call.signal) {
                Ok(()) => connect::unary_ok(&aetherium_types::agent::Empty {}),
                Err(e) => connect::unary_error(&e),
            },
            Err(response) => response,
        },
        PROCESS_LIST_PATH => match unary::<aetherium_types::agent::Empty>(request).await {
            Ok(_) => connect::unary_ok(&ListResponse {
                processes: state.processes.list(),
            }),
            Err(response) => response,
        },
        // envd answers 204 to its liveness probe.
        _ => connect::status_only(StatusCode::NO_CONTENT),
    }
}

/// Decodes a Connect unary JSON request, or returns the error response to send.
async fn unary<T: DeserializeOwned>(
    request: Request<Incoming>,
) -> Result<T, Response<ResponseBody>> {
    if connect::media_type(request.headers()).as_deref() != Some(CONNECT_UNARY_JSON) {
        return Err(connect::status_only(StatusCode::UNSUPPORTED_MEDIA_TYPE));
    }
    let body = connect::read_bounded(request.into_body(), MAX_UNARY_BYTES)
        .await
        .map_err(|e| connect::unary_error(&e))?;
    // Be lenient with an empty body: it can only mean the empty message.
    let json: &[u8] = if body.is_empty() { b"{}" } else { &body };
    serde_json::from_slice(json).map_err(|e| {
        connect::unary_error(&connect::invalid_argument(format!(
            "malformed request JSON: {e}"
        )))
    })
}

async fn start(state: &State, request: Request<Incoming>) -> Response<ResponseBody> {
    if connect::media_type(request.headers()).as_deref() != Some(CONNECT_STREAM_JSON) {
        return connect::status_only(StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
    let started = match connect::read_bounded(request.into_body(), MAX_START_BODY_BYTES).await {
        Ok(body) => connect::decode_start_request(body)
            .and_then(|call| process::start(&state.processes, call)),
        Err(e) => Err(e),
    };
    match started {
        Ok(events) => connect::response(
            StatusCode::OK,
            Some(CONNECT_STREAM_JSON),
            StartBody::new(events, state.keepalive).boxed_unsync(),
        ),
        Err(e) => {
            crate::log!("start refused: {e}");
            connect::stream_error(e)
        }
    }
}

/// The streamed body of a Start response: the supervisor's envelopes as they come,
/// with a keepalive event whenever the stream has been silent for `interval`. When
/// the client disconnects hyper drops this body, which the supervisor notices on its
/// next send.
struct StartBody {
    events: mpsc::Receiver<Bytes>,
    keepalive: Pin<Box<Sleep>>,
    interval: Duration,
}

impl StartBody {
    fn new(events: mpsc::Receiver<Bytes>, interval: Duration) -> Self {
        StartBody {
            events,
            keepalive: Box::pin(tokio::time::sleep(interval)),
            interval,
        }
    }
}

impl Body for StartBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        let message = match this.events.poll_recv(cx) {
            // The supervisor dropped its sender after the end-of-stream envelope.
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Ready(Some(message)) => message,
            Poll::Pending => match this.keepalive.as_mut().poll(cx) {
                Poll::Ready(()) => connect::stream_message(&StartResponse {
                    event: ProcessEvent::Keepalive(KeepAlive {}),
                }),
                Poll::Pending => return Poll::Pending,
            },
        };
        // Rearmed on every message: keepalives fill silences only. hyper polls again
        // after writing this frame, which registers the new deadline.
        let deadline = Instant::now() + this.interval;
        this.keepalive.as_mut().reset(deadline);
        Poll::Ready(Some(Ok(Frame::data(message))))
    }
}
