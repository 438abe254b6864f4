"use client";

// The platform's own log (gateway, scheduler, workers), not the sandboxes' output.
// The filters live in the URL (?level=&task_id=&vm_id=&worker_id=&execution_id=&contains=)
// so other pages can link here. It shows the newest records, pages back with the
// query's cursor, and with Follow on appends new records from the logs WebSocket.

import { useCallback, useEffect, useRef, useState } from "react";
import { LogList } from "@/components/logs/log-list";
import { activeFilters, LOG_LEVELS, NO_FILTERS, useLogStream, type LogFilters } from "@/components/logs/stream";
import { LiveIndicator } from "@/components/sandboxes/live-indicator";
import { Button, EmptyState, ErrorBanner, Field, Input, Loading, PageHeader, Select } from "@/components/ui";
import { errorMessage } from "@/lib/api";
import { useUrlFilters } from "@/lib/hooks";
import { useApi } from "@/lib/session";
import type { LogLevel, LogQueryRequest, LogQueryResponse, LogRecord } from "@/lib/types";

/** Records per query page. */
const PAGE_SIZE = 200;
/** Records kept on screen: a long follow drops the oldest beyond this. */
const MAX_RECORDS = 2000;

function filtersFrom(params: URLSearchParams | null): LogFilters {
  const level = params?.get("level") ?? "";
  return {
    // An unknown level (a hand-edited link) means no level filter.
    level: (LOG_LEVELS as string[]).includes(level) ? (level as LogLevel) : "",
    task_id: params?.get("task_id") ?? "",
    vm_id: params?.get("vm_id") ?? "",
    worker_id: params?.get("worker_id") ?? "",
    execution_id: params?.get("execution_id") ?? "",
    contains: params?.get("contains") ?? "",
  };
}

function queryBody(filters: LogFilters, cursor?: string): LogQueryRequest {
  // Only the keys that are set: the API refuses `null` for nothing and unknown keys.
  return { ...activeFilters(filters), order: "desc", limit: PAGE_SIZE, ...(cursor ? { cursor } : {}) } as LogQueryRequest;
}

/** What is on screen for one load of one set of filters. */
interface View {
  /** Which load this is (filters and reload count): late answers for another are dropped. */
  key: string;
  /** Oldest first. */
  records: LogRecord[];
  /** The query's cursor to the next older page; null at the start of the log. */
  cursor: string | null;
  /** Older records were dropped to keep within MAX_RECORDS (the cursor went with them). */
  trimmed: boolean;
}

export default function LogsPage() {
  const api = useApi();
  const { filters, filtersRef, draft, setDraft, apply, filtered } = useUrlFilters("/logs/", filtersFrom, (next) => ({
    level: next.level,
    task_id: next.task_id.trim(),
    vm_id: next.vm_id.trim(),
    worker_id: next.worker_id.trim(),
    execution_id: next.execution_id.trim(),
    // The message filter is an exact, case-sensitive substring: spaces count.
    contains: next.contains,
  }));

  const [follow, setFollow] = useState(true);
  const [view, setView] = useState<View | null>(null);
  const viewRef = useRef(view);
  viewRef.current = view;
  const [error, setError] = useState<string | null>(null);
  const [generation, setGeneration] = useState(0);
  const [loadingOlder, setLoadingOlder] = useState(false);
  const [olderError, setOlderError] = useState<string | null>(null);

  const filtersKey = JSON.stringify(filters);
  const loadKey = `${filtersKey}#${generation}`;

  useEffect(() => {
    if (!api.token) return;
    const controller = new AbortController();
    setView(null);
    setError(null);
    setOlderError(null);
    api
      .request<LogQueryResponse>("/logs/query", { method: "POST", body: queryBody(filters), signal: controller.signal })
      .then((page) => {
        if (controller.signal.aborted) return;
        setView({ key: loadKey, records: page.logs.slice().reverse(), cursor: page.next_cursor ?? null, trimmed: false });
      })
      .catch((e: unknown) => {
        if (!controller.signal.aborted) setError(errorMessage(e));
      });
    return () => controller.abort();
    // `filters` is fully described by `loadKey`.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [api, loadKey]);

  const append = useCallback((incoming: LogRecord[]) => {
    setView((prev) => {
      if (!prev) return prev;
      const last = prev.records.length ? prev.records[prev.records.length - 1].id : -1;
      const fresh = incoming.filter((r) => r.id > last);
      if (!fresh.length) return prev;
      const records = prev.records.concat(fresh);
      if (records.length <= MAX_RECORDS) return { ...prev, records };
      return { ...prev, records: records.slice(records.length - MAX_RECORDS), cursor: null, trimmed: true };
    });
  }, []);

  // The stream opens once the first page is on screen, after its newest record (or
  // from the start of the retained log when the page was empty: then only records
  // written since the query can match, which are exactly the ones to catch up on).
  const following = follow && view !== null;
  const live = useLogStream(following, view?.key ?? "", filters, () => {
    const shown = viewRef.current?.records ?? [];
    return shown.length ? shown[shown.length - 1].id : 0;
  }, append);

  const loadOlder = async () => {
    const current = viewRef.current;
    if (!current?.cursor) return;
    setLoadingOlder(true);
    setOlderError(null);
    try {
      const page = await api.post<LogQueryResponse>("/logs/query", queryBody(filtersRef.current, current.cursor));
      setView((prev) => {
        // The filters changed, the page reloaded, or a follow dropped the oldest records
        // (and the cursor with them) meanwhile: this page no longer joins on.
        if (!prev || prev.key !== current.key || prev.cursor !== current.cursor) return prev;
        const first = prev.records[0]?.id ?? Number.POSITIVE_INFINITY;
        const older = page.logs.filter((r) => r.id < first).reverse();
        return { ...prev, records: [...older, ...prev.records], cursor: page.next_cursor ?? null };
      });
    } catch (e) {
      setOlderError(errorMessage(e));
    } finally {
      setLoadingOlder(false);
    }
  };

  const records = view?.records ?? [];
  const older = view?.cursor ? (records.length >= MAX_RECORDS ? "capped" : "more") : view?.trimmed ? "capped" : "none";
  const textInput = (key: Exclude<keyof LogFilters, "level">, label: string, placeholder: string, hint?: string) => (
    <Field label={label} hint={hint}>
      {(id) => (
        <Input
          id={id}
          value={draft[key]}
          placeholder={placeholder}
          maxLength={key === "contains" ? 200 : undefined}
          onChange={(e) => setDraft({ ...draft, [key]: e.target.value })}
          onBlur={() => draft[key] !== filters[key] && apply(draft)}
        />
      )}
    </Field>
  );

  return (
    <div className="flex flex-col gap-4">
      <PageHeader
        title="Logs"
        subtitle={
          <span className="inline-flex flex-wrap items-center gap-x-3 gap-y-1">
            <span>The platform&apos;s own records: gateway, scheduler and workers</span>
            {follow ? (
              // Until the first page is in, the stream waits for it: "connecting".
              <LiveIndicator state={live === "off" ? "connecting" : live} />
            ) : (
              <span data-testid="live-state" data-state="paused" className="text-xs text-muted-fg">
                paused
              </span>
            )}
          </span>
        }
        actions={
          <Button data-testid="logs-follow" aria-pressed={follow} variant={follow ? "primary" : "secondary"} onClick={() => setFollow((f) => !f)} title={follow ? "Stop appending new records" : "Append new records as they are written"}>
            {follow ? "Following" : "Follow"}
          </Button>
        }
      />
      <form
        aria-label="Filter logs"
        className="grid grid-cols-2 gap-3 rounded-lg border border-border bg-card p-3 lg:grid-cols-4"
        onSubmit={(e) => {
          e.preventDefault();
          apply(draft);
        }}
      >
        {/* On a phone the level and the text take a row each, the ids two to a row. */}
        <div className="col-span-2 sm:col-span-1">
          <Field label="Minimum level">
            {(id) => (
              <Select id={id} value={draft.level} onChange={(e) => apply({ ...draft, level: e.target.value as LogLevel | "" })}>
                <option value="">Any level</option>
                {LOG_LEVELS.map((l) => (
                  <option key={l} value={l}>
                    {l}
                    {l === "error" ? "" : " and above"}
                  </option>
                ))}
              </Select>
            )}
          </Field>
        </div>
        <div className="col-span-2 sm:col-span-1">{textInput("contains", "Message contains", "text", "Case-sensitive")}</div>
        {textInput("task_id", "Task ID", "task id")}
        {textInput("vm_id", "Sandbox ID", "vm id")}
        {textInput("worker_id", "Worker ID", "worker id")}
        {textInput("execution_id", "Execution ID", "execution id")}
        <div className="col-span-2 flex items-end gap-2">
          <Button type="submit" variant="primary">
            Apply
          </Button>
          <Button type="button" disabled={!filtered && !Object.values(draft).some(Boolean)} onClick={() => apply(NO_FILTERS)}>
            Clear
          </Button>
        </div>
      </form>

      <ErrorBanner error={error} onRetry={() => setGeneration((g) => g + 1)} />
      {view === null ? (
        !error && <Loading label="Loading logs…" />
      ) : records.length === 0 ? (
        filtered ? (
          <EmptyState
            title="No log records match these filters"
            hint={follow ? "New matching records will appear here as they are written. Change or clear the filters to see more." : "Change or clear the filters to see more, or turn on Follow to wait for new ones."}
            action={<Button onClick={() => apply(NO_FILTERS)}>Clear filters</Button>}
          />
        ) : (
          <EmptyState
            title="No log records yet"
            hint="This is the platform's own log — what the gateway, the scheduler and the workers record while they work, kept for a few days and tagged with the task, sandbox, worker and execution it concerns. Commands' output is on each sandbox's page. With Follow on, new records appear here as they are written."
          />
        )
      ) : (
        <LogList records={records} older={older} onLoadOlder={() => void loadOlder()} loadingOlder={loadingOlder} olderError={olderError} />
      )}
    </div>
  );
}
