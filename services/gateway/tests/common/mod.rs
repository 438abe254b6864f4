//! A real embedded platform per test: its own data dir, worker id, port and token,
//! against the real Docker engine. Containers are found by this test's unique worker
//! label and removed by id when the test ends.
#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use aetherium_common::Config;
use aetherium_core::EmbeddedRuntime;
use aetherium_gateway::AppState;
use serde_json::Value;

pub const TOKEN: &str = "test-token-0123456789abcdef";
/// `vmm.output_cap_bytes` of the test platform (queued and direct executions alike).
pub const OUTPUT_CAP_BYTES: usize = 64 * 1024;

pub use aetherium_testkit::{static_agent_bin, test_image};

/// Changes a test server's config before each boot.
type ConfigTweak = std::sync::Arc<dyn Fn(&mut Config) + Send + Sync>;

pub struct TestServer {
    pub url: String,
    pub http: reqwest::Client,
    pub data_dir: tempfile::TempDir,
    pub worker_id: String,
    pub docker_host: String,
    /// `AppState::max_upload_bytes` of the API (the default unless a test sets it).
    pub max_upload_bytes: u64,
    /// Applied to the config before each boot (see [`TestServer::start_with_config`]).
    tweak: Option<ConfigTweak>,
    runtime: Option<EmbeddedRuntime>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

fn config_for(data_dir: &std::path::Path, worker_id: &str, docker_host: &str) -> Config {
    let mut config = Config {
        data_dir: data_dir.to_path_buf(),
        ..Config::default()
    };
    config.worker.id = worker_id.to_string();
    config.worker.heartbeat_interval_seconds = 1;
    config.vmm.agent_path = Some(static_agent_bin());
    config.vmm.docker.default_image = test_image();
    config.vmm.docker.host = docker_host.to_string();
    // MicroVM tests opt in (tests/microvm.rs); the others need only Docker.
    config.vmm.backends = vec!["docker".into()];
    config.vmm.output_cap_bytes = OUTPUT_CAP_BYTES;
    config.queue.retry_base_seconds = 1;
    config.server.port = 0;
    config
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with_docker("unix:///var/run/docker.sock").await
    }

    pub async fn start_with_docker(docker_host: &str) -> TestServer {
        Self::start_inner(docker_host, aetherium_gateway::DEFAULT_MAX_UPLOAD_BYTES).await
    }

    /// A second installation on this host (its own data dir) that uses the same
    /// worker id as another: what two `aetherium up` with default settings do.
    pub async fn start_with_worker_id(worker_id: &str) -> TestServer {
        let mut server = Self::start_inner(
            "unix:///var/run/docker.sock",
            aetherium_gateway::DEFAULT_MAX_UPLOAD_BYTES,
        )
        .await;
        server.shutdown().await;
        server.worker_id = worker_id.to_string();
        server.boot().await;
        server
    }

    async fn start_inner(docker_host: &str, max_upload_bytes: u64) -> TestServer {
        let data_dir = tempfile::Builder::new().prefix("aeth-").tempdir().unwrap();
        let worker_id = format!("test-{}", &random_hex()[..12]);
        let mut server = TestServer {
            url: String::new(),
            http: reqwest::Client::new(),
            data_dir,
            worker_id,
            docker_host: docker_host.to_string(),
            max_upload_bytes,
            tweak: None,
            runtime: None,
            stop: None,
            server: None,
        };
        server.boot().await;
        server
    }

    async fn boot(&mut self) {
        let mut config = config_for(self.data_dir.path(), &self.worker_id, &self.docker_host);
        if let Some(tweak) = &self.tweak {
            tweak(&mut config);
        }
        let runtime = EmbeddedRuntime::start(&config).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        self.url = format!("http://{}", listener.local_addr().unwrap());
        // TOKEN becomes the bootstrap admin key on the first boot.
        runtime.auth.bootstrap_admin_key(Some(TOKEN)).await.unwrap();
        let mut state =
            AppState::from_config(runtime.platform.clone(), runtime.auth.clone(), &config);
        // Tests poll quickly; rate limits are tested with keys that carry their own.
        state.rate_limit_per_second = 0.0;
        state.max_upload_bytes = self.max_upload_bytes;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        self.server = Some(tokio::spawn(async move {
            aetherium_gateway::serve(listener, state, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        }));
        self.stop = Some(stop);
        self.runtime = Some(runtime);
    }

    /// A server whose config `tweak` changes (CORS, timeouts, …).
    pub async fn start_with_config(tweak: fn(&mut Config)) -> TestServer {
        Self::start_with(tweak).await
    }

    /// Like [`TestServer::start_with_config`], with a tweak that may capture values.
    pub async fn start_with(tweak: impl Fn(&mut Config) + Send + Sync + 'static) -> TestServer {
        let mut server = Self::start().await;
        server.tweak = Some(std::sync::Arc::new(tweak));
        server.restart().await;
        server
    }

    /// API keys, users, sessions and audit log behind the API.
    pub fn auth(&self) -> aetherium_core::auth::Auth {
        self.runtime.as_ref().unwrap().auth.clone()
    }

    /// Creates an API key with `role` (as the admin) and returns its secret.
    pub async fn create_key(&self, role: &str) -> String {
        let (status, body) = self
            .post(
                "/api-keys",
                serde_json::json!({"name": format!("test-{role}"), "role": role}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["key"].as_str().unwrap().to_string()
    }

    /// A request with another credential than the admin key.
    pub async fn call_as(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, json)
    }

    /// A server whose uploads may be at most `limit` bytes.
    pub async fn start_with_upload_limit(limit: u64) -> TestServer {
        Self::start_inner("unix:///var/run/docker.sock", limit).await
    }

    /// Stops the API and the worker (sandboxes keep running), then starts both again
    /// on the same data dir and worker id: what `aetherium up` does after a restart.
    pub async fn restart(&mut self) {
        self.shutdown().await;
        self.boot().await;
    }

    pub async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown().await;
        }
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}/api/v1{path}", self.url))
            .bearer_auth(TOKEN)
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.request(method, path);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, json)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::DELETE, path, None).await
    }

    /// Creates a VM and waits until it runs; returns its id.
    pub async fn running_vm(&self, name: &str) -> String {
        let (status, body) = self
            .post("/vms?wait=90s", serde_json::json!({"name": name}))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["vm"]["status"], "RUNNING", "{body}");
        body["vm_id"].as_str().unwrap().to_string()
    }

    /// Polls GET /vms/{id} until `done` holds (at most `secs`).
    pub async fn wait_vm(
        &self,
        id: &str,
        secs: u64,
        done: impl Fn(u16, &Value) -> bool,
    ) -> (u16, Value) {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let (status, body) = self.get(&format!("/vms/{id}")).await;
            if done(status, &body) || std::time::Instant::now() > deadline {
                return (status, body);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The platform behind the API, for tests that stage states no request can make.
    pub fn platform(&self) -> aetherium_core::Platform {
        self.runtime.as_ref().unwrap().platform.clone()
    }

    /// Container ids carrying this test's worker label.
    pub fn containers(&self) -> Vec<String> {
        docker_ids(&[
            "--filter",
            &format!("label=io.aetherium.worker_id={}", self.worker_id),
        ])
    }
}

/// Every rule of the filter table, as `iptables -S` lists them.
/// The `filter` and `nat` tables' rules, as `iptables -S` lists them.
pub fn iptables_rules() -> String {
    ["filter", "nat"]
        .iter()
        .map(|table| {
            let out = std::process::Command::new("iptables")
                .args(["-w", "-t", table, "-S"])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
        .collect()
}

pub fn docker(args: &[&str]) -> std::process::Output {
    std::process::Command::new("docker")
        .args(args)
        .output()
        .unwrap()
}

pub fn docker_ids(filters: &[&str]) -> Vec<String> {
    let mut args = vec!["ps", "-aq", "--no-trunc"];
    args.extend_from_slice(filters);
    String::from_utf8_lossy(&docker(&args).stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

pub fn container_of(vm_id: &str) -> String {
    format!("aetherium-{vm_id}")
}

/// `prefix-` and 8 random hex digits: a name no parallel test uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &random_hex()[..8])
}

/// Runs `script` with `sh -c` in `vm` through the queued API (at most `timeout_seconds`),
/// waiting for it; returns the execution.
pub async fn sh_in(server: &TestServer, vm: &str, script: &str, timeout_seconds: u64) -> Value {
    let (status, body) = server
        .post(
            &format!("/vms/{vm}/execute?wait=120s"),
            serde_json::json!({"command": "sh", "args": ["-c", script], "timeout_seconds": timeout_seconds}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["execution"].clone()
}

pub fn random_hex() -> String {
    let mut buf = [0u8; 16];
    let mut f = std::fs::File::open("/dev/urandom").unwrap();
    std::io::Read::read_exact(&mut f, &mut buf).unwrap();
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // Remove, by id, whatever this test's worker left behind.
        let containers = self.containers();
        aetherium_testkit::remove_sandbox_rules(&containers);
        for id in containers {
            let _ = docker(&["rm", "-f", &id]);
        }
        aetherium_testkit::unmount_below(self.data_dir.path());
    }
}
