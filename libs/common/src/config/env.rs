//! Environment overrides: every setting under `AETHERIUM_*` (and the Go original's
//! names), each with its parser.

use super::*;

pub(super) fn http_header_safe(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_graphic())
}

pub(super) type Setter = fn(&mut Config, &str) -> Result<(), String>;

pub(super) fn parse<T: std::str::FromStr>(value: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    value.trim().parse::<T>().map_err(|e| e.to_string())
}

pub(super) fn parse_bool(value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        other => Err(format!("{other:?} is not a boolean (true/false)")),
    }
}

/// Environment overrides: each entry lists its names, first match wins, so the
/// `AETHERIUM_*` name beats the Go original's.
pub(super) const ENV_OVERRIDES: &[(&[&str], Setter)] = &[
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
    (&["AETHERIUM_E2B_DOMAIN"], |c, v| {
        c.server.e2b_domain = Some(v.trim().to_string()).filter(|v| !v.is_empty());
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
pub(super) fn postgres_url_from_env(env: &impl Fn(&str) -> Option<String>) -> Option<String> {
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

pub(super) fn percent_encode(s: &str) -> String {
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
pub(super) fn parse_labels(value: &str) -> Result<BTreeMap<String, String>, String> {
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
