//! Tools in sandboxes: the plan a worker builds from requested tool specs (its own
//! catalog, mirrors and architecture), shared by `workspace:create`, and the
//! installs `vm:create` runs once the agent answers, before the VM is RUNNING.

use tokio::sync::watch;

use super::{TaskError, Worker, until_cancelled};
use crate::services::CANCELLED_WHILE_RUNNING;
use crate::tools::{Arch, Catalog, InstallPlan, ToolError, ToolProgress, ToolSources, ToolSpec};

/// How much of a failed install's output a VM's `error` keeps (the end: where the
/// error usually is).
const VM_ERROR_TAIL_BYTES: usize = 2000;

impl Worker {
    /// The install plan of `tools` (`name` or `name@version`), dependencies first,
    /// from this worker's catalog and mirrors, for this host's architecture.
    pub(super) fn tool_plan(&self, tools: &[String]) -> Result<InstallPlan, String> {
        let config = &self.settings.workspaces;
        let catalog =
            Catalog::load(config.tool_catalog_dir.as_deref()).map_err(|e| e.to_string())?;
        let mut sources = ToolSources::new();
        for (name, url) in &config.tool_mirrors {
            sources
                .insert(name.clone(), url.clone())
                .map_err(|e| e.to_string())?;
        }
        let specs = tools
            .iter()
            .map(|t| ToolSpec::parse(t))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        let arch = Arch::host().ok_or("unknown host architecture")?;
        catalog
            .plan(&specs, &sources, arch)
            .map_err(|e| e.to_string())
    }

    /// `vm:create`'s installs, as root through the VM's agent. There is no VM
    /// progress event: each tool's progress is a log line. A tool that cannot be
    /// installed fails the create for good (the same tool would fail again); an
    /// agent that stops answering is retried like any create whose agent is gone.
    pub(super) async fn install_vm_tools(
        &self,
        vm_id: &str,
        tools: &[String],
        cancel: watch::Receiver<bool>,
    ) -> Result<(), TaskError> {
        let plan = self
            .tool_plan(tools)
            .map_err(|e| TaskError::permanent(format!("tools: {e}")))?;
        let agent = self.backend.agent(vm_id);
        let progress = |p: ToolProgress| match p {
            ToolProgress::Started { tool, version } => {
                tracing::info!(vm_id, %tool, %version, "installing tool");
            }
            ToolProgress::Skipped {
                tool,
                version,
                elapsed,
            } => {
                tracing::info!(vm_id, %tool, %version, ?elapsed, "tool already present");
            }
            ToolProgress::Installed {
                tool,
                version,
                elapsed,
            } => {
                tracing::info!(vm_id, %tool, %version, ?elapsed, "tool installed");
            }
            ToolProgress::Failed {
                tool,
                version,
                elapsed,
                ..
            } => {
                tracing::warn!(vm_id, %tool, %version, ?elapsed, "tool install failed");
            }
        };
        tokio::select! {
            result = crate::tools::install(&agent, &plan, &progress) => {
                result.map(|_| ()).map_err(vm_tool_error)
            }
            // `on_cancelled` removes the sandbox and fails the VM.
            _ = until_cancelled(cancel) => Err(TaskError::permanent(CANCELLED_WHILE_RUNNING)),
        }
    }
}

/// The VM's error for a failed install: the tool's own message (naming it and how
/// it failed) with only the end of its output.
fn vm_tool_error(e: ToolError) -> TaskError {
    let tail = |output: String| super::workspaces::tail(&output, VM_ERROR_TAIL_BYTES).to_string();
    match e {
        ToolError::Failed {
            tool,
            version,
            exit_code,
            output,
        } => TaskError::permanent(
            ToolError::Failed {
                tool,
                version,
                exit_code,
                output: tail(output),
            }
            .to_string(),
        ),
        ToolError::TimedOut {
            tool,
            version,
            timeout,
            output,
        } => TaskError::permanent(
            ToolError::TimedOut {
                tool,
                version,
                timeout,
                output: tail(output),
            }
            .to_string(),
        ),
        ToolError::Agent { .. } => TaskError::retry(e.to_string()),
        other => TaskError::permanent(format!("tools: {other}")),
    }
}
