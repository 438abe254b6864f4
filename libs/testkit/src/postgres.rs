//! A throw-away PostgreSQL server (initdb + postgres on a free port).
//!
//! The binaries come from `$AETHERIUM_PG_BINDIR`, else `pg_config --bindir`, else the
//! newest `/usr/lib/postgresql/*/bin` (Debian's `postgresql` package, which
//! `scripts/lib.sh` installs). PostgreSQL refuses to run as root: when the tests run
//! as root (CI does), the data directory is handed to the `postgres` system user
//! (else `nobody`) and `initdb`/`postgres` run under that uid; otherwise they run as
//! the current user.
//!
//! The server is tuned for speed, not for surviving the host (`fsync=off`, no
//! full-page writes) — it does keep what it acknowledged when killed (commits stay
//! synchronous),
//! listens on 127.0.0.1 only, and trusts every local connection (user `postgres`, no
//! password). Starting one takes about a second (most of it `initdb`) and 30 MB of
//! disk. A test process killed outright (timeout, Ctrl-C) never runs `Drop`, so a
//! small watchdog shell per server removes what it leaves behind.

use std::io;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The database every [`TempPostgres`] creates, and the role it connects as.
pub const DATABASE: &str = "aetherium";
const USER: &str = "postgres";

/// A PostgreSQL server of its own, in a temp dir, on a free loopback port. Dropping
/// it stops the server (by pid) and removes the directory.
pub struct TempPostgres {
    dir: tempfile::TempDir,
    bindir: PathBuf,
    port: u16,
    run_as: Option<(u32, u32)>,
    child: Option<Child>,
    watchdog: Option<Child>,
    tls: bool,
}

impl TempPostgres {
    /// initdb, start, wait until it accepts connections, create [`DATABASE`].
    pub fn start() -> io::Result<TempPostgres> {
        let bindir = bindir()?;
        let run_as = if is_root() {
            Some(unprivileged_user()?)
        } else {
            None
        };
        // The server's user must be able to walk down to its directory: a TMPDIR
        // under /root (0700) would not do, /tmp does.
        let mut parent = std::env::temp_dir();
        if run_as.is_some() && !world_traversable(&parent) {
            parent = PathBuf::from("/tmp");
        }
        let dir = tempfile::Builder::new()
            .prefix("aetherium-pg-")
            .tempdir_in(parent)?;
        if let Some((uid, gid)) = run_as {
            // The server's user must reach its data dir inside our temp dir.
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
            for sub in ["data", "sock"] {
                let path = dir.path().join(sub);
                std::fs::create_dir(&path)?;
                std::os::unix::fs::chown(&path, Some(uid), Some(gid))?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))?;
            }
        } else {
            std::fs::create_dir(dir.path().join("sock"))?;
        }
        let mut pg = TempPostgres {
            bindir,
            port: 0,
            run_as,
            child: None,
            watchdog: None,
            tls: false,
            dir,
        };
        let out = pg
            .command("initdb")
            .args([
                "-A",
                "trust",
                "-U",
                USER,
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ])
            // 1 MiB WAL segments: a data dir of 28 MB instead of 40.
            .args(["--locale=C", "--wal-segsize=1"])
            .arg("-D")
            .arg(pg.data_dir())
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "initdb failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        // A free port: bind :0, read it, let go. Another process could take it in
        // between; `spawn_server` then fails and we try another.
        pg.watchdog = Some(pg.spawn_watchdog()?);
        let mut last_err = None;
        for _ in 0..5 {
            pg.port = free_port()?;
            match pg.spawn_server() {
                Ok(()) => {
                    pg.create_database()?;
                    return Ok(pg);
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("postgres did not start")))
    }

    /// `postgres://postgres@127.0.0.1:<port>/aetherium`
    pub fn url(&self) -> String {
        self.url_for(DATABASE)
    }

    /// The URL of another database on this server (see [`TempPostgres::create_db`]).
    pub fn url_for(&self, database: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{database}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The temp dir holding the data, the socket and `postgres.log`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Creates another empty database on this server and returns its URL: tests that
    /// need a fresh database share one server.
    pub fn create_db(&self, name: &str) -> io::Result<String> {
        self.psql(&format!("CREATE DATABASE \"{name}\""))?;
        Ok(self.url_for(name))
    }

    /// Stops the server (fast shutdown: clients are disconnected) and waits for it
    /// to exit. The data stays; [`TempPostgres::restart`] brings it back.
    pub fn stop(&mut self) -> io::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        signal(child.id(), "INT");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(io::Error::other("postgres did not stop in 20 s; killed"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server with SIGKILL, as a crash or the OOM killer would: no
    /// shutdown checkpoint, crash recovery at the next start. The data stays.
    pub fn kill_hard(&mut self) -> io::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// Starts the server again on the same port with the same data.
    pub fn restart(&mut self) -> io::Result<()> {
        self.stop()?;
        // Another test may grab the port while it is free; it usually lets go soon.
        let mut attempt = 0;
        loop {
            match self.spawn_server() {
                Ok(()) => return Ok(()),
                Err(e) if attempt >= 20 => return Err(e),
                Err(_) => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(250));
                }
            }
        }
    }

    /// Restarts the server with TLS on (`ssl=on`) serving `cert_pem`/`key_pem`;
    /// plain connections stay allowed, so a client's `sslmode` decides.
    pub fn enable_tls(&mut self, cert_pem: &str, key_pem: &str) -> io::Result<()> {
        for (name, pem) in [("server.crt", cert_pem), ("server.key", key_pem)] {
            let path = self.data_dir().join(name);
            std::fs::write(&path, pem)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            if let Some((uid, gid)) = self.run_as {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid))?;
            }
        }
        self.tls = true;
        self.restart()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bindir.join(program));
        // A locale that may not exist on the host must not stop initdb.
        cmd.env("LC_ALL", "C").env_remove("PGDATA");
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid); // std also drops root's supplementary groups
            cmd.current_dir(self.dir.path());
        }
        cmd
    }

    fn spawn_server(&mut self) -> io::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("postgres.log"))?;
        let mut child = self
            .command("postgres")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(self.socket_dir())
            .args(["-c", "listen_addresses=127.0.0.1"])
            // Commits stay synchronous: a commit is acknowledged only once its WAL is
            // written to the OS, so a server SIGKILLed (`kill_hard`, the fault drills)
            // keeps every write it acknowledged, as a real one does. (With it off,
            // acknowledged commits still in shared memory died with the server and
            // the drills saw writes vanish.) Without fsync, that costs little.
            .args(["-c", "fsync=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=200"])
            .args(["-c", "shared_buffers=16MB", "-c", "logging_collector=off"])
            .args(if self.tls {
                &["-c", "ssl=on"][..]
            } else {
                &[][..]
            })
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait()? {
                return Err(io::Error::other(format!(
                    "postgres exited at start ({status}): {}",
                    self.log_tail()
                )));
            }
            // Through our own socket dir: on TCP, a server of another test that took
            // this port first could answer in our place.
            let ready = self
                .command("pg_isready")
                .args(["-q", "-p", &self.port.to_string(), "-h"])
                .arg(self.socket_dir())
                .args(["-U", USER, "-d", "postgres"])
                .stdin(Stdio::null())
                .status()?;
            if ready.success() {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(io::Error::other(format!(
                    "postgres not ready in 30 s: {}",
                    self.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// A test process killed outright (a timeout, Ctrl-C) never runs `Drop`; this
    /// shell loop notices that its parent is gone and then stops the server (the pid
    /// in `postmaster.pid`, so restarts are covered) and removes the directory. It
    /// exits by itself once the directory is gone, and `Drop` ends it by pid.
    fn spawn_watchdog(&self) -> io::Result<Child> {
        let script = r#"
            while kill -0 "$1" 2>/dev/null && [ -d "$2" ]; do sleep 1; done
            if [ -d "$2" ]; then
                pid=$(head -n 1 "$2/data/postmaster.pid" 2>/dev/null)
                [ -n "$pid" ] && kill -QUIT "$pid" 2>/dev/null
                sleep 2
                rm -rf "$2"
            fi
        "#;
        Command::new("sh")
            .args(["-c", script, "aetherium-pg-watchdog"])
            .arg(std::process::id().to_string())
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
    }

    fn create_database(&self) -> io::Result<()> {
        self.psql(&format!("CREATE DATABASE {DATABASE}"))
    }

    fn psql(&self, sql: &str) -> io::Result<()> {
        let out = self
            .command("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.socket_dir())
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                USER,
                "-d",
                "postgres",
                "-c",
                sql,
            ])
            .stdin(Stdio::null())
            .output()?;
        if out.status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "psql {sql:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )))
        }
    }

    fn log_tail(&self) -> String {
        let text =
            std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default();
        let start = text.len().saturating_sub(2000);
        text.get(start..).unwrap_or_default().to_string()
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        // Immediate shutdown (SIGQUIT): no checkpoint, but the postmaster still ends
        // its backends and releases its shared memory. SIGKILL only as a last resort.
        if let Some(mut child) = self.child.take() {
            signal(child.id(), "QUIT");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if matches!(child.try_wait(), Ok(Some(_)) | Err(_)) {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        // The temp dir goes when `self.dir` drops, right after this.
    }
}

/// Sends `SIG<name>` to `pid` (with kill(1): this workspace has no unsafe code).
fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn has_initdb(dir: &Path) -> bool {
    dir.join("initdb").is_file() && dir.join("postgres").is_file()
}

/// Where PostgreSQL's server binaries are (see the module docs).
pub fn bindir() -> io::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("AETHERIUM_PG_BINDIR") {
        let dir = PathBuf::from(dir);
        return if has_initdb(&dir) {
            Ok(dir)
        } else {
            Err(io::Error::other(format!(
                "AETHERIUM_PG_BINDIR={} has no initdb/postgres",
                dir.display()
            )))
        };
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_initdb(&dir) {
            return Ok(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            has_initdb(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).ok_or_else(|| {
        io::Error::other(
            "PostgreSQL server binaries not found: install Debian's `postgresql` package \
             (scripts/lib.sh does) or set AETHERIUM_PG_BINDIR",
        )
    })
}

/// Whether every directory from `/` down to `dir` lets others through (`o+x`).
fn world_traversable(dir: &Path) -> bool {
    dir.ancestors()
        .all(|d| std::fs::metadata(d).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
}

fn is_root() -> bool {
    // The effective uid: the second field of `Uid:` in /proc/self/status.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("Uid:"))?;
            line.split_whitespace().nth(2)?.parse::<u32>().ok()
        })
        .is_some_and(|euid| euid == 0)
}

/// The uid/gid to run PostgreSQL as when we are root: `postgres`, else `nobody`.
fn unprivileged_user() -> io::Result<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    for name in ["postgres", "nobody"] {
        for line in passwd.lines() {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() >= 4
                && fields[0] == name
                && let (Ok(uid), Ok(gid)) = (fields[2].parse(), fields[3].parse())
            {
                return Ok((uid, gid));
            }
        }
    }
    Err(io::Error::other(
        "running as root, and neither a `postgres` nor a `nobody` user exists to run PostgreSQL",
    ))
}
