//! The local terminal for `vm exec -it`: raw mode (restored when the guard drops,
//! which also happens on an error or a panic unwinding through it) and its size.

use std::io::IsTerminal as _;

use rustix::termios::{OptionalActions, Termios, tcgetattr, tcgetwinsize, tcsetattr};

/// While alive, the terminal on stdin is in raw mode: no echo, no line editing, and
/// Ctrl-C, Ctrl-Z, Ctrl-\ arrive as bytes instead of signals, for the remote
/// terminal to interpret.
pub struct RawMode {
    original: Termios,
}

impl RawMode {
    pub fn enable() -> std::io::Result<RawMode> {
        let stdin = std::io::stdin();
        let original = tcgetattr(&stdin)?;
        let mut raw = original.clone();
        raw.make_raw();
        tcsetattr(&stdin, OptionalActions::Flush, &raw)?;
        Ok(RawMode { original })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = tcsetattr(std::io::stdin(), OptionalActions::Now, &self.original);
    }
}

pub fn stdin_is_terminal() -> bool {
    std::io::stdin().is_terminal()
}

/// Columns and rows of the terminal on stdout (or stdin), if there is one.
pub fn size() -> Option<(u16, u16)> {
    let size = tcgetwinsize(std::io::stdout())
        .or_else(|_| tcgetwinsize(std::io::stdin()))
        .ok()?;
    (size.ws_col > 0 && size.ws_row > 0).then_some((size.ws_col, size.ws_row))
}

/// While alive, the terminal on stdin does not echo (password prompts).
pub struct EchoOff {
    original: Termios,
}

impl EchoOff {
    pub fn enable() -> std::io::Result<EchoOff> {
        let stdin = std::io::stdin();
        let original = tcgetattr(&stdin)?;
        let mut quiet = original.clone();
        quiet.local_modes.remove(rustix::termios::LocalModes::ECHO);
        tcsetattr(&stdin, OptionalActions::Flush, &quiet)?;
        Ok(EchoOff { original })
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        let _ = tcsetattr(std::io::stdin(), OptionalActions::Now, &self.original);
    }
}
