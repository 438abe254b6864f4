//! `aetherium doctor`: what works on this host for each backend, and why not — the
//! same probes the worker runs when it starts (`aetherium_core::host`).

use std::path::{Path, PathBuf};

use aetherium_common::Config;
use aetherium_core::host;
use clap::Args;
use serde::Serialize;

use crate::OutputFormat;
use crate::output::print_json;

#[derive(Args)]
pub struct DoctorArgs {
    /// YAML config file (the same as `aetherium up`'s).
    #[arg(long, short = 'c', env = "AETHERIUM_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
    output: OutputFormat,
}

/// One check: what was looked at, whether it works, and why (not).
#[derive(Debug, Serialize)]
struct Check {
    name: String,
    ok: bool,
    detail: String,
}

fn check(name: &str, result: Result<String, String>) -> Check {
    match result {
        Ok(detail) => Check {
            name: name.into(),
            ok: true,
            detail,
        },
        Err(detail) => Check {
            name: name.into(),
            ok: false,
            detail,
        },
    }
}

#[derive(Debug, Serialize)]
struct Section {
    backend: &'static str,
    /// Whether sandboxes of this kind can run here.
    usable: bool,
    configured: bool,
    checks: Vec<Check>,
}

#[derive(Debug, Serialize)]
struct Report {
    default_backend: String,
    sections: Vec<Section>,
}

pub async fn doctor(args: DoctorArgs) -> anyhow::Result<u8> {
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    let configured = |b: &str| config.vmm.backends.iter().any(|c| c == b);
    let images = host::image_store(&config);
    let image_ref = config.vmm.docker.default_image.clone();
    let built = images.resolve(&image_ref).ok().flatten();
    let agent = aetherium_core::host::resolve_agent_path(&config)
        .map(|p| p.display().to_string())
        .map_err(|e| e.to_string());

    // Docker.
    let mut docker = vec![check("agent binary", agent.clone())];
    let engine = match host::docker_backend(&config) {
        Ok(backend) => backend
            .ping()
            .await
            .map(|()| format!("engine answers at {}", config.vmm.docker.host))
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    docker.push(check("docker engine", engine));
    docker.push(check("image", docker_image(&image_ref).await));

    // Guest images (both microVM backends boot them).
    let mut guest = vec![
        check("kernel package", kernel_dir(&config.vmm.kernel_dir)),
        check(
            "busybox (initramfs)",
            file_exists(Path::new("/bin/busybox")),
        ),
        check("mkfs.ext4", on_path("mkfs.ext4")),
        check(
            &format!("VM image {image_ref}"),
            match &built {
                Some(image) => Ok(format!(
                    "built ({}, kernel {})",
                    image.digest, image.kernel_version
                )),
                None => Err(format!(
                    "not built: run `aetherium image build {image_ref}` (images live in {})",
                    images.root().display()
                )),
            },
        ),
    ];
    guest.push(check("agent binary", agent));

    // QEMU.
    let qemu_probe = host::probe_qemu(&config).await;
    let mut qemu = vec![
        check("qemu-system-x86_64", qemu_probe.qemu_version.clone()),
        check("vhost-device-vsock", qemu_probe.vhost_vsock_version.clone()),
        check(
            "TCG (software emulation)",
            qemu_probe
                .tcg
                .clone()
                .map(|()| "starts a q35 machine".into()),
        ),
        check(
            "KVM",
            qemu_probe
                .kvm
                .clone()
                .map(|()| "guests run under KVM".into()),
        ),
    ];
    qemu.push(check(
        "accelerator",
        qemu_probe
            .accel
            .map(|a| format!("{} will be used", a.as_str()))
            .ok_or_else(|| "neither KVM nor TCG works".to_string()),
    ));

    // Firecracker: its boot check needs a guest kernel (the built image's vmlinux).
    let kernel = host::probe_kernel(&config);
    let fc_probe = host::probe_firecracker(&config, kernel.as_deref()).await;
    let firecracker = vec![
        check("firecracker", fc_probe.version.clone()),
        check(
            "/dev/kvm",
            fc_probe.kvm.clone().map(|()| "opens read-write".into()),
        ),
        check(
            "guest boot",
            match &fc_probe.guest_boots {
                Some(Ok(took)) => Ok(format!("a guest kernel initialised in {took:.1?}")),
                Some(Err(e)) => Err(e.clone()),
                None if kernel.is_none() => Err(format!(
                    "not tried: no VM image to boot (run `aetherium image build {image_ref}`)"
                )),
                None => Err("not tried: the binary or /dev/kvm is unusable".into()),
            },
        ),
    ];

    // Networking.
    let network = vec![
        check(
            "enabled",
            if config.network.enabled {
                Ok(format!(
                    "bridge {} at {}, NAT {}",
                    config.network.bridge,
                    config.network.gateway_cidr,
                    if config.network.nat { "on" } else { "off" }
                ))
            } else {
                Err("network.enabled is false: microVMs get no network device".into())
            },
        ),
        check("ip (iproute2)", on_path("ip")),
        check("iptables", on_path("iptables")),
        check("/dev/net/tun", file_exists(Path::new("/dev/net/tun"))),
        check(
            "root",
            if is_root() {
                Ok("yes (TAP devices and bridges can be made)".into())
            } else {
                Err("not root: TAP devices and the bridge cannot be made".into())
            },
        ),
    ];

    let all_ok = |checks: &[Check]| checks.iter().all(|c| c.ok);
    let guest_ok = all_ok(&guest);
    let sections = vec![
        Section {
            backend: "docker",
            usable: docker.iter().take(2).all(|c| c.ok),
            configured: configured("docker"),
            checks: docker,
        },
        Section {
            backend: "guest images",
            usable: guest_ok,
            configured: configured("qemu") || configured("firecracker"),
            checks: guest,
        },
        Section {
            backend: "qemu",
            usable: qemu_probe.accel.is_some()
                && qemu_probe.vhost_vsock_version.is_ok()
                && guest_ok,
            configured: configured("qemu"),
            checks: qemu,
        },
        Section {
            backend: "firecracker",
            usable: fc_probe.guests_boot() && guest_ok,
            configured: configured("firecracker"),
            checks: firecracker,
        },
        Section {
            backend: "network",
            usable: all_ok(&network),
            configured: config.network.enabled,
            checks: network,
        },
    ];
    let report = Report {
        default_backend: config.vmm.default_backend.clone(),
        sections,
    };
    match args.output {
        OutputFormat::Json => print_json(&report)?,
        OutputFormat::Table => print_report(&report),
    }
    let default_ok = report
        .sections
        .iter()
        .find(|s| s.backend == report.default_backend)
        .is_some_and(|s| s.usable);
    Ok(if default_ok { 0 } else { 1 })
}

fn print_report(report: &Report) {
    for section in &report.sections {
        let verdict = match (section.usable, section.configured) {
            (true, true) => "works",
            (true, false) => "works (not in vmm.backends)",
            (false, true) => "DOES NOT WORK",
            (false, false) => "does not work (not configured)",
        };
        println!("{}: {verdict}", section.backend);
        for c in &section.checks {
            println!(
                "  [{}] {}: {}",
                if c.ok { " ok " } else { "FAIL" },
                c.name,
                c.detail
            );
        }
    }
    println!("default backend: {}", report.default_backend);
}

async fn docker_image(reference: &str) -> Result<String, String> {
    let out = tokio::process::Command::new("docker")
        .args(["image", "inspect", "-f", "{{.Id}}", reference])
        .output()
        .await
        .map_err(|e| format!("cannot run docker: {e}"))?;
    if out.status.success() {
        Ok(format!("{reference} present"))
    } else {
        Err(format!(
            "{reference} missing: build it with scripts/setup.sh (debootstrap + docker import)"
        ))
    }
}

fn kernel_dir(dir: &Path) -> Result<String, String> {
    let boot = dir.join("boot");
    let vmlinuz = std::fs::read_dir(&boot)
        .ok()
        .and_then(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .find(|n| n.starts_with("vmlinuz-"))
        })
        .ok_or_else(|| {
            format!(
                "no boot/vmlinuz-* in {}: scripts/setup.sh unpacks Debian's linux-image-cloud-amd64 there",
                dir.display()
            )
        })?;
    if !dir.join("lib/modules").is_dir() {
        return Err(format!("no lib/modules in {}", dir.display()));
    }
    Ok(format!("{} in {}", vmlinuz, dir.display()))
}

fn file_exists(path: &Path) -> Result<String, String> {
    if path.exists() {
        Ok(format!("{} present", path.display()))
    } else {
        Err(format!("{} missing", path.display()))
    }
}

fn on_path(program: &str) -> Result<String, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .map(|p| p.display().to_string())
        .ok_or_else(|| format!("{program} not found"))
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}
