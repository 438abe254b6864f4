"use client";

// Who did what: every request that needs more than the viewer role, and every login
// attempt, newest first (admins only). The filters live in the URL
// (?action=&actor_id=&resource_id=) so a link keeps them. The audit log has no live
// stream: Refresh loads the newest entries again.

import Link from "next/link";
import { useId, useState } from "react";
import { RequireAdmin } from "@/components/admin/require-admin";
import { Button, cx, EmptyState, ErrorBanner, Field, Input, Loading, PageHeader, Table, Td } from "@/components/ui";
import { errorMessage, queryString } from "@/lib/api";
import { fullTime, shortId, timeAgo } from "@/lib/format";
import { useResource, useUrlFilters } from "@/lib/hooks";
import { useApi } from "@/lib/session";
import type { AuditEntry, AuditList } from "@/lib/types";

const PAGE_SIZE = 100;

/** Suggestions for the action filter: names are the route's fixed segments plus a verb. */
const COMMON_ACTIONS = [
  "auth.login",
  "vms.create",
  "vms.delete",
  "vms.execute",
  "vms.exec.stream",
  "vms.files.write",
  "tasks.cancel",
  "tasks.retry",
  "tasks.delete",
  "workers.drain",
  "workers.activate",
  "api-keys.create",
  "api-keys.revoke",
  "users.create",
  "users.update",
  "users.delete",
];

interface Filters {
  action: string;
  actor_id: string;
  resource_id: string;
}

const EMPTY: Filters = { action: "", actor_id: "", resource_id: "" };

function filtersFrom(params: URLSearchParams | null): Filters {
  return {
    action: params?.get("action") ?? "",
    actor_id: params?.get("actor_id") ?? "",
    resource_id: params?.get("resource_id") ?? "",
  };
}

const filterHref = (f: Partial<Filters>) => `/audit/${queryString({ ...f })}`;

function StatusCode({ status }: { status: number }) {
  const tone =
    status >= 500
      ? "bg-red-500/15 text-red-700 dark:text-red-400"
      : status >= 400
        ? "bg-amber-500/15 text-amber-700 dark:text-amber-400"
        : status >= 200 && status < 300
          ? "bg-green-500/15 text-green-700 dark:text-green-400"
          : "bg-muted text-muted-fg";
  return <span className={cx("inline-flex rounded-full px-2 py-0.5 font-mono text-xs font-medium tabular-nums", tone)}>{status}</span>;
}

function AuditLog() {
  const api = useApi();
  const { filters, filtersRef, draft, setDraft, apply, filtered } = useUrlFilters("/audit/", filtersFrom, (next) => ({
    action: next.action.trim(),
    actor_id: next.actor_id.trim(),
    resource_id: next.resource_id.trim(),
  }));
  const actionsId = useId();


  const list = useResource(
    (a, signal) => a.get<AuditList>("/audit", { ...filters, limit: PAGE_SIZE }, signal),
    [filters.action, filters.actor_id, filters.resource_id],
  );
  const [loadingMore, setLoadingMore] = useState(false);
  const [moreError, setMoreError] = useState<string | null>(null);


  const loadMore = async () => {
    const cursor = list.data?.next_cursor;
    if (!cursor) return;
    const asked = filters;
    setLoadingMore(true);
    setMoreError(null);
    try {
      const page = await api.get<AuditList>("/audit", { ...asked, limit: PAGE_SIZE, cursor });
      // The filters changed meanwhile: this page belongs to the old list.
      if (filtersRef.current !== asked) return;
      list.setData((prev) => {
        if (!prev) return page;
        const seen = new Set(prev.entries.map((e) => e.seq));
        return { entries: [...prev.entries, ...page.entries.filter((e) => !seen.has(e.seq))], next_cursor: page.next_cursor };
      });
    } catch (e) {
      setMoreError(errorMessage(e));
    } finally {
      setLoadingMore(false);
    }
  };

  const refresh = () => {
    setMoreError(null);
    list.reload();
  };

  const entries = list.data?.entries ?? [];

  return (
    <div className="flex flex-col gap-4">
      <PageHeader
        title="Audit log"
        subtitle="Every change made through the API — sandboxes, commands, files, tasks, keys, users, workers — and every login attempt, refused ones included. Reads are not recorded."
        actions={
          <Button busy={list.loading && list.data !== undefined} onClick={refresh}>
            Refresh
          </Button>
        }
      />
      <form
        aria-label="Filter audit log"
        className="grid grid-cols-1 gap-3 rounded-lg border border-border bg-card p-3 sm:grid-cols-3 lg:grid-cols-[1fr_1fr_1fr_auto]"
        onSubmit={(e) => {
          e.preventDefault();
          apply(draft);
        }}
      >
        <Field label="Action">
          {(id) => (
            <>
              <Input id={id} list={actionsId} value={draft.action} placeholder="e.g. vms.delete" onChange={(e) => setDraft({ ...draft, action: e.target.value })} onBlur={() => draft.action.trim() !== filters.action && apply(draft)} />
              <datalist id={actionsId}>
                {COMMON_ACTIONS.map((a) => (
                  <option key={a} value={a} />
                ))}
              </datalist>
            </>
          )}
        </Field>
        <Field label="Actor ID">
          {(id) => <Input id={id} value={draft.actor_id} placeholder="user or key id" onChange={(e) => setDraft({ ...draft, actor_id: e.target.value })} onBlur={() => draft.actor_id.trim() !== filters.actor_id && apply(draft)} />}
        </Field>
        <Field label="Resource ID">
          {(id) => <Input id={id} value={draft.resource_id} placeholder="sandbox, task, user… id" onChange={(e) => setDraft({ ...draft, resource_id: e.target.value })} onBlur={() => draft.resource_id.trim() !== filters.resource_id && apply(draft)} />}
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
      {list.data === undefined ? (
        !list.error && <Loading label="Loading the audit log…" />
      ) : entries.length === 0 ? (
        filtered ? (
          <EmptyState title="No audit entries match these filters" hint="Action names look like vms.create or users.update; ids must match exactly. Change or clear the filters." action={<Button onClick={() => apply(EMPTY)}>Clear filters</Button>} />
        ) : (
          <EmptyState title="No audit entries yet" hint="Entries appear when someone creates, runs in or deletes a sandbox, copies files, cancels a task, manages keys or users, or logs in. Press Refresh to look again." />
        )
      ) : (
        <>
          <Table label="Audit log" head={["Time", "Actor", "Action", "Request", "Resource", "Status", "Remote address"]}>
            {entries.map((entry) => (
              <AuditRow key={entry.seq} entry={entry} />
            ))}
          </Table>
          <ErrorBanner error={moreError} onRetry={() => void loadMore()} />
          <div className="flex items-center justify-between gap-2 text-xs text-muted-fg">
            <span>
              Showing {entries.length} entr{entries.length === 1 ? "y" : "ies"}, newest first
            </span>
            {list.data.next_cursor && (
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

function AuditRow({ entry }: { entry: AuditEntry }) {
  return (
    <tr data-testid="audit-row" data-seq={entry.seq} className="hover:bg-muted/50">
      <Td className="whitespace-nowrap" title={timeAgo(entry.at)}>
        {fullTime(entry.at) || entry.at}
      </Td>
      <Td className="whitespace-nowrap">
        {entry.actor_id ? (
          // Names can repeat across users and keys; the id is what the filter takes.
          <Link href={filterHref({ actor_id: entry.actor_id })} title={`Only entries by ${entry.actor_id}`} className="text-primary hover:underline">
            {entry.actor_name || shortId(entry.actor_id)}
          </Link>
        ) : (
          <span className="text-muted-fg" title="Not signed in (a failed login, say)">
            {entry.actor_name || "anonymous"}
          </span>
        )}
      </Td>
      <Td className="whitespace-nowrap font-mono text-xs">{entry.action}</Td>
      <Td className="font-mono text-xs">
        <span className="font-semibold">{entry.method}</span> <span className="break-all">{entry.route.replace(/^\/api\/v1/, "")}</span>
      </Td>
      <Td className="font-mono text-xs">
        {entry.resource_id ? (
          <Link href={filterHref({ resource_id: entry.resource_id })} title={`Only entries about ${entry.resource_id}`} className="text-primary hover:underline">
            {shortId(entry.resource_id)}
          </Link>
        ) : (
          <span className="text-muted-fg">—</span>
        )}
      </Td>
      <Td>
        <StatusCode status={entry.status} />
      </Td>
      <Td className="whitespace-nowrap font-mono text-xs text-muted-fg">{entry.remote_addr || "—"}</Td>
    </tr>
  );
}

export default function AuditPage() {
  return (
    <RequireAdmin what="The audit log">
      <AuditLog />
    </RequireAdmin>
  );
}
