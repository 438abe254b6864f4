//! aetherium-agent: runs inside every sandbox and serves (a growing part of) E2B
//! envd's API to the host. See README.md for what is implemented.

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

mod cli;
mod connect;
mod process;
mod server;

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
        cli::Command::Run(config) => config,
    };

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
    match runtime.block_on(server::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log!("cannot serve on {listen}: {e}");
            ExitCode::FAILURE
        }
    }
}
