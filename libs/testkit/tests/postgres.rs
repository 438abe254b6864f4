//! TempPostgres starts, answers, restarts on the same port, and goes away.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Instant;

use aetherium_testkit::postgres::TempPostgres;

fn psql(pg: &TempPostgres, sql: &str) -> std::process::Output {
    let bindir = aetherium_testkit::postgres::bindir().unwrap();
    Command::new(bindir.join("psql"))
        .args(["-X", "-A", "-t", "-d", &pg.url(), "-c", sql])
        .output()
        .unwrap()
}

#[test]
fn starts_restarts_and_cleans_up() {
    let t0 = Instant::now();
    let mut pg = TempPostgres::start().unwrap();
    eprintln!("TempPostgres::start took {:?}", t0.elapsed());
    let out = psql(&pg, "SELECT 40 + 2");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42", "{out:?}");
    psql(&pg, "CREATE TABLE t (x int); INSERT INTO t VALUES (7)");

    let port = pg.port();
    let pid = pg.pid().unwrap();
    pg.stop().unwrap();
    assert!(!psql(&pg, "SELECT 1").status.success());
    let t0 = Instant::now();
    pg.restart().unwrap();
    eprintln!("TempPostgres::restart took {:?}", t0.elapsed());
    assert_eq!(pg.port(), port);
    assert_ne!(pg.pid(), Some(pid));
    let out = psql(&pg, "SELECT x FROM t");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "7", "{out:?}");

    let other = pg.create_db("second").unwrap();
    assert!(other.ends_with("/second"));

    let pid = pg.pid().unwrap();
    drop(pg);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
}

/// A test process killed outright leaves no server and no directory behind: the
/// watchdog cleans up. The test re-runs itself as the victim.
#[test]
fn a_killed_test_process_leaves_nothing_behind() {
    use std::io::BufRead as _;
    if std::env::var_os("AETHERIUM_TESTKIT_VICTIM").is_some() {
        let pg = TempPostgres::start().unwrap();
        println!("{} {}", pg.pid().unwrap(), pg.dir().display());
        std::thread::sleep(std::time::Duration::from_secs(120));
        return;
    }
    let mut victim = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_killed_test_process_leaves_nothing_behind",
            "--nocapture",
        ])
        .env("AETHERIUM_TESTKIT_VICTIM", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut out = std::io::BufReader::new(victim.stdout.take().unwrap());
    while !line.contains(' ') || line.starts_with("running") || line.trim().is_empty() {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "the victim said nothing"
        );
    }
    let (pid, dir) = line.trim().split_once(' ').unwrap();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    victim.kill().unwrap(); // SIGKILL: no Drop runs
    victim.wait().unwrap();
    let deadline = Instant::now() + std::time::Duration::from_secs(20);
    while std::path::Path::new(dir).exists()
        || std::path::Path::new(&format!("/proc/{pid}")).exists()
    {
        assert!(
            Instant::now() < deadline,
            "server {pid} or {dir} still there"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
