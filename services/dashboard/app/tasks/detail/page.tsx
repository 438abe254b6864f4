"use client";

// One task: what it was asked to do, what came of it, and its history. The history
// merges the task's own timestamps with its events, replayed from the start of the
// event log (after=0) and then followed live, so each attempt's start shows.

import Link from "next/link";
import { useRouter } from "next/navigation";
import { useState } from "react";
import { useCoalesced } from "@/components/tasks/live";
import { taskDuration } from "@/components/tasks/task-table";
import { Button, Card, ConfirmDialog, EmptyState, ErrorBanner, Loading, PageHeader, Pre, StatusBadge, cx } from "@/components/ui";
import { useEvents } from "@/lib/events";
import { fullTime, timeAgo } from "@/lib/format";
import { useAction, useIdParam, useResource } from "@/lib/hooks";
import { useApi, useSession } from "@/lib/session";
import type { CancelTaskResponse, Event, Task } from "@/lib/types";

interface TimelineEntry {
  key: string;
  at: string;
  title: string;
  detail?: string;
  tone: "neutral" | "good" | "bad";
}

function pretty(value: unknown): string {
  if (value === undefined || value === null) return "—";
  return typeof value === "string" ? value : JSON.stringify(value, null, 2);
}

/** A line about an event from its data: attempt, worker, error or reason. */
function eventDetail(event: Event): string | undefined {
  const data = (event.data ?? {}) as Record<string, unknown>;
  const parts: string[] = [];
  if (typeof data.attempt === "number") parts.push(`attempt ${data.attempt}`);
  if (typeof data.worker_id === "string") parts.push(`on ${data.worker_id}`);
  if (typeof data.error === "string") parts.push(data.error);
  if (typeof data.reason === "string") parts.push(data.reason);
  return parts.length ? parts.join(" · ") : undefined;
}

const EVENT_TITLES: Record<string, string> = {
  "task.created": "Queued",
  "task.started": "Attempt started",
  "task.completed": "Completed",
  "task.failed": "Failed for good",
  "task.cancel_requested": "Cancellation asked",
  "task.cancelled": "Cancelled",
  "task.deleted": "Deleted",
};

function eventTitle(event: Event): string {
  const data = (event.data ?? {}) as Record<string, unknown>;
  if (event.type === "task.created" && data.retried === true) return "Queued again (retry from the archive)";
  return EVENT_TITLES[event.type] ?? event.type;
}

function timeline(task: Task, events: Event[]): TimelineEntry[] {
  const entries: TimelineEntry[] = [{ key: "created", at: task.created_at, title: "Created", tone: "neutral" }];
  if (task.scheduled_at && task.scheduled_at !== task.created_at) {
    entries.push({ key: "scheduled", at: task.scheduled_at, title: "Scheduled for", tone: "neutral" });
  }
  // Without events (a log past its retention), the task's own stamps still tell the story.
  if (task.started_at && !events.some((e) => e.type === "task.started")) {
    entries.push({ key: "started", at: task.started_at, title: "Started (last attempt)", tone: "neutral" });
  }
  if (task.completed_at && !events.some((e) => ["task.completed", "task.failed", "task.cancelled"].includes(e.type))) {
    entries.push({ key: "finished", at: task.completed_at, title: `Finished: ${task.status}`, tone: task.status === "completed" ? "good" : "bad" });
  }
  if (task.archived_at) entries.push({ key: "archived", at: task.archived_at, title: "Archived (dead)", tone: "bad" });
  for (const event of events) {
    entries.push({
      key: event.id,
      at: event.timestamp,
      title: eventTitle(event),
      detail: eventDetail(event),
      tone: event.type === "task.completed" ? "good" : event.type === "task.failed" || event.type === "task.cancelled" ? "bad" : "neutral",
    });
  }
  return entries.sort((a, b) => Date.parse(a.at) - Date.parse(b.at));
}

function Detail({ label, children }: { label: string; children: React.ReactNode }) {
  return (
    <>
      <dt className="text-muted-fg">{label}</dt>
      <dd className="min-w-0 break-words">{children}</dd>
    </>
  );
}

function TaskDetail({ id }: { id: string }) {
  const api = useApi();
  const router = useRouter();
  const { can } = useSession();
  const path = `/tasks/${encodeURIComponent(id)}`;
  const task = useResource((a, signal) => a.get<Task>(path, undefined, signal), [path]);
  const [events, setEvents] = useState<Event[]>([]);
  const [notice, setNotice] = useState<string | null>(null);
  const [confirmDelete, setConfirmDelete] = useState(false);
  const reload = useCoalesced(task.reload);

  const [deleted, setDeleted] = useState(false);
  useEvents({ types: ["task.*"], resourceId: id, after: 0 }, (event) => {
    setEvents((prev) => (prev.some((e) => e.id === event.id) ? prev : [...prev, event]));
    // `task.deleted` is newer than the generated EventType. Its record is gone: no refetch.
    if (event.type === "task.deleted") setDeleted(true);
    else reload();
  });

  const cancel = useAction(async () => {
    const answer = await api.post<CancelTaskResponse>(`${path}/cancel`);
    task.setData(answer.task as Task);
    setNotice(answer.status === "cancelling" ? "Cancellation asked: the worker running the task is stopping it." : "The task is cancelled.");
  });
  const retry = useAction(async () => {
    const again = await api.post<Task>(`${path}/retry`);
    task.setData(again);
    setNotice("The task is queued again.");
  });
  const remove = useAction(async () => {
    await api.delete(path);
    router.push("/tasks/");
  });

  const t = task.data;
  if (deleted) {
    return (
      <>
        <PageHeader title="Task" subtitle={<span className="font-mono">{id}</span>} />
        <EmptyState
          title="This task was deleted"
          hint="It was removed from the archive of dead tasks; it will not run again."
          action={
            <Link href="/tasks/" className="text-sm text-primary hover:underline">
              All tasks
            </Link>
          }
        />
      </>
    );
  }
  if (!t) {
    return (
      <>
        <PageHeader title="Task" subtitle={<span className="font-mono">{id}</span>} />
        <ErrorBanner error={task.error} onRetry={task.reload} />
        {!task.error && <Loading />}
      </>
    );
  }

  const finished = t.status === "completed" || t.status === "failed" || t.status === "cancelled";
  const operator = can("operator");
  return (
    <div className="flex flex-col gap-4">
      <PageHeader
        title={
          <span className="flex flex-wrap items-center gap-2">
            <span className="font-mono">{t.type}</span>
            <StatusBadge status={t.status} />
            {t.archived_at && <span className="text-sm font-normal text-muted-fg">archived</span>}
          </span>
        }
        subtitle={<span className="font-mono">{t.id}</span>}
        actions={
          operator && (
            <>
              {!finished && (
                <Button busy={cancel.running} onClick={() => void cancel.run()}>
                  Cancel task
                </Button>
              )}
              {t.archived_at && (
                <>
                  <Button variant="primary" busy={retry.running} onClick={() => void retry.run()}>
                    Retry
                  </Button>
                  <Button variant="danger" onClick={() => setConfirmDelete(true)}>
                    Delete
                  </Button>
                </>
              )}
            </>
          )
        }
      />
      <div className="flex flex-wrap justify-between gap-2 text-sm">
        <Link href="/tasks/" className="text-primary hover:underline">
          ← All tasks
        </Link>
        <Link href={`/logs/?task_id=${encodeURIComponent(t.id)}`} className="text-primary hover:underline">
          Platform logs of this task
        </Link>
      </div>
      <ErrorBanner error={cancel.error ?? retry.error} onDismiss={() => {
          cancel.setError(null);
          retry.setError(null);
        }} />
      <ErrorBanner error={task.error} onRetry={task.reload} />
      {notice && (
        <p role="status" className="rounded-md border border-border bg-muted px-3 py-2 text-sm">
          {notice}
        </p>
      )}
      {t.error && (
        <Card title="Error">
          <Pre className="text-red-700 dark:text-red-400">{t.error}</Pre>
        </Card>
      )}
      <div className="grid gap-4 lg:grid-cols-2">
        <Card title="Details">
          <dl className="grid grid-cols-[auto_minmax(0,1fr)] gap-x-4 gap-y-1.5 text-sm">
            <Detail label="Sandbox">
              {t.vm_id ? (
                <Link href={`/sandboxes/detail/?id=${encodeURIComponent(t.vm_id)}`} className="font-mono text-primary hover:underline">
                  {t.vm_id}
                </Link>
              ) : (
                "—"
              )}
            </Detail>
            <Detail label="Worker">
              <span className="font-mono">{t.worker_id ?? "—"}</span>
              {t.target_worker_id && <span className="text-xs text-muted-fg"> (bound to {t.target_worker_id})</span>}
            </Detail>
            <Detail label="Retries">
              {t.retry_count} of {t.max_retries}
            </Detail>
            <Detail label="Priority">{t.priority}</Detail>
            <Detail label="Timeout">{t.timeout_seconds} s</Detail>
            <Detail label="Created">
              <span title={fullTime(t.created_at)}>{timeAgo(t.created_at)}</span>
            </Detail>
            <Detail label="Duration">{taskDuration(t)}</Detail>
          </dl>
        </Card>
        <Card title="Timeline">
          <ol className="flex flex-col gap-2 text-sm" aria-label="Task timeline" data-testid="task-timeline">
            {timeline(t, events).map((entry) => (
              <li key={entry.key} className="flex gap-2">
                <span
                  aria-hidden
                  className={cx("mt-1.5 h-2 w-2 shrink-0 rounded-full", entry.tone === "good" ? "bg-green-500" : entry.tone === "bad" ? "bg-red-500" : "bg-muted-fg")}
                />
                <div className="min-w-0">
                  <div>
                    <span className="font-medium">{entry.title}</span>{" "}
                    <span className="text-xs text-muted-fg" title={fullTime(entry.at)}>
                      {timeAgo(entry.at)}
                    </span>
                  </div>
                  {entry.detail && <div className="break-words text-xs text-muted-fg">{entry.detail}</div>}
                </div>
              </li>
            ))}
          </ol>
        </Card>
      </div>
      <div className="grid gap-4 lg:grid-cols-2">
        <Card title="Payload" className="min-w-0">
          <Pre>{pretty(t.payload)}</Pre>
        </Card>
        <Card title="Result" className="min-w-0">
          <Pre>{pretty(t.result)}</Pre>
        </Card>
      </div>
      <ConfirmDialog
        open={confirmDelete}
        title="Delete this task?"
        message="The task leaves the archive and its record is removed; it will not run again. Its sandbox and executions are not touched."
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

export default function TaskDetailPage() {
  const id = useIdParam();
  if (!id) {
    return (
      <>
        <PageHeader title="Task" />
        <EmptyState
          title="No task selected"
          hint="Open a task from the tasks list."
          action={
            <Link href="/tasks/" className="text-sm text-primary hover:underline">
              All tasks
            </Link>
          }
        />
      </>
    );
  }
  return <TaskDetail key={id} id={id} />;
}
