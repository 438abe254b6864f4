//! Pseudo-terminals for processes started with `pty`: allocation, the child's side
//! (a new session whose controlling terminal is the pty), resizing, and async I/O on
//! the master side.

use std::io;
use std::os::fd::{AsFd as _, OwnedFd};

use aetherium_types::agent::PtySize;
use rustix::fs::{Mode, OFlags};
use rustix::pty::OpenptFlags;
use rustix::termios::Winsize;
use tokio::net::unix::pipe;

/// A freshly allocated pty: the master stays with the agent, the slave becomes the
/// child's stdin, stdout and stderr.
pub struct Pair {
    pub master: OwnedFd,
    pub slave: OwnedFd,
}

/// envd's default when a request gives a zero size.
const DEFAULT_SIZE: PtySize = PtySize { cols: 80, rows: 24 };

fn winsize(size: PtySize) -> Winsize {
    let size = if size.cols == 0 || size.rows == 0 {
        DEFAULT_SIZE
    } else {
        size
    };
    Winsize {
        ws_row: u16::try_from(size.rows).unwrap_or(u16::MAX),
        ws_col: u16::try_from(size.cols).unwrap_or(u16::MAX),
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

pub fn open(size: PtySize) -> io::Result<Pair> {
    let master =
        rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    rustix::pty::grantpt(&master)?;
    rustix::pty::unlockpt(&master)?;
    let name = rustix::pty::ptsname(&master, Vec::new())?;
    // CLOEXEC on the agent's copy; the child gets it through dup2 onto 0, 1 and 2,
    // which clears the flag on the duplicates.
    let slave = rustix::fs::open(
        name.as_c_str(),
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    rustix::termios::tcsetwinsize(&master, winsize(size))?;
    rustix::io::ioctl_fionbio(&master, true)?;
    Ok(Pair { master, slave })
}

/// Makes the child a session leader whose controlling terminal is its stdin (the pty
/// slave): what a terminal emulator does, and what job control in a shell needs.
/// Must not be combined with `process_group`, which would make the child a group
/// leader before this runs, and `setsid` then fails.
#[allow(unsafe_code)]
pub fn make_controlling_terminal(command: &mut tokio::process::Command) {
    // SAFETY: `pre_exec` closures run in the forked child, between fork and exec, where
    // only async-signal-safe operations are allowed. This one makes two raw system
    // calls through rustix's linux_raw backend, setsid(2) and ioctl(0, TIOCSCTTY),
    // which neither allocate nor take locks nor touch libc state; errors convert to
    // `io::Error::from_raw_os_error`, which does not allocate either. fd 0 is the pty
    // slave: std installs the stdio (dup2) before running pre_exec closures, and fd 0
    // stays open until exec, so borrowing it is sound.
    unsafe {
        command.pre_exec(|| {
            rustix::process::setsid()?;
            let stdin = std::os::fd::BorrowedFd::borrow_raw(0);
            rustix::process::ioctl_tiocsctty(stdin)?;
            Ok(())
        });
    }
}

/// The agent's side of a child's pty: one duplicate of the master to read output
/// from, one to write input to (each registered with the reactor on its own).
pub struct Master {
    output: pipe::Receiver,
    input: tokio::sync::Mutex<pipe::Sender>,
}

impl Master {
    pub fn new(master: OwnedFd) -> io::Result<Master> {
        let writer = master.try_clone()?;
        Ok(Master {
            // tokio's pipe types drive any non-blocking fd by readiness; the master
            // was made non-blocking in `open`.
            output: pipe::Receiver::from_owned_fd_unchecked(master)?,
            input: tokio::sync::Mutex::new(pipe::Sender::from_owned_fd_unchecked(writer)?),
        })
    }

    pub fn resize(&self, size: PtySize) -> io::Result<()> {
        rustix::termios::tcsetwinsize(self.output.as_fd(), winsize(size))?;
        Ok(())
    }

    /// Reads output; 0 at the end. EIO, which Linux returns once every slave fd is
    /// closed, is the end too.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            self.output.readable().await?;
            match self.output.try_read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::IO.raw_os_error()) => {
                    return Ok(0);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes all of `data` (input typed at the terminal), in order with other
    /// writers.
    pub async fn write_all(&self, data: &[u8]) -> io::Result<()> {
        let input = self.input.lock().await;
        let mut data = data;
        while !data.is_empty() {
            input.writable().await?;
            match input.try_write(data) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => data = &data[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
