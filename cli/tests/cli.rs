//! The `aetherium` binary end to end: `aetherium up` in the background, the client
//! commands against it, a restart, against the real Docker engine.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use aetherium_testkit::{random_hex, static_agent_bin};

const BIN: &str = env!("CARGO_BIN_EXE_aetherium");

struct Up {
    child: Child,
    url: String,
    data_dir: PathBuf,
}

impl Up {
    fn start(data_dir: &Path, worker_id: &str) -> Up {
        Up::start_with_env(data_dir, worker_id, &[])
    }

    fn start_with_env(data_dir: &Path, worker_id: &str, env: &[(&str, &str)]) -> Up {
        let mut child = Command::new(BIN)
            .args(["up", "--port", "0", "--data-dir"])
            .envs(env.iter().copied())
            .arg(data_dir)
            .env("AETHERIUM_AGENT_PATH", static_agent_bin())
            // Docker only: no QEMU probe, no bridge (tests/microvm.rs covers those).
            .env("AETHERIUM_BACKENDS", "docker")
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

fn cleanup(worker_id: &str, data_dir: &std::path::Path) {
    let out = Command::new("docker")
        .args(["ps", "-aq", "--filter"])
        .arg(format!("label=io.aetherium.worker_id={worker_id}"))
        .output()
        .unwrap();
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    aetherium_testkit::remove_sandbox_rules(&ids);
    for id in &ids {
        let _ = Command::new("docker").args(["rm", "-f", id]).output();
    }
    aetherium_testkit::unmount_below(data_dir);
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
        // Only archived (dead) tasks can be retried or deleted; the API says why.
        for (command, verb) in [("retry", "retried"), ("rm", "deleted")] {
            let out = up.cli(&["task", command, &task_id]);
            assert_eq!(out.status.code(), Some(1));
            assert!(
                text(&out.stderr).contains(&format!("only an archived task can be {verb}")),
                "{}",
                text(&out.stderr)
            );
        }

        // A bad request fails with the server's message and a non-zero exit.
        let out = up.cli(&["vm", "create", "--memory", "64", "--no-wait"]);
        assert_eq!(out.status.code(), Some(1));
        assert!(
            text(&out.stderr).contains("memory_mb"),
            "{}",
            text(&out.stderr)
        );
        // --tool reaches the server, which refuses a tool its catalog lacks.
        let out = up.cli(&["vm", "create", "--tool", "no-such-tool", "--no-wait"]);
        assert_eq!(out.status.code(), Some(1));
        assert!(
            text(&out.stderr).contains("no-such-tool"),
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
            cleanup(&worker_id, dir.path());
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
    cleanup(&worker_id, dir.path());
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// Runs `body` against a fresh `aetherium up` with one running VM (its name is the
/// argument), then stops it and removes the sandboxes, whatever happened.
fn with_vm(prefix: &str, body: impl FnOnce(&Up, &str)) {
    let dir = tempfile::tempdir().unwrap();
    let worker_id = format!("{prefix}-{}", random_hex());
    let up = Up::start(dir.path(), &worker_id);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let name = format!("{prefix}-{}", random_hex());
        let out = up.cli(&["vm", "create", "--name", &name]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        body(&up, &name);
    }));
    up.stop();
    cleanup(&worker_id, dir.path());
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

impl Up {
    fn cli_with_stdin(&self, args: &[&str], stdin: &[u8]) -> Output {
        use std::io::Write as _;
        let mut child = Command::new(BIN)
            .args(args)
            .env("AETHERIUM_URL", &self.url)
            .env("AETHERIUM_TOKEN", self.token())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        let stdin = stdin.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = input.write_all(&stdin);
        });
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        out
    }
}

#[test]
fn a_containers_network_policy_is_set_shown_and_cleared() {
    with_vm("net", |up, name| {
        let out = up.cli(&[
            "vm",
            "network",
            name,
            "--egress",
            "deny",
            "--allow",
            "203.0.113.7",
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(
            text(&out.stdout).contains("egress deny, allow [\"203.0.113.7/32\"]"),
            "{}",
            text(&out.stdout)
        );
        let out = up.cli(&["vm", "network", name, "--allow", "not_an_address"]);
        assert!(!out.status.success());
        assert!(
            text(&out.stderr).contains("neither an IPv4 address or CIDR nor a domain name"),
            "{}",
            text(&out.stderr)
        );
        let out = up.cli(&["vm", "network", name]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(
            text(&out.stdout).contains("the network's defaults"),
            "{}",
            text(&out.stdout)
        );
    });
}

#[test]
fn cp_both_ways_and_streamed_exec() {
    with_vm("cp", |up, name| {
        let dir = tempfile::tempdir().unwrap();
        // 3 MiB of varied bytes: more than one chunk each way, not text.
        let data: Vec<u8> = (0..3 * 1024 * 1024u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let local = dir.path().join("blob.bin");
        std::fs::write(&local, &data).unwrap();
        let remote = format!("{name}:/tmp/in/blob.bin");
        let out = up.cli(&["vm", "cp", local.to_str().unwrap(), &remote]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let back = dir.path().join("back.bin");
        let out = up.cli(&["vm", "cp", &remote, back.to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(std::fs::read(&back).unwrap() == data, "the copy differs");

        // Into a directory, the file keeps its name; `-` is stdin and stdout.
        let out = up.cli(&[
            "vm",
            "cp",
            local.to_str().unwrap(),
            &format!("{name}:/tmp/"),
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let out = up.cli(&[
            "vm",
            "exec",
            name,
            "--",
            "stat",
            "-c",
            "%s",
            "/tmp/blob.bin",
        ]);
        assert_eq!(text(&out.stdout).trim(), data.len().to_string());
        let out = up.cli_with_stdin(
            &["vm", "cp", "-", &format!("{name}:/tmp/piped")],
            b"via stdin\n",
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        let out = up.cli(&["vm", "cp", &format!("{name}:/tmp/piped"), "-"]);
        assert_eq!(text(&out.stdout), "via stdin\n");
        let out = up.cli(&[
            "vm",
            "cp",
            &format!("{name}:/tmp/piped"),
            dir.path().to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("piped")).unwrap(),
            "via stdin\n"
        );

        // Failures say why and exit 1.
        let out = up.cli(&["vm", "cp", &format!("{name}:/no/such/file"), "-"]);
        assert_eq!(out.status.code(), Some(1));
        assert!(text(&out.stderr).contains("404"), "{}", text(&out.stderr));
        let out = up.cli(&["vm", "cp", &format!("{name}:relative"), "-"]);
        assert_eq!(out.status.code(), Some(1));
        assert!(
            text(&out.stderr).contains("absolute"),
            "{}",
            text(&out.stderr)
        );

        // `-i` streams stdin to the command and ends it.
        let out = up.cli_with_stdin(&["vm", "exec", "-i", name, "--", "wc", "-l"], b"a\nb\nc\n");
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout).trim(), "3");
        // `--stream`: output as it happens, exit code, stderr apart.
        let out = up.cli(&[
            "vm",
            "exec",
            "--stream",
            name,
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 4",
        ]);
        assert_eq!(out.status.code(), Some(4));
        assert_eq!(text(&out.stdout), "out\n");
        assert_eq!(text(&out.stderr), "err\n");
        // `-t` without a terminal on stdin is refused, as docker does.
        let out = up.cli_with_stdin(&["vm", "exec", "-it", name, "--", "true"], b"");
        assert_eq!(out.status.code(), Some(1));
        assert!(
            text(&out.stderr).contains("not a TTY"),
            "{}",
            text(&out.stderr)
        );
    });
}

/// A pseudo-terminal whose output is collected by a thread.
struct Pty {
    master: std::fs::File,
    slave: std::fs::File,
    output: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Pty {
    fn open(cols: u16, rows: u16) -> Pty {
        use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
        let master =
            openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC).unwrap();
        grantpt(&master).unwrap();
        unlockpt(&master).unwrap();
        let name = ptsname(&master, Vec::new()).unwrap();
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(name.to_str().unwrap())
            .unwrap();
        let master = std::fs::File::from(master);
        let pty = Pty {
            master,
            slave,
            output: Default::default(),
        };
        pty.resize(cols, rows);
        let mut reader = pty.master.try_clone().unwrap();
        let output = pty.output.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = std::io::Read::read(&mut reader, &mut buf) {
                if n == 0 {
                    break;
                }
                output.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        pty
    }

    fn resize(&self, cols: u16, rows: u16) {
        let size = rustix::termios::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        rustix::termios::tcsetwinsize(&self.master, size).unwrap();
    }

    fn type_in(&self, bytes: &[u8]) {
        std::io::Write::write_all(&mut &self.master, bytes).unwrap();
    }

    /// Waits until the output (since `from`) contains `needle`; returns where it ends.
    fn wait_for(&self, needle: &str, from: usize) -> usize {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let out = self.output.lock().unwrap().clone();
            let tail = &out[from.min(out.len())..];
            if let Some(i) = tail
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
            {
                return from + i + needle.len();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no {needle:?} in the terminal after 20s; it shows:\n{}",
                String::from_utf8_lossy(tail)
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

#[test]
fn exec_it_drives_a_remote_shell_through_a_real_terminal() {
    with_vm("tty", |up, name| {
        let pty = Pty::open(80, 24);
        let stdio = || Stdio::from(pty.slave.try_clone().unwrap());
        // setsid -c: a session of its own with the pty as controlling terminal, so
        // that resizing the pty sends the CLI SIGWINCH, as a terminal emulator does.
        let mut child = Command::new("setsid")
            .args([
                "-c",
                "-w",
                BIN,
                "vm",
                "exec",
                "-it",
                name,
                "--",
                "bash",
                "--norc",
                "--noprofile",
            ])
            .env("AETHERIUM_URL", &up.url)
            .env("AETHERIUM_TOKEN", up.token())
            .env("TERM", "xterm")
            .stdin(stdio())
            .stdout(stdio())
            .stderr(stdio())
            .spawn()
            .unwrap();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // The local terminal is raw while the session runs (no local echo, no
            // signals from Ctrl-C): wait until the CLI has switched it.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while rustix::termios::tcgetattr(&pty.slave)
                .unwrap()
                .local_modes
                .contains(rustix::termios::LocalModes::ICANON)
            {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the terminal never went raw"
                );
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            pty.type_in(b"echo hi-$((40+2))\r");
            let at = pty.wait_for("hi-42\r\n", 0);
            pty.type_in(b"stty size\r");
            let at = pty.wait_for("24 80\r\n", at);
            // The window changes: the CLI hears SIGWINCH and resizes the remote terminal.
            pty.resize(100, 30);
            std::thread::sleep(std::time::Duration::from_millis(500));
            pty.type_in(b"stty size\r");
            let at = pty.wait_for("30 100\r\n", at);
            // Ctrl-C reaches the remote foreground process, not the CLI.
            pty.type_in(b"sleep 100\r");
            // Ctrl-C only once `sleep` is the terminal's foreground process.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while !text(
                &up.cli(&["vm", "exec", name, "--", "ps", "-eo", "args"])
                    .stdout,
            )
            .lines()
            .any(|l| l.trim() == "sleep 100")
            {
                assert!(std::time::Instant::now() < deadline, "sleep never ran");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            pty.type_in(b"\x03");
            pty.type_in(b"echo alive-$((1+1))\r");
            pty.wait_for("alive-2\r\n", at);
            pty.type_in(b"exit 3\r");
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            let status = loop {
                if let Some(status) = child.try_wait().unwrap() {
                    break status;
                }
                assert!(std::time::Instant::now() < deadline, "the CLI did not exit");
                std::thread::sleep(std::time::Duration::from_millis(50));
            };
            assert_eq!(status.code(), Some(3));
            // The terminal is back as it was.
            let modes = rustix::termios::tcgetattr(&pty.slave).unwrap().local_modes;
            assert!(modes.contains(rustix::termios::LocalModes::ICANON));
            assert!(modes.contains(rustix::termios::LocalModes::ECHO));
        }));
        let _ = child.kill();
        let _ = child.wait();
        if let Err(e) = result {
            std::panic::resume_unwind(e);
        }
        // The session is in the VM's history.
        let out = up.cli(&["vm", "executions", name, "-o", "json"]);
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let session = list["executions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["command"] == "bash")
            .unwrap();
        assert_eq!(session["metadata"]["mode"], "interactive", "{list}");
        assert_eq!(session["exit_code"], 3);
        assert!(session["stdout"].as_str().unwrap().contains("hi-42"));
    });
}

impl Up {
    /// Starts a long-running client command (e.g. a follow) with stdout piped.
    fn spawn_cli(&self, args: &[&str]) -> Child {
        Command::new(BIN)
            .args(args)
            .env("AETHERIUM_URL", &self.url)
            .env("AETHERIUM_TOKEN", self.token())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }
}

/// Reads JSON lines from a child's stdout (on a thread) until `done` holds for one or
/// 60 s pass; stops the child by its pid and returns what it printed.
fn read_json_lines_until(
    mut child: Child,
    done: impl Fn(&serde_json::Value) -> bool + Send + 'static,
) -> Vec<serde_json::Value> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let value: serde_json::Value = serde_json::from_str(&line).unwrap();
            let stop = done(&value);
            let _ = tx.send(value);
            if stop {
                break;
            }
        }
    });
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while let Ok(value) =
        rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
    {
        got.push(value);
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    got
}

#[test]
fn events_and_logs_follow_the_platform() {
    with_vm("evt", |up, name| {
        let out = up.cli(&["vm", "get", name, "-o", "json"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let vm: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let vm_id = vm["id"].as_str().unwrap().to_string();

        // Everything kept so far, replayed from seq 0, then live: the VM's creation.
        let child = up.spawn_cli(&["events", "--after", "0", "--type", "vm.*", "-o", "json"]);
        let id = vm_id.clone();
        let events = read_json_lines_until(child, move |e| {
            e["type"] == "vm.started" && e["resource_id"] == id.as_str()
        });
        let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(types, vec!["vm.created", "vm.started"], "{events:?}");
        assert!(events[0]["seq"].as_i64().unwrap() < events[1]["seq"].as_i64().unwrap());

        // A command's events, followed from after the VM started (so however late
        // the follower connects, it misses nothing).
        let after = events[1]["seq"].as_i64().unwrap().to_string();
        let child = up.spawn_cli(&[
            "events",
            "--type",
            "execution.*",
            "--after",
            &after,
            "-o",
            "json",
        ]);
        let out = up.cli(&["vm", "exec", name, "--", "true"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let events = read_json_lines_until(child, |e| e["type"] == "execution.completed");
        assert_eq!(
            events.last().map(|e| e["type"].clone()),
            Some(serde_json::json!("execution.completed")),
            "{events:?}"
        );

        // The VM's log records, oldest first, tagged with the VM.
        let out = up.cli(&["logs", "--vm", &vm_id, "-o", "json"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let records: Vec<serde_json::Value> = text(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert!(
            records.iter().any(|r| r["message"] == "task started"),
            "{records:?}"
        );
        assert!(records.iter().all(|r| r["vm_id"] == vm_id.as_str()));
        // By name, as a human reads it.
        let out = up.cli(&["logs", "--vm", name]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(text(&out.stdout).contains("INFO"), "{}", text(&out.stdout));
        assert!(text(&out.stdout).contains("task started"));
    });
}

#[test]
fn task_cancel_stops_a_running_command_and_lists_page() {
    with_vm("cli-cancel", |up, name| {
        let out = up.cli(&["vm", "get", name, "-o", "json"]);
        let vm: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let vm_id = vm["id"].as_str().unwrap().to_string();
        // A command that would run for minutes, run by a second CLI process.
        let exec = Command::new(BIN)
            .args(["vm", "exec", name, "--", "sleep", "299"])
            .env("AETHERIUM_URL", &up.url)
            .env("AETHERIUM_TOKEN", up.token())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let task_id = loop {
            let out = up.cli(&[
                "task",
                "ls",
                "--vm",
                &vm_id,
                "--type",
                "vm:execute",
                "-o",
                "json",
            ]);
            assert!(out.status.success(), "{}", text(&out.stderr));
            let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert!(list["next_cursor"].is_null(), "{list}");
            if let Some(t) = list["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["status"] == "running")
            {
                break t["id"].as_str().unwrap().to_string();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "never running: {list}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        };
        let out = up.cli(&["task", "cancel", &task_id]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(
            text(&out.stdout).contains("cancelled"),
            "{}",
            text(&out.stdout)
        );
        // The waiting `vm exec` ends (the command was killed): not with success.
        let done = exec.wait_with_output().unwrap();
        assert!(!done.status.success(), "{done:?}");
        // Cancelling it again is refused with the API's message.
        let out = up.cli(&["task", "cancel", &task_id]);
        assert!(!out.status.success());
        assert!(
            text(&out.stderr).contains("already cancelled"),
            "{}",
            text(&out.stderr)
        );
        // `task ls` pages: one per page, with a cursor to go on.
        let out = up.cli(&["task", "ls", "--limit", "1", "-o", "json"]);
        let page: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let cursor = page["next_cursor"].as_str().unwrap().to_string();
        let out = up.cli(&[
            "task", "ls", "--limit", "1", "--cursor", &cursor, "-o", "json",
        ]);
        let next: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_ne!(next["tasks"][0]["id"], page["tasks"][0]["id"]);
        // `vm ls` lists every VM (all pages).
        let out = up.cli(&["vm", "ls", "-o", "json"]);
        let vms: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            vms["vms"].as_array().unwrap().len() as u64,
            vms["total"].as_u64().unwrap()
        );
    });
}

/// Runs the CLI with `stdin` fed in, credentials kept in `creds`, and no key or URL
/// from the environment (so that the saved login is what counts).
fn cli_with_creds(creds: &Path, args: &[&str], stdin: &str) -> Output {
    use std::io::Write as _;
    let mut child = Command::new(BIN)
        .args(args)
        .env("AETHERIUM_CREDENTIALS", creds)
        .env_remove("AETHERIUM_URL")
        .env_remove("AETHERIUM_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn login_api_keys_and_users() {
    let dir = tempfile::tempdir().unwrap();
    let worker_id = format!("cli-{}", random_hex());
    let up = Up::start(dir.path(), &worker_id);
    let creds = dir.path().join("home/credentials.json");
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // Log in with the bootstrap admin key from stdin; the file is private.
        let out = cli_with_creds(
            &creds,
            &["login", "--url", &up.url, "--password-stdin"],
            &format!("{}\n", up.token()),
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(
            text(&out.stdout).contains("as bootstrap-admin (admin)"),
            "{}",
            text(&out.stdout)
        );
        let mode = std::fs::metadata(&creds).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        // A viewer key, printed once on stdout.
        let out = cli_with_creds(
            &creds,
            &[
                "apikey",
                "create",
                "--name",
                "ro",
                "--role",
                "viewer",
                "--expires-in",
                "1d",
                "--max-vms",
                "3",
            ],
            "",
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        let viewer_key = text(&out.stdout).trim().to_string();
        assert!(viewer_key.starts_with("ak_"), "{viewer_key}");
        let out = cli_with_creds(&creds, &["apikey", "ls", "-o", "json"], "");
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(
            !text(&out.stdout).contains(&viewer_key),
            "keys are never listed"
        );
        let viewer = list["api_keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["name"] == "ro")
            .unwrap();
        assert_eq!(viewer["role"], "viewer");
        assert_eq!(viewer["quota"], serde_json::json!({"max_vms": 3}));
        let viewer_id = viewer["id"].as_str().unwrap().to_string();
        // An admin changes the quota; no limit given removes it.
        let out = cli_with_creds(
            &creds,
            &["apikey", "quota", &viewer_id, "--max-vcpus", "8"],
            "",
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(
            text(&out.stdout).contains("max_vms=- max_vcpus=8"),
            "{}",
            text(&out.stdout)
        );
        let out = cli_with_creds(&creds, &["apikey", "quota", &viewer_id], "");
        assert!(
            text(&out.stdout).contains("has no quota"),
            "{}",
            text(&out.stdout)
        );

        // The viewer key reads but may not create.
        let as_viewer = |args: &[&str]| {
            Command::new(BIN)
                .args(args)
                .env("AETHERIUM_URL", &up.url)
                .env("AETHERIUM_TOKEN", &viewer_key)
                .env("AETHERIUM_CREDENTIALS", &creds)
                .output()
                .unwrap()
        };
        assert!(as_viewer(&["vm", "ls"]).status.success());
        let out = as_viewer(&["vm", "create", "--no-wait"]);
        assert!(!out.status.success());
        assert!(text(&out.stderr).contains("403"), "{}", text(&out.stderr));
        let out = cli_with_creds(&creds, &["apikey", "revoke", &viewer_id], "");
        assert!(out.status.success(), "{}", text(&out.stderr));
        let out = as_viewer(&["vm", "ls"]);
        assert!(
            text(&out.stderr).contains("revoked"),
            "{}",
            text(&out.stderr)
        );

        // A user, then a login as that user replaces the saved credentials.
        let out = cli_with_creds(
            &creds,
            &[
                "user",
                "create",
                "grace",
                "--role",
                "operator",
                "--password-stdin",
            ],
            "a long enough password\n",
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        let out = cli_with_creds(
            &creds,
            &["login", "--url", &up.url, "-u", "grace", "--password-stdin"],
            "a long enough password\n",
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(
            text(&out.stdout).contains("as grace (operator)"),
            "{}",
            text(&out.stdout)
        );
        assert!(cli_with_creds(&creds, &["vm", "ls"], "").status.success());
        // An operator does not manage users.
        let out = cli_with_creds(&creds, &["user", "ls"], "");
        assert!(text(&out.stderr).contains("403"), "{}", text(&out.stderr));
        let saved = std::fs::read_to_string(&creds).unwrap();
        let out = cli_with_creds(&creds, &["logout"], "");
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(!creds.exists());
        // The session ended on the server too.
        let token: serde_json::Value = serde_json::from_str(&saved).unwrap();
        let out = Command::new(BIN)
            .args(["vm", "ls"])
            .env("AETHERIUM_URL", &up.url)
            .env("AETHERIUM_TOKEN", token["token"].as_str().unwrap())
            .env("AETHERIUM_CREDENTIALS", &creds)
            .output()
            .unwrap();
        assert!(text(&out.stderr).contains("401"), "{}", text(&out.stderr));

        // A wrong password fails clearly and saves nothing.
        let out = cli_with_creds(
            &creds,
            &["login", "--url", &up.url, "-u", "grace", "--password-stdin"],
            "not the password\n",
        );
        assert!(!out.status.success());
        assert!(text(&out.stderr).contains("invalid username or password"));
        assert!(!creds.exists());
    }));
    up.stop();
    cleanup(&worker_id, dir.path());
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn gateway_and_worker_names_run_their_modes() {
    let dir = tempfile::tempdir().unwrap();
    for (name, says) in [
        ("aetherium-gateway", "serve the API"),
        ("aetherium-worker", "run this host's worker"),
    ] {
        let link = dir.path().join(name);
        std::os::unix::fs::symlink(BIN, &link).unwrap();
        let out = Command::new(&link).arg("--help").output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        // The mode's own help, not the program's list of subcommands.
        let help = text(&out.stdout);
        assert!(help.contains(says), "{name}: {help}");
        assert!(!help.contains("Commands:"), "{name}: {help}");
    }
}

#[test]
fn doctor_reports_every_backend_and_why() {
    let data_dir = tempfile::Builder::new()
        .prefix("aeth-doc-")
        .tempdir()
        .unwrap();
    let out = Command::new(BIN)
        .args(["doctor", "-o", "json", "--data-dir"])
        .arg(data_dir.path())
        .env("AETHERIUM_AGENT_PATH", static_agent_bin())
        // An image store with nothing built: the VM image check must fail and say how.
        .env("AETHERIUM_IMAGES_DIR", data_dir.path().join("images"))
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)));
    // The default backend (docker) works here: exit code 0.
    assert_eq!(out.status.code(), Some(0), "{report}");
    let section = |name: &str| {
        report["sections"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["backend"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} section: {report}"))
    };
    assert_eq!(section("docker")["usable"], true, "{report}");
    let images = section("guest images");
    assert_eq!(images["usable"], false, "{report}");
    let image_check = images["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"].as_str().unwrap().starts_with("VM image"))
        .unwrap()
        .clone();
    assert_eq!(image_check["ok"], false);
    assert!(
        image_check["detail"]
            .as_str()
            .unwrap()
            .contains("aetherium image build"),
        "{image_check}"
    );
    // QEMU itself runs here (TCG); without an image it cannot boot a sandbox yet.
    let qemu = section("qemu");
    let tcg = qemu["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"].as_str().unwrap().starts_with("TCG"))
        .unwrap()
        .clone();
    assert_eq!(tcg["ok"], true, "{qemu}");
    assert_eq!(qemu["usable"], false, "{qemu}");
    // Firecracker's guest boot is not even tried without a kernel to boot.
    let fc = section("firecracker");
    assert_eq!(fc["usable"], false, "{fc}");
    assert!(fc.to_string().contains("not tried"), "{fc}");
}

#[test]
fn environments_and_secrets_from_the_cli() {
    let data_dir = tempfile::Builder::new()
        .prefix("aeth-env-")
        .tempdir()
        .unwrap();
    let worker_id = format!("cli-env-{}", random_hex());
    let up = Up::start(data_dir.path(), &worker_id);
    let name = format!("env-{}", random_hex());

    let out = up.cli(&[
        "env",
        "create",
        &name,
        "--tool",
        "git",
        "--tool",
        "nodejs@20.11.1",
        "-e",
        "A=1",
        "--repo",
        "https://example.com/acme/app.git",
        "--idle-timeout",
        "600",
        "-o",
        "json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        created["tools"],
        serde_json::json!(["git", "nodejs@20.11.1"])
    );
    assert_eq!(created["env_vars"]["A"], "1");
    let out = up.cli(&["env", "ls"]);
    assert!(text(&out.stdout).contains(&name), "{}", text(&out.stdout));
    let out = up.cli(&["env", "get", &name]);
    assert!(text(&out.stdout).contains("https://example.com/acme/app.git"));
    // Bad input: the API's message, a non-zero exit.
    let out = up.cli(&["env", "create", &name]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("already exists"),
        "{}",
        text(&out.stderr)
    );
    let out = up.cli(&["env", "create", "bad-env", "-e", "NOEQUALS"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("KEY=VALUE"),
        "{}",
        text(&out.stderr)
    );

    // A secret's value goes in through stdin and never comes back out.
    let value = format!("ghp_{}", random_hex());
    let mut child = Command::new(BIN)
        .args(["secret", "set", "GITHUB_TOKEN", "--type", "token"])
        .env("AETHERIUM_URL", &up.url)
        .env("AETHERIUM_TOKEN", up.token())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        &mut child.stdin.take().unwrap(),
        format!("{value}\n").as_bytes(),
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!text(&out.stdout).contains(&value));
    let out = up.cli(&["secret", "ls", "-o", "json"]);
    let listed = text(&out.stdout);
    assert!(
        listed.contains("GITHUB_TOKEN") && !listed.contains(&value),
        "{listed}"
    );
    let list: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let id = list["secrets"][0]["id"].as_str().unwrap().to_string();
    let out = up.cli(&["secret", "rm", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = up.cli(&["env", "rm", &name]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    up.stop();
    cleanup(&worker_id, data_dir.path());
}

/// `aetherium up` SIGKILLed while a queued command runs, then started again: the
/// sandbox is adopted, the interrupted execution ends failed (it may have had
/// effects, so it is not run again) instead of staying `running`, and the API works.
#[test]
fn sigkill_of_up_mid_command_ends_the_execution_and_keeps_the_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    let worker_id = format!("cli-{}", random_hex());
    // A short lease: the killed process's task comes back within seconds.
    let env = [("AETHERIUM_QUEUE_LEASE_SECONDS", "5")];
    let mut up = Up::start_with_env(dir.path(), &worker_id, &env);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let name = format!("kill-{}", random_hex());
        let out = up.cli(&["vm", "create", "--name", &name]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let mut exec = up.spawn_cli(&[
            "vm",
            "exec",
            &name,
            "--",
            "sh",
            "-c",
            "echo start >> /tmp/runs; sleep 4; echo end >> /tmp/runs",
        ]);
        // Until the command runs in the sandbox.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let out = up.cli(&["vm", "executions", &name, "-o", "json"]);
            let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            if list["executions"][0]["status"] == "running" {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "never ran: {list}");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        up.child.kill().unwrap(); // SIGKILL
        up.child.wait().unwrap();
        let _ = exec.kill();
        let _ = exec.wait();

        let again = Up::start_with_env(dir.path(), &worker_id, &env);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let execution = loop {
            let out = again.cli(&["vm", "executions", &name, "-o", "json"]);
            let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            let e = list["executions"][0].clone();
            if e["status"] != "running" && e["status"] != "pending" && !e.is_null() {
                break e;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "still unfinished: {list}"
            );
            std::thread::sleep(std::time::Duration::from_millis(250));
        };
        assert_eq!(execution["status"], "failed", "{execution}");
        assert!(
            execution["error"]
                .as_str()
                .unwrap_or_default()
                .contains("not run again"),
            "{execution}"
        );
        // The sandbox was adopted and the command ran exactly once.
        let out = again.cli(&[
            "vm",
            "exec",
            &name,
            "--",
            "sh",
            "-c",
            "sleep 4; cat /tmp/runs",
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(
            text(&out.stdout).matches("start").count(),
            1,
            "{}",
            text(&out.stdout)
        );
        again.stop();
    }));
    cleanup(&worker_id, dir.path());
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
