//! `aetherium worker ls|get|vms|drain|activate` and `aetherium cluster`: the hosts that
//! run sandboxes, and the cluster's capacity.

use aetherium_types::{ClusterDistribution, ClusterStats, VmList, WorkerList, WorkerView};
use clap::{Args, Subcommand};

use crate::client::{Client, seg};
use crate::output::{print_json, print_table, short};
use crate::{ClientOpts, OutputFormat};

#[derive(Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub opts: ClientOpts,
    #[command(subcommand)]
    pub command: WorkerCommand,
}

#[derive(Subcommand)]
pub enum WorkerCommand {
    /// List workers.
    Ls {
        /// Only workers in this zone.
        #[arg(long)]
        zone: Option<String>,
        /// Only workers in this status (active, draining, unhealthy, offline).
        #[arg(long)]
        status: Option<String>,
    },
    /// Show one worker.
    Get { id: String },
    /// List the sandboxes placed on a worker.
    Vms {
        id: String,
        /// Sandboxes per page (1-1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Continue after an earlier page (its `next_cursor`).
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Stop placing new sandboxes on a worker; it keeps serving the ones it has (admin).
    Drain { id: String },
    /// Let a drained worker take new sandboxes again (admin).
    Activate { id: String },
    /// Distributed mode: run this host's worker (tasks and sandboxes) on PostgreSQL
    /// + Redis until SIGTERM, then drain and release unfinished tasks.
    Run(crate::distributed::WorkerRunArgs),
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ClusterArgs {
    #[command(flatten)]
    pub opts: ClientOpts,
    /// Without one: the cluster's capacity and distribution.
    #[command(subcommand)]
    pub action: Option<crate::pki::ClusterAction>,
}

fn worker_rows(workers: &[WorkerView]) -> Vec<Vec<String>> {
    workers
        .iter()
        .map(|w| {
            vec![
                w.id.clone(),
                w.status.to_string(),
                w.zone.clone(),
                w.capabilities.join(","),
                format!("{}/{}", w.used.vms, w.max_vms),
                format!("{}/{}", w.used.vcpus, w.cpu_cores),
                if w.memory_mb == 0 {
                    format!("{}/-", w.used.memory_mb)
                } else {
                    format!("{}/{}", w.used.memory_mb, w.memory_mb)
                },
                w.last_seen.format("%Y-%m-%d %H:%M:%S").to_string(),
            ]
        })
        .collect()
}

const WORKER_HEADERS: [&str; 8] = [
    "ID",
    "STATUS",
    "ZONE",
    "BACKENDS",
    "VMS",
    "VCPUS",
    "MEMORY_MB",
    "LAST_SEEN",
];

fn print_worker(w: &WorkerView, format: OutputFormat) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => print_json(w),
        OutputFormat::Table => {
            print_table(&WORKER_HEADERS, &worker_rows(std::slice::from_ref(w)));
            if let Some(message) = &w.status_message {
                println!("status: {message}");
            }
            if !w.labels.is_empty() {
                let labels: Vec<String> = w
                    .labels
                    .iter()
                    .map(|(k, v)| match v {
                        serde_json::Value::String(s) => format!("{k}={s}"),
                        other => format!("{k}={other}"),
                    })
                    .collect();
                println!("labels: {}", labels.join(", "));
            }
            Ok(())
        }
    }
}

pub async fn worker(args: WorkerArgs) -> anyhow::Result<u8> {
    let args = match args.command {
        WorkerCommand::Run(run) => return crate::distributed::worker(run).await.map(|()| 0),
        command => WorkerArgs {
            opts: args.opts,
            command,
        },
    };
    let client = Client::new(&args.opts)?;
    let format = args.opts.output;
    match args.command {
        WorkerCommand::Ls { zone, status } => {
            let mut query = Vec::new();
            if let Some(zone) = zone {
                query.push(format!("zone={}", seg(&zone)));
            }
            if let Some(status) = status {
                query.push(format!("status={}", seg(&status)));
            }
            let path = if query.is_empty() {
                "/workers".to_string()
            } else {
                format!("/workers?{}", query.join("&"))
            };
            let list: WorkerList = client.get(&path).await?;
            match format {
                OutputFormat::Json => print_json(&list)?,
                OutputFormat::Table => print_table(&WORKER_HEADERS, &worker_rows(&list.workers)),
            }
        }
        WorkerCommand::Get { id } => {
            let w: WorkerView = client.get(&format!("/workers/{}", seg(&id))).await?;
            print_worker(&w, format)?;
        }
        WorkerCommand::Vms { id, limit, cursor } => {
            let mut path = format!("/workers/{}/vms?limit={limit}", seg(&id));
            if let Some(cursor) = cursor {
                path.push_str(&format!("&cursor={}", seg(&cursor)));
            }
            let list: VmList = client.get(&path).await?;
            match format {
                OutputFormat::Json => print_json(&list)?,
                OutputFormat::Table => {
                    let rows: Vec<Vec<String>> = list
                        .vms
                        .iter()
                        .map(|v| {
                            vec![
                                short(&v.id),
                                v.name.clone(),
                                v.status.to_string(),
                                v.vcpu_count.to_string(),
                                v.memory_mb.to_string(),
                                v.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                            ]
                        })
                        .collect();
                    print_table(
                        &["ID", "NAME", "STATUS", "VCPUS", "MEMORY_MB", "CREATED"],
                        &rows,
                    );
                    if let Some(next) = list.next_cursor {
                        eprintln!("more: --cursor {next}");
                    }
                }
            }
        }
        WorkerCommand::Drain { id } => {
            let w: WorkerView = client
                .send(
                    reqwest::Method::POST,
                    &format!("/workers/{}/drain", seg(&id)),
                    None,
                )
                .await?;
            print_worker(&w, format)?;
        }
        WorkerCommand::Activate { id } => {
            let w: WorkerView = client
                .send(
                    reqwest::Method::POST,
                    &format!("/workers/{}/activate", seg(&id)),
                    None,
                )
                .await?;
            print_worker(&w, format)?;
        }
        WorkerCommand::Run(_) => anyhow::bail!("`worker run` is not a client command"),
    }
    Ok(0)
}

/// `aetherium cluster`: totals, then VMs per zone and per worker.
pub async fn cluster(args: ClusterArgs) -> anyhow::Result<u8> {
    if let Some(action) = args.action {
        return crate::pki::run(action);
    }
    let client = Client::new(&args.opts)?;
    let stats: ClusterStats = client.get("/cluster/stats").await?;
    let dist: ClusterDistribution = client.get("/cluster/distribution").await?;
    match args.opts.output {
        OutputFormat::Json => {
            print_json(&serde_json::json!({"stats": stats, "distribution": dist}))?;
        }
        OutputFormat::Table => {
            let w = &stats.workers;
            println!(
                "workers: {} ({} active, {} draining, {} unhealthy, {} offline)",
                w.total, w.active, w.draining, w.unhealthy, w.offline
            );
            println!(
                "slots:   {} used of {} ({} free)",
                stats.slots_used, stats.slots_total, stats.slots_free
            );
            println!(
                "vcpus:   {} used of {}",
                stats.cpu_cores_used, stats.cpu_cores_total
            );
            println!(
                "memory:  {} MiB used of {}",
                stats.memory_mb_used,
                if stats.memory_mb_total == 0 {
                    "unlimited".to_string()
                } else {
                    format!("{} MiB", stats.memory_mb_total)
                }
            );
            let by_status: Vec<String> =
                stats.vms.iter().map(|(s, n)| format!("{n} {s}")).collect();
            println!(
                "vms:     {}{}",
                stats.vms_total,
                if by_status.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", by_status.join(", "))
                }
            );
            println!();
            let zones: Vec<Vec<String>> = dist
                .zones
                .iter()
                .map(|z| {
                    vec![
                        z.zone.clone(),
                        format!("{}/{}", z.active_workers, z.workers),
                        z.vms.to_string(),
                        format!("{}/{}", z.slots_free, z.slots_total),
                    ]
                })
                .collect();
            print_table(&["ZONE", "ACTIVE/WORKERS", "VMS", "FREE/SLOTS"], &zones);
            println!();
            let workers: Vec<Vec<String>> = dist
                .workers
                .iter()
                .map(|w| {
                    vec![
                        w.worker_id.clone(),
                        w.zone.clone(),
                        w.status.to_string(),
                        format!("{}/{}", w.vms, w.max_vms),
                        format!("{:.0}%", w.share * 100.0),
                    ]
                })
                .collect();
            print_table(&["WORKER", "ZONE", "STATUS", "VMS", "SHARE"], &workers);
        }
    }
    Ok(0)
}
