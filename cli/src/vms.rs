//! `aetherium vm` and `aetherium task`: one function per subcommand, over the API
//! client ([`Client`]).

use std::io::Write as _;

use aetherium_types::{
    CancelTaskResponse, CreateVmResponse, DeleteVmResponse, ExecuteResponse, ExecutionList, Task,
    TaskList, Vm, VmList,
};
use anyhow::{anyhow, bail};
use serde_json::json;

use crate::client::{Client, seg};
use crate::output::{print_json, print_table, short};
use crate::{OutputFormat, TaskArgs, TaskCommand, VmArgs, VmCommand};

/// Longest single wait the server grants (server.max_wait_seconds' default).
const MAX_WAIT: &str = "600s";

fn vm_rows(vms: &[Vm]) -> Vec<Vec<String>> {
    vms.iter()
        .map(|v| {
            vec![
                short(&v.id),
                v.name.clone(),
                v.status.to_string(),
                v.image.clone(),
                v.vcpu_count.to_string(),
                v.memory_mb.to_string(),
                v.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            ]
        })
        .collect()
}

const VM_HEADERS: [&str; 7] = [
    "ID",
    "NAME",
    "STATUS",
    "IMAGE",
    "VCPUS",
    "MEMORY_MB",
    "CREATED",
];

fn print_vm(vm: &Vm, format: OutputFormat) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => print_json(vm),
        OutputFormat::Table => {
            print_table(&VM_HEADERS, &vm_rows(std::slice::from_ref(vm)));
            if let Some(error) = &vm.error {
                println!("error: {error}");
            }
            Ok(())
        }
    }
}

pub async fn vm(args: VmArgs) -> anyhow::Result<u8> {
    let client = Client::new(&args.opts)?;
    let format = args.opts.output;
    match args.command {
        VmCommand::Create {
            name,
            image,
            vcpus,
            memory_mb,
            disk_mb,
            network_policy,
            orchestrator,
            no_network,
            tools,
            wait,
            no_wait,
        } => {
            let query = if no_wait {
                String::new()
            } else {
                format!("?wait={wait}")
            };
            let body = json!({
                "name": name,
                "image": image,
                "vcpus": vcpus,
                "memory_mb": memory_mb,
                "disk_mb": disk_mb,
                "network_policy": network_policy.to_json(),
                "orchestrator": orchestrator,
                "network": if no_network { Some("none") } else { None },
                "additional_tools": tools,
            });
            let created: CreateVmResponse = client
                .send(reqwest::Method::POST, &format!("/vms{query}"), Some(body))
                .await?;
            let Some(vm) = created.vm.as_ref() else {
                bail!("the server returned no VM");
            };
            match format {
                OutputFormat::Json => print_json(&created)?,
                OutputFormat::Table => print_vm(vm, format)?,
            }
            if vm.status == aetherium_types::VmStatus::Failed {
                return Ok(1);
            }
            if !no_wait && vm.status != aetherium_types::VmStatus::Running {
                eprintln!("the VM is still {} after {wait}", vm.status);
                return Ok(1);
            }
            Ok(0)
        }
        VmCommand::Ls { status } => {
            // Every VM: the pages, followed to the end.
            let filter = status
                .map(|s| format!("&status={}", seg(&s)))
                .unwrap_or_default();
            let mut list: VmList = client.get(&format!("/vms?limit=1000{filter}")).await?;
            while let Some(cursor) = list.next_cursor.take() {
                let next: VmList = client
                    .get(&format!("/vms?limit=1000{filter}&cursor={}", seg(&cursor)))
                    .await?;
                list.vms.extend(next.vms);
                list.next_cursor = next.next_cursor;
            }
            match format {
                OutputFormat::Json => print_json(&list)?,
                OutputFormat::Table => print_table(&VM_HEADERS, &vm_rows(&list.vms)),
            }
            Ok(0)
        }
        VmCommand::Get { vm } => {
            let vm: Vm = client.get(&format!("/vms/{}", seg(&vm))).await?;
            print_vm(&vm, format)?;
            Ok(0)
        }
        VmCommand::Exec {
            vm,
            interactive,
            tty,
            stream,
            timeout,
            env,
            cwd,
            command,
        } => {
            let mut env_map = serde_json::Map::new();
            let mut env_pairs = std::collections::BTreeMap::new();
            for pair in env {
                let (k, v) = pair
                    .split_once('=')
                    .ok_or_else(|| anyhow!("--env {pair:?} is not KEY=VALUE"))?;
                env_map.insert(k.to_string(), v.into());
                env_pairs.insert(k.to_string(), v.to_string());
            }
            if stream || interactive || tty {
                let spec = crate::exec::ExecSpec {
                    vm,
                    command,
                    env: env_pairs,
                    cwd,
                    timeout,
                };
                return if stream {
                    crate::exec::stream(&client, spec, format == OutputFormat::Json).await
                } else {
                    crate::exec::interactive(&client, spec, interactive, tty).await
                };
            }
            let (cmd, rest) = command
                .split_first()
                .ok_or_else(|| anyhow!("no command given after --"))?;
            let body = json!({
                "command": cmd, "args": rest, "env": env_map, "cwd": cwd, "timeout_seconds": timeout,
            });
            let response: ExecuteResponse = client
                .send(
                    reqwest::Method::POST,
                    &format!("/vms/{}/execute?wait={MAX_WAIT}", seg(&vm)),
                    Some(body),
                )
                .await?;
            let mut execution = response.execution;
            // The server caps one wait; keep waiting until the command is done.
            while !execution.as_ref().is_some_and(|e| e.status.is_finished()) {
                execution = Some(
                    client
                        .get(&format!(
                            "/executions/{}?wait={MAX_WAIT}",
                            response.execution_id
                        ))
                        .await?,
                );
            }
            let Some(execution) = execution.as_ref() else {
                bail!("no execution returned");
            };
            if format == OutputFormat::Json {
                print_json(execution)?;
            } else {
                std::io::stdout().write_all(execution.stdout.as_bytes())?;
                std::io::stderr().write_all(execution.stderr.as_bytes())?;
                if let Some(error) = &execution.error {
                    eprintln!("aetherium: {error}");
                }
            }
            Ok(match execution.exit_code {
                Some(code) => u8::try_from(code.rem_euclid(256)).unwrap_or(1),
                None if execution.status == aetherium_types::ExecutionStatus::TimedOut => 124,
                None => 1,
            })
        }
        VmCommand::Executions { vm } => {
            let list: ExecutionList = client.get(&format!("/vms/{}/executions", seg(&vm))).await?;
            match format {
                OutputFormat::Json => print_json(&list)?,
                OutputFormat::Table => {
                    let rows: Vec<Vec<String>> = list
                        .executions
                        .iter()
                        .map(|e| {
                            vec![
                                short(&e.id),
                                e.status.to_string(),
                                e.exit_code
                                    .map(|c| c.to_string())
                                    .unwrap_or_else(|| "-".into()),
                                std::iter::once(e.command.as_str())
                                    .chain(e.args.iter().map(String::as_str))
                                    .collect::<Vec<_>>()
                                    .join(" "),
                                e.duration_ms
                                    .map(|d| format!("{d}ms"))
                                    .unwrap_or_else(|| "-".into()),
                                e.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                            ]
                        })
                        .collect();
                    print_table(
                        &["ID", "STATUS", "EXIT", "COMMAND", "DURATION", "CREATED"],
                        &rows,
                    );
                }
            }
            Ok(0)
        }
        VmCommand::Cp { src, dst } => crate::cp::cp(&client, &src, &dst).await,
        VmCommand::Pause { vm } => vm_action(&client, format, &vm, "pause").await,
        VmCommand::Resume { vm } => vm_action(&client, format, &vm, "resume").await,
        VmCommand::Snapshot { vm } => vm_action(&client, format, &vm, "snapshot").await,
        VmCommand::Network { vm, policy } => {
            let done: aetherium_types::VmActionResponse = client
                .send(
                    reqwest::Method::PUT,
                    &format!("/vms/{}/network-policy?wait=120s", seg(&vm)),
                    Some(policy.to_json().unwrap_or_else(|| json!({}))),
                )
                .await?;
            match format {
                OutputFormat::Json => print_json(&done)?,
                OutputFormat::Table => match &done.vm.network_policy {
                    Some(p) => println!(
                        "{}: egress {}, allow {:?}, deny {:?}",
                        done.vm.name,
                        serde_json::to_value(p.egress)?.as_str().unwrap_or("?"),
                        p.allow,
                        p.deny
                    ),
                    None => println!("{}: the network's defaults", done.vm.name),
                },
            }
            Ok(if done.status == "completed" { 0 } else { 1 })
        }
        VmCommand::Rm { vm, no_wait } => {
            let query = if no_wait { "" } else { "?wait=120s" };
            let deleted: DeleteVmResponse = client
                .send(
                    reqwest::Method::DELETE,
                    &format!("/vms/{}{query}", seg(&vm)),
                    None,
                )
                .await?;
            match format {
                OutputFormat::Json => print_json(&deleted)?,
                OutputFormat::Table => println!("{} ({})", deleted.vm_id, deleted.status),
            }
            Ok(if no_wait || deleted.status == "completed" {
                0
            } else {
                1
            })
        }
    }
}

/// Pause, resume or snapshot, waiting until the worker has done it.
async fn vm_action(
    client: &Client,
    format: OutputFormat,
    vm: &str,
    action: &str,
) -> anyhow::Result<u8> {
    let done: aetherium_types::VmActionResponse = client
        .send(
            reqwest::Method::POST,
            &format!("/vms/{}/{action}?wait=120s", seg(vm)),
            None,
        )
        .await?;
    match format {
        OutputFormat::Json => print_json(&done)?,
        OutputFormat::Table => {
            print_vm(&done.vm, format)?;
            if let Some(dir) = done
                .result
                .as_ref()
                .and_then(|r| r.get("snapshot_dir"))
                .and_then(|d| d.as_str())
            {
                println!(
                    "snapshot: {dir} (on worker {})",
                    done.vm.worker_id.as_deref().unwrap_or("?")
                );
            }
        }
    }
    Ok(if done.status == "completed" { 0 } else { 1 })
}

fn task_rows(tasks: &[Task]) -> Vec<Vec<String>> {
    tasks
        .iter()
        .map(|t| {
            vec![
                short(&t.id),
                t.task_type.to_string(),
                t.status.to_string(),
                t.vm_id.as_deref().map(short).unwrap_or_else(|| "-".into()),
                format!("{}/{}", t.retry_count, t.max_retries),
                t.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                t.error.clone().unwrap_or_default(),
            ]
        })
        .collect()
}

const TASK_HEADERS: [&str; 7] = ["ID", "TYPE", "STATUS", "VM", "RETRIES", "CREATED", "ERROR"];

pub async fn task(args: TaskArgs) -> anyhow::Result<u8> {
    let client = Client::new(&args.opts)?;
    let format = args.opts.output;
    match args.command {
        TaskCommand::Ls {
            status,
            task_type,
            vm,
            limit,
            cursor,
        } => {
            let mut query = format!("?limit={limit}");
            if let Some(v) = vm {
                query.push_str(&format!("&vm_id={}", seg(&v)));
            }
            if let Some(c) = cursor {
                query.push_str(&format!("&cursor={}", seg(&c)));
            }
            if let Some(s) = status {
                query.push_str(&format!("&status={}", seg(&s)));
            }
            if let Some(t) = task_type {
                query.push_str(&format!("&type={}", seg(&t)));
            }
            let list: TaskList = client.get(&format!("/tasks{query}")).await?;
            match format {
                OutputFormat::Json => print_json(&list)?,
                OutputFormat::Table => {
                    print_table(&TASK_HEADERS, &task_rows(&list.tasks));
                    if let Some(next) = &list.next_cursor {
                        eprintln!(
                            "{} of {} shown; more with --cursor {next}",
                            list.tasks.len(),
                            list.total
                        );
                    }
                }
            }
        }
        TaskCommand::Cancel { id, no_wait } => {
            let query = if no_wait {
                String::new()
            } else {
                format!("?wait={MAX_WAIT}")
            };
            let cancelled: CancelTaskResponse = client
                .send(
                    reqwest::Method::POST,
                    &format!("/tasks/{}/cancel{query}", seg(&id)),
                    None,
                )
                .await?;
            match format {
                OutputFormat::Json => print_json(&cancelled)?,
                OutputFormat::Table => print_table(
                    &TASK_HEADERS,
                    &task_rows(std::slice::from_ref(&cancelled.task)),
                ),
            }
            // 0 once cancelled (or still being stopped with --no-wait); 1 when the
            // task finished before it could be stopped.
            return Ok(u8::from(
                cancelled.status != "cancelled" && cancelled.status != "cancelling",
            ));
        }
        TaskCommand::Retry { id } => {
            let task: Task = client
                .send(
                    reqwest::Method::POST,
                    &format!("/tasks/{}/retry", seg(&id)),
                    None,
                )
                .await?;
            match format {
                OutputFormat::Json => print_json(&task)?,
                OutputFormat::Table => {
                    print_table(&TASK_HEADERS, &task_rows(std::slice::from_ref(&task)))
                }
            }
        }
        TaskCommand::Rm { id } => {
            // 204: no body to read.
            client
                .execute(client.request(reqwest::Method::DELETE, &format!("/tasks/{}", seg(&id))))
                .await?;
            match format {
                OutputFormat::Json => print_json(&serde_json::json!({"id": id, "deleted": true}))?,
                OutputFormat::Table => println!("deleted task {id}"),
            }
        }
        TaskCommand::Get { id } => {
            let task: Task = client.get(&format!("/tasks/{}", seg(&id))).await?;
            match format {
                OutputFormat::Json => print_json(&task)?,
                OutputFormat::Table => {
                    print_table(&TASK_HEADERS, &task_rows(std::slice::from_ref(&task)))
                }
            }
        }
    }
    Ok(0)
}
