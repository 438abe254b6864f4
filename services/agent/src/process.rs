//! The `process.Process` service's processes: spawning (pipes or a pty), the table
//! behind `List` and the selectors, fan-out of output to any number of subscribers
//! (`Start` and `Connect` streams), input, signals and resizing.
//!
//! A process belongs to the agent, not to the HTTP connection that started it (envd's
//! semantics): a supervisor task reads its output and reaps it whether or not anyone
//! listens. Output read while nobody listens is dropped, so the child never blocks
//! on a full pipe.
//!
//! Memory is bounded by back-pressure, not by dropping: each subscriber has a queue
//! of [`EVENT_QUEUE`] events of at most [`CHUNK_BYTES`] each, and the supervisor
//! waits for room in every subscriber's queue before it reads more output. A slow
//! subscriber therefore slows the process down (as a slow reader of a pipe does); a
//! subscriber that has gone (its connection closed) is dropped at the next event.
//! A process has at most [`MAX_SUBSCRIBERS`] subscribers.
//!
//! Over 800 lines: one process table and the state machine every RPC of the service shares (spawn, fan-out, input, signals, resize).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use aetherium_types::agent::{
    Base64Bytes, ConnectError, DataEvent, EndEvent, ProcessConfig, ProcessEvent, ProcessInfo,
    ProcessInput, ProcessSelector, Pty, Signal, StartEvent, StartRequest, code,
};
use bytes::{BufMut as _, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use crate::connect::{error, invalid_argument};
use crate::pty;
use crate::users::{self, User};

/// Read size for a child's pipes: large enough that a fast writer costs few events
/// (envd uses 32 KiB; 128 KiB halves the per-byte overhead of `cat`)...
const CHUNK_BYTES: usize = 128 * 1024;
/// Capacity asked for the child's stdout pipe.
const PIPE_BYTES: usize = 1024 * 1024;
/// ...and for its pty.
const PTY_CHUNK_BYTES: usize = 16 * 1024;
/// Pipe output is read into buffers of this many chunks, cut into the chunks that go
/// out (see [`ReadBuffer`])...
const BUFFER_CHUNKS: usize = 4;
/// ...and at most this many filled buffers are kept for reuse while output streams.
const SPARE_BUFFERS: usize = 6;
/// Events queued per subscriber. Small: when a client reads slowly, the child
/// should feel back-pressure rather than the agent buffering its output.
pub const EVENT_QUEUE: usize = 16;
/// Subscribers (Start plus Connect streams) one process may have at once.
pub const MAX_SUBSCRIBERS: usize = 32;
/// After the child exits, its pipes may still hold output, or stay open because a
/// background grandchild inherited them. We keep reading until EOF, or until the
/// pipes have been silent this long...
const DRAIN_IDLE: Duration = Duration::from_millis(100);
/// ...or this much more has been read (more than a pipe can hold, so only a chatty
/// grandchild hits it).
const DRAIN_MAX_BYTES: usize = 1024 * 1024;
/// `TERM` of pty processes that set none.
const DEFAULT_TERM: &str = "xterm-256color";

type Event = Result<Arc<ProcessEvent>, ConnectError>;
/// The receiving end of a Start or Connect stream.
pub type Events = mpsc::Receiver<Event>;

/// The running processes, by pid. A pid leaves the table as soon as its supervisor
/// has reaped it, so a listed pid has not been reused.
#[derive(Default)]
pub struct ProcessTable {
    processes: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    by_pid: HashMap<u32, Arc<Process>>,
    next_serial: u64,
}

/// One running process.
pub struct Process {
    pid: u32,
    /// Tells a reused pid's entry from the one a supervisor inserted.
    serial: u64,
    info: ProcessInfo,
    /// The write end of its stdin pipe; `None` without one (`stdin: false`, a pty)
    /// or once closed.
    stdin: tokio::sync::Mutex<Option<ChildStdin>>,
    pty: Option<Arc<pty::Master>>,
    fanout: Mutex<Fanout>,
}

#[derive(Default)]
struct Fanout {
    subscribers: Vec<mpsc::Sender<Event>>,
    /// Set with the end event: no subscriber may join after it.
    ended: bool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing holding these locks can leave the data inconsistent, so a poisoned lock
    // is still usable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ProcessTable {
    pub fn list(&self) -> Vec<ProcessInfo> {
        let mut processes: Vec<ProcessInfo> = lock(&self.processes)
            .by_pid
            .values()
            .map(|p| p.info.clone())
            .collect();
        processes.sort_by_key(|p| p.pid);
        processes
    }

    pub fn len(&self) -> usize {
        lock(&self.processes).by_pid.len()
    }

    /// The process a selector names; for a tag shared by several processes, the
    /// oldest (lowest pid) one.
    pub fn resolve(&self, selector: &ProcessSelector) -> Option<Arc<Process>> {
        let entries = lock(&self.processes);
        match selector {
            ProcessSelector::Pid(pid) => entries.by_pid.get(pid).cloned(),
            ProcessSelector::Tag(tag) => entries
                .by_pid
                .values()
                .filter(|p| p.info.tag.as_deref() == Some(tag.as_str()))
                .min_by_key(|p| p.pid)
                .cloned(),
        }
    }

    fn get(&self, selector: Option<&ProcessSelector>) -> Result<Arc<Process>, ConnectError> {
        let selector = selector.ok_or_else(|| invalid_argument("process selector is missing"))?;
        self.resolve(selector).ok_or_else(|| {
            error(
                code::NOT_FOUND,
                format!("process with {selector} not found"),
            )
        })
    }

    fn insert(&self, make: impl FnOnce(u64) -> Process) -> Arc<Process> {
        let mut entries = lock(&self.processes);
        let serial = entries.next_serial;
        entries.next_serial += 1;
        let process = Arc::new(make(serial));
        entries.by_pid.insert(process.pid, Arc::clone(&process));
        process
    }

    /// Unlists a process, unless its pid has meanwhile been reused by a newer one.
    fn remove(&self, pid: u32, serial: u64) {
        let mut entries = lock(&self.processes);
        if entries.by_pid.get(&pid).is_some_and(|p| p.serial == serial) {
            entries.by_pid.remove(&pid);
        }
    }
}

impl Process {
    fn has_subscribers(&self) -> bool {
        !lock(&self.fanout).subscribers.is_empty()
    }

    fn subscribe(&self, tx: mpsc::Sender<Event>) -> Result<(), ConnectError> {
        let mut fanout = lock(&self.fanout);
        if fanout.ended {
            return Err(error(
                code::NOT_FOUND,
                format!("process {} has ended", self.pid),
            ));
        }
        if fanout.subscribers.len() >= MAX_SUBSCRIBERS {
            return Err(error(
                code::RESOURCE_EXHAUSTED,
                format!("process {} already has {MAX_SUBSCRIBERS} streams", self.pid),
            ));
        }
        fanout.subscribers.push(tx);
        Ok(())
    }

    /// Delivers an event to every subscriber, waiting for room in each queue
    /// (back-pressure); drops the subscribers whose stream has gone.
    async fn broadcast(&self, event: ProcessEvent) {
        let subscribers = lock(&self.fanout).subscribers.clone();
        if subscribers.is_empty() {
            return;
        }
        let event = Arc::new(event);
        let mut gone = Vec::new();
        for subscriber in &subscribers {
            if subscriber.send(Ok(Arc::clone(&event))).await.is_err() {
                gone.push(subscriber);
            }
        }
        if !gone.is_empty() {
            crate::log!("pid {}: {} stream(s) gone", self.pid, gone.len());
            lock(&self.fanout)
                .subscribers
                .retain(|s| !gone.iter().any(|g| g.same_channel(s)));
        }
    }

    /// The last event: no subscriber joins after it.
    async fn finish(&self, end: EndEvent) {
        let subscribers = {
            let mut fanout = lock(&self.fanout);
            fanout.ended = true;
            std::mem::take(&mut fanout.subscribers)
        };
        let event = Arc::new(ProcessEvent::End(end));
        for subscriber in subscribers {
            let _ = subscriber.send(Ok(Arc::clone(&event))).await;
        }
    }
}

/// What a Start request needs besides the request itself.
pub struct Launch {
    pub user: User,
    /// Working directory of processes that name none (else the user's home).
    pub default_workdir: Option<PathBuf>,
    /// Variables from `/init` and the secrets, applied before the request's own.
    pub env: Vec<(String, String)>,
    /// Kill the process (SIGKILL to its group) after this long (`Connect-Timeout-Ms`
    /// on Start, as envd does).
    pub timeout: Option<Duration>,
}

/// Spawns the process a Start request describes and its supervisor. Returns its pid
/// and the events of its Start stream: the start event first, the end event last.
pub fn start(
    table: &Arc<ProcessTable>,
    request: StartRequest,
    launch: Launch,
) -> Result<Events, ConnectError> {
    let config = request.process;
    if config.cmd.is_empty() {
        return Err(invalid_argument("process.cmd is empty"));
    }
    let cwd = working_directory(&config, &launch)?;
    let mut command = Command::new(&config.cmd);
    command
        .args(&config.args)
        .current_dir(&cwd)
        .env("HOME", &launch.user.home)
        .env("USER", &launch.user.name)
        .env("LOGNAME", &launch.user.name)
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .envs(&config.envs)
        // The agent's own access token must never reach sandbox code: whoever holds
        // it can run anything as root here.
        .env_remove(crate::cli::ACCESS_TOKEN_ENV)
        // The process outlives its request; the supervisor owns and reaps it.
        .kill_on_drop(false);
    if launch.user.uid != rustix::process::geteuid().as_raw() {
        command.uid(launch.user.uid).gid(launch.user.gid);
    }
    crate::syscall_filter::apply_in_child(&mut command);

    let (child, outputs, stdin, master) = match &request.pty {
        Some(Pty { size }) => {
            let pair = pty::open(*size)
                .map_err(|e| error(code::INTERNAL, format!("allocating a pty: {e}")))?;
            let slave = |fd: &std::os::fd::OwnedFd| {
                fd.try_clone()
                    .map(Stdio::from)
                    .map_err(|e| error(code::INTERNAL, format!("duplicating the pty: {e}")))
            };
            command
                .stdin(slave(&pair.slave)?)
                .stdout(slave(&pair.slave)?)
                .stderr(Stdio::from(pair.slave));
            let has_term =
                config.envs.contains_key("TERM") || launch.env.iter().any(|(k, _)| k == "TERM");
            if !has_term {
                command.env("TERM", DEFAULT_TERM);
            }
            // A new session (so also a new process group: signals reach the group).
            pty::make_controlling_terminal(&mut command);
            let master = pty::Master::new(pair.master)
                .map(Arc::new)
                .map_err(|e| error(code::INTERNAL, format!("registering the pty: {e}")))?;
            // The agent's copies of the slave must be closed once the child has its
            // own, or reading the master would never see the end: `command` owns
            // them and is dropped right after spawning.
            let child = command.spawn().map_err(|e| spawn_error(&config.cmd, e))?;
            drop(command);
            (
                child,
                Outputs::Pty(Some(Arc::clone(&master))),
                None,
                Some(master),
            )
        }
        None => {
            // envd's default for an absent `stdin` is a pipe.
            let with_stdin = request.stdin.unwrap_or(true);
            command
                .stdin(if with_stdin {
                    Stdio::piped()
                } else {
                    Stdio::null()
                })
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                // Own process group, so signals reach the children it spawns.
                .process_group(0);
            let mut child = command.spawn().map_err(|e| spawn_error(&config.cmd, e))?;
            let outputs = Outputs::Pipes {
                stdout: child.stdout.take(),
                stderr: child.stderr.take(),
            };
            if let Outputs::Pipes {
                stdout: Some(out), ..
            } = &outputs
            {
                // A 1 MiB pipe (the default cap for unprivileged processes) instead of
                // 64 KiB lets a fast writer run on while we forward: far fewer
                // wake-ups per byte. Best effort: a smaller pipe still works.
                let _ = rustix::pipe::fcntl_setpipe_size(out, PIPE_BYTES);
            }
            let stdin = child.stdin.take();
            (child, outputs, stdin, None)
        }
    };
    let Some(pid) = child.id() else {
        // Only possible once the child has been waited for, which it has not.
        return Err(error(code::INTERNAL, "spawned child has no pid"));
    };
    crate::log!(
        "pid {pid} started: {}{}",
        config.cmd,
        if master.is_some() { " (pty)" } else { "" }
    );
    let (tx, rx) = mpsc::channel(EVENT_QUEUE);
    let process = table.insert(|serial| Process {
        pid,
        serial,
        info: ProcessInfo {
            config,
            pid,
            tag: request.tag,
        },
        stdin: tokio::sync::Mutex::new(stdin),
        pty: master,
        fanout: Mutex::new(Fanout {
            subscribers: vec![tx],
            ended: false,
        }),
    });
    tokio::spawn(supervise(
        child,
        process,
        Arc::clone(table),
        outputs,
        launch.timeout,
    ));
    Ok(rx)
}

/// The process's cwd: the requested one (resolved like every path), else the default
/// working directory, else the user's home, else `/`.
fn working_directory(config: &ProcessConfig, launch: &Launch) -> Result<PathBuf, ConnectError> {
    match config.cwd.as_deref().filter(|cwd| !cwd.is_empty()) {
        Some(cwd) => {
            let cwd = users::resolve_path(cwd, &launch.user, None)?;
            // Checked up front so a bad cwd is not reported as a missing executable:
            // both come back from spawn as ENOENT.
            match std::fs::metadata(&cwd) {
                Ok(meta) if meta.is_dir() => Ok(cwd),
                Ok(_) => Err(invalid_argument(format!(
                    "cwd '{}' is not a directory",
                    cwd.display()
                ))),
                Err(e) => Err(invalid_argument(format!(
                    "cwd '{}' does not exist: {e}",
                    cwd.display()
                ))),
            }
        }
        None => Ok([
            launch.default_workdir.as_deref(),
            Some(launch.user.home.as_path()),
        ]
        .into_iter()
        .flatten()
        .find(|dir| dir.is_dir())
        .unwrap_or(Path::new("/"))
        .to_path_buf()),
    }
}

fn spawn_error(cmd: &str, error: io::Error) -> ConnectError {
    match error.kind() {
        // The cwd was checked above, so ENOENT is the executable.
        io::ErrorKind::NotFound => ConnectError::new(
            code::NOT_FOUND,
            format!("executable {cmd:?} not found: {error}"),
        ),
        io::ErrorKind::PermissionDenied => ConnectError::new(
            code::PERMISSION_DENIED,
            format!("cannot execute {cmd:?}: {error}"),
        ),
        io::ErrorKind::InvalidInput => invalid_argument(format!("cannot execute {cmd:?}: {error}")),
        _ => ConnectError::new(code::INTERNAL, format!("starting {cmd:?}: {error}")),
    }
}

/// `Connect`: a new stream of a running process's events: the start event, then
/// whatever it outputs from now on, then its end.
pub fn connect(
    table: &ProcessTable,
    selector: Option<&ProcessSelector>,
) -> Result<Events, ConnectError> {
    let process = table.get(selector)?;
    let (tx, rx) = mpsc::channel(EVENT_QUEUE);
    let start = Arc::new(ProcessEvent::Start(StartEvent { pid: process.pid }));
    // A fresh channel has room for its first event.
    tx.try_send(Ok(start))
        .map_err(|_| error(code::INTERNAL, "new stream has no room"))?;
    process.subscribe(tx)?;
    Ok(rx)
}

/// Sends a signal to the process group of a listed process.
pub fn send_signal(
    table: &ProcessTable,
    selector: Option<&ProcessSelector>,
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
    let process = table.get(selector)?;
    let pid = process.pid;
    let gone = || error(code::NOT_FOUND, format!("process with pid {pid} not found"));
    match kill_group(pid, signal_) {
        Ok(()) => {
            crate::log!("pid {pid}: sent {signal:?} to its process group");
            Ok(())
        }
        // Everything in the group already exited; the supervisor is about to drop it.
        Err(rustix::io::Errno::SRCH) => Err(gone()),
        Err(e) => Err(error(
            code::INTERNAL,
            format!("signalling process group {pid}: {e}"),
        )),
    }
}

/// Children lead their own process group (or session, with a pty): pgid = pid.
fn kill_group(pid: u32, signal: rustix::process::Signal) -> Result<(), rustix::io::Errno> {
    let pgid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or(rustix::io::Errno::SRCH)?;
    rustix::process::kill_process_group(pgid, signal)
}

/// `SendInput` and the data of `StreamInput`: bytes to the stdin pipe or the pty.
/// Waits until the process has taken them (a process that does not read makes this
/// wait, as a full pipe would).
pub async fn send_input(
    table: &ProcessTable,
    selector: Option<&ProcessSelector>,
    input: Option<&ProcessInput>,
) -> Result<(), ConnectError> {
    let process = table.get(selector)?;
    write_input(&process, input).await
}

pub async fn write_input(
    process: &Process,
    input: Option<&ProcessInput>,
) -> Result<(), ConnectError> {
    let pid = process.pid;
    match input {
        None => Err(invalid_argument("input is missing")),
        Some(ProcessInput::Stdin(Base64Bytes(data))) => {
            if process.pty.is_some() {
                return Err(error(
                    code::FAILED_PRECONDITION,
                    format!("process {pid} has a pty: send pty input, not stdin"),
                ));
            }
            let mut stdin = process.stdin.lock().await;
            let Some(pipe) = stdin.as_mut() else {
                return Err(error(
                    code::FAILED_PRECONDITION,
                    format!("stdin of process {pid} is not enabled or closed"),
                ));
            };
            let written = match pipe.write_all(data).await {
                Ok(()) => pipe.flush().await,
                Err(e) => Err(e),
            };
            written.map_err(|e| {
                error(
                    code::INTERNAL,
                    format!("writing to stdin of process {pid}: {e}"),
                )
            })
        }
        Some(ProcessInput::Pty(Base64Bytes(data))) => {
            let Some(master) = &process.pty else {
                return Err(error(
                    code::FAILED_PRECONDITION,
                    format!("process {pid} has no pty: send stdin, not pty input"),
                ));
            };
            master.write_all(data).await.map_err(|e| {
                error(
                    code::INTERNAL,
                    format!("writing to the pty of process {pid}: {e}"),
                )
            })
        }
    }
}

/// `StreamInput`'s start message: the process the stream's input goes to.
pub fn input_target(
    table: &ProcessTable,
    selector: Option<&ProcessSelector>,
) -> Result<Arc<Process>, ConnectError> {
    table.get(selector)
}

/// `CloseStdin`: EOF on the process's stdin (pipes only; a pty reads Ctrl-D).
pub async fn close_stdin(
    table: &ProcessTable,
    selector: Option<&ProcessSelector>,
) -> Result<(), ConnectError> {
    let process = table.get(selector)?;
    if process.pty.is_some() {
        return Err(error(
            code::FAILED_PRECONDITION,
            format!(
                "process {} has a pty: send Ctrl-D (0x04) instead of closing stdin",
                process.pid
            ),
        ));
    }
    // Dropping the pipe closes it; closing twice is fine, as in envd.
    drop(process.stdin.lock().await.take());
    Ok(())
}

/// `Update`: resizes the process's pty.
pub fn update(
    table: &ProcessTable,
    selector: Option<&ProcessSelector>,
    pty: Option<&Pty>,
) -> Result<(), ConnectError> {
    let process = table.get(selector)?;
    let Some(Pty { size }) = pty else {
        return Ok(());
    };
    let Some(master) = &process.pty else {
        return Err(error(
            code::FAILED_PRECONDITION,
            format!("process {} has no pty to resize", process.pid),
        ));
    };
    master.resize(*size).map_err(|e| {
        error(
            code::INTERNAL,
            format!("resizing the pty of process {}: {e}", process.pid),
        )
    })
}

/// Where a child's output comes from.
enum Outputs {
    Pipes {
        stdout: Option<tokio::process::ChildStdout>,
        stderr: Option<tokio::process::ChildStderr>,
    },
    Pty(Option<Arc<pty::Master>>),
}

#[derive(Clone, Copy)]
enum Source {
    Stdout,
    Stderr,
    Pty,
}

/// Where a pipe's output is read: buffers of [`BUFFER_CHUNKS`] chunks, each read
/// landing after the previous one and split off as the `Bytes` of its data event.
/// That chunk is what every stream sends, as is: no copy between the pipe and the
/// socket. A filled buffer is reused once every chunk cut from it has been sent
/// (dropped): while output streams, a few buffers go round (fresh allocations would
/// cost a page fault per 4 KiB), at most [`SPARE_BUFFERS`] besides the current one.
/// What is queued stays bounded by the queues (a chunk pins at most one buffer), and
/// the spare buffers are let go when output slows down.
struct ReadBuffer {
    buf: BytesMut,
    spent: VecDeque<BytesMut>,
}

impl ReadBuffer {
    fn new() -> Self {
        ReadBuffer {
            buf: BytesMut::new(),
            spent: VecDeque::new(),
        }
    }

    /// Makes room for a whole chunk: in the current buffer, else in the first spent
    /// one whose chunks have all gone, else in a new one.
    fn prepare(&mut self) {
        if self.buf.capacity() >= CHUNK_BYTES {
            return;
        }
        let size = CHUNK_BYTES * BUFFER_CHUNKS;
        self.spent.push_back(std::mem::take(&mut self.buf));
        match self.spent.iter_mut().position(|b| b.try_reclaim(size)) {
            Some(free) => self.buf = self.spent.remove(free).unwrap_or_default(),
            None => {
                if self.spent.len() > SPARE_BUFFERS {
                    self.spent.pop_front();
                }
                self.buf = BytesMut::with_capacity(size);
            }
        }
    }

    /// The bytes the last read brought.
    fn take(&mut self) -> Bytes {
        let chunk = self.buf.split().freeze();
        if chunk.len() < CHUNK_BYTES / 4 {
            // A slow writer: a single buffer will do.
            self.spent.clear();
        }
        chunk
    }
}

/// Reads a chunk from a pipe that may already be closed (`None`: never ready).
async fn read_pipe<R: AsyncRead + Unpin>(
    pipe: &mut Option<R>,
    buf: &mut ReadBuffer,
) -> io::Result<usize> {
    match pipe {
        Some(pipe) => pipe.read_buf(&mut (&mut buf.buf).limit(CHUNK_BYTES)).await,
        None => std::future::pending().await,
    }
}

async fn read_pty(master: &Option<Arc<pty::Master>>, buf: &mut [u8]) -> io::Result<usize> {
    match master {
        Some(master) => master.read(buf).await,
        None => std::future::pending().await,
    }
}

/// Owns a child until it is reaped: fans its output out as data events, then the end
/// event.
async fn supervise(
    mut child: Child,
    process: Arc<Process>,
    table: Arc<ProcessTable>,
    outputs: Outputs,
    timeout: Option<Duration>,
) {
    let pid = process.pid;
    process
        .broadcast(ProcessEvent::Start(StartEvent { pid }))
        .await;

    let (mut stdout, mut stderr, mut pty) = match outputs {
        Outputs::Pipes { stdout, stderr } => (stdout, stderr, None),
        Outputs::Pty(master) => (None, None, master),
    };
    let mut out_buf = ReadBuffer::new();
    let mut err_buf = ReadBuffer::new();
    let mut pty_buf = vec![0u8; if pty.is_some() { PTY_CHUNK_BYTES } else { 0 }];
    let mut status: Option<io::Result<ExitStatus>> = None;
    let mut drained_after_exit = 0usize;
    let drain_timer = tokio::time::sleep(DRAIN_IDLE);
    tokio::pin!(drain_timer);
    let deadline = tokio::time::sleep(timeout.unwrap_or(Duration::ZERO));
    tokio::pin!(deadline);
    let mut timed_out = timeout.is_none();

    loop {
        let open = stdout.is_some() || stderr.is_some() || pty.is_some();
        if status.is_some() && (!open || drained_after_exit > DRAIN_MAX_BYTES) {
            break;
        }
        if stdout.is_some() {
            out_buf.prepare();
        }
        if stderr.is_some() {
            err_buf.prepare();
        }
        let (source, n) = tokio::select! {
            read = read_pipe(&mut stdout, &mut out_buf) => match read {
                Ok(n) if n > 0 => (Source::Stdout, n),
                _ => { stdout = None; continue; }
            },
            read = read_pipe(&mut stderr, &mut err_buf) => match read {
                Ok(n) if n > 0 => (Source::Stderr, n),
                _ => { stderr = None; continue; }
            },
            read = read_pty(&pty, &mut pty_buf) => match read {
                Ok(n) if n > 0 => (Source::Pty, n),
                _ => { pty = None; continue; }
            },
            exit = child.wait(), if status.is_none() => {
                // Reaped: the pid is free for reuse, so it must leave the table now.
                table.remove(pid, process.serial);
                status = Some(exit);
                drain_timer.as_mut().reset(tokio::time::Instant::now() + DRAIN_IDLE);
                continue;
            }
            () = &mut deadline, if !timed_out => {
                timed_out = true;
                crate::log!("pid {pid}: timed out, killing its process group");
                let _ = kill_group(pid, rustix::process::Signal::KILL);
                continue;
            }
            () = &mut drain_timer, if status.is_some() => break,
        };
        if status.is_some() {
            drained_after_exit += n;
        }
        let data = match source {
            Source::Stdout => DataEvent::Stdout(Base64Bytes(out_buf.take())),
            Source::Stderr => DataEvent::Stderr(Base64Bytes(err_buf.take())),
            Source::Pty => DataEvent::Pty(Base64Bytes(Bytes::copy_from_slice(&pty_buf[..n]))),
        };
        if process.has_subscribers() {
            process.broadcast(ProcessEvent::Data(data)).await;
        }
        // Restarted after every chunk (and after any wait for a slow client), so it
        // only fires when the output was idle for the whole period.
        drain_timer
            .as_mut()
            .reset(tokio::time::Instant::now() + DRAIN_IDLE);
    }
    // Closing our ends makes a grandchild still writing to them get SIGPIPE/EPIPE.
    drop((stdout, stderr, pty));
    drop(process.stdin.lock().await.take());

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
    process.finish(end).await;
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
mod tests;
