//! Configuration: a YAML file (every key optional) overlaid with environment
//! variables (`AETHERIUM_*`, plus the Go original's names where they exist), then
//! validated once at start so a bad value fails with a message naming it.

mod env;
mod load;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {name}={value:?} is not valid: {message}")]
    Env {
        name: String,
        value: String,
        message: String,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where embedded mode keeps its database, token and sockets.
    pub data_dir: PathBuf,
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub worker: WorkerConfig,
    pub vmm: VmmConfig,
    pub network: NetworkConfig,
    pub queue: QueueConfig,
    pub logging: LoggingConfig,
    pub auth: AuthConfig,
    pub events: EventsConfig,
    pub cluster: ClusterConfig,
    pub workspaces: WorkspacesConfig,
}

/// Workspaces for coding agents: secrets at rest, the agent CLIs, tools.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkspacesConfig {
    /// AES-256 key for secrets at rest, 64 hex characters (the original's
    /// `WORKSPACE_ENCRYPTION_KEY`). Embedded mode generates one on first start into
    /// `<data_dir>/secrets.key` (0600); distributed mode needs it configured, the
    /// same in every process.
    pub encryption_key: Option<String>,
    /// Keys used before (64 hex each): still read, never written with. Rotate by
    /// moving the old key here and setting a new `encryption_key`.
    pub retired_keys: Vec<String>,
    /// The command a prompt runs, per AI assistant; `{prompt_file}` is replaced by
    /// the path of a file holding the prompt (never put on a command line).
    pub agent_commands: BTreeMap<String, String>,
    /// The unprivileged user prompts run as inside the sandbox (created if missing).
    pub agent_user: String,
    /// Tool download mirrors: source name → base URL (see docs/tools.md).
    pub tool_mirrors: BTreeMap<String, String>,
    /// Extra tool recipes (one TOML file per tool) beside the built-in catalog.
    pub tool_catalog_dir: Option<PathBuf>,
    /// How often idle workspaces are looked for (the original's IDLE_CHECK_INTERVAL_SECONDS).
    pub idle_check_interval_seconds: u64,
}

impl std::fmt::Debug for WorkspacesConfig {
    // The keys stay out of every log line and error.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkspacesConfig")
            .field(
                "encryption_key",
                &self.encryption_key.as_ref().map(|_| "[set]"),
            )
            .field("retired_keys", &self.retired_keys.len())
            .field("agent_commands", &self.agent_commands)
            .field("agent_user", &self.agent_user)
            // Mirror URLs may carry credentials: names only.
            .field(
                "tool_mirrors",
                &self.tool_mirrors.keys().collect::<Vec<_>>(),
            )
            .field("tool_catalog_dir", &self.tool_catalog_dir)
            .field(
                "idle_check_interval_seconds",
                &self.idle_check_interval_seconds,
            )
            .finish()
    }
}

impl Default for WorkspacesConfig {
    fn default() -> Self {
        WorkspacesConfig {
            encryption_key: None,
            retired_keys: Vec::new(),
            agent_commands: BTreeMap::from([
                (
                    "claude-code".to_string(),
                    "claude -p \"$(cat {prompt_file})\" --output-format text".to_string(),
                ),
                (
                    "ampcode".to_string(),
                    "amp -x \"$(cat {prompt_file})\"".to_string(),
                ),
            ]),
            agent_user: "agent".into(),
            tool_mirrors: BTreeMap::new(),
            tool_catalog_dir: None,
            idle_check_interval_seconds: 60,
        }
    }
}

/// Distributed mode: what gateways and workers on several hosts share.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Shared secret authenticating the processes of one cluster to each other (the
    /// gateway calling a worker's internal endpoint). At least 16 characters;
    /// required by `aetherium gateway` and `aetherium worker`.
    pub secret: Option<String>,
    /// TLS for the tunnel between gateways and workers, both ends authenticated by
    /// the cluster CA (`aetherium cluster init` / `aetherium cluster issue`).
    pub tls: Option<ClusterTlsConfig>,
    /// Runs the tunnel without TLS: commands, output and files cross the network
    /// in clear. Only by this explicit choice, with a warning at every start.
    pub plaintext_tunnel: bool,
}

/// PEM files of the cluster's TLS.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterTlsConfig {
    /// The cluster CA's certificate.
    pub ca: PathBuf,
    /// This process's certificate (a worker's names its id).
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

/// Which task queue runs the work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueBackend {
    /// The database's `tasks` table (one process: `aetherium up`).
    #[default]
    Embedded,
    /// Redis (`queue.redis_url`), records in the database: distributed mode.
    Redis,
}

/// The role a process plays, for [`Config::validate_for`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `aetherium up`: gateway and worker in one process, SQLite, embedded queue.
    Embedded,
    /// `aetherium gateway`: the API, no worker.
    Gateway,
    /// `aetherium worker`: runs tasks and sandboxes, no public API.
    Worker,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    /// The bootstrap admin API key, registered on first start if no key exists yet.
    /// When unset, `aetherium up` generates one, prints it once and keeps it in
    /// `<data_dir>/admin-token` (mode 0600) for the CLI on this host.
    pub api_token: Option<String>,
    /// Longest `wait` a request may ask for, in seconds.
    pub max_wait_seconds: u64,
    /// Browser origins allowed to call the API (CORS), e.g. `https://dash.example.com`.
    /// Empty: no cross-origin access. `*` allows any origin (credentials are bearer
    /// tokens, never cookies, so no origin gets ambient authority).
    pub cors_allowed_origins: Vec<String>,
    /// A request (other than streams, WebSockets and file transfers) that takes longer
    /// is answered 504. Must exceed `max_wait_seconds`.
    pub request_timeout_seconds: u64,
    /// The web dashboard's static export, served at `/` (it holds no data: the pages
    /// call the API with the user's credentials). Used only when it holds an
    /// `index.html`; `null` (or `AETHERIUM_DASHBOARD_DIR=off`) serves no dashboard.
    pub dashboard_dir: Option<PathBuf>,
    /// Connections the API holds open at once; past it, new ones wait in the
    /// kernel's backlog until one closes.
    pub max_connections: usize,
    /// E2B SDK compatibility: the domain under which envd traffic arrives by host
    /// name, `49983-<sandbox id>.<e2b_domain>` (wildcard DNS and TLS in front of
    /// this server), and the `domain` the E2B control plane answers with. Unset:
    /// SDKs reach envd through `E2B_SANDBOX_URL` (`<url>/e2b`). See docs/e2b.md.
    pub e2b_domain: Option<String>,
}

/// `ip`, `ip:port` or `[ipv6]:port` (port 53 unless given).
pub fn parse_dns_server(text: &str) -> Option<std::net::SocketAddr> {
    text.parse::<std::net::SocketAddr>().ok().or_else(|| {
        text.parse::<std::net::IpAddr>()
            .ok()
            .map(|ip| std::net::SocketAddr::new(ip, 53))
    })
}

/// `a.b.c.d/n` (n 0..=32) as address and prefix length.
pub fn parse_ipv4_cidr(text: &str) -> Option<(std::net::Ipv4Addr, u8)> {
    let (ip, len) = text.split_once('/')?;
    let len: u8 = len.parse().ok().filter(|l| *l <= 32)?;
    Some((ip.parse().ok()?, len))
}

/// Where `scripts/setup.sh` (and `make dashboard`) installs the dashboard.
pub const DEFAULT_DASHBOARD_DIR: &str = "/usr/local/share/aetherium/dashboard";

impl ServerConfig {
    /// The dashboard directory to serve: `dashboard_dir` when it holds a built export
    /// (an `index.html`), else `None`.
    pub fn dashboard(&self) -> Option<PathBuf> {
        self.dashboard_dir
            .as_ref()
            .filter(|dir| dir.join("index.html").is_file())
            .cloned()
    }
}

/// API keys, sessions and request rate limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Lifetime of a dashboard session (`POST /auth/login`).
    pub session_ttl_seconds: u64,
    /// Requests per second each API key or session may make (a key may carry its
    /// own); 0 turns rate limiting off.
    pub rate_limit_per_second: u32,
    /// Requests a client may make in a burst above the rate.
    pub rate_limit_burst: u32,
    /// Login attempts per minute from one address for one username.
    pub login_attempts_per_minute: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            session_ttl_seconds: 12 * 3600,
            rate_limit_per_second: 50,
            rate_limit_burst: 200,
            login_attempts_per_minute: 10,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://path` (embedded mode) or `postgres://user:password@host:port/db`
    /// (distributed mode). Defaults to `sqlite://<data_dir>/aetherium.db`.
    pub url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// Stable identity of this worker; containers are labelled with it so that a
    /// restarted worker finds (and adopts or removes) what it owns.
    pub id: String,
    /// `host:port` where gateways reach this worker's tunnel endpoint (streams,
    /// terminals and files of its VMs). Port 0: the port bound is advertised.
    pub address: String,
    /// Where the tunnel endpoint listens (`host:port`); default: `address`.
    pub tunnel_listen: Option<String>,
    pub zone: String,
    pub labels: BTreeMap<String, String>,
    pub cpu_cores: u32,
    pub memory_mb: u64,
    pub max_vms: u32,
    /// Tasks run at once by this worker.
    pub concurrency: usize,
    pub heartbeat_interval_seconds: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VmmConfig {
    pub default_backend: String,
    pub default_vcpus: u32,
    pub default_memory_mb: u64,
    /// The agent binary put into every sandbox. Defaults to `aetherium-agent` next to
    /// the running executable.
    pub agent_path: Option<PathBuf>,
    /// Where per-sandbox agent sockets live. Defaults to `<data_dir>/sockets`.
    pub socket_dir: Option<PathBuf>,
    /// Most bytes of stdout (and of stderr) kept per execution.
    pub output_cap_bytes: usize,
    /// Backends this worker offers, each if it works on this host (`aetherium
    /// doctor` says why one does not): `docker`, `qemu`, `firecracker`.
    pub backends: Vec<String>,
    /// Built guest images (`aetherium image build`). Defaults to `<data_dir>/images`.
    pub images_dir: Option<PathBuf>,
    /// An extracted Debian `linux-image-*-cloud-amd64` package (boot/vmlinuz-*,
    /// lib/modules/…) that image builds take the guest kernel from.
    pub kernel_dir: PathBuf,
    /// Per-microVM runtime directories (VMM sockets, rootfs copies). Defaults to
    /// `<data_dir>/vms`; keep it short: unix socket paths are limited to 108 bytes.
    pub run_dir: Option<PathBuf>,
    /// How long a microVM may take until its agent answers (TCG boots take seconds).
    pub boot_timeout_seconds: u64,
    pub docker: DockerConfig,
    pub qemu: QemuConfig,
    pub firecracker: FirecrackerConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QemuConfig {
    pub binary: PathBuf,
    /// The vhost-user vsock device (hybrid-vsock socket, same as Firecracker's).
    pub vhost_vsock_binary: PathBuf,
    /// `auto` (KVM when a probe boot works, else TCG), `kvm` or `tcg`.
    pub accel: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FirecrackerConfig {
    pub binary: PathBuf,
    /// Run each VMM under `jailer` (chroot, own uid) when set.
    pub jailer_binary: Option<PathBuf>,
}

/// The microVMs' network: a bridge with NAT, one TAP per VM (the original's layout).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// Off: microVMs get no network device at all.
    pub enabled: bool,
    pub bridge: String,
    /// The bridge's address and prefix; guests get the others of the subnet.
    pub gateway_cidr: String,
    /// Masquerade guest traffic to the outside.
    pub nat: bool,
    /// Fence microVMs in (the default): they cannot reach each other, the host's
    /// own services, private ranges or link-local (cloud metadata) addresses, only
    /// the outside world and what `egress_allow` lists; each may have a network
    /// policy. Off: none of that is enforced (and network policies are refused).
    pub isolated: bool,
    /// CIDRs (`10.0.0.5/32`, `192.168.0.0/16`) isolated microVMs may reach although
    /// they are private or the host's: a package mirror, a git server.
    pub egress_allow: Vec<String>,
    /// The DNS servers (`ip` or `ip:port`) every sandbox's queries go to, containers'
    /// and microVMs', through the resolver that applies their network policies.
    /// Empty (the default): the host's, from `/etc/resolv.conf`.
    pub dns_upstream: Vec<String>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            enabled: true,
            bridge: "aetherium0".into(),
            gateway_cidr: "172.16.0.1/24".into(),
            nat: true,
            isolated: true,
            egress_allow: Vec::new(),
            dns_upstream: Vec::new(),
        }
    }
}

impl NetworkConfig {
    /// `dns_upstream` read as socket addresses (port 53 unless given).
    pub fn dns_servers(&self) -> Result<Vec<std::net::SocketAddr>, ConfigError> {
        self.dns_upstream
            .iter()
            .map(|server| {
                parse_dns_server(server).ok_or_else(|| {
                    ConfigError::Invalid(format!(
                        "network.dns_upstream: {server:?} is not an IP address or IP:port (e.g. 9.9.9.9 or 127.0.0.1:5353)"
                    ))
                })
            })
            .collect()
    }

    /// The gateway address and prefix length of `gateway_cidr`.
    pub fn gateway(&self) -> Result<(std::net::Ipv4Addr, u8), ConfigError> {
        let bad = |why: &str| {
            ConfigError::Invalid(format!(
                "network.gateway_cidr {:?} {why}; want e.g. 172.16.0.1/24",
                self.gateway_cidr
            ))
        };
        let (ip, prefix) = self
            .gateway_cidr
            .split_once('/')
            .ok_or_else(|| bad("has no /prefix"))?;
        let ip: std::net::Ipv4Addr = ip.parse().map_err(|_| bad("is not an IPv4 address"))?;
        let prefix: u8 = prefix.parse().map_err(|_| bad("has a bad prefix"))?;
        if !(16..=30).contains(&prefix) {
            return Err(bad("needs a prefix between /16 and /30"));
        }
        Ok((ip, prefix))
    }
}

impl Default for QemuConfig {
    fn default() -> Self {
        QemuConfig {
            binary: "qemu-system-x86_64".into(),
            vhost_vsock_binary: "vhost-device-vsock".into(),
            accel: "auto".into(),
        }
    }
}

impl Default for FirecrackerConfig {
    fn default() -> Self {
        FirecrackerConfig {
            binary: "/usr/local/bin/firecracker".into(),
            jailer_binary: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DockerConfig {
    /// Docker engine socket, `unix:///var/run/docker.sock` form or a bare path.
    pub host: String,
    pub default_image: String,
    pub pids_limit: i64,
    /// Docker network mode for sandboxes. `isolated` (the default): the shared
    /// network `aetherium-isolated`, where sandboxes cannot reach each other, the
    /// host's own services, private ranges or link-local (cloud metadata)
    /// addresses, only the outside world and what `egress_allow` lists. Any other
    /// value (`bridge`, `none`, a network's name) is given to Docker as is, and none
    /// of that is enforced.
    pub network_mode: String,
    /// CIDRs (`10.0.0.5/32`, `192.168.0.0/16`) isolated sandboxes may reach although
    /// they are private or the host's: a package mirror, a git server.
    pub egress_allow: Vec<String>,
    /// What a sandbox may write to its filesystem, in MiB, when its request does not
    /// say (0: unlimited). Enforced by the engine where its storage can (overlay2 on
    /// XFS mounted with `pquota`), else by a watch that stops a sandbox over it.
    pub disk_mb: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// How long a leased task stays leased without a heartbeat from its worker.
    pub lease_seconds: u64,
    /// Fallback poll interval when no wake-up arrives.
    pub poll_interval_ms: u64,
    /// First retry delay; doubles with every attempt.
    pub retry_base_seconds: u64,
    /// `embedded` (the database's `tasks` table; `aetherium up`) or `redis`
    /// (distributed mode; needs `redis_url`).
    pub backend: QueueBackend,
    /// `redis://[:password@]host:port[/db]` (or `rediss://…`): the queue and the
    /// event bus of distributed mode.
    pub redis_url: Option<String>,
    /// Every Redis key (and the event channel) starts with it, so deployments can
    /// share one Redis.
    pub redis_prefix: String,
    /// Distributed mode: how often the queue compares the task records with Redis
    /// and repairs what a crash or a Redis restart lost (records younger than this
    /// are left alone, their Redis write may be under way).
    pub reconcile_seconds: u64,
    /// PEM files for a `rediss://` URL: the CA of the server's certificate (else
    /// the system's roots) and a client certificate and key, if the server asks.
    pub redis_tls: RedisTlsConfig,
}

/// PEM files of Redis over TLS, each optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisTlsConfig {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoggingConfig {
    pub format: LogFormat,
    /// A tracing filter such as `info` or `aetherium_core=debug,info`.
    pub level: String,
    /// A tracing filter for the records kept for the logs API (`/logs/query`,
    /// `/logs/stream`); independent of `level`.
    pub capture_level: String,
    /// Stored log records older than this are pruned.
    pub retention_hours: u64,
    /// At most this many stored log records are kept (the oldest go first).
    pub retention_max_rows: u64,
}

/// The event log behind `GET /events` (resumable streams).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// Events older than this are pruned (a stream cannot resume before them).
    pub retention_hours: u64,
    /// At most this many events are kept (the oldest go first).
    pub retention_max_rows: u64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            retention_hours: 168,
            retention_max_rows: 100_000,
        }
    }
}

fn home_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

/// `$XDG_DATA_HOME/aetherium`, falling back to `~/.local/share/aetherium`.
pub fn default_data_dir() -> PathBuf {
    std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| home_dir().join(".local/share"))
        .join("aetherium")
}

fn default_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: default_data_dir(),
            server: ServerConfig::default(),
            database: DatabaseConfig::default(),
            worker: WorkerConfig::default(),
            vmm: VmmConfig::default(),
            network: NetworkConfig::default(),
            queue: QueueConfig::default(),
            logging: LoggingConfig::default(),
            auth: AuthConfig::default(),
            events: EventsConfig::default(),
            cluster: ClusterConfig::default(),
            workspaces: WorkspacesConfig::default(),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: "127.0.0.1".into(),
            port: 8080,
            api_token: None,
            max_wait_seconds: 600,
            cors_allowed_origins: Vec::new(),
            request_timeout_seconds: 660,
            max_connections: 4096,
            e2b_domain: None,
            dashboard_dir: Some(PathBuf::from(DEFAULT_DASHBOARD_DIR)),
        }
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        WorkerConfig {
            id: format!("worker-{}", default_hostname()),
            address: String::new(),
            tunnel_listen: None,
            zone: "default".into(),
            labels: BTreeMap::new(),
            cpu_cores: cores,
            memory_mb: 0,
            max_vms: 50,
            concurrency: 8,
            heartbeat_interval_seconds: 10,
        }
    }
}

impl Default for VmmConfig {
    fn default() -> Self {
        VmmConfig {
            default_backend: "docker".into(),
            default_vcpus: 1,
            default_memory_mb: 256,
            agent_path: None,
            socket_dir: None,
            output_cap_bytes: 1024 * 1024,
            backends: vec!["docker".into(), "qemu".into(), "firecracker".into()],
            images_dir: None,
            kernel_dir: "/var/lib/aetherium/kernel".into(),
            run_dir: None,
            boot_timeout_seconds: 120,
            docker: DockerConfig::default(),
            qemu: QemuConfig::default(),
            firecracker: FirecrackerConfig::default(),
        }
    }
}

impl Default for DockerConfig {
    fn default() -> Self {
        DockerConfig {
            host: "unix:///var/run/docker.sock".into(),
            default_image: "aetherium/base:latest".into(),
            pids_limit: 1024,
            network_mode: "isolated".into(),
            egress_allow: Vec::new(),
            disk_mb: 10 * 1024,
        }
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            lease_seconds: 30,
            poll_interval_ms: 500,
            retry_base_seconds: 2,
            backend: QueueBackend::Embedded,
            redis_url: None,
            redis_prefix: "aetherium:".into(),
            reconcile_seconds: 60,
            redis_tls: RedisTlsConfig::default(),
        }
    }
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig {
            format: LogFormat::Pretty,
            level: "info".into(),
            capture_level: "info".into(),
            retention_hours: 72,
            retention_max_rows: 200_000,
        }
    }
}

#[cfg(test)]
mod tests;
