//! Guest images for the microVM backends: a Docker image (or a directory) turned into
//! an ext4 root filesystem with the agent installed, plus a kernel (bzImage for QEMU,
//! an extracted `vmlinux` for Firecracker) and an initramfs that loads the virtio /
//! vsock / net modules and hands over to the rootfs with the agent as PID 1.
//!
//! Images live under `<data_dir>/images/<digest>/`, cached by content digest; a
//! reference (the source's name, e.g. `aetherium/base:latest`) points at a digest.
//! Each VM boots from its own copy-on-write (reflink) or sparse copy of the rootfs.

mod cpio;
mod initramfs;
mod kernel;
mod modules;
mod rootfs;

use std::io::Read as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

pub use cpio::{CpioEntry, CpioWriter, read_newc};
pub use kernel::{KernelPackage, bzimage_payload, extract_vmlinux};
pub use modules::{GUEST_MODULES, KernelModule, load_order, module_depends};

use crate::net::GuestNetwork;

/// Changes whenever the builder lays out images differently, so that older cached
/// images are rebuilt rather than booted with a mismatched init.
pub const BUILDER_VERSION: &str = "aetherium-image-builder/2";

/// Where the agent lives in every guest (as in the Docker backend's containers).
pub const AGENT_IN_GUEST: &str = "/.aetherium/bin/aetherium-agent";

/// The vsock port the agent listens on inside a microVM (envd's port).
pub const AGENT_VSOCK_PORT: u32 = 49983;

/// Free space added to the root filesystem by default, in MiB.
pub const DEFAULT_EXTRA_MIB: u64 = 512;

/// The kernel directory when none is configured: `AETHERIUM_KERNEL_DIR`, else
/// `/var/lib/aetherium/kernel`.
pub fn default_kernel_dir() -> PathBuf {
    std::env::var_os("AETHERIUM_KERNEL_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/aetherium/kernel"))
}

/// The guest kernel's command line (the boot contract of the initramfs' `/init`):
/// serial console, reboot ends the VM, root on the first virtio disk, and `ip=` when
/// the guest has a network.
pub fn kernel_cmdline(network: Option<&GuestNetwork>) -> String {
    let mut cmdline = String::from("console=ttyS0 reboot=k panic=1 root=/dev/vda rw");
    if let Some(network) = network {
        cmdline.push(' ');
        cmdline.push_str(&network.kernel_ip_arg());
    }
    cmdline
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// No image is built for this reference.
    #[error("no VM image {0:?} on this host: build it with `aetherium image build {0}`")]
    NotFound(String),
    /// The request cannot work as asked (bad source, missing kernel, …).
    #[error("{0}")]
    Invalid(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl ImageError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ImageError::Io {
            context: context.into(),
            source,
        }
    }
}

/// A built guest image: every file a VMM needs to boot it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmImage {
    /// The name it was built from / tagged as (`aetherium/base:latest`).
    pub reference: String,
    /// `sha256:<hex>` over the source, the agent and the kernel.
    pub digest: String,
    pub rootfs: PathBuf,
    /// The kernel as shipped (QEMU boots it directly).
    pub bzimage: PathBuf,
    /// The uncompressed ELF kernel (Firecracker needs it).
    pub vmlinux: PathBuf,
    pub initramfs: PathBuf,
    pub kernel_version: String,
    pub rootfs_bytes: u64,
    /// Whether `/bin/sh` exists in the rootfs (commands given as a shell line need it).
    pub has_shell: bool,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// The image cache of this host.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
}

/// What to turn into an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildSource {
    /// A Docker image reference, exported through the Docker engine.
    Docker(String),
    /// A directory on this host holding a root filesystem.
    Directory(PathBuf),
}

#[derive(Debug, Clone)]
pub struct BuildRequest {
    pub source: BuildSource,
    /// The reference to record; defaults to the Docker reference or the directory's path.
    pub reference: Option<String>,
    /// An extracted Debian `linux-image-*-cloud-amd64` package.
    pub kernel_dir: PathBuf,
    /// The static agent binary installed into the image.
    pub agent: PathBuf,
    /// A static busybox for the initramfs.
    pub busybox: PathBuf,
    /// Free space added to the root filesystem, in MiB.
    pub extra_mib: u64,
    /// Docker engine socket (`unix:///var/run/docker.sock` or a bare path).
    pub docker_host: String,
}

impl BuildRequest {
    pub fn new(
        source: BuildSource,
        kernel_dir: impl Into<PathBuf>,
        agent: impl Into<PathBuf>,
    ) -> Self {
        BuildRequest {
            source,
            reference: None,
            kernel_dir: kernel_dir.into(),
            agent: agent.into(),
            busybox: PathBuf::from("/bin/busybox"),
            extra_mib: DEFAULT_EXTRA_MIB,
            docker_host: "unix:///var/run/docker.sock".into(),
        }
    }

    /// The reference the image is recorded under.
    pub fn reference(&self) -> String {
        match (&self.reference, &self.source) {
            (Some(reference), _) => reference.clone(),
            (None, BuildSource::Docker(reference)) => reference.clone(),
            (None, BuildSource::Directory(dir)) => std::path::absolute(dir)
                .unwrap_or_else(|_| dir.clone())
                .display()
                .to_string(),
        }
    }
}

/// A step of a build, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildStep {
    /// Checking the inputs and computing the digest.
    Resolve,
    /// Exporting the Docker image's files (bytes of the tar stream).
    Export,
    /// Copying a source directory.
    Copy,
    InstallAgent,
    /// `mkfs.ext4 -d` (bytes written).
    Mkfs,
    /// Copying the bzImage and extracting vmlinux.
    Kernel,
    Initramfs,
    /// Moving the finished image into the cache.
    Store,
}

impl std::fmt::Display for BuildStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BuildStep::Resolve => "resolving the inputs",
            BuildStep::Export => "exporting the Docker image",
            BuildStep::Copy => "copying the directory",
            BuildStep::InstallAgent => "installing the agent",
            BuildStep::Mkfs => "making the ext4 root filesystem",
            BuildStep::Kernel => "extracting vmlinux from the kernel",
            BuildStep::Initramfs => "writing the initramfs",
            BuildStep::Store => "storing the image",
        })
    }
}

/// What a build reports while it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildProgress {
    Step(BuildStep),
    /// Progress of a long step.
    Bytes {
        step: BuildStep,
        done: u64,
        total: Option<u64>,
    },
    /// Something the image's user should know (e.g. no `/bin/sh`).
    Warning(String),
    /// The image was already built: nothing to do.
    Cached {
        digest: String,
    },
}

/// `manifest.json` of an image directory (paths are implied by the layout).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Manifest {
    digest: String,
    /// What it was built from (`docker:<ref> <image id>` or `dir:<path>`).
    source: String,
    kernel_version: String,
    rootfs_bytes: u64,
    has_shell: bool,
    created_at: chrono::DateTime<chrono::Utc>,
    builder: String,
}

const ROOTFS_FILE: &str = "rootfs.ext4";
const BZIMAGE_FILE: &str = "bzImage";
const VMLINUX_FILE: &str = "vmlinux";
const INITRAMFS_FILE: &str = "initramfs.cpio";
const MANIFEST_FILE: &str = "manifest.json";

/// A reference as a file name: everything but `[A-Za-z0-9_.-]` (and a leading `.`)
/// percent-encoded, so `aetherium/base:latest` is `aetherium%2Fbase%3Alatest`.
fn escape_reference(reference: &str) -> String {
    let mut out = String::new();
    for (i, byte) in reference.bytes().enumerate() {
        let plain =
            byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-' || (byte == b'.' && i > 0);
        if plain {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn unescape_reference(name: &str) -> Option<String> {
    let bytes = name.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Removes a build's scratch directory however the build ends.
struct ScratchDir(PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.0.display(), error = %e, "cannot remove a build's scratch directory");
        }
    }
}

/// A unique name in this store (pid, time and randomness: concurrent builds in one
/// process or many never collide).
fn unique_name(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}{}-{nanos}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

fn hash_file(hasher: &mut Sha256, path: &Path, what: &str) -> Result<(), ImageError> {
    let mut file = std::fs::File::open(path)
        .map_err(|e| ImageError::io(format!("cannot read the {what} {}", path.display()), e))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut length = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| ImageError::io(format!("cannot read the {what} {}", path.display()), e))?;
        if n == 0 {
            break;
        }
        length += n as u64;
        hasher.update(&buf[..n]);
    }
    hasher.update(length.to_le_bytes());
    Ok(())
}

/// A directory's identity: every entry's path, type, mode, owner, link target and
/// content, in a stable order.
fn hash_directory(root: &Path) -> Result<String, ImageError> {
    let mut hasher = Sha256::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        let dir = root.join(&relative);
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .map_err(|e| ImageError::io(format!("cannot list {}", dir.display()), e))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        entries.sort();
        for name in entries.into_iter().rev() {
            let path = relative.join(&name);
            let full = root.join(&path);
            let meta = std::fs::symlink_metadata(&full)
                .map_err(|e| ImageError::io(format!("cannot stat {}", full.display()), e))?;
            hasher.update(path.as_os_str().as_encoded_bytes());
            hasher.update([0]);
            hasher.update(format!(
                "{:o} {} {} {}\n",
                meta.mode(),
                meta.uid(),
                meta.gid(),
                meta.size()
            ));
            if meta.is_dir() {
                pending.push(path);
            } else if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&full).map_err(|e| {
                    ImageError::io(format!("cannot read link {}", full.display()), e)
                })?;
                hasher.update(target.as_os_str().as_encoded_bytes());
            } else if meta.is_file() {
                hash_file(&mut hasher, &full, "file")?;
            }
        }
    }
    Ok(format!("{:x}", hasher.finalize()))
}

/// The ext4 size for the staged files: their blocks with a fifth more for metadata,
/// the inode tables, the journal (which mke2fs sizes by the filesystem) and the
/// requested free space. In MiB.
fn rootfs_size_mib(staged_bytes: u64, inodes: u64, extra_mib: u64) -> u64 {
    const MIB: u64 = 1 << 20;
    let data = (staged_bytes * 6 / 5 + inodes * 256).div_ceil(MIB);
    let before_journal = data + extra_mib + 16;
    let journal = match before_journal {
        0..=1024 => 16,
        1025..=2048 => 32,
        2049..=16384 => 64,
        _ => 256,
    };
    before_journal + journal
}

impl ImageStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ImageStore { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn refs_dir(&self) -> PathBuf {
        self.root.join("refs")
    }

    fn scratch_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn ref_path(&self, reference: &str) -> PathBuf {
        self.refs_dir().join(escape_reference(reference))
    }

    fn image_dir(&self, digest: &str) -> PathBuf {
        self.root.join(digest.trim_start_matches("sha256:"))
    }

    /// The image a reference names, if built.
    pub fn resolve(&self, reference: &str) -> Result<Option<VmImage>, ImageError> {
        let path = self.ref_path(reference);
        let digest = match std::fs::read_to_string(&path) {
            Ok(text) => text.trim().to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ImageError::io(format!("cannot read {}", path.display()), e)),
        };
        self.load(reference, &digest).map(Some)
    }

    /// Like [`ImageStore::resolve`], with a clear error when it is not built.
    pub fn require(&self, reference: &str) -> Result<VmImage, ImageError> {
        self.resolve(reference)?
            .ok_or_else(|| ImageError::NotFound(reference.to_string()))
    }

    fn load(&self, reference: &str, digest: &str) -> Result<VmImage, ImageError> {
        let hex = digest.trim_start_matches("sha256:");
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ImageError::Invalid(format!(
                "the reference {reference:?} points at a malformed digest {digest:?}"
            )));
        }
        let dir = self.image_dir(digest);
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            ImageError::io(
                format!(
                    "the image {reference:?} ({digest}) is damaged: cannot read {}; remove it with `aetherium image rm {reference}` and build it again",
                    path.display()
                ),
                e,
            )
        })?;
        let manifest: Manifest = serde_json::from_str(&text).map_err(|e| {
            ImageError::Invalid(format!(
                "the image {reference:?} has a bad {}: {e}",
                path.display()
            ))
        })?;
        Ok(VmImage {
            reference: reference.to_string(),
            digest: manifest.digest,
            rootfs: dir.join(ROOTFS_FILE),
            bzimage: dir.join(BZIMAGE_FILE),
            vmlinux: dir.join(VMLINUX_FILE),
            initramfs: dir.join(INITRAMFS_FILE),
            kernel_version: manifest.kernel_version,
            rootfs_bytes: manifest.rootfs_bytes,
            has_shell: manifest.has_shell,
            created_at: manifest.created_at,
        })
    }

    /// Every image by reference, sorted by reference.
    pub fn list(&self) -> Result<Vec<VmImage>, ImageError> {
        let dir = self.refs_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(ImageError::io(format!("cannot list {}", dir.display()), e)),
        };
        let mut images = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue; // a reference being written
            }
            let Some(reference) = unescape_reference(&name) else {
                continue;
            };
            // One damaged image must not hide the others.
            match self.resolve(&reference) {
                Ok(Some(image)) => images.push(image),
                Ok(None) => {}
                Err(e) => tracing::warn!(%reference, error = %e, "skipping a damaged image"),
            }
        }
        images.sort_by(|a, b| a.reference.cmp(&b.reference));
        Ok(images)
    }

    /// Removes a reference, and the image's files when no other reference names it.
    /// Returns whether the files were removed.
    pub fn remove(&self, reference: &str) -> Result<bool, ImageError> {
        let path = self.ref_path(reference);
        let digest = match std::fs::read_to_string(&path) {
            Ok(text) => text.trim().to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ImageError::NotFound(reference.to_string()));
            }
            Err(e) => return Err(ImageError::io(format!("cannot read {}", path.display()), e)),
        };
        std::fs::remove_file(&path)
            .map_err(|e| ImageError::io(format!("cannot remove {}", path.display()), e))?;
        let still_named = std::fs::read_dir(self.refs_dir())
            .map(|entries| {
                entries
                    .flatten()
                    .any(|e| std::fs::read_to_string(e.path()).is_ok_and(|t| t.trim() == digest))
            })
            .unwrap_or(false);
        if still_named {
            return Ok(false);
        }
        let dir = self.image_dir(&digest);
        if !dir.exists() {
            return Ok(false);
        }
        // Renamed first: a VM being created never sees half the files.
        std::fs::create_dir_all(self.scratch_dir()).map_err(|e| {
            ImageError::io(format!("cannot create {}", self.scratch_dir().display()), e)
        })?;
        let doomed = self.scratch_dir().join(unique_name("removed-"));
        std::fs::rename(&dir, &doomed)
            .map_err(|e| ImageError::io(format!("cannot remove {}", dir.display()), e))?;
        std::fs::remove_dir_all(&doomed)
            .map_err(|e| ImageError::io(format!("cannot remove {}", doomed.display()), e))?;
        Ok(true)
    }

    /// Points `reference` at `digest` (atomically replacing an older target).
    fn write_ref(&self, reference: &str, digest: &str) -> Result<(), ImageError> {
        let dir = self.refs_dir();
        std::fs::create_dir_all(&dir)
            .map_err(|e| ImageError::io(format!("cannot create {}", dir.display()), e))?;
        let temp = dir.join(unique_name(".new-"));
        let target = self.ref_path(reference);
        std::fs::write(&temp, format!("{digest}\n"))
            .and_then(|()| std::fs::rename(&temp, &target))
            .map_err(|e| {
                let _ = std::fs::remove_file(&temp);
                ImageError::io(format!("cannot write {}", target.display()), e)
            })
    }

    /// Removes scratch directories that crashed builds left (older than a day).
    fn sweep_scratch(&self) {
        let Ok(entries) = std::fs::read_dir(self.scratch_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > Duration::from_secs(24 * 3600));
            if old {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    /// Builds (or finds in the cache) the image for `req` and records its reference.
    pub async fn build(
        &self,
        req: &BuildRequest,
        progress: &(dyn Fn(BuildProgress) + Send + Sync),
    ) -> Result<VmImage, ImageError> {
        let reference = req.reference();
        if reference.is_empty() {
            return Err(ImageError::Invalid("the image reference is empty".into()));
        }
        progress(BuildProgress::Step(BuildStep::Resolve));
        let kernel = KernelPackage::find(&req.kernel_dir)?;
        for (path, what) in [
            (&req.agent, "agent binary"),
            (&req.busybox, "busybox binary"),
        ] {
            if !path.is_file() {
                return Err(ImageError::Invalid(format!(
                    "the {what} {} does not exist",
                    path.display()
                )));
            }
        }
        let (source_id, size_hint) = match &req.source {
            BuildSource::Docker(image) => {
                let (id, size) = rootfs::docker_image_id(&req.docker_host, image).await?;
                (format!("docker:{image} {id}"), size)
            }
            BuildSource::Directory(dir) => {
                if !dir.is_dir() {
                    return Err(ImageError::Invalid(format!(
                        "the source directory {} does not exist",
                        dir.display()
                    )));
                }
                let dir = dir.clone();
                let hash = tokio::task::spawn_blocking(move || hash_directory(&dir))
                    .await
                    .map_err(|e| ImageError::Invalid(format!("hashing the directory: {e}")))??;
                (format!("dir:{hash}"), 0)
            }
        };
        let digest = {
            let mut hasher = Sha256::new();
            hasher.update(BUILDER_VERSION.as_bytes());
            hasher.update([0]);
            // The Docker reference is recorded, not hashed: one image id, one build.
            let identity = source_id.rsplit(' ').next().unwrap_or(&source_id);
            hasher.update(identity.as_bytes());
            hasher.update(req.extra_mib.to_le_bytes());
            hash_file(&mut hasher, &req.agent, "agent binary")?;
            hash_file(&mut hasher, &kernel.bzimage, "kernel")?;
            hash_file(&mut hasher, &req.busybox, "busybox binary")?;
            format!("sha256:{:x}", hasher.finalize())
        };
        let final_dir = self.image_dir(&digest);
        if final_dir.join(MANIFEST_FILE).is_file() {
            progress(BuildProgress::Cached {
                digest: digest.clone(),
            });
            self.write_ref(&reference, &digest)?;
            return self.load(&reference, &digest);
        }

        std::fs::create_dir_all(self.scratch_dir()).map_err(|e| {
            ImageError::io(format!("cannot create {}", self.scratch_dir().display()), e)
        })?;
        self.sweep_scratch();
        let scratch = ScratchDir(self.scratch_dir().join(unique_name("build-")));
        let staging = scratch.0.join("rootfs");
        let out = scratch.0.join("image");
        for dir in [&staging, &out] {
            std::fs::create_dir_all(dir)
                .map_err(|e| ImageError::io(format!("cannot create {}", dir.display()), e))?;
        }

        match &req.source {
            BuildSource::Docker(image) => {
                progress(BuildProgress::Step(BuildStep::Export));
                let id = source_id.rsplit(' ').next().unwrap_or_default();
                rootfs::export_docker_image(
                    &req.docker_host,
                    id,
                    image,
                    size_hint,
                    &staging,
                    progress,
                )
                .await?;
            }
            BuildSource::Directory(dir) => {
                progress(BuildProgress::Step(BuildStep::Copy));
                rootfs::copy_directory(dir, &staging).await?;
            }
        }

        progress(BuildProgress::Step(BuildStep::InstallAgent));
        rootfs::install_agent(&staging, &req.agent)?;
        let has_shell = rootfs::exists_in_root(&staging, "/bin/sh");
        if !has_shell {
            progress(BuildProgress::Warning(format!(
                "{reference} has no /bin/sh: commands run in its VMs must name a program (no shell lines)"
            )));
        }
        let (staged_bytes, staged_inodes) = rootfs::staged_usage(&staging)?;
        let size_mib = rootfs_size_mib(staged_bytes, staged_inodes, req.extra_mib);
        let inodes = staged_inodes + staged_inodes / 10 + req.extra_mib * 64 + 1024;

        progress(BuildProgress::Step(BuildStep::Mkfs));
        let rootfs_path = out.join(ROOTFS_FILE);
        rootfs::make_ext4(&staging, &rootfs_path, size_mib, inodes, progress).await?;
        // The staged copy is no longer needed: free its space before the kernel steps.
        let _ = std::fs::remove_dir_all(&staging);

        progress(BuildProgress::Step(BuildStep::Kernel));
        let bzimage = kernel.bzimage.clone();
        let (bzimage_out, vmlinux_out) = (out.join(BZIMAGE_FILE), out.join(VMLINUX_FILE));
        tokio::task::spawn_blocking(move || -> Result<(), ImageError> {
            let data = std::fs::read(&bzimage)
                .map_err(|e| ImageError::io(format!("cannot read {}", bzimage.display()), e))?;
            let vmlinux = extract_vmlinux(&data)?;
            write_file(&bzimage_out, &data)?;
            write_file(&vmlinux_out, &vmlinux)
        })
        .await
        .map_err(|e| ImageError::Invalid(format!("extracting vmlinux: {e}")))??;

        progress(BuildProgress::Step(BuildStep::Initramfs));
        let modules = load_order(&kernel.modules_dir, GUEST_MODULES)?;
        initramfs::write_initramfs(&out.join(INITRAMFS_FILE), &req.busybox, &modules)?;

        progress(BuildProgress::Step(BuildStep::Store));
        let manifest = Manifest {
            digest: digest.clone(),
            source: source_id,
            kernel_version: kernel.version.clone(),
            rootfs_bytes: size_mib << 20,
            has_shell,
            created_at: chrono::Utc::now(),
            builder: BUILDER_VERSION.to_string(),
        };
        let text = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| ImageError::Invalid(format!("cannot encode the manifest: {e}")))?;
        write_file(&out.join(MANIFEST_FILE), &text)?;
        if let Err(e) = std::fs::rename(&out, &final_dir) {
            // A concurrent build of the same inputs finished first: use its result.
            if !final_dir.join(MANIFEST_FILE).is_file() {
                return Err(ImageError::io(
                    format!("cannot move the image into {}", final_dir.display()),
                    e,
                ));
            }
        }
        drop(scratch);
        self.write_ref(&reference, &digest)?;
        self.load(&reference, &digest)
    }
}

/// Writes a whole file; a partial one is removed (e.g. on a full disk).
fn write_file(path: &Path, data: &[u8]) -> Result<(), ImageError> {
    std::fs::write(path, data).map_err(|e| {
        let _ = std::fs::remove_file(path);
        let context = if e.kind() == std::io::ErrorKind::StorageFull {
            format!("no space left on the device of {}", path.display())
        } else {
            format!("cannot write {}", path.display())
        };
        ImageError::io(context, e)
    })
}

/// Makes `dst` a private copy of `src` for one VM: a reflink where the filesystem
/// can, else a sparse copy. Removes a partial `dst` on failure (e.g. a full disk).
pub async fn clone_rootfs(src: &Path, dst: &Path) -> Result<(), ImageError> {
    if !src.is_file() {
        return Err(ImageError::Invalid(format!(
            "the root filesystem {} does not exist",
            src.display()
        )));
    }
    let result = tokio::process::Command::new("cp")
        .args(["--reflink=auto", "--sparse=always"])
        .arg(src)
        .arg(dst)
        .output()
        .await;
    let failure = match result {
        Ok(output) if output.status.success() => return Ok(()),
        Ok(output) => rootfs::command_failed(
            &format!("copying the root filesystem {}", src.display()),
            dst,
            &output.stderr,
        ),
        Err(e) => ImageError::io("cannot run cp", e),
    };
    let _ = std::fs::remove_file(dst);
    Err(failure)
}

#[cfg(test)]
mod tests;
