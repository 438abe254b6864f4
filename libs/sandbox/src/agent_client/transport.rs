//! How the client reaches an agent: unix socket, TCP, hybrid vsock (Firecracker) or
//! the cluster tunnel, and the HTTP/1 connection each call drives.

use super::*;

/// How to reach the agent: everything above `connect` only needs a byte stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Transport {
    Unix(PathBuf),
    Tcp(SocketAddr),
    /// Firecracker's (and QEMU's vhost-user) hybrid vsock: the VMM's unix socket,
    /// then `CONNECT <port>\n`, answered by `OK <host port>\n`.
    HybridVsock(PathBuf, u32),
    /// The tunnel endpoint of the worker that owns the VM (`host:port`), then the
    /// authenticated `CONNECT <vm_id> <mac>` handshake ([`crate::tunnel`]).
    Tunnel {
        addr: String,
        vm_id: String,
        secret: TunnelSecret,
        /// TLS, and the worker whose certificate must answer.
        tls: Option<(ClusterTls, String)>,
    },
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transport::Unix(path) => write!(f, "unix:{}", path.display()),
            Transport::Tcp(addr) => write!(f, "tcp:{addr}"),
            Transport::HybridVsock(path, port) => write!(f, "vsock:{}:{port}", path.display()),
            Transport::Tunnel { addr, vm_id, .. } => write!(f, "tunnel:{addr}/{vm_id}"),
        }
    }
}

/// Speaks the hybrid-vsock handshake on a fresh connection to the VMM's socket. The
/// answer is read a byte at a time, so nothing the agent sends after it is consumed.
pub(super) async fn hybrid_vsock_handshake<S>(stream: &mut S, port: u32) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await?;
    let mut line = Vec::with_capacity(16);
    loop {
        let byte = stream.read_u8().await?;
        if byte == b'\n' {
            break;
        }
        if line.len() >= MAX_HANDSHAKE_LINE {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "hybrid vsock handshake: answer line too long",
            ));
        }
        line.push(byte);
    }
    let answer = String::from_utf8_lossy(&line);
    if answer.starts_with("OK ") {
        Ok(())
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            format!("hybrid vsock handshake refused: {answer:?}"),
        ))
    }
}

/// Connects to the unix socket at `path` without following a symlink in its last
/// component. A container can replace its own `agent.sock` (the directory is
/// mounted into it); following a link there would let it point the host, which
/// connects as root, at another sandbox's agent or the Docker socket. The socket is
/// opened with `O_PATH | O_NOFOLLOW`, checked to be a socket, and connected through
/// `/proc/self/fd/N`, which names that very inode: no window for a swap.
pub(super) async fn connect_unix(
    path: &std::path::Path,
) -> std::io::Result<tokio::net::UnixStream> {
    use std::os::fd::AsRawFd as _;
    use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
    let node = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    let kind = node.metadata()?.file_type();
    if !kind.is_socket() {
        let what = if kind.is_symlink() {
            "a symbolic link"
        } else {
            "not a socket"
        };
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{} is {what}: refusing to connect through it",
                path.display()
            ),
        ));
    }
    let stream =
        tokio::net::UnixStream::connect(format!("/proc/self/fd/{}", node.as_raw_fd())).await;
    drop(node);
    stream
}

impl Transport {
    pub(super) async fn connect(&self) -> Result<AgentStream, AgentError> {
        let unavailable =
            |e: std::io::Error| AgentError::Unavailable(format!("connecting to {self}: {e}"));
        Ok(match self {
            Transport::Unix(path) => Box::new(connect_unix(path).await.map_err(unavailable)?),
            Transport::Tcp(addr) => {
                let stream = tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(unavailable)?;
                // Output events are small and should not wait for Nagle.
                stream.set_nodelay(true).map_err(unavailable)?;
                Box::new(stream)
            }
            Transport::HybridVsock(path, port) => {
                let mut stream = connect_unix(path).await.map_err(unavailable)?;
                hybrid_vsock_handshake(&mut stream, *port)
                    .await
                    .map_err(unavailable)?;
                Box::new(stream)
            }
            Transport::Tunnel {
                addr,
                vm_id,
                secret,
                tls,
            } => {
                let connect = async {
                    let stream = tokio::net::TcpStream::connect(addr.as_str()).await?;
                    stream.set_nodelay(true)?;
                    let mut stream: AgentStream = match tls {
                        Some((tls, worker_id)) => Box::new(tls.connect(worker_id, stream).await?),
                        None => Box::new(stream),
                    };
                    tunnel::client_handshake(&mut stream, vm_id, secret).await?;
                    Ok::<_, std::io::Error>(stream)
                };
                match tokio::time::timeout(tunnel::CLIENT_CONNECT_TIMEOUT, connect).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => return Err(unavailable(e)),
                    Err(_) => {
                        return Err(unavailable(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("no tunnel after {:?}", tunnel::CLIENT_CONNECT_TIMEOUT),
                        )));
                    }
                }
            }
        })
    }
}

pub(super) type Http1Connection = http1::Connection<TokioIo<AgentStream>, RequestBody>;

/// Keeps a call's HTTP connection alive; dropping it closes the connection.
pub(super) struct Connection {
    pub(super) _sender: http1::SendRequest<RequestBody>,
    pub(super) driver: Driver,
}

/// What makes a connection read and write.
pub(super) enum Driver {
    /// A task of its own: calls whose request body streams, or whose response is
    /// read to its end at once.
    Task(JoinHandle<()>),
    /// The reader of the response body ([`ProcessStream`], [`Download`]), before
    /// each read: the socket is read in the reader's own task, so handing a body
    /// frame over wakes no other task (often on another thread). `None` once the
    /// connection is done (how it ended, the body tells).
    Inline(Option<Pin<Box<Http1Connection>>>),
}

impl Connection {
    /// Lets an inline connection read what has arrived, registering the task for
    /// more. Nothing to do for one with its own task.
    pub(super) fn drive(&mut self, cx: &mut Context<'_>) {
        if let Driver::Inline(conn) = &mut self.driver {
            drive(conn, cx);
        }
    }

    /// Hands an inline connection to a task of its own: for a response body read
    /// by code that does not drive it (an error answer).
    pub(super) fn detach(&mut self) {
        if let Driver::Inline(conn) = &mut self.driver {
            let conn = conn.take();
            self.driver = Driver::Task(tokio::spawn(async move {
                if let Some(conn) = conn {
                    let _ = conn.await;
                }
            }));
        }
    }
}

/// Polls a connection until it is done, then drops it: whatever still waits on it
/// (a response, a body) is then told it was cut off.
pub(super) fn drive(conn: &mut Option<Pin<Box<Http1Connection>>>, cx: &mut Context<'_>) {
    if let Some(c) = conn
        && c.as_mut().poll(cx).is_ready()
    {
        *conn = None;
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Driver::Task(task) = &self.driver {
            task.abort();
        }
    }
}
