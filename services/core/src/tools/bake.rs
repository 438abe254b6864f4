//! A template build: tools installed once into an image (`aetherium image bake`)
//! instead of in every sandbox. A throw-away container of the source image gets the
//! tools through the same installer, is committed as the new image, and is removed.
//! Sandboxes of the new image then find every tool present (each `verify` passes).

use std::time::Duration;

use aetherium_types::Orchestrator;

use super::{InstallPlan, ToolOutcome, ToolProgress, install};
use crate::error::{CoreError, CoreResult};
use crate::vmm::docker::DockerBackend;
use crate::vmm::{Backend as _, SandboxSpec};

/// What a bake made.
#[derive(Debug, Clone)]
pub struct Baked {
    pub image_id: String,
    pub tools: Vec<ToolOutcome>,
}

/// Installs `plan` into a container of `from` and commits it as `reference`. The
/// container is removed whatever happens. `docker` should carry a worker id of its
/// own so that a running worker never mistakes the container for one of its own.
pub async fn bake(
    docker: &DockerBackend,
    from: &str,
    reference: &str,
    plan: &InstallPlan,
    progress: &(dyn Fn(ToolProgress) + Send + Sync),
) -> CoreResult<Baked> {
    let vm_id = format!("bake-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let spec = SandboxSpec {
        vm_id: vm_id.clone(),
        orchestrator: Orchestrator::Docker,
        name: vm_id.clone(),
        image: from.to_string(),
        vcpus: 2,
        memory_mb: 4096,
        disk_mb: None,
        network_policy: None,
        network: None,
        access_token: Some(uuid::Uuid::new_v4().simple().to_string()),
    };
    docker
        .create(&spec)
        .await
        .map_err(|e| CoreError::InvalidInput(format!("cannot start a container of {from}: {e}")))?;
    let result = async {
        let agent = docker
            .agent(&vm_id)
            .with_access_token(spec.access_token.clone().unwrap_or_default())
            .with_user("root");
        agent
            .wait_ready(Duration::from_secs(60))
            .await
            .map_err(|e| {
                CoreError::Unavailable(format!("the bake container's agent did not answer: {e}"))
            })?;
        let tools = install(&agent, plan, progress).await?;
        let image_id = docker
            .commit(&vm_id, from, reference)
            .await
            .map_err(|e| CoreError::Unavailable(format!("cannot commit {reference}: {e}")))?;
        Ok(Baked { image_id, tools })
    }
    .await;
    if let Err(e) = docker.delete(&vm_id).await {
        tracing::warn!(vm_id, error = %e, "cannot remove the bake container");
    }
    result
}
