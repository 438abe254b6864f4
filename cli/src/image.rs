//! `aetherium image build|ls|rm`: guest images for the microVM backends, built and
//! kept on this host (like `aetherium up`, no server needed) in `<data_dir>/images`.

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use aetherium_common::Config;
use aetherium_core::image::{
    self, BuildProgress, BuildRequest, BuildSource, BuildStep, ImageStore, VmImage,
};
use anyhow::Context as _;
use clap::{Args, Subcommand};

use crate::OutputFormat;
use crate::output::{print_json, print_table};

#[derive(Args)]
pub struct ImageArgs {
    /// YAML config file (the same as `aetherium up`'s; its data_dir holds the images).
    #[arg(long, short = 'c', env = "AETHERIUM_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Where the images live: `<data_dir>/images`.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table, global = true)]
    output: OutputFormat,
    #[command(subcommand)]
    command: ImageCommand,
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Turn a Docker image (or a directory: a path starting with `/` or `.`) into a
    /// VM image: ext4 root filesystem with the agent, kernel, initramfs.
    Build {
        /// A Docker image reference (`aetherium/base:latest`) or a directory.
        source: String,
        /// The reference to record [default: the source].
        #[arg(long)]
        name: Option<String>,
        /// An extracted Debian linux-image-*-cloud-amd64 package [default:
        /// `vmm.kernel_dir`, /var/lib/aetherium/kernel].
        #[arg(long)]
        kernel: Option<PathBuf>,
        /// Free space added to the root filesystem, in MiB.
        #[arg(long, default_value_t = image::DEFAULT_EXTRA_MIB)]
        size_extra_mb: u64,
        /// A static busybox for the initramfs.
        #[arg(long, env = "AETHERIUM_BUSYBOX", default_value = "/bin/busybox")]
        busybox: PathBuf,
    },
    /// A template build: install tools once into a new Docker image (a container of
    /// FROM gets them through the tool installer, then is committed as --tag), so
    /// workspaces of that image find them present. Tool mirrors and extra recipes
    /// come from the config (`workspaces.tool_mirrors`, `tool_catalog_dir`).
    Bake {
        /// The Docker image to start from.
        from: String,
        /// The new image's reference, e.g. my-team/agent-base:2026-11.
        #[arg(long)]
        tag: String,
        /// A tool, `name` or `name@version` (repeatable).
        #[arg(long = "tool", required = true)]
        tools: Vec<String>,
    },
    /// List the images built on this host.
    Ls,
    /// Remove an image's reference (and its files when no other reference names them).
    Rm { reference: String },
}

pub async fn image(args: ImageArgs) -> anyhow::Result<u8> {
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    let store = ImageStore::new(config.images_dir());
    match args.command {
        ImageCommand::Build {
            source,
            name,
            kernel,
            size_extra_mb,
            busybox,
        } => {
            let agent = aetherium_core::host::resolve_agent_path(&config)?;
            let kernel = kernel.unwrap_or_else(|| config.vmm.kernel_dir.clone());
            let mut req = BuildRequest::new(parse_source(&source), kernel, agent);
            req.reference = name;
            req.extra_mib = size_extra_mb;
            req.busybox = busybox;
            req.docker_host = config.vmm.docker.host.clone();
            let reporter = Reporter::new();
            let built = store
                .build(&req, &|event| reporter.report(event))
                .await
                .with_context(|| format!("cannot build a VM image from {source}"))?;
            reporter.finish();
            match args.output {
                OutputFormat::Json => print_json(&built)?,
                OutputFormat::Table => {
                    println!(
                        "built {} ({}), root filesystem {} MiB{}",
                        built.reference,
                        built.digest,
                        built.rootfs_bytes >> 20,
                        if built.has_shell { "" } else { ", no /bin/sh" }
                    );
                }
            }
        }
        ImageCommand::Bake { from, tag, tools } => {
            let catalog =
                aetherium_core::services::environments::ToolCatalog::from_config(&config)?;
            let specs = tools
                .iter()
                .map(|t| aetherium_core::tools::ToolSpec::parse(t))
                .collect::<Result<Vec<_>, _>>()?;
            let arch =
                aetherium_core::tools::Arch::host().unwrap_or(aetherium_core::tools::Arch::X86_64);
            let plan = catalog.catalog.plan(&specs, &catalog.sources, arch)?;
            // A worker id of its own: a running worker never adopts or removes it.
            let docker = aetherium_core::host::docker_backend_as(
                &config,
                "image-bake",
                config.socket_dir().join("bake"),
            )?;
            let report = |event: aetherium_core::tools::ToolProgress| {
                use aetherium_core::tools::ToolProgress as P;
                match event {
                    P::Started { tool, version } => eprintln!("==> installing {tool}@{version}"),
                    P::Skipped { tool, version, .. } => {
                        eprintln!("    {tool}@{version} already present")
                    }
                    P::Installed {
                        tool,
                        version,
                        elapsed,
                    } => {
                        eprintln!(
                            "    {tool}@{version} installed in {:.1}s",
                            elapsed.as_secs_f64()
                        )
                    }
                    P::Failed { tool, version, .. } => eprintln!("    {tool}@{version} FAILED"),
                }
            };
            let baked = aetherium_core::tools::bake(&docker, &from, &tag, &plan, &report)
                .await
                .with_context(|| format!("cannot bake {tag} from {from}"))?;
            match args.output {
                OutputFormat::Json => print_json(&serde_json::json!({
                    "reference": tag,
                    "image_id": baked.image_id,
                    "tools": baked.tools.iter().map(|t| format!("{}@{}", t.tool, t.version)).collect::<Vec<_>>(),
                }))?,
                OutputFormat::Table => println!(
                    "baked {tag} ({}) from {from}; for microVMs: aetherium image build {tag}",
                    baked.image_id
                ),
            }
        }
        ImageCommand::Ls => {
            let images = store.list()?;
            match args.output {
                OutputFormat::Json => print_json(&images)?,
                OutputFormat::Table => print_images(&images),
            }
        }
        ImageCommand::Rm { reference } => {
            let removed_files = store.remove(&reference)?;
            if removed_files {
                println!("removed {reference}");
            } else {
                println!(
                    "removed the reference {reference} (its files are still named by another)"
                );
            }
        }
    }
    Ok(0)
}

/// A path (absolute, `./…`, `../…`) is a directory; anything else a Docker image.
fn parse_source(source: &str) -> BuildSource {
    if source.starts_with('/') || source.starts_with('.') {
        BuildSource::Directory(PathBuf::from(source))
    } else {
        BuildSource::Docker(source.to_string())
    }
}

fn print_images(images: &[VmImage]) {
    let rows: Vec<Vec<String>> = images
        .iter()
        .map(|i| {
            vec![
                i.reference.clone(),
                i.digest
                    .trim_start_matches("sha256:")
                    .chars()
                    .take(12)
                    .collect(),
                format!("{} MiB", i.rootfs_bytes >> 20),
                if i.has_shell { "yes" } else { "no" }.to_string(),
                i.kernel_version.clone(),
                i.created_at.format("%Y-%m-%d %H:%M").to_string(),
            ]
        })
        .collect();
    print_table(
        &[
            "REFERENCE",
            "DIGEST",
            "ROOTFS",
            "SHELL",
            "KERNEL",
            "CREATED",
        ],
        &rows,
    );
}

/// Progress on stderr: one line per step; byte counts of long steps rewrite their
/// line on a terminal.
struct Reporter {
    terminal: bool,
    /// A byte-count line is open (no newline yet).
    open_line: AtomicBool,
}

impl Reporter {
    fn new() -> Self {
        Reporter {
            terminal: std::io::stderr().is_terminal(),
            open_line: AtomicBool::new(false),
        }
    }

    fn report(&self, event: BuildProgress) {
        let mut err = std::io::stderr().lock();
        if !matches!(event, BuildProgress::Bytes { .. })
            && self.open_line.swap(false, Ordering::Relaxed)
        {
            let _ = writeln!(err);
        }
        let _ = match event {
            BuildProgress::Step(step) => writeln!(err, "==> {step}"),
            BuildProgress::Bytes { step, done, total } => {
                let text = match total {
                    Some(total) if total > 0 => {
                        format!("{} MiB of {} MiB", done >> 20, total >> 20)
                    }
                    _ => format!("{} MiB", done >> 20),
                };
                if self.terminal {
                    self.open_line.store(true, Ordering::Relaxed);
                    write!(err, "\r\x1b[K    {text}")
                } else if step == BuildStep::Export || step == BuildStep::Mkfs {
                    writeln!(err, "    {text}")
                } else {
                    Ok(())
                }
            }
            BuildProgress::Warning(warning) => writeln!(err, "warning: {warning}"),
            BuildProgress::Cached { digest } => writeln!(err, "already built ({digest})"),
        };
    }

    fn finish(&self) {
        if self.open_line.swap(false, Ordering::Relaxed) {
            let _ = writeln!(std::io::stderr());
        }
    }
}
