"use client";

import Link from "next/link";
import { useState } from "react";
import { errorMessage } from "@/lib/api";
import { useSession } from "@/lib/session";
import { useResource } from "@/lib/hooks";
import { timeAgo, fullTime } from "@/lib/format";
import type { Environment, EnvironmentList } from "@/lib/types";
import { Button, EmptyState, ErrorBanner, Loading, PageHeader, Table, Td } from "@/components/ui";
import { idleLabel } from "@/components/workspaces/form-utils";

export default function EnvironmentsPage() {
  const { api, can } = useSession();
  // Extra pages fetched with "Load more"; the first page comes from the resource.
  const [more, setMore] = useState<{ rows: Environment[]; cursor: string | null | undefined }>({ rows: [], cursor: undefined });
  const [moreError, setMoreError] = useState<string | null>(null);
  const list = useResource((api, signal) => api.get<EnvironmentList>("/environments", { limit: 100 }, signal), []);

  const rows = [...(list.data?.environments ?? []), ...more.rows];
  const cursor = more.cursor === undefined ? list.data?.next_cursor : more.cursor;

  const loadMore = async () => {
    if (!cursor) return;
    try {
      const page = await api.get<EnvironmentList>("/environments", { limit: 100, cursor });
      setMore((m) => ({ rows: [...m.rows, ...page.environments], cursor: page.next_cursor ?? null }));
    } catch (e) {
      setMoreError(errorMessage(e));
    }
  };

  const create = can("operator") && (
    <Link href="/environments/new/">
      <Button variant="primary">Create environment</Button>
    </Link>
  );

  return (
    <div>
      <PageHeader title="Environments" subtitle="Reusable templates for workspaces: image, repository, tools, variables." actions={create} />
      <ErrorBanner error={list.error} onRetry={list.reload} />
      <ErrorBanner error={moreError} onDismiss={() => setMoreError(null)} />
      {list.loading && !list.data ? (
        <Loading />
      ) : rows.length === 0 && !list.error ? (
        <EmptyState
          title="No environments yet"
          hint="An environment is a reusable template for workspaces: the sandbox image, the git repository to clone, the tools to install (nodejs@20, python…), environment variables, MCP servers and how long a workspace may sit idle. Create one, then start workspaces from it."
          action={create || <p className="text-sm text-muted-fg">Creating one needs the operator role.</p>}
        />
      ) : (
        <>
          <Table head={["Name", "Image", "Repository", "Tools", "Idle timeout", "Updated"]} label="Environments">
            {rows.map((env) => (
              <tr key={env.id} className="hover:bg-muted/50">
                <Td>
                  <Link href={`/environments/detail/?id=${encodeURIComponent(env.id)}`} className="font-medium text-primary hover:underline">
                    {env.name}
                  </Link>
                  {env.description && <div className="max-w-xs truncate text-xs text-muted-fg">{env.description}</div>}
                </Td>
                <Td className="font-mono text-xs">{env.image || <span className="text-muted-fg">default</span>}</Td>
                <Td className="max-w-xs truncate font-mono text-xs" title={env.git_repo_url ?? ""}>
                  {env.git_repo_url ? `${env.git_repo_url}${env.git_branch ? ` (${env.git_branch})` : ""}` : "—"}
                </Td>
                <Td className="text-xs">{env.tools.length ? env.tools.join(", ") : "—"}</Td>
                <Td>{idleLabel(env.idle_timeout_seconds)}</Td>
                <Td title={fullTime(env.updated_at)}>{timeAgo(env.updated_at)}</Td>
              </tr>
            ))}
          </Table>
          {cursor && (
            <div className="mt-3 flex justify-center">
              <Button onClick={() => void loadMore()}>Load more</Button>
            </div>
          )}
        </>
      )}
    </div>
  );
}
