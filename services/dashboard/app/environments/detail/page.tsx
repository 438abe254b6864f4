"use client";

import Link from "next/link";
import { useRouter } from "next/navigation";
import { useState } from "react";
import { errorMessage } from "@/lib/api";
import { useSession } from "@/lib/session";
import { useIdParam, useResource } from "@/lib/hooks";
import { fullTime, timeAgo } from "@/lib/format";
import type { Environment } from "@/lib/types";
import { Button, Card, ConfirmDialog, EmptyState, ErrorBanner, Loading, PageHeader, Pre } from "@/components/ui";
import { EnvironmentForm } from "@/components/workspaces/environment-form";
import { idleLabel } from "@/components/workspaces/form-utils";

function Row({ label, children }: { label: string; children: React.ReactNode }) {
  return (
    <div className="grid gap-1 py-1.5 sm:grid-cols-[10rem_1fr]">
      <dt className="text-sm text-muted-fg">{label}</dt>
      <dd className="min-w-0 break-words text-sm">{children}</dd>
    </div>
  );
}

export default function EnvironmentDetailPage() {
  const id = useIdParam();
  const { api, can } = useSession();
  const router = useRouter();
  const [editing, setEditing] = useState(false);
  const [confirm, setConfirm] = useState(false);
  const [deleting, setDeleting] = useState(false);
  const [deleteError, setDeleteError] = useState<string | null>(null);
  const env = useResource((a, signal) => a.get<Environment>(`/environments/${encodeURIComponent(id ?? "")}`, undefined, signal), [id]);

  if (!id) return <EmptyState title="No environment selected" action={<Link href="/environments/" className="text-primary underline">All environments</Link>} />;
  if (env.loading && !env.data) return <Loading />;
  if (!env.data) return <ErrorBanner error={env.error ?? "Environment not found."} onRetry={env.reload} />;
  const e = env.data;

  const remove = async () => {
    setDeleting(true);
    setDeleteError(null);
    try {
      await api.delete(`/environments/${encodeURIComponent(e.id)}`);
      router.push("/environments/");
    } catch (err) {
      setDeleteError(errorMessage(err));
    } finally {
      setDeleting(false);
    }
  };

  return (
    <div className="flex flex-col gap-4">
      <PageHeader
        title={e.name}
        subtitle={e.description || "Environment"}
        actions={
          can("operator") &&
          !editing && (
            <>
              <Link href={`/workspaces/new/?environment=${encodeURIComponent(e.id)}`}>
                <Button variant="primary">New workspace</Button>
              </Link>
              <Button onClick={() => setEditing(true)}>Edit</Button>
              <Button variant="danger" onClick={() => setConfirm(true)}>
                Delete
              </Button>
            </>
          )
        }
      />
      <ErrorBanner error={env.error} onRetry={env.reload} />
      {editing ? (
        <Card title="Edit environment">
          <EnvironmentForm
            environment={e}
            submitLabel="Save changes"
            onSubmit={async (body) => {
              const updated = await api.put<Environment>(`/environments/${encodeURIComponent(e.id)}`, body);
              env.setData(updated);
              setEditing(false);
            }}
            onCancel={() => setEditing(false)}
          />
        </Card>
      ) : (
        <Card title="Settings">
          <dl className="divide-y divide-border">
            <Row label="Image">{e.image || "the gateway's default"}</Row>
            <Row label="Size">
              {e.vcpus} vCPU · {e.memory_mb} MiB
            </Row>
            <Row label="Repository">
              {e.git_repo_url ? (
                <span className="font-mono text-xs">
                  {e.git_repo_url}
                  {e.git_branch ? ` @ ${e.git_branch}` : ""}
                </span>
              ) : (
                "—"
              )}
            </Row>
            <Row label="Working directory">
              <span className="font-mono text-xs">{e.working_directory}</span>
            </Row>
            <Row label="Tools">{e.tools.length ? e.tools.join(", ") : "—"}</Row>
            <Row label="Environment variables">
              {Object.keys(e.env_vars).length ? (
                <Pre>
                  {Object.entries(e.env_vars)
                    .map(([k, v]) => `${k}=${v}`)
                    .join("\n")}
                </Pre>
              ) : (
                "—"
              )}
            </Row>
            <Row label="MCP servers">{e.mcp_servers.length ? <Pre>{JSON.stringify(e.mcp_servers, null, 2)}</Pre> : "—"}</Row>
            <Row label="Idle timeout">{idleLabel(e.idle_timeout_seconds)}</Row>
            <Row label="Created">
              <span title={fullTime(e.created_at)}>{timeAgo(e.created_at)}</span>
            </Row>
            <Row label="Updated">
              <span title={fullTime(e.updated_at)}>{timeAgo(e.updated_at)}</span>
            </Row>
            <Row label="Id">
              <span className="font-mono text-xs">{e.id}</span>
            </Row>
          </dl>
        </Card>
      )}
      <ConfirmDialog
        open={confirm}
        title="Delete environment"
        message={
          <>
            Delete <strong>{e.name}</strong>? Workspaces already created from it keep running; new ones can no longer start from it.
          </>
        }
        busy={deleting}
        error={deleteError}
        onConfirm={() => void remove()}
        onClose={() => {
          setConfirm(false);
          setDeleteError(null);
        }}
      />
    </div>
  );
}
