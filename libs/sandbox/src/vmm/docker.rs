//! The Docker backend: one container per sandbox, running our agent as its entrypoint.
//!
//! - The static agent binary is bind-mounted read-only at [`AGENT_IN_CONTAINER`]; the
//!   image needs nothing of ours, so any image works.
//! - A per-sandbox host directory is mounted at [`RUN_DIR_IN_CONTAINER`]; the agent
//!   listens on a unix socket there, which the host reaches directly -- never through
//!   a symlink the container may have put in its place (`agent_client::connect_unix`).
//!   The agent's access token is left there as a file that the agent reads and
//!   deletes at start: it is in no environment, image or `docker inspect`.
//! - CPU, memory (no extra swap) and pid limits come from the VM's size. The
//!   per-sandbox run directory is a small tmpfs of its own (when we are root), so
//!   the container cannot fill the host's data directory through it.
//! - Disk: `disk_mb` is the engine's hard limit where its storage has one (overlay2
//!   on XFS mounted with `pquota`: writes fail with ENOSPC); elsewhere a watch over
//!   every sandbox's writable layer stops one that writes more ([`DiskQuota`]).
//! - Labels name the installation, the owning worker and the VM, so a restarted
//!   worker finds (adopts or removes) exactly the containers it owns -- not those of
//!   another installation on the same host that happens to use the same worker id.

mod run_dir;
mod state;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

use super::{Backend, BackendError, Limit, SandboxExit, SandboxInfo, SandboxSpec, SandboxState};
use crate::net::dns::SandboxResolver;
use crate::net::guard::Fence;
use run_dir::*;
use state::*;

pub const AGENT_IN_CONTAINER: &str = "/.aetherium/bin/aetherium-agent";
pub const RUN_DIR_IN_CONTAINER: &str = "/.aetherium/run";
pub const AGENT_SOCKET_NAME: &str = "agent.sock";
/// The file in the run directory that hands the agent its access token.
pub const AGENT_TOKEN_NAME: &str = "agent.token";

pub const LABEL_MANAGED: &str = "io.aetherium.managed";
pub const LABEL_WORKER: &str = "io.aetherium.worker_id";
pub const LABEL_INSTALLATION: &str = "io.aetherium.installation";
pub const LABEL_VM: &str = "io.aetherium.vm_id";
/// The sandbox's disk quota in MiB, for the watch (and for a restarted worker).
pub const LABEL_DISK_MB: &str = "io.aetherium.disk_mb";

/// How often the disk watch looks at every sandbox's writable layer.
const DISK_WATCH_INTERVAL: Duration = Duration::from_secs(1);
/// The run directory's tmpfs: room for the socket and the token file, no more.
const RUN_DIR_TMPFS: &str = "size=256k,nr_inodes=32,mode=0755";

/// How `disk_mb` is enforced on this engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskQuota {
    /// The engine's own limit (`--storage-opt size`): writes past it fail.
    Engine,
    /// The watch: a sandbox over its quota is stopped (within about a second).
    Watch,
}

impl DiskQuota {
    /// Whether an engine with this `docker info` storage driver and driver status
    /// can limit a container's writable layer: overlay2 over XFS. (`pquota` is not
    /// shown; an engine without it refuses the first create, and we fall back.)
    pub fn for_storage(driver: &str, driver_status: &[Vec<String>]) -> DiskQuota {
        let xfs = driver_status
            .iter()
            .any(|kv| kv.len() == 2 && kv[0] == "Backing Filesystem" && kv[1] == "xfs");
        if driver == "overlay2" && xfs {
            DiskQuota::Engine
        } else {
            DiskQuota::Watch
        }
    }
}

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
    /// The DNS servers isolated sandboxes' queries go to, through the isolated
    /// network's resolver ([`crate::net::dns`]), which applies their policies.
    pub dns_upstream: Vec<std::net::SocketAddr>,
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
    /// Set once the isolated network, its guard and its resolver are in place
    /// (this process).
    isolated_ready: tokio::sync::OnceCell<SandboxResolver>,
    /// The host uid and gid a container's root is ([`DockerBackend::remapped_root`]).
    remapped_root: tokio::sync::OnceCell<Option<(u32, u32)>>,
    /// How disk quotas are enforced, found out at the first create that has one.
    disk_quota: Mutex<Option<DiskQuota>>,
    /// Sandboxes the disk watch stopped (their exit is reported as over the limit).
    over_disk: Arc<Mutex<HashSet<String>>>,
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

/// Docker's answer whose message says `what` (its wording for a state conflict:
/// a 409 for "already paused", a 500 for "is not paused").
fn is_conflict_saying(e: &bollard::errors::Error, what: &str) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError { message, .. } if message.contains(what)
    )
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
            remapped_root: tokio::sync::OnceCell::new(),
            disk_quota: Mutex::new(None),
            over_disk: Arc::new(Mutex::new(HashSet::new())),
        })
    }

    /// How this engine enforces disk quotas (asked once).
    pub async fn disk_quota(&self) -> Result<DiskQuota, BackendError> {
        if let Some(mode) = *self.disk_quota.lock().unwrap_or_else(|e| e.into_inner()) {
            return Ok(mode);
        }
        let info = self.client()?.info().await.map_err(map_err)?;
        let mode = DiskQuota::for_storage(
            info.driver.as_deref().unwrap_or_default(),
            info.driver_status.as_deref().unwrap_or_default(),
        );
        self.set_disk_quota(mode);
        Ok(mode)
    }

    fn set_disk_quota(&self, mode: DiskQuota) {
        *self.disk_quota.lock().unwrap_or_else(|e| e.into_inner()) = Some(mode);
    }

    fn is_over_disk(&self, vm_id: &str) -> bool {
        self.over_disk
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(vm_id)
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

    /// Makes the isolated network (ICC off) if it is missing, puts the guard's
    /// rules on its bridge and starts its resolver. Without them no isolated
    /// sandbox starts: it would be less isolated than promised.
    async fn ensure_isolated_network(&self) -> Result<&SandboxResolver, BackendError> {
        self.isolated_ready
            .get_or_try_init(|| async {
                let docker = self.client()?;
                let inspect = docker
                    .inspect_network(
                        ISOLATED_NETWORK,
                        None::<bollard::query_parameters::InspectNetworkOptions>,
                    )
                    .await;
                let network = match inspect {
                    Ok(network) => network,
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
                        docker
                            .inspect_network(
                                ISOLATED_NETWORK,
                                None::<bollard::query_parameters::InspectNetworkOptions>,
                            )
                            .await
                            .map_err(map_err)?
                    }
                    Err(e) => return Err(map_err(e)),
                };
                let gateway = network
                    .ipam
                    .and_then(|ipam| ipam.config)
                    .unwrap_or_default()
                    .into_iter()
                    .find_map(|config| config.gateway?.parse::<std::net::Ipv4Addr>().ok())
                    .ok_or_else(|| {
                        BackendError::Unavailable(format!(
                            "network {ISOLATED_NETWORK} has no IPv4 gateway address; remove it (docker network rm {ISOLATED_NETWORK}) to have it made again"
                        ))
                    })?;
                let fence = Fence::docker(ISOLATED_BRIDGE);
                let guarded = match crate::net::guard::guard_bridge(fence, false).await {
                    Ok(()) => {
                        SandboxResolver::start(
                            fence,
                            gateway,
                            self.config.egress_allow.clone(),
                            self.config.dns_upstream.clone(),
                        )
                        .await
                    }
                    Err(e) => Err(e),
                };
                guarded.map_err(|e| {
                    BackendError::Unavailable(format!(
                        "cannot put the firewall rules and resolver of the isolated network in place ({e}); \
                         run as root with iptables, or set vmm.docker.network_mode to bridge to run without isolation"
                    ))
                })
            })
            .await
    }

    /// Puts an isolated sandbox's rules in place, by its address: its network policy,
    /// the operator's `egress_allow` and its DNS through the resolver (and clears
    /// what an older policy, or a dead sandbox, left on that address).
    async fn open_egress(
        &self,
        vm_id: &str,
        policy: Option<&aetherium_types::NetworkPolicy>,
    ) -> Result<(), BackendError> {
        let resolver = self.ensure_isolated_network().await?;
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
        resolver.open(vm_id, ip, policy).await.map_err(|e| match e {
            crate::net::NetError::Config(message) => BackendError::Rejected(message),
            e => BackendError::Other(format!("cannot set the network rules of {vm_id}: {e}")),
        })
    }

    /// Where the engine remaps user namespaces (its `userns-remap`), the host uid
    /// and gid a container's root runs as, which must own what the container
    /// writes into on the host (its run directory, its token); else `None`.
    async fn remapped_root(&self) -> Result<Option<(u32, u32)>, BackendError> {
        self.remapped_root
            .get_or_try_init(|| async {
                let info = self.client()?.info().await.map_err(map_err)?;
                let remapped = info
                    .security_options
                    .unwrap_or_default()
                    .iter()
                    .any(|option| option.split(',').any(|part| part == "name=userns"));
                if !remapped {
                    return Ok(None);
                }
                let root_dir = info.docker_root_dir.unwrap_or_default();
                remapped_ids(&root_dir).map(Some).ok_or_else(|| {
                    BackendError::Unavailable(format!(
                        "the Docker engine remaps user namespaces, but its root dir {root_dir:?} does not name the remapped uid and gid (<data-root>/<uid>.<gid>)"
                    ))
                })
            })
            .await
            .copied()
    }

    fn no_policies(&self) -> BackendError {
        BackendError::Rejected(format!(
            "network policies need vmm.docker.network_mode: isolated (this worker's is {:?})",
            self.config.network_mode
        ))
    }

    fn run_dir(&self, vm_id: &str) -> PathBuf {
        self.config.socket_dir.join(vm_id)
    }

    async fn create_container(
        &self,
        spec: &SandboxSpec,
        run_dir: &Path,
    ) -> Result<(), BackendError> {
        let quota = match spec.disk_mb {
            Some(_) => Some(self.disk_quota().await?),
            None => None,
        };
        match self.try_create_container(spec, run_dir, quota).await {
            // XFS without `pquota`: the engine cannot after all; the watch can.
            Err(BackendError::Other(message))
                if quota == Some(DiskQuota::Engine) && message.contains("storage-opt") =>
            {
                tracing::warn!(
                    "the Docker engine cannot limit a container's disk ({message}); \
                     disk_mb is enforced by watching instead"
                );
                self.set_disk_quota(DiskQuota::Watch);
                self.try_create_container(spec, run_dir, Some(DiskQuota::Watch))
                    .await
            }
            done => done,
        }
    }

    async fn try_create_container(
        &self,
        spec: &SandboxSpec,
        run_dir: &Path,
        quota: Option<DiskQuota>,
    ) -> Result<(), BackendError> {
        let mut labels = HashMap::from([
            (LABEL_MANAGED.to_string(), "true".to_string()),
            (
                LABEL_INSTALLATION.to_string(),
                self.config.installation_id.clone(),
            ),
            (LABEL_WORKER.to_string(), self.config.worker_id.clone()),
            (LABEL_VM.to_string(), spec.vm_id.clone()),
        ]);
        if let Some(disk_mb) = spec.disk_mb {
            labels.insert(LABEL_DISK_MB.to_string(), disk_mb.to_string());
        }
        let storage_opt = match (quota, spec.disk_mb) {
            (Some(DiskQuota::Engine), Some(disk_mb)) => {
                Some(HashMap::from([("size".to_string(), format!("{disk_mb}m"))]))
            }
            _ => None,
        };
        let mut entrypoint = vec![
            AGENT_IN_CONTAINER.to_string(),
            "--listen".to_string(),
            format!("unix:{RUN_DIR_IN_CONTAINER}/{AGENT_SOCKET_NAME}"),
            // A container shares the host's kernel: its commands get a seccomp
            // filter beyond the engine's profile (io_uring, userfaultfd, …).
            "--syscall-filter".to_string(),
        ];
        if let Some(token) = &spec.access_token {
            // A retried create finds the file the attempt before left.
            let _ = std::fs::remove_file(run_dir.join(AGENT_TOKEN_NAME));
            let owner = self.remapped_root().await?;
            write_token_file(&run_dir.join(AGENT_TOKEN_NAME), token, owner)?;
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
            // The engine's resolver forwards to the gateway from the sandbox's own
            // address, so that the isolated network's resolver knows whose it is.
            dns: self
                .isolated_ready
                .get()
                .map(|resolver| vec![resolver.listen_addr().ip().to_string()]),
            storage_opt,
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
            self.open_egress(&spec.vm_id, spec.network_policy.as_ref())
                .await?;
        }
        Ok(())
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
        } else if spec.network_policy.is_some() {
            return Err(self.no_policies());
        }
        let run_dir = self.run_dir(&spec.vm_id);
        tokio::fs::create_dir_all(&run_dir).await.map_err(|e| {
            BackendError::Other(format!("cannot create {}: {e}", run_dir.display()))
        })?;
        // A retried create may find the tmpfs of the attempt before.
        unmount_run_dir(&run_dir);
        let made = match self.remapped_root().await {
            Ok(owner) => mount_run_dir(&run_dir, owner),
            Err(e) => Err(e),
        };
        let made = match made {
            Ok(()) => self.create_container(spec, &run_dir).await,
            Err(e) => Err(e),
        };
        if let Err(e) = made {
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
        if self.isolated() {
            let closed = crate::net::dns::close_sandbox(
                self.isolated_ready.get(),
                Fence::docker(ISOLATED_BRIDGE),
                vm_id,
            )
            .await;
            closed.map_err(|e| {
                BackendError::Other(format!("cannot remove the network rules of {vm_id}: {e}"))
            })?;
        }
        self.over_disk
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(vm_id);
        let run_dir = self.run_dir(vm_id);
        unmount_run_dir(&run_dir);
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
            Ok(info) => Ok(state_of(info.state.as_ref(), self.is_over_disk(vm_id))),
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
        // The disk watch runs while the events are watched: a sandbox it stops
        // dies, and its exit comes through the events like any other.
        let watch = {
            let docker = docker.clone();
            let own_labels = self.own_labels();
            let over_disk = self.over_disk.clone();
            let engine_enforces = *self.disk_quota.lock().unwrap_or_else(|e| e.into_inner())
                == Some(DiskQuota::Engine);
            futures::stream::unfold((), move |()| {
                let (docker, own_labels, over_disk) =
                    (docker.clone(), own_labels.clone(), over_disk.clone());
                async move {
                    tokio::time::sleep(DISK_WATCH_INTERVAL).await;
                    if !engine_enforces
                        && let Err(e) = stop_over_disk(&docker, &own_labels, &over_disk).await
                    {
                        tracing::debug!(error = %e, "disk watch");
                    }
                    Some(((), ()))
                }
            })
            .filter_map(|()| async { None })
        };
        let events = docker
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
            .map(Some)
            // Ends the merged stream when the events end (the watch never does).
            .chain(futures::stream::once(async { None }));
        futures::stream::select(events, watch)
            .take_while(|item| std::future::ready(item.is_some()))
            .filter_map(|item| async move { item })
            .boxed()
    }

    fn agent_socket(&self, vm_id: &str) -> PathBuf {
        self.run_dir(vm_id).join(AGENT_SOCKET_NAME)
    }

    async fn set_network_policy(
        &self,
        vm_id: &str,
        policy: Option<&aetherium_types::NetworkPolicy>,
    ) -> Result<(), BackendError> {
        if !self.isolated() {
            return Err(self.no_policies());
        }
        self.open_egress(vm_id, policy).await
    }

    /// `docker pause`: the cgroup freezer stops every process of the container.
    async fn pause(&self, vm_id: &str) -> Result<(), BackendError> {
        match self.client()?.pause_container(&container_name(vm_id)).await {
            // Two pauses queued at once: the second finds the state it wants.
            Err(e) if is_conflict_saying(&e, "already paused") => Ok(()),
            other => other.map_err(map_err),
        }
    }

    async fn resume(&self, vm_id: &str) -> Result<(), BackendError> {
        match self
            .client()?
            .unpause_container(&container_name(vm_id))
            .await
        {
            Err(e) if is_conflict_saying(&e, "is not paused") => Ok(()),
            other => other.map_err(map_err),
        }
    }
}

#[cfg(test)]
mod tests;
