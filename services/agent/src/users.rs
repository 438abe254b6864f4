//! Users and paths, as envd resolves them: a request runs as a named user (HTTP Basic
//! auth `user:` on Connect calls, `?username=` on `/files`) or the default user; `~`
//! and relative paths resolve against that user's home directory.
//!
//! Users come from `/etc/passwd` and `/etc/group`, read directly: a static glibc
//! binary cannot use NSS (`getpwnam`) reliably, and sandboxes use local users.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use aetherium_types::agent::{ConnectError, code};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

/// One `name:x:uid:gid:gecos:home:shell` line.
fn parse_passwd_line(line: &str) -> Option<User> {
    let mut fields = line.split(':');
    let name = fields.next()?.to_string();
    let _password = fields.next()?;
    let uid = fields.next()?.parse().ok()?;
    let gid = fields.next()?.parse().ok()?;
    let _gecos = fields.next()?;
    let home = PathBuf::from(fields.next()?);
    (!name.is_empty()).then_some(User {
        name,
        uid,
        gid,
        home,
    })
}

fn passwd() -> Vec<User> {
    std::fs::read_to_string("/etc/passwd")
        .map(|text| text.lines().filter_map(parse_passwd_line).collect())
        .unwrap_or_default()
}

pub fn by_name(name: &str) -> Option<User> {
    passwd().into_iter().find(|u| u.name == name)
}

/// The user the agent runs as: its `/etc/passwd` entry, or (none there, as in a
/// container run with `--user 1234`) the uid as name and `$HOME` (else `/`) as home.
pub fn current() -> User {
    let uid = rustix::process::geteuid().as_raw();
    passwd()
        .into_iter()
        .find(|u| u.uid == uid)
        .unwrap_or_else(|| User {
            name: uid.to_string(),
            uid,
            gid: rustix::process::getegid().as_raw(),
            home: std::env::var_os("HOME")
                .map(PathBuf::from)
                .filter(|h| h.is_absolute())
                .unwrap_or_else(|| PathBuf::from("/")),
        })
}

/// The user a request runs as: the named one, or the default. An unknown name is
/// `unauthenticated`, as envd answers.
pub fn resolve(name: Option<&str>, default: &User) -> Result<User, ConnectError> {
    match name.filter(|n| !n.is_empty()) {
        None => Ok(default.clone()),
        Some(name) if name == default.name => Ok(default.clone()),
        Some(name) => by_name(name).ok_or_else(|| {
            ConnectError::new(code::UNAUTHENTICATED, format!("invalid username: '{name}'"))
        }),
    }
}

/// The user named by an `Authorization: Basic base64(user:)` header, if any.
pub fn basic_auth_user(headers: &http::HeaderMap) -> Option<String> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = aetherium_types::agent::decode_base64(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let user = text.split_once(':').map_or(text.as_str(), |(u, _)| u);
    (!user.is_empty()).then(|| user.to_string())
}

/// Resolves a request path as envd does: empty is the default working directory (or
/// the home directory), `~` and `~/x` are in the home directory (`~other` is refused),
/// relative paths are relative to the home directory. `.` and `..` are folded
/// lexically.
pub fn resolve_path(
    path: &str,
    user: &User,
    default_workdir: Option<&Path>,
) -> Result<PathBuf, ConnectError> {
    if path.contains('\0') {
        return Err(ConnectError::new(
            code::INVALID_ARGUMENT,
            "path contains a NUL byte",
        ));
    }
    if path.is_empty() {
        return Ok(default_workdir.map_or_else(|| user.home.clone(), Path::to_path_buf));
    }
    let joined = if let Some(rest) = path.strip_prefix('~') {
        if !rest.is_empty() && !rest.starts_with('/') {
            return Err(ConnectError::new(
                code::INVALID_ARGUMENT,
                format!("cannot expand user-specific home dir in {path:?}"),
            ));
        }
        user.home.join(rest.trim_start_matches('/'))
    } else if path.starts_with('/') {
        PathBuf::from(path)
    } else {
        user.home.join(path)
    };
    Ok(normalize(&joined))
}

/// Folds `.` and `..` without touching the filesystem (`/a/../b` → `/b`).
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// User and group names by id, read once (for listings of many entries).
#[derive(Debug, Default)]
pub struct Names {
    users: HashMap<u32, String>,
    groups: HashMap<u32, String>,
}

impl Names {
    pub fn load() -> Names {
        let users = passwd().into_iter().map(|u| (u.uid, u.name)).collect();
        let groups = std::fs::read_to_string("/etc/group")
            .map(|text| {
                text.lines()
                    .filter_map(|line| {
                        let mut fields = line.split(':');
                        let name = fields.next()?.to_string();
                        let _password = fields.next()?;
                        let gid = fields.next()?.parse().ok()?;
                        Some((gid, name))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Names { users, groups }
    }

    /// The user's name, or the uid as text (as envd falls back).
    pub fn user(&self, uid: u32) -> String {
        self.users
            .get(&uid)
            .cloned()
            .unwrap_or_else(|| uid.to_string())
    }

    pub fn group(&self, gid: u32) -> String {
        self.groups
            .get(&gid)
            .cloned()
            .unwrap_or_else(|| gid.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> User {
        User {
            name: "user".into(),
            uid: 1000,
            gid: 1000,
            home: "/home/user".into(),
        }
    }

    #[test]
    fn passwd_lines() {
        assert_eq!(
            parse_passwd_line("user:x:1000:1001:User,,,:/home/user:/bin/bash"),
            Some(User {
                name: "user".into(),
                uid: 1000,
                gid: 1001,
                home: "/home/user".into(),
            })
        );
        assert_eq!(parse_passwd_line("broken:x:notanumber:1:"), None);
        assert_eq!(parse_passwd_line(""), None);
    }

    #[test]
    fn paths_resolve_like_envd() {
        let u = user();
        let resolve = |p: &str, wd: Option<&str>| {
            resolve_path(p, &u, wd.map(Path::new)).map(|p| p.display().to_string())
        };
        assert_eq!(resolve("", None).as_deref(), Ok("/home/user"));
        assert_eq!(resolve("", Some("/work")).as_deref(), Ok("/work"));
        assert_eq!(resolve("~", None).as_deref(), Ok("/home/user"));
        assert_eq!(resolve("~/a/b", None).as_deref(), Ok("/home/user/a/b"));
        assert_eq!(
            resolve("a/../b", Some("/work")).as_deref(),
            Ok("/home/user/b")
        );
        assert_eq!(resolve("/etc/../tmp/./x", None).as_deref(), Ok("/tmp/x"));
        assert_eq!(resolve("/../..", None).as_deref(), Ok("/"));
        assert!(resolve("~root/x", None).is_err());
        assert!(resolve("a\0b", None).is_err());
    }

    #[test]
    fn basic_auth_names_the_user() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(basic_auth_user(&headers), None);
        // base64("root:") = cm9vdDo=
        headers.insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_static("Basic cm9vdDo="),
        );
        assert_eq!(basic_auth_user(&headers).as_deref(), Some("root"));
        headers.insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_static("Bearer x"),
        );
        assert_eq!(basic_auth_user(&headers), None);
    }

    #[test]
    fn the_current_user_has_an_absolute_home() {
        let me = current();
        assert!(me.home.is_absolute());
        assert_eq!(resolve(None, &me), Ok(me.clone()));
        assert_eq!(resolve(Some(&me.name), &me), Ok(me.clone()));
        assert!(resolve(Some("no-such-user-aetherium"), &me).is_err());
    }
}
