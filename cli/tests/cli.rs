//! The `aetherium` binary end to end: `aetherium up` in the background, the client
//! commands against it, a restart, against the real Docker engine.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_aetherium");

fn agent_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("AETHERIUM_AGENT_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("agent/aetherium-agent")
}

fn random_hex() -> String {
    let mut buf = [0u8; 6];
    let mut f = std::fs::File::open("/dev/urandom").unwrap();
    std::io::Read::read_exact(&mut f, &mut buf).unwrap();
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

struct Up {
    child: Child,
    url: String,
    data_dir: PathBuf,
}

impl Up {
    fn start(data_dir: &Path, worker_id: &str) -> Up {
        let mut child = Command::new(BIN)
            .args(["up", "--port", "0", "--data-dir"])
            .arg(data_dir)
            .env("AETHERIUM_AGENT_PATH", agent_bin())
            .env("AETHERIUM_WORKER_ID", worker_id)
            .env("AETHERIUM_HEARTBEAT_INTERVAL_SECONDS", "1")
            .env(
                "AETHERIUM_DEFAULT_IMAGE",
                std::env::var("AETHERIUM_TEST_IMAGE")
                    .unwrap_or_else(|_| "aetherium/base:latest".into()),
            )
            .env_remove("AETHERIUM_API_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let url = loop {
            let line = lines
                .next()
                .expect("aetherium up exited before it was up")
                .unwrap();
            if let Some(url) = line.strip_prefix("aetherium is up at ") {
                break url.trim().to_string();
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Up {
            child,
            url,
            data_dir: data_dir.to_path_buf(),
        }
    }

    fn token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("admin-token"))
            .unwrap()
            .trim()
            .to_string()
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("AETHERIUM_URL", &self.url)
            .env("AETHERIUM_TOKEN", self.token())
            .output()
            .unwrap()
    }

    /// SIGTERM by pid (our own child), then wait: a graceful stop.
    fn stop(mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let _ = self.child.wait();
    }
}

fn cleanup(worker_id: &str) {
    let out = Command::new("docker")
        .args(["ps", "-aq", "--filter"])
        .arg(format!("label=io.aetherium.worker_id={worker_id}"))
        .output()
        .unwrap();
    for id in String::from_utf8_lossy(&out.stdout).lines() {
        let _ = Command::new("docker").args(["rm", "-f", id]).output();
    }
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

#[test]
fn up_create_exec_rm_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let worker_id = format!("cli-{}", random_hex());
    let up = Up::start(dir.path(), &worker_id);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // The token is created on first start and readable by its owner only.
        let mode = std::fs::metadata(dir.path().join("admin-token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        let name = format!("cli-{}", random_hex());
        let out = up.cli(&["vm", "create", "--name", &name]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(
            text(&out.stdout).contains("RUNNING"),
            "{}",
            text(&out.stdout)
        );

        // The exit code of `vm exec` is the command's.
        let out = up.cli(&[
            "vm",
            "exec",
            &name,
            "--",
            "sh",
            "-c",
            "echo hi; echo oops >&2; exit 7",
        ]);
        assert_eq!(out.status.code(), Some(7));
        assert_eq!(text(&out.stdout), "hi\n");
        assert_eq!(text(&out.stderr), "oops\n");
        let out = up.cli(&["vm", "exec", &name, "--", "no-such-binary"]);
        assert_eq!(out.status.code(), Some(127), "{}", text(&out.stderr));

        let out = up.cli(&["vm", "ls", "-o", "json"]);
        assert!(out.status.success());
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(list["total"], 1);
        assert_eq!(list["vms"][0]["name"], name.as_str());

        let out = up.cli(&["vm", "executions", &name]);
        assert!(
            text(&out.stdout).contains("no-such-binary"),
            "{}",
            text(&out.stdout)
        );

        let out = up.cli(&["task", "ls", "-o", "json"]);
        let tasks: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let before = tasks["total"].as_u64().unwrap();
        assert_eq!(before, 3);
        let task_id = tasks["tasks"][0]["id"].as_str().unwrap().to_string();
        let out = up.cli(&["task", "get", &task_id]);
        assert!(out.status.success());
        assert!(text(&out.stdout).contains("vm:execute"));

        // A bad request fails with the server's message and a non-zero exit.
        let out = up.cli(&["vm", "create", "--memory", "64", "--no-wait"]);
        assert_eq!(out.status.code(), Some(1));
        assert!(
            text(&out.stderr).contains("memory_mb"),
            "{}",
            text(&out.stderr)
        );
        let out = Command::new(BIN)
            .args(["vm", "ls"])
            .env("AETHERIUM_URL", &up.url)
            .env("AETHERIUM_TOKEN", "not-the-token")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert!(text(&out.stderr).contains("401"), "{}", text(&out.stderr));
        (name, before)
    }));
    let (name, before) = match result {
        Ok(v) => v,
        Err(e) => {
            up.stop();
            cleanup(&worker_id);
            std::panic::resume_unwind(e);
        }
    };

    // Restart: the VM, its tasks and its history are still there.
    up.stop();
    let up = Up::start(dir.path(), &worker_id);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let out = up.cli(&["task", "ls", "-o", "json"]);
        let tasks: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(tasks["total"].as_u64().unwrap(), before);
        let out = up.cli(&["vm", "exec", &name, "--", "echo", "still here"]);
        assert_eq!(text(&out.stdout), "still here\n");
        let out = up.cli(&["vm", "rm", &name]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let out = up.cli(&["vm", "get", &name]);
        assert_eq!(out.status.code(), Some(1));
        assert!(
            text(&out.stderr).contains("not found"),
            "{}",
            text(&out.stderr)
        );
    }));
    up.stop();
    cleanup(&worker_id);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
