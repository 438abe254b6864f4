//! Processes started through `process.Process/Start`: spawning, the table behind
//! `List` and `SendSignal`, and the supervisor task that pumps a child's output into
//! its Start stream.
//!
//! A process belongs to the agent, not to the HTTP connection that started it (envd's
//! semantics): when the client goes away the supervisor keeps draining the pipes (and
//! drops what it reads) so the child never blocks on a full pipe, and reaps it when it
//! exits.

use std::collections::HashMap;
use std::io;
use std::os::unix::process::ExitStatusExt as _;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use aetherium_types::agent::{
    Base64Bytes, ConnectError, DataEvent, EndEvent, ProcessEvent, ProcessInfo, ProcessSelector,
    Signal, StartEvent, StartRequest, StartResponse,
};
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::connect::{end_of_stream, invalid_argument, stream_message};

/// Read size for a child's pipes (envd uses the same).
const CHUNK_BYTES: usize = 32 * 1024;
/// Encoded messages queued between a supervisor and its HTTP body. Small: when the
/// client reads slowly, the child should feel back-pressure rather than the agent
/// buffering its output.
const EVENT_QUEUE: usize = 16;
/// After the child exits, its pipes may still hold output, or stay open because a
/// background grandchild inherited them. We keep reading until EOF, or until the
/// pipes have been silent this long...
const DRAIN_IDLE: Duration = Duration::from_millis(100);
/// ...or this much more has been read (more than a pipe can hold, so only a chatty
/// grandchild hits it).
const DRAIN_MAX_BYTES: usize = 1024 * 1024;

/// The running processes, by pid. A pid leaves the table as soon as its supervisor
/// has reaped it, so a listed pid has not been reused.
#[derive(Debug, Default)]
pub struct ProcessTable {
    processes: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    by_pid: HashMap<u32, Entry>,
    next_serial: u64,
}

#[derive(Debug)]
struct Entry {
    /// Tells a reused pid's entry from the one a supervisor inserted.
    serial: u64,
    info: ProcessInfo,
}

impl ProcessTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // Nothing holding this lock can leave the map inconsistent, so a poisoned lock
        // is still usable.
        self.processes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub fn list(&self) -> Vec<ProcessInfo> {
        let mut processes: Vec<ProcessInfo> = self
            .lock()
            .by_pid
            .values()
            .map(|e| e.info.clone())
            .collect();
        processes.sort_by_key(|p| p.pid);
        processes
    }

    /// The pid a selector names; for a tag shared by several processes, the oldest
    /// (lowest pid) one.
    pub fn resolve(&self, selector: &ProcessSelector) -> Option<u32> {
        let entries = self.lock();
        match selector {
            ProcessSelector::Pid(pid) => entries.by_pid.contains_key(pid).then_some(*pid),
            ProcessSelector::Tag(tag) => entries
                .by_pid
                .values()
                .filter(|e| e.info.tag.as_deref() == Some(tag.as_str()))
                .map(|e| e.info.pid)
                .min(),
        }
    }

    /// Lists a process; returns the serial that removes it.
    fn insert(&self, info: ProcessInfo) -> u64 {
        let mut entries = self.lock();
        let serial = entries.next_serial;
        entries.next_serial += 1;
        entries.by_pid.insert(info.pid, Entry { serial, info });
        serial
    }

    /// Unlists a process, unless its pid has meanwhile been reused by a newer one.
    fn remove(&self, pid: u32, serial: u64) {
        let mut entries = self.lock();
        if entries.by_pid.get(&pid).is_some_and(|e| e.serial == serial) {
            entries.by_pid.remove(&pid);
        }
    }
}

/// Spawns the process a Start request describes and its supervisor. Returns the
/// receiving end of its Start stream: encoded envelopes, the start event first and
/// the end-of-stream envelope last.
pub fn start(
    table: &Arc<ProcessTable>,
    request: StartRequest,
) -> Result<mpsc::Receiver<Bytes>, ConnectError> {
    let config = request.process;
    if config.cmd.is_empty() {
        return Err(invalid_argument("process.cmd is empty"));
    }
    if request.pty.is_some() {
        return Err(ConnectError::new(
            "unimplemented",
            "PTY processes are not supported yet",
        ));
    }
    let cwd = config
        .cwd
        .as_deref()
        .filter(|cwd| !cwd.is_empty())
        .unwrap_or("/");
    // Checked up front so a bad cwd is not reported as a missing executable: both
    // come back from spawn as ENOENT.
    match std::fs::metadata(cwd) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Err(invalid_argument(format!("cwd {cwd:?} is not a directory"))),
        Err(e) => return Err(invalid_argument(format!("cwd {cwd:?}: {e}"))),
    }

    let mut command = Command::new(&config.cmd);
    command
        .args(&config.args)
        .envs(&config.envs)
        .current_dir(cwd)
        // Input is not supported yet (a later issue adds SendInput/StreamInput), so
        // the child reads EOF rather than hanging on a pipe nobody writes.
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Own process group, so SendSignal reaches the children the command spawns.
        .process_group(0)
        // The process outlives its request; the supervisor owns and reaps it.
        .kill_on_drop(false);
    let child = command.spawn().map_err(|e| spawn_error(&config.cmd, e))?;
    let Some(pid) = child.id() else {
        // Only possible once the child has been waited for, which it has not.
        return Err(ConnectError::new("internal", "spawned child has no pid"));
    };

    crate::log!("pid {pid} started: {}", config.cmd);
    let serial = table.insert(ProcessInfo {
        config,
        pid,
        tag: request.tag,
    });
    let (tx, rx) = mpsc::channel(EVENT_QUEUE);
    let listing = Listing {
        table: Arc::clone(table),
        pid,
        serial,
    };
    tokio::spawn(supervise(child, listing, tx));
    Ok(rx)
}

fn spawn_error(cmd: &str, error: io::Error) -> ConnectError {
    match error.kind() {
        // The cwd was checked above, so ENOENT is the executable.
        io::ErrorKind::NotFound => ConnectError::new(
            "not_found",
            format!("executable {cmd:?} not found: {error}"),
        ),
        io::ErrorKind::PermissionDenied | io::ErrorKind::InvalidInput => {
            invalid_argument(format!("cannot execute {cmd:?}: {error}"))
        }
        _ => ConnectError::new("internal", format!("starting {cmd:?}: {error}")),
    }
}

/// Sends a signal to the process group of a listed process.
pub fn send_signal(
    table: &ProcessTable,
    selector: &ProcessSelector,
    signal: Signal,
) -> Result<(), ConnectError> {
    let signal_ = match signal {
        Signal::Sigterm => rustix::process::Signal::TERM,
        Signal::Sigkill => rustix::process::Signal::KILL,
        Signal::Unspecified => {
            return Err(invalid_argument(
                "signal must be SIGNAL_SIGTERM or SIGNAL_SIGKILL",
            ));
        }
    };
    let not_found = || {
        let which = match selector {
            ProcessSelector::Pid(pid) => format!("with pid {pid}"),
            ProcessSelector::Tag(tag) => format!("tagged {tag:?}"),
        };
        ConnectError::new("not_found", format!("no running process {which}"))
    };
    let pid = table.resolve(selector).ok_or_else(not_found)?;
    // Children are their own group leaders, so the pgid is the pid.
    let pgid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(not_found)?;
    match rustix::process::kill_process_group(pgid, signal_) {
        Ok(()) => {
            crate::log!("pid {pid}: sent {signal:?} to its process group");
            Ok(())
        }
        // Everything in the group already exited; the supervisor is about to drop it.
        Err(rustix::io::Errno::SRCH) => Err(not_found()),
        Err(e) => Err(ConnectError::new(
            "internal",
            format!("signalling process group {pid}: {e}"),
        )),
    }
}

/// A process's place in the table.
struct Listing {
    table: Arc<ProcessTable>,
    pid: u32,
    serial: u64,
}

impl Listing {
    fn remove(&self) {
        self.table.remove(self.pid, self.serial);
    }
}

/// Where a supervisor sends its stream; `None` once the client has gone.
struct Subscriber {
    tx: Option<mpsc::Sender<Bytes>>,
    pid: u32,
}

impl Subscriber {
    fn connected(&self) -> bool {
        self.tx.is_some()
    }

    async fn send(&mut self, message: Bytes) {
        if let Some(tx) = &self.tx
            && tx.send(message).await.is_err()
        {
            crate::log!("pid {}: client gone, dropping its output", self.pid);
            self.tx = None;
        }
    }

    async fn event(&mut self, event: ProcessEvent) {
        if self.connected() {
            self.send(stream_message(&StartResponse { event })).await;
        }
    }

    async fn data(&mut self, event: impl FnOnce(Base64Bytes) -> DataEvent, bytes: &[u8]) {
        if self.connected() {
            let data = event(Base64Bytes(bytes.to_vec()));
            self.event(ProcessEvent::Data(data)).await;
        }
    }
}

/// Reads from a pipe that may already be closed (`None`: never ready).
async fn read_pipe<R: AsyncRead + Unpin>(
    pipe: &mut Option<R>,
    buf: &mut [u8],
) -> io::Result<usize> {
    match pipe {
        Some(pipe) => pipe.read(buf).await,
        None => std::future::pending().await,
    }
}

/// Owns a child until it is reaped: streams its output as data events, then the end
/// event and the end-of-stream envelope.
async fn supervise(mut child: Child, listing: Listing, tx: mpsc::Sender<Bytes>) {
    let pid = listing.pid;
    let mut subscriber = Subscriber { tx: Some(tx), pid };
    subscriber
        .event(ProcessEvent::Start(StartEvent { pid }))
        .await;

    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let mut stdout_buf = vec![0u8; CHUNK_BYTES];
    let mut stderr_buf = vec![0u8; CHUNK_BYTES];
    let mut status: Option<io::Result<ExitStatus>> = None;
    let mut drained_after_exit = 0usize;
    let drain_timer = tokio::time::sleep(DRAIN_IDLE);
    tokio::pin!(drain_timer);

    loop {
        if status.is_some()
            && ((stdout.is_none() && stderr.is_none()) || drained_after_exit > DRAIN_MAX_BYTES)
        {
            break;
        }
        tokio::select! {
            read = read_pipe(&mut stdout, &mut stdout_buf) => match read {
                Ok(n) if n > 0 => {
                    subscriber.data(DataEvent::Stdout, &stdout_buf[..n]).await;
                    if status.is_some() {
                        drained_after_exit += n;
                    }
                }
                _ => stdout = None,
            },
            read = read_pipe(&mut stderr, &mut stderr_buf) => match read {
                Ok(n) if n > 0 => {
                    subscriber.data(DataEvent::Stderr, &stderr_buf[..n]).await;
                    if status.is_some() {
                        drained_after_exit += n;
                    }
                }
                _ => stderr = None,
            },
            exit = child.wait(), if status.is_none() => {
                // Reaped: the pid is free for reuse, so it must leave the table now.
                listing.remove();
                status = Some(exit);
            }
            () = &mut drain_timer, if status.is_some() => break,
        }
        // Restarted after every event (and after any wait for a slow client), so it
        // only fires when the pipes were idle for the whole period.
        drain_timer
            .as_mut()
            .reset(tokio::time::Instant::now() + DRAIN_IDLE);
    }
    // Closing our ends makes a grandchild still writing to them get SIGPIPE/EPIPE.
    drop((stdout, stderr));

    let end = match status {
        Some(Ok(status)) => end_event(status),
        Some(Err(e)) => EndEvent {
            exit_code: -1,
            exited: false,
            status: String::new(),
            error: Some(format!("waiting for the process: {e}")),
        },
        // The loop only ends once the child has been waited for.
        None => EndEvent {
            exit_code: -1,
            error: Some("process state unknown".into()),
            ..EndEvent::default()
        },
    };
    let summary = match &end.error {
        Some(error) if end.status.is_empty() => error,
        _ => &end.status,
    };
    crate::log!("pid {pid} ended: {summary}");
    subscriber.event(ProcessEvent::End(end)).await;
    subscriber.send(end_of_stream(None)).await;
}

/// The end event for an exit status, worded like envd (Go's `ProcessState`):
/// `exit status 3`, or `signal: killed` with exit code -1 and `exited: false`.
/// As in envd, `error` repeats the status for anything but a clean exit.
pub fn end_event(status: ExitStatus) -> EndEvent {
    if let Some(code) = status.code() {
        let text = format!("exit status {code}");
        return EndEvent {
            exit_code: code,
            exited: true,
            error: (code != 0).then(|| text.clone()),
            status: text,
        };
    }
    let mut text = match status.signal() {
        Some(signal) => format!("signal: {}", signal_description(signal)),
        None => format!("unknown wait status {}", status.into_raw()),
    };
    if status.core_dumped() {
        text.push_str(" (core dumped)");
    }
    EndEvent {
        exit_code: -1,
        exited: false,
        error: Some(text.clone()),
        status: text,
    }
}

/// Go's descriptions of Linux signals, which envd's clients see in `status`.
fn signal_description(signal: i32) -> String {
    const NAMES: [&str; 31] = [
        "hangup",
        "interrupt",
        "quit",
        "illegal instruction",
        "trace/breakpoint trap",
        "aborted",
        "bus error",
        "floating point exception",
        "killed",
        "user defined signal 1",
        "segmentation fault",
        "user defined signal 2",
        "broken pipe",
        "alarm clock",
        "terminated",
        "stack fault",
        "child exited",
        "continued",
        "stopped (signal)",
        "stopped",
        "stopped (tty input)",
        "stopped (tty output)",
        "urgent I/O condition",
        "CPU time limit exceeded",
        "file size limit exceeded",
        "virtual timer expired",
        "profiling timer expired",
        "window changed",
        "I/O possible",
        "power failure",
        "bad system call",
    ];
    usize::try_from(signal)
        .ok()
        .and_then(|n| n.checked_sub(1))
        .and_then(|i| NAMES.get(i))
        .map_or_else(|| format!("signal {signal}"), |name| (*name).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aetherium_types::agent::ProcessConfig;

    #[test]
    fn end_events_read_like_envd() {
        // Raw wait statuses: exit code in the second byte, signal in the low bits.
        let exited = end_event(ExitStatus::from_raw(3 << 8));
        assert_eq!(
            exited,
            EndEvent {
                exit_code: 3,
                exited: true,
                status: "exit status 3".into(),
                error: Some("exit status 3".into()),
            }
        );
        let clean = end_event(ExitStatus::from_raw(0));
        assert_eq!((clean.exit_code, clean.error), (0, None));
        let killed = end_event(ExitStatus::from_raw(9));
        assert_eq!(
            (killed.exit_code, killed.exited, killed.status.as_str()),
            (-1, false, "signal: killed")
        );
        let dumped = end_event(ExitStatus::from_raw(11 | 0x80));
        assert_eq!(dumped.status, "signal: segmentation fault (core dumped)");
        assert_eq!(signal_description(64), "signal 64");
        assert_eq!(signal_description(15), "terminated");
    }

    fn info(pid: u32, tag: Option<&str>) -> ProcessInfo {
        ProcessInfo {
            config: ProcessConfig::default(),
            pid,
            tag: tag.map(str::to_string),
        }
    }

    #[test]
    fn table_resolves_pids_and_tags() {
        let table = ProcessTable::default();
        table.insert(info(20, Some("web")));
        let ten = table.insert(info(10, Some("web")));
        let thirty = table.insert(info(30, None));
        assert_eq!(table.resolve(&ProcessSelector::Pid(30)), Some(30));
        assert_eq!(table.resolve(&ProcessSelector::Pid(31)), None);
        assert_eq!(table.resolve(&ProcessSelector::Tag("web".into())), Some(10));
        assert_eq!(table.resolve(&ProcessSelector::Tag("db".into())), None);
        table.remove(10, ten);
        // pid 30 reused: the old supervisor's removal must not unlist the new one.
        table.insert(info(30, Some("new")));
        table.remove(30, thirty);
        assert_eq!(
            table.list().iter().map(|p| p.pid).collect::<Vec<_>>(),
            vec![20, 30]
        );
    }

    #[test]
    fn start_validates_before_spawning() {
        let table = Arc::new(ProcessTable::default());
        let code = |request: StartRequest| start(&table, request).map(|_| ()).map_err(|e| e.code);
        assert_eq!(
            code(StartRequest::default()),
            Err("invalid_argument".into())
        );
        let mut bad_cwd = StartRequest::default();
        bad_cwd.process.cmd = "true".into();
        bad_cwd.process.cwd = Some("/definitely/not/here".into());
        assert_eq!(code(bad_cwd), Err("invalid_argument".into()));
        let mut pty = StartRequest::default();
        pty.process.cmd = "true".into();
        pty.pty = Some(Default::default());
        assert_eq!(code(pty), Err("unimplemented".into()));
        assert!(table.list().is_empty());
    }

    #[test]
    fn unspecified_signal_is_refused() {
        let table = ProcessTable::default();
        let err = send_signal(&table, &ProcessSelector::Pid(1), Signal::Unspecified)
            .expect_err("unspecified");
        assert_eq!(err.code, "invalid_argument");
        let err =
            send_signal(&table, &ProcessSelector::Pid(1), Signal::Sigterm).expect_err("not ours");
        assert_eq!(err.code, "not_found");
    }
}
