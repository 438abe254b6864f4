//! `WatchDir` and the non-streaming watchers (`CreateWatcher`, `GetWatcherEvents`,
//! `RemoveWatcher`), on inotify. Event types map as envd's fsnotify does: create or
//! moved-in is CREATE, modify WRITE, attribute change CHMOD, delete REMOVE, moved-out
//! RENAME; `name` is the path relative to the watched directory. A recursive watch
//! also watches subdirectories, including ones created later.
//!
//! Bounded: at most [`MAX_WATCHES`] directories per watch and [`MAX_WATCHERS`]
//! non-streaming watchers, whose undelivered events are capped at
//! [`MAX_PENDING_EVENTS`] (then the watcher fails with `resource_exhausted`, as an
//! inotify queue overflow does). A slow `WatchDir` client makes the kernel's queue
//! overflow rather than the agent buffer: the stream then ends with that error.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use aetherium_types::agent::{
    ConnectError, EventType, FilesystemEvent, KeepAlive, WatchDirRequest, WatchDirResponse, code,
};
use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
use tokio::net::unix::pipe;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::connect::{error, invalid_argument};
use crate::filesystem::{entry_info, io_error};
use crate::users::Names;

pub const MAX_WATCHES: usize = 8192;
pub const MAX_WATCHERS: usize = 128;
pub const MAX_PENDING_EVENTS: usize = 10_000;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One inotify instance watching a directory (and its subdirectories, if recursive).
pub struct Watch {
    /// The inotify fd, driven by readiness like a pipe (it is non-blocking).
    fd: pipe::Receiver,
    root: PathBuf,
    recursive: bool,
    include_entry: bool,
    dirs: HashMap<i32, PathBuf>,
    root_wd: i32,
    buf: Vec<u8>,
}

fn watch_flags() -> WatchFlags {
    WatchFlags::CREATE
        | WatchFlags::MODIFY
        | WatchFlags::ATTRIB
        | WatchFlags::DELETE
        | WatchFlags::DELETE_SELF
        | WatchFlags::MOVED_FROM
        | WatchFlags::MOVED_TO
        | WatchFlags::MOVE_SELF
        | WatchFlags::ONLYDIR
}

impl Watch {
    pub fn new(root: PathBuf, request: &WatchDirRequest) -> Result<Watch, ConnectError> {
        match std::fs::metadata(&root) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(invalid_argument(format!(
                    "path {} not a directory",
                    root.display()
                )));
            }
            Err(e) => return Err(io_error("watching", &root, &e)),
        }
        let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)
            .map_err(|e| error(code::RESOURCE_EXHAUSTED, format!("creating a watcher: {e}")))?;
        let fd = pipe::Receiver::from_owned_fd_unchecked(fd)
            .map_err(|e| error(code::INTERNAL, format!("registering a watcher: {e}")))?;
        let mut watch = Watch {
            fd,
            root: root.clone(),
            recursive: request.recursive,
            include_entry: request.include_entry,
            dirs: HashMap::new(),
            root_wd: -1,
            buf: vec![0; 64 * 1024],
        };
        watch.root_wd = watch.add(&root)?;
        if watch.recursive {
            watch.add_tree(&root)?;
        }
        Ok(watch)
    }

    fn add(&mut self, dir: &Path) -> Result<i32, ConnectError> {
        if self.dirs.len() >= MAX_WATCHES {
            return Err(error(
                code::RESOURCE_EXHAUSTED,
                format!("more than {MAX_WATCHES} directories to watch"),
            ));
        }
        let wd = inotify::add_watch(&self.fd, dir, watch_flags())
            .map_err(|e| io_error("watching", dir, &std::io::Error::from(e)))?;
        self.dirs.insert(wd, dir.to_path_buf());
        Ok(wd)
    }

    /// Watches every directory under `dir` (not following symlinks).
    fn add_tree(&mut self, dir: &Path) -> Result<(), ConnectError> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Ok(());
        };
        for entry in entries.filter_map(Result::ok) {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                let path = entry.path();
                // Vanished or unreadable subdirectories are skipped.
                match self.add(&path) {
                    Ok(_) => self.add_tree(&path)?,
                    Err(e) if e.code == code::RESOURCE_EXHAUSTED => return Err(e),
                    Err(_) => {}
                }
            }
        }
        Ok(())
    }

    /// The next batch of events (waits for at least one).
    pub async fn next(&mut self) -> Result<Vec<FilesystemEvent>, ConnectError> {
        loop {
            self.fd
                .readable()
                .await
                .map_err(|e| error(code::INTERNAL, format!("watcher: {e}")))?;
            let n = match self.fd.try_read(&mut self.buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(error(code::INTERNAL, format!("reading watch events: {e}"))),
            };
            let raw = parse_events(&self.buf[..n]);
            let events = self.translate(raw)?;
            if !events.is_empty() {
                return Ok(events);
            }
        }
    }

    fn translate(
        &mut self,
        raw: Vec<(i32, ReadFlags, Option<Vec<u8>>)>,
    ) -> Result<Vec<FilesystemEvent>, ConnectError> {
        let names = if self.include_entry {
            Some(Names::load())
        } else {
            None
        };
        let mut events = Vec::new();
        for (wd, flags, name) in raw {
            if flags.contains(ReadFlags::QUEUE_OVERFLOW) {
                return Err(error(
                    code::RESOURCE_EXHAUSTED,
                    "too many filesystem events: the watch queue overflowed",
                ));
            }
            if flags.contains(ReadFlags::IGNORED) {
                self.dirs.remove(&wd);
                continue;
            }
            let self_event = flags.intersects(ReadFlags::DELETE_SELF | ReadFlags::MOVE_SELF);
            // A subdirectory's own removal is reported by its parent already.
            if self_event && wd != self.root_wd {
                continue;
            }
            let Some(dir) = self.dirs.get(&wd) else {
                continue;
            };
            let path = match &name {
                Some(name) => dir.join(OsStr::from_bytes(name)),
                None => dir.clone(),
            };
            let relative = path.strip_prefix(&self.root).unwrap_or(&path);
            let relative = if relative.as_os_str().is_empty() {
                ".".to_string()
            } else {
                relative.display().to_string()
            };
            let mut types = Vec::new();
            if flags.intersects(ReadFlags::CREATE | ReadFlags::MOVED_TO) {
                types.push(EventType::Create);
                if self.recursive && flags.contains(ReadFlags::ISDIR) && self.add(&path).is_ok() {
                    self.add_tree(&path)?;
                }
            }
            if flags.intersects(ReadFlags::MOVED_FROM | ReadFlags::MOVE_SELF) {
                types.push(EventType::Rename);
            }
            if flags.contains(ReadFlags::ATTRIB) {
                types.push(EventType::Chmod);
            }
            if flags.contains(ReadFlags::MODIFY) {
                types.push(EventType::Write);
            }
            if flags.intersects(ReadFlags::DELETE | ReadFlags::DELETE_SELF) {
                types.push(EventType::Remove);
            }
            let entry = names
                .as_ref()
                .and_then(|names| entry_info(&path, names).ok());
            for kind in types {
                events.push(FilesystemEvent {
                    name: relative.clone(),
                    r#type: kind as i32,
                    entry: entry.clone(),
                });
            }
        }
        Ok(events)
    }
}

/// Splits what a read of an inotify fd returned into `struct inotify_event`s: `wd`,
/// `mask`, `cookie` and `len` (native-endian 32-bit each), then `len` bytes of
/// NUL-padded name. The kernel only returns whole events.
fn parse_events(mut bytes: &[u8]) -> Vec<(i32, ReadFlags, Option<Vec<u8>>)> {
    let mut events = Vec::new();
    let word = |b: &[u8], i: usize| -> [u8; 4] {
        let mut w = [0; 4];
        w.copy_from_slice(&b[i..i + 4]);
        w
    };
    while bytes.len() >= 16 {
        let wd = i32::from_ne_bytes(word(bytes, 0));
        let mask = u32::from_ne_bytes(word(bytes, 4));
        let len = u32::from_ne_bytes(word(bytes, 12)) as usize;
        let Some(name) = bytes.get(16..16 + len) else {
            break;
        };
        let name = name.split(|b| *b == 0).next().filter(|n| !n.is_empty());
        events.push((
            wd,
            ReadFlags::from_bits_retain(mask),
            name.map(<[u8]>::to_vec),
        ));
        bytes = &bytes[16 + len..];
    }
    events
}

/// Feeds a `WatchDir` stream: the start message, then events until the client goes
/// away (the channel closes) or the watch fails.
pub fn stream(mut watch: Watch, tx: mpsc::Sender<Result<WatchDirResponse, ConnectError>>) {
    tokio::spawn(async move {
        if tx
            .send(Ok(WatchDirResponse::Start(KeepAlive {})))
            .await
            .is_err()
        {
            return;
        }
        loop {
            tokio::select! {
                batch = watch.next() => match batch {
                    Ok(events) => {
                        for event in events {
                            if tx.send(Ok(WatchDirResponse::Filesystem(event))).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                },
                () = tx.closed() => return,
            }
        }
    });
}

/// The non-streaming watchers, by id.
#[derive(Default)]
pub struct Watchers {
    by_id: Mutex<HashMap<String, Arc<Polled>>>,
    next_id: AtomicU64,
}

struct Polled {
    events: Mutex<Pending>,
    task: Mutex<Option<AbortHandle>>,
}

#[derive(Default)]
struct Pending {
    events: VecDeque<FilesystemEvent>,
    error: Option<ConnectError>,
}

impl Drop for Polled {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.task).take() {
            task.abort();
        }
    }
}

impl Watchers {
    pub fn create(&self, watch: Watch) -> Result<String, ConnectError> {
        let mut by_id = lock(&self.by_id);
        if by_id.len() >= MAX_WATCHERS {
            return Err(error(
                code::RESOURCE_EXHAUSTED,
                format!("{MAX_WATCHERS} watchers exist already: remove some"),
            ));
        }
        let id = format!("w{}", self.next_id.fetch_add(1, Ordering::Relaxed) + 1);
        let polled = Arc::new(Polled {
            events: Mutex::default(),
            task: Mutex::new(None),
        });
        let weak = Arc::downgrade(&polled);
        let task = tokio::spawn(async move {
            let mut watch = watch;
            loop {
                let batch = watch.next().await;
                let Some(polled) = weak.upgrade() else {
                    return;
                };
                let mut pending = lock(&polled.events);
                match batch {
                    Ok(events) => {
                        pending.events.extend(events);
                        if pending.events.len() > MAX_PENDING_EVENTS {
                            pending.error = Some(error(
                                code::RESOURCE_EXHAUSTED,
                                format!("more than {MAX_PENDING_EVENTS} events were not fetched"),
                            ));
                            return;
                        }
                    }
                    Err(e) => {
                        pending.error = Some(e);
                        return;
                    }
                }
            }
        });
        *lock(&polled.task) = Some(task.abort_handle());
        by_id.insert(id.clone(), polled);
        Ok(id)
    }

    /// The events since the last call; the watcher's error once it has failed.
    pub fn take(&self, id: &str) -> Result<Vec<FilesystemEvent>, ConnectError> {
        let polled = lock(&self.by_id)
            .get(id)
            .cloned()
            .ok_or_else(|| not_found(id))?;
        let mut pending = lock(&polled.events);
        if let Some(e) = &pending.error {
            return Err(e.clone());
        }
        Ok(pending.events.drain(..).collect())
    }

    pub fn remove(&self, id: &str) -> Result<(), ConnectError> {
        lock(&self.by_id)
            .remove(id)
            .map(drop)
            .ok_or_else(|| not_found(id))
    }
}

fn not_found(id: &str) -> ConnectError {
    error(code::NOT_FOUND, format!("watcher with id {id} not found"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn next(watch: &mut Watch) -> Vec<(String, i32)> {
        tokio::time::timeout(Duration::from_secs(5), watch.next())
            .await
            .expect("events in time")
            .expect("events")
            .into_iter()
            .map(|e| (e.name, e.r#type))
            .collect()
    }

    #[tokio::test]
    async fn reports_changes_recursively() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_path_buf();
        std::fs::create_dir(root.join("sub")).expect("sub");
        let request = WatchDirRequest {
            path: String::new(),
            recursive: true,
            include_entry: true,
        };
        let mut watch = Watch::new(root.clone(), &request).expect("watch");
        std::fs::write(root.join("sub/f"), b"x").expect("write");
        let events = next(&mut watch).await;
        assert!(
            events.contains(&("sub/f".into(), EventType::Create as i32)),
            "{events:?}"
        );
        std::fs::create_dir(root.join("sub/new")).expect("new dir");
        let mut seen = next(&mut watch).await;
        std::fs::write(root.join("sub/new/deep"), b"x").expect("deep");
        while !seen.contains(&("sub/new/deep".into(), EventType::Create as i32)) {
            seen.extend(next(&mut watch).await);
        }
        std::fs::rename(root.join("sub/f"), root.join("g")).expect("rename");
        let mut seen = Vec::new();
        while !seen.contains(&("g".into(), EventType::Create as i32)) {
            seen.extend(next(&mut watch).await);
        }
        assert!(
            seen.contains(&("sub/f".into(), EventType::Rename as i32)),
            "{seen:?}"
        );
        std::fs::remove_file(root.join("g")).expect("remove");
        let mut seen = Vec::new();
        while !seen.contains(&("g".into(), EventType::Remove as i32)) {
            seen.extend(next(&mut watch).await);
        }
    }

    #[tokio::test]
    async fn refuses_what_is_not_a_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("f");
        std::fs::write(&file, b"").expect("file");
        let request = WatchDirRequest::default();
        assert_eq!(
            Watch::new(file, &request).map(|_| ()).map_err(|e| e.code),
            Err(code::INVALID_ARGUMENT.to_string())
        );
        assert_eq!(
            Watch::new(dir.path().join("missing"), &request)
                .map(|_| ())
                .map_err(|e| e.code),
            Err(code::NOT_FOUND.to_string())
        );
    }

    #[tokio::test]
    async fn polled_watchers_collect_until_fetched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let watchers = Watchers::default();
        let watch =
            Watch::new(dir.path().to_path_buf(), &WatchDirRequest::default()).expect("watch");
        let id = watchers.create(watch).expect("create");
        std::fs::write(dir.path().join("a"), b"1").expect("write");
        let mut events = Vec::new();
        for _ in 0..50 {
            events.extend(watchers.take(&id).expect("take"));
            if !events.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(events.first().map(|e| e.name.as_str()), Some("a"));
        watchers.remove(&id).expect("remove");
        assert_eq!(
            watchers.take(&id).map_err(|e| e.code),
            Err(code::NOT_FOUND.into())
        );
        assert!(watchers.remove(&id).is_err());
    }
}
