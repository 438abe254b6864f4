//! Tool installation in sandboxes: a declarative catalog (one TOML recipe per tool,
//! under `tools/catalog/` at the repository root, built into the binary, plus an
//! optional site directory), and an installer that runs the recipes through the
//! sandbox's agent — idempotent (each recipe's `verify` runs first), in dependency
//! order, time-limited per tool, reporting progress through a callback. The recipe
//! format, the template variables and the mirrors: `docs/tools.md`.
//!
//! ```text
//! let catalog = Catalog::load(config.workspaces.tool_catalog_dir.as_deref())?;
//! let sources = ToolSources::try_from(config.workspaces.tool_mirrors.clone())?;
//! catalog.check_sources(&sources)?;                       // at start-up
//! let specs = ["nodejs@22.12.0".parse()?, "claude-code".parse()?];
//! let plan = catalog.plan(&specs, &sources, Arch::host().unwrap_or(Arch::X86_64))?;
//! let outcomes = install(&agent, &plan, &|p| publish(p)).await?;
//! ```

mod bake;
mod catalog;
mod install;
mod spec;
mod template;

pub use bake::{Baked, bake};
pub use catalog::{Catalog, InstallPlan, PlannedTool, Recipe, ToolSources};
pub use install::{OUTPUT_TAIL_BYTES, ToolOutcome, ToolProgress, ToolStatus, install};
pub use spec::{Arch, ToolSpec};

use std::time::Duration;

use crate::agent_client::AgentError;
use crate::error::CoreError;

/// Everything that can go wrong from reading the catalog to verifying an install.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// A tool name the catalog does not have.
    #[error("unknown tool {name:?}: known tools are {}", known.join(", "))]
    UnknownTool { name: String, known: Vec<String> },
    /// A `name@version` that does not parse, or asks for one tool twice.
    #[error("invalid tool {spec:?}: {reason}")]
    InvalidSpec { spec: String, reason: String },
    /// A recipe that does not parse or does not hold together.
    #[error("invalid tool recipe {origin}: {reason}")]
    InvalidRecipe { origin: String, reason: String },
    /// The site catalog directory cannot be read.
    #[error("cannot read the tool catalog {path}: {reason}")]
    Catalog { path: String, reason: String },
    /// A mirror override that is not a usable base URL (the URL itself is never
    /// repeated: it may carry credentials).
    #[error("invalid tool mirror {name:?}: {reason}")]
    InvalidMirror { name: String, reason: String },
    /// Requirements that loop (`a → b → a`).
    #[error("tool requirements form a cycle: {}", cycle.join(" → "))]
    Cycle { cycle: Vec<String> },
    /// The install script failed, or `verify` still fails after it. `output` is the
    /// tail of what the scripts printed (stdout and stderr as they came), capped at
    /// [`OUTPUT_TAIL_BYTES`].
    #[error("installing {tool}@{version} failed ({}): {output}", exit_description(*exit_code))]
    Failed {
        tool: String,
        version: String,
        exit_code: Option<i32>,
        output: String,
    },
    /// The tool's `timeout_seconds` ran out; its processes were killed.
    #[error("installing {tool}@{version} timed out after {}s and was killed: {output}", timeout.as_secs())]
    TimedOut {
        tool: String,
        version: String,
        timeout: Duration,
        output: String,
    },
    /// The sandbox's agent could not run the scripts.
    #[error("installing {tool}@{version}: {source}")]
    Agent {
        tool: String,
        version: String,
        #[source]
        source: AgentError,
    },
}

fn exit_description(exit_code: Option<i32>) -> String {
    match exit_code {
        Some(code) => format!("exit code {code}"),
        None => "killed by a signal".to_string(),
    }
}

/// Bad requests (unknown tool or mirror, bad spec, a version the install could not
/// find) are the caller's input; a broken catalog is the server's; an unreachable
/// agent is a dependency being down.
impl From<ToolError> for CoreError {
    fn from(e: ToolError) -> Self {
        match e {
            ToolError::UnknownTool { .. }
            | ToolError::InvalidSpec { .. }
            | ToolError::InvalidMirror { .. }
            | ToolError::Cycle { .. }
            | ToolError::Failed { .. }
            | ToolError::TimedOut { .. } => CoreError::InvalidInput(e.to_string()),
            ToolError::InvalidRecipe { .. } | ToolError::Catalog { .. } => {
                CoreError::Internal(anyhow::Error::new(e))
            }
            ToolError::Agent { .. } => CoreError::Unavailable(e.to_string()),
        }
    }
}
