//! The AF_VSOCK listener binds where a microVM's host can reach it. A full round trip
//! needs a guest and its VMM (the microVM backends' tests); here we check that the
//! agent binds, serves on, and refuses a port another listener holds.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_aetherium-agent");

fn free_port_guess() -> u32 {
    20_000 + std::process::id() % 40_000
}

#[test]
fn binds_a_vsock_port_and_refuses_a_taken_one() {
    if !std::path::Path::new("/dev/vsock").exists() {
        // No vsock support in this kernel at all: nothing to bind.
        eprintln!("skipped: /dev/vsock is missing");
        return;
    }
    let port = free_port_guess();
    let mut first = Command::new(BIN)
        .args(["--listen", &format!("vsock:{port}")])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn agent");
    let stderr = first.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let line = lines.next().expect("a log line").expect("utf-8");
    assert!(
        line.contains(&format!("listening on vsock:{port}")),
        "{line}"
    );

    let second = Command::new(BIN)
        .args(["--listen", &format!("vsock:{port}")])
        .output()
        .expect("spawn second agent");
    assert!(
        !second.status.success(),
        "a second listener on the same port"
    );
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("ddress"),
        "{second:?}"
    );

    std::thread::sleep(Duration::from_millis(100));
    assert!(
        first.try_wait().expect("try_wait").is_none(),
        "the agent exited"
    );
    let _ = first.kill();
    let _ = first.wait();
}

#[test]
fn rejects_a_bad_vsock_port() {
    let out = Command::new(BIN)
        .args(["--listen", "vsock:lots"])
        .output()
        .expect("spawn agent");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("vsock"),
        "{out:?}"
    );
}
