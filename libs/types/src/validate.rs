//! The rules requests share, one validator each: names, sizes, image references,
//! environment variable and secret names, tools, git URLs and branches. The API,
//! environment and workspace shapes all call these; nothing here depends on them.

use std::collections::BTreeMap;

use serde::Deserialize;

pub const MAX_BRANCH_LEN: usize = 255;
pub const MAX_ENV_NAME_LEN: usize = 255;
pub const MIN_MEMORY_MB: u64 = 128;

pub const MAX_NAME_LEN: usize = 63;

/// Checks a sandbox name: 1-63 characters of `[a-zA-Z0-9_.-]`, starting alphanumeric.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!("name must be 1 to {MAX_NAME_LEN} characters long"));
    }
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(format!(
            "name {name:?} must start with a letter or digit and hold only letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

/// Reads an optional JSON object as `T`, and nothing else: serde would also fill a
/// struct's fields from a JSON array, by position (`"quota": [1, null]`).
pub fn object_only<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    use serde::de::Error as _;
    let object = Option::<serde_json::Map<String, serde_json::Value>>::deserialize(deserializer)?;
    object
        .map(|object| serde_json::from_value(serde_json::Value::Object(object)))
        .transpose()
        .map_err(D::Error::custom)
}

/// An image reference as Docker reads it: `[registry[:port]/]path[:tag][@digest]`,
/// lowercase path components (`a-z0-9` joined by `.`, `_`, `__` or `-`), a tag of
/// at most 128 word characters, dots and dashes, at most 255 bytes. Checked before
/// anything is recorded, so a typo is a 400 and not a VM failing later.
pub fn validate_image_reference(image: &str) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "image {image:?} is not a valid image reference: {why}"
        ))
    };
    if image.is_empty() || image.len() > 255 {
        return bad("it must have 1 to 255 characters");
    }
    if !image.bytes().all(|b| b.is_ascii_graphic()) {
        return bad("only printable ASCII without spaces is allowed");
    }
    let (name_tag, digest) = match image.split_once('@') {
        Some((name_tag, digest)) => (name_tag, Some(digest)),
        None => (image, None),
    };
    if let Some(digest) = digest {
        let valid = digest.split_once(':').is_some_and(|(algo, hex)| {
            !algo.is_empty()
                && algo.bytes().all(|b| {
                    b.is_ascii_lowercase()
                        || b.is_ascii_digit()
                        || b == b'+'
                        || b == b'.'
                        || b == b'_'
                        || b == b'-'
                })
                && hex.len() >= 32
                && hex.bytes().all(|b| b.is_ascii_hexdigit())
        });
        if !valid {
            return bad("the digest must be algorithm:hex (e.g. sha256:…)");
        }
    }
    let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_tag[last_slash..].rfind(':') {
        Some(i) => (
            &name_tag[..last_slash + i],
            Some(&name_tag[last_slash + i + 1..]),
        ),
        None => (name_tag, None),
    };
    if let Some(tag) = tag {
        let first_ok = tag
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !first_ok
            || tag.len() > 128
            || !tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        {
            return bad(
                "a tag is 1 to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'",
            );
        }
    }
    let mut components: Vec<&str> = name.split('/').collect();
    // A first component with a dot or a port, or `localhost`, names a registry.
    if components.len() > 1 {
        let first = components[0];
        if first.contains('.') || first.contains(':') || first == "localhost" {
            let (host, port) = first.split_once(':').unwrap_or((first, ""));
            let host_ok = !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
            let port_ok =
                port.is_empty() || (port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit()));
            if !first.contains(':') || port_ok {
                if !host_ok || !port_ok {
                    return bad("the registry host is not valid");
                }
                components.remove(0);
            }
        }
    }
    for component in components {
        let chars_ok = component
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
        let ends_ok = component
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
            && component
                .bytes()
                .last()
                .is_some_and(|b| b.is_ascii_alphanumeric());
        if !chars_ok || !ends_ok || component.contains("..") || component.contains("___") {
            return bad(
                "path components are lowercase letters and digits, separated by '.', '_' or '-'",
            );
        }
    }
    Ok(())
}

pub const MAX_TOOLS: usize = 64;

/// Secrets reach processes as environment variables: these names would change what
/// every process loads or runs, not hand it a value. Every kind of secret checks it.
pub fn refuse_reserved_secret_name(name: &str) -> Result<(), String> {
    let upper = name.to_ascii_uppercase();
    if upper.starts_with("LD_")
        || upper.starts_with("DYLD_")
        || RESERVED_ENV_NAMES.contains(&upper.as_str())
    {
        return Err(format!(
            "secret name {name:?} is reserved: as an environment variable it would change how every process in the sandbox runs"
        ));
    }
    Ok(())
}

/// Environment variables no secret may be named after (nor any `LD_*`/`DYLD_*`).
pub const RESERVED_ENV_NAMES: [&str; 14] = [
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "IFS",
    "ENV",
    "BASH_ENV",
    "PS4",
    "PROMPT_COMMAND",
    "GCONV_PATH",
    "HOSTALIASES",
    "RES_OPTIONS",
    "LOCALDOMAIN",
];

pub const MAX_URL_LEN: usize = 2048;

/// A repository URL git can clone (`field`: what the request calls it):
/// `https://`, `http://`, `ssh://`, `file://` or scp-like `user@host:path`.
/// Credentials inside the URL are refused: they would be stored and shown in clear;
/// use a secret instead. The one rule for every git URL (environments' and
/// workspaces' clone steps).
pub fn validate_git_url(field: &str, url: &str) -> Result<(), String> {
    let hint = format!(
        "{field} must start with https://, http://, ssh:// or file://, or be scp-like (git@host:path)"
    );
    let hint = hint.as_str();
    if url.is_empty() || url.len() > MAX_URL_LEN {
        return Err(format!("{hint} and be at most {MAX_URL_LEN} bytes"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{field} must not contain spaces or control characters"
        ));
    }
    let schemes = ["https://", "http://", "ssh://", "file://"];
    if let Some(scheme) = schemes.iter().find(|s| url.starts_with(**s)) {
        let rest = &url[scheme.len()..];
        if rest.is_empty() || (*scheme == "file://" && !rest.starts_with('/')) {
            return Err(format!("{hint}; {url:?} names no repository"));
        }
        let authority = rest.split('/').next().unwrap_or("");
        if *scheme != "ssh://"
            && let Some((userinfo, _)) = authority.rsplit_once('@')
            && userinfo.contains(':')
        {
            return Err(format!(
                "{field} must not carry a password or token: store it as a secret"
            ));
        }
        if *scheme == "ssh://"
            && authority
                .rsplit_once('@')
                .is_some_and(|(u, _)| u.contains(':'))
        {
            return Err(format!(
                "{field} must not carry a password: use an ssh_key secret"
            ));
        }
        return Ok(());
    }
    // scp-like: user@host:path (no scheme, the user part has no ':' or '/').
    if let Some((user_host, path)) = url.split_once(':')
        && let Some((user, host)) = user_host.split_once('@')
        && !user.is_empty()
        && !host.is_empty()
        && !path.is_empty()
        && !path.starts_with('-')
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-".contains(&b))
        && !host.starts_with('-')
    {
        return Ok(());
    }
    Err(format!("{hint}; got {url:?}"))
}

/// A branch name git accepts (the rules of `git check-ref-format --branch`, the
/// common ones), and never an option (`-…`); `field`: what the request calls it.
pub fn validate_git_branch(field: &str, branch: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("{field} {branch:?} is not a valid branch: {why}"));
    if branch.is_empty() || branch.len() > MAX_BRANCH_LEN {
        return bad(&format!("it must be 1 to {MAX_BRANCH_LEN} bytes"));
    }
    if branch.starts_with('-') || branch.starts_with('/') || branch.ends_with('/') {
        return bad("it must not start with '-' or '/', nor end with '/'");
    }
    if branch.ends_with('.') || branch.ends_with(".lock") {
        return bad("it must not end with '.' or '.lock'");
    }
    if branch.contains("..") || branch.contains("@{") || branch.contains("//") || branch == "@" {
        return bad("it must not contain '..', '@{' or '//'");
    }
    if branch.chars().any(|c| {
        c.is_whitespace() || c.is_control() || matches!(c, '~' | '^' | ':' | '?' | '*' | '[' | '\\')
    }) {
        return bad("it must not contain spaces, control characters or any of ~^:?*[\\");
    }
    if branch.split('/').any(|part| part.starts_with('.')) {
        return bad("no part of it may start with '.'");
    }
    Ok(())
}

/// An environment variable name: `[A-Za-z_][A-Za-z0-9_]*`, at most 255 bytes.
pub fn validate_env_var_name(name: &str) -> Result<(), String> {
    let ok = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && name.len() <= MAX_ENV_NAME_LEN;
    if !ok {
        return Err(format!(
            "{name:?} is not a valid environment variable name: letters, digits and '_', \
             not starting with a digit, at most {MAX_ENV_NAME_LEN} bytes"
        ));
    }
    Ok(())
}

/// Most variables one environment map may hold.
pub const MAX_ENV_VARS: usize = 256;
/// Longest value of one variable.
pub const MAX_ENV_VALUE_LEN: usize = 32 * 1024;

/// A map of environment variables: valid names, values without NUL, bounded.
pub fn validate_env_vars(vars: &BTreeMap<String, String>) -> Result<(), String> {
    if vars.len() > MAX_ENV_VARS {
        return Err(format!("at most {MAX_ENV_VARS} environment variables"));
    }
    for (name, value) in vars {
        validate_env_var_name(name)?;
        if value.contains('\0') || value.len() > MAX_ENV_VALUE_LEN {
            return Err(format!(
                "environment variable {name:?}: the value must be at most {MAX_ENV_VALUE_LEN} bytes without NUL"
            ));
        }
    }
    Ok(())
}

/// A tool entry: `name` or `name@version`, the name in `[a-z0-9][a-z0-9-]*` and the
/// version in `[A-Za-z0-9._-]+`.
pub fn validate_tool_spec(spec: &str) -> Result<(), String> {
    let (name, version) = match spec.split_once('@') {
        Some((n, v)) => (n, Some(v)),
        None => (spec, None),
    };
    let name_ok = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.len() <= 64;
    let version_ok = version.is_none_or(|v| {
        !v.is_empty()
            && v.len() <= 64
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    });
    if !name_ok || !version_ok {
        return Err(format!(
            "tool {spec:?} must be name or name@version (name: lowercase letters, digits and \
             '-'; version: letters, digits, '.', '_' and '-'), like nodejs@20"
        ));
    }
    Ok(())
}

/// Checks requested tools the way every request that takes them does (VMs,
/// workspaces, environments): at most [`MAX_TOOLS`] specs, each
/// [`validate_tool_spec`], no tool twice, and as many `name → version` pins, each
/// well-formed. Whether the catalog has them is the server's check.
pub fn validate_tools(tools: &[String], versions: &BTreeMap<String, String>) -> Result<(), String> {
    if tools.len() > MAX_TOOLS || versions.len() > MAX_TOOLS {
        return Err(format!("at most {MAX_TOOLS} tools"));
    }
    let mut seen = std::collections::BTreeSet::new();
    for spec in tools {
        validate_tool_spec(spec)?;
        let name = spec.split('@').next().unwrap_or(spec);
        if !seen.insert(name) {
            return Err(format!("tool {name:?} is listed twice"));
        }
    }
    for (name, version) in versions {
        if name.contains('@') {
            return Err(format!(
                "tool {name:?}: pin its version as the value, not in the name"
            ));
        }
        validate_tool_spec(&format!("{name}@{version}"))?;
    }
    Ok(())
}
