//! Guest images against the real pieces: Debian's cloud kernel package (from
//! `AETHERIUM_KERNEL_DIR`, default /var/lib/aetherium/kernel), the Docker engine with
//! `aetherium/base:latest`, busybox, mkfs.ext4 and debugfs.

use aetherium_testkit::{agent_bin, kernel_dir};
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aetherium_core::image::{
    self, BuildProgress, BuildRequest, BuildSource, BuildStep, GUEST_MODULES, ImageError,
    ImageStore, KernelPackage,
};

fn request(source: BuildSource) -> BuildRequest {
    let mut req = BuildRequest::new(source, kernel_dir(), agent_bin());
    req.extra_mib = 64;
    req
}

/// Collects the progress events of a build.
#[derive(Default)]
struct Events(Mutex<Vec<BuildProgress>>);

impl Events {
    fn sink(&self) -> impl Fn(BuildProgress) + Send + Sync + '_ {
        |event| self.0.lock().expect("events").push(event)
    }

    fn all(&self) -> Vec<BuildProgress> {
        self.0.lock().expect("events").clone()
    }
}

/// `debugfs -R 'stat PATH'` on an ext4 image.
fn debugfs_stat(rootfs: &Path, path: &str) -> String {
    let output = Command::new("debugfs")
        .arg("-R")
        .arg(format!("stat {path}"))
        .arg(rootfs)
        .output()
        .expect("debugfs (e2fsprogs) must be installed");
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Everything in the store but the (empty) bookkeeping directories.
fn store_contents(root: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for dir in [root.to_path_buf(), root.join("refs"), root.join("tmp")] {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if dir == root && (name == "refs" || name == "tmp") {
                    continue;
                }
                found.push(entry.path().display().to_string());
            }
        }
    }
    found
}

#[test]
fn vmlinux_is_extracted_from_the_real_kernel() {
    let kernel = KernelPackage::find(&kernel_dir()).expect("kernel package");
    let bzimage = std::fs::read(&kernel.bzimage).expect("read bzImage");
    let started = Instant::now();
    let vmlinux = image::extract_vmlinux(&bzimage).expect("extract");
    println!(
        "extracted {} bytes in {:?}",
        vmlinux.len(),
        started.elapsed()
    );
    assert_eq!(&vmlinux[..4], b"\x7fELF");
    assert_eq!(vmlinux[4], 2, "ELF64");
    assert_eq!(
        u16::from_le_bytes([vmlinux[18], vmlinux[19]]),
        0x3e,
        "x86-64"
    );
    // The kernel's build appends the uncompressed size to the payload.
    let payload = image::bzimage_payload(&bzimage).expect("payload");
    let tail = &payload[payload.len() - 4..];
    let expected = u32::from_le_bytes(tail.try_into().expect("4 bytes")) as usize;
    assert_eq!(vmlinux.len(), expected);
    assert!(vmlinux.len() > 4 * bzimage.len() / 2, "sane size");
}

#[test]
fn guest_modules_load_dependencies_first() {
    let kernel = KernelPackage::find(&kernel_dir()).expect("kernel package");
    let order = image::load_order(&kernel.modules_dir, GUEST_MODULES).expect("order");
    let names: Vec<&str> = order.iter().map(|m| m.name.as_str()).collect();
    println!("load order: {names:?}");
    let position = |name: &str| {
        names
            .iter()
            .position(|n| *n == name)
            .unwrap_or_else(|| panic!("{name} missing from {names:?}"))
    };
    for wanted in GUEST_MODULES {
        position(wanted);
    }
    for (dependency, module) in [
        ("virtio", "virtio_pci"),
        ("virtio_ring", "virtio_blk"),
        ("virtio", "virtio_mmio"),
        ("vsock", "vmw_vsock_virtio_transport_common"),
        (
            "vmw_vsock_virtio_transport_common",
            "vmw_vsock_virtio_transport",
        ),
        ("net_failover", "virtio_net"),
    ] {
        assert!(
            position(dependency) < position(module),
            "{dependency} must load before {module}: {names:?}"
        );
    }
    let mut unique = names.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), names.len(), "each module once");
    // Every dependency a module names comes before it.
    for (i, module) in order.iter().enumerate() {
        let ko = std::fs::read(&module.path).expect("read .ko");
        for dependency in image::module_depends(&ko).expect("modinfo") {
            assert!(
                names[..i].contains(&dependency.as_str()),
                "{} needs {dependency} first",
                module.name
            );
        }
    }
}

#[test]
fn cpio_archives_are_read_by_busybox() {
    let busybox = Path::new("/bin/busybox");
    assert!(busybox.is_file(), "busybox-static must be installed");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("test.cpio");
    let mut writer = image::CpioWriter::new(std::fs::File::create(&path).expect("create"));
    writer.dir("etc", 0o755).expect("dir");
    writer.file("etc/motd", 0o644, b"hello\n").expect("file");
    writer.symlink("motd", "etc/motd").expect("link");
    writer.finish().expect("finish");
    let listing = Command::new(busybox)
        .args(["cpio", "-t", "-F"])
        .arg(&path)
        .output()
        .expect("busybox cpio");
    assert!(listing.status.success(), "{listing:?}");
    let names = String::from_utf8_lossy(&listing.stdout);
    assert_eq!(
        names.lines().collect::<Vec<_>>(),
        ["etc", "etc/motd", "motd"]
    );
    let out = dir.path().join("out");
    std::fs::create_dir(&out).expect("mkdir");
    let extract = Command::new(busybox)
        .args(["cpio", "-i", "-d", "-F"])
        .arg(&path)
        .current_dir(&out)
        .output()
        .expect("busybox cpio -i");
    assert!(extract.status.success(), "{extract:?}");
    assert_eq!(std::fs::read(out.join("motd")).expect("read"), b"hello\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_image_builds_into_a_bootable_image_and_is_cached() {
    let store_dir = tempfile::tempdir().expect("tempdir");
    let store = ImageStore::new(store_dir.path());
    let req = request(BuildSource::Docker("aetherium/base:latest".into()));
    let events = Events::default();
    let started = Instant::now();
    let built = store.build(&req, &events.sink()).await.expect("build");
    println!("built in {:?}: {built:#?}", started.elapsed());

    assert_eq!(built.reference, "aetherium/base:latest");
    assert!(built.digest.starts_with("sha256:"));
    assert!(built.has_shell, "Debian has /bin/sh");
    for file in [
        &built.rootfs,
        &built.bzimage,
        &built.vmlinux,
        &built.initramfs,
    ] {
        assert!(file.is_file(), "{} missing", file.display());
    }
    assert_eq!(
        std::fs::metadata(&built.rootfs).expect("stat").len(),
        built.rootfs_bytes
    );
    let stat = debugfs_stat(&built.rootfs, "/.aetherium/bin/aetherium-agent");
    assert!(stat.contains("Type: regular"), "{stat}");
    assert!(stat.contains("Mode:  0755"), "{stat}");
    assert!(stat.contains("User:     0"), "{stat}");
    let sh = debugfs_stat(&built.rootfs, "/usr/bin/dash");
    assert!(sh.contains("Type: regular"), "{sh}");
    for mount_point in ["/proc", "/sys", "/dev", "/run", "/tmp"] {
        assert!(
            debugfs_stat(&built.rootfs, mount_point).contains("Type: directory"),
            "{mount_point}"
        );
    }
    assert_eq!(
        &std::fs::read(&built.vmlinux).expect("vmlinux")[..4],
        b"\x7fELF"
    );

    // The initramfs: busybox, the modules in order, /init.
    let entries =
        image::read_newc(&std::fs::read(&built.initramfs).expect("initramfs")).expect("newc");
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    for needed in [
        "init",
        "bin/busybox",
        "bin/sh",
        "bin/switch_root",
        "dev/console",
        "lib/modules/virtio_blk.ko",
        "lib/modules/vmw_vsock_virtio_transport.ko",
    ] {
        assert!(names.contains(&needed), "{needed} missing from {names:?}");
    }

    let events = events.all();
    for step in [BuildStep::Export, BuildStep::Mkfs] {
        assert!(
            events
                .iter()
                .any(|e| matches!(e, BuildProgress::Bytes { step: s, done, .. } if *s == step && *done > 0)),
            "no byte progress for {step}: {events:?}"
        );
    }
    for step in [
        BuildStep::InstallAgent,
        BuildStep::Kernel,
        BuildStep::Initramfs,
    ] {
        assert!(
            events.contains(&BuildProgress::Step(step)),
            "{step} not reported"
        );
    }

    let resolved = store.require("aetherium/base:latest").expect("resolve");
    assert_eq!(resolved, built);

    // Same inputs: a cache hit, fast, same files.
    let again = Events::default();
    let started = Instant::now();
    let cached = store
        .build(&req, &again.sink())
        .await
        .expect("cached build");
    let took = started.elapsed();
    assert_eq!(cached, built);
    assert!(
        again
            .all()
            .iter()
            .any(|e| matches!(e, BuildProgress::Cached { .. })),
        "{:?}",
        again.all()
    );
    assert!(took < Duration::from_secs(10), "cache hit took {took:?}");

    // A second name for the same image shares its files until both are removed.
    let mut renamed = req.clone();
    renamed.reference = Some("base-copy".into());
    let copy = store.build(&renamed, &|_| {}).await.expect("second name");
    assert_eq!(copy.digest, built.digest);
    let listed: Vec<String> = store
        .list()
        .expect("list")
        .into_iter()
        .map(|i| i.reference)
        .collect();
    assert_eq!(listed, ["aetherium/base:latest", "base-copy"]);
    assert!(!store.remove("base-copy").expect("remove one name"));
    assert!(built.rootfs.is_file(), "still named by the other reference");
    assert!(store.remove("aetherium/base:latest").expect("remove"));
    assert!(!built.rootfs.exists());
    assert!(
        store
            .resolve("aetherium/base:latest")
            .expect("resolve")
            .is_none()
    );
    assert!(matches!(
        store.remove("aetherium/base:latest"),
        Err(ImageError::NotFound(_))
    ));
    assert_eq!(store_contents(store_dir.path()), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_without_a_shell_builds_with_a_warning_and_concurrently() {
    let source = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(source.path().join("etc")).expect("mkdir");
    std::fs::write(source.path().join("etc/hostname"), "noshell\n").expect("write");
    std::fs::create_dir_all(source.path().join("bin")).expect("mkdir");
    std::fs::write(source.path().join("bin/tool"), b"not a shell").expect("write");
    let store_dir = tempfile::tempdir().expect("tempdir");
    let store = ImageStore::new(store_dir.path());
    let mut req = request(BuildSource::Directory(source.path().to_path_buf()));
    req.reference = Some("noshell:1".into());
    req.extra_mib = 8;

    // Two builds of the same thing at once: both succeed, one set of files.
    let (events_a, events_b) = (Events::default(), Events::default());
    let (sink_a, sink_b) = (events_a.sink(), events_b.sink());
    let (a, b) = tokio::join!(store.build(&req, &sink_a), store.build(&req, &sink_b));
    let (a, b) = (a.expect("build a"), b.expect("build b"));
    assert_eq!(a, b);
    assert!(!a.has_shell);
    for events in [events_a.all(), events_b.all()] {
        assert!(
            events
                .iter()
                .any(|e| matches!(e, BuildProgress::Warning(w) if w.contains("/bin/sh"))),
            "{events:?}"
        );
    }
    let stat = debugfs_stat(&a.rootfs, "/.aetherium/bin/aetherium-agent");
    assert!(stat.contains("Mode:  0755"), "{stat}");
    assert!(debugfs_stat(&a.rootfs, "/bin/tool").contains("Type: regular"));
    assert!(
        a.rootfs_bytes < 128 << 20,
        "small source, small rootfs: {}",
        a.rootfs_bytes
    );
    let leftovers: Vec<_> = std::fs::read_dir(store_dir.path().join("tmp"))
        .expect("tmp")
        .collect();
    assert!(leftovers.is_empty(), "scratch left behind: {leftovers:?}");

    // Another file in the source is another image.
    std::fs::write(source.path().join("etc/motd"), "changed").expect("write");
    let changed = store.build(&req, &|_| {}).await.expect("rebuild");
    assert_ne!(changed.digest, a.digest);
    assert_eq!(store.list().expect("list").len(), 1, "the reference moved");
}

#[tokio::test]
async fn bad_inputs_fail_clearly_and_leave_nothing() {
    let store_dir = tempfile::tempdir().expect("tempdir");
    let store = ImageStore::new(store_dir.path());

    let missing_image = format!("aetherium/no-such-image-{}:latest", std::process::id());
    let err = store
        .build(
            &request(BuildSource::Docker(missing_image.clone())),
            &|_| {},
        )
        .await
        .expect_err("missing Docker image");
    assert!(
        err.to_string().contains("no such Docker image")
            && err.to_string().contains(&missing_image),
        "{err}"
    );

    let mut no_kernel = request(BuildSource::Docker("aetherium/base:latest".into()));
    no_kernel.kernel_dir = store_dir.path().join("no-kernel-here");
    let err = store
        .build(&no_kernel, &|_| {})
        .await
        .expect_err("missing kernel");
    assert!(
        err.to_string().contains("no-kernel-here") && err.to_string().contains("does not exist"),
        "{err}"
    );

    let empty_kernel = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(empty_kernel.path().join("boot")).expect("mkdir");
    std::fs::write(empty_kernel.path().join("boot/vmlinuz-9.9.9"), b"x").expect("write");
    let mut no_modules = no_kernel.clone();
    no_modules.kernel_dir = empty_kernel.path().to_path_buf();
    let err = store
        .build(&no_modules, &|_| {})
        .await
        .expect_err("no modules");
    assert!(err.to_string().contains("no modules"), "{err}");

    let mut no_agent = request(BuildSource::Docker("aetherium/base:latest".into()));
    no_agent.agent = store_dir.path().join("no-agent");
    let err = store
        .build(&no_agent, &|_| {})
        .await
        .expect_err("missing agent");
    assert!(err.to_string().contains("agent binary"), "{err}");

    let err = store
        .build(
            &request(BuildSource::Directory(store_dir.path().join("nope"))),
            &|_| {},
        )
        .await
        .expect_err("missing directory");
    assert!(err.to_string().contains("does not exist"), "{err}");

    assert!(matches!(
        store.require("never-built"),
        Err(ImageError::NotFound(_))
    ));
    assert_eq!(store_contents(store_dir.path()), Vec::<String>::new());
    assert!(store.list().expect("list").is_empty());
}

#[tokio::test]
async fn clone_rootfs_is_sparse_and_leaves_nothing_on_failure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("rootfs.ext4");
    let file = std::fs::File::create(&src).expect("create");
    file.set_len(256 << 20).expect("sparse file");
    drop(file);
    // Some real data at both ends.
    let output = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&src)
        .output()
        .expect("mkfs.ext4");
    assert!(output.status.success(), "{output:?}");
    // And 4 MiB of non-zero data in the middle (more than the tmpfs below holds).
    {
        use std::io::{Seek as _, SeekFrom, Write as _};
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(&src)
            .expect("open");
        file.seek(SeekFrom::Start(200 << 20)).expect("seek");
        let chunk: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 253 + 1) as u8).collect();
        file.write_all(&chunk).expect("write");
    }

    let dst = dir.path().join("vm-rootfs.ext4");
    image::clone_rootfs(&src, &dst).await.expect("clone");
    let meta = std::fs::metadata(&dst).expect("stat");
    assert_eq!(meta.len(), 256 << 20);
    let allocated = meta.blocks() * 512;
    assert!(
        allocated < 64 << 20,
        "not sparse: {allocated} bytes allocated"
    );
    assert_eq!(
        std::fs::read(&src).expect("read"),
        std::fs::read(&dst).expect("read"),
        "same content"
    );

    let err = image::clone_rootfs(&dir.path().join("missing.ext4"), &dst.with_extension("x"))
        .await
        .expect_err("missing source");
    assert!(err.to_string().contains("does not exist"), "{err}");
    let bad_dst = dir.path().join("no-such-dir/rootfs.ext4");
    assert!(image::clone_rootfs(&src, &bad_dst).await.is_err());
    assert!(!bad_dst.exists());

    // A full disk: a 1 MiB tmpfs cannot hold the filesystem's metadata.
    let small = dir.path().join("small");
    std::fs::create_dir(&small).expect("mkdir");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&small)
        .status()
        .expect("mount");
    assert!(
        mounted.success(),
        "mounting a tmpfs needs root (as CI runs)"
    );
    let full = small.join("rootfs.ext4");
    let err = image::clone_rootfs(&src, &full).await.expect_err("ENOSPC");
    let left = full.exists();
    let _ = Command::new("umount").arg(&small).status();
    assert!(err.to_string().contains("no space left"), "{err}");
    assert!(
        err.to_string().contains(&full.display().to_string()),
        "{err}"
    );
    assert!(!left, "partial copy removed");
}

/// The agent's `init` mode as PID 1 of a fresh PID namespace (what it is in a
/// microVM, minus the VM): it serves through its child agent, adopts and reaps
/// orphans, and on SIGTERM stops the agent and ends the namespace ("reboots").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_init_reaps_orphans_and_stops_on_sigterm() {
    use aetherium_core::agent_client::AgentClient;
    use aetherium_types::agent::{ProcessConfig, StartRequest};

    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("agent.sock");
    // A private mount namespace: init's /dev/pts, /dev/shm and /run mounts stay in it.
    let mut init = tokio::process::Command::new("unshare")
        .args(["--pid", "--fork", "--mount", "--uts", "--mount-proc"])
        .arg(agent_bin())
        .args(["init", "--", "--listen"])
        .arg(format!("unix:{}", socket.display()))
        .kill_on_drop(true)
        .spawn()
        .expect("unshare (util-linux) must be installed; the test runs as root");
    let client = AgentClient::unix(&socket);
    client
        .wait_ready(Duration::from_secs(20))
        .await
        .expect("the agent under init serves");

    let sh = |script: &str| StartRequest {
        process: ProcessConfig {
            cmd: "sh".into(),
            args: vec!["-c".into(), script.into()],
            ..ProcessConfig::default()
        },
        ..StartRequest::default()
    };
    // The shell exits at once and leaves `sleep` behind: init must adopt it.
    let out = client
        .run(&sh("sleep 60 >/dev/null 2>&1 & echo $!"), 1 << 16)
        .await
        .expect("run");
    let orphan = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let check = format!(
        "sleep 0.3; echo init=$(tr '\\0' ' ' </proc/1/cmdline); \
         grep PPid /proc/{orphan}/status; kill {orphan}; sleep 0.5; \
         if [ -e /proc/{orphan} ]; then grep State /proc/{orphan}/status; else echo reaped; fi;"
    );
    let out = client.run(&sh(&check), 1 << 16).await.expect("run");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{text}");
    assert!(
        text.contains("init=") && text.contains(" init -- --listen"),
        "{text}"
    );
    assert!(text.contains("PPid:\t1\n"), "the orphan is init's: {text}");
    assert!(
        text.contains("reaped"),
        "init reaps what it adopted: {text}"
    );

    // SIGTERM to init (its pid outside the namespace is unshare's child).
    let unshare_pid = init.id().expect("unshare pid");
    let children =
        std::fs::read_to_string(format!("/proc/{unshare_pid}/task/{unshare_pid}/children"))
            .expect("children of unshare");
    let init_pid = children.split_whitespace().next().expect("init's pid");
    let started = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", init_pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let exited = tokio::time::timeout(Duration::from_secs(10), init.wait())
        .await
        .expect("init ends within its grace period")
        .expect("wait");
    println!("init ended after {:?}: {exited}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(6));
    assert!(client.health().await.is_err(), "the agent is gone");
}
