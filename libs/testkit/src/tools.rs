//! Tool fixtures: a one-script tool packed as a tarball, and the recipe that
//! installs it from the mirror named `fixture` (point it at a [`crate::FileServer`]
//! serving the directory), checked against the `SHA256SUMS` file next to the
//! tarballs — as the installer checks every download.
#![allow(clippy::unwrap_used)]

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use sha2::Digest as _;

/// `<dir>/<tool>-<version>.tar.gz` holding `bin/<tool>`, a script printing
/// `<tool> <version>`; its sum is appended to `<dir>/SHA256SUMS`.
pub fn tool_tarball(dir: &Path, tool: &str, version: &str) -> PathBuf {
    let staging = tempfile::tempdir().unwrap();
    let bin = staging.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let script = bin.join(tool);
    std::fs::write(&script, format!("#!/bin/sh\necho \"{tool} {version}\"\n")).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let archive = dir.join(format!("{tool}-{version}.tar.gz"));
    let status = std::process::Command::new("tar")
        .arg("-czf")
        .arg(&archive)
        .arg("-C")
        .arg(staging.path())
        .arg("bin")
        .status()
        .unwrap();
    assert!(status.success(), "tar failed for {}", archive.display());
    append_sha256(&archive, &dir.join("SHA256SUMS"));
    archive
}

/// Appends `<sha256>  <file name>` of `file` to `sums`, as `sha256sum` writes it.
pub fn append_sha256(file: &Path, sums: &Path) {
    let digest = sha2::Sha256::digest(std::fs::read(file).unwrap());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let name = file.file_name().unwrap().to_string_lossy();
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(sums)
        .unwrap();
    writeln!(out, "{hex}  {name}").unwrap();
}

/// The recipe of a [`tool_tarball`] tool (default version 1.0.0, a 60 s limit),
/// installing `bin/<tool>` into /usr/local; write it as `<tool>.toml` into a
/// catalog directory.
pub fn tool_recipe(tool: &str, requires: &[&str]) -> String {
    let requires: Vec<String> = requires.iter().map(|r| format!("{r:?}")).collect();
    format!(
        r#"name = "{tool}"
description = "a test tool from the fixture server"
default_version = "1.0.0"
requires = [{requires}]
timeout_seconds = 60
verify = '''
test "$({tool} 2>/dev/null)" = "{tool} {{version}}"
'''
install = '''
fetch "{{source.tarball}}" "$WORK/{tool}.tar.gz"
tar -xzf "$WORK/{tool}.tar.gz" -C /usr/local --no-same-owner
'''

[sources]
tarball = "{{mirror.fixture}}/{tool}-{{version}}.tar.gz"

[checksums]
tarball = "{{mirror.fixture}}/SHA256SUMS"

[mirrors]
# Unreachable on purpose: the test points the mirror at its own server.
fixture = "http://127.0.0.1:9"
"#,
        requires = requires.join(", ")
    )
}
