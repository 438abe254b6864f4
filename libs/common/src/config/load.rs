//! Loading (file, then environment) and validation, per role; the paths derived
//! from the data directory.

use super::env::*;
use super::*;

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
        if let Some(domain) = &self.server.e2b_domain {
            let label_ok = |l: &str| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            };
            if domain.len() > 200 || !domain.split('.').all(label_ok) {
                return invalid(format!(
                    "server.e2b_domain {domain:?} must be a DNS name like sandboxes.example.com"
                ));
            }
        }
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
