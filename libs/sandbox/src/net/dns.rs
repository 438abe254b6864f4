//! The sandboxes' resolver: one per fenced bridge, on the bridge's gateway address
//! at a port of its own (two installations sharing a bridge each have theirs).
//!
//! Every DNS query a sandbox sends, to whatever server, is redirected here by a
//! DNAT rule of that sandbox ([`guard::open_for_sandbox`]), so the resolver knows
//! the sandbox by the query's source address. A name the sandbox's network policy
//! refuses is answered "no such name" and never leaves the host; the others are
//! forwarded to the host's resolvers, and for a name an `allow` entry lists, the
//! addresses of the answer are opened in the sandbox's policy chain before the
//! sandbox sees them. A query from an address no sandbox has is refused.

use std::collections::{BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use aetherium_types::{NameVerdict, NetworkPolicy};
use simple_dns::rdata::RData;
use simple_dns::{Packet, PacketFlag, RCODE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Mutex, Semaphore};

use super::NetError;
use super::guard::{self, Fence};

/// How long one upstream server has to answer.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);
/// Queries answered at once (UDP); more are dropped, as a busy server would.
const MAX_IN_FLIGHT: usize = 256;
/// TCP connections open at once, and how long one may sit idle.
const MAX_TCP_CONNECTIONS: usize = 64;
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Addresses names may open for one sandbox: past it, allowed names are answered
/// SERVFAIL (a sandbox resolving without end must not grow its chain without end).
pub const MAX_OPENED: usize = 1024;

/// The host's resolvers: the `nameserver` lines of `/etc/resolv.conf`, port 53.
pub fn host_resolvers() -> Vec<SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    parse_resolv_conf(&text)
}

fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
                .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .collect()
}

/// A sandbox the resolver answers, by its address.
struct Client {
    vm_id: String,
    /// Normalized; `None`: the network's defaults (every name resolves).
    policy: Option<NetworkPolicy>,
    /// What its allowed names resolved to, opened in its policy chain.
    opened: BTreeSet<Ipv4Addr>,
}

struct State {
    bridge: String,
    forward: &'static str,
    listen: SocketAddrV4,
    egress_allow: Vec<String>,
    upstream: Vec<SocketAddr>,
    /// Held across the firewall change of an open, so that the rules always match
    /// what is recorded here.
    clients: Mutex<HashMap<Ipv4Addr, Client>>,
}

impl State {
    fn fence(&self) -> Fence<'_> {
        Fence {
            bridge: &self.bridge,
            forward: self.forward,
        }
    }

    /// Lays the sandbox's rules: `policy`'s addresses with `opened` allowed too,
    /// the operator's openings and its DNS redirected here.
    async fn lay_rules(
        &self,
        vm_id: &str,
        ip: Ipv4Addr,
        policy: Option<&NetworkPolicy>,
        opened: &BTreeSet<Ipv4Addr>,
    ) -> Result<(), NetError> {
        let firewall = policy.map(|p| p.addresses_with(opened.iter().copied()));
        guard::open_for_sandbox(
            self.fence(),
            vm_id,
            ip,
            &self.egress_allow,
            firewall.as_ref(),
            Some(self.listen),
        )
        .await
    }
}

/// A running resolver; its tasks end when it is dropped.
pub struct SandboxResolver {
    state: Arc<State>,
    tasks: Vec<tokio::task::AbortHandle>,
}

impl Drop for SandboxResolver {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl SandboxResolver {
    /// Listens on `gateway` (an address of the fence's bridge) at a free port, UDP
    /// and TCP alike, forwarding to `upstream` (none: every allowed name is answered
    /// SERVFAIL).
    pub async fn start(
        fence: Fence<'_>,
        gateway: Ipv4Addr,
        egress_allow: Vec<String>,
        upstream: Vec<SocketAddr>,
    ) -> Result<SandboxResolver, NetError> {
        if upstream.is_empty() {
            tracing::warn!(
                bridge = fence.bridge,
                "no upstream DNS server (no nameserver in /etc/resolv.conf, no network.dns_upstream): sandboxes' names will not resolve"
            );
        }
        let (udp, tcp) = bind_pair(gateway).await?;
        let listen = match udp.local_addr() {
            Ok(SocketAddr::V4(addr)) => addr,
            other => {
                return Err(NetError::Command(format!(
                    "the sandbox resolver's socket has no IPv4 address: {other:?}"
                )));
            }
        };
        let state = Arc::new(State {
            bridge: fence.bridge.to_string(),
            forward: fence.forward,
            listen,
            egress_allow,
            upstream,
            clients: Mutex::new(HashMap::new()),
        });
        let tasks = vec![
            tokio::spawn(serve_udp(state.clone(), Arc::new(udp))).abort_handle(),
            tokio::spawn(serve_tcp(state.clone(), tcp)).abort_handle(),
        ];
        tracing::info!(bridge = fence.bridge, %listen, "sandbox resolver listening");
        Ok(SandboxResolver { state, tasks })
    }

    /// Where it listens (the DNAT rules' target).
    pub fn listen_addr(&self) -> SocketAddrV4 {
        self.state.listen
    }

    /// Gives the sandbox at `ip` its rules ([`guard::open_for_sandbox`]: its policy,
    /// the operator's openings, its DNS redirected here) and answers its queries
    /// under `policy` from now on. Addresses its allowed names opened stay while
    /// its allowed names stay the same.
    pub async fn open(
        &self,
        vm_id: &str,
        ip: Ipv4Addr,
        policy: Option<&NetworkPolicy>,
    ) -> Result<(), NetError> {
        let policy = policy
            .map(NetworkPolicy::normalized)
            .transpose()
            .map_err(NetError::Config)?;
        let state = &self.state;
        let mut clients = state.clients.lock().await;
        let kept = clients
            .get(&ip)
            .filter(|c| c.vm_id == vm_id)
            .filter(|c| c.policy.as_ref().map(|p| &p.allow) == policy.as_ref().map(|p| &p.allow))
            .map(|c| c.opened.clone())
            .unwrap_or_default();
        // The address's rules are replaced whatever they were: a dead sandbox's go.
        clients.retain(|addr, c| *addr != ip && c.vm_id != vm_id);
        state.lay_rules(vm_id, ip, policy.as_ref(), &kept).await?;
        clients.insert(
            ip,
            Client {
                vm_id: vm_id.to_string(),
                policy,
                opened: kept,
            },
        );
        Ok(())
    }

    /// Forgets the sandbox and removes its rules (none is fine).
    pub async fn close(&self, vm_id: &str) -> Result<(), NetError> {
        let mut clients = self.state.clients.lock().await;
        clients.retain(|_, c| c.vm_id != vm_id);
        guard::close_for_sandbox(self.state.fence(), vm_id).await
    }
}

/// Removes a sandbox's rules on `fence`: through its resolver when this process
/// started one, else (a removal before any sandbox of this process, at start)
/// directly.
pub async fn close_sandbox(
    resolver: Option<&SandboxResolver>,
    fence: Fence<'_>,
    vm_id: &str,
) -> Result<(), NetError> {
    match resolver {
        Some(resolver) => resolver.close(vm_id).await,
        None => guard::close_for_sandbox(fence, vm_id).await,
    }
}

/// A UDP and a TCP socket on the same free port of `ip`.
async fn bind_pair(ip: Ipv4Addr) -> Result<(UdpSocket, TcpListener), NetError> {
    let mut last = None;
    for _ in 0..16 {
        let udp = UdpSocket::bind((ip, 0)).await.map_err(|e| {
            NetError::Command(format!("cannot listen for sandbox DNS on {ip}: {e}"))
        })?;
        let port = udp.local_addr().map(|a| a.port()).unwrap_or(0);
        match TcpListener::bind((ip, port)).await {
            Ok(tcp) => return Ok((udp, tcp)),
            // That port is taken for TCP: another.
            Err(e) => last = Some(e),
        }
    }
    Err(NetError::Command(format!(
        "cannot find a port free for both UDP and TCP on {ip} for sandbox DNS: {last:?}"
    )))
}

async fn serve_udp(state: Arc<State>, socket: Arc<UdpSocket>) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut buf = vec![0u8; 4096];
    loop {
        let (len, from) = match socket.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(e) => {
                tracing::debug!(error = %e, "sandbox resolver: receive failed");
                continue;
            }
        };
        let SocketAddr::V4(from) = from else { continue };
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            continue;
        };
        let (state, socket, query) = (state.clone(), socket.clone(), buf[..len].to_vec());
        tokio::spawn(async move {
            let _permit = permit;
            if let Some(reply) = answer(&state, *from.ip(), &query, Transport::Udp).await {
                let _ = socket.send_to(&reply, from).await;
            }
        });
    }
}

async fn serve_tcp(state: Arc<State>, listener: TcpListener) {
    let connections = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    loop {
        let Ok((stream, SocketAddr::V4(from))) = listener.accept().await else {
            continue;
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = serve_tcp_connection(&state, *from.ip(), stream).await;
        });
    }
}

/// Length-prefixed messages (RFC 1035 4.2.2), one answer per query, until the
/// client closes or stays idle.
async fn serve_tcp_connection(
    state: &State,
    from: Ipv4Addr,
    mut stream: TcpStream,
) -> std::io::Result<()> {
    loop {
        let Ok(read) = tokio::time::timeout(TCP_IDLE, read_message(&mut stream)).await else {
            return Ok(());
        };
        let Some(query) = read? else { return Ok(()) };
        let Some(reply) = answer(state, from, &query, Transport::Tcp).await else {
            return Ok(());
        };
        write_message(&mut stream, &reply).await?;
    }
}

async fn read_message(stream: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match stream.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut message = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut message).await?;
    Ok(Some(message))
}

async fn write_message(stream: &mut TcpStream, message: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(message.len()).map_err(std::io::Error::other)?;
    let mut framed = Vec::with_capacity(message.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    stream.write_all(&framed).await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

/// The reply to one query from `from` (`None`: not a DNS query; dropped).
async fn answer(
    state: &State,
    from: Ipv4Addr,
    query: &[u8],
    transport: Transport,
) -> Option<Vec<u8>> {
    let packet = Packet::parse(query).ok()?;
    if packet.has_flags(PacketFlag::RESPONSE) {
        return None;
    }
    let refuse = |rcode| refusal(&packet, rcode);
    let [question] = packet.questions.as_slice() else {
        return refuse(RCODE::FormatError);
    };
    let name = question.qname.to_string();
    let (vm_id, verdict) = {
        let clients = state.clients.lock().await;
        let Some(client) = clients.get(&from) else {
            tracing::debug!(%from, name, "DNS query from an address no sandbox has");
            return refuse(RCODE::Refused);
        };
        let verdict = client
            .policy
            .as_ref()
            .map_or(NameVerdict::Resolved { open: false }, |p| {
                p.name_verdict(&name)
            });
        (client.vm_id.clone(), verdict)
    };
    let NameVerdict::Resolved { open } = verdict else {
        tracing::debug!(vm_id, name, "name refused by the sandbox's network policy");
        return refuse(RCODE::NameError);
    };
    let Some(reply) = forward(&state.upstream, query, packet.id(), transport).await else {
        return refuse(RCODE::ServerFailure);
    };
    if open {
        let addresses = answer_addresses(&reply);
        if !addresses.is_empty()
            && let Err(e) = open_addresses(state, from, &vm_id, addresses).await
        {
            tracing::warn!(vm_id, name, error = %e, "cannot open the addresses of an allowed name");
            return refuse(RCODE::ServerFailure);
        }
    }
    Some(reply)
}

/// An answer with no records and `rcode`, echoing the question.
fn refusal(query: &Packet<'_>, rcode: RCODE) -> Option<Vec<u8>> {
    let mut reply = Packet::new_reply(query.id());
    reply.set_flags(PacketFlag::RECURSION_AVAILABLE);
    if query.has_flags(PacketFlag::RECURSION_DESIRED) {
        reply.set_flags(PacketFlag::RECURSION_DESIRED);
    }
    *reply.rcode_mut() = rcode;
    if rcode != RCODE::FormatError {
        reply.questions = query.questions.clone();
    }
    reply.build_bytes_vec().ok()
}

/// The A records of a reply (the answer section; CNAME chains included).
fn answer_addresses(reply: &[u8]) -> Vec<Ipv4Addr> {
    Packet::parse(reply)
        .map(|packet| {
            packet
                .answers
                .iter()
                .filter_map(|record| match &record.rdata {
                    RData::A(a) => Some(Ipv4Addr::from(a.address)),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Asks each upstream server in turn; the first reply to this query wins.
async fn forward(
    upstream: &[SocketAddr],
    query: &[u8],
    id: u16,
    transport: Transport,
) -> Option<Vec<u8>> {
    for server in upstream {
        let reply = match transport {
            Transport::Udp => {
                tokio::time::timeout(UPSTREAM_TIMEOUT, ask_udp(*server, query, id)).await
            }
            Transport::Tcp => tokio::time::timeout(UPSTREAM_TIMEOUT, ask_tcp(*server, query)).await,
        };
        match reply {
            Ok(Ok(reply)) => return Some(reply),
            Ok(Err(e)) => tracing::debug!(%server, error = %e, "upstream DNS server failed"),
            Err(_) => tracing::debug!(%server, "upstream DNS server did not answer in time"),
        }
    }
    None
}

async fn ask_udp(server: SocketAddr, query: &[u8], id: u16) -> std::io::Result<Vec<u8>> {
    let bind: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(bind).await?;
    socket.connect(server).await?;
    socket.send(query).await?;
    let mut buf = vec![0u8; 4096];
    loop {
        let len = socket.recv(&mut buf).await?;
        // Anything but the reply to this query (same id) is ignored.
        if len >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id {
            buf.truncate(len);
            return Ok(buf);
        }
    }
}

async fn ask_tcp(server: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(server).await?;
    write_message(&mut stream, query).await?;
    read_message(&mut stream)
        .await?
        .ok_or_else(|| std::io::Error::other("closed before answering"))
}

/// Opens `addresses` for the sandbox at `from` (still `vm_id`'s, still under a
/// policy): its chain is laid again with them.
async fn open_addresses(
    state: &State,
    from: Ipv4Addr,
    vm_id: &str,
    addresses: Vec<Ipv4Addr>,
) -> Result<(), NetError> {
    let mut clients = state.clients.lock().await;
    let Some(client) = clients.get_mut(&from).filter(|c| c.vm_id == vm_id) else {
        return Err(NetError::Config(format!("sandbox {vm_id} is gone")));
    };
    let Some(policy) = &client.policy else {
        return Ok(());
    };
    let mut opened = client.opened.clone();
    opened.extend(addresses);
    if opened.len() == client.opened.len() {
        return Ok(());
    }
    if opened.len() > MAX_OPENED {
        return Err(NetError::Config(format!(
            "sandbox {vm_id}'s allowed names opened {MAX_OPENED} addresses already"
        )));
    }
    state.lay_rules(vm_id, from, Some(policy), &opened).await?;
    client.opened = opened;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams_come_from_resolv_conf() {
        let text =
            "# comment\nnameserver 10.255.255.53\nsearch x\nnameserver ::1\nnameserver bogus\n";
        assert_eq!(
            parse_resolv_conf(text),
            vec![
                "10.255.255.53:53".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
    }

    #[test]
    fn refusals_echo_the_question_and_the_id() {
        let mut query = Packet::new_query(4242);
        query.set_flags(PacketFlag::RECURSION_DESIRED);
        query.questions.push(simple_dns::Question::new(
            simple_dns::Name::new_unchecked("denied.example"),
            simple_dns::TYPE::A.into(),
            simple_dns::CLASS::IN.into(),
            false,
        ));
        let bytes = refusal(&query, RCODE::NameError).unwrap();
        let reply = Packet::parse(&bytes).unwrap();
        assert_eq!(reply.id(), 4242);
        assert!(reply.has_flags(PacketFlag::RESPONSE));
        assert_eq!(reply.rcode(), RCODE::NameError);
        assert_eq!(reply.questions[0].qname.to_string(), "denied.example");
        assert!(reply.answers.is_empty());
        assert!(answer_addresses(&bytes).is_empty());
    }
}
