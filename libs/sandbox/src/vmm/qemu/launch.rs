//! QEMU's and vhost-device-vsock's command lines, and the checks before a start:
//! ids, network, directories, programs, sockets; logs for error messages.

use super::*;

pub(super) struct QemuArgs<'a> {
    pub(super) vm_id: &'a str,
    pub(super) dir: &'a Path,
    pub(super) accel: QemuAccel,
    pub(super) vcpus: u32,
    pub(super) memory_mb: u64,
    pub(super) kernel: &'a Path,
    pub(super) initramfs: &'a Path,
    pub(super) cmdline: &'a str,
    pub(super) network: Option<&'a GuestNetwork>,
}

pub(super) fn vhost_args(dir: &Path) -> Vec<OsString> {
    vec![
        "--vm".into(),
        format!(
            "guest-cid={GUEST_CID},socket={},uds-path={}",
            dir.join(VHOST_SOCKET).display(),
            dir.join(VSOCK_SOCKET).display()
        )
        .into(),
    ]
}

pub(super) fn qemu_args(a: &QemuArgs<'_>) -> Vec<OsString> {
    let path = |name: &str| a.dir.join(name).display().to_string();
    let mut args: Vec<String> = vec![
        "-name".into(),
        format!("aetherium-{}", a.vm_id),
        "-machine".into(),
        format!("q35,accel={},memory-backend=mem", a.accel.as_str()),
        // vhost-user devices need the guest memory shared with their process.
        "-object".into(),
        format!("memory-backend-memfd,id=mem,size={}M,share=on", a.memory_mb),
        "-m".into(),
        format!("{}M", a.memory_mb),
        "-smp".into(),
        a.vcpus.to_string(),
        "-cpu".into(),
        a.accel.cpu_model().into(),
        "-kernel".into(),
        a.kernel.display().to_string(),
        "-initrd".into(),
        a.initramfs.display().to_string(),
        "-append".into(),
        a.cmdline.into(),
        // The rootfs is a disposable copy: flushes need not reach the disk.
        "-drive".into(),
        format!("file={},format=raw,if=virtio,cache=unsafe", path(ROOTFS)),
        "-chardev".into(),
        format!("socket,id=vsock0,path={}", path(VHOST_SOCKET)),
        "-device".into(),
        "vhost-user-vsock-pci,chardev=vsock0".into(),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", path(QMP_SOCKET)),
        "-serial".into(),
        format!("file:{}", path(CONSOLE_LOG)),
        "-display".into(),
        "none".into(),
        "-nodefaults".into(),
        "-no-user-config".into(),
        // A guest reboot (Ctrl-Alt-Del, panic) ends QEMU instead.
        "-no-reboot".into(),
    ];
    if let Some(network) = a.network {
        args.extend([
            "-netdev".into(),
            format!("tap,id=n0,ifname={},script=no,downscript=no", network.tap),
            "-device".into(),
            format!("virtio-net-pci,netdev=n0,mac={}", network.mac),
        ]);
    }
    args.into_iter().map(OsString::from).collect()
}

/// VM ids become directory names and QEMU option values: letters, digits, `-`, `_`.
pub(super) fn check_vm_id(vm_id: &str) -> Result<(), String> {
    let valid = !vm_id.is_empty()
        && vm_id.len() <= 64
        && vm_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid VM id {vm_id:?}: 1-64 letters, digits, '-' or '_'"
        ))
    }
}

pub(super) fn check_network(network: &GuestNetwork) -> Result<(), String> {
    let tap_ok = !network.tap.is_empty()
        && network.tap.len() <= 15
        && network
            .tap
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if !tap_ok {
        return Err(format!("invalid TAP device name {:?}", network.tap));
    }
    let octets: Vec<&str> = network.mac.split(':').collect();
    let mac_ok = octets.len() == 6
        && octets
            .iter()
            .all(|o| o.len() == 2 && o.bytes().all(|b| b.is_ascii_hexdigit()));
    if !mac_ok {
        return Err(format!("invalid MAC address {:?}", network.mac));
    }
    Ok(())
}

/// The VM directory must hold unix socket paths and fit in QEMU's `key=value,…`
/// options (a comma would split them).
pub(super) fn check_dir(dir: &Path) -> Result<(), String> {
    let text = dir.display().to_string();
    if text.contains(',') {
        return Err(format!(
            "the VM directory {text} contains a comma, which QEMU and vhost-device-vsock \
             options cannot hold: choose another run directory"
        ));
    }
    for name in [VHOST_SOCKET, VSOCK_SOCKET, QMP_SOCKET] {
        let socket = dir.join(name);
        let len = socket.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(format!(
                "the socket path {} is {len} bytes, more than the {MAX_SOCKET_PATH} a unix \
                 socket allows: choose a shorter run directory",
                socket.display()
            ));
        }
    }
    Ok(())
}

/// Where a program is: the path itself if it has a `/`, else the first match on
/// `PATH`.
pub(super) fn find_program(program: &Path) -> Result<PathBuf, String> {
    let is_executable = |path: &Path| {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.components().count() > 1 || program.is_absolute() {
        return if is_executable(program) {
            Ok(program.to_path_buf())
        } else {
            Err(format!(
                "{} is missing or not executable",
                program.display()
            ))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| format!("{} is not installed (not on PATH)", program.display()))
}

/// Waits until `socket` exists, failing early when the process dies.
pub(super) async fn wait_for_socket(
    process: &VmmProcess,
    socket: &Path,
    log: &Path,
) -> Result<(), BackendError> {
    let deadline = tokio::time::Instant::now() + STARTUP_TIMEOUT;
    loop {
        if socket.exists() {
            return Ok(());
        }
        if !process.is_alive() {
            return Err(BackendError::Other(format!(
                "vhost-device-vsock exited at start: {}",
                log_tail(log)
            )));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(BackendError::Other(format!(
                "vhost-device-vsock did not create {} within {STARTUP_TIMEOUT:?}: {}",
                socket.display(),
                log_tail(log)
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The end of a log file, for error messages.
pub(super) fn log_tail(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let start = bytes.len().saturating_sub(LOG_TAIL_BYTES);
            let text = String::from_utf8_lossy(&bytes[start..]).trim().to_string();
            if text.is_empty() {
                "(no output)".into()
            } else {
                text
            }
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

pub(super) fn image_error(e: ImageError) -> BackendError {
    match e {
        ImageError::NotFound(_) | ImageError::Invalid(_) => BackendError::Rejected(e.to_string()),
        ImageError::Io { .. } => BackendError::Other(e.to_string()),
    }
}
