//! Reaching the agent of a VM that lives on another worker (distributed mode).
//!
//! Direct work — streamed exec, interactive exec, files — talks to a VM's agent
//! ([`AgentClient`]) rather than through the queue. A gateway, or a worker other
//! than the VM's owner, cannot reach the agent's unix socket, so every worker
//! serves a **tunnel endpoint** ([`serve`]): a TCP listener that, per connection,
//! authenticates the peer with the cluster's shared secret, checks that this worker
//! owns the VM it names, opens a byte stream to that VM's agent and splices the two
//! (`copy_bidirectional`). The client ([`AgentClient::tunnel`]) then speaks the
//! agent's normal HTTP through it, exactly as over a local socket.
//!
//! ## The handshake (version 1)
//!
//! ```text
//! worker → client   AETHERIUM-TUNNEL/1 <nonce: 64 lowercase hex = 32 random bytes>\n
//! client → worker   CONNECT <vm_id> <mac: 64 hex>\n
//! worker → client   OK\n                      then the agent's bytes, both ways
//!               or  ERR <kind> <message>\n    then the worker closes
//! ```
//!
//! `mac = HMAC-SHA256(secret, "aetherium-tunnel/1\n" || nonce || vm_id)`, nonce as
//! its 32 raw bytes: the secret never crosses the wire, and a recorded handshake
//! cannot be replayed (the nonce is fresh per connection). The worker checks the mac
//! in constant time, **before** it looks the VM up, so an unauthenticated peer
//! learns nothing about VMs. `<kind>` is one of `bad-request` (not a `CONNECT`
//! line, an invalid VM id, a line over [`MAX_REQUEST_LINE`] bytes), `auth` (wrong
//! mac), `timeout` (no complete handshake within
//! [`TunnelOptions::handshake_timeout`]),
//! `not-owner` (unknown VM or another worker's), `no-agent` (this worker's VM, but
//! its agent does not answer, or it is not running), `unavailable` (the worker
//! cannot tell now, e.g. its database is down).
//!
//! **The bytes after `OK` are not encrypted** (nor integrity-protected): commands,
//! output and files cross the network in clear, and someone on the path could
//! tamper with an authenticated connection. Run workers and gateways on a private
//! network (a VPC, WireGuard, …) and do not expose the tunnel port; TLS on the
//! tunnel is a follow-up.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;

use crate::cluster_tls::ClusterTls;
use crate::error::{CoreError, CoreResult};
use crate::identity::{AgentTokens, hmac_sha256};

/// First bytes of the worker's greeting line (version 1 of the handshake).
pub const GREETING_PREFIX: &str = "AETHERIUM-TUNNEL/1 ";
/// Random bytes in a greeting's nonce.
pub const NONCE_BYTES: usize = 32;
/// The greeting line's exact length: prefix, the nonce in hex, `\n`.
const GREETING_LEN: usize = GREETING_PREFIX.len() + 2 * NONCE_BYTES + 1;
/// Longest `CONNECT` line a worker reads (its `\n` included); longer is refused.
pub const MAX_REQUEST_LINE: usize = 256;
/// Longest VM id in a `CONNECT` line (ids are UUIDs; names are not accepted).
pub const MAX_VM_ID: usize = 128;
/// Longest answer line a client reads.
const MAX_ANSWER_LINE: usize = 512;
/// Longest message in an `ERR` line.
const MAX_ERROR_MESSAGE: usize = 300;
/// Prepended to what the mac covers, so that the secret's macs for this protocol
/// cannot be mistaken for anything else it might sign.
const MAC_LABEL: &[u8] = b"aetherium-tunnel/1\n";
/// How long a client waits for the TCP connection and the handshake.
pub const CLIENT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

// ---- the shared secret ---------------------------------------------------------------

/// The cluster's shared tunnel secret: every gateway and worker holds the same one.
/// Never printed. Cheap to clone.
#[derive(Clone, PartialEq, Eq)]
pub struct TunnelSecret(Arc<[u8]>);

impl TunnelSecret {
    /// Fewest bytes a secret may have.
    pub const MIN_LEN: usize = 16;

    /// A secret from configuration; refused (`InvalidInput`) when shorter than
    /// [`Self::MIN_LEN`] bytes. Generate one with e.g. `openssl rand -hex 32`.
    pub fn new(secret: impl AsRef<[u8]>) -> CoreResult<Self> {
        let secret = secret.as_ref();
        if secret.len() < Self::MIN_LEN {
            return Err(CoreError::InvalidInput(format!(
                "the tunnel secret must have at least {} bytes (it has {}): generate one with `openssl rand -hex 32`",
                Self::MIN_LEN,
                secret.len()
            )));
        }
        Ok(TunnelSecret(secret.into()))
    }

    /// The key of every sandbox's agent token in the cluster: gateways reach the
    /// agents of every worker's sandboxes, so all derive it from this secret.
    pub fn agent_tokens(&self) -> AgentTokens {
        AgentTokens::derived_from(&self.0)
    }

    /// The handshake's mac of `vm_id` under `nonce`.
    fn mac(&self, nonce: &[u8; NONCE_BYTES], vm_id: &str) -> [u8; 32] {
        hmac_sha256(&self.0, &[MAC_LABEL, nonce, vm_id.as_bytes()])
    }
}

impl fmt::Debug for TunnelSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TunnelSecret(<redacted>)")
    }
}

/// Compares two macs in time independent of where they differ.
fn macs_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    out
}

/// Decodes exactly `N` bytes of hex (either case); `None` for anything else.
fn from_hex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    if text.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in text.chunks_exact(2).enumerate() {
        out[i] = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(out)
}

/// VM ids in `CONNECT` lines: 1 to [`MAX_VM_ID`] of `[A-Za-z0-9_.-]`.
fn valid_vm_id(vm_id: &str) -> bool {
    !vm_id.is_empty()
        && vm_id.len() <= MAX_VM_ID
        && vm_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Parses a `CONNECT <vm_id> <mac>` line (without its `\n`; a trailing `\r` is
/// tolerated). The error is the `bad-request` message.
fn parse_connect(line: &[u8]) -> Result<(&str, [u8; 32]), &'static str> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let line = std::str::from_utf8(line).map_err(|_| "the handshake line is not UTF-8")?;
    let mut words = line.split(' ');
    let (Some("CONNECT"), Some(vm_id), Some(mac), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return Err("expected `CONNECT <vm_id> <mac>`");
    };
    if !valid_vm_id(vm_id) {
        return Err("invalid VM id");
    }
    let mac = from_hex::<32>(mac.as_bytes()).ok_or("the mac is not 64 hex digits")?;
    Ok((vm_id, mac))
}

/// An `ERR` line's message: one line of printable text, bounded.
fn sanitize(message: &str) -> String {
    let mut out: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > MAX_ERROR_MESSAGE {
        let mut end = MAX_ERROR_MESSAGE;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
    }
    out
}

// ---- client side -----------------------------------------------------------------------

/// Speaks the client's side of the handshake on a fresh connection to a worker's
/// tunnel endpoint ([`AgentClient::tunnel`] does this). Reads exactly the greeting
/// and the answer line, so nothing the agent sends afterwards is consumed. A
/// refusal is a `ConnectionRefused` error saying the worker's `ERR` line.
pub async fn client_handshake<S>(
    stream: &mut S,
    vm_id: &str,
    secret: &TunnelSecret,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let invalid = |message: String| std::io::Error::new(std::io::ErrorKind::InvalidData, message);
    if !valid_vm_id(vm_id) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("tunnel: invalid VM id {vm_id:?}"),
        ));
    }
    let mut greeting = [0u8; GREETING_LEN];
    stream.read_exact(&mut greeting).await?;
    let nonce = greeting
        .strip_prefix(GREETING_PREFIX.as_bytes())
        .and_then(|rest| rest.strip_suffix(b"\n"))
        .and_then(from_hex::<NONCE_BYTES>)
        .ok_or_else(|| {
            invalid(format!(
                "tunnel: not an aetherium tunnel endpoint (greeting {:?})",
                String::from_utf8_lossy(&greeting)
            ))
        })?;
    let mac = to_hex(&secret.mac(&nonce, vm_id));
    stream
        .write_all(format!("CONNECT {vm_id} {mac}\n").as_bytes())
        .await?;
    let mut line = Vec::with_capacity(16);
    loop {
        let byte = stream.read_u8().await?;
        if byte == b'\n' {
            break;
        }
        if line.len() >= MAX_ANSWER_LINE {
            return Err(invalid("tunnel: answer line too long".into()));
        }
        line.push(byte);
    }
    let answer = String::from_utf8_lossy(&line);
    if answer == "OK" {
        Ok(())
    } else if let Some(refusal) = answer.strip_prefix("ERR ") {
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            format!("refused by the VM's worker: {}", sanitize(refusal)),
        ))
    } else {
        Err(invalid(format!(
            "tunnel: unexpected answer {:?}",
            sanitize(&answer)
        )))
    }
}

// ---- worker side -------------------------------------------------------------------------

/// Why a worker will not open a tunnel to a VM's agent (its `ERR` line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Not this worker's VM: unknown, or owned by another worker (`ERR not-owner`).
    NotOwner(String),
    /// This worker's VM, but there is no agent to reach: not running, or its agent
    /// does not answer (`ERR no-agent`).
    NoAgent(String),
    /// The worker cannot tell now, e.g. its database is down (`ERR unavailable`).
    Unavailable(String),
}

impl Refusal {
    fn kind(&self) -> &'static str {
        match self {
            Refusal::NotOwner(_) => "not-owner",
            Refusal::NoAgent(_) => "no-agent",
            Refusal::Unavailable(_) => "unavailable",
        }
    }

    fn message(&self) -> &str {
        match self {
            Refusal::NotOwner(m) | Refusal::NoAgent(m) | Refusal::Unavailable(m) => m,
        }
    }
}

/// A byte stream to a sandbox's agent, whatever the transport (its socket, vsock,
/// or this tunnel to another host).
pub trait AgentIo: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> AgentIo for T {}

/// A connected byte stream to an agent, past any transport handshake: what the
/// agent reads from it is HTTP (`AgentClient::open_stream`).
pub type AgentStream = Box<dyn AgentIo>;

/// What a tunnel endpoint asks about the VM an authenticated peer names: a stream to
/// its agent if this worker owns it. `agents::OwnedAgents` is the worker's (the store
/// says who owns a VM, the backend where its agent is); a map from VM id to client
/// serves tests. The protocol stays apart from the agent client, which dials through
/// it.
#[async_trait]
pub trait TunnelTargets: Send + Sync + 'static {
    async fn open(&self, vm_id: &str) -> Result<AgentStream, Refusal>;
}

/// Limits of a tunnel endpoint.
#[derive(Debug, Clone)]
pub struct TunnelOptions {
    /// From accept to `OK`: the peer's line, the VM lookup and the connection to
    /// the agent. A peer that has not finished by then gets `ERR timeout`.
    pub handshake_timeout: Duration,
    /// Connections in their handshake at once; more wait in the listen backlog
    /// until one is done. Established tunnels do not count.
    pub max_pending_handshakes: usize,
    /// TLS with client certificates ([`ClusterTls`]): every connection is a TLS
    /// session first (within the handshake timeout), the handshake runs inside.
    /// `None`: plaintext, an operator's explicit choice (`cluster.plaintext_tunnel`).
    pub tls: Option<ClusterTls>,
}

impl Default for TunnelOptions {
    fn default() -> Self {
        TunnelOptions {
            handshake_timeout: Duration::from_secs(10),
            max_pending_handshakes: 256,
            tls: None,
        }
    }
}

/// Serves a worker's tunnel endpoint on `listener` with default limits: see
/// [`serve_with`].
pub async fn serve(
    listener: TcpListener,
    targets: Arc<dyn TunnelTargets>,
    secret: TunnelSecret,
    shutdown: watch::Receiver<bool>,
) {
    serve_with(
        listener,
        targets,
        secret,
        TunnelOptions::default(),
        shutdown,
    )
    .await
}

/// Serves a worker's tunnel endpoint on `listener` (bind it to the address the
/// worker advertises as `worker.address`, reachable from the gateways): each
/// connection is authenticated with `secret`, its VM looked up in `targets`
/// ([`OwnedAgents`] in a worker), and on success spliced to the VM's agent until
/// either side closes. Returns when `shutdown` turns true (or its sender is
/// dropped), after closing every connection it holds, tunnels included.
pub async fn serve_with(
    listener: TcpListener,
    targets: Arc<dyn TunnelTargets>,
    secret: TunnelSecret,
    options: TunnelOptions,
    mut shutdown: watch::Receiver<bool>,
) {
    let pending = Arc::new(Semaphore::new(options.max_pending_handshakes.max(1)));
    let mut connections = JoinSet::new();
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "tunnel endpoint listening");
    }
    loop {
        // At most `max_pending_handshakes` connections are in their handshake: past
        // that, new ones wait in the listen backlog until one finishes (a burst of
        // calls is slowed, not refused; idle peers are cut off by the timeout).
        let permit = tokio::select! {
            () = stopped(&mut shutdown) => break,
            permit = pending.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break, // never closed
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (stream, peer) = tokio::select! {
            () = stopped(&mut shutdown) => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, most likely: let some close.
                    tracing::warn!(error = %e, "tunnel: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        connections.spawn(connection(
            stream,
            peer,
            targets.clone(),
            secret.clone(),
            options.handshake_timeout,
            options.tls.clone(),
            permit,
        ));
    }
    connections.shutdown().await;
    tracing::info!("tunnel endpoint stopped");
}

/// Resolves once `shutdown` is true or its sender is gone.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`: dropped here, not held in `select!`.
    let _ = shutdown.wait_for(|stop| *stop).await.is_ok();
}

/// Why a handshake did not end in `OK`.
enum HandshakeError {
    /// The connection failed or the peer went away: nothing to answer.
    Io(std::io::Error),
    /// Answered with `ERR <kind> <message>`.
    Refused(&'static str, String),
}

impl From<std::io::Error> for HandshakeError {
    fn from(e: std::io::Error) -> Self {
        HandshakeError::Io(e)
    }
}

/// One connection: TLS (when configured), the handshake under its time limit,
/// then the splice.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    targets: Arc<dyn TunnelTargets>,
    secret: TunnelSecret,
    handshake_timeout: Duration,
    tls: Option<ClusterTls>,
    permit: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let Some(tls) = tls else {
        return tunnel(stream, peer, targets, secret, handshake_timeout, permit).await;
    };
    let started = tokio::time::Instant::now();
    match tokio::time::timeout(handshake_timeout, tls.accept(stream)).await {
        Ok(Ok(stream)) => {
            let left = handshake_timeout.saturating_sub(started.elapsed());
            tunnel(stream, peer, targets, secret, left, permit).await
        }
        Ok(Err(e)) => {
            tracing::warn!(%peer, error = %e, "tunnel: refused a TLS session (no or a foreign certificate?)");
        }
        Err(_) => tracing::debug!(%peer, "tunnel: no TLS session within the handshake timeout"),
    }
}

/// The handshake under its time limit, then the splice.
async fn tunnel<S>(
    mut stream: S,
    peer: SocketAddr,
    targets: Arc<dyn TunnelTargets>,
    secret: TunnelSecret,
    handshake_timeout: Duration,
    permit: OwnedSemaphorePermit,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let outcome = tokio::time::timeout(
        handshake_timeout,
        server_handshake(&mut stream, &*targets, &secret),
    )
    .await
    .unwrap_or_else(|_| {
        Err(HandshakeError::Refused(
            "timeout",
            format!("no complete handshake within {handshake_timeout:?}"),
        ))
    });
    let (vm_id, mut agent, early) = match outcome {
        Ok(tunnel) => tunnel,
        Err(HandshakeError::Io(e)) => {
            tracing::debug!(%peer, error = %e, "tunnel: handshake cut off");
            return;
        }
        Err(HandshakeError::Refused(kind, message)) => {
            if kind == "auth" {
                tracing::warn!(%peer, "tunnel: refused a peer with a wrong mac (is the tunnel secret the same everywhere?)");
            } else {
                tracing::debug!(%peer, kind, %message, "tunnel: refused");
            }
            let line = format!("ERR {kind} {}\n", sanitize(&message));
            // The peer may not read: bounded, like the rest of the handshake.
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                stream.write_all(line.as_bytes()).await?;
                stream.shutdown().await
            })
            .await;
            return;
        }
    };
    drop(permit);
    tracing::debug!(%peer, vm_id, "tunnel open");
    let spliced = async {
        stream.write_all(b"OK\n").await?;
        // Bytes a peer sent right behind its line, not waiting for `OK`.
        if !early.is_empty() {
            agent.write_all(&early).await?;
        }
        tokio::io::copy_bidirectional(&mut stream, &mut agent).await
    }
    .await;
    match spliced {
        Ok((up, down)) => tracing::debug!(%peer, vm_id, up, down, "tunnel closed"),
        Err(e) => tracing::debug!(%peer, vm_id, error = %e, "tunnel broken"),
    }
}

/// The worker's side of the handshake: the VM id, a stream to its agent, and any
/// bytes the peer sent after its line.
async fn server_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    targets: &dyn TunnelTargets,
    secret: &TunnelSecret,
) -> Result<(String, AgentStream, Vec<u8>), HandshakeError> {
    let nonce = new_nonce()?;
    stream
        .write_all(format!("{GREETING_PREFIX}{}\n", to_hex(&nonce)).as_bytes())
        .await?;
    let (line, early) = read_request_line(stream).await?;
    let (vm_id, mac) =
        parse_connect(&line).map_err(|e| HandshakeError::Refused("bad-request", e.into()))?;
    if !macs_equal(&secret.mac(&nonce, vm_id), &mac) {
        return Err(HandshakeError::Refused(
            "auth",
            "wrong mac: the tunnel secrets differ".into(),
        ));
    }
    let io = targets
        .open(vm_id)
        .await
        .map_err(|r| HandshakeError::Refused(r.kind(), r.message().to_string()))?;
    Ok((vm_id.to_string(), io, early))
}

/// Reads up to the first `\n` (at most [`MAX_REQUEST_LINE`] bytes, `\n` included):
/// the line without it, and what came after it in the same reads.
async fn read_request_line<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<(Vec<u8>, Vec<u8>), HandshakeError> {
    let mut buf = vec![0u8; MAX_REQUEST_LINE];
    let mut filled = 0;
    loop {
        let n = stream.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Err(HandshakeError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        let scanned = filled;
        filled += n;
        if let Some(at) = buf[scanned..filled].iter().position(|&b| b == b'\n') {
            let end = scanned + at;
            let early = buf[end + 1..filled].to_vec();
            buf.truncate(end);
            return Ok((buf, early));
        }
        if filled == buf.len() {
            return Err(HandshakeError::Refused(
                "bad-request",
                format!("handshake line over {MAX_REQUEST_LINE} bytes"),
            ));
        }
    }
}

fn new_nonce() -> std::io::Result<[u8; NONCE_BYTES]> {
    use rand::TryRngCore as _;
    let mut nonce = [0u8; NONCE_BYTES];
    rand::rngs::OsRng
        .try_fill_bytes(&mut nonce)
        .map_err(|e| std::io::Error::other(format!("no randomness: {e}")))?;
    Ok(nonce)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent_client::AgentClient;

    #[test]
    fn hex_round_trips_and_refuses_junk() {
        let bytes: [u8; 4] = [0x00, 0x7f, 0xab, 0xff];
        assert_eq!(to_hex(&bytes), "007fabff");
        assert_eq!(from_hex::<4>(b"007fabff"), Some(bytes));
        assert_eq!(from_hex::<4>(b"007FABFF"), Some(bytes));
        assert_eq!(from_hex::<4>(b"007fabf"), None);
        assert_eq!(from_hex::<4>(b"007fabfg"), None);
        assert_eq!(from_hex::<4>(b"+07fabff"), None);
    }

    #[test]
    fn connect_lines_parse_strictly() {
        let mac = "ab".repeat(32);
        let line = format!("CONNECT vm-1_a.b {mac}");
        let (vm, parsed) = parse_connect(line.as_bytes()).expect("valid");
        assert_eq!(vm, "vm-1_a.b");
        assert_eq!(parsed, [0xab; 32]);
        assert!(parse_connect(format!("{line}\r").as_bytes()).is_ok());
        for bad in [
            String::new(),
            "CONNECT".into(),
            format!("CONNECT  {mac}"),
            format!("connect vm {mac}"),
            format!("CONNECT vm {mac} extra"),
            format!("CONNECT vm/../x {mac}"),
            format!("CONNECT {} {mac}", "v".repeat(MAX_VM_ID + 1)),
            "CONNECT vm abcd".into(),
            format!("CONNECT vm\t {mac}"),
        ] {
            assert!(parse_connect(bad.as_bytes()).is_err(), "{bad:?}");
        }
        assert!(parse_connect(b"CONNECT \xff\xfe x").is_err());
    }

    #[test]
    fn secrets_are_long_enough_and_never_printed() {
        assert!(TunnelSecret::new("short").is_err());
        let secret = TunnelSecret::new("a-long-enough-s3cret").expect("secret");
        assert!(!format!("{secret:?}").contains("s3cret"));
        let client = AgentClient::tunnel("10.0.0.1:7443", "vm", secret);
        assert!(!format!("{client:?}").contains("s3cret"));
    }

    #[test]
    fn macs_bind_nonce_vm_and_secret() {
        let a = TunnelSecret::new("0123456789abcdef").expect("secret");
        let b = TunnelSecret::new("0123456789abcdeF").expect("secret");
        let nonce = [7u8; NONCE_BYTES];
        let mac = a.mac(&nonce, "vm-1");
        assert!(macs_equal(&mac, &a.mac(&nonce, "vm-1")));
        assert!(!macs_equal(&mac, &a.mac(&nonce, "vm-2")));
        assert!(!macs_equal(&mac, &a.mac(&[8u8; NONCE_BYTES], "vm-1")));
        assert!(!macs_equal(&mac, &b.mac(&nonce, "vm-1")));
    }

    #[test]
    fn error_messages_stay_on_one_bounded_line() {
        assert_eq!(sanitize("a\nb\rc"), "a b c");
        let long = "é".repeat(MAX_ERROR_MESSAGE);
        let cut = sanitize(&long);
        assert!(cut.len() <= MAX_ERROR_MESSAGE && cut.chars().all(|c| c == 'é'));
    }

    proptest::proptest! {
        #[test]
        fn parsing_any_line_never_panics(line in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let _ = parse_connect(&line);
            let _ = sanitize(&String::from_utf8_lossy(&line));
        }

        #[test]
        fn client_handshake_survives_any_answer(
            greet in proptest::bool::ANY,
            answer in proptest::collection::vec(proptest::num::u8::ANY, 0..700),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async {
                let (mut client, mut server) = tokio::io::duplex(4096);
                let mut bytes = Vec::new();
                if greet {
                    bytes.extend_from_slice(format!("{GREETING_PREFIX}{}\n", "5a".repeat(NONCE_BYTES)).as_bytes());
                }
                bytes.extend_from_slice(&answer);
                server.write_all(&bytes).await.expect("write");
                drop(server);
                let secret = TunnelSecret::new("0123456789abcdef").expect("secret");
                let outcome = tokio::time::timeout(
                    Duration::from_secs(5),
                    client_handshake(&mut client, "vm", &secret),
                ).await.expect("the client handshake ends on EOF");
                // Only exactly `OK` accepts.
                if outcome.is_ok() {
                    assert!(greet && answer.starts_with(b"OK\n"));
                }
            });
        }
    }
}
