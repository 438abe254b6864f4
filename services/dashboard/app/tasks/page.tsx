"use client";

// Every queued task, newest first, filtered on the server. The filters live in the
// URL (?type=&status=&vm_id=&worker_id=) so a reload or a shared link keeps them.
// Live task.* events update the rows on screen and add new matching tasks on top.

import { useState } from "react";
import { TaskTable } from "@/components/tasks/task-table";
import { TASK_STATUSES, TASK_TYPES } from "@/components/tasks/types";
import { Button, EmptyState, ErrorBanner, Field, Input, Loading, PageHeader, Select } from "@/components/ui";
import { ApiError, errorMessage } from "@/lib/api";
import { useEvents } from "@/lib/events";
import { useResource, useUrlFilters } from "@/lib/hooks";
import { useApi } from "@/lib/session";
import type { Task, TaskList } from "@/lib/types";

const PAGE_SIZE = 50;

interface Filters {
  type: string;
  status: string;
  vm_id: string;
  worker_id: string;
}

const EMPTY: Filters = { type: "", status: "", vm_id: "", worker_id: "" };

function filtersFrom(params: URLSearchParams | null): Filters {
  return {
    type: params?.get("type") ?? "",
    status: params?.get("status") ?? "",
    vm_id: params?.get("vm_id") ?? "",
    worker_id: params?.get("worker_id") ?? "",
  };
}

function matches(task: Task, f: Filters): boolean {
  return (!f.type || task.type === f.type) && (!f.status || task.status === f.status) && (!f.vm_id || task.vm_id === f.vm_id) && (!f.worker_id || task.worker_id === f.worker_id);
}

export default function TasksPage() {
  const api = useApi();
  // The applied filters (what the list shows) and the text being typed, in the URL.
  const { filters, filtersRef, draft, setDraft, apply, filtered } = useUrlFilters("/tasks/", filtersFrom, (next) => ({
    type: next.type,
    status: next.status,
    vm_id: next.vm_id.trim(),
    worker_id: next.worker_id.trim(),
  }));
  const [loadingMore, setLoadingMore] = useState(false);
  const [moreError, setMoreError] = useState<string | null>(null);
  const [liveError, setLiveError] = useState<string | null>(null);

  const list = useResource(
    (a, signal) => a.get<TaskList>("/tasks", { ...filters, limit: PAGE_SIZE }, signal),
    [filters.type, filters.status, filters.vm_id, filters.worker_id],
  );


  const loadMore = async () => {
    const cursor = list.data?.next_cursor;
    if (!cursor) return;
    const asked = filters;
    setLoadingMore(true);
    setMoreError(null);
    try {
      const page = await api.get<TaskList>("/tasks", { ...asked, limit: PAGE_SIZE, cursor });
      // The filters changed meanwhile: this page belongs to the old list.
      if (filtersRef.current !== asked) return;
      list.setData((prev) => {
        if (!prev) return page;
        const seen = new Set(prev.tasks.map((t) => t.id));
        return { ...page, tasks: [...prev.tasks, ...page.tasks.filter((t) => !seen.has(t.id))] };
      });
    } catch (e) {
      setMoreError(errorMessage(e));
    } finally {
      setLoadingMore(false);
    }
  };

  const drop = (id: string) =>
    list.setData((prev) => (prev && prev.tasks.some((t) => t.id === id) ? { ...prev, tasks: prev.tasks.filter((t) => t.id !== id), total: Math.max(0, prev.total - 1) } : prev));

  const live = useEvents({ types: ["task.*"] }, (event) => {
    // `task.deleted` (an archived task removed) is newer than the generated EventType.
    if (event.type === "task.deleted") {
      drop(event.resource_id);
      return;
    }
    api
      .get<Task>(`/tasks/${encodeURIComponent(event.resource_id)}`)
      .then((task) => {
        setLiveError(null);
        list.setData((prev) => {
          if (!prev) return prev;
          const index = prev.tasks.findIndex((t) => t.id === task.id);
          if (index >= 0) {
            const tasks = prev.tasks.slice();
            tasks[index] = task;
            return { ...prev, tasks };
          }
          if (!matches(task, filtersRef.current)) return prev;
          return { ...prev, tasks: [task, ...prev.tasks], total: prev.total + 1 };
        });
      })
      .catch((e: unknown) => {
        // A task deleted right after its event is gone: take it off the list.
        if (e instanceof ApiError && e.status === 404) drop(event.resource_id);
        else setLiveError(`A live update failed: ${errorMessage(e)}`);
      });
  });

  const data = list.data;

  return (
    <div className="flex flex-col gap-4">
      <PageHeader
        title="Tasks"
        subtitle={
          <>
            {data ? `${data.total} task${data.total === 1 ? "" : "s"}${filtered ? (data.total === 1 ? " matches" : " match") : ""}` : "Queued work of the platform"}
            {live === "reconnecting" && " · reconnecting to live updates…"}
          </>
        }
      />
      <form
        aria-label="Filter tasks"
        className="grid grid-cols-1 gap-3 rounded-lg border border-border bg-card p-3 sm:grid-cols-2 lg:grid-cols-[1fr_1fr_1fr_1fr_auto]"
        onSubmit={(e) => {
          e.preventDefault();
          apply(draft);
        }}
      >
        <Field label="Type">
          {(id) => (
            <Select id={id} value={draft.type} onChange={(e) => apply({ ...draft, type: e.target.value })}>
              <option value="">Any type</option>
              {TASK_TYPES.map((t) => (
                <option key={t} value={t}>
                  {t}
                </option>
              ))}
            </Select>
          )}
        </Field>
        <Field label="Status">
          {(id) => (
            <Select id={id} value={draft.status} onChange={(e) => apply({ ...draft, status: e.target.value })}>
              <option value="">Any status</option>
              {TASK_STATUSES.map((s) => (
                <option key={s} value={s}>
                  {s}
                </option>
              ))}
            </Select>
          )}
        </Field>
        <Field label="Sandbox ID">
          {(id) => <Input id={id} value={draft.vm_id} placeholder="vm id" onChange={(e) => setDraft({ ...draft, vm_id: e.target.value })} onBlur={() => draft.vm_id.trim() !== filters.vm_id && apply(draft)} />}
        </Field>
        <Field label="Worker ID">
          {(id) => <Input id={id} value={draft.worker_id} placeholder="worker id" onChange={(e) => setDraft({ ...draft, worker_id: e.target.value })} onBlur={() => draft.worker_id.trim() !== filters.worker_id && apply(draft)} />}
        </Field>
        <div className="flex items-end gap-2">
          <Button type="submit" variant="primary">
            Apply
          </Button>
          <Button type="button" disabled={!filtered && !Object.values(draft).some(Boolean)} onClick={() => apply(EMPTY)}>
            Clear
          </Button>
        </div>
      </form>

      <ErrorBanner error={list.error} onRetry={list.reload} />
      <ErrorBanner error={liveError} onDismiss={() => setLiveError(null)} />
      {data === undefined ? (
        !list.error && <Loading />
      ) : data.tasks.length === 0 ? (
        filtered ? (
          <EmptyState title="No tasks match these filters" hint="Change or clear the filters to see more tasks." action={<Button onClick={() => apply(EMPTY)}>Clear filters</Button>} />
        ) : (
          <EmptyState title="No tasks yet" hint="Tasks are queued when sandboxes are created, run commands or are deleted: create a sandbox and its tasks show up here live." />
        )
      ) : (
        <>
          <TaskTable tasks={data.tasks as Task[]} />
          <ErrorBanner error={moreError} onRetry={() => void loadMore()} />
          <div className="flex items-center justify-between gap-2 text-xs text-muted-fg">
            <span>
              Showing {data.tasks.length} of {data.total}
            </span>
            {data.next_cursor && (
              <Button busy={loadingMore} onClick={() => void loadMore()}>
                Load more
              </Button>
            )}
          </div>
        </>
      )}
    </div>
  );
}
