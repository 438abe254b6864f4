//! Configuration: a YAML file (every key optional) overlaid with environment
//! variables (`AETHERIUM_*`, plus the Go original's names where they exist), then
//! validated once at start so a bad value fails with a message naming it.

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

fn http_header_safe(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_graphic())
}

type Setter = fn(&mut Config, &str) -> Result<(), String>;

fn parse<T: std::str::FromStr>(value: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    value.trim().parse::<T>().map_err(|e| e.to_string())
}

fn parse_bool(value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        other => Err(format!("{other:?} is not a boolean (true/false)")),
    }
}

/// Environment overrides: each entry lists its names, first match wins, so the
/// `AETHERIUM_*` name beats the Go original's.
const ENV_OVERRIDES: &[(&[&str], Setter)] = &[
    (&["AETHERIUM_DATA_DIR"], |c, v| {
        c.data_dir = PathBuf::from(v);
        Ok(())
    }),
    (&["AETHERIUM_HOST"], |c, v| {
        c.server.host = v.to_string();
        Ok(())
    }),
    (&["AETHERIUM_PORT", "PORT"], |c, v| {
        c.server.port = parse(v)?;
        Ok(())
    }),
    (&["AETHERIUM_API_TOKEN"], |c, v| {
        c.server.api_token = Some(v.to_string());
        Ok(())
    }),
    (&["AETHERIUM_CORS_ALLOWED_ORIGINS"], |c, v| {
        c.server.cors_allowed_origins = v
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .map(str::to_string)
            .collect();
        Ok(())
    }),
    (&["AETHERIUM_DASHBOARD_DIR"], |c, v| {
        // `off`: no dashboard, even if one is installed.
        c.server.dashboard_dir = Some(v.trim()).filter(|v| *v != "off").map(PathBuf::from);
        Ok(())
    }),
    (&["AETHERIUM_RATE_LIMIT_PER_SECOND"], |c, v| {
        c.auth.rate_limit_per_second = parse(v)?;
        Ok(())
    }),
    (&["AETHERIUM_RATE_LIMIT_BURST"], |c, v| {
        c.auth.rate_limit_burst = parse(v)?;
        Ok(())
    }),
    (&["AETHERIUM_SESSION_TTL_SECONDS"], |c, v| {
        c.auth.session_ttl_seconds = parse(v)?;
        Ok(())
    }),
    (&["AETHERIUM_DATABASE_URL"], |c, v| {
        c.database.url = Some(v.to_string());
        Ok(())
    }),
    (&["AETHERIUM_QUEUE_BACKEND"], |c, v| {
        c.queue.backend = match v.trim() {
            "embedded" => QueueBackend::Embedded,
            "redis" => QueueBackend::Redis,
            _ => return Err("expected `embedded` or `redis`".into()),
        };
        Ok(())
    }),
    (&["AETHERIUM_REDIS_URL"], |c, v| {
        c.queue.redis_url = Some(v.trim().to_string());
        Ok(())
    }),
    // The original's `host:port`.
    (&["REDIS_ADDR"], |c, v| {
        if c.queue.redis_url.is_none() {
            let addr = v.trim();
            if addr.contains("://") {
                return Err("expected host:port (use AETHERIUM_REDIS_URL for a URL)".into());
            }
            c.queue.redis_url = Some(format!("redis://{addr}"));
        }
        Ok(())
    }),
    (&["AETHERIUM_QUEUE_LEASE_SECONDS"], |c, v| {
        c.queue.lease_seconds = parse(v)?;
        Ok(())
    }),
    (&["AETHERIUM_QUEUE_RECONCILE_SECONDS"], |c, v| {
        c.queue.reconcile_seconds = parse(v)?;
        Ok(())
    }),
    (&["AETHERIUM_QUEUE_RETRY_BASE_SECONDS"], |c, v| {
        c.queue.retry_base_seconds = parse(v)?;
        Ok(())
    }),
    (&["AETHERIUM_WORKER_CONCURRENCY"], |c, v| {
        c.worker.concurrency = parse(v)?;
        Ok(())
    }),
    (&["AETHERIUM_REDIS_PREFIX"], |c, v| {
        c.queue.redis_prefix = v.to_string();
        Ok(())
    }),
    (
        &[
            "AETHERIUM_WORKSPACE_ENCRYPTION_KEY",
            "WORKSPACE_ENCRYPTION_KEY",
        ],
        |c, v| {
            c.workspaces.encryption_key = Some(v.trim().to_string());
            Ok(())
        },
    ),
    (
        &[
            "AETHERIUM_IDLE_CHECK_INTERVAL_SECONDS",
            "IDLE_CHECK_INTERVAL_SECONDS",
        ],
        |c, v| {
            c.workspaces.idle_check_interval_seconds = parse(v)?;
            Ok(())
        },
    ),
    (&["AETHERIUM_CLUSTER_SECRET"], |c, v| {
        c.cluster.secret = Some(v.to_string());
        Ok(())
    }),
    (&["AETHERIUM_REDIS_TLS_CA"], |c, v| {
        c.queue.redis_tls.ca = Some(PathBuf::from(v));
        Ok(())
    }),
    (&["AETHERIUM_REDIS_TLS_CERT"], |c, v| {
        c.queue.redis_tls.cert = Some(PathBuf::from(v));
        Ok(())
    }),
    (&["AETHERIUM_REDIS_TLS_KEY"], |c, v| {
        c.queue.redis_tls.key = Some(PathBuf::from(v));
        Ok(())
    }),
    (&["AETHERIUM_CLUSTER_TLS_CA"], |c, v| {
        c.cluster.tls.get_or_insert_with(Default::default).ca = PathBuf::from(v);
        Ok(())
    }),
    (&["AETHERIUM_CLUSTER_TLS_CERT"], |c, v| {
        c.cluster.tls.get_or_insert_with(Default::default).cert = PathBuf::from(v);
        Ok(())
    }),
    (&["AETHERIUM_CLUSTER_TLS_KEY"], |c, v| {
        c.cluster.tls.get_or_insert_with(Default::default).key = PathBuf::from(v);
        Ok(())
    }),
    (&["AETHERIUM_CLUSTER_PLAINTEXT_TUNNEL"], |c, v| {
        c.cluster.plaintext_tunnel = parse_bool(v)?;
        Ok(())
    }),
    (&["AETHERIUM_WORKER_ID", "WORKER_ID"], |c, v| {
        c.worker.id = v.to_string();
        Ok(())
    }),
    (&["AETHERIUM_WORKER_ADDRESS", "WORKER_ADDRESS"], |c, v| {
        c.worker.address = v.to_string();
        Ok(())
    }),
    (&["AETHERIUM_WORKER_TUNNEL_LISTEN"], |c, v| {
        c.worker.tunnel_listen = Some(v.trim().to_string());
        Ok(())
    }),
    (&["AETHERIUM_WORKER_ZONE", "WORKER_ZONE"], |c, v| {
        c.worker.zone = v.to_string();
        Ok(())
    }),
    (&["AETHERIUM_WORKER_LABELS", "WORKER_LABELS"], |c, v| {
        c.worker.labels = parse_labels(v)?;
        Ok(())
    }),
    (
        &["AETHERIUM_WORKER_CPU_CORES", "WORKER_CPU_CORES"],
        |c, v| {
            c.worker.cpu_cores = parse(v)?;
            Ok(())
        },
    ),
    (
        &["AETHERIUM_WORKER_MEMORY_MB", "WORKER_MEMORY_MB"],
        |c, v| {
            c.worker.memory_mb = parse(v)?;
            Ok(())
        },
    ),
    (&["AETHERIUM_WORKER_MAX_VMS", "WORKER_MAX_VMS"], |c, v| {
        c.worker.max_vms = parse(v)?;
        Ok(())
    }),
    (
        &[
            "AETHERIUM_HEARTBEAT_INTERVAL_SECONDS",
            "HEARTBEAT_INTERVAL_SECONDS",
        ],
        |c, v| {
            c.worker.heartbeat_interval_seconds = parse(v)?;
            Ok(())
        },
    ),
    (&["AETHERIUM_DEFAULT_VCPU", "DEFAULT_VCPU"], |c, v| {
        c.vmm.default_vcpus = parse(v)?;
        Ok(())
    }),
    (
        &["AETHERIUM_DEFAULT_MEMORY_MB", "DEFAULT_MEMORY_MB"],
        |c, v| {
            c.vmm.default_memory_mb = parse(v)?;
            Ok(())
        },
    ),
    (&["AETHERIUM_SOCKET_DIR", "SOCKET_DIR"], |c, v| {
        c.vmm.socket_dir = Some(PathBuf::from(v));
        Ok(())
    }),
    (&["AETHERIUM_KERNEL_DIR"], |c, v| {
        c.vmm.kernel_dir = PathBuf::from(v);
        Ok(())
    }),
    (&["AETHERIUM_IMAGES_DIR"], |c, v| {
        c.vmm.images_dir = Some(PathBuf::from(v));
        Ok(())
    }),
    (&["AETHERIUM_VM_RUN_DIR"], |c, v| {
        c.vmm.run_dir = Some(PathBuf::from(v));
        Ok(())
    }),
    (&["AETHERIUM_BACKENDS"], |c, v| {
        c.vmm.backends = v
            .split(',')
            .map(|b| b.trim().to_string())
            .filter(|b| !b.is_empty())
            .collect();
        Ok(())
    }),
    (&["AETHERIUM_DEFAULT_BACKEND"], |c, v| {
        c.vmm.default_backend = v.to_string();
        Ok(())
    }),
    (&["AETHERIUM_QEMU_ACCEL"], |c, v| {
        c.vmm.qemu.accel = v.to_string();
        Ok(())
    }),
    (&["AETHERIUM_FIRECRACKER_BIN"], |c, v| {
        c.vmm.firecracker.binary = PathBuf::from(v);
        Ok(())
    }),
    (&["AETHERIUM_NETWORK_ENABLED"], |c, v| {
        c.network.enabled = parse_bool(v)?;
        Ok(())
    }),
    (&["AETHERIUM_NETWORK_BRIDGE"], |c, v| {
        c.network.bridge = v.to_string();
        Ok(())
    }),
    (&["AETHERIUM_NETWORK_CIDR"], |c, v| {
        c.network.gateway_cidr = v.to_string();
        Ok(())
    }),
    (&["AETHERIUM_AGENT_PATH"], |c, v| {
        c.vmm.agent_path = Some(PathBuf::from(v));
        Ok(())
    }),
    (&["AETHERIUM_DOCKER_DISK_MB"], |c, v| {
        c.vmm.docker.disk_mb = parse(v)?;
        Ok(())
    }),
    (&["AETHERIUM_DOCKER_NETWORK_MODE"], |c, v| {
        c.vmm.docker.network_mode = v.to_string();
        Ok(())
    }),
    (&["AETHERIUM_DOCKER_HOST", "DOCKER_HOST"], |c, v| {
        c.vmm.docker.host = v.to_string();
        Ok(())
    }),
    (&["AETHERIUM_DEFAULT_IMAGE"], |c, v| {
        c.vmm.docker.default_image = v.to_string();
        Ok(())
    }),
    (&["AETHERIUM_LOG_FORMAT"], |c, v| {
        c.logging.format = match v.trim() {
            "pretty" => LogFormat::Pretty,
            "json" => LogFormat::Json,
            _ => return Err("expected `pretty` or `json`".into()),
        };
        Ok(())
    }),
    (&["AETHERIUM_LOG_LEVEL"], |c, v| {
        c.logging.level = v.to_string();
        Ok(())
    }),
    (&["AETHERIUM_LOG_CAPTURE_LEVEL"], |c, v| {
        c.logging.capture_level = v.to_string();
        Ok(())
    }),
];

/// The Go original's `POSTGRES_HOST/PORT/USER/PASSWORD/DB` as a URL, when
/// `POSTGRES_HOST` is set (user and password percent-encoded).
fn postgres_url_from_env(env: &impl Fn(&str) -> Option<String>) -> Option<String> {
    let get = |name: &str| env(name).filter(|v| !v.is_empty());
    let host = get("POSTGRES_HOST")?;
    let port = get("POSTGRES_PORT").unwrap_or_else(|| "5432".into());
    let user = get("POSTGRES_USER").unwrap_or_else(|| "postgres".into());
    let db = get("POSTGRES_DB").unwrap_or_else(|| "aetherium".into());
    let auth = match get("POSTGRES_PASSWORD") {
        Some(pw) => format!("{}:{}", percent_encode(&user), percent_encode(&pw)),
        None => percent_encode(&user),
    };
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host
    };
    Some(format!(
        "postgres://{auth}@{host}:{}/{}",
        port.trim(),
        percent_encode(&db)
    ))
}

fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `k=v,k2=v2` → map.
fn parse_labels(value: &str) -> Result<BTreeMap<String, String>, String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| format!("label {pair:?} is not key=value"))
        })
        .collect()
}

impl Config {
    /// Loads the file (if given), applies the process environment, validates.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(file, |name| std::env::var(name).ok())
    }

    /// As [`Config::load`], with the environment supplied by the caller (for tests).
    pub fn load_with_env(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut config = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                if text.trim().is_empty() {
                    Config::default()
                } else {
                    serde_norway::from_str(&text).map_err(|e| ConfigError::Parse {
                        path: path.to_path_buf(),
                        message: e.to_string(),
                    })?
                }
            }
            None => Config::default(),
        };
        for (names, set) in ENV_OVERRIDES {
            let found = names
                .iter()
                .find_map(|name| env(name).filter(|v| !v.is_empty()).map(|v| (*name, v)));
            if let Some((name, value)) = found {
                set(&mut config, &value).map_err(|message| ConfigError::Env {
                    name: name.to_string(),
                    value: value.clone(),
                    message,
                })?;
            }
        }
        if config.database.url.is_none()
            && let Some(url) = postgres_url_from_env(&env)
        {
            config.database.url = Some(url);
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks what the process of `role` needs beyond [`Config::validate`]: embedded
    /// mode runs on SQLite and the embedded queue; a gateway or a worker needs
    /// PostgreSQL, the Redis queue and the cluster secret.
    pub fn validate_for(&self, role: Role) -> Result<(), ConfigError> {
        self.validate()?;
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let url = self.database_url();
        let postgres = url.starts_with("postgres://") || url.starts_with("postgresql://");
        match role {
            Role::Embedded => {
                if self.queue.backend == QueueBackend::Redis {
                    return invalid(
                        "queue.backend `redis` is for distributed mode (`aetherium gateway`, \
                         `aetherium worker`); `aetherium up` uses the embedded queue"
                            .into(),
                    );
                }
            }
            Role::Gateway | Role::Worker => {
                let name = if role == Role::Gateway {
                    "aetherium gateway"
                } else {
                    "aetherium worker"
                };
                if !postgres {
                    return invalid(format!(
                        "{name} needs database.url = postgres://… (AETHERIUM_DATABASE_URL or \
                         POSTGRES_HOST/PORT/USER/PASSWORD/DB): the processes of a cluster \
                         share one PostgreSQL database"
                    ));
                }
                if self.queue.backend != QueueBackend::Redis {
                    return invalid(format!(
                        "{name} needs queue.backend = redis (AETHERIUM_QUEUE_BACKEND=redis)"
                    ));
                }
                match self.cluster.secret.as_deref() {
                    Some(s) if s.len() >= 16 && http_header_safe(s) => {}
                    Some(_) => {
                        return invalid(
                            "cluster.secret must be at least 16 printable characters, no spaces"
                                .into(),
                        );
                    }
                    None => {
                        return invalid(format!(
                            "{name} needs cluster.secret (AETHERIUM_CLUSTER_SECRET), the same \
                             in every process of the cluster"
                        ));
                    }
                }
                if self.cluster.tls.is_none() && !self.cluster.plaintext_tunnel {
                    return invalid(format!(
                        "{name} needs cluster.tls (ca, cert, key; AETHERIUM_CLUSTER_TLS_CA/_CERT/_KEY): \
                         make them with `aetherium cluster init` and `aetherium cluster issue`, \
                         or set cluster.plaintext_tunnel: true to send the tunnel's traffic in clear"
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.server.host.trim().is_empty() {
            return invalid("server.host must not be empty".into());
        }
        if self.worker.id.trim().is_empty() {
            return invalid("worker.id must not be empty".into());
        }
        if self.worker.concurrency == 0 {
            return invalid("worker.concurrency must be at least 1".into());
        }
        if self.worker.heartbeat_interval_seconds == 0 {
            return invalid("worker.heartbeat_interval_seconds must be at least 1".into());
        }
        if self.vmm.default_vcpus == 0 {
            return invalid("vmm.default_vcpus must be at least 1".into());
        }
        if self.vmm.default_memory_mb < 128 {
            return invalid(format!(
                "vmm.default_memory_mb must be at least 128 (got {})",
                self.vmm.default_memory_mb
            ));
        }
        if self.vmm.docker.disk_mb != 0
            && let Err(e) = aetherium_types::api::validate_disk_mb(self.vmm.docker.disk_mb)
        {
            return invalid(format!("vmm.docker.{e} (0: unlimited)"));
        }
        const BACKENDS: [&str; 3] = ["docker", "qemu", "firecracker"];
        for backend in self.vmm.backends.iter().chain([&self.vmm.default_backend]) {
            if !BACKENDS.contains(&backend.as_str()) {
                return invalid(format!(
                    "unknown backend {backend:?} in vmm.backends / vmm.default_backend; want one of {BACKENDS:?}"
                ));
            }
        }
        if !self.vmm.backends.contains(&self.vmm.default_backend) {
            return invalid(format!(
                "vmm.default_backend {:?} is not in vmm.backends {:?}",
                self.vmm.default_backend, self.vmm.backends
            ));
        }
        if !["auto", "kvm", "tcg"].contains(&self.vmm.qemu.accel.as_str()) {
            return invalid(format!(
                "vmm.qemu.accel {:?} must be auto, kvm or tcg",
                self.vmm.qemu.accel
            ));
        }
        for (what, key) in self
            .workspaces
            .encryption_key
            .iter()
            .map(|k| ("workspaces.encryption_key", k))
            .chain(
                self.workspaces
                    .retired_keys
                    .iter()
                    .map(|k| ("workspaces.retired_keys", k)),
            )
        {
            if key.len() != 64 || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
                // Never echo the key itself.
                return invalid(format!(
                    "{what} must be 64 hex characters (32 bytes), got {} characters",
                    key.len()
                ));
            }
        }
        if self.workspaces.idle_check_interval_seconds == 0 {
            return invalid("workspaces.idle_check_interval_seconds must be at least 1".into());
        }
        if self.vmm.boot_timeout_seconds == 0 {
            return invalid("vmm.boot_timeout_seconds must be at least 1".into());
        }
        if self.network.enabled {
            self.network.gateway()?;
            let bridge = &self.network.bridge;
            if bridge.is_empty()
                || bridge.len() > 15
                || !bridge
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return invalid(format!(
                    "network.bridge {bridge:?} must be 1-15 letters, digits, - or _"
                ));
            }
        }
        if self.vmm.output_cap_bytes == 0 {
            return invalid("vmm.output_cap_bytes must be at least 1".into());
        }
        if self.vmm.docker.default_image.trim().is_empty() {
            return invalid("vmm.docker.default_image must not be empty".into());
        }
        if self.queue.lease_seconds < 5 {
            return invalid("queue.lease_seconds must be at least 5".into());
        }
        let redis_tls = &self.queue.redis_tls;
        if redis_tls.cert.is_some() != redis_tls.key.is_some() {
            return invalid("queue.redis_tls.cert and queue.redis_tls.key go together".into());
        }
        if *redis_tls != RedisTlsConfig::default()
            && !self
                .queue
                .redis_url
                .as_deref()
                .is_some_and(|url| url.starts_with("rediss://"))
        {
            return invalid(
                "queue.redis_tls is set but queue.redis_url is not a rediss:// URL".into(),
            );
        }
        if self.queue.reconcile_seconds == 0 {
            return invalid("queue.reconcile_seconds must be at least 1".into());
        }
        if self.queue.poll_interval_ms == 0 {
            return invalid("queue.poll_interval_ms must be at least 1".into());
        }
        if let Some(token) = &self.server.api_token
            && token.len() < 16
        {
            return invalid("server.api_token must be at least 16 characters".into());
        }
        for (name, list) in [
            ("vmm.docker.egress_allow", &self.vmm.docker.egress_allow),
            ("network.egress_allow", &self.network.egress_allow),
        ] {
            for cidr in list {
                if parse_ipv4_cidr(cidr).is_none() {
                    return invalid(format!(
                        "{name}: {cidr:?} is not an IPv4 CIDR (e.g. 10.0.0.5/32)"
                    ));
                }
            }
        }
        self.network.dns_servers()?;
        if self.server.max_connections == 0 {
            return invalid("server.max_connections must be at least 1".into());
        }
        if self.server.request_timeout_seconds <= self.server.max_wait_seconds {
            return invalid(format!(
                "server.request_timeout_seconds ({}) must exceed server.max_wait_seconds ({})",
                self.server.request_timeout_seconds, self.server.max_wait_seconds
            ));
        }
        for origin in &self.server.cors_allowed_origins {
            let valid = origin == "*"
                || ((origin.starts_with("http://") || origin.starts_with("https://"))
                    && !origin.ends_with('/')
                    && http_header_safe(origin));
            if !valid {
                return invalid(format!(
                    "server.cors_allowed_origins: {origin:?} is not an origin like https://host[:port] (no path, no trailing slash) or *"
                ));
            }
        }
        if self.server.cors_allowed_origins.len() > 1
            && self.server.cors_allowed_origins.iter().any(|o| o == "*")
        {
            return invalid(
                "server.cors_allowed_origins: `*` cannot be combined with other origins".into(),
            );
        }
        if self.auth.session_ttl_seconds < 60 {
            return invalid("auth.session_ttl_seconds must be at least 60".into());
        }
        if self.auth.rate_limit_per_second > 0 && self.auth.rate_limit_burst == 0 {
            return invalid(
                "auth.rate_limit_burst must be at least 1 when rate limiting is on".into(),
            );
        }
        if self.auth.login_attempts_per_minute == 0 {
            return invalid("auth.login_attempts_per_minute must be at least 1".into());
        }
        if let Some(url) = &self.database.url
            && !(url.starts_with("sqlite:")
                || url.starts_with("postgres://")
                || url.starts_with("postgresql://"))
        {
            // Only the scheme is shown: the rest may hold a password.
            let scheme = url.split(':').next().unwrap_or_default();
            return invalid(format!(
                "database.url: scheme {scheme:?} is not supported: use sqlite://<path> \
                 (embedded mode) or postgres://user:password@host:port/database"
            ));
        }
        if self.queue.backend == QueueBackend::Redis {
            match self.queue.redis_url.as_deref() {
                Some(u) if u.starts_with("redis://") || u.starts_with("rediss://") => {}
                Some(u) => {
                    let scheme = u.split(':').next().unwrap_or_default();
                    return invalid(format!(
                        "queue.redis_url: scheme {scheme:?} is not supported: use \
                         redis://[:password@]host:port[/db] or rediss://…"
                    ));
                }
                None => {
                    return invalid(
                        "queue.backend `redis` needs queue.redis_url (AETHERIUM_REDIS_URL or \
                         REDIS_ADDR=host:port)"
                            .into(),
                    );
                }
            }
        }
        if self.queue.redis_prefix.is_empty() || !http_header_safe(&self.queue.redis_prefix) {
            return invalid("queue.redis_prefix must be non-empty printable characters".into());
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.logging.capture_level) {
            return invalid(format!(
                "logging.capture_level {:?} is not a tracing filter: {e}",
                self.logging.capture_level
            ));
        }
        for (key, value) in [
            ("logging.retention_hours", self.logging.retention_hours),
            (
                "logging.retention_max_rows",
                self.logging.retention_max_rows,
            ),
            ("events.retention_hours", self.events.retention_hours),
            ("events.retention_max_rows", self.events.retention_max_rows),
        ] {
            if value == 0 {
                return invalid(format!("{key} must be at least 1"));
            }
        }
        Ok(())
    }

    pub fn database_url(&self) -> String {
        self.database
            .url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("aetherium.db").display()))
    }

    pub fn images_dir(&self) -> PathBuf {
        self.vmm
            .images_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("images"))
    }

    pub fn vm_run_dir(&self) -> PathBuf {
        self.vmm
            .run_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("vms"))
    }

    pub fn socket_dir(&self) -> PathBuf {
        self.vmm
            .socket_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("sockets"))
    }

    /// Where the bootstrap admin key is kept for the CLI on this host.
    pub fn token_file(&self) -> PathBuf {
        self.data_dir.join("admin-token")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn file_then_env_with_aetherium_names_winning() {
        let mut f = tempfile::NamedTempFile::new().expect("tempfile");
        writeln!(f, "server:\n  port: 9000\nvmm:\n  default_memory_mb: 512").expect("write");
        let c = Config::load_with_env(Some(f.path()), env_of(&[])).expect("load");
        assert_eq!(c.server.port, 9000);
        assert_eq!(c.vmm.default_memory_mb, 512);

        let c = Config::load_with_env(
            Some(f.path()),
            env_of(&[
                ("PORT", "7000"),
                ("AETHERIUM_PORT", "7001"),
                ("WORKER_ID", "w-9"),
            ]),
        )
        .expect("load");
        assert_eq!(c.server.port, 7001);
        assert_eq!(c.worker.id, "w-9");
    }

    #[test]
    fn dns_servers_take_an_address_and_an_optional_port() {
        let mut c = Config::default();
        c.network.dns_upstream = vec!["9.9.9.9".into(), "127.0.0.1:5353".into(), "[::1]:53".into()];
        assert!(c.validate().is_ok());
        assert_eq!(
            c.network.dns_servers().unwrap(),
            ["9.9.9.9:53", "127.0.0.1:5353", "[::1]:53"].map(|a| a.parse().unwrap())
        );
        c.network.dns_upstream = vec!["dns.example".into()];
        let err = c.validate().unwrap_err();
        assert!(err.to_string().contains("network.dns_upstream"), "{err}");
    }

    #[test]
    fn bad_values_name_what_is_wrong() {
        let err = Config::load_with_env(None, env_of(&[("PORT", "eighty")])).unwrap_err();
        assert!(err.to_string().contains("PORT"), "{err}");
        let err = Config::load_with_env(None, env_of(&[("DEFAULT_MEMORY_MB", "64")])).unwrap_err();
        assert!(err.to_string().contains("default_memory_mb"), "{err}");

        let mut f = tempfile::NamedTempFile::new().expect("tempfile");
        writeln!(f, "server:\n  prot: 1").expect("write");
        let err = Config::load_with_env(Some(f.path()), env_of(&[])).unwrap_err();
        assert!(err.to_string().contains("prot"), "{err}");
    }

    #[test]
    fn redis_tls_files_need_a_rediss_url_and_a_cert_its_key() {
        let c = Config::load_with_env(
            None,
            env_of(&[
                ("AETHERIUM_REDIS_URL", "rediss://redis:6380/0"),
                ("AETHERIUM_REDIS_TLS_CA", "/etc/aetherium/redis-ca.pem"),
                ("AETHERIUM_REDIS_TLS_CERT", "/etc/aetherium/redis.pem"),
                ("AETHERIUM_REDIS_TLS_KEY", "/etc/aetherium/redis.key"),
                ("AETHERIUM_QUEUE_RECONCILE_SECONDS", "5"),
            ]),
        )
        .expect("load");
        assert_eq!(
            c.queue.redis_tls.ca.as_deref(),
            Some(Path::new("/etc/aetherium/redis-ca.pem"))
        );
        assert_eq!(c.queue.reconcile_seconds, 5);
        let err = Config::load_with_env(
            None,
            env_of(&[
                ("AETHERIUM_REDIS_URL", "redis://redis:6379/0"),
                ("AETHERIUM_REDIS_TLS_CA", "/etc/aetherium/redis-ca.pem"),
            ]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("rediss://"), "{err}");
        let err = Config::load_with_env(
            None,
            env_of(&[
                ("AETHERIUM_REDIS_URL", "rediss://redis:6380/0"),
                ("AETHERIUM_REDIS_TLS_CERT", "/etc/aetherium/redis.pem"),
            ]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("go together"), "{err}");
        let err =
            Config::load_with_env(None, env_of(&[("AETHERIUM_QUEUE_RECONCILE_SECONDS", "0")]))
                .unwrap_err();
        assert!(err.to_string().contains("reconcile_seconds"), "{err}");
    }

    #[test]
    fn the_dashboard_dir_defaults_to_the_install_dir_and_is_used_once_built() {
        let c = Config::load_with_env(None, env_of(&[])).expect("load");
        assert_eq!(
            c.server.dashboard_dir.as_deref(),
            Some(Path::new(DEFAULT_DASHBOARD_DIR))
        );
        let built = tempfile::tempdir().expect("tempdir");
        let dir = built.path().display().to_string();
        let c = Config::load_with_env(None, env_of(&[("AETHERIUM_DASHBOARD_DIR", &dir)]))
            .expect("load");
        // Not built yet: nothing to serve.
        assert_eq!(c.server.dashboard(), None);
        std::fs::write(built.path().join("index.html"), "<html></html>").expect("write");
        assert_eq!(c.server.dashboard().as_deref(), Some(built.path()));
        // `off`: no dashboard, even an installed one.
        let c = Config::load_with_env(None, env_of(&[("AETHERIUM_DASHBOARD_DIR", "off")]))
            .expect("load");
        assert_eq!(c.server.dashboard_dir, None);
    }

    #[test]
    fn database_urls_are_sqlite_or_postgres() {
        for ok in [
            "sqlite:///var/lib/a.db",
            "postgres://u:p@db:5432/aetherium",
            "postgresql://u@127.0.0.1/aetherium?sslmode=disable",
        ] {
            let c = Config::load_with_env(None, env_of(&[("AETHERIUM_DATABASE_URL", ok)]))
                .expect("load");
            assert_eq!(c.database_url(), ok);
        }
        let err = Config::load_with_env(
            None,
            env_of(&[("AETHERIUM_DATABASE_URL", "mysql://u:secret@h/db")]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("mysql") && !err.contains("secret"), "{err}");
    }

    #[test]
    fn distributed_settings_come_from_the_original_names_too() {
        let c = Config::load_with_env(
            None,
            env_of(&[
                ("POSTGRES_HOST", "db.local"),
                ("POSTGRES_USER", "ae"),
                ("POSTGRES_PASSWORD", "p@ss/word"),
                ("POSTGRES_DB", "aeth"),
                ("REDIS_ADDR", "127.0.0.1:6380"),
                ("AETHERIUM_QUEUE_BACKEND", "redis"),
                ("AETHERIUM_CLUSTER_SECRET", "0123456789abcdef"),
                ("AETHERIUM_CLUSTER_TLS_CA", "/pki/ca.pem"),
                ("AETHERIUM_CLUSTER_TLS_CERT", "/pki/w.pem"),
                ("AETHERIUM_CLUSTER_TLS_KEY", "/pki/w.key"),
            ]),
        )
        .expect("load");
        assert_eq!(
            c.cluster.tls.as_ref().map(|t| t.cert.clone()),
            Some(PathBuf::from("/pki/w.pem"))
        );
        assert_eq!(
            c.database_url(),
            "postgres://ae:p%40ss%2Fword@db.local:5432/aeth"
        );
        assert_eq!(c.queue.redis_url.as_deref(), Some("redis://127.0.0.1:6380"));
        c.validate_for(Role::Gateway).expect("a gateway's config");
        c.validate_for(Role::Worker).expect("a worker's config");
        let err = c.validate_for(Role::Embedded).unwrap_err().to_string();
        assert!(err.contains("distributed mode"), "{err}");
        // The AETHERIUM_* names win.
        let c = Config::load_with_env(
            None,
            env_of(&[
                ("POSTGRES_HOST", "db.local"),
                ("AETHERIUM_DATABASE_URL", "postgres://x@y/z"),
                ("REDIS_ADDR", "a:1"),
                ("AETHERIUM_REDIS_URL", "redis://b:2/0"),
            ]),
        )
        .expect("load");
        assert_eq!(c.database_url(), "postgres://x@y/z");
        assert_eq!(c.queue.redis_url.as_deref(), Some("redis://b:2/0"));
    }

    #[test]
    fn distributed_roles_name_what_is_missing() {
        let err = Config::load_with_env(None, env_of(&[("AETHERIUM_QUEUE_BACKEND", "redis")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("queue.redis_url"), "{err}");
        let c = Config::load_with_env(None, env_of(&[])).expect("defaults");
        let err = c.validate_for(Role::Worker).unwrap_err().to_string();
        assert!(err.contains("postgres://"), "{err}");
        let c = Config::load_with_env(
            None,
            env_of(&[
                ("AETHERIUM_DATABASE_URL", "postgres://u@h/d"),
                ("AETHERIUM_QUEUE_BACKEND", "redis"),
                ("AETHERIUM_REDIS_URL", "redis://h:1"),
            ]),
        )
        .expect("load");
        let err = c.validate_for(Role::Gateway).unwrap_err().to_string();
        assert!(err.contains("cluster.secret"), "{err}");
        // With a secret, the tunnel needs TLS, or plaintext asked for by name.
        let mut c = c;
        c.cluster.secret = Some("0123456789abcdef".into());
        let err = c.validate_for(Role::Worker).unwrap_err().to_string();
        assert!(
            err.contains("cluster.tls") && err.contains("plaintext_tunnel"),
            "{err}"
        );
        c.cluster.plaintext_tunnel = true;
        c.validate_for(Role::Worker)
            .expect("plaintext by explicit choice");
        let err = Config::load_with_env(
            None,
            env_of(&[
                ("AETHERIUM_QUEUE_BACKEND", "redis"),
                ("AETHERIUM_REDIS_URL", "http://h:1"),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("queue.redis_url"), "{err}");
        c.validate_for(Role::Embedded)
            .expect_err("up refuses the redis queue");
    }

    #[test]
    fn labels_parse_as_pairs() {
        let c = Config::load_with_env(None, env_of(&[("WORKER_LABELS", "gpu=no, zone=a")]))
            .expect("load");
        assert_eq!(c.worker.labels.get("gpu").map(String::as_str), Some("no"));
        assert!(Config::load_with_env(None, env_of(&[("WORKER_LABELS", "oops")])).is_err());
    }

    #[test]
    fn cors_timeouts_and_rate_limits_are_checked() {
        let c = Config::load_with_env(
            None,
            env_of(&[
                (
                    "AETHERIUM_CORS_ALLOWED_ORIGINS",
                    "https://a.example, http://localhost:3000",
                ),
                ("AETHERIUM_RATE_LIMIT_PER_SECOND", "0"),
            ]),
        )
        .expect("load");
        assert_eq!(c.server.cors_allowed_origins.len(), 2);
        assert_eq!(c.auth.rate_limit_per_second, 0);
        for origins in ["https://a.example/", "a.example", "*,https://a.example"] {
            let err =
                Config::load_with_env(None, env_of(&[("AETHERIUM_CORS_ALLOWED_ORIGINS", origins)]))
                    .unwrap_err();
            assert!(err.to_string().contains("cors_allowed_origins"), "{err}");
        }
        let mut f = tempfile::NamedTempFile::new().expect("tempfile");
        writeln!(
            f,
            "server:\n  max_wait_seconds: 600\n  request_timeout_seconds: 60"
        )
        .expect("write");
        let err = Config::load_with_env(Some(f.path()), env_of(&[])).unwrap_err();
        assert!(err.to_string().contains("request_timeout_seconds"), "{err}");
    }
}
