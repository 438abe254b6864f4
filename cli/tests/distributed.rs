//! Distributed mode's faults, with the real processes: `aetherium gateway` and
//! `aetherium worker run` (this crate's binary), a throw-away PostgreSQL and Redis
//! (`aetherium-testkit`, on loopback) and the real Docker engine.
//!
//! Every process is stopped by its pid, every server by the testkit (by pid), and
//! every container by its worker-id label, so tests run in parallel with anything.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use aetherium_testkit::{random_hex, static_agent_bin, test_image};

use aetherium_testkit::postgres::TempPostgres;
use aetherium_testkit::redis::TempRedis;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_aetherium");

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status();
}

/// A running `aetherium` process, stopped (SIGTERM, then SIGKILL) by its pid.
struct Proc {
    child: Option<Child>,
    /// Lines of its stdout, as they come.
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(mut cmd: Command, ready_prefix: &str) -> (Proc, String) {
        // AETHERIUM_TEST_LOG_DIR=<dir> keeps every process's log there (for
        // debugging a failure); by default they are dropped.
        let stderr = match std::env::var_os("AETHERIUM_TEST_LOG_DIR") {
            Some(dir) => {
                let name = format!("{}-{}.log", ready_prefix.replace(' ', "_"), random_hex());
                Stdio::from(std::fs::File::create(PathBuf::from(dir).join(name)).unwrap())
            }
            None => Stdio::null(),
        };
        let mut child = cmd.stdout(Stdio::piped()).stderr(stderr).spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(ready_prefix) {
                        let rest = rest.trim().to_string();
                        return (
                            Proc {
                                child: Some(child),
                                lines,
                            },
                            rest,
                        );
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let status = child.wait();
                    panic!("process did not print {ready_prefix:?} ({status:?})");
                }
            }
        }
    }

    /// SIGKILL: no drain, no release, no goodbye.
    fn kill_hard(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), "KILL");
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait (a graceful stop).
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), "TERM");
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            signal(child.id(), "KILL");
            let _ = child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
        let _ = &self.lines;
    }
}

/// PostgreSQL + Redis + the environment every process of one cluster shares. The
/// processes reach both over TLS, verifying the servers' certificates (and showing
/// Redis a client certificate), as a cluster across hosts would; the tests' own
/// checks (`psql`, `redis-cli`) use the plain loopback ports.
struct Cluster {
    pg: TempPostgres,
    redis: TempRedis,
    db_pki: aetherium_testkit::tls::TestPki,
    secret: String,
    dir: tempfile::TempDir,
    /// Worker ids started: their containers are removed at the end.
    worker_ids: std::sync::Mutex<Vec<String>>,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let db_pki = aetherium_testkit::tls::TestPki::make(&dir.path().join("db-pki")).unwrap();
        let mut pg = TempPostgres::start().expect("postgres (apt-get install postgresql)");
        pg.enable_tls(
            &std::fs::read_to_string(&db_pki.server_cert).unwrap(),
            &std::fs::read_to_string(&db_pki.server_key).unwrap(),
        )
        .expect("postgres with TLS");
        let redis = TempRedis::start_tls(
            aetherium_testkit::redis::RedisTlsFiles {
                cert: db_pki.server_cert.clone(),
                key: db_pki.server_key.clone(),
                ca: db_pki.ca.clone(),
                require_client_cert: true,
            },
            true,
        )
        .expect("redis-server with TLS");
        let cluster = Cluster {
            pg,
            redis,
            db_pki,
            secret: format!("secret-{}-{}", random_hex(), random_hex()),
            dir,
            worker_ids: std::sync::Mutex::new(Vec::new()),
        };
        // The tunnel runs over TLS, as a real cluster's: a CA made by the CLI.
        cluster.pki(&["init"]);
        cluster.pki(&["issue", "--gateway", "gateway"]);
        cluster
    }

    fn pki_dir(&self) -> PathBuf {
        self.dir.path().join("pki")
    }

    /// `aetherium cluster <args> --dir <pki>`, which must succeed.
    fn pki(&self, args: &[&str]) {
        let out = Command::new(BIN)
            .arg("cluster")
            .args(args)
            .arg("--dir")
            .arg(self.pki_dir())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cluster {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The TLS files of `stem` (`gateway-gateway`, `worker-<id>`) as environment.
    fn tls_env(&self, cmd: &mut Command, stem: &str) {
        let pki = self.pki_dir();
        cmd.env("AETHERIUM_CLUSTER_TLS_CA", pki.join("ca.pem"))
            .env(
                "AETHERIUM_CLUSTER_TLS_CERT",
                pki.join(format!("{stem}.pem")),
            )
            .env("AETHERIUM_CLUSTER_TLS_KEY", pki.join(format!("{stem}.key")));
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env(
                "AETHERIUM_DATABASE_URL",
                format!(
                    "{}?sslmode=verify-full&sslrootcert={}",
                    self.pg.url(),
                    self.db_pki.ca.display()
                ),
            )
            .env("AETHERIUM_QUEUE_BACKEND", "redis")
            .env("AETHERIUM_REDIS_URL", self.redis.tls_url().unwrap())
            .env("AETHERIUM_REDIS_TLS_CA", &self.db_pki.ca)
            .env("AETHERIUM_REDIS_TLS_CERT", &self.db_pki.client_cert)
            .env("AETHERIUM_REDIS_TLS_KEY", &self.db_pki.client_key)
            .env("AETHERIUM_CLUSTER_SECRET", &self.secret)
            // Workers' tunnel endpoints on a free loopback port each.
            .env("AETHERIUM_WORKER_ADDRESS", "127.0.0.1:0")
            .env("AETHERIUM_AGENT_PATH", static_agent_bin())
            // Docker only: no QEMU probe, no bridge (tests/microvm.rs covers those).
            .env("AETHERIUM_BACKENDS", "docker")
            .env("AETHERIUM_DEFAULT_IMAGE", test_image())
            .env("AETHERIUM_HEARTBEAT_INTERVAL_SECONDS", "1")
            .env("AETHERIUM_LOG_FORMAT", "json")
            .env(
                "AETHERIUM_LOG_LEVEL",
                std::env::var("AETHERIUM_TEST_LOG_LEVEL").unwrap_or_else(|_| "warn".into()),
            )
            .env("AETHERIUM_RATE_LIMIT_PER_SECOND", "0")
            // A crashed worker's tasks come back after 5 s, retried after 1 s.
            .env("AETHERIUM_QUEUE_LEASE_SECONDS", "5")
            .env("AETHERIUM_QUEUE_RETRY_BASE_SECONDS", "1")
            .env("AETHERIUM_QUEUE_RECONCILE_SECONDS", "5")
            .env_remove("AETHERIUM_API_TOKEN")
            .env_remove("AETHERIUM_CONFIG");
        cmd
    }

    /// A gateway on a free port, and an API client for it.
    fn gateway(&self) -> (Proc, Api) {
        let data = self.dir.path().join(format!("gw-{}", random_hex()));
        let mut cmd = self.command(&["gateway", "--port", "0", "--data-dir"]);
        cmd.arg(&data);
        self.tls_env(&mut cmd, "gateway-gateway");
        // The first gateway creates the admin key; later ones reuse its file.
        let shared_key = self.dir.path().join("admin-token");
        if let Ok(key) = std::fs::read_to_string(&shared_key) {
            cmd.env("AETHERIUM_API_TOKEN", key.trim());
        }
        let (proc, url) = Proc::spawn(cmd, "aetherium gateway is up at ");
        let token = match std::fs::read_to_string(data.join("admin-token")) {
            Ok(t) => {
                std::fs::write(&shared_key, &t).unwrap();
                t
            }
            Err(_) => std::fs::read_to_string(&shared_key).unwrap(),
        };
        (proc, Api::new(&url, token.trim()))
    }

    fn worker(&self, id: &str) -> Proc {
        {
            let mut ids = self.worker_ids.lock().unwrap();
            if !ids.iter().any(|w| w == id) {
                ids.push(id.to_string());
                self.pki(&["issue", "--worker", id]);
            }
        }
        let data = self.dir.path().join(id);
        let mut cmd = self.command(&["worker", "run", "--id", id, "--data-dir"]);
        cmd.arg(&data);
        self.tls_env(&mut cmd, &format!("worker-{id}"));
        Proc::spawn(cmd, &format!("aetherium worker {id} is up")).0
    }

    /// Tasks Redis still holds in line (lists and zsets but the archive).
    fn redis_in_line(&self) -> u64 {
        const SCRIPT: &str = "local n = 0 \
            for _, k in ipairs(redis.call('KEYS', 'aetherium:[qw]:*')) do \
              if not string.find(k, 'archive') then \
                local t = redis.call('TYPE', k).ok \
                if t == 'list' then n = n + redis.call('LLEN', k) \
                elseif t == 'zset' then n = n + redis.call('ZCARD', k) end \
              end \
            end return n";
        let out = Command::new("redis-cli")
            .args(["-p", &self.redis.port().to_string(), "EVAL", SCRIPT, "0"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        text.trim()
            .trim_start_matches("(integer) ")
            .parse()
            .unwrap_or(u64::MAX)
    }

    /// A direct connection to the database, for checks of the records.
    fn psql(&self, sql: &str) -> String {
        let bindir = aetherium_testkit::postgres::bindir().unwrap();
        let out = Command::new(bindir.join("psql"))
            .arg(self.pg.url())
            .args(["-tA", "-c", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for id in self.worker_ids.lock().unwrap().iter() {
            remove_containers_of(id);
        }
        aetherium_testkit::unmount_below(self.dir.path());
    }
}

fn remove_containers_of(worker_id: &str) {
    let out = Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=io.aetherium.worker_id={worker_id}"),
        ])
        .output();
    if let Ok(out) = out {
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        aetherium_testkit::remove_sandbox_rules(&ids);
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f"])
                .args(&ids)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A small blocking client of the API (`curl`-free: reqwest on a private runtime).
struct Api {
    base: String,
    token: String,
    http: reqwest::Client,
    rt: tokio::runtime::Runtime,
}

struct Reply {
    status: u16,
    body: Value,
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.body)
    }
}

impl Api {
    fn new(url: &str, token: &str) -> Api {
        Api {
            base: format!("{url}/api/v1"),
            token: token.to_string(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .unwrap(),
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        }
    }

    fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Reply {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        self.rt.block_on(async {
            match req.send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let text = resp.text().await.unwrap_or_default();
                    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
                    Reply { status, body }
                }
                Err(e) => Reply {
                    status: 0,
                    body: Value::String(e.to_string()),
                },
            }
        })
    }

    fn get(&self, path: &str) -> Reply {
        self.call(reqwest::Method::GET, path, None)
    }

    fn post(&self, path: &str, body: Value) -> Reply {
        self.call(reqwest::Method::POST, path, Some(body))
    }

    /// A running VM (waits for it).
    fn create_vm(&self) -> Value {
        let r = self.post(
            "/vms?wait=90s",
            json!({"name": format!("d-{}", random_hex()), "memory_mb": 128}),
        );
        assert_eq!(r.status, 200, "{r:?}");
        let vm = r.body["vm"].clone();
        assert_eq!(vm["status"], "RUNNING", "{r:?}");
        vm
    }

    fn execute(&self, vm: &str, args: &[&str], wait: &str) -> Reply {
        self.post(
            &format!("/vms/{vm}/execute?wait={wait}"),
            json!({"command": args[0], "args": &args[1..]}),
        )
    }
}

fn wait_until<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn has_docker() -> bool {
    Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

// ---- (c) dependencies restarted ----------------------------------------------------------

/// Redis, then PostgreSQL, go away and come back under a running gateway and worker:
/// while one is down the API answers 503 (never 500) naming it, and afterwards the
/// same processes carry on by themselves (no restart).
#[test]
fn redis_and_postgres_restarts_are_503_then_recovered() {
    assert!(has_docker(), "needs Docker");
    let mut cluster = Cluster::start();
    let worker_id = format!("dist-c-{}", random_hex());
    let _worker = cluster.worker(&worker_id);
    let (_gateway, api) = cluster.gateway();
    let vm = api.create_vm();
    let vm_id = vm["id"].as_str().unwrap().to_string();
    let r = api.execute(&vm_id, &["echo", "before"], "30s");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["execution"]["stdout"], "before\n", "{r:?}");

    // Redis down: queueing work is 503; reading state (PostgreSQL) still works.
    cluster.redis.stop();
    let r = api.execute(&vm_id, &["echo", "lost?"], "5s");
    assert_eq!(r.status, 503, "{r:?}");
    assert!(
        r.body.to_string().to_lowercase().contains("redis") || r.body.to_string().contains("queue"),
        "{r:?}"
    );
    let r = api.get("/queue/stats");
    assert_eq!(r.status, 503, "{r:?}");
    let r = api.get(&format!("/vms/{vm_id}"));
    assert_eq!(r.status, 200, "{r:?}");
    // The refused execute left no execution or task behind that could still run.
    cluster.redis.restart().unwrap();
    let r = wait_until(
        "an execute after Redis came back",
        Duration::from_secs(30),
        || {
            let r = api.execute(&vm_id, &["echo", "after redis"], "30s");
            (r.status != 503).then_some(r)
        },
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["execution"]["stdout"], "after redis\n", "{r:?}");
    let r = api.get("/queue/stats");
    assert_eq!(r.status, 200, "{r:?}");

    // PostgreSQL killed (SIGKILL, no clean shutdown): every route that needs it is
    // 503 (authentication included).
    cluster.pg.kill_hard().unwrap();
    for path in ["/vms", &format!("/vms/{vm_id}"), "/tasks", "/workers"] {
        let r = api.get(path);
        assert_eq!(r.status, 503, "GET {path}: {r:?}");
    }
    let r = api.execute(&vm_id, &["echo", "lost?"], "5s");
    assert_eq!(r.status, 503, "{r:?}");
    std::thread::sleep(Duration::from_secs(2));
    cluster.pg.restart().unwrap();
    let r = wait_until(
        "an execute after PostgreSQL came back",
        Duration::from_secs(30),
        || {
            let r = api.execute(&vm_id, &["echo", "after postgres"], "30s");
            (r.status != 503).then_some(r)
        },
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["execution"]["stdout"], "after postgres\n", "{r:?}");
    // The worker kept (or got back) its place: still active, heartbeating.
    let w = wait_until("the worker active again", Duration::from_secs(15), || {
        let r = api.get(&format!("/workers/{worker_id}"));
        (r.status == 200 && r.body["status"] == "active").then_some(r)
    });
    assert_eq!(w.body["id"], worker_id.as_str());
    // Every connection of the platform's processes, made again after the restarts,
    // is TLS: PostgreSQL says so per backend; Redis by the port its clients came to.
    let sessions = |ssl: &str| {
        cluster.psql(&format!(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.application_name = 'aetherium' AND s.ssl = {ssl}"
        ))
    };
    assert_eq!(sessions("false"), "0");
    assert_ne!(sessions("true"), "0");
    let clients = Command::new("redis-cli")
        .args(["-p", &cluster.redis.port().to_string(), "CLIENT", "LIST"])
        .output()
        .unwrap();
    let clients = String::from_utf8_lossy(&clients.stdout).into_owned();
    let tls_port = cluster
        .redis
        .tls_url()
        .unwrap()
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    let ours = format!("laddr=127.0.0.1:{} ", cluster.redis.port());
    let platform: Vec<&str> = clients.lines().filter(|l| !l.contains(&ours)).collect();
    assert!(!platform.is_empty(), "{clients}");
    assert!(
        platform
            .iter()
            .all(|l| l.contains(&format!("laddr=127.0.0.1:{tls_port} "))),
        "{clients}"
    );
    // Every execution of the VM ends (none left pending or running). An attempt
    // that an outage cut may leave one behind: its task lost in Redis comes back by
    // the queue's reconcile sweep (every 5 s here, for records 5 s old) and runs, and
    // one whose task was never queued is failed by the execution sweep (15 s).
    let unfinished = || {
        cluster.psql(&format!(
            "SELECT count(*) FROM executions WHERE vm_id = '{vm_id}' AND status IN ('pending','running')"
        ))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while unfinished() != "0" {
        if Instant::now() > deadline {
            panic!(
                "executions of the VM still unfinished after 60 s:\n{}\ntheir tasks:\n{}",
                cluster.psql(&format!(
                    "SELECT id, status, task_id, created_at FROM executions WHERE vm_id = '{vm_id}'"
                )),
                cluster.psql(&format!(
                    "SELECT id, type, status, worker_id, retry_count, error FROM tasks WHERE vm_id = '{vm_id}'"
                )),
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

// ---- (d) owner offline --------------------------------------------------------------------

/// An execute for a VM whose worker died: answered at once with an error that names
/// the worker — never a request that waits out its whole `wait`.
#[test]
fn execute_on_a_vm_whose_owner_is_offline_is_a_clear_error() {
    assert!(has_docker(), "needs Docker");
    let cluster = Cluster::start();
    let worker_id = format!("dist-d-{}", random_hex());
    let mut worker = cluster.worker(&worker_id);
    let (_gateway, api) = cluster.gateway();
    let vm = api.create_vm();
    let vm_id = vm["id"].as_str().unwrap().to_string();
    assert_eq!(vm["worker_id"], worker_id.as_str());

    worker.kill_hard();
    // Right after the kill the worker is not yet known to be gone: an execute then
    // is queued for it, and must end when the worker is declared offline (3
    // heartbeats), not hang for the whole wait.
    let started = Instant::now();
    let r = api.execute(&vm_id, &["echo", "hello"], "60s");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(20), "took {took:?}: {r:?}");
    // Either refused (the sweep got there first: 503/409) or, having been queued,
    // the execution ended `failed` with the reason (the wait returns when it ends).
    if r.status == 200 {
        assert_eq!(r.body["execution"]["status"], "failed", "{r:?}");
        assert!(r.body["execution"]["exit_code"].is_null(), "{r:?}");
    } else {
        assert!(r.status == 503 || r.status == 409, "{r:?}");
    }
    let text = r.body.to_string();
    assert!(text.contains(&worker_id), "{r:?}");

    // Once it is declared offline: 503 at once, naming the worker, and the VM FAILED.
    let r = wait_until("the VM marked FAILED", Duration::from_secs(20), || {
        let r = api.get(&format!("/vms/{vm_id}"));
        (r.body["status"] == "FAILED").then_some(r)
    });
    assert!(r.body["error"].to_string().contains(&worker_id), "{r:?}");
    let started = Instant::now();
    let r = api.execute(&vm_id, &["echo", "hello"], "60s");
    assert!(started.elapsed() < Duration::from_secs(5), "{r:?}");
    assert!(r.status == 409 || r.status == 503, "{r:?}");
    assert!(
        r.body.to_string().contains(&vm_id) || r.body.to_string().contains(&worker_id),
        "{r:?}"
    );
    let r = api.get(&format!("/workers/{worker_id}"));
    assert_eq!(r.body["status"], "offline", "{r:?}");
    // No task of that VM is left waiting for a worker that will not come.
    let waiting = cluster.psql(&format!(
        "SELECT count(*) FROM tasks WHERE vm_id = '{vm_id}' AND status IN ('pending','running')"
    ));
    assert_eq!(waiting, "0");
}

/// A VM placed on a worker that died before making it (its create still queued for
/// that worker) is placed on another worker once the first is declared offline,
/// under the same placement; the first worker, back, makes nothing of it.
#[test]
fn a_vm_whose_worker_died_before_making_it_is_placed_on_another() {
    assert!(has_docker(), "needs Docker");
    let cluster = Cluster::start();
    let first = format!("dist-e-{}", random_hex());
    let mut worker = cluster.worker(&first);
    let (_gateway, api) = cluster.gateway();
    // Right after the kill the worker still counts as live (3 heartbeats): the VM
    // is placed on it, and its create waits in its queue.
    worker.kill_hard();
    let r = api.post(
        "/vms",
        json!({"name": format!("d-{}", random_hex()), "memory_mb": 128}),
    );
    assert_eq!(r.status, 202, "{r:?}");
    let vm_id = r.body["vm_id"].as_str().unwrap().to_string();
    let r = api.get(&format!("/vms/{vm_id}"));
    assert_eq!(r.body["worker_id"], first.as_str(), "{r:?}");

    let second = format!("dist-e-{}", random_hex());
    let _second_worker = cluster.worker(&second);
    let vm = wait_until(
        "the VM running on the second worker",
        Duration::from_secs(60),
        || {
            let r = api.get(&format!("/vms/{vm_id}"));
            assert_ne!(r.body["status"], "FAILED", "{r:?}");
            (r.body["status"] == "RUNNING").then_some(r.body)
        },
    );
    assert_eq!(vm["worker_id"], second.as_str(), "{vm}");
    let r = api.execute(&vm_id, &["echo", "placed again"], "30s");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["execution"]["stdout"], "placed again\n", "{r:?}");
    // The first create was cancelled saying why; the second made the VM.
    let creates = cluster.psql(&format!(
        "SELECT status || ' ' || coalesce(error, '') FROM tasks
         WHERE vm_id = '{vm_id}' AND type = 'vm:create' ORDER BY created_at"
    ));
    let creates: Vec<&str> = creates.lines().collect();
    assert_eq!(creates.len(), 2, "{creates:?}");
    assert!(
        creates[0].starts_with("cancelled") && creates[0].contains(&second),
        "{creates:?}"
    );
    assert!(creates[1].starts_with("completed"), "{creates:?}");

    // The first worker back: nothing of the VM is made there, and it stays where it is.
    let _back = cluster.worker(&first);
    std::thread::sleep(Duration::from_secs(3));
    let r = api.get(&format!("/vms/{vm_id}"));
    assert_eq!(r.body["status"], "RUNNING", "{r:?}");
    assert_eq!(r.body["worker_id"], second.as_str(), "{r:?}");
    let on_first = Command::new("docker")
        .args(["ps", "-aq", "--filter"])
        .arg(format!("label=io.aetherium.worker_id={first}"))
        .output()
        .unwrap();
    assert!(on_first.stdout.is_empty(), "{on_first:?}");
}

// ---- (a) a worker killed in the middle of a task ---------------------------------------

/// The command of test (a): appends `start <ns>` and `end <ns>` to a file in the
/// sandbox, so that the runs of the command can be counted.
const MARKED_SLEEP: &str = "echo start $(date +%s%N) >> /tmp/attempts; sleep 3; echo end $(date +%s%N) >> /tmp/attempts; echo done";

/// `(start, end)` pairs from the attempts file (an attempt killed with no end has
/// `None`).
fn attempts(api: &Api, vm: &str) -> Vec<(u128, Option<u128>)> {
    let r = api.execute(vm, &["cat", "/tmp/attempts"], "30s");
    assert_eq!(r.status, 200, "{r:?}");
    let mut out: Vec<(u128, Option<u128>)> = Vec::new();
    for line in r.body["execution"]["stdout"].as_str().unwrap().lines() {
        let (kind, at) = line.split_once(' ').unwrap();
        let at: u128 = at.trim().parse().unwrap();
        match kind {
            "start" => out.push((at, None)),
            _ => {
                // An end belongs to the latest start with none.
                let open = out.iter_mut().rev().find(|(_, e)| e.is_none()).unwrap();
                open.1 = Some(at);
            }
        }
    }
    out
}

/// A worker is SIGKILLed while it runs `vm:execute` (a 3 s command). VM-bound work
/// cannot move to another worker: the sandbox, and the process in it, live on the
/// owner's host. So the correct outcomes are the two this test shows:
///
/// 1. the owner comes back (restarted with its id, as systemd or Kubernetes would)
///    before it is declared offline: it adopts its sandbox, the task's lease expires,
///    and the task is retried on it per policy. A command may have had effects, so
///    the retry does not start it again (at most once): the task ends `completed`
///    and the execution `failed` ("the worker stopped while the command ran; it was
///    not run again") — one terminal state each, the command run once;
/// 2. the owner does not come back: once declared offline its VM is FAILED and the
///    task ends `cancelled` with the reason, its execution `failed` — nothing waits
///    forever, nothing runs elsewhere.
///
/// Meanwhile a second worker keeps serving its own VM: work not bound to the dead
/// worker is not disturbed.
#[test]
fn a_worker_killed_mid_task_loses_nothing_and_runs_nothing_twice_at_once() {
    assert!(has_docker(), "needs Docker");
    let cluster = Cluster::start();
    let a = format!("dist-a1-{}", random_hex());
    let b = format!("dist-a2-{}", random_hex());
    let mut worker_a = cluster.worker(&a);
    let (_gateway, api) = cluster.gateway();
    let vm_a = api.create_vm();
    let vm_a = vm_a["id"].as_str().unwrap().to_string();
    let _worker_b = cluster.worker(&b);
    // Placement prefers the emptier worker: the next VM lands on b.
    let vm_b = api.create_vm();
    assert_eq!(vm_b["worker_id"], b.as_str(), "{vm_b}");
    let vm_b = vm_b["id"].as_str().unwrap().to_string();

    // Direct work crosses processes: a streamed exec through the gateway reaches
    // b's sandbox over b's tunnel endpoint.
    let r = api.post(
        &format!("/vms/{vm_b}/exec/stream"),
        json!({"command": "sh", "args": ["-c", "echo streamed from b"]}),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.to_string().contains("streamed from b"), "{r:?}");

    // 1. Killed mid-command, back in time: retried on its owner, completes.
    let r = api.post(
        &format!("/vms/{vm_a}/execute"),
        json!({"command": "sh", "args": ["-c", MARKED_SLEEP]}),
    );
    assert_eq!(r.status, 202, "{r:?}");
    let task_id = r.body["task_id"].as_str().unwrap().to_string();
    wait_until("the task running", Duration::from_secs(20), || {
        let r = api.get(&format!("/tasks/{task_id}"));
        (r.body["status"] == "running").then_some(())
    });
    std::thread::sleep(Duration::from_millis(800));
    worker_a.kill_hard();
    // b is not disturbed meanwhile.
    let r = api.execute(&vm_b, &["echo", "b works"], "30s");
    assert_eq!(r.body["execution"]["stdout"], "b works\n", "{r:?}");
    worker_a = cluster.worker(&a);
    let task = wait_until("the task finished", Duration::from_secs(60), || {
        let r = api.get(&format!("/tasks/{task_id}"));
        matches!(
            r.body["status"].as_str(),
            Some("completed" | "failed" | "cancelled")
        )
        .then_some(r.body)
    });
    // The task ends once, `completed`: its retry found the execution started by the
    // lost attempt and, since a command may have had effects, did not run it again
    // (at most once for commands) but recorded it `failed` with the reason.
    assert_eq!(task["status"], "completed", "{task}");
    // One attempt was lost with the worker, one ran: a late write of the recovery
    // must not undo the new lease (which made the task run a third time).
    assert_eq!(task["retry_count"], 1, "{task}");
    let runs = attempts(&api, &vm_a);
    assert_eq!(runs.len(), 1, "the command ran once only: {runs:?}");
    let execution = cluster.psql(&format!(
        "SELECT status || ' ' || coalesce(error, '') FROM executions WHERE task_id = '{task_id}'"
    ));
    assert!(
        execution.starts_with("failed ") && execution.contains("not run again"),
        "{execution}"
    );

    // 2. Killed mid-command, never back: cancelled with the reason, VM FAILED.
    let r = api.post(
        &format!("/vms/{vm_a}/execute"),
        json!({"command": "sleep", "args": ["5"]}),
    );
    let task_id = r.body["task_id"].as_str().unwrap().to_string();
    let execution_id = r.body["execution_id"].as_str().unwrap().to_string();
    wait_until("the task running", Duration::from_secs(20), || {
        let r = api.get(&format!("/tasks/{task_id}"));
        (r.body["status"] == "running").then_some(())
    });
    worker_a.kill_hard();
    let task = wait_until("the task ended", Duration::from_secs(40), || {
        let r = api.get(&format!("/tasks/{task_id}"));
        matches!(
            r.body["status"].as_str(),
            Some("completed" | "failed" | "cancelled")
        )
        .then_some(r.body)
    });
    assert!(
        matches!(task["status"].as_str(), Some("cancelled" | "failed")),
        "{task}"
    );
    assert!(task["error"].to_string().contains(&a), "{task}");
    let r = api.get(&format!("/executions/{execution_id}"));
    if r.status == 200 {
        assert_eq!(r.body["status"], "failed", "{r:?}");
    }
    let exec_status = cluster.psql(&format!(
        "SELECT status FROM executions WHERE id = '{execution_id}'"
    ));
    assert_eq!(exec_status, "failed");
    let r = api.get(&format!("/vms/{vm_a}"));
    assert_eq!(r.body["status"], "FAILED", "{r:?}");
    // b still fine.
    let r = api.execute(&vm_b, &["echo", "still"], "30s");
    assert_eq!(r.body["execution"]["stdout"], "still\n", "{r:?}");
}

// ---- (b) many tasks, workers killed and restarted at random ------------------------------

/// A small deterministic random source (xorshift), seeded from the clock and printed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// 1,000 `vm:execute` tasks (`true`: the cheapest real task — each still goes
/// through the API, PostgreSQL records, the Redis queue, a worker and the sandbox's
/// agent) on four VMs over two workers, submitted while the workers are SIGKILLed
/// and restarted at random. Every task ends in exactly one terminal state, recorded
/// in PostgreSQL; Redis holds nothing left over; every execution ended.
#[test]
fn a_thousand_tasks_while_workers_are_killed_and_restarted() {
    assert!(has_docker(), "needs Docker");
    const TASKS: usize = 1000;
    let cluster = Cluster::start();
    let ids = [
        format!("dist-b1-{}", random_hex()),
        format!("dist-b2-{}", random_hex()),
    ];
    let mut workers: Vec<Option<Proc>> = ids.iter().map(|id| Some(cluster.worker(id))).collect();
    let (_gateway, api) = cluster.gateway();
    let vms: Vec<String> = (0..4)
        .map(|_| api.create_vm()["id"].as_str().unwrap().to_string())
        .collect();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("seed {seed}");
    let mut rng = Rng(seed);
    let started = Instant::now();
    let mut submitted = Vec::with_capacity(TASKS);
    let mut kills = 0;
    let mut down_since: Vec<Option<Instant>> = vec![None; ids.len()];
    while submitted.len() < TASKS {
        let vm = &vms[rng.below(vms.len() as u64) as usize];
        // Each command appends its own number to a file in its VM: a task run twice
        // (or lost) shows in the files at the end.
        let n = submitted.len();
        let r = api.post(
            &format!("/vms/{vm}/execute"),
            json!({"command": "sh", "args": ["-c", format!("echo {n} >> /tmp/runs")]}),
        );
        assert_eq!(r.status, 202, "{r:?}");
        submitted.push(r.body["task_id"].as_str().unwrap().to_string());
        // Now and then kill a worker; bring a killed one back within ~1.5 s (before
        // it is declared offline: its VMs stay, its tasks come back to it).
        if submitted.len() % 25 == 0 {
            for (i, since) in down_since.iter_mut().enumerate() {
                if since.is_some_and(|t| t.elapsed() > Duration::from_millis(500)) {
                    workers[i] = Some(cluster.worker(&ids[i]));
                    *since = None;
                }
            }
            if rng.below(3) == 0 {
                let i = rng.below(ids.len() as u64) as usize;
                if let Some(mut w) = workers[i].take() {
                    w.kill_hard();
                    kills += 1;
                    down_since[i] = Some(Instant::now());
                }
            }
        }
    }
    for (i, since) in down_since.iter().enumerate() {
        if since.is_some() {
            workers[i] = Some(cluster.worker(&ids[i]));
        }
    }
    eprintln!(
        "submitted {TASKS} tasks in {:?} with {kills} kills",
        started.elapsed()
    );
    assert!(kills > 0, "the test must kill some worker");
    let in_list = submitted
        .iter()
        .map(|id| format!("'{id}'"))
        .collect::<Vec<_>>()
        .join(",");
    let counts = wait_until("every task terminal", Duration::from_secs(150), || {
        let unfinished = cluster.psql(&format!(
            "SELECT count(*) FROM tasks WHERE id IN ({in_list}) AND status NOT IN ('completed','failed','cancelled')"
        ));
        (unfinished == "0").then(|| {
            cluster.psql(&format!(
                "SELECT status || '=' || count(*) FROM tasks WHERE id IN ({in_list}) GROUP BY status ORDER BY status"
            ))
        })
    });
    eprintln!(
        "terminal after {:?}: {}",
        started.elapsed(),
        counts.replace('\n', " ")
    );
    // One row per task, each in one terminal state.
    let rows = cluster.psql(&format!(
        "SELECT count(*) FROM tasks WHERE id IN ({in_list})"
    ));
    assert_eq!(rows, TASKS.to_string());
    // The workers came back in time: nothing was lost, so everything completed.
    let completed = cluster.psql(&format!(
        "SELECT count(*) FROM tasks WHERE id IN ({in_list}) AND status = 'completed'"
    ));
    assert_eq!(completed, TASKS.to_string(), "{counts}");
    // Every execution ended, with the task's outcome.
    let open = cluster.psql(&format!(
        "SELECT count(*) FROM executions WHERE task_id IN ({in_list}) AND status NOT IN ('completed','failed','cancelled')"
    ));
    assert_eq!(open, "0");
    // Every command ran exactly once: each number is in exactly one VM's file, once.
    let mut runs: Vec<usize> = Vec::with_capacity(TASKS);
    for vm in &vms {
        let r = api.post(
            &format!("/vms/{vm}/execute?wait=60s"),
            json!({"command": "sh", "args": ["-c", "cat /tmp/runs 2>/dev/null; true"]}),
        );
        assert_eq!(r.status, 200, "{r:?}");
        let out = r.body["execution"]["stdout"].as_str().unwrap().to_string();
        runs.extend(out.lines().map(|l| l.trim().parse::<usize>().unwrap()));
    }
    runs.sort_unstable();
    let doubled: Vec<usize> = runs
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| w[0])
        .collect();
    assert!(doubled.is_empty(), "commands that ran twice: {doubled:?}");
    // At most once: a command whose worker was killed while it ran is failed, not
    // run again (it may or may not have run). Every completed one ran, once.
    let completed: Vec<usize> = cluster
        .psql(&format!(
            "SELECT args::text FROM executions WHERE task_id IN ({in_list}) AND status = 'completed'"
        ))
        .lines()
        .map(|args| {
            let n = args.split("echo ").nth(1).and_then(|rest| rest.split(' ').next());
            n.and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("unexpected args {args}"))
        })
        .collect();
    let missing: Vec<&usize> = completed
        .iter()
        .filter(|n| runs.binary_search(n).is_err())
        .collect();
    assert!(missing.is_empty(), "completed but never ran: {missing:?}");
    assert!(runs.iter().all(|n| *n < TASKS));
    let cut = TASKS - completed.len();
    eprintln!(
        "{} commands ran; {cut} were cut by a kill and not run again",
        runs.len()
    );
    // Redis holds nothing in line any more (pending lists, per-worker lists, leases,
    // retries, schedules; the archive aside).
    let left = wait_until("the Redis queue empty", Duration::from_secs(30), || {
        let n = cluster.redis_in_line();
        (n == 0).then_some(n)
    });
    assert_eq!(left, 0);
    drop(workers);
}

// ---- graceful stop -----------------------------------------------------------------------

/// SIGTERM to a worker in the middle of a long command: it drains for its grace
/// period (10 s), then stops the task and releases it to the queue at once — no
/// attempt counted, no waiting for the lease — and marks itself offline. Started
/// again, it takes the task back at once; the command (which may have had effects)
/// is not run a second time.
#[test]
fn a_stopping_worker_releases_its_unfinished_tasks() {
    assert!(has_docker(), "needs Docker");
    let cluster = Cluster::start();
    let id = format!("dist-g-{}", random_hex());
    let mut worker = cluster.worker(&id);
    let (_gateway, api) = cluster.gateway();
    let vm = api.create_vm();
    let vm = vm["id"].as_str().unwrap().to_string();
    let r = api.post(
        &format!("/vms/{vm}/execute"),
        json!({"command": "sleep", "args": ["60"]}),
    );
    let task_id = r.body["task_id"].as_str().unwrap().to_string();
    wait_until("the task running", Duration::from_secs(20), || {
        let r = api.get(&format!("/tasks/{task_id}"));
        (r.body["status"] == "running").then_some(())
    });
    let stopping = Instant::now();
    worker.stop();
    let took = stopping.elapsed();
    assert!(took < Duration::from_secs(20), "stop took {took:?}");
    // Released: back in line for its worker, no attempt counted, not failed.
    let record = cluster.psql(&format!(
        "SELECT status || ' ' || retry_count FROM tasks WHERE id = '{task_id}'"
    ));
    assert_eq!(record, "pending 0");
    let r = api.get(&format!("/workers/{id}"));
    assert_eq!(r.body["status"], "offline", "{r:?}");
    let _worker = cluster.worker(&id);
    let task = wait_until("the task finished", Duration::from_secs(30), || {
        let r = api.get(&format!("/tasks/{task_id}"));
        matches!(
            r.body["status"].as_str(),
            Some("completed" | "failed" | "cancelled")
        )
        .then_some(r.body)
    });
    assert_eq!(task["status"], "completed", "{task}");
    let execution = cluster.psql(&format!(
        "SELECT status || ' ' || coalesce(error, '') FROM executions WHERE task_id = '{task_id}'"
    ));
    assert!(execution.contains("not run again"), "{execution}");
}
