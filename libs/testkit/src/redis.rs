//! A throw-away Redis server (redis-server on a free port, no persistence unless asked).
//!
//! ```no_run
//! let redis = aetherium_testkit::redis::TempRedis::start().expect("redis-server");
//! let url = redis.url(); // redis://127.0.0.1:<port>/
//! ```
//!
//! Each server lives in its own temp dir and listens on loopback only. It is killed
//! by its pid when stopped or dropped (never by name), so tests can run in parallel.
//! With [`TempRedis::start_persistent`] it keeps an append-only file fsynced on every
//! write (`appendfsync always`), so a [`TempRedis::restart`] — or a kill, which is
//! what [`TempRedis::stop`] does — loses nothing that was acknowledged.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a starting server may take to answer `PING` with `PONG`.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A redis-server child process on `127.0.0.1:<port>`.
pub struct TempRedis {
    dir: tempfile::TempDir,
    port: u16,
    persistent: bool,
    child: Option<Child>,
    tls: Option<(RedisTlsFiles, u16)>,
}

/// PEM files for a server that also listens with TLS ([`TempRedis::start_tls`]).
#[derive(Debug, Clone)]
pub struct RedisTlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA that clients' certificates must chain to.
    pub ca: PathBuf,
    /// Whether a client must show a certificate (`tls-auth-clients yes`).
    pub require_client_cert: bool,
}

impl TempRedis {
    /// Starts a server with no persistence at all (no RDB snapshots, no AOF).
    pub fn start() -> io::Result<TempRedis> {
        Self::start_with(false)
    }

    /// Starts a server that keeps an append-only file fsynced on every write, so
    /// that its data survives [`TempRedis::restart`] (and a kill).
    pub fn start_persistent() -> io::Result<TempRedis> {
        Self::start_with(true)
    }

    /// Starts a server that listens with TLS on a port of its own too
    /// ([`TempRedis::tls_url`]); the plain port stays, for readiness checks and
    /// `redis-cli`. `persistent` as with [`TempRedis::start_persistent`].
    pub fn start_tls(files: RedisTlsFiles, persistent: bool) -> io::Result<TempRedis> {
        Self::start_with_tls(persistent, Some(files))
    }

    fn start_with(persistent: bool) -> io::Result<TempRedis> {
        Self::start_with_tls(persistent, None)
    }

    fn start_with_tls(persistent: bool, tls: Option<RedisTlsFiles>) -> io::Result<TempRedis> {
        let mut last_error = None;
        // A free port may be taken by someone else between finding and binding it:
        // try a few.
        for _ in 0..5 {
            let port = free_port()?;
            let mut redis = TempRedis {
                dir: tempfile::Builder::new()
                    .prefix("aetherium-redis-")
                    .tempdir()?,
                port,
                persistent,
                child: None,
                tls: match &tls {
                    Some(files) => Some((files.clone(), free_port()?)),
                    None => None,
                },
            };
            match redis.spawn() {
                Ok(()) => return Ok(redis),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("redis-server did not start")))
    }

    /// `redis://127.0.0.1:<port>/`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `rediss://localhost:<tls port>/` of a server started with
    /// [`TempRedis::start_tls`] (`localhost`: the name its certificate should carry).
    pub fn tls_url(&self) -> Option<String> {
        self.tls
            .as_ref()
            .map(|(_, port)| format!("rediss://localhost:{port}/"))
    }

    /// The server's directory (its log is `redis.log`; the AOF lives here too).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn is_persistent(&self) -> bool {
        self.persistent
    }

    /// The server's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kills the server (by pid, SIGKILL: like a crash) and waits for it. Without
    /// persistence its data is gone; with it, everything acknowledged is in the AOF.
    /// The port stays reserved for [`TempRedis::restart`] only by convention.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server if it runs and starts it again on the same port and dir
    /// (with persistence on, with the same data).
    pub fn restart(&mut self) -> io::Result<()> {
        self.stop();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match self.spawn() {
                Ok(()) => return Ok(()),
                // The port may linger or be taken for a moment: try again.
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn spawn(&mut self) -> io::Result<()> {
        let dir = self.dir.path().to_path_buf();
        let log = dir.join("redis.log");
        let mut cmd = Command::new(redis_server_binary());
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&dir)
            .arg("--logfile")
            .arg(&log)
            .args(["--daemonize", "no", "--save", ""])
            .args(["--databases", "1"]);
        if let Some((files, port)) = &self.tls {
            cmd.arg("--tls-port")
                .arg(port.to_string())
                .arg("--tls-cert-file")
                .arg(&files.cert)
                .arg("--tls-key-file")
                .arg(&files.key)
                .arg("--tls-ca-cert-file")
                .arg(&files.ca)
                .arg("--tls-auth-clients")
                .arg(if files.require_client_cert {
                    "yes"
                } else {
                    "no"
                });
        }
        if self.persistent {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot run redis-server ({e}): install the `redis-server` package (scripts/setup.sh does)"),
            )
        })?;
        self.child = Some(child);
        match self.wait_ready() {
            Ok(()) => Ok(()),
            Err(e) => {
                self.stop();
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: String = tail.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
                Err(io::Error::other(format!(
                    "redis-server on port {} did not become ready: {e} (log: {tail})",
                    self.port
                )))
            }
        }
    }

    /// Waits until `PING` answers `PONG` (not `-LOADING` while the AOF loads).
    fn wait_ready(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                return Err(io::Error::other(format!("redis-server exited: {status}")));
            }
            if ping(&addr).unwrap_or(false) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "no PONG"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TempRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

fn ping(addr: &SocketAddr) -> io::Result<bool> {
    let mut stream = TcpStream::connect_timeout(addr, Duration::from_millis(200))?;
    stream.set_read_timeout(Some(Duration::from_millis(500)))?;
    stream.write_all(b"PING\r\n")?;
    let mut buf = [0u8; 64];
    let n = stream.read(&mut buf)?;
    Ok(buf[..n].starts_with(b"+PONG"))
}

fn free_port() -> io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

fn redis_server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("AETHERIUM_REDIS_SERVER") {
        return PathBuf::from(path);
    }
    PathBuf::from("redis-server")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(port: u16, line: &str) -> String {
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        stream
            .write_all(format!("{line}\r\n").as_bytes())
            .expect("write");
        let mut buf = [0u8; 256];
        let n = stream.read(&mut buf).expect("read");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn starts_answers_and_is_gone_when_dropped() {
        let mut redis = TempRedis::start().expect("start");
        assert!(redis.url().starts_with("redis://127.0.0.1:"));
        assert!(redis.is_running());
        assert_eq!(command(redis.port(), "SET k v"), "+OK\r\n");
        let port = redis.port();
        drop(redis);
        assert!(TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err());
    }

    #[test]
    fn a_persistent_server_keeps_its_data_across_a_restart() {
        let mut redis = TempRedis::start_persistent().expect("start");
        let port = redis.port();
        assert_eq!(command(port, "SET k v"), "+OK\r\n");
        redis.stop();
        assert!(!redis.is_running());
        assert!(TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err());
        redis.restart().expect("restart");
        assert_eq!(redis.port(), port);
        assert_eq!(command(port, "GET k"), "$1\r\nv\r\n");
    }

    #[test]
    fn a_plain_server_forgets_on_restart() {
        let mut redis = TempRedis::start().expect("start");
        assert_eq!(command(redis.port(), "SET k v"), "+OK\r\n");
        redis.restart().expect("restart");
        assert_eq!(command(redis.port(), "GET k"), "$-1\r\n");
    }
}
