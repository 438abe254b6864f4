//! Runs an [`InstallPlan`] in a sandbox through its agent.

use std::collections::BTreeMap;
use std::time::Duration;

use aetherium_types::agent::{DataEvent, ProcessConfig, ProcessEvent, Signal, StartRequest};
use futures::StreamExt as _;
use tokio::time::Instant;

use super::ToolError;
use super::catalog::{InstallPlan, PlannedTool};
use crate::agent_client::{AgentClient, AgentError, ProcessStream};

/// How much of a failed install's output its error keeps (the end: where the
/// error usually is).
pub const OUTPUT_TAIL_BYTES: usize = 16 * 1024;
/// How long a timed-out install gets between SIGTERM (its `EXIT` trap cleans up)
/// and SIGKILL, and SIGKILL until its end is seen.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// The environment of every script: a known PATH (tools land in /usr/local/bin) and
/// apt without questions.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Prepended to every install script: strict mode, the helpers recipes use, and a
/// scratch directory. Documented in docs/tools.md.
const PRELUDE: &str = r#"set -eu
if [ "$(id -u)" != 0 ]; then
  echo "tool installs must run as root, not as $(id -un)" >&2
  exit 1
fi
# apt_install PACKAGE...: Debian packages, from the image's apt sources.
apt_install() {
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "$@"
}
# need COMMAND PACKAGE...: installs the packages unless COMMAND is on PATH.
need() {
  command -v "$1" >/dev/null 2>&1 && return 0
  shift
  apt_install "$@"
}
# fetch URL FILE: downloads URL to FILE and checks its SHA-256 against the sum
# the recipe pins or its publisher's sums file lists (expected_sha256, rendered
# per tool, answers which); an HTTP error, an unknown sum or a mismatch fails
# the script and leaves no FILE behind.
fetch() {
  need curl curl ca-certificates
  curl -fsSL --retry 2 --connect-timeout 30 -o "$2" "$1"
  fetch_name=${1##*/}
  fetch_expected=$(expected_sha256 "$1")
  case "$fetch_expected" in
    "sha256 "*) fetch_expected=${fetch_expected#sha256 } ;;
    "sums "*)
      fetch_sums=${fetch_expected#sums }
      if ! curl -fsSL --retry 2 --connect-timeout 30 -o "$2.sums" "$fetch_sums"; then
        rm -f "$2" "$2.sums"
        echo "cannot download the checksums of $fetch_name from $fetch_sums" >&2
        exit 1
      fi
      # "<sum>  <name>" lines (sha256sum's format, "*" before binary names), or
      # a file holding the one sum alone.
      fetch_expected=$(awk -v name="$fetch_name" '
        NF == 1 && length($1) == 64 { print $1; exit }
        NF >= 2 && ($2 == name || $2 == "*" name) { print $1; exit }' "$2.sums" | tr 'A-F' 'a-f')
      rm -f "$2.sums"
      if [ -z "$fetch_expected" ]; then
        rm -f "$2"
        echo "the checksums file $fetch_sums does not list $fetch_name" >&2
        exit 1
      fi ;;
    *)
      rm -f "$2"
      echo "no checksum is known for $fetch_name: a recipe's downloads must be listed under [sources] with [checksums] or [sha256]" >&2
      exit 1 ;;
  esac
  fetch_actual=$(sha256sum "$2" | cut -d ' ' -f 1)
  if [ "$fetch_actual" != "$fetch_expected" ]; then
    rm -f "$2"
    echo "checksum mismatch for $fetch_name: expected sha256 $fetch_expected, got $fetch_actual" >&2
    exit 1
  fi
}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
trap 'exit 143' TERM INT
"#;

/// What runs for an install: the prelude, the tool's download sums, its script.
fn full_install_script(tool: &PlannedTool) -> String {
    format!(
        "{PRELUDE}\n{}\n{}",
        tool.expected_sha256_function(),
        tool.install
    )
}

/// One tool's progress; the caller maps these to its own events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolProgress {
    Started {
        tool: String,
        version: String,
    },
    /// `verify` passed before anything was installed.
    Skipped {
        tool: String,
        version: String,
        elapsed: Duration,
    },
    Installed {
        tool: String,
        version: String,
        elapsed: Duration,
    },
    /// The install stops here; `error` is the [`ToolError`]'s message, with the
    /// tool's output: redact the sandbox's secrets before publishing it.
    Failed {
        tool: String,
        version: String,
        elapsed: Duration,
        error: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolStatus {
    /// `verify` passed at once: nothing was run.
    AlreadyPresent,
    Installed,
}

/// What happened to one tool of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolOutcome {
    pub tool: String,
    pub version: String,
    pub status: ToolStatus,
    pub elapsed: Duration,
}

/// Installs the plan's tools in order, as root through `agent`: for each, `verify`;
/// if that fails, the install script, then `verify` again; all within the tool's
/// timeout (after which its processes are killed). The first failure stops
/// everything and is returned with the tool's output; tools installed before it
/// stay installed (a retry skips them).
pub async fn install(
    agent: &AgentClient,
    plan: &InstallPlan,
    progress: &(dyn Fn(ToolProgress) + Send + Sync),
) -> Result<Vec<ToolOutcome>, ToolError> {
    let mut outcomes = Vec::with_capacity(plan.tools().len());
    for tool in plan.tools() {
        let started = Instant::now();
        progress(ToolProgress::Started {
            tool: tool.name.clone(),
            version: tool.version.clone(),
        });
        match install_one(agent, tool).await {
            Ok(status) => {
                let elapsed = started.elapsed();
                let (tool_name, version) = (tool.name.clone(), tool.version.clone());
                progress(match status {
                    ToolStatus::AlreadyPresent => ToolProgress::Skipped {
                        tool: tool_name.clone(),
                        version: version.clone(),
                        elapsed,
                    },
                    ToolStatus::Installed => ToolProgress::Installed {
                        tool: tool_name.clone(),
                        version: version.clone(),
                        elapsed,
                    },
                });
                outcomes.push(ToolOutcome {
                    tool: tool_name,
                    version,
                    status,
                    elapsed,
                });
            }
            Err(error) => {
                // Not the output: it may show the sandbox's secrets (the agent puts
                // them in every process's environment); the caller redacts and stores it.
                tracing::warn!(tool = %tool.name, version = %tool.version, "tool install failed");
                progress(ToolProgress::Failed {
                    tool: tool.name.clone(),
                    version: tool.version.clone(),
                    elapsed: started.elapsed(),
                    error: error.to_string(),
                });
                return Err(error);
            }
        }
    }
    Ok(outcomes)
}

async fn install_one(agent: &AgentClient, tool: &PlannedTool) -> Result<ToolStatus, ToolError> {
    let deadline = Instant::now() + tool.timeout;
    let check = run_script(agent, tool, &tool.verify, deadline).await?;
    if check.exit_code == Some(0) {
        return Ok(ToolStatus::AlreadyPresent);
    }
    tracing::info!(tool = %tool.name, version = %tool.version, "installing tool");
    let script = full_install_script(tool);
    let run = run_script(agent, tool, &script, deadline).await?;
    if run.exit_code != Some(0) {
        return Err(ToolError::Failed {
            tool: tool.name.clone(),
            version: tool.version.clone(),
            exit_code: run.exit_code,
            output: run.output,
        });
    }
    let check = run_script(agent, tool, &tool.verify, deadline).await?;
    if check.exit_code != Some(0) {
        let mut output = format!(
            "the install script succeeded but verify still fails; install output:\n{}",
            run.output
        );
        if !check.output.is_empty() {
            output.push_str("\nverify output:\n");
            output.push_str(&check.output);
        }
        return Err(ToolError::Failed {
            tool: tool.name.clone(),
            version: tool.version.clone(),
            exit_code: check.exit_code,
            output: tail(output.as_bytes(), OUTPUT_TAIL_BYTES),
        });
    }
    Ok(ToolStatus::Installed)
}

/// How a script ended.
struct ScriptRun {
    exit_code: Option<i32>,
    /// The tail of stdout and stderr together, as they came, secrets cut out.
    output: String,
}

/// Runs `sh -c script` and collects its output until it ends or `deadline`
/// passes; then its process group is terminated, then killed.
async fn run_script(
    agent: &AgentClient,
    tool: &PlannedTool,
    script: &str,
    deadline: Instant,
) -> Result<ScriptRun, ToolError> {
    let agent_error = |source: AgentError| ToolError::Agent {
        tool: tool.name.clone(),
        version: tool.version.clone(),
        source,
    };
    let request = StartRequest {
        process: ProcessConfig {
            cmd: "sh".into(),
            args: vec!["-c".into(), script.into()],
            envs: BTreeMap::from([
                ("PATH".to_string(), PATH.to_string()),
                ("DEBIAN_FRONTEND".to_string(), "noninteractive".to_string()),
            ]),
            cwd: Some("/".into()),
        },
        stdin: Some(false),
        ..StartRequest::default()
    };
    let mut stream = agent.start(&request).await.map_err(agent_error)?;
    let mut output = OutputTail::default();
    match collect_until(&mut stream, &mut output, deadline).await {
        Ok(Some(exit_code)) => Ok(ScriptRun {
            exit_code,
            output: output.finish(&tool.secrets),
        }),
        Ok(None) => {
            kill(agent, &mut stream, &mut output).await;
            Err(ToolError::TimedOut {
                tool: tool.name.clone(),
                version: tool.version.clone(),
                timeout: tool.timeout,
                output: output.finish(&tool.secrets),
            })
        }
        Err(e) => Err(agent_error(e)),
    }
}

/// Reads events until the process ends (`Some(exit code)`, `None` inside when a
/// signal ended it) or `deadline` passes (`None`).
async fn collect_until(
    stream: &mut ProcessStream,
    output: &mut OutputTail,
    deadline: Instant,
) -> Result<Option<Option<i32>>, AgentError> {
    loop {
        let Ok(event) = tokio::time::timeout_at(deadline, stream.next()).await else {
            return Ok(None);
        };
        match event {
            Some(Ok(ProcessEvent::Data(
                DataEvent::Stdout(bytes) | DataEvent::Stderr(bytes) | DataEvent::Pty(bytes),
            ))) => output.push(&bytes.0),
            Some(Ok(ProcessEvent::End(end))) => {
                return Ok(Some(end.exited.then_some(end.exit_code)));
            }
            Some(Ok(ProcessEvent::Start(_) | ProcessEvent::Keepalive(_))) => {}
            Some(Err(e)) => return Err(e),
            None => {
                return Err(AgentError::Protocol(
                    "the process stream ended without an end event".into(),
                ));
            }
        }
    }
}

/// Ends a timed-out script's process group: SIGTERM (the prelude's trap removes its
/// scratch directory), SIGKILL if it is still there after a grace period.
async fn kill(agent: &AgentClient, stream: &mut ProcessStream, output: &mut OutputTail) {
    let pid = stream.pid();
    for signal in [Signal::Sigterm, Signal::Sigkill] {
        if let Err(e) = agent.send_signal(pid, signal).await {
            // Most likely it ended on its own in the meantime.
            tracing::debug!(pid, ?signal, error = %e, "signalling a timed-out install");
        }
        let grace = Instant::now() + KILL_GRACE;
        if let Ok(Some(_)) = collect_until(stream, output, grace).await {
            return;
        }
    }
    tracing::warn!(pid, "a timed-out install did not end after SIGKILL");
}

/// The last bytes of a stream of output, bounded while it is collected.
#[derive(Default)]
struct OutputTail {
    bytes: Vec<u8>,
    cut: bool,
}

impl OutputTail {
    fn push(&mut self, chunk: &[u8]) {
        self.bytes.extend_from_slice(chunk);
        // Trim only once there is twice the cap, so that trimming stays cheap.
        if self.bytes.len() > 2 * OUTPUT_TAIL_BYTES {
            let excess = self.bytes.len() - OUTPUT_TAIL_BYTES;
            self.bytes.drain(..excess);
            self.cut = true;
        }
    }

    /// The kept output as text, secrets replaced by `***`, at most
    /// [`OUTPUT_TAIL_BYTES`] long.
    fn finish(&self, secrets: &[String]) -> String {
        let mut text = String::from_utf8_lossy(&self.bytes).into_owned();
        for secret in secrets {
            text = text.replace(secret.as_str(), "***");
        }
        let text = tail(text.as_bytes(), OUTPUT_TAIL_BYTES);
        if self.cut && !text.starts_with('…') {
            format!("…{text}")
        } else {
            text
        }
    }
}

/// The last `max` bytes of `bytes` as text (a `…` first when something was cut; a
/// character split by the cut is dropped).
fn tail(bytes: &[u8], max: usize) -> String {
    if bytes.len() <= max {
        return String::from_utf8_lossy(bytes).into_owned();
    }
    let kept = &bytes[bytes.len() - max..];
    let text = String::from_utf8_lossy(kept);
    format!("…{}", text.trim_start_matches('\u{FFFD}'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_tail_keeps_the_end_and_hides_secrets() {
        let mut output = OutputTail::default();
        output.push(b"start ");
        output.push(b"token=hunter2 end");
        assert_eq!(output.finish(&["hunter2".into()]), "start token=*** end");

        let mut output = OutputTail::default();
        for i in 0..10_000 {
            output.push(format!("line {i}\n").as_bytes());
        }
        let text = output.finish(&[]);
        assert!(text.starts_with('…'));
        assert!(text.ends_with("line 9999\n"));
        assert!(text.len() <= OUTPUT_TAIL_BYTES + '…'.len_utf8());
    }

    #[test]
    fn tail_cuts_at_character_boundaries() {
        assert_eq!(tail("héllo".as_bytes(), 100), "héllo");
        assert_eq!(tail("héllo".as_bytes(), 4), "…llo");
        assert_eq!(tail("héllo".as_bytes(), 5), "…éllo");
    }
}

#[cfg(test)]
mod syntax_tests {
    use super::super::{Arch, Catalog, ToolSources};
    use super::*;

    /// `sh -n`: every built-in script (the install one with its prelude) parses.
    #[test]
    fn builtin_scripts_are_valid_shell() {
        let catalog = Catalog::builtin().unwrap();
        for recipe in catalog.recipes() {
            let spec = recipe.name.parse().unwrap();
            let plan = catalog
                .plan(&[spec], &ToolSources::new(), Arch::X86_64)
                .unwrap();
            let tool = plan.tools().last().unwrap();
            let install = full_install_script(tool);
            for script in [tool.verify.as_str(), install.as_str()] {
                let status = std::process::Command::new("sh")
                    .args(["-n", "-c", script])
                    .status()
                    .unwrap();
                assert!(status.success(), "{}: {script}", recipe.name);
            }
        }
    }
}

/// Workspace code runs installs in spawned tasks.
#[cfg(test)]
#[allow(dead_code)]
fn install_future_is_send(agent: &AgentClient, plan: &InstallPlan) {
    fn send<T: Send>(_: &T) {}
    send(&install(agent, plan, &|_| {}));
}
