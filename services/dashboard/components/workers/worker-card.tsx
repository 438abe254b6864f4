"use client";

import { Badge, Button, ErrorBanner, StatusBadge, UsageBar } from "@/components/ui";
import { formatBytes, fullTime, timeAgo } from "@/lib/format";
import { useAction } from "@/lib/hooks";
import { useApi, useSession } from "@/lib/session";
import type { WorkerView } from "@/lib/types";

const MIB = 1024 * 1024;

/** Memory in MiB as "1.5 GiB". */
export function mib(value: number): string {
  return formatBytes(value * MIB);
}

/** CPU, memory and VM slot bars of one worker. */
export function WorkerUsageBars({ worker }: { worker: WorkerView }) {
  return (
    <div className="flex flex-col gap-2">
      <UsageBar label="VM slots" used={worker.used.vms} total={worker.max_vms} />
      <UsageBar label="vCPUs" used={worker.used.vcpus} total={worker.cpu_cores} />
      {worker.memory_mb > 0 ? (
        <div className="flex flex-col gap-1">
          <UsageBar label="Memory (MiB)" used={worker.used.memory_mb} total={worker.memory_mb} />
          <span className="text-xs text-muted-fg">
            {mib(worker.used.memory_mb)} of {mib(worker.memory_mb)}
          </span>
        </div>
      ) : (
        <div className="text-xs text-muted-fg">Memory: {mib(worker.used.memory_mb)} used, not limited</div>
      )}
    </div>
  );
}

/** One worker with its capacity and, for admins, Drain / Activate. */
export function WorkerCard({ worker, onChanged }: { worker: WorkerView; onChanged: (worker: WorkerView) => void }) {
  const api = useApi();
  const { can } = useSession();
  const action = useAction(async (verb: "drain" | "activate") => {
    const updated = await api.post<WorkerView>(`/workers/${encodeURIComponent(worker.id)}/${verb}`);
    onChanged(updated);
  });
  const labels = Object.entries((worker.labels ?? {}) as Record<string, unknown>);
  return (
    <article data-testid="worker-card" data-worker-id={worker.id} className="flex flex-col gap-3 rounded-lg border border-border bg-card p-4 shadow-sm">
      <header className="flex flex-wrap items-start justify-between gap-2">
        <div className="min-w-0">
          <h2 className="truncate font-semibold" title={worker.id}>
            {worker.hostname || worker.id}
          </h2>
          <p className="truncate font-mono text-xs text-muted-fg">
            {worker.id}
            {worker.address ? ` · ${worker.address}` : ""}
          </p>
        </div>
        <StatusBadge status={worker.status} />
      </header>
      {worker.status_message && <p className="text-xs text-muted-fg">{worker.status_message}</p>}
      <dl className="grid grid-cols-[auto_minmax(0,1fr)] gap-x-3 gap-y-1 text-xs">
        <dt className="text-muted-fg">Zone</dt>
        <dd>{worker.zone || "—"}</dd>
        <dt className="text-muted-fg">Backends</dt>
        <dd className="flex flex-wrap gap-1">{worker.capabilities.length ? worker.capabilities.map((c) => <Badge key={c}>{c}</Badge>) : "—"}</dd>
        <dt className="text-muted-fg">Labels</dt>
        <dd className="flex flex-wrap gap-1">
          {labels.length
            ? labels.map(([k, v]) => (
                <Badge key={k} className="font-mono">
                  {k}={String(v)}
                </Badge>
              ))
            : "—"}
        </dd>
        <dt className="text-muted-fg">VMs owned</dt>
        <dd className="tabular-nums">
          {worker.vm_count} ({worker.free_slots} slots free)
        </dd>
        <dt className="text-muted-fg">Heartbeat</dt>
        <dd title={fullTime(worker.last_seen)}>
          {timeAgo(worker.last_seen)}
          {!worker.live && <span className="text-red-600 dark:text-red-400"> · missed</span>}
        </dd>
        <dt className="text-muted-fg">Started</dt>
        <dd title={fullTime(worker.started_at)}>{timeAgo(worker.started_at)}</dd>
      </dl>
      <WorkerUsageBars worker={worker} />
      <ErrorBanner error={action.error} onDismiss={() => action.setError(null)} />
      {can("admin") && worker.status !== "offline" && (
        <div className="flex flex-wrap gap-2">
          {worker.status === "draining" ? (
            <Button size="sm" variant="primary" busy={action.running} onClick={() => void action.run("activate")}>
              Activate
            </Button>
          ) : (
            <Button size="sm" busy={action.running} onClick={() => void action.run("drain")} title="Stop placing new VMs here; its VMs keep running">
              Drain
            </Button>
          )}
        </div>
      )}
    </article>
  );
}
