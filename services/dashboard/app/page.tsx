"use client";

// The overview: the cluster's health at a glance. Each section loads on its own and
// shows its own error, so one failing call never blanks the page. Live events
// refresh only the sections they concern, at most once a second each.

import Link from "next/link";
import { StackedBar, type Segment } from "@/components/charts";
import { useCoalesced } from "@/components/tasks/live";
import { TaskTable } from "@/components/tasks/task-table";
import { ThroughputSparklines } from "@/components/tasks/throughput";
import { Card, EmptyState, ErrorBanner, Loading, PageHeader, Stat, StatusBadge, UsageBar } from "@/components/ui";
import { mib } from "@/components/workers/worker-card";
import { useEvents } from "@/lib/events";
import { timeAgo } from "@/lib/format";
import { useResource, type Resource } from "@/lib/hooks";
import type { ClusterStats, QueueHistory, QueueStats, Task, TaskList, VmStatus, WorkerList } from "@/lib/types";

const VM_STATES: { status: VmStatus; tone: Segment["tone"] }[] = [
  { status: "RUNNING", tone: "green" },
  { status: "CREATED", tone: "amber" },
  { status: "STARTING", tone: "amber" },
  { status: "PAUSED", tone: "sky" },
  { status: "STOPPING", tone: "zinc" },
  { status: "STOPPED", tone: "zinc" },
  { status: "FAILED", tone: "red" },
];

/** The known states in lifecycle order, then any state this dashboard does not know yet. */
function vmSegments(byStatus: Record<string, number>): Segment[] {
  const known = VM_STATES.map(({ status, tone }) => ({ label: status, value: byStatus[status] ?? 0, tone }));
  const other = Object.keys(byStatus)
    .filter((status) => !VM_STATES.some((k) => k.status === status))
    .map((status) => ({ label: status, value: byStatus[status], tone: "zinc" as const }));
  return [...known, ...other];
}

/** Renders a section's loading, error and data states the same way everywhere. */
function Section<T>({ title, resource, actions, children, testId }: { title: string; resource: Resource<T>; actions?: React.ReactNode; children: (data: T) => React.ReactNode; testId: string }) {
  return (
    <Card title={title} actions={actions} className="min-w-0">
      <div data-testid={testId}>
        <ErrorBanner error={resource.error} onRetry={resource.reload} />
        {resource.data !== undefined ? children(resource.data) : !resource.error && <Loading />}
      </div>
    </Card>
  );
}

function SandboxesSection({ stats }: { stats: Resource<ClusterStats> }) {
  return (
    <Section title="Sandboxes" resource={stats} testId="overview-sandboxes" actions={<Link href="/sandboxes/" className="text-xs text-primary hover:underline">All sandboxes</Link>}>
      {(s) => {
        const byStatus = (s.vms ?? {}) as Record<string, number>;
        return (
          <div className="flex flex-col gap-4">
            <div className="grid grid-cols-2 gap-2 sm:grid-cols-4">
              <Stat label="Sandboxes" value={s.vms_total} />
              <Stat label="Workers" value={`${s.workers.active}/${s.workers.total}`} hint="active / registered" />
              <Stat label="Slots free" value={s.slots_free} hint={`${s.slots_used} of ${s.slots_total} used`} />
              <Stat label="vCPUs used" value={`${s.cpu_cores_used}/${s.cpu_cores_total}`} hint={s.memory_mb_total > 0 ? `memory ${mib(s.memory_mb_used)} of ${mib(s.memory_mb_total)}` : `memory ${mib(s.memory_mb_used)} used, not limited`} />
            </div>
            {s.vms_total === 0 ? (
              <EmptyState title="No sandboxes yet" hint={<>Create one on the <Link href="/sandboxes/" className="text-primary hover:underline">Sandboxes</Link> page or with `aetherium vm create`.</>} />
            ) : (
              <StackedBar label="Sandboxes by state" segments={vmSegments(byStatus)} />
            )}
          </div>
        );
      }}
    </Section>
  );
}

function WorkersSection({ workers }: { workers: Resource<WorkerList> }) {
  return (
    <Section title="Workers" resource={workers} testId="overview-workers" actions={<Link href="/workers/" className="text-xs text-primary hover:underline">All workers</Link>}>
      {(w) =>
        w.workers.length === 0 ? (
          <EmptyState title="No workers are registered" hint="Start `aetherium up`, or `aetherium worker run` on a host with Docker: it registers itself with its first heartbeat." />
        ) : (
          <ul className="flex flex-col divide-y divide-border">
            {w.workers.map((worker) => (
              <li key={worker.id} className="flex flex-col gap-1.5 py-2 first:pt-0 last:pb-0">
                <div className="flex flex-wrap items-center justify-between gap-2 text-sm">
                  <span className="min-w-0 truncate font-medium" title={worker.id}>
                    {worker.hostname || worker.id} <span className="text-xs text-muted-fg">{worker.zone}</span>
                  </span>
                  <span className="flex items-center gap-2 text-xs text-muted-fg">
                    {timeAgo(worker.last_seen)}
                    <StatusBadge status={worker.status} />
                  </span>
                </div>
                <div className="grid gap-2 sm:grid-cols-2">
                  <UsageBar label="VM slots" used={worker.used.vms} total={worker.max_vms} />
                  <UsageBar label="vCPUs" used={worker.used.vcpus} total={worker.cpu_cores} />
                </div>
              </li>
            ))}
          </ul>
        )
      }
    </Section>
  );
}

function QueueSection({ queue }: { queue: Resource<QueueStats> }) {
  return (
    <Section title="Queues" resource={queue} testId="overview-queue" actions={<Link href="/queue/" className="text-xs text-primary hover:underline">Queue details</Link>}>
      {(q) => (
        <div className="overflow-x-auto">
          <table className="w-full text-left text-sm" aria-label="Queue depths">
            <thead className="text-xs uppercase text-muted-fg">
              <tr>
                <th className="py-1 font-medium">Queue</th>
                <th className="py-1 text-right font-medium">Pending</th>
                <th className="py-1 text-right font-medium">Active</th>
                <th className="py-1 text-right font-medium">Retry</th>
                <th className="py-1 text-right font-medium">Archived</th>
              </tr>
            </thead>
            <tbody className="divide-y divide-border tabular-nums">
              {q.queues.map((c) => (
                <tr key={c.queue}>
                  <td className="py-1">{c.queue}</td>
                  <td className="py-1 text-right">{c.pending}</td>
                  <td className="py-1 text-right">{c.active}</td>
                  <td className="py-1 text-right">{c.retry}</td>
                  <td className="py-1 text-right">{c.archived}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </Section>
  );
}

function ThroughputSection({ history }: { history: Resource<QueueHistory> }) {
  return (
    <Section title="Throughput, last 30 minutes" resource={history} testId="overview-throughput">
      {(h) => <ThroughputSparklines history={h} />}
    </Section>
  );
}

function RecentTasksSection({ tasks }: { tasks: Resource<TaskList> }) {
  return (
    <Section title="Recent tasks" resource={tasks} testId="overview-recent-tasks" actions={<Link href="/tasks/" className="text-xs text-primary hover:underline">All tasks</Link>}>
      {(t) =>
        t.tasks.length === 0 ? (
          <EmptyState title="No tasks yet" hint="Tasks are queued when sandboxes are created, run commands or are deleted: create a sandbox to see them here." />
        ) : (
          <TaskTable tasks={t.tasks as Task[]} label="Recent tasks" />
        )
      }
    </Section>
  );
}

function FailuresSection({ failures }: { failures: Resource<TaskList> }) {
  return (
    <Section title="Recent failures" resource={failures} testId="overview-failures" actions={<Link href="/tasks/?status=failed" className="text-xs text-primary hover:underline">All failed tasks</Link>}>
      {(t) =>
        t.tasks.length === 0 ? (
          <p className="text-sm text-muted-fg">No failed tasks. Failures show here with their error.</p>
        ) : (
          <ul className="flex flex-col divide-y divide-border">
            {t.tasks.map((task) => (
              <li key={task.id} className="flex flex-col gap-0.5 py-2 first:pt-0 last:pb-0">
                <div className="flex flex-wrap items-center justify-between gap-2">
                  <Link href={`/tasks/detail/?id=${encodeURIComponent(task.id)}`} className="font-mono text-xs font-medium text-primary hover:underline">
                    {task.type}
                  </Link>
                  <span className="text-xs text-muted-fg">{timeAgo(task.completed_at ?? task.created_at)}</span>
                </div>
                <p className="break-words text-xs text-red-700 dark:text-red-400">{task.error || "failed without an error message"}</p>
              </li>
            ))}
          </ul>
        )
      }
    </Section>
  );
}

export default function OverviewPage() {
  const stats = useResource((api, signal) => api.get<ClusterStats>("/cluster/stats", undefined, signal), []);
  const workers = useResource((api, signal) => api.get<WorkerList>("/workers", undefined, signal), []);
  const queue = useResource((api, signal) => api.get<QueueStats>("/queue/stats", undefined, signal), []);
  const history = useResource((api, signal) => api.get<QueueHistory>("/queue/history", { minutes: 30 }, signal), []);
  const recent = useResource((api, signal) => api.get<TaskList>("/tasks", { limit: 10 }, signal), []);
  const failures = useResource((api, signal) => api.get<TaskList>("/tasks", { status: "failed", limit: 5 }, signal), []);

  const reloadStats = useCoalesced(stats.reload);
  const reloadWorkers = useCoalesced(workers.reload);
  const reloadTasks = useCoalesced(() => {
    queue.reload();
    history.reload();
    recent.reload();
    // A retried or deleted archived task leaves the failures too, not only task.failed.
    failures.reload();
  });

  const live = useEvents({ types: ["vm.*", "task.*", "worker.*"] }, (event) => {
    const category = event.type.split(".")[0];
    if (category === "vm" || category === "worker") {
      // A VM's state changes the counts and the usage of its worker.
      reloadStats();
      reloadWorkers();
    } else if (category === "task") {
      reloadTasks();
    }
  });

  return (
    <div className="flex flex-col gap-4">
      <PageHeader title="Overview" subtitle={live === "live" ? "Live" : live === "reconnecting" ? "Reconnecting to live events…" : "Connecting…"} />
      <SandboxesSection stats={stats} />
      <div className="grid gap-4 lg:grid-cols-2">
        <WorkersSection workers={workers} />
        <div className="flex min-w-0 flex-col gap-4">
          <QueueSection queue={queue} />
          <ThroughputSection history={history} />
        </div>
      </div>
      <div className="grid gap-4 lg:grid-cols-3">
        <div className="min-w-0 lg:col-span-2">
          <RecentTasksSection tasks={recent} />
        </div>
        <FailuresSection failures={failures} />
      </div>
    </div>
  );
}
