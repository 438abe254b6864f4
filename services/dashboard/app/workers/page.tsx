"use client";

// The hosts that run sandboxes: capacity, what is used of it, heartbeat, and for
// admins Drain / Activate. worker.* events refetch that worker; vm.* events change
// usage, so they reload the list (coalesced to once a second).

import { useRef, useState } from "react";
import { useCoalesced } from "@/components/tasks/live";
import { EmptyState, ErrorBanner, Field, Loading, PageHeader, Select, Stat } from "@/components/ui";
import { mib, WorkerCard } from "@/components/workers/worker-card";
import { errorMessage } from "@/lib/api";
import { useEvents } from "@/lib/events";
import { useResource } from "@/lib/hooks";
import { useApi } from "@/lib/session";
import type { ClusterStats, WorkerList, WorkerStatus, WorkerView } from "@/lib/types";

const STATUSES: WorkerStatus[] = ["active", "draining", "unhealthy", "offline"];

function byId(a: WorkerView, b: WorkerView): number {
  return a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
}

export default function WorkersPage() {
  const api = useApi();
  const [zone, setZone] = useState("");
  const [status, setStatus] = useState("");
  const filterRef = useRef({ zone, status });
  filterRef.current = { zone, status };
  const [liveError, setLiveError] = useState<string | null>(null);

  const stats = useResource((a, signal) => a.get<ClusterStats>("/cluster/stats", undefined, signal), []);
  const list = useResource((a, signal) => a.get<WorkerList>("/workers", { zone, status }, signal), [zone, status]);
  const reloadStats = useCoalesced(stats.reload);
  const reloadList = useCoalesced(list.reload);

  /** Puts a fresh copy of a worker into the list, or takes it out if it no longer matches. */
  const upsert = (worker: WorkerView) => {
    const f = filterRef.current;
    const fits = (!f.zone || worker.zone === f.zone) && (!f.status || worker.status === f.status);
    list.setData((prev) => {
      if (!prev) return prev;
      const others = prev.workers.filter((w) => w.id !== worker.id);
      const workers = fits ? [...others, worker].sort(byId) : others;
      return { ...prev, workers, total: workers.length };
    });
  };

  const live = useEvents({ types: ["worker.*", "vm.*"] }, (event) => {
    reloadStats();
    if (!event.type.startsWith("worker.")) {
      reloadList();
      return;
    }
    api
      .get<WorkerView>(`/workers/${encodeURIComponent(event.resource_id)}`)
      .then((worker) => {
        setLiveError(null);
        upsert(worker);
      })
      .catch((e: unknown) => setLiveError(`A live update failed: ${errorMessage(e)}`));
  });

  const s = stats.data;
  const workers = list.data?.workers ?? [];
  const filtered = Boolean(zone || status);

  return (
    <div className="flex flex-col gap-4">
      <PageHeader title="Workers" subtitle={live === "reconnecting" ? "Reconnecting to live updates…" : "Hosts that run sandboxes"} />
      <ErrorBanner error={stats.error} onRetry={stats.reload} />
      {s && (
        <div className="grid grid-cols-2 gap-2 sm:grid-cols-3 lg:grid-cols-5" data-testid="cluster-totals">
          <Stat label="Workers" value={s.workers.total} hint={`${s.workers.active} active · ${s.workers.draining} draining · ${s.workers.unhealthy} unhealthy · ${s.workers.offline} offline`} />
          <Stat label="VM slots" value={`${s.slots_used}/${s.slots_total}`} hint={`${s.slots_free} free`} />
          <Stat label="vCPUs" value={`${s.cpu_cores_used}/${s.cpu_cores_total}`} hint="used / cores" />
          <Stat label="Memory" value={mib(s.memory_mb_used)} hint={`of ${mib(s.memory_mb_total)}`} />
          <Stat label="Sandboxes" value={s.vms_total} hint={`${s.zones.length} zone${s.zones.length === 1 ? "" : "s"}`} />
        </div>
      )}
      <form aria-label="Filter workers" className="grid grid-cols-1 gap-3 sm:grid-cols-[12rem_12rem]" onSubmit={(e) => e.preventDefault()}>
        <Field label="Zone">
          {(id) => (
            <Select id={id} value={zone} onChange={(e) => setZone(e.target.value)}>
              <option value="">Any zone</option>
              {(s?.zones ?? []).map((z) => (
                <option key={z} value={z}>
                  {z}
                </option>
              ))}
              {zone && !s?.zones.includes(zone) && <option value={zone}>{zone}</option>}
            </Select>
          )}
        </Field>
        <Field label="Status">
          {(id) => (
            <Select id={id} value={status} onChange={(e) => setStatus(e.target.value)}>
              <option value="">Any status</option>
              {STATUSES.map((st) => (
                <option key={st} value={st}>
                  {st}
                </option>
              ))}
            </Select>
          )}
        </Field>
      </form>
      <ErrorBanner error={list.error} onRetry={list.reload} />
      <ErrorBanner error={liveError} onDismiss={() => setLiveError(null)} />
      {list.data === undefined ? (
        !list.error && <Loading />
      ) : workers.length === 0 ? (
        filtered ? (
          <EmptyState title="No worker matches these filters" hint="Choose another zone or status." />
        ) : (
          <EmptyState title="No workers are registered" hint="Start `aetherium up`, or `aetherium worker run` on a host with Docker: it registers itself with its first heartbeat and shows up here." />
        )
      ) : (
        <div className="grid gap-4 md:grid-cols-2 xl:grid-cols-3">
          {workers.map((w) => (
            <WorkerCard
              key={w.id}
              worker={w}
              onChanged={(updated) => {
                upsert(updated);
                reloadStats();
              }}
            />
          ))}
        </div>
      )}
    </div>
  );
}
