//! A container's state as a sandbox's, and stopping one that wrote past its disk
//! quota.

use super::*;

/// Stops the sandboxes whose writable layer holds more than their `disk_mb`
/// (one listing of the engine for all of them).
pub(super) async fn stop_over_disk(
    docker: &Docker,
    own_labels: &[String],
    over_disk: &Mutex<HashSet<String>>,
) -> Result<(), BackendError> {
    let mut labels = own_labels.to_vec();
    labels.push(LABEL_DISK_MB.to_string());
    let filters = HashMap::from([("label", labels)]);
    let options = ListContainersOptionsBuilder::default()
        .size(true)
        .filters(&filters)
        .build();
    for container in docker
        .list_containers(Some(options))
        .await
        .map_err(map_err)?
    {
        let labels = container.labels.unwrap_or_default();
        let (Some(vm_id), Some(limit_mb)) = (
            labels.get(LABEL_VM),
            labels
                .get(LABEL_DISK_MB)
                .and_then(|mb| mb.parse::<i64>().ok()),
        ) else {
            continue;
        };
        let used = container.size_rw.unwrap_or(0);
        if used <= limit_mb.saturating_mul(1024 * 1024) {
            continue;
        }
        tracing::warn!(
            vm_id,
            used_bytes = used,
            limit_mb,
            "sandbox over its disk quota: stopping it"
        );
        over_disk
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(vm_id.clone());
        let options = bollard::query_parameters::KillContainerOptionsBuilder::default()
            .signal("SIGKILL")
            .build();
        match docker
            .kill_container(&container_name(vm_id), Some(options))
            .await
        {
            Ok(()) => {}
            // Gone or stopped meanwhile.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404 | 409,
                ..
            }) => {}
            Err(e) => return Err(map_err(e)),
        }
    }
    Ok(())
}

pub(super) fn state_of(
    state: Option<&bollard::models::ContainerState>,
    over_disk: bool,
) -> SandboxState {
    let Some(state) = state else {
        return SandboxState::Missing;
    };
    match state.status {
        Some(ContainerStateStatusEnum::RUNNING) => SandboxState::Running,
        Some(ContainerStateStatusEnum::PAUSED) => SandboxState::Paused,
        Some(ContainerStateStatusEnum::CREATED) | Some(ContainerStateStatusEnum::RESTARTING) => {
            SandboxState::Starting
        }
        _ => SandboxState::Exited {
            exit_code: state.exit_code.unwrap_or(-1),
            killed_for: if state.oom_killed.unwrap_or(false) {
                Some(Limit::Memory)
            } else if over_disk {
                Some(Limit::Disk)
            } else {
                None
            },
        },
    }
}
