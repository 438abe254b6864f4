"use client";

// A sandbox's executions (queued, streamed and interactive alike), newest first.
// execution.* events are about the execution (resource_id) and carry the VM in
// `data.vm_id`: the ones for this VM are fetched and put in place.

import { Fragment, useCallback, useRef, useState } from "react";
import { useEvents } from "@/lib/events";
import { useAction, useResource } from "@/lib/hooks";
import { useApi } from "@/lib/session";
import { duration, formatMs, fullTime, timeAgo } from "@/lib/format";
import type { Event, Execution, ExecutionList } from "@/lib/types";
import { Button, EmptyState, ErrorBanner, Loading, Pre, StatusBadge, Table, Td } from "@/components/ui";

const PAGE = 100;

/** `sh -c 'ls -la'`: the command line as a shell would show it. */
export function commandLine(e: Pick<Execution, "command" | "args">): string {
  const quote = (s: string) => (/^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`);
  return [e.command, ...e.args].map(quote).join(" ");
}

function took(e: Execution): string {
  if (typeof e.duration_ms === "number") return formatMs(e.duration_ms);
  return e.started_at ? duration(e.started_at, e.completed_at) : "—";
}

export function ExecutionsPanel({ vmId }: { vmId: string }) {
  const api = useApi();
  const [open, setOpen] = useState<Set<string>>(new Set());
  const list = useResource<ExecutionList>(
    (client, signal) => client.get<ExecutionList>(`/vms/${encodeURIComponent(vmId)}/executions`, { limit: PAGE }, signal),
    [vmId],
  );
  const { setData } = list;

  const latest = useRef(new Map<string, number>());
  const refresh = useCallback(
    async (id: string) => {
      const ticket = (latest.current.get(id) ?? 0) + 1;
      latest.current.set(id, ticket);
      let execution: Execution;
      try {
        execution = await api.get<Execution>(`/executions/${encodeURIComponent(id)}`);
      } catch {
        // The list keeps its last state; the next event or a reload catches up.
        return;
      }
      if (latest.current.get(id) !== ticket) return;
      setData((prev) => {
        if (!prev) return prev;
        const at = prev.executions.findIndex((x) => x.id === id);
        if (at === -1) return { ...prev, executions: [execution, ...prev.executions], total: prev.total + 1 };
        const executions = prev.executions.slice();
        executions[at] = execution;
        return { ...prev, executions };
      });
    },
    [api, setData],
  );

  // The next page (by the list's cursor), added below the rows already shown.
  const loadMore = useCallback(
    async (cursor: string) => {
      const page = await api.get<ExecutionList>(`/vms/${encodeURIComponent(vmId)}/executions`, { limit: PAGE, cursor });
      setData((prev) => {
        if (!prev) return page;
        const seen = new Set(prev.executions.map((x) => x.id));
        return { executions: [...prev.executions, ...page.executions.filter((x) => !seen.has(x.id))], total: page.total, next_cursor: page.next_cursor };
      });
    },
    [api, vmId, setData],
  );
  const more = useAction(loadMore);

  useEvents({ types: ["execution.*"] }, (event: Event) => {
    const data = event.data as { vm_id?: string } | null | undefined;
    if (data?.vm_id === vmId) void refresh(event.resource_id);
  });

  const toggle = (id: string) =>
    setOpen((prev) => {
      const next = new Set(prev);
      if (next.has(id)) next.delete(id);
      else next.add(id);
      return next;
    });

  if (list.data === undefined) {
    return (
      <>
        <ErrorBanner error={list.error} onRetry={list.reload} />
        {list.loading && <Loading label="Loading executions…" />}
      </>
    );
  }

  const { executions, total } = list.data;
  return (
    <div className="flex flex-col gap-2">
      <ErrorBanner error={list.error} onRetry={list.reload} />
      <p className="text-xs text-muted-fg">
        {total > executions.length ? `The latest ${executions.length} of ${total} executions.` : `${total} ${total === 1 ? "execution" : "executions"}.`}
      </p>
      {executions.length === 0 ? (
        <EmptyState title="Nothing has run here yet" hint="Run a command or open a terminal: each run is recorded here with its output." />
      ) : (
        <Table label="Executions" head={["Command", "Exit code", "Status", "Duration", "Started"]}>
          {executions.map((e) => {
            const expanded = open.has(e.id);
            return (
              <Fragment key={e.id}>
                <tr data-execution-id={e.id}>
                  <Td className="max-w-80">
                    <button
                      type="button"
                      onClick={() => toggle(e.id)}
                      aria-expanded={expanded}
                      className="flex max-w-full items-center gap-1.5 text-left font-mono text-xs hover:underline"
                      title={expanded ? "Hide output" : "Show output"}
                    >
                      <span aria-hidden className="text-muted-fg">
                        {expanded ? "▾" : "▸"}
                      </span>
                      <span className="truncate">{commandLine(e)}</span>
                    </button>
                  </Td>
                  <Td className="tabular-nums">{e.exit_code ?? "—"}</Td>
                  <Td>
                    <StatusBadge status={e.status} />
                  </Td>
                  <Td className="whitespace-nowrap tabular-nums">{took(e)}</Td>
                  <Td className="whitespace-nowrap text-muted-fg" title={fullTime(e.started_at ?? e.created_at)}>
                    {timeAgo(e.started_at ?? e.created_at)}
                  </Td>
                </tr>
                {expanded && (
                  <tr>
                    <td colSpan={5} className="bg-muted/40 px-3 py-2">
                      <ExecutionOutput execution={e} />
                    </td>
                  </tr>
                )}
              </Fragment>
            );
          })}
        </Table>
      )}
      <ErrorBanner error={more.error} />
      {list.data.next_cursor && (
        <div>
          <Button size="sm" busy={more.running} onClick={() => void more.run(list.data?.next_cursor ?? "")}>
            Show older
          </Button>
        </div>
      )}
    </div>
  );
}

function ExecutionOutput({ execution: e }: { execution: Execution }) {
  const mode = typeof e.metadata?.mode === "string" ? (e.metadata.mode as string) : null;
  return (
    <div className="flex flex-col gap-2 text-xs">
      <div className="flex flex-wrap gap-x-4 gap-y-1 text-muted-fg">
        <span className="font-mono">{e.id}</span>
        {mode && <span>mode: {mode}</span>}
        {e.completed_at && <span title={fullTime(e.completed_at)}>finished {timeAgo(e.completed_at)}</span>}
      </div>
      {e.error && <p className="text-red-700 dark:text-red-400">{e.error}</p>}
      {e.stdout || e.stderr ? (
        <>
          {e.stdout && (
            <div>
              <div className="mb-1 font-medium">stdout</div>
              <Pre>{e.stdout}</Pre>
            </div>
          )}
          {e.stderr && (
            <div>
              <div className="mb-1 font-medium">stderr</div>
              <Pre className="text-red-700 dark:text-red-300">{e.stderr}</Pre>
            </div>
          )}
        </>
      ) : (
        <p className="text-muted-fg">{e.status === "pending" || e.status === "running" ? "No output yet." : "No output."}</p>
      )}
    </div>
  );
}
