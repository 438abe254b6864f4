//! Command-line parsing. Hand-rolled: a handful of flags do not justify a parser
//! crate in a binary we want small.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// How long a Start stream may stay silent before the agent sends a keepalive event
/// (envd's value). Tests shorten it with the hidden `--keepalive-interval-ms` flag.
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(30);

/// The environment variable that carries the access token (never inherited by the
/// processes the agent starts).
pub const ACCESS_TOKEN_ENV: &str = "AETHERIUM_AGENT_ACCESS_TOKEN";

const MAX_KEEPALIVE_MS: u64 = 24 * 60 * 60 * 1000;

pub const USAGE: &str = "\
usage: aetherium-agent --listen unix:PATH | tcp:IP:PORT | vsock:PORT [options]
       aetherium-agent --version
       aetherium-agent init -- AGENT-OPTIONS   (PID 1 of a microVM only)

Serves E2B envd's API (Connect process and filesystem services, /files, /init,
...) on the given listener. A unix socket's parent directory is created if
missing, a stale socket is replaced, and the socket is made connectable by every
user (mode 0666) -- but a peer inside the agent's own PID namespace (a process of
the sandbox) is served only if it runs as the agent's user or root.

options:
  --access-token TOKEN   require `X-Access-Token: TOKEN` on every request but
                         /health (also settable once through POST /init); the
                         environment variable AETHERIUM_AGENT_ACCESS_TOKEN does
                         the same without showing the token in `ps`
  --access-token-file PATH
                         read the token from PATH at start and delete the file
                         (how the host hands a container its token: nothing in
                         the environment, the image or `docker inspect`)
  --idle-timeout SECS    exit once no process has run and no request has
                         arrived for SECS seconds
  --default-user NAME    user for processes and files when a request names
                         none (default: the user the agent runs as)
  --default-workdir DIR  working directory of processes that name none
                         (default: the user's home directory)
  --syscall-filter       start every process under a seccomp filter refusing
                         io_uring, userfaultfd, bpf, perf events and the kernel
                         keyring (EPERM), on top of the engine's profile";

/// Where the agent listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Unix(PathBuf),
    /// An IP literal and port only: parsing a host name would need getaddrinfo, which
    /// a static glibc binary cannot use reliably.
    Tcp(SocketAddr),
    /// AF_VSOCK on any CID (inside a microVM; the host reaches it through the VMM's
    /// hybrid-vsock socket with `CONNECT <port>`).
    Vsock(u32),
}

impl FromStr for Listen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a socket path".into());
            }
            Ok(Listen::Unix(PathBuf::from(path)))
        } else if let Some(addr) = s.strip_prefix("tcp:") {
            addr.parse().map(Listen::Tcp).map_err(|e| {
                format!("bad tcp address {addr:?} ({e}); want IP:PORT, e.g. 127.0.0.1:49983")
            })
        } else if let Some(port) = s.strip_prefix("vsock:") {
            port.parse()
                .map(Listen::Vsock)
                .map_err(|e| format!("bad vsock port {port:?} ({e}); want vsock:PORT"))
        } else {
            Err(format!(
                "bad listen address {s:?}; want unix:PATH, tcp:IP:PORT or vsock:PORT"
            ))
        }
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Unix(path) => write!(f, "unix:{}", path.display()),
            Listen::Tcp(addr) => write!(f, "tcp:{addr}"),
            Listen::Vsock(port) => write!(f, "vsock:{port}"),
        }
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    pub listen: Listen,
    pub keepalive: Duration,
    pub access_token: Option<String>,
    /// Read (and removed) at start; takes the place of `access_token`.
    pub access_token_file: Option<PathBuf>,
    pub idle_timeout: Option<Duration>,
    pub default_user: Option<String>,
    pub default_workdir: Option<PathBuf>,
    /// Processes start under [`crate::syscall_filter`].
    pub syscall_filter: bool,
}

impl Config {
    #[cfg(test)]
    pub fn new(listen: Listen) -> Config {
        Config {
            listen,
            keepalive: DEFAULT_KEEPALIVE,
            access_token: None,
            access_token_file: None,
            idle_timeout: None,
            default_user: None,
            default_workdir: None,
            syscall_filter: false,
        }
    }
}

/// Never prints the access token.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("keepalive", &self.keepalive)
            .field("access_token", &self.access_token.as_ref().map(|_| "<set>"))
            .field("access_token_file", &self.access_token_file)
            .field("idle_timeout", &self.idle_timeout)
            .field("default_user", &self.default_user)
            .field("default_workdir", &self.default_workdir)
            .field("syscall_filter", &self.syscall_filter)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Run(Config),
    /// PID 1 of a microVM: run the agent with these (already validated) options as
    /// a child, reap orphans, reboot when it ends.
    Init(Vec<String>),
    Version,
    Help,
}

/// Parses the arguments after the program name. Accepts `--flag value` and
/// `--flag=value`.
pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Command, String> {
    parse_with_env(args, std::env::var(ACCESS_TOKEN_ENV).ok())
}

fn parse_with_env<I: IntoIterator<Item = String>>(
    args: I,
    env_token: Option<String>,
) -> Result<Command, String> {
    let mut args = args.into_iter().peekable();
    if args.peek().map(String::as_str) == Some("init") {
        args.next();
        let rest: Vec<String> = args.skip_while(|a| a == "--").collect();
        // Checked now: a typo must fail before the agent would be started.
        return match parse_with_env(rest.clone(), env_token)? {
            Command::Run(_) => Ok(Command::Init(rest)),
            _ => Err("init needs the agent's options (--listen …)".into()),
        };
    }
    let mut listen = None;
    let mut keepalive = DEFAULT_KEEPALIVE;
    let mut access_token = env_token.filter(|t| !t.is_empty());
    let mut access_token_file = None;
    let mut idle_timeout = None;
    let mut default_user = None;
    let mut default_workdir = None;
    let mut syscall_filter = false;
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag.to_string(), Some(value)),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            match inline {
                Some(v) => Ok(v.to_string()),
                None => args.next().ok_or_else(|| format!("{name} needs a value")),
            }
        };
        match flag.as_str() {
            "--version" | "-V" => return Ok(Command::Version),
            "--help" | "-h" => return Ok(Command::Help),
            "--listen" => listen = Some(value("--listen")?.parse()?),
            // Hidden: only tests need keepalives sooner than envd's 30 s.
            "--keepalive-interval-ms" => {
                let ms: u64 = value("--keepalive-interval-ms")?
                    .parse()
                    .map_err(|e| format!("bad --keepalive-interval-ms: {e}"))?;
                // Bounded so deadline arithmetic can never overflow.
                if !(1..=MAX_KEEPALIVE_MS).contains(&ms) {
                    return Err(format!(
                        "--keepalive-interval-ms must be within 1..={MAX_KEEPALIVE_MS}"
                    ));
                }
                keepalive = Duration::from_millis(ms);
            }
            "--access-token" => {
                let token = value("--access-token")?;
                if token.is_empty() {
                    return Err("--access-token must not be empty".into());
                }
                access_token = Some(token);
            }
            "--access-token-file" => {
                let path = PathBuf::from(value("--access-token-file")?);
                if !path.is_absolute() {
                    return Err("--access-token-file must be an absolute path".into());
                }
                access_token_file = Some(path);
            }
            "--idle-timeout" => {
                let secs: u64 = value("--idle-timeout")?
                    .parse()
                    .map_err(|e| format!("bad --idle-timeout: {e}"))?;
                if !(1..=MAX_KEEPALIVE_MS / 1000).contains(&secs) {
                    return Err(format!(
                        "--idle-timeout must be within 1..={}",
                        MAX_KEEPALIVE_MS / 1000
                    ));
                }
                idle_timeout = Some(Duration::from_secs(secs));
            }
            "--default-user" => default_user = Some(value("--default-user")?),
            "--default-workdir" => {
                let dir = PathBuf::from(value("--default-workdir")?);
                if !dir.is_absolute() {
                    return Err("--default-workdir must be an absolute path".into());
                }
                default_workdir = Some(dir);
            }
            "--syscall-filter" if inline.is_none() => syscall_filter = true,
            _ => return Err(format!("unknown argument {arg:?}")),
        }
    }
    let listen = listen.ok_or("--listen is required")?;
    Ok(Command::Run(Config {
        listen,
        keepalive,
        access_token,
        access_token_file,
        idle_timeout,
        default_user,
        default_workdir,
        syscall_filter,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_strs(args: &[&str]) -> Result<Command, String> {
        parse_with_env(args.iter().map(|s| s.to_string()), None)
    }

    #[test]
    fn listen_forms() {
        assert_eq!(
            parse_strs(&["--listen", "unix:/run/agent/agent.sock"]),
            Ok(Command::Run(Config::new(Listen::Unix(
                "/run/agent/agent.sock".into()
            ))))
        );
        assert_eq!(
            parse_strs(&[
                "--listen=tcp:127.0.0.1:49983",
                "--keepalive-interval-ms=250"
            ]),
            Ok(Command::Run(Config {
                keepalive: Duration::from_millis(250),
                ..Config::new(Listen::Tcp("127.0.0.1:49983".parse().expect("addr")))
            }))
        );
        assert_eq!(
            parse_strs(&["--listen", "tcp:[::1]:80"]).map(|_| ()),
            Ok(())
        );
    }

    #[test]
    fn rejects_bad_input() {
        assert!(parse_strs(&[]).is_err());
        assert!(parse_strs(&["--listen"]).is_err());
        assert!(parse_strs(&["--listen", "unix:"]).is_err());
        // Host names would need DNS; only IP literals are accepted.
        assert!(parse_strs(&["--listen", "tcp:localhost:49983"]).is_err());
        assert!(parse_strs(&["--listen", "/tmp/x.sock"]).is_err());
        assert!(parse_strs(&["--listen", "unix:/x", "--keepalive-interval-ms", "0"]).is_err());
        assert!(parse_strs(&["--listen", "unix:/x", "--keepalive-interval-ms=-1"]).is_err());
        let forever = format!("--keepalive-interval-ms={}", u64::MAX);
        assert!(parse_strs(&["--listen", "unix:/x", &forever]).is_err());
        assert!(parse_strs(&["--bogus"]).is_err());
    }

    #[test]
    fn options() {
        let Ok(Command::Run(config)) = parse_strs(&[
            "--listen=unix:/x",
            "--access-token",
            "s3cret",
            "--idle-timeout=60",
            "--default-user",
            "user",
            "--default-workdir=/home/user",
        ]) else {
            panic!("options parse");
        };
        assert_eq!(config.access_token.as_deref(), Some("s3cret"));
        assert_eq!(config.idle_timeout, Some(Duration::from_secs(60)));
        assert_eq!(config.default_user.as_deref(), Some("user"));
        assert_eq!(config.default_workdir, Some(PathBuf::from("/home/user")));
        assert!(
            !format!("{config:?}").contains("s3cret"),
            "Debug hides the token"
        );
        assert!(parse_strs(&["--listen=unix:/x", "--idle-timeout=0"]).is_err());
        assert!(parse_strs(&["--listen=unix:/x", "--access-token="]).is_err());
        assert!(parse_strs(&["--listen=unix:/x", "--default-workdir=rel"]).is_err());
        assert!(parse_strs(&["--listen=unix:/x", "--access-token-file=rel"]).is_err());
        let Ok(Command::Run(config)) =
            parse_strs(&["--listen=unix:/x", "--access-token-file=/run/t"])
        else {
            panic!("token file");
        };
        assert_eq!(config.access_token_file, Some(PathBuf::from("/run/t")));
        let Ok(Command::Run(config)) =
            parse_with_env(["--listen=unix:/x".to_string()], Some("from-env".into()))
        else {
            panic!("env token");
        };
        assert_eq!(config.access_token.as_deref(), Some("from-env"));
    }

    #[test]
    fn init_mode_takes_the_agent_options() {
        assert_eq!(
            parse_strs(&["init", "--", "--listen", "vsock:49983"]),
            Ok(Command::Init(vec!["--listen".into(), "vsock:49983".into()]))
        );
        assert!(parse_strs(&["init", "--"]).is_err());
        assert!(parse_strs(&["init", "--", "--version"]).is_err());
        assert!(parse_strs(&["init", "--", "--listen", "bogus"]).is_err());
    }

    #[test]
    fn version_and_help() {
        assert_eq!(parse_strs(&["--version"]), Ok(Command::Version));
        assert_eq!(
            parse_strs(&["--listen", "unix:/x", "-h"]),
            Ok(Command::Help)
        );
    }
}
