//! `aetherium worker …` and `aetherium cluster` against a real `aetherium up`.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};

use aetherium_testkit::{random_hex, static_agent_bin};

const BIN: &str = env!("CARGO_BIN_EXE_aetherium");

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// `aetherium up` on a free port, stopped by its pid when dropped.
struct Up {
    child: Child,
    url: String,
    token: String,
}

impl Up {
    fn start(data_dir: &std::path::Path, worker_id: &str) -> Up {
        let mut child = Command::new(BIN)
            .args(["up", "--port", "0", "--data-dir"])
            .arg(data_dir)
            .env("AETHERIUM_AGENT_PATH", static_agent_bin())
            // Docker only: no QEMU probe, no bridge (tests/microvm.rs covers those).
            .env("AETHERIUM_BACKENDS", "docker")
            .env("AETHERIUM_WORKER_ID", worker_id)
            .env("AETHERIUM_WORKER_ZONE", "zone-cli")
            .env("AETHERIUM_HEARTBEAT_INTERVAL_SECONDS", "1")
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
        std::thread::spawn(move || for _ in lines {});
        let token = std::fs::read_to_string(data_dir.join("admin-token"))
            .unwrap()
            .trim()
            .to_string();
        Up { child, url, token }
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("AETHERIUM_URL", &self.url)
            .env("AETHERIUM_TOKEN", &self.token)
            .output()
            .unwrap()
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let _ = self.child.wait();
    }
}

#[test]
fn worker_ls_get_drain_activate_and_cluster() {
    let data = tempfile::tempdir().unwrap();
    let worker_id = format!("cli-w-{}", random_hex());
    let up = Up::start(data.path(), &worker_id);

    let out = up.cli(&["worker", "ls"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(table.starts_with("ID"), "{table}");
    assert!(
        table.contains(&worker_id) && table.contains("active") && table.contains("zone-cli"),
        "{table}"
    );

    let out = up.cli(&["worker", "ls", "--zone", "elsewhere", "-o", "json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list["total"], 0, "{list}");

    let out = up.cli(&["worker", "drain", &worker_id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("draining"),
        "{}",
        text(&out.stdout)
    );
    let out = up.cli(&["worker", "get", &worker_id, "-o", "json"]);
    let w: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(w["status"], "draining", "{w}");

    // No sandbox can be placed while the only worker drains: the error says why.
    let out = up.cli(&["vm", "create", "--no-wait"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains(&worker_id) && err.contains("draining"),
        "{err}"
    );

    let out = up.cli(&["worker", "activate", &worker_id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("active"),
        "{}",
        text(&out.stdout)
    );

    let out = up.cli(&["cluster"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let summary = text(&out.stdout);
    assert!(
        summary.contains("workers: 1 (1 active") && summary.contains("zone-cli"),
        "{summary}"
    );
    let out = up.cli(&["cluster", "-o", "json"]);
    let both: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(both["stats"]["workers"]["total"], 1, "{both}");
    assert_eq!(
        both["distribution"]["workers"][0]["worker_id"],
        worker_id.as_str()
    );

    let out = up.cli(&["worker", "get", "nope"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("404"), "{}", text(&out.stderr));
}
