//! Command-line parsing. Hand-rolled: three flags do not justify a parser crate in a
//! binary we want small.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// How long a Start stream may stay silent before the agent sends a keepalive event
/// (envd's value). Tests shorten it with the hidden `--keepalive-interval-ms` flag.
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(30);

const MAX_KEEPALIVE_MS: u64 = 24 * 60 * 60 * 1000;

pub const USAGE: &str = "\
usage: aetherium-agent --listen unix:PATH | --listen tcp:IP:PORT
       aetherium-agent --version

Serves E2B envd's process API (Connect protocol, JSON codec) on the given listener.
A unix socket's parent directory is created if missing, a stale socket is replaced,
and the socket is made connectable by every user (mode 0666).";

/// Where the agent listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Unix(PathBuf),
    /// An IP literal and port only: parsing a host name would need getaddrinfo, which
    /// a static glibc binary cannot use reliably.
    Tcp(SocketAddr),
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
        } else {
            Err(format!(
                "bad listen address {s:?}; want unix:PATH or tcp:IP:PORT"
            ))
        }
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Unix(path) => write!(f, "unix:{}", path.display()),
            Listen::Tcp(addr) => write!(f, "tcp:{addr}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub listen: Listen,
    pub keepalive: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Run(Config),
    Version,
    Help,
}

/// Parses the arguments after the program name. Accepts `--flag value` and
/// `--flag=value`.
pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Command, String> {
    let mut listen = None;
    let mut keepalive = DEFAULT_KEEPALIVE;
    let mut args = args.into_iter();
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
            _ => return Err(format!("unknown argument {arg:?}")),
        }
    }
    let listen = listen.ok_or("--listen is required")?;
    Ok(Command::Run(Config { listen, keepalive }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_strs(args: &[&str]) -> Result<Command, String> {
        parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn listen_forms() {
        assert_eq!(
            parse_strs(&["--listen", "unix:/run/agent/agent.sock"]),
            Ok(Command::Run(Config {
                listen: Listen::Unix("/run/agent/agent.sock".into()),
                keepalive: DEFAULT_KEEPALIVE,
            }))
        );
        assert_eq!(
            parse_strs(&[
                "--listen=tcp:127.0.0.1:49983",
                "--keepalive-interval-ms=250"
            ]),
            Ok(Command::Run(Config {
                listen: Listen::Tcp("127.0.0.1:49983".parse().expect("addr")),
                keepalive: Duration::from_millis(250),
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
    fn version_and_help() {
        assert_eq!(parse_strs(&["--version"]), Ok(Command::Version));
        assert_eq!(
            parse_strs(&["--listen", "unix:/x", "-h"]),
            Ok(Command::Help)
        );
    }
}
