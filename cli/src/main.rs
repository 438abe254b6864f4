//! `aetherium`: runs the platform (`aetherium up`) and drives it over the REST API.

mod account;
mod client;
mod cp;
mod credentials;
mod distributed;
mod doctor;
mod environments;
mod events;
mod exec;
mod image;
mod output;
mod pki;
mod term;
mod up;
mod vms;
mod workers;
mod workspaces;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "aetherium",
    version,
    about = "Run commands in disposable, isolated sandboxes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
pub struct ClientOpts {
    /// The platform's URL [default: the one `aetherium login` saved, else
    /// http://127.0.0.1:8080].
    #[arg(long, env = "AETHERIUM_URL", global = true)]
    pub url: Option<String>,
    /// API key or session token. Defaults to the one `aetherium login` saved, else
    /// the bootstrap admin key `aetherium up` keeps in its data dir.
    #[arg(long, env = "AETHERIUM_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table, global = true)]
    pub output: OutputFormat,
}

#[derive(Copy, Clone, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the platform on this machine: API + worker in one process (embedded mode).
    Up(up::UpArgs),
    /// Distributed mode: serve the API on PostgreSQL + Redis (no worker; run many).
    Gateway(distributed::GatewayArgs),
    /// Create, list, inspect, run commands in and delete sandboxes.
    Vm(VmArgs),
    /// Inspect queued work.
    Task(TaskArgs),
    /// Save a server URL and API key (or a user's session) for the commands here.
    Login(account::LoginArgs),
    /// End the saved session and forget the saved credentials.
    Logout(account::LogoutArgs),
    /// Create, list and revoke API keys (admin).
    Apikey(account::ApiKeyArgs),
    /// Create, list, change and delete user accounts (admin).
    User(account::UserArgs),
    /// Follow the platform's events as they happen (reconnects and resumes by itself).
    Events(events::EventsArgs),
    /// Show (and with -f follow) the platform's own logs.
    Logs(events::LogsArgs),
    /// List and inspect workers; drain and activate them (admin).
    Worker(workers::WorkerArgs),
    /// The cluster's capacity and how sandboxes spread over zones and workers; `init`
    /// and `issue` make the tunnel's CA and certificates.
    Cluster(workers::ClusterArgs),
    /// Build, list and remove guest images for the microVM backends (on this host).
    Image(image::ImageArgs),
    /// Workspace templates: image, size, tools, env vars, repository, MCP servers.
    Env(environments::EnvArgs),
    /// Global secrets for workspaces (encrypted at rest; values are write-only).
    Secret(environments::SecretArgs),
    /// Workspaces for coding agents: create (prepared: tools, repo, scripts, secrets), prompt, follow, remove.
    Ws(workspaces::WsArgs),
    /// What works on this host for each backend (Docker, QEMU, Firecracker, network), and why not.
    Doctor(doctor::DoctorArgs),
}

#[derive(Args)]
pub struct VmArgs {
    #[command(flatten)]
    pub opts: ClientOpts,
    #[command(subcommand)]
    pub command: VmCommand,
}

#[derive(Args)]
pub struct TaskArgs {
    #[command(flatten)]
    pub opts: ClientOpts,
    #[command(subcommand)]
    pub command: TaskCommand,
}

/// A sandbox's network policy as flags (none given: no policy of its own).
#[derive(clap::Args)]
pub struct NetworkPolicyArgs {
    /// allow (default): the outside world but --deny; deny: only --allow.
    #[arg(long, value_parser = ["allow", "deny"])]
    pub egress: Option<String>,
    /// An IPv4 address, CIDR or domain name (`example.com`, `*.example.com`) it may
    /// reach (repeatable).
    #[arg(long = "allow", value_name = "CIDR|NAME")]
    pub allow: Vec<String>,
    /// An IPv4 address, CIDR or domain name it may not reach (repeatable).
    #[arg(long = "deny", value_name = "CIDR|NAME")]
    pub deny: Vec<String>,
}

impl NetworkPolicyArgs {
    /// The policy, `None` when no flag was given.
    pub fn to_json(&self) -> Option<serde_json::Value> {
        (self.egress.is_some() || !self.allow.is_empty() || !self.deny.is_empty()).then(|| {
            serde_json::json!({
                "egress": self.egress.as_deref().unwrap_or("allow"),
                "allow": self.allow,
                "deny": self.deny,
            })
        })
    }
}

#[derive(Subcommand)]
pub enum VmCommand {
    /// Create a sandbox (waits until it runs unless --no-wait).
    Create {
        #[arg(long)]
        name: Option<String>,
        /// Image to run (default: the platform's configured image).
        #[arg(long)]
        image: Option<String>,
        #[arg(long)]
        vcpus: Option<u32>,
        /// Memory in MiB (at least 128).
        #[arg(long = "memory")]
        memory_mb: Option<u64>,
        /// Containers: disk quota in MiB (default: the worker's vmm.docker.disk_mb).
        #[arg(long = "disk")]
        disk_mb: Option<u64>,
        #[command(flatten)]
        network_policy: NetworkPolicyArgs,
        /// Backend: docker, qemu or firecracker (default: the platform's).
        #[arg(long, value_parser = ["docker", "qemu", "firecracker"])]
        orchestrator: Option<String>,
        /// MicroVMs only: no network device at all.
        #[arg(long)]
        no_network: bool,
        /// A tool from the catalog to install before the sandbox counts as
        /// running, `name` or `name@version` (repeatable; installs can take
        /// minutes: raise --wait).
        #[arg(long = "tool", value_name = "SPEC")]
        tools: Vec<String>,
        /// Longest time to wait for the sandbox to run, e.g. 2m.
        #[arg(long, default_value = "120s", num_args = 0..=1, default_missing_value = "120s")]
        wait: String,
        /// Return as soon as the request is queued.
        #[arg(long, conflicts_with = "wait")]
        no_wait: bool,
    },
    /// List sandboxes.
    Ls {
        /// Only sandboxes in this state (RUNNING, FAILED, …).
        #[arg(long)]
        status: Option<String>,
    },
    /// Show one sandbox (by id or name).
    Get { vm: String },
    /// Run a command in a sandbox; exits with the command's exit code.
    ///
    /// By default the command is queued and its output printed when it is done.
    /// `--stream` prints output as it happens; `-i` streams stdin to it; `-t` gives
    /// it a terminal (`-it`: an interactive shell, like `docker exec -it`).
    Exec {
        vm: String,
        /// Keep stdin open and send it to the command.
        #[arg(short = 'i', long)]
        interactive: bool,
        /// Give the command a terminal (raw mode locally, window size follows).
        #[arg(short = 't', long)]
        tty: bool,
        /// Print output as it is produced instead of when the command is done.
        #[arg(long, conflicts_with_all = ["interactive", "tty"])]
        stream: bool,
        /// Kill the command after this many seconds.
        #[arg(long)]
        timeout: Option<u64>,
        /// Environment variable for the command, KEY=VALUE (repeatable).
        #[arg(long = "env", short = 'e')]
        env: Vec<String>,
        /// Working directory inside the sandbox.
        #[arg(long)]
        cwd: Option<String>,
        /// The command and its arguments (after `--`).
        #[arg(required = true, last = true)]
        command: Vec<String>,
    },
    /// List the commands run in a sandbox.
    Executions { vm: String },
    /// Copy a file into or out of a sandbox: `cp ./f <vm>:/path` or `cp <vm>:/path ./f`
    /// (`-` for stdin or stdout; a directory destination keeps the file's name).
    Cp {
        /// `<vm>:<absolute path>`, a local path, or `-` (stdin).
        src: String,
        /// `<vm>:<absolute path>`, a local path, or `-` (stdout).
        dst: String,
    },
    /// Freeze a running sandbox (microVM vCPUs or container processes).
    Pause { vm: String },
    /// Let a paused sandbox run again.
    Resume { vm: String },
    /// Write a paused microVM's state and memory on its worker (Firecracker).
    Snapshot { vm: String },
    /// Replace a running sandbox's network policy (no flags: the network's
    /// defaults).
    Network {
        vm: String,
        #[command(flatten)]
        policy: NetworkPolicyArgs,
    },
    /// Delete a sandbox (waits until it is gone unless --no-wait).
    Rm {
        vm: String,
        #[arg(long)]
        no_wait: bool,
    },
}

#[derive(Subcommand)]
pub enum TaskCommand {
    /// List tasks, newest first.
    Ls {
        #[arg(long)]
        status: Option<String>,
        #[arg(long = "type")]
        task_type: Option<String>,
        /// Only tasks about this sandbox (its id).
        #[arg(long)]
        vm: Option<String>,
        /// Tasks per page (1-1000).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Continue after an earlier page (its `next_cursor`).
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Show one task.
    Get { id: String },
    /// Cancel a task: one that has not started at once; a running one is stopped
    /// (its command killed, or its half-made sandbox removed).
    Cancel {
        id: String,
        /// Return at once instead of waiting until a running task has stopped.
        #[arg(long)]
        no_wait: bool,
    },
    /// Put an archived task (failed for good) back in line, with no retries used.
    Retry { id: String },
    /// Delete an archived task (failed for good); other tasks cannot be deleted.
    Rm { id: String },
}

/// `aetherium-gateway …` is `aetherium gateway …` and `aetherium-worker …` is
/// `aetherium worker run …`: one program, installed under those names as links.
fn arguments() -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let name = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    match name.as_str() {
        "aetherium-gateway" => args.insert(1, "gateway".into()),
        "aetherium-worker" => {
            args.insert(1, "worker".into());
            args.insert(2, "run".into());
        }
        _ => {}
    }
    args
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(arguments());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Up(args) => up::run(args).await.map(|()| 0),
            Command::Gateway(args) => distributed::gateway(args).await.map(|()| 0),
            Command::Vm(args) => vms::vm(args).await,
            Command::Task(args) => vms::task(args).await,
            Command::Login(args) => account::login(args).await,
            Command::Logout(args) => account::logout(args).await,
            Command::Apikey(args) => account::apikey(args).await,
            Command::User(args) => account::user(args).await,
            Command::Events(args) => events::events(args).await,
            Command::Logs(args) => events::logs(args).await,
            Command::Worker(args) => workers::worker(args).await,
            Command::Cluster(args) => workers::cluster(args).await,
            Command::Image(args) => image::image(args).await,
            Command::Doctor(args) => doctor::doctor(args).await,
            Command::Env(args) => environments::env(args).await,
            Command::Secret(args) => environments::secret(args).await,
            Command::Ws(args) => workspaces::ws(args).await,
        }
    });
    // A thread blocked reading stdin (`vm exec -i`) must not hold the exit up.
    runtime.shutdown_background();
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
