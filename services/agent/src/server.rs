//! The listener, the accept loop (HTTP/1.1 and h2c on every connection), shutdown on
//! SIGTERM/SIGINT, and the idle shutdown.

use std::convert::Infallible;
use std::io;
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aetherium_types::agent::PROTOCOL_VERSION;
use http_body_util::BodyExt as _;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{SignalKind, signal};

use crate::api::{self, State};
use crate::cli::{Config, Listen};

enum Listener {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener),
    Vsock(tokio_vsock::VsockListener),
}

impl Listener {
    async fn bind(listen: &Listen) -> io::Result<Listener> {
        match listen {
            Listen::Unix(path) => Ok(Listener::Unix(bind_unix(path)?, path.clone())),
            // A `SocketAddr` goes straight to bind(2): no name resolution.
            Listen::Tcp(addr) => Ok(Listener::Tcp(TcpListener::bind(*addr).await?)),
            Listen::Vsock(port) => Ok(Listener::Vsock(tokio_vsock::VsockListener::bind(
                tokio_vsock::VsockAddr::new(tokio_vsock::VMADDR_CID_ANY, *port),
            )?)),
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

/// Reads the access token the host left for this agent and deletes the file, so
/// nothing in the sandbox can read it later. Never follows a symlink.
fn take_token_file(path: &Path) -> io::Result<String> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let context = |e: io::Error| {
        io::Error::new(
            e.kind(),
            format!("access token file {}: {e}", path.display()),
        )
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc_o_nofollow())
        .open(path)
        .map_err(context)?;
    let mut token = String::new();
    (&mut file)
        .take(1024)
        .read_to_string(&mut token)
        .map_err(context)?;
    std::fs::remove_file(path).map_err(context)?;
    let token = token.trim().to_string();
    if token.is_empty() {
        return Err(context(io::Error::new(io::ErrorKind::InvalidData, "empty")));
    }
    Ok(token)
}

fn libc_o_nofollow() -> i32 {
    rustix::fs::OFlags::NOFOLLOW.bits() as i32
}

/// Serves until SIGTERM, SIGINT or the idle timeout. Processes already started keep
/// running.
pub async fn run(mut config: Config) -> io::Result<()> {
    if let Some(path) = config.access_token_file.take() {
        config.access_token = Some(take_token_file(&path)?);
    }
    let state = Arc::new(State::new(&config).map_err(io::Error::other)?);
    let listener = Listener::bind(&config.listen).await?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    // The bound address, which differs from the requested one for port 0.
    let bound = match &listener {
        Listener::Tcp(tcp) => tcp.local_addr().map_or(config.listen.clone(), Listen::Tcp),
        Listener::Unix(..) | Listener::Vsock(_) => config.listen.clone(),
    };
    crate::log!("listening on {bound} (protocol {PROTOCOL_VERSION})");
    let idle = idle_watch(Arc::clone(&state));
    tokio::pin!(idle);

    loop {
        let accepted = tokio::select! {
            accepted = accept(&listener) => accepted,
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            () = &mut idle => {
                crate::log!("idle for {:?}: exiting", state.idle_timeout.unwrap_or_default());
                break;
            }
        };
        match accepted {
            Ok(Connection::Unix(stream)) => {
                tokio::spawn(serve_connection(stream, Arc::clone(&state)));
            }
            Ok(Connection::Tcp(stream)) => {
                tokio::spawn(serve_connection(stream, Arc::clone(&state)));
            }
            Ok(Connection::Vsock(stream)) => {
                tokio::spawn(serve_connection(stream, Arc::clone(&state)));
            }
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                // A refused peer: already closed, nothing to wait out.
                crate::log!("{e}");
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

/// Resolves once the agent has been idle for the idle timeout: no process running
/// and no request in flight or arriving. Never, without a timeout.
async fn idle_watch(state: Arc<State>) {
    let Some(timeout) = state.idle_timeout else {
        return std::future::pending().await;
    };
    let tick = (timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    loop {
        tokio::time::sleep(tick).await;
        if state.processes.len() > 0 {
            state.activity.touch();
        } else if state.activity.idle_for() >= timeout {
            return;
        }
    }
}

enum Connection {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
    Vsock(tokio_vsock::VsockStream),
}

async fn accept(listener: &Listener) -> io::Result<Connection> {
    match listener {
        Listener::Unix(listener, _) => {
            let (stream, _) = listener.accept().await?;
            let peer = stream.peer_cred()?;
            if !unix_peer_allowed(peer.pid(), peer.uid(), rustix::process::geteuid().as_raw()) {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "refused a connection from pid {} (uid {}) inside the sandbox",
                        peer.pid().unwrap_or_default(),
                        peer.uid()
                    ),
                ));
            }
            Ok(Connection::Unix(stream))
        }
        Listener::Tcp(listener) => {
            let (stream, _) = listener.accept().await?;
            // Output events are small writes that should leave at once.
            stream.set_nodelay(true)?;
            Ok(Connection::Tcp(stream))
        }
        Listener::Vsock(listener) => Ok(Connection::Vsock(listener.accept().await?.0)),
    }
}

/// Whether a unix-socket peer may talk to the agent. The host reaches the socket
/// from outside the sandbox's PID namespace, where the kernel reports its pid as 0;
/// a process inside the sandbox (pid visible) must run as the agent's own user or
/// root, so an unprivileged user in a workspace cannot use the agent as root.
fn unix_peer_allowed(pid: Option<i32>, uid: u32, own_uid: u32) -> bool {
    matches!(pid, None | Some(0)) || uid == own_uid || uid == 0
}

/// Serves one connection: HTTP/1.1, or HTTP/2 with prior knowledge (h2c), told apart
/// by the connection preface.
async fn serve_connection<S>(stream: S, state: Arc<State>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request| {
        let state = Arc::clone(&state);
        async move {
            let guard = state.activity.begin();
            let response = api::route(state, request).await;
            // The request counts as in flight until its body has been sent.
            Ok::<_, Infallible>(response.map(|body| {
                body.map_frame(move |frame| {
                    let _ = &guard;
                    frame
                })
                .boxed_unsync()
            }))
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    builder.http2().timer(TokioTimer::new());
    if let Err(e) = builder
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        crate::log!("connection closed: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::unix_peer_allowed;

    #[test]
    fn peers_inside_the_sandbox_must_be_the_agents_user_or_root() {
        // The host: outside the PID namespace, whatever its uid.
        assert!(unix_peer_allowed(Some(0), 1000, 0));
        assert!(unix_peer_allowed(None, 1000, 0));
        // Inside: root and the agent's own user only.
        assert!(unix_peer_allowed(Some(42), 0, 0));
        assert!(unix_peer_allowed(Some(42), 1000, 1000));
        assert!(!unix_peer_allowed(Some(42), 1000, 0));
        assert!(!unix_peer_allowed(Some(42), 65534, 1000));
    }
}
