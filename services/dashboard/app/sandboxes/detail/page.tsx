"use client";

// One sandbox (`/sandboxes/detail/?id=<id or name>`): its state, kept current by the
// vm.* events about it, the lifecycle actions, and what can be done inside it (a
// terminal, a command, files) with the record of what ran there.

import Link from "next/link";
import { useRouter } from "next/navigation";
import { useCallback, useEffect, useState } from "react";
import { ApiError } from "@/lib/api";
import { useEvents } from "@/lib/events";
import { useAction, useIdParam, useResource } from "@/lib/hooks";
import { useSession } from "@/lib/session";
import { formatBytes, fullTime, timeAgo } from "@/lib/format";
import type { DeleteVmResponse, Vm, VmActionResponse } from "@/lib/types";
import { Button, ConfirmDialog, EmptyState, ErrorBanner, Loading, PageHeader, StatusBadge, cx } from "@/components/ui";
import { LiveIndicator } from "@/components/sandboxes/live-indicator";
import { ExecutionsPanel } from "@/components/sandboxes/executions";
import { RunCommand } from "@/components/sandboxes/run-command";
import { FilesPanel } from "@/components/sandboxes/files";
import { Terminal } from "@/components/terminal";

type Tab = "terminal" | "run" | "executions" | "files";

const TABS: { id: Tab; label: string; operator: boolean }[] = [
  { id: "terminal", label: "Terminal", operator: true },
  { id: "run", label: "Run a command", operator: true },
  { id: "executions", label: "Executions", operator: false },
  { id: "files", label: "Files", operator: true },
];

export default function SandboxDetailPage() {
  const id = useIdParam();
  if (!id) {
    return (
      <EmptyState
        title="No sandbox chosen"
        hint="This page shows one sandbox: pick it from the list."
        action={
          <Link href="/sandboxes/" className="text-sm text-primary underline">
            All sandboxes
          </Link>
        }
      />
    );
  }
  // A fresh page per sandbox: no tab, terminal or note carries over to another.
  return <SandboxDetail key={id} id={id} />;
}

function SandboxDetail({ id }: { id: string }) {
  const { api, can } = useSession();
  const router = useRouter();
  const operator = can("operator");
  const path = `/vms/${encodeURIComponent(id)}`;
  const vm = useResource<Vm>((client, signal) => client.get<Vm>(path, undefined, signal), [path]);
  const { setData } = vm;
  const [gone, setGone] = useState(false);
  const [note, setNote] = useState<string | null>(null);
  const [tab, setTab] = useState<Tab>(operator ? "terminal" : "executions");
  const [terminalOpen, setTerminalOpen] = useState(false);
  const [confirmDelete, setConfirmDelete] = useState(false);

  const refresh = useCallback(async () => {
    try {
      setData(await api.get<Vm>(path));
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) setGone(true);
    }
  }, [api, path, setData]);

  // Events name the VM by id; the address may hold its name.
  const vmId = vm.data?.id ?? id;
  const live = useEvents({ types: ["vm.*"], resourceId: vmId }, () => void refresh());

  const status = vm.data?.status;
  // A note about a queued action lasts until the state it was about changes.
  useEffect(() => setNote(null), [status]);

  const control = useAction(
    useCallback(
      async (action: "pause" | "resume" | "snapshot") => {
        if (action === "snapshot") {
          // Waits for the snapshot so its directory can be shown.
          const answer = await api.post<VmActionResponse>(`${path}/snapshot`, undefined, { wait: "60s" });
          setData(answer.vm);
          const dir = (answer.result as { snapshot_dir?: string } | null | undefined)?.snapshot_dir;
          setNote(
            dir
              ? `Snapshot written to ${dir} on worker ${answer.vm.worker_id ?? "?"}.`
              : `Snapshot queued (task ${answer.task_id}, ${answer.status}).`,
          );
          return;
        }
        const answer = await api.post<VmActionResponse>(`${path}/${action}`);
        setData(answer.vm);
        setNote(action === "pause" ? "Pausing: the sandbox turns PAUSED once its worker has frozen it." : "Resuming: the sandbox turns RUNNING once its worker has thawed it.");
      },
      [api, path, setData],
    ),
  );

  const remove = useAction(
    useCallback(async () => {
      await api.delete<DeleteVmResponse>(path);
      router.push("/sandboxes/");
    }, [api, path, router]),
  );

  if (vm.data === undefined) {
    if (vm.error) {
      return (
        <div>
          <PageHeader title="Sandbox" subtitle={<span className="font-mono">{id}</span>} />
          <ErrorBanner error={vm.error} onRetry={vm.reload} />
          <Link href="/sandboxes/" className="text-sm text-primary underline">
            Back to all sandboxes
          </Link>
        </div>
      );
    }
    return <Loading label="Loading the sandbox…" />;
  }

  const v = vm.data;
  const running = v.status === "RUNNING" && !gone;
  const busy = control.running || remove.running;
  const tabs = TABS.filter((t) => operator || !t.operator);

  return (
    <div>
      <div className="mb-1 flex flex-wrap justify-between gap-2 text-sm">
        <Link href="/sandboxes/" className="text-muted-fg hover:underline">
          ← Sandboxes
        </Link>
        <Link href={`/logs/?vm_id=${encodeURIComponent(v.id)}`} className="text-primary hover:underline">
          Platform logs of this sandbox
        </Link>
      </div>
      <PageHeader
        title={
          <span className="flex min-w-0 items-center gap-2">
            <span className="truncate">{v.name}</span>
            <StatusBadge status={gone ? "deleted" : v.status} />
          </span>
        }
        subtitle={
          <span className="inline-flex flex-wrap items-center gap-x-3 gap-y-1">
            <span className="break-all font-mono text-xs">{v.id}</span>
            <LiveIndicator state={live} />
          </span>
        }
        actions={
          operator &&
          !gone && (
            <>
              {v.status === "RUNNING" && (
                <Button busy={control.running} disabled={busy} onClick={() => void control.run("pause")}>
                  Pause
                </Button>
              )}
              {v.status === "PAUSED" && (
                <>
                  <Button busy={control.running} disabled={busy} onClick={() => void control.run("resume")}>
                    Resume
                  </Button>
                  <Button disabled={busy} onClick={() => void control.run("snapshot")} title="Writes the paused VM's state and memory on its worker (Firecracker)">
                    Snapshot
                  </Button>
                </>
              )}
              {v.status !== "STOPPING" && (
                <Button variant="danger" disabled={busy} onClick={() => setConfirmDelete(true)}>
                  Delete
                </Button>
              )}
            </>
          )
        }
      />

      {gone && (
        <div role="alert" className="mb-3 rounded-md border border-border bg-muted px-3 py-2 text-sm">
          This sandbox was deleted. Its executions stay readable below.{" "}
          <Link href="/sandboxes/" className="text-primary underline">
            All sandboxes
          </Link>
        </div>
      )}
      {v.status === "FAILED" && (
        <div role="alert" data-testid="vm-error" className="mb-3 rounded-md border border-red-500/50 bg-red-500/10 px-3 py-2 text-sm text-red-800 dark:text-red-300">
          <p className="font-semibold">This sandbox failed.</p>
          <p className="break-words">{v.error ?? "No reason was recorded."}</p>
        </div>
      )}
      <ErrorBanner error={control.error} onDismiss={() => control.setError(null)} />
      {note && (
        <p role="status" className="mb-3 rounded-md border border-border bg-muted/50 px-3 py-2 text-sm">
          {note}
        </p>
      )}

      <dl className="mb-4 grid grid-cols-2 gap-3 rounded-lg border border-border bg-card p-3 text-sm sm:grid-cols-4">
        <Info label="Backend">{v.orchestrator}</Info>
        <Info label="Image">
          <span className="break-all font-mono text-xs">{v.image}</span>
        </Info>
        <Info label="Size">
          {v.vcpu_count} vCPU · {formatBytes(v.memory_mb * 1024 * 1024)}
        </Info>
        <Info label="Worker">
          <span className="break-all font-mono text-xs">{v.worker_id ?? "—"}</span>
        </Info>
        <Info label="Created">
          <span title={fullTime(v.created_at)}>{timeAgo(v.created_at)}</span>
        </Info>
        <Info label="Started">
          <span title={fullTime(v.started_at)}>{timeAgo(v.started_at)}</span>
        </Info>
        {v.stopped_at && (
          <Info label="Stopped">
            <span title={fullTime(v.stopped_at)}>{timeAgo(v.stopped_at)}</span>
          </Info>
        )}
        {v.status !== "FAILED" && v.error && (
          <Info label="Note">
            <span className="break-words">{v.error}</span>
          </Info>
        )}
      </dl>

      <div role="tablist" aria-label="Sandbox" className="mb-3 flex gap-1 overflow-x-auto border-b border-border">
        {tabs.map((t) => (
          <button
            key={t.id}
            type="button"
            role="tab"
            id={`tab-${t.id}`}
            aria-selected={tab === t.id}
            aria-controls={`panel-${t.id}`}
            onClick={() => setTab(t.id)}
            className={cx(
              "-mb-px whitespace-nowrap border-b-2 px-3 py-2 text-sm",
              tab === t.id ? "border-primary font-medium text-fg" : "border-transparent text-muted-fg hover:text-fg",
            )}
          >
            {t.label}
          </button>
        ))}
      </div>
      {!operator && <p className="mb-3 text-sm text-muted-fg">Your role can look but not act: a terminal, commands and files need the operator role.</p>}

      {/* Panels stay mounted when hidden: a terminal session or a running command survives a tab switch. */}
      {operator && (
        <>
          <Panel id="terminal" active={tab}>
            {terminalOpen ? (
              <div className="flex flex-col gap-2">
                <Terminal vmId={v.id} />
                <div>
                  <Button size="sm" variant="ghost" onClick={() => setTerminalOpen(false)}>
                    Close terminal
                  </Button>
                </div>
              </div>
            ) : (
              <div className="flex flex-col items-start gap-2 rounded-lg border border-dashed border-border p-4">
                <p className="text-sm">A shell in the sandbox (bash when the image has it, else sh), in a real terminal: colours, Ctrl-C, full-screen programs.</p>
                {!running && <p className="text-sm text-muted-fg">The sandbox is {gone ? "deleted" : v.status}: a terminal needs it RUNNING.</p>}
                <Button variant="primary" data-testid="open-terminal" disabled={!running} onClick={() => setTerminalOpen(true)}>
                  Open terminal
                </Button>
              </div>
            )}
          </Panel>
          <Panel id="run" active={tab}>
            <RunCommand vmId={v.id} vmRunning={running} />
          </Panel>
          <Panel id="files" active={tab}>
            <FilesPanel vmId={v.id} vmRunning={running} />
          </Panel>
        </>
      )}
      <Panel id="executions" active={tab}>
        <ExecutionsPanel vmId={v.id} />
      </Panel>

      <ConfirmDialog
        open={confirmDelete}
        title={`Delete ${v.name}?`}
        message={
          <>
            The sandbox is stopped and removed with everything in it. Its executions stay readable. This cannot be undone.
          </>
        }
        busy={remove.running}
        error={remove.error}
        onConfirm={() => void remove.run()}
        onClose={() => {
          setConfirmDelete(false);
          remove.setError(null);
        }}
      />
    </div>
  );
}

function Info({ label, children }: { label: string; children: React.ReactNode }) {
  return (
    <div className="min-w-0">
      <dt className="text-xs uppercase text-muted-fg">{label}</dt>
      <dd className="mt-0.5">{children}</dd>
    </div>
  );
}

function Panel({ id, active, children }: { id: Tab; active: Tab; children: React.ReactNode }) {
  return (
    <div role="tabpanel" id={`panel-${id}`} aria-labelledby={`tab-${id}`} hidden={active !== id}>
      {children}
    </div>
  );
}
