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
    let err = Config::load_with_env(None, env_of(&[("AETHERIUM_QUEUE_RECONCILE_SECONDS", "0")]))
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
    let c =
        Config::load_with_env(None, env_of(&[("AETHERIUM_DASHBOARD_DIR", &dir)])).expect("load");
    // Not built yet: nothing to serve.
    assert_eq!(c.server.dashboard(), None);
    std::fs::write(built.path().join("index.html"), "<html></html>").expect("write");
    assert_eq!(c.server.dashboard().as_deref(), Some(built.path()));
    // `off`: no dashboard, even an installed one.
    let c =
        Config::load_with_env(None, env_of(&[("AETHERIUM_DASHBOARD_DIR", "off")])).expect("load");
    assert_eq!(c.server.dashboard_dir, None);
}

#[test]
fn database_urls_are_sqlite_or_postgres() {
    for ok in [
        "sqlite:///var/lib/a.db",
        "postgres://u:p@db:5432/aetherium",
        "postgresql://u@127.0.0.1/aetherium?sslmode=disable",
    ] {
        let c =
            Config::load_with_env(None, env_of(&[("AETHERIUM_DATABASE_URL", ok)])).expect("load");
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
    let c =
        Config::load_with_env(None, env_of(&[("WORKER_LABELS", "gpu=no, zone=a")])).expect("load");
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
