//! A stand-in for the coding-agent CLIs (`claude`, `amp`) so workspace tests run a
//! real prompt end to end without a model: [`standin_agent_image`] builds (once per
//! machine, tagged by content hash) a Docker image on top of the test image with
//! one bash script installed as `/usr/local/bin/claude` and `/usr/local/bin/amp`.
//!
//! The script takes the prompt as the argument after `-p` (claude) or `-x` (amp),
//! else all its arguments; an argument naming an existing file is read. It then
//! - appends `prompt: <prompt>` to `standin-edits.txt` in the current directory,
//! - prints `standin: appended to <dir>/standin-edits.txt: <prompt>` to stdout,
//!   `standin: user=<user>` too, and `standin: done` on stderr,
//! - prints `STANDIN_ECHO=<value>` when that variable is set (to check that
//!   secrets reach the agent and are redacted on the way out),
//! - sleeps N seconds when the prompt holds `STANDIN_SLEEP=N` (cancellation tests),
//! - exits 3 (after printing `standin: failing` on stderr) when the prompt holds
//!   `STANDIN_FAIL`; else exits 0.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::process::Command;
use std::sync::OnceLock;

/// The stand-in agent script (see the module docs).
pub const STANDIN_SCRIPT: &str = r#"#!/bin/bash
# Aetherium test stand-in for a coding-agent CLI.
prompt=""
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[$i]}" in
    -p|-x) prompt="${args[$((i + 1))]}"; break ;;
  esac
done
if [ -z "$prompt" ]; then prompt="$*"; fi
if [ -f "$prompt" ]; then prompt="$(cat "$prompt")"; fi
echo "prompt: $prompt" >> standin-edits.txt
echo "standin: appended to $PWD/standin-edits.txt: $prompt"
echo "standin: user=$(id -un)"
if [ -n "${STANDIN_ECHO:-}" ]; then echo "STANDIN_ECHO=$STANDIN_ECHO"; fi
case "$prompt" in
  *STANDIN_SLEEP=*)
    n="${prompt#*STANDIN_SLEEP=}"; n="${n%%[!0-9]*}"; sleep "${n:-1}" ;;
esac
case "$prompt" in
  *STANDIN_FAIL*) echo "standin: failing" >&2; exit 3 ;;
esac
echo "standin: done" >&2
exit 0
"#;

/// The image tag of the stand-in agent image, building it first if this machine
/// does not have it (`$AETHERIUM_TEST_IMAGE`, else `aetherium/base:latest`, must
/// exist locally: no network is needed). Panics with the build's output on failure.
pub fn standin_agent_image() -> String {
    static TAG: OnceLock<String> = OnceLock::new();
    TAG.get_or_init(build).clone()
}

fn build() -> String {
    let base = crate::paths::test_image();
    let base_id = Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", &base])
        .output()
        .expect("run docker");
    assert!(
        base_id.status.success(),
        "base image {base} not found: run scripts/setup.sh (or set AETHERIUM_TEST_IMAGE)"
    );
    let dockerfile = format!(
        "FROM {base}\nCOPY standin /usr/local/bin/claude\nCOPY standin /usr/local/bin/amp\nRUN chmod 0755 /usr/local/bin/claude /usr/local/bin/amp\n"
    );
    let mut h = DefaultHasher::new();
    String::from_utf8_lossy(&base_id.stdout).trim().hash(&mut h);
    dockerfile.hash(&mut h);
    STANDIN_SCRIPT.hash(&mut h);
    let tag = format!("aetherium/standin-agent:{:016x}", h.finish());

    let exists = Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", &tag])
        .output()
        .is_ok_and(|o| o.status.success());
    if exists {
        return tag;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("Dockerfile"), dockerfile).expect("write Dockerfile");
    std::fs::write(dir.path().join("standin"), STANDIN_SCRIPT).expect("write script");
    let out = Command::new("docker")
        .args(["build", "-q", "-t", &tag])
        .arg(dir.path())
        .output()
        .expect("run docker build");
    assert!(
        out.status.success(),
        "docker build of {tag} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    tag
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn standin_edits_the_repo_and_echoes() {
        let tag = standin_agent_image();
        let out = Command::new("docker")
            .args(["run", "--rm", "-e", "STANDIN_ECHO=abc123", "-w", "/tmp", &tag])
            .args([
                "bash",
                "-c",
                "echo 'fix the bug' > /tmp/p && claude -p \"$(cat /tmp/p)\" --output-format text && amp -x /tmp/p && cat standin-edits.txt",
            ])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}");
        assert!(stdout.contains("STANDIN_ECHO=abc123"), "{stdout}");
        assert_eq!(stdout.matches("prompt: fix the bug").count(), 2, "{stdout}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("standin: done"));
    }
}
