//! `name@version` specs and the sandbox architecture recipes render for.

use std::fmt;
use std::str::FromStr;

use super::ToolError;

const MAX_NAME_LEN: usize = 64;
const MAX_VERSION_LEN: usize = 64;

/// One tool asked for: `nodejs@22.12.0`, or `git` (the recipe's default version).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ToolSpec {
    pub name: String,
    pub version: Option<String>,
}

impl ToolSpec {
    /// Parses `name` or `name@version`.
    pub fn parse(spec: &str) -> Result<ToolSpec, ToolError> {
        let invalid = |reason: &str| ToolError::InvalidSpec {
            spec: spec.to_string(),
            reason: reason.to_string(),
        };
        let (name, version) = match spec.trim().split_once('@') {
            Some((name, version)) => (name, Some(version)),
            None => (spec.trim(), None),
        };
        check_name(name).map_err(|r| invalid(&r))?;
        if let Some(version) = version {
            check_version(version).map_err(|r| invalid(&r))?;
        }
        Ok(ToolSpec {
            name: name.to_string(),
            version: version.map(str::to_string),
        })
    }
}

impl FromStr for ToolSpec {
    type Err = ToolError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ToolSpec::parse(s)
    }
}

impl fmt::Display for ToolSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.version {
            Some(version) => write!(f, "{}@{version}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// A tool name: lowercase letters, digits, `-` and `_`, starting with a letter or
/// digit (it names a file and a template key).
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the tool name is empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!("the tool name is longer than {MAX_NAME_LEN} bytes"));
    }
    let valid = name.bytes().enumerate().all(|(i, b)| {
        b.is_ascii_lowercase() || b.is_ascii_digit() || (i > 0 && (b == b'-' || b == b'_'))
    });
    if !valid {
        return Err(
            "a tool name is lowercase letters, digits, '-' and '_' (starting with a letter or digit)"
                .into(),
        );
    }
    Ok(())
}

/// A version: letters, digits and `.+-_~`, starting with a letter or digit. It is
/// rendered into shell scripts, so nothing a shell would interpret may pass.
pub(crate) fn check_version(version: &str) -> Result<(), String> {
    if version.is_empty() {
        return Err("the version is empty (write name or name@version)".into());
    }
    if version.len() > MAX_VERSION_LEN {
        return Err(format!(
            "the version is longer than {MAX_VERSION_LEN} bytes"
        ));
    }
    let valid = version.bytes().enumerate().all(|(i, b)| {
        b.is_ascii_alphanumeric() || (i > 0 && matches!(b, b'.' | b'+' | b'-' | b'_' | b'~'))
    });
    if !valid {
        return Err(
            "a version is letters, digits and '.+-_~' (starting with a letter or digit)".into(),
        );
    }
    Ok(())
}

/// The sandbox's CPU architecture, with the spellings different projects use for
/// it (template variables `{arch}`, `{arch.debian}`, `{arch.node}`, `{arch.bun}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    /// The host's architecture (a container's is the host's), if it is one of ours.
    pub fn host() -> Option<Arch> {
        Arch::from_uname(std::env::consts::ARCH)
    }

    /// From `uname -m` (or Rust's `std::env::consts::ARCH`, which spells them alike).
    pub fn from_uname(machine: &str) -> Option<Arch> {
        match machine.trim() {
            "x86_64" | "amd64" => Some(Arch::X86_64),
            "aarch64" | "arm64" => Some(Arch::Aarch64),
            _ => None,
        }
    }

    /// `{arch}`: `uname -m`, as in LLVM/Rust target triples.
    pub fn uname(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// `{arch.<variant>}`: `debian` (also Go's and Docker's), `node`, `bun`.
    pub fn variant(self, variant: &str) -> Option<&'static str> {
        Some(match (variant, self) {
            ("debian", Arch::X86_64) => "amd64",
            ("debian", Arch::Aarch64) => "arm64",
            ("node", Arch::X86_64) => "x64",
            ("node", Arch::Aarch64) => "arm64",
            ("bun", Arch::X86_64) => "x64",
            ("bun", Arch::Aarch64) => "aarch64",
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_print() {
        let spec = ToolSpec::parse("nodejs@22.12.0").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(spec.name, "nodejs");
        assert_eq!(spec.version.as_deref(), Some("22.12.0"));
        assert_eq!(spec.to_string(), "nodejs@22.12.0");
        let spec: ToolSpec = "claude-code".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((spec.name.as_str(), spec.version), ("claude-code", None));
    }

    #[test]
    fn bad_specs_are_refused_with_a_reason() {
        for bad in [
            "",
            "@1.0",
            "node@",
            "Node@1",
            "node@1;rm -rf /",
            "node@$(id)",
            "node@1 2",
            "-x",
            "node@.1",
        ] {
            match ToolSpec::parse(bad) {
                Err(ToolError::InvalidSpec { spec, reason }) => {
                    assert_eq!(spec, bad);
                    assert!(!reason.is_empty());
                }
                other => panic!("{bad:?}: expected InvalidSpec, got {other:?}"),
            }
        }
    }

    #[test]
    fn arch_spellings() {
        assert_eq!(Arch::from_uname("x86_64"), Some(Arch::X86_64));
        assert_eq!(Arch::from_uname("arm64"), Some(Arch::Aarch64));
        assert_eq!(Arch::from_uname("riscv64"), None);
        assert_eq!(Arch::X86_64.variant("debian"), Some("amd64"));
        assert_eq!(Arch::X86_64.variant("node"), Some("x64"));
        assert_eq!(Arch::Aarch64.variant("bun"), Some("aarch64"));
        assert_eq!(Arch::X86_64.variant("nope"), None);
    }
}
