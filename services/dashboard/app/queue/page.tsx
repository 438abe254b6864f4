"use client";

// The task queue: counts per queue and throughput per minute. task.* events reload
// both, at most once a second; nothing polls.

import Link from "next/link";
import { useCoalesced } from "@/components/tasks/live";
import { ThroughputChart } from "@/components/tasks/throughput";
import { Card, ErrorBanner, Loading, PageHeader, Stat, Table, Td } from "@/components/ui";
import { useEvents } from "@/lib/events";
import { useResource } from "@/lib/hooks";
import type { QueueHistory, QueueStats } from "@/lib/types";

const MINUTES = 30;

const COLUMNS = ["pending", "active", "scheduled", "retry", "archived", "processed", "failed"] as const;

export default function QueuePage() {
  const stats = useResource((api, signal) => api.get<QueueStats>("/queue/stats", undefined, signal), []);
  const history = useResource((api, signal) => api.get<QueueHistory>("/queue/history", { minutes: MINUTES }, signal), []);
  const reload = useCoalesced(() => {
    stats.reload();
    history.reload();
  });
  const live = useEvents({ types: ["task.*"] }, reload);

  const s = stats.data;
  return (
    <div className="flex flex-col gap-4">
      <PageHeader title="Queue" subtitle={live === "reconnecting" ? "Reconnecting to live updates…" : "Tasks waiting, running and done, per queue"} />
      <ErrorBanner error={stats.error} onRetry={stats.reload} />
      {s ? (
        <>
          <div className="grid grid-cols-2 gap-2 sm:grid-cols-3 lg:grid-cols-6" data-testid="queue-totals">
            <Stat label="Pending" value={s.pending} />
            <Stat label="Scheduled" value={s.scheduled} hint="waiting for a later time" />
            <Stat label="Running" value={s.running} />
            <Stat label="Completed" value={s.completed} />
            <Stat label="Failed" value={s.failed} />
            <Stat label="Cancelled" value={s.cancelled} />
          </div>
          <Table label="Queues" head={["Queue", ...COLUMNS]}>
            {s.queues.map((q) => (
              <tr key={q.queue} data-testid="queue-row" data-queue={q.queue}>
                <Td className="font-medium">{q.queue}</Td>
                {COLUMNS.map((c) => (
                  <Td key={c} className="tabular-nums">
                    {c === "archived" && q.archived > 0 ? (
                      <Link href="/tasks/?status=failed" className="text-primary hover:underline" title="Dead tasks: see the failed tasks, retry or delete them">
                        {q.archived}
                      </Link>
                    ) : (
                      q[c]
                    )}
                  </Td>
                ))}
              </tr>
            ))}
          </Table>
          <p className="text-xs text-muted-fg">
            Retry: failed an attempt and waiting for its backoff. Archived: dead tasks that used up their retries;{" "}
            <Link href="/tasks/?status=failed" className="text-primary hover:underline">
              open the failed tasks
            </Link>{" "}
            to retry or delete them.
          </p>
        </>
      ) : (
        !stats.error && <Loading />
      )}
      <Card title={`Throughput, last ${MINUTES} minutes`}>
        <div data-testid="queue-throughput">
          <ErrorBanner error={history.error} onRetry={history.reload} />
          {history.data ? (
            history.data.buckets.some((b) => b.created || b.completed || b.failed) ? (
              <ThroughputChart history={history.data} />
            ) : (
              <p className="text-sm text-muted-fg">No tasks were created or finished in the last {MINUTES} minutes.</p>
            )
          ) : (
            !history.error && <Loading />
          )}
        </div>
      </Card>
    </div>
  );
}
