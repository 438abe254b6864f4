//! aetherium-agent: runs inside every sandbox and serves E2B envd's API (and our
//! extensions) to the host. See README.md.

// Request handlers return the finished error response as their `Err`: it is built
// once, on the failure path only, so its size does not matter.
#![allow(clippy::result_large_err)]

use std::io::Write as _;
use std::process::ExitCode;

/// One terse line on stderr per event. Never panics, unlike `eprintln!`, should
/// stderr be closed.
macro_rules! log {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr().lock(),
            "aetherium-agent: {}",
            format_args!($($arg)*)
        );
    }};
}
pub(crate) use log;

mod api;
mod cli;
mod connect;
mod files;
mod filesystem;
mod init;
mod multipart;
mod process;
mod pty;
mod server;
mod syscall_filter;
mod system;
mod users;
mod watch;

fn main() -> ExitCode {
    let command = match cli::parse(std::env::args().skip(1)) {
        Ok(command) => command,
        Err(e) => {
            log!("{e}\n{}", cli::USAGE);
            return ExitCode::from(2);
        }
    };
    let config = match command {
        cli::Command::Version => {
            let _ = writeln!(
                std::io::stdout().lock(),
                "aetherium-agent {} (protocol {})",
                env!("CARGO_PKG_VERSION"),
                aetherium_types::agent::PROTOCOL_VERSION
            );
            return ExitCode::SUCCESS;
        }
        cli::Command::Help => {
            let _ = writeln!(std::io::stdout().lock(), "{}", cli::USAGE);
            return ExitCode::SUCCESS;
        }
        cli::Command::Init(agent_args) => return init::run(agent_args),
        cli::Command::Run(config) => config,
    };
    if config.syscall_filter {
        if let Err(e) = syscall_filter::enable() {
            log!("{e}");
            return ExitCode::FAILURE;
        }
        log!(
            "processes start under a seccomp filter refusing {}",
            syscall_filter::refused_names().join(", ")
        );
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            log!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let listen = config.listen.to_string();
    let result = runtime.block_on(server::run(config));
    // Blocking tasks (a filesystem call in progress) must not hold up the exit.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log!("cannot serve on {listen}: {e}");
            ExitCode::FAILURE
        }
    }
}
