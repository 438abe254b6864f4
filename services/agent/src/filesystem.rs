//! The `filesystem.Filesystem` service's one-shot calls (Stat, MakeDir, Move,
//! ListDir, Remove) and the entry descriptions they share with `/files` and the
//! watchers.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use aetherium_types::agent::{
    ConnectError, EntryInfo, EntryResponse, FileType, ListDirRequest, ListDirResponse, MoveRequest,
    PathRequest, Timestamp, code,
};

use crate::connect::{error, invalid_argument};
use crate::users::{self, Names, User};

/// Entries one ListDir answers at most (a deep listing of `/` would otherwise make
/// a response of any size).
pub const MAX_LIST_ENTRIES: usize = 100_000;

/// Who a call runs as and how its relative paths resolve.
pub struct Context {
    pub user: User,
    pub default_workdir: Option<PathBuf>,
}

impl Context {
    pub fn resolve(&self, path: &str) -> Result<PathBuf, ConnectError> {
        users::resolve_path(path, &self.user, self.default_workdir.as_deref())
    }
}

/// An I/O error as a Connect error about `path`.
pub fn io_error(what: &str, path: &Path, e: &io::Error) -> ConnectError {
    let code = match e.kind() {
        io::ErrorKind::NotFound => code::NOT_FOUND,
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
            code::PERMISSION_DENIED
        }
        io::ErrorKind::AlreadyExists => code::ALREADY_EXISTS,
        io::ErrorKind::NotADirectory
        | io::ErrorKind::IsADirectory
        | io::ErrorKind::InvalidInput => code::INVALID_ARGUMENT,
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => code::RESOURCE_EXHAUSTED,
        _ => code::INTERNAL,
    };
    error(code, format!("{what} '{}': {e}", path.display()))
}

fn file_type(meta: &fs::Metadata) -> FileType {
    if meta.is_dir() {
        FileType::Directory
    } else if meta.is_file() {
        FileType::File
    } else {
        FileType::Unspecified
    }
}

/// Go's `FileMode.String()` for a `st_mode`, as envd reports `permissions`:
/// `-rw-r--r--`, `drwxr-xr-x`, `Lrwxrwxrwx`, `dtrwxrwxrwx` (sticky), `Dcrw-rw-rw-`.
pub fn mode_string(mode: u32) -> String {
    const S_IFMT: u32 = 0o170000;
    let kind = mode & S_IFMT;
    let mut text = String::with_capacity(12);
    let flags = [
        (kind == 0o040000, 'd'),
        (kind == 0o120000, 'L'),
        (kind == 0o060000 || kind == 0o020000, 'D'),
        (kind == 0o010000, 'p'),
        (kind == 0o140000, 'S'),
        (mode & 0o4000 != 0, 'u'),
        (mode & 0o2000 != 0, 'g'),
        (kind == 0o020000, 'c'),
        (mode & 0o1000 != 0, 't'),
    ];
    for (set, c) in flags {
        if set {
            text.push(c);
        }
    }
    if text.is_empty() {
        text.push('-');
    }
    for (i, c) in "rwxrwxrwx".chars().enumerate() {
        text.push(if mode & (1 << (8 - i)) != 0 { c } else { '-' });
    }
    text
}

/// envd's description of the entry at `path` (not following a final symlink, whose
/// target's type and mode are reported along with the target).
pub fn entry_info(path: &Path, names: &Names) -> io::Result<EntryInfo> {
    let meta = fs::symlink_metadata(path)?;
    let (kind, mode, symlink_target) = if meta.file_type().is_symlink() {
        let target = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let (kind, mode) = match fs::metadata(&target) {
            Ok(target_meta) => (
                file_type(&target_meta),
                target_meta.permissions().mode() & 0o777,
            ),
            Err(_) => (FileType::Unspecified, 0),
        };
        (kind, mode, Some(target.display().to_string()))
    } else {
        (file_type(&meta), meta.permissions().mode() & 0o777, None)
    };
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    Ok(EntryInfo {
        name,
        r#type: kind as i32,
        path: path.display().to_string(),
        size: i64::try_from(meta.len()).unwrap_or(i64::MAX),
        mode,
        permissions: mode_string(meta.mode()),
        owner: names.user(meta.uid()),
        group: names.group(meta.gid()),
        modified_time: Some(Timestamp {
            seconds: meta.mtime(),
            nanos: i32::try_from(meta.mtime_nsec()).unwrap_or(0),
        }),
        symlink_target,
    })
}

/// Creates `dir` and its missing parents (mode 0755), owned by `user` as envd does
/// (chown only when the user is not the agent's own, which needs root).
pub fn ensure_dirs(dir: &Path, user: &User) -> Result<(), ConnectError> {
    let mut missing = Vec::new();
    let mut current = Some(dir);
    while let Some(path) = current {
        match fs::metadata(path) {
            Ok(meta) if meta.is_dir() => break,
            Ok(_) => {
                return Err(invalid_argument(format!(
                    "path is a file: {}",
                    path.display()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => missing.push(path),
            Err(e) => return Err(io_error("checking directory", path, &e)),
        }
        current = path.parent();
    }
    for path in missing.into_iter().rev() {
        match fs::create_dir(path) {
            Ok(()) => chown_to(path, user)?,
            // Raced with another creator: fine if it is a directory now.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => {}
            Err(e) => return Err(io_error("creating directory", path, &e)),
        }
    }
    Ok(())
}

/// Gives a file or directory the agent created to the user it was created for.
pub fn chown_to(path: &Path, user: &User) -> Result<(), ConnectError> {
    if user.uid == rustix::process::geteuid().as_raw() {
        return Ok(());
    }
    rustix::fs::chown(
        path,
        Some(rustix::fs::Uid::from_raw(user.uid)),
        Some(rustix::fs::Gid::from_raw(user.gid)),
    )
    .map_err(|e| io_error("changing the owner of", path, &io::Error::from(e)))
}

pub fn stat(ctx: &Context, request: &PathRequest) -> Result<EntryResponse, ConnectError> {
    let path = ctx.resolve(&request.path)?;
    let entry = entry_info(&path, &Names::load()).map_err(|e| io_error("stat", &path, &e))?;
    Ok(EntryResponse { entry: Some(entry) })
}

pub fn make_dir(ctx: &Context, request: &PathRequest) -> Result<EntryResponse, ConnectError> {
    let path = ctx.resolve(&request.path)?;
    match fs::metadata(&path) {
        Ok(meta) if meta.is_dir() => {
            return Err(error(
                code::ALREADY_EXISTS,
                format!("directory already exists: {}", path.display()),
            ));
        }
        Ok(_) => {
            return Err(invalid_argument(format!(
                "path already exists but it is not a directory: {}",
                path.display()
            )));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error("checking", &path, &e)),
    }
    ensure_dirs(&path, &ctx.user)?;
    let entry = entry_info(&path, &Names::load()).map_err(|e| io_error("stat", &path, &e))?;
    Ok(EntryResponse { entry: Some(entry) })
}

pub fn move_entry(ctx: &Context, request: &MoveRequest) -> Result<EntryResponse, ConnectError> {
    let source = ctx.resolve(&request.source)?;
    let destination = ctx.resolve(&request.destination)?;
    if let Some(parent) = destination.parent() {
        ensure_dirs(parent, &ctx.user)?;
    }
    fs::rename(&source, &destination).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            error(
                code::NOT_FOUND,
                format!("source file not found: {}", source.display()),
            )
        } else {
            io_error("moving", &source, &e)
        }
    })?;
    let entry =
        entry_info(&destination, &Names::load()).map_err(|e| io_error("stat", &destination, &e))?;
    Ok(EntryResponse { entry: Some(entry) })
}

/// As envd: removing what does not exist succeeds; directories go with their
/// contents.
pub fn remove(ctx: &Context, request: &PathRequest) -> Result<(), ConnectError> {
    let path = ctx.resolve(&request.path)?;
    let removed = match fs::symlink_metadata(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => Err(e),
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(&path),
        Ok(_) => fs::remove_file(&path),
    };
    match removed {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_error("removing", &path, &e)),
        _ => Ok(()),
    }
}

/// The entries under a directory, down to `depth` levels (0 means 1), in name order,
/// parents before their children. Symlinks are listed, not followed.
pub fn list_dir(ctx: &Context, request: &ListDirRequest) -> Result<ListDirResponse, ConnectError> {
    let depth = request.depth.max(1) as usize;
    let requested = ctx.resolve(&request.path)?;
    let resolved = fs::canonicalize(&requested).map_err(|e| {
        if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
            error(
                code::FAILED_PRECONDITION,
                format!(
                    "cyclic symlink or chain >255 links at '{}'",
                    requested.display()
                ),
            )
        } else if e.kind() == io::ErrorKind::NotFound {
            error(
                code::NOT_FOUND,
                format!("path not found: {}", requested.display()),
            )
        } else {
            io_error("resolving", &requested, &e)
        }
    })?;
    if !resolved.is_dir() {
        return Err(invalid_argument(format!(
            "path is not a directory: {}",
            requested.display()
        )));
    }
    let names = Names::load();
    let mut entries = Vec::new();
    walk(&resolved, &requested, depth, &names, &mut entries)?;
    Ok(ListDirResponse { entries })
}

fn walk(
    dir: &Path,
    shown_as: &Path,
    depth: usize,
    names: &Names,
    entries: &mut Vec<EntryInfo>,
) -> Result<(), ConnectError> {
    let mut children: Vec<_> = fs::read_dir(dir)
        .map_err(|e| io_error("reading directory", shown_as, &e))?
        .filter_map(Result::ok)
        .map(|entry| entry.file_name())
        .collect();
    children.sort();
    for name in children {
        let path = dir.join(&name);
        // Gone between readdir and stat: skip it, as a later listing would.
        let Ok(mut entry) = entry_info(&path, names) else {
            continue;
        };
        let shown = shown_as.join(&name);
        entry.path = shown.display().to_string();
        let is_real_dir =
            entry.symlink_target.is_none() && entry.r#type == FileType::Directory as i32;
        if entries.len() >= MAX_LIST_ENTRIES {
            return Err(error(
                code::RESOURCE_EXHAUSTED,
                format!("more than {MAX_LIST_ENTRIES} entries: list with a smaller depth"),
            ));
        }
        entries.push(entry);
        if is_real_dir && depth > 1 {
            walk(&path, &shown, depth - 1, names, entries)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_strings_read_like_go() {
        assert_eq!(mode_string(0o100644), "-rw-r--r--");
        assert_eq!(mode_string(0o040755), "drwxr-xr-x");
        assert_eq!(mode_string(0o120777), "Lrwxrwxrwx");
        assert_eq!(mode_string(0o041777), "dtrwxrwxrwx");
        assert_eq!(mode_string(0o020666), "Dcrw-rw-rw-");
        assert_eq!(mode_string(0o104755), "urwxr-xr-x");
        assert_eq!(mode_string(0o010600), "prw-------");
    }

    #[test]
    fn listing_stat_mkdir_move_remove() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let ctx = Context {
            user: users::current(),
            default_workdir: None,
        };
        let path = |p: &str| root.join(p).display().to_string();
        fs::create_dir_all(root.join("a/b/c")).expect("dirs");
        fs::write(root.join("a/f.txt"), b"hello").expect("file");
        std::os::unix::fs::symlink(root.join("a/f.txt"), root.join("link")).expect("symlink");

        let list = |depth| {
            list_dir(
                &ctx,
                &ListDirRequest {
                    path: path(""),
                    depth,
                },
            )
            .expect("list")
            .entries
            .into_iter()
            .map(|e| {
                e.path
                    .strip_prefix(&path(""))
                    .map(str::to_string)
                    .unwrap_or(e.path)
            })
            .collect::<Vec<_>>()
        };
        assert_eq!(list(0), ["a", "link"]);
        assert_eq!(list(2), ["a", "a/b", "a/f.txt", "link"]);
        assert_eq!(list(9), ["a", "a/b", "a/b/c", "a/f.txt", "link"]);

        let stat_of =
            |p: &str| stat(&ctx, &PathRequest { path: path(p) }).map(|r| r.entry.expect("entry"));
        let file = stat_of("a/f.txt").expect("stat file");
        assert_eq!(
            (file.r#type, file.size, file.name.as_str()),
            (FileType::File as i32, 5, "f.txt")
        );
        assert_eq!(file.permissions.len(), 10);
        let link = stat_of("link").expect("stat link");
        assert_eq!(
            link.r#type,
            FileType::File as i32,
            "a symlink reports its target's type"
        );
        assert!(link.permissions.starts_with('L'));
        assert!(link.symlink_target.is_some_and(|t| t.ends_with("a/f.txt")));
        assert_eq!(
            stat_of("nope").map(|_| ()).map_err(|e| e.code),
            Err(code::NOT_FOUND.into())
        );

        let made = make_dir(&ctx, &PathRequest { path: path("x/y") }).expect("mkdir");
        assert_eq!(
            made.entry.map(|e| e.r#type),
            Some(FileType::Directory as i32)
        );
        let again = make_dir(&ctx, &PathRequest { path: path("x/y") }).expect_err("exists");
        assert_eq!(again.code, code::ALREADY_EXISTS);
        let on_file = make_dir(
            &ctx,
            &PathRequest {
                path: path("a/f.txt"),
            },
        )
        .expect_err("file");
        assert_eq!(on_file.code, code::INVALID_ARGUMENT);

        let moved = move_entry(
            &ctx,
            &MoveRequest {
                source: path("a/f.txt"),
                destination: path("new/dir/g.txt"),
            },
        )
        .expect("move");
        assert_eq!(moved.entry.map(|e| e.name), Some("g.txt".into()));
        let missing = move_entry(
            &ctx,
            &MoveRequest {
                source: path("a/f.txt"),
                destination: path("h"),
            },
        )
        .expect_err("gone");
        assert_eq!(missing.code, code::NOT_FOUND);

        remove(&ctx, &PathRequest { path: path("a") }).expect("remove dir");
        remove(&ctx, &PathRequest { path: path("a") }).expect("remove again");
        remove(&ctx, &PathRequest { path: path("link") }).expect("remove link");
        assert_eq!(list(1), ["new", "x"]);
        let not_dir = list_dir(
            &ctx,
            &ListDirRequest {
                path: path("new/dir/g.txt"),
                depth: 1,
            },
        )
        .expect_err("file");
        assert_eq!(not_dir.code, code::INVALID_ARGUMENT);
    }
}
