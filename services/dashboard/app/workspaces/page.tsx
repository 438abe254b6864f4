"use client";

import Link from "next/link";
import { useSession } from "@/lib/session";
import { useEvents } from "@/lib/events";
import { useResource } from "@/lib/hooks";
import { fullTime, timeAgo } from "@/lib/format";
import type { EnvironmentList, WorkspaceList, WorkspaceStatus } from "@/lib/types";
import { Button, EmptyState, ErrorBanner, Loading, PageHeader, StatusBadge, Table, Td } from "@/components/ui";
import { SessionIndicator } from "@/components/workspaces/prompt-panel";

export default function WorkspacesPage() {
  const { can } = useSession();
  const list = useResource((api, signal) => api.get<WorkspaceList>("/workspaces", { limit: 200 }, signal), []);
  // Names for the environment column; a failure only leaves ids showing.
  const envs = useResource((api, signal) => api.get<EnvironmentList>("/environments", { limit: 1000 }, signal), []);
  const envName = new Map((envs.data?.environments ?? []).map((e) => [e.id, e.name]));

  const live = useEvents({ types: ["workspace.*"] }, (event) => {
    if (event.type === "workspace.deleted") {
      list.setData((l) => l && { ...l, workspaces: l.workspaces.filter((w) => w.id !== event.resource_id), total: Math.max(0, l.total - 1) });
      return;
    }
    if (event.type !== "workspace.status") return;
    const data = (event.data ?? {}) as { status?: WorkspaceStatus; message?: string | null };
    const known = list.data?.workspaces.some((w) => w.id === event.resource_id);
    if (!known) {
      // A workspace created elsewhere: read the list once to show it.
      list.reload();
      return;
    }
    list.setData((l) =>
      l && {
        ...l,
        workspaces: l.workspaces.map((w) => (w.id === event.resource_id && data.status ? { ...w, status: data.status, status_message: data.message ?? null } : w)),
      },
    );
  });

  const create = can("operator") && (
    <Link href="/workspaces/new/">
      <Button variant="primary">Create workspace</Button>
    </Link>
  );
  const rows = list.data?.workspaces ?? [];

  return (
    <div>
      <PageHeader
        title="Workspaces"
        subtitle="Long-lived sandboxes where a coding agent works on a repository."
        actions={
          <>
            <SessionIndicator state={live} testId="events-state" />
            {create}
          </>
        }
      />
      <ErrorBanner error={list.error} onRetry={list.reload} />
      {list.loading && !list.data ? (
        <Loading />
      ) : rows.length === 0 && !list.error ? (
        <EmptyState
          title="No workspaces yet"
          hint="A workspace is a sandbox prepared from an environment — repository cloned, tools installed, secrets set — where an agent (claude-code or amp) answers your prompts."
          action={create || <p className="text-sm text-muted-fg">Creating one needs the operator role.</p>}
        />
      ) : (
        <Table head={["Name", "Status", "Environment", "Assistant", "Created", "Last activity"]} label="Workspaces">
          {rows.map((w) => (
            <tr key={w.id} data-testid="workspace-row" className="hover:bg-muted/50">
              <Td>
                <Link href={`/workspaces/detail/?id=${encodeURIComponent(w.id)}`} className="font-medium text-primary hover:underline">
                  {w.name}
                </Link>
                {w.status_message && <div className="max-w-xs truncate text-xs text-muted-fg" title={w.status_message}>{w.status_message}</div>}
              </Td>
              <Td>
                <StatusBadge status={w.status} />
              </Td>
              <Td>
                {w.environment_id ? (
                  <Link href={`/environments/detail/?id=${encodeURIComponent(w.environment_id)}`} className="hover:underline">
                    {envName.get(w.environment_id) ?? w.environment_id}
                  </Link>
                ) : (
                  <span className="text-muted-fg">none</span>
                )}
              </Td>
              <Td>{w.ai_assistant}</Td>
              <Td title={fullTime(w.created_at)}>{timeAgo(w.created_at)}</Td>
              <Td title={fullTime(w.last_activity_at)}>{timeAgo(w.last_activity_at)}</Td>
            </tr>
          ))}
        </Table>
      )}
    </div>
  );
}
