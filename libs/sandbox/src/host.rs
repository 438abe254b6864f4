//! This host's sandbox backends and guest network, from the configuration: Docker,
//! QEMU (KVM when a probe shows guests run under it, else TCG) and Firecracker
//! (offered once a background probe has booted a guest kernel: on hosts where KVM
//! cannot run guests it never is). `aetherium doctor` reports the same probes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aetherium_common::Config;
use aetherium_types::Orchestrator;

use crate::error::{CoreError, CoreResult};
use crate::identity::{self, AgentTokens};
use crate::image::ImageStore;
use crate::net::{HostNetwork, HostNetworkConfig};
use crate::store::IpLeases;
use crate::vmm::firecracker::{FirecrackerBackend, FirecrackerConfig};
use crate::vmm::multi::Backends;
use crate::vmm::qemu::{ProbeOptions, QemuAccel, QemuBackend, QemuConfig, QemuProbe};
use crate::vmm::{Backend, docker};

pub struct HostBackends {
    pub backends: Arc<Backends>,
    /// `None` when networking is off or no microVM backend is configured.
    pub network: Option<Arc<HostNetwork>>,
}

pub fn image_store(config: &Config) -> ImageStore {
    ImageStore::new(config.images_dir())
}

fn wants(config: &Config, kind: Orchestrator) -> bool {
    config.vmm.backends.iter().any(|b| b == kind.as_str())
}

/// The QEMU probe's options from the configuration (`vmm.qemu.accel` forces one).
pub fn qemu_probe_options(config: &Config) -> ProbeOptions {
    let mut options =
        ProbeOptions::new(&config.vmm.qemu.binary, &config.vmm.qemu.vhost_vsock_binary);
    if let Ok(accel) = config.vmm.qemu.accel.parse::<QemuAccel>() {
        options.accel_override = Some(accel);
    }
    options
}

/// What QEMU can do on this host, as the worker finds at its start.
pub async fn probe_qemu(config: &Config) -> QemuProbe {
    crate::vmm::qemu::probe_with(&qemu_probe_options(config)).await
}

/// What Firecracker can do on this host: its version, KVM, and whether a guest kernel
/// (`kernel`, see [`probe_kernel`]) boots under it.
pub async fn probe_firecracker(
    config: &Config,
    kernel: Option<&std::path::Path>,
) -> crate::vmm::firecracker::ProbeResult {
    crate::vmm::firecracker::probe(&config.vmm.firecracker.binary, kernel).await
}

/// The guest kernel Firecracker's probe boots: the default image's `vmlinux`.
pub fn probe_kernel(config: &Config) -> Option<PathBuf> {
    image_store(config)
        .resolve(&config.vmm.docker.default_image)
        .ok()
        .flatten()
        .map(|image| image.vmlinux)
}

/// Opens every configured backend that works here. Fails only when none does. Every
/// sandbox they make requires its agent token from `tokens`.
pub async fn host_backends(
    config: &Config,
    leases: Arc<dyn IpLeases>,
    tokens: AgentTokens,
) -> CoreResult<HostBackends> {
    let run_dir = config.vm_run_dir();
    let boot_timeout = Duration::from_secs(config.vmm.boot_timeout_seconds);
    let mut ready: Vec<Arc<dyn Backend>> = Vec::new();
    if wants(config, Orchestrator::Docker) {
        ready.push(docker_backend(config)?);
    }
    if wants(config, Orchestrator::Qemu) {
        let probe = probe_qemu(config).await;
        match probe.accel {
            Some(accel) => {
                let mut qemu = QemuConfig::new(run_dir.join("qemu"), image_store(config), accel);
                qemu.qemu_bin = config.vmm.qemu.binary.clone();
                qemu.vhost_vsock_bin = config.vmm.qemu.vhost_vsock_binary.clone();
                qemu.boot_timeout = boot_timeout;
                tracing::info!(accel = accel.as_str(), "qemu backend ready");
                ready.push(Arc::new(QemuBackend::new(qemu)));
            }
            None => tracing::warn!(
                qemu = ?probe.qemu_version,
                vhost_vsock = ?probe.vhost_vsock_version,
                tcg = ?probe.tcg,
                "qemu backend unavailable on this host (see `aetherium doctor`)"
            ),
        }
    }
    let default = config
        .vmm
        .default_backend
        .parse::<Orchestrator>()
        .unwrap_or(Orchestrator::Docker);
    let default = if ready.iter().any(|b| b.kind() == default) {
        default
    } else {
        match ready.first() {
            Some(first) => first.kind(),
            None if wants(config, Orchestrator::Firecracker) => Orchestrator::Firecracker,
            None => {
                return Err(CoreError::InvalidInput(format!(
                    "none of the configured backends {:?} works on this host: run `aetherium doctor`",
                    config.vmm.backends
                )));
            }
        }
    };
    if ready.is_empty() {
        return Err(CoreError::InvalidInput(
            "no backend is ready (Firecracker alone is probed in the background): add docker or qemu to vmm.backends, see `aetherium doctor`"
                .into(),
        ));
    }
    let backends = Arc::new(Backends::new(default, ready).with_agent_tokens(tokens));
    if wants(config, Orchestrator::Firecracker) {
        spawn_firecracker_probe(config, backends.clone());
    }
    let microvms = wants(config, Orchestrator::Qemu) || wants(config, Orchestrator::Firecracker);
    let network = if config.network.enabled && microvms {
        let (gateway, prefix_len) = config
            .network
            .gateway()
            .map_err(|e| CoreError::InvalidInput(e.to_string()))?;
        let network = HostNetwork::new(
            HostNetworkConfig {
                bridge: config.network.bridge.clone(),
                gateway,
                prefix_len,
                nat: config.network.nat,
                isolated: config.network.isolated,
                egress_allow: config.network.egress_allow.clone(),
                dns_upstream: dns_upstream(config)?,
            },
            leases,
            format!("{}/{}", config.worker.id, config.network.bridge),
        )
        .map_err(|e| CoreError::InvalidInput(e.to_string()))?;
        Some(Arc::new(network))
    } else {
        None
    };
    Ok(HostBackends { backends, network })
}

/// Firecracker joins the worker's backends once a guest kernel has booted under it
/// here; its boot check takes seconds (and never passes where KVM cannot run guests),
/// so it runs beside the start-up instead of delaying it.
fn spawn_firecracker_probe(config: &Config, backends: Arc<Backends>) {
    let binary = config.vmm.firecracker.binary.clone();
    let mut fc = FirecrackerConfig::new(
        binary.clone(),
        config.vm_run_dir().join("firecracker"),
        image_store(config),
    );
    fc.jailer_bin = config.vmm.firecracker.jailer_binary.clone();
    fc.boot_timeout = Duration::from_secs(config.vmm.boot_timeout_seconds);
    let kernel = probe_kernel(config);
    tokio::spawn(async move {
        let Some(kernel) = kernel else {
            tracing::info!(
                "firecracker backend not offered: no VM image is built yet to probe a guest boot with (`aetherium image build`)"
            );
            return;
        };
        let probe = crate::vmm::firecracker::probe(&binary, Some(&kernel)).await;
        if probe.guests_boot() {
            tracing::info!("firecracker backend ready");
            backends.add(Arc::new(FirecrackerBackend::new(fc)));
        } else {
            tracing::info!(
                probe = %probe.summary().replace('\n', "; "),
                "firecracker backend not offered: guests cannot boot under it here"
            );
        }
    });
}

/// The Docker backend of this host's worker.
pub fn docker_backend(config: &Config) -> CoreResult<Arc<dyn Backend>> {
    let backend = docker_backend_as(config, &config.worker.id, config.socket_dir())?;
    Ok(Arc::new(backend))
}

/// A Docker backend configured as the worker's, under another worker id and socket
/// directory: what it makes, a running worker never adopts or removes (e.g. the
/// sandboxes of `aetherium image bake`).
pub fn docker_backend_as(
    config: &Config,
    worker_id: &str,
    socket_dir: PathBuf,
) -> CoreResult<docker::DockerBackend> {
    std::fs::create_dir_all(&socket_dir).map_err(|e| {
        CoreError::InvalidInput(format!("cannot create {}: {e}", socket_dir.display()))
    })?;
    let installation_id = identity::installation_id(&config.data_dir).map_err(|e| {
        CoreError::InvalidInput(format!("cannot read or make the installation id: {e}"))
    })?;
    docker::DockerBackend::connect(docker::DockerBackendConfig {
        host: config.vmm.docker.host.clone(),
        worker_id: worker_id.to_string(),
        installation_id,
        agent_path: resolve_agent_path(config)?,
        socket_dir,
        pids_limit: config.vmm.docker.pids_limit,
        network_mode: config.vmm.docker.network_mode.clone(),
        egress_allow: config.vmm.docker.egress_allow.clone(),
        dns_upstream: dns_upstream(config)?,
    })
    .map_err(|e| CoreError::InvalidInput(e.to_string()))
}

/// The DNS servers sandboxes' queries go to: `network.dns_upstream`, else the
/// host's.
pub fn dns_upstream(config: &Config) -> CoreResult<Vec<std::net::SocketAddr>> {
    let configured = config
        .network
        .dns_servers()
        .map_err(|e| CoreError::InvalidInput(e.to_string()))?;
    Ok(if configured.is_empty() {
        crate::net::dns::host_resolvers()
    } else {
        configured
    })
}

/// The agent binary: configured, or `aetherium-agent` next to the running program.
pub fn resolve_agent_path(config: &Config) -> CoreResult<PathBuf> {
    if let Some(path) = &config.vmm.agent_path {
        return Ok(path.clone());
    }
    let exe = std::env::current_exe().map_err(|e| CoreError::Internal(e.into()))?;
    let beside = exe.with_file_name("aetherium-agent");
    if beside.is_file() {
        return Ok(beside);
    }
    Err(CoreError::InvalidInput(format!(
        "cannot find the sandbox agent: no {} — set vmm.agent_path (AETHERIUM_AGENT_PATH) or install it next to the aetherium binary",
        beside.display()
    )))
}
