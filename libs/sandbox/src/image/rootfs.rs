//! The root filesystem: a Docker image's (or a directory's) files staged in a
//! directory, the agent installed, then `mkfs.ext4 -d` (no loop mount, no privilege
//! beyond reading the files).

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bollard::Docker;
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::RemoveContainerOptionsBuilder;
use futures::StreamExt as _;
use tokio::io::AsyncWriteExt as _;

use super::{AGENT_IN_GUEST, BuildProgress, BuildStep, ImageError};

/// Docker engine API 1.41: what Debian 12's docker.io speaks (as the Docker backend).
fn docker_client(host: &str) -> Result<Docker, ImageError> {
    let socket = host.strip_prefix("unix://").unwrap_or(host);
    let version = bollard::ClientVersion {
        major_version: 1,
        minor_version: 41,
    };
    Docker::connect_with_unix(socket, 300, &version)
        .map_err(|e| ImageError::Invalid(format!("cannot reach the Docker engine at {host}: {e}")))
}

fn docker_error(reference: &str, e: bollard::errors::Error) -> ImageError {
    match e {
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        } => ImageError::Invalid(format!(
            "no such Docker image {reference:?}: pull or build it first (`docker pull {reference}`)"
        )),
        e => ImageError::Invalid(format!("Docker engine: {e}")),
    }
}

/// A Docker image's id (`sha256:…`) and size, which say what the rootfs will hold.
pub async fn docker_image_id(host: &str, reference: &str) -> Result<(String, u64), ImageError> {
    let docker = docker_client(host)?;
    let image = docker
        .inspect_image(reference)
        .await
        .map_err(|e| docker_error(reference, e))?;
    let id = image
        .id
        .ok_or_else(|| ImageError::Invalid(format!("Docker image {reference:?} has no id")))?;
    Ok((id, image.size.unwrap_or(0).max(0) as u64))
}

/// Unpacks the image's filesystem into `staging`: a container is created (never
/// started), exported as a tar stream into `tar -x`, and removed.
pub async fn export_docker_image(
    host: &str,
    image_id: &str,
    reference: &str,
    size_hint: u64,
    staging: &Path,
    progress: &(dyn Fn(BuildProgress) + Send + Sync),
) -> Result<u64, ImageError> {
    let docker = docker_client(host)?;
    let body = ContainerCreateBody {
        image: Some(image_id.to_string()),
        // Never run; a command is required for images without CMD/ENTRYPOINT.
        cmd: Some(vec!["/.aetherium-export".to_string()]),
        labels: Some([("aetherium.image-export".to_string(), "true".to_string())].into()),
        ..Default::default()
    };
    let container = docker
        .create_container(None, body)
        .await
        .map_err(|e| docker_error(reference, e))?
        .id;
    let result = stream_export(&docker, &container, size_hint, staging, progress).await;
    let options = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    if let Err(e) = docker.remove_container(&container, Some(options)).await {
        tracing::warn!(%container, error = %e, "cannot remove the export container");
    }
    result
}

async fn stream_export(
    docker: &Docker,
    container: &str,
    size_hint: u64,
    staging: &Path,
    progress: &(dyn Fn(BuildProgress) + Send + Sync),
) -> Result<u64, ImageError> {
    let mut tar = tokio::process::Command::new("tar")
        .args(["--numeric-owner", "-xpf", "-", "-C"])
        .arg(staging)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| ImageError::io("cannot run tar", e))?;
    let mut stdin = tar
        .stdin
        .take()
        .ok_or_else(|| ImageError::Invalid("tar has no stdin".into()))?;
    let mut stream = docker.export_container(container);
    let mut done = 0u64;
    let mut reported = 0u64;
    let mut stream_error = None;
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => {
                stream_error = Some(ImageError::Invalid(format!("Docker export failed: {e}")));
                break;
            }
        };
        if stdin.write_all(&chunk).await.is_err() {
            break; // tar stopped: its stderr says why
        }
        done += chunk.len() as u64;
        if done - reported >= 16 << 20 {
            reported = done;
            progress(BuildProgress::Bytes {
                step: BuildStep::Export,
                done,
                // The tar stream is a little larger than the image's size.
                total: Some(size_hint.max(done)),
            });
        }
    }
    drop(stdin);
    let output = tar
        .wait_with_output()
        .await
        .map_err(|e| ImageError::io("cannot wait for tar", e))?;
    if !output.status.success() {
        return Err(command_failed(
            "unpacking the image (tar -x)",
            staging,
            &output.stderr,
        ));
    }
    if let Some(e) = stream_error {
        return Err(e);
    }
    progress(BuildProgress::Bytes {
        step: BuildStep::Export,
        done,
        total: Some(done),
    });
    Ok(done)
}

/// Copies a host directory into `staging`, keeping owners, modes and links.
pub async fn copy_directory(source: &Path, staging: &Path) -> Result<(), ImageError> {
    let output = tokio::process::Command::new("cp")
        .arg("-a")
        .arg("--reflink=auto")
        .arg(format!("{}/.", source.display()))
        .arg(staging)
        .output()
        .await
        .map_err(|e| ImageError::io("cannot run cp", e))?;
    if !output.status.success() {
        return Err(command_failed(
            &format!("copying {}", source.display()),
            staging,
            &output.stderr,
        ));
    }
    Ok(())
}

/// A failed tool's error; a full disk is named as such, with the path it hit.
pub fn command_failed(what: &str, path: &Path, stderr: &[u8]) -> ImageError {
    let stderr = String::from_utf8_lossy(stderr);
    if stderr.contains("No space left on device") {
        return ImageError::io(
            format!(
                "no space left on the device of {} while {what}",
                path.display()
            ),
            std::io::Error::from(std::io::ErrorKind::StorageFull),
        );
    }
    let last_lines: Vec<&str> = stderr.lines().rev().take(5).collect();
    let detail: Vec<&str> = last_lines.into_iter().rev().collect();
    ImageError::Invalid(format!("{what} failed: {}", detail.join("; ")))
}

/// Puts the agent at `/.aetherium/bin/aetherium-agent` (0755) and creates the
/// mount points init needs.
pub fn install_agent(staging: &Path, agent: &Path) -> Result<(), ImageError> {
    let target = staging.join(AGENT_IN_GUEST.trim_start_matches('/'));
    if let Some(dir) = target.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| ImageError::io(format!("cannot create {}", dir.display()), e))?;
    }
    std::fs::copy(agent, &target).map_err(|e| {
        ImageError::io(
            format!("cannot copy the agent {} into the image", agent.display()),
            e,
        )
    })?;
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| ImageError::io(format!("cannot chmod {}", target.display()), e))?;
    for (dir, mode) in [
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
        ("run", 0o755),
        ("tmp", 0o1777),
    ] {
        let path = staging.join(dir);
        if std::fs::symlink_metadata(&path).is_err() {
            std::fs::create_dir(&path)
                .and_then(|()| {
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                })
                .map_err(|e| ImageError::io(format!("cannot create {}", path.display()), e))?;
        }
    }
    // Docker's marker file would make programs believe they run in a container.
    let _ = std::fs::remove_file(staging.join(".dockerenv"));
    Ok(())
}

/// Whether `path` (absolute, inside the image) exists, following symbolic links
/// inside `root` (an absolute link target means the image's root, not the host's).
pub fn exists_in_root(root: &Path, path: &str) -> bool {
    let mut pending: Vec<String> = path
        .split('/')
        .filter(|c| !c.is_empty())
        .rev()
        .map(str::to_string)
        .collect();
    let mut current = PathBuf::new(); // relative to root
    let mut links_followed = 0;
    while let Some(component) = pending.pop() {
        match component.as_str() {
            "." => continue,
            ".." => {
                current.pop();
                continue;
            }
            _ => {}
        }
        let candidate = current.join(&component);
        let Ok(meta) = std::fs::symlink_metadata(root.join(&candidate)) else {
            return false;
        };
        if !meta.file_type().is_symlink() {
            current = candidate;
            continue;
        }
        links_followed += 1;
        if links_followed > 40 {
            return false;
        }
        let Ok(target) = std::fs::read_link(root.join(&candidate)) else {
            return false;
        };
        if target.is_absolute() {
            current = PathBuf::new();
        }
        let parts: Vec<String> = target
            .components()
            .filter_map(|c| match c {
                Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
                Component::ParentDir => Some("..".into()),
                _ => None,
            })
            .collect();
        pending.extend(parts.into_iter().rev());
    }
    true
}

/// Bytes the staged files take on ext4 (each rounded up to whole 4 KiB blocks) and
/// how many inodes they need.
pub fn staged_usage(root: &Path) -> Result<(u64, u64), ImageError> {
    let mut bytes = 0u64;
    let mut inodes = 0u64;
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| ImageError::io(format!("cannot list {}", dir.display()), e))?;
        for entry in entries {
            let entry =
                entry.map_err(|e| ImageError::io(format!("cannot list {}", dir.display()), e))?;
            let meta = entry.metadata().map_err(|e| {
                ImageError::io(format!("cannot stat {}", entry.path().display()), e)
            })?;
            inodes += 1;
            bytes += meta.size().div_ceil(4096) * 4096;
            if meta.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    Ok((bytes, inodes))
}

/// `mkfs.ext4 -d`: an ext4 image of `size_mib` holding `staging`, root-owned root.
/// Reports the bytes written so far while it runs; removes a partial file on failure.
pub async fn make_ext4(
    staging: &Path,
    out: &Path,
    size_mib: u64,
    inodes: u64,
    progress: &(dyn Fn(BuildProgress) + Send + Sync),
) -> Result<(), ImageError> {
    let child = tokio::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(staging)
        .args(["-L", "aetherium-root", "-E", "root_owner=0:0", "-N"])
        .arg(inodes.to_string())
        .arg(out)
        .arg(format!("{size_mib}M"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| ImageError::io("cannot run mkfs.ext4 (install e2fsprogs ≥ 1.43)", e))?;
    let total = Some(size_mib << 20);
    let output = {
        let wait = child.wait_with_output();
        tokio::pin!(wait);
        loop {
            tokio::select! {
                output = &mut wait => break output,
                () = tokio::time::sleep(Duration::from_millis(500)) => {
                    // The file is sparse: its allocated blocks are what was written.
                    if let Ok(meta) = std::fs::metadata(out) {
                        progress(BuildProgress::Bytes { step: BuildStep::Mkfs, done: meta.blocks() * 512, total });
                    }
                }
            }
        }
    };
    let output = output.map_err(|e| ImageError::io("cannot wait for mkfs.ext4", e))?;
    if !output.status.success() {
        let _ = std::fs::remove_file(out);
        let mut stderr = output.stderr;
        stderr.extend_from_slice(&output.stdout);
        return Err(command_failed(
            "making the ext4 root filesystem (mkfs.ext4)",
            out,
            &stderr,
        ));
    }
    if let Ok(meta) = std::fs::metadata(out) {
        progress(BuildProgress::Bytes {
            step: BuildStep::Mkfs,
            done: meta.blocks() * 512,
            total,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_lookup_follows_links_inside_the_root() {
        let root = tempfile::tempdir().expect("tempdir");
        let r = root.path();
        std::fs::create_dir_all(r.join("usr/bin")).expect("mkdir");
        std::fs::write(r.join("usr/bin/dash"), b"").expect("write");
        // merged /usr: /bin -> usr/bin, and an absolute link resolved in the root.
        std::os::unix::fs::symlink("usr/bin", r.join("bin")).expect("link");
        std::os::unix::fs::symlink("/usr/bin/dash", r.join("usr/bin/sh")).expect("link");
        assert!(exists_in_root(r, "/bin/sh"));
        std::os::unix::fs::symlink("/nonexistent", r.join("usr/bin/bash")).expect("link");
        assert!(!exists_in_root(r, "/bin/bash"));
        std::os::unix::fs::symlink("loop", r.join("loop")).expect("link");
        assert!(!exists_in_root(r, "/loop"));
        assert!(
            !exists_in_root(r, "/../../etc/passwd"),
            "never leaves the root"
        );
    }

    #[test]
    fn full_disk_is_named() {
        let err = command_failed(
            "x",
            Path::new("/data/rootfs"),
            b"cp: error writing: No space left on device\n",
        );
        assert!(
            err.to_string()
                .contains("no space left on the device of /data/rootfs"),
            "{err}"
        );
    }
}
