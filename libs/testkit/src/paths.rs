//! Where tests and benches find what the setup (or `make agent`) put on the machine:
//! the static agent, the guest kernel package and the shared VM image cache. Each
//! has an environment override; a missing one fails with what to do.

use std::path::PathBuf;

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            // Test executables live in <target>/debug/deps/.
            let exe = std::env::current_exe().ok()?;
            exe.ancestors().nth(3).map(std::path::Path::to_path_buf)
        })
        .expect("cannot tell the cargo target directory")
}

/// The static in-sandbox agent: `$AETHERIUM_AGENT_BIN`, else
/// `<target>/agent/aetherium-agent` (what `make agent` builds). Guests need this one.
pub fn static_agent_bin() -> PathBuf {
    let p = std::env::var_os("AETHERIUM_AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("agent/aetherium-agent"));
    assert!(
        p.is_file(),
        "static agent not found at {}: run `make agent` (or set AETHERIUM_AGENT_BIN)",
        p.display()
    );
    p
}

/// An agent binary for host-side tests: the static one, else the debug build.
pub fn agent_bin() -> PathBuf {
    if std::env::var_os("AETHERIUM_AGENT_BIN").is_some() {
        return static_agent_bin();
    }
    let target = target_dir();
    [
        target.join("agent/aetherium-agent"),
        target.join("debug/aetherium-agent"),
    ]
    .into_iter()
    .find(|p| p.is_file())
    .unwrap_or_else(|| {
        panic!(
            "no agent binary in {}: run `make agent` (or set AETHERIUM_AGENT_BIN)",
            target.display()
        )
    })
}

/// The unpacked Debian `linux-image-*-cloud-amd64` package guest images take their
/// kernel from: `$AETHERIUM_KERNEL_DIR`, else /var/lib/aetherium/kernel (setup).
pub fn kernel_dir() -> PathBuf {
    let dir = std::env::var_os("AETHERIUM_KERNEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/aetherium/kernel"));
    assert!(
        dir.join("boot").is_dir(),
        "no kernel package at {}: run scripts/setup.sh (or unpack linux-image-*-cloud-amd64 there with dpkg-deb -x, or set AETHERIUM_KERNEL_DIR)",
        dir.display()
    );
    dir
}

/// The VM image cache shared by every test and bench on this machine (the same
/// build request gives the same digest: built once; concurrent builds are safe):
/// `$AETHERIUM_TEST_IMAGE_DIR`, else `<tmp>/aetherium-test-images`.
pub fn test_images_dir() -> PathBuf {
    std::env::var_os("AETHERIUM_TEST_IMAGE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("aetherium-test-images"))
}

/// The Docker image tests run (`$AETHERIUM_TEST_IMAGE`, else the setup's base image).
pub fn test_image() -> String {
    std::env::var("AETHERIUM_TEST_IMAGE").unwrap_or_else(|_| "aetherium/base:latest".into())
}
