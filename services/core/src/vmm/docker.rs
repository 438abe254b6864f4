//! The Docker backend: one container per sandbox, running our agent as its entrypoint.
//!
//! - The static agent binary is bind-mounted read-only at [`AGENT_IN_CONTAINER`]; the
//!   image needs nothing of ours, so any image works.
//! - A per-sandbox host directory is mounted at [`RUN_DIR_IN_CONTAINER`]; the agent
//!   listens on a unix socket there, which the host reaches directly -- never through
//!   a symlink the container may have put in its place (`agent_client::connect_unix`).
//!   The agent's access token is left there as a file that the agent reads and
//!   deletes at start: it is in no environment, image or `docker inspect`.
//! - CPU, memory (no extra swap) and pid limits come from the VM's size.
//! - Labels name the installation, the owning worker and the VM, so a restarted
//!   worker finds (adopts or removes) exactly the containers it owns -- not those of
//!   another installation on the same host that happens to use the same worker id.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use aetherium_types::Orchestrator;
use async_trait::async_trait;
use bollard::Docker;
use bollard::models::{ContainerCreateBody, ContainerStateStatusEnum, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, EventsOptionsBuilder, InspectContainerOptions,
    ListContainersOptionsBuilder, RemoveContainerOptionsBuilder, StartContainerOptions,
};
use futures::StreamExt;
use futures::stream::BoxStream;

use super::{Backend, BackendError, SandboxExit, SandboxInfo, SandboxSpec, SandboxState};

pub const AGENT_IN_CONTAINER: &str = "/.aetherium/bin/aetherium-agent";
pub const RUN_DIR_IN_CONTAINER: &str = "/.aetherium/run";
pub const AGENT_SOCKET_NAME: &str = "agent.sock";
/// The file in the run directory that hands the agent its access token.
pub const AGENT_TOKEN_NAME: &str = "agent.token";

pub const LABEL_MANAGED: &str = "io.aetherium.managed";
pub const LABEL_WORKER: &str = "io.aetherium.worker_id";
pub const LABEL_INSTALLATION: &str = "io.aetherium.installation";
pub const LABEL_VM: &str = "io.aetherium.vm_id";

#[derive(Debug, Clone)]
pub struct DockerBackendConfig {
    /// `unix:///var/run/docker.sock` or a bare socket path.
    pub host: String,
    pub worker_id: String,
    /// This installation's id ([`crate::identity::installation_id`]).
    pub installation_id: String,
    pub agent_path: PathBuf,
    /// Host directory holding one sub-directory (and agent socket) per sandbox.
    pub socket_dir: PathBuf,
    pub pids_limit: i64,
    /// [`ISOLATED`], or a Docker network mode given as is.
    pub network_mode: String,
    /// CIDRs isolated sandboxes may reach although the guard refuses them.
    pub egress_allow: Vec<String>,
}

/// `network_mode` of sandboxes on [`ISOLATED_NETWORK`], behind [`crate::net::guard`].
pub const ISOLATED: &str = "isolated";
/// The Docker network every installation on a host shares for isolated sandboxes.
pub const ISOLATED_NETWORK: &str = "aetherium-isolated";
/// Its bridge device (named, so that the firewall rules can name it).
pub const ISOLATED_BRIDGE: &str = "aeth-isolated";

/// Capabilities a sandbox does without: raw sockets (ARP or ICMP spoofing on the
/// bridge), device nodes, the audit log. The agent keeps what it needs to run
/// commands and write files as any user.
pub const DROPPED_CAPABILITIES: [&str; 3] = ["NET_RAW", "MKNOD", "AUDIT_WRITE"];

pub struct DockerBackend {
    /// Connected on first use and again after a failure to connect, so a worker that
    /// starts before the engine (or outlives an engine restart) recovers by itself.
    docker: std::sync::Mutex<Option<Docker>>,
    socket_path: String,
    config: DockerBackendConfig,
    /// Set once the isolated network and its guard are in place (this process).
    isolated_ready: tokio::sync::OnceCell<()>,
}

fn container_name(vm_id: &str) -> String {
    format!("aetherium-{vm_id}")
}

fn map_err(e: bollard::errors::Error) -> BackendError {
    use bollard::errors::Error as E;
    match e {
        E::DockerResponseServerError {
            status_code,
            message,
        } if (400..500).contains(&status_code) => BackendError::Rejected(message),
        E::DockerResponseServerError { message, .. } => BackendError::Other(message),
        E::IOError { .. } | E::HyperResponseError { .. } | E::RequestTimeoutError => {
            BackendError::Unavailable(e.to_string())
        }
        other => BackendError::Unavailable(other.to_string()),
    }
}

fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

impl DockerBackend {
    /// Saves a sandbox's filesystem as the image `reference` (`repo[:tag]`), with the
    /// entrypoint and command of `from` (the sandbox runs our agent instead, which
    /// is bind-mounted and so not in the image). Returns the new image's id.
    pub async fn commit(
        &self,
        vm_id: &str,
        from: &str,
        reference: &str,
    ) -> Result<String, BackendError> {
        let docker = self.client()?;
        let source = docker
            .inspect_image(from)
            .await
            .map_err(map_err)?
            .config
            .unwrap_or_default();
        let (repo, tag) = match reference.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => (repo, tag),
            _ => (reference, "latest"),
        };
        let options = bollard::query_parameters::CommitContainerOptionsBuilder::new()
            .container(&container_name(vm_id))
            .repo(repo)
            .tag(tag)
            .comment("aetherium image bake")
            .pause(true)
            .build();
        let config = bollard::models::ContainerConfig {
            // An empty list, not a missing one: Docker would fill a missing
            // entrypoint in from the container's (our agent).
            entrypoint: Some(source.entrypoint.unwrap_or_default()),
            cmd: source.cmd,
            ..Default::default()
        };
        let created = docker
            .commit_container(options, config)
            .await
            .map_err(map_err)?;
        Ok(created.id)
    }

    /// Prepares the backend. Does not fail when the engine is down: `ping` tells, and
    /// every call reports `Unavailable` until it is back.
    pub fn connect(config: DockerBackendConfig) -> Result<DockerBackend, BackendError> {
        if !config.agent_path.is_file() {
            return Err(BackendError::Rejected(format!(
                "agent binary {} not found: build it with `make agent` or set vmm.agent_path",
                config.agent_path.display()
            )));
        }
        Ok(DockerBackend {
            docker: std::sync::Mutex::new(None),
            socket_path: config
                .host
                .strip_prefix("unix://")
                .unwrap_or(&config.host)
                .to_string(),
            config,
            isolated_ready: tokio::sync::OnceCell::new(),
        })
    }

    fn client(&self) -> Result<Docker, BackendError> {
        let mut slot = self
            .docker
            .lock()
            .map_err(|_| BackendError::Other("docker client lock poisoned".into()))?;
        if let Some(docker) = slot.as_ref() {
            return Ok(docker.clone());
        }
        // API 1.41 is what Docker 20.10 (Debian 12's docker.io) speaks; newer engines
        // accept it too, so no version negotiation round trip is needed.
        let version = bollard::ClientVersion {
            major_version: 1,
            minor_version: 41,
        };
        let docker = Docker::connect_with_unix(&self.socket_path, 120, &version)
            .map_err(|e| BackendError::Unavailable(e.to_string()))?;
        *slot = Some(docker.clone());
        Ok(docker)
    }

    /// The label filters of this installation's and worker's containers (Docker
    /// ANDs them).
    fn own_labels(&self) -> Vec<String> {
        vec![
            format!("{LABEL_INSTALLATION}={}", self.config.installation_id),
            format!("{LABEL_WORKER}={}", self.config.worker_id),
        ]
    }

    fn isolated(&self) -> bool {
        self.config.network_mode == ISOLATED
    }

    /// Makes the isolated network (ICC off) if it is missing and puts the guard's
    /// rules on its bridge. Without them no isolated sandbox starts: it would be
    /// less isolated than promised.
    async fn ensure_isolated_network(&self) -> Result<(), BackendError> {
        self.isolated_ready
            .get_or_try_init(|| async {
                let docker = self.client()?;
                let inspect = docker
                    .inspect_network(
                        ISOLATED_NETWORK,
                        None::<bollard::query_parameters::InspectNetworkOptions>,
                    )
                    .await;
                match inspect {
                    Ok(_) => {}
                    Err(e) if is_not_found(&e) => {
                        let request = bollard::models::NetworkCreateRequest {
                            name: ISOLATED_NETWORK.to_string(),
                            driver: Some("bridge".into()),
                            options: Some(HashMap::from([
                                ("com.docker.network.bridge.name".into(), ISOLATED_BRIDGE.into()),
                                (
                                    "com.docker.network.bridge.enable_icc".into(),
                                    "false".into(),
                                ),
                            ])),
                            labels: Some(HashMap::from([(LABEL_MANAGED.into(), "true".into())])),
                            ..Default::default()
                        };
                        match docker.create_network(request).await {
                            Ok(_) => {}
                            // Made by another installation meanwhile.
                            Err(bollard::errors::Error::DockerResponseServerError {
                                status_code: 409,
                                ..
                            }) => {}
                            Err(e) => return Err(map_err(e)),
                        }
                    }
                    Err(e) => return Err(map_err(e)),
                }
                crate::net::guard::guard_bridge(ISOLATED_BRIDGE)
                    .await
                    .map_err(|e| {
                        BackendError::Unavailable(format!(
                            "cannot put the firewall rules of the isolated network in place ({e}); \
                             run as root with iptables, or set vmm.docker.network_mode to bridge to run without isolation"
                        ))
                    })
            })
            .await
            .map(|_| ())
    }

    /// Opens `egress_allow` to a new isolated sandbox, by its address (and clears
    /// what a dead sandbox left on that address).
    async fn open_egress(&self, vm_id: &str) -> Result<(), BackendError> {
        let info = self
            .client()?
            .inspect_container(&container_name(vm_id), None::<InspectContainerOptions>)
            .await
            .map_err(map_err)?;
        let ip = info
            .network_settings
            .and_then(|n| n.networks)
            .and_then(|n| n.get(ISOLATED_NETWORK).cloned())
            .and_then(|e| e.ip_address)
            .and_then(|ip| ip.parse().ok())
            .ok_or_else(|| {
                BackendError::Other(format!(
                    "sandbox {vm_id} has no address on {ISOLATED_NETWORK}"
                ))
            })?;
        crate::net::guard::open_for_sandbox(ISOLATED_BRIDGE, vm_id, ip, &self.config.egress_allow)
            .await
            .map_err(|e| BackendError::Other(format!("cannot open egress_allow to {vm_id}: {e}")))
    }

    fn run_dir(&self, vm_id: &str) -> PathBuf {
        self.config.socket_dir.join(vm_id)
    }

    async fn create_container(
        &self,
        spec: &SandboxSpec,
        run_dir: &Path,
    ) -> Result<(), BackendError> {
        let labels = HashMap::from([
            (LABEL_MANAGED.to_string(), "true".to_string()),
            (
                LABEL_INSTALLATION.to_string(),
                self.config.installation_id.clone(),
            ),
            (LABEL_WORKER.to_string(), self.config.worker_id.clone()),
            (LABEL_VM.to_string(), spec.vm_id.clone()),
        ]);
        let mut entrypoint = vec![
            AGENT_IN_CONTAINER.to_string(),
            "--listen".to_string(),
            format!("unix:{RUN_DIR_IN_CONTAINER}/{AGENT_SOCKET_NAME}"),
        ];
        if let Some(token) = &spec.access_token {
            write_token_file(&run_dir.join(AGENT_TOKEN_NAME), token)?;
            entrypoint.push(format!(
                "--access-token-file={RUN_DIR_IN_CONTAINER}/{AGENT_TOKEN_NAME}"
            ));
        }
        let memory = (spec.memory_mb as i64) * 1024 * 1024;
        let host_config = HostConfig {
            binds: Some(vec![
                format!(
                    "{}:{AGENT_IN_CONTAINER}:ro",
                    self.config.agent_path.display()
                ),
                format!("{}:{RUN_DIR_IN_CONTAINER}:rw", run_dir.display()),
            ]),
            nano_cpus: Some(i64::from(spec.vcpus) * 1_000_000_000),
            memory: Some(memory),
            memory_swap: Some(memory),
            pids_limit: Some(self.config.pids_limit),
            // docker-init (tini) as PID 1 reaps orphans the commands leave behind.
            init: Some(true),
            network_mode: Some(if self.isolated() {
                ISOLATED_NETWORK.to_string()
            } else {
                self.config.network_mode.clone()
            }),
            security_opt: Some(vec!["no-new-privileges".to_string()]),
            cap_drop: Some(DROPPED_CAPABILITIES.map(String::from).to_vec()),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            hostname: Some(spec.name.chars().take(63).collect()),
            entrypoint: Some(entrypoint),
            cmd: Some(vec![]),
            labels: Some(labels),
            host_config: Some(host_config),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default()
            .name(&container_name(&spec.vm_id))
            .build();
        self.client()?
            .create_container(Some(options), body)
            .await
            .map_err(|e| match e {
                bollard::errors::Error::DockerResponseServerError {
                    status_code: 404,
                    ..
                } => BackendError::Rejected(format!(
                    "image {:?} is not present on this worker (no registry is used: build or load it first)",
                    spec.image
                )),
                other => map_err(other),
            })?;
        self.client()?
            .start_container(&container_name(&spec.vm_id), None::<StartContainerOptions>)
            .await
            .map_err(map_err)?;
        // Always, also without an allow list: the address may carry a dead
        // sandbox's openings, which this one must not inherit.
        if self.isolated() {
            self.open_egress(&spec.vm_id).await?;
        }
        Ok(())
    }
}

/// Writes the agent's token for it to take at start (mode 0600: only root in the
/// container reads it, and the agent deletes it).
fn write_token_file(path: &Path, token: &str) -> Result<(), BackendError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(token.as_bytes()))
        .map_err(|e| BackendError::Other(format!("cannot write {}: {e}", path.display())))
}

fn state_of(state: Option<&bollard::models::ContainerState>) -> SandboxState {
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
            oom_killed: state.oom_killed.unwrap_or(false),
        },
    }
}

#[async_trait]
impl Backend for DockerBackend {
    fn kind(&self) -> Orchestrator {
        Orchestrator::Docker
    }

    async fn ping(&self) -> Result<(), BackendError> {
        self.client()?.ping().await.map(|_| ()).map_err(map_err)
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<(), BackendError> {
        if self.isolated() {
            self.ensure_isolated_network().await?;
        }
        let run_dir = self.run_dir(&spec.vm_id);
        tokio::fs::create_dir_all(&run_dir).await.map_err(|e| {
            BackendError::Other(format!("cannot create {}: {e}", run_dir.display()))
        })?;
        if let Err(e) = self.create_container(spec, &run_dir).await {
            // Leave nothing half-made behind: no container, no socket directory.
            if let Err(cleanup) = self.delete(&spec.vm_id).await {
                tracing::warn!(vm_id = %spec.vm_id, error = %cleanup, "cleanup after failed create");
            }
            return Err(e);
        }
        Ok(())
    }

    async fn delete(&self, vm_id: &str) -> Result<(), BackendError> {
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match self
            .client()?
            .remove_container(&container_name(vm_id), Some(options))
            .await
        {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {}
            // 409: removal already in progress, which is what we want.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) => {}
            Err(e) => return Err(map_err(e)),
        }
        if self.isolated()
            && !self.config.egress_allow.is_empty()
            && let Err(e) = crate::net::guard::close_for_sandbox(vm_id).await
        {
            return Err(BackendError::Other(format!(
                "cannot remove the egress rules of {vm_id}: {e}"
            )));
        }
        let run_dir = self.run_dir(vm_id);
        match tokio::fs::remove_dir_all(&run_dir).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(BackendError::Other(format!(
                "cannot remove {}: {e}",
                run_dir.display()
            ))),
        }
    }

    async fn status(&self, vm_id: &str) -> Result<SandboxState, BackendError> {
        match self
            .client()?
            .inspect_container(&container_name(vm_id), None::<InspectContainerOptions>)
            .await
        {
            Ok(info) => Ok(state_of(info.state.as_ref())),
            Err(e) if is_not_found(&e) => Ok(SandboxState::Missing),
            Err(e) => Err(map_err(e)),
        }
    }

    async fn list(&self) -> Result<Vec<SandboxInfo>, BackendError> {
        let filters = HashMap::from([("label", self.own_labels())]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let containers = self
            .client()?
            .list_containers(Some(options))
            .await
            .map_err(map_err)?;
        let mut out = Vec::with_capacity(containers.len());
        for c in containers {
            let Some(vm_id) = c.labels.as_ref().and_then(|l| l.get(LABEL_VM)).cloned() else {
                continue;
            };
            let state = self.status(&vm_id).await?;
            out.push(SandboxInfo { vm_id, state });
        }
        Ok(out)
    }

    fn watch_exits(&self) -> BoxStream<'static, Result<SandboxExit, BackendError>> {
        let filters = HashMap::from([
            ("type", vec!["container".to_string()]),
            ("event", vec!["die".to_string()]),
            ("label", self.own_labels()),
        ]);
        let options = EventsOptionsBuilder::default().filters(&filters).build();
        let docker = match self.client() {
            Ok(docker) => docker,
            Err(e) => return futures::stream::once(async move { Err(e) }).boxed(),
        };
        docker
            .events(Some(options))
            .filter_map(|event| async move {
                match event {
                    Err(e) => Some(Err(map_err(e))),
                    Ok(message) => {
                        let attributes = message.actor?.attributes?;
                        let vm_id = attributes.get(LABEL_VM)?.clone();
                        let exit_code = attributes
                            .get("exitCode")
                            .and_then(|c| c.parse().ok())
                            .unwrap_or(-1);
                        Some(Ok(SandboxExit { vm_id, exit_code }))
                    }
                }
            })
            .boxed()
    }

    fn agent_socket(&self, vm_id: &str) -> PathBuf {
        self.run_dir(vm_id).join(AGENT_SOCKET_NAME)
    }

    /// `docker pause`: the cgroup freezer stops every process of the container.
    async fn pause(&self, vm_id: &str) -> Result<(), BackendError> {
        self.client()?
            .pause_container(&container_name(vm_id))
            .await
            .map_err(map_err)
    }

    async fn resume(&self, vm_id: &str) -> Result<(), BackendError> {
        self.client()?
            .unpause_container(&container_name(vm_id))
            .await
            .map_err(map_err)
    }
}
