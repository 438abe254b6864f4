"use client";

import Link from "next/link";
import { useRouter } from "next/navigation";
import { useState } from "react";
import { errorMessage } from "@/lib/api";
import { useSession } from "@/lib/session";
import { useEvents } from "@/lib/events";
import { useIdParam, useResource } from "@/lib/hooks";
import { fullTime, timeAgo } from "@/lib/format";
import type { Environment, PrepStepList, PrepStepRun, Workspace, WorkspaceStatus } from "@/lib/types";
import { Button, Card, ConfirmDialog, EmptyState, ErrorBanner, Loading, PageHeader, StatusBadge } from "@/components/ui";
import { PrepProgress, type ToolProgress } from "@/components/workspaces/prep-progress";
import { PromptPanel } from "@/components/workspaces/prompt-panel";
import { SecretsPanel } from "@/components/workspaces/secrets-panel";
import { idleLabel } from "@/components/workspaces/form-utils";

function Row({ label, children }: { label: string; children: React.ReactNode }) {
  return (
    <div className="grid gap-1 py-1.5 sm:grid-cols-[9rem_1fr]">
      <dt className="text-sm text-muted-fg">{label}</dt>
      <dd className="min-w-0 break-words text-sm">{children}</dd>
    </div>
  );
}

function EnvironmentName({ id }: { id: string }) {
  const env = useResource((a, signal) => a.get<Environment>(`/environments/${encodeURIComponent(id)}`, undefined, signal), [id]);
  return (
    <Link href={`/environments/detail/?id=${encodeURIComponent(id)}`} className="text-primary hover:underline">
      {env.data?.name ?? id}
    </Link>
  );
}

function WorkspaceDetail({ id }: { id: string }) {
  const { api, can } = useSession();
  const router = useRouter();
  const ws = useResource((a, signal) => a.get<Workspace>(`/workspaces/${encodeURIComponent(id)}`, undefined, signal), [id]);
  const steps = useResource((a, signal) => a.get<PrepStepList>(`/workspaces/${encodeURIComponent(id)}/steps`, undefined, signal), [id]);
  const [tools, setTools] = useState<ToolProgress[]>([]);
  const [confirm, setConfirm] = useState(false);
  const [deleting, setDeleting] = useState(false);
  const [deleteError, setDeleteError] = useState<string | null>(null);
  const workspaceId = ws.data?.id;

  const setStatus = (status: WorkspaceStatus, message?: string | null) =>
    ws.setData((w) => (w && w.status !== status ? { ...w, status, status_message: message === undefined ? w.status_message : message } : w));

  const live = useEvents({ types: ["workspace.*"], resourceId: workspaceId }, (event) => {
    if (!workspaceId || event.resource_id !== workspaceId) return;
    const data = (event.data ?? {}) as Record<string, unknown>;
    if (event.type === "workspace.status") {
      setStatus(data.status as WorkspaceStatus, (data.message as string | null | undefined) ?? null);
      // The record gains ready_at, vm and worker: one read per change, no polling.
      ws.reload();
    } else if (event.type === "workspace.deleted") {
      // Deleted elsewhere: the read answers 404, shown as such.
      ws.reload();
    } else if (event.type === "workspace.step") {
      if (data.phase === "tools") {
        const t = data as unknown as ToolProgress;
        setTools((list) => [...list.filter((x) => x.tool !== t.tool), t]);
      } else if (typeof data.order === "number") {
        const run = data as unknown as PrepStepRun;
        steps.setData((s) => {
          const list = s?.steps ?? [];
          const next = list.some((x) => x.order === run.order) ? list.map((x) => (x.order === run.order ? run : x)) : [...list, run];
          return { steps: next.sort((a, b) => a.order - b.order) };
        });
      }
    }
  });

  if (ws.loading && !ws.data) return <Loading />;
  if (!ws.data) return <ErrorBanner error={ws.error ?? "Workspace not found."} onRetry={ws.reload} />;
  const w = ws.data;

  const remove = async () => {
    setDeleting(true);
    setDeleteError(null);
    try {
      await api.delete(`/workspaces/${encodeURIComponent(w.id)}`);
      router.push("/workspaces/");
    } catch (e) {
      setDeleteError(errorMessage(e));
    } finally {
      setDeleting(false);
    }
  };

  return (
    <div className="flex flex-col gap-4">
      <PageHeader
        title={
          <span className="flex flex-wrap items-center gap-2">
            {w.name} <StatusBadge status={w.status} />
          </span>
        }
        subtitle={w.description || `Workspace ${w.id}`}
        actions={
          can("operator") && (
            <Button variant="danger" onClick={() => setConfirm(true)}>
              Delete workspace
            </Button>
          )
        }
      />
      <ErrorBanner error={ws.error} onRetry={ws.reload} />
      {w.status === "failed" && (
        <div role="alert" data-testid="workspace-error" className="rounded-md border border-red-500/40 bg-red-500/10 px-3 py-2 text-sm text-red-800 dark:text-red-300">
          <p className="font-medium">Preparation failed</p>
          <p className="whitespace-pre-wrap break-words">{w.status_message || "No reason was recorded."}</p>
          <p className="mt-1 text-xs">A failed workspace cannot be retried: fix the cause, delete it and create it again.</p>
        </div>
      )}
      {w.status !== "failed" && w.status_message && <p className="text-sm text-muted-fg">{w.status_message}</p>}
      <div className="grid gap-4 lg:grid-cols-[minmax(0,2fr)_minmax(0,1fr)]">
        <div className="flex min-w-0 flex-col gap-4">
          <Card title="Preparation" actions={<span className="text-xs text-muted-fg">events: {live}</span>}>
            <ErrorBanner error={steps.error} onRetry={steps.reload} />
            {steps.loading && !steps.data ? <Loading /> : <PrepProgress steps={steps.data?.steps ?? []} tools={tools} />}
          </Card>
          <PromptPanel workspaceId={w.id} status={w.status} onStatus={(s) => setStatus(s)} />
        </div>
        <div className="flex min-w-0 flex-col gap-4">
          <Card title="Details">
            <dl className="divide-y divide-border">
              <Row label="Environment">{w.environment_id ? <EnvironmentName id={w.environment_id} /> : "none"}</Row>
              <Row label="Assistant">{w.ai_assistant}</Row>
              <Row label="Working dir">
                <span className="font-mono text-xs">{w.working_directory}</span>
              </Row>
              <Row label="Tools">{w.tools.length ? w.tools.join(", ") : "—"}</Row>
              <Row label="Sandbox">
                {w.vm_id ? (
                  <Link href={`/sandboxes/detail/?id=${encodeURIComponent(w.vm_id)}`} className="font-mono text-xs text-primary hover:underline">
                    {w.vm_id}
                  </Link>
                ) : (
                  "—"
                )}
              </Row>
              <Row label="Worker">{w.worker_id ?? "—"}</Row>
              <Row label="Idle timeout">{idleLabel(w.idle_timeout_seconds)}</Row>
              <Row label="Created">
                <span title={fullTime(w.created_at)}>{timeAgo(w.created_at)}</span>
              </Row>
              <Row label="Ready">
                <span title={fullTime(w.ready_at)}>{w.ready_at ? timeAgo(w.ready_at) : "—"}</span>
              </Row>
              <Row label="Last activity">
                <span title={fullTime(w.last_activity_at)}>{timeAgo(w.last_activity_at)}</span>
              </Row>
            </dl>
          </Card>
          {can("operator") && (
            <Card title="Workspace secrets">
              <p className="mb-3 text-xs text-muted-fg">
                Secrets are handed to the agent while the workspace is prepared: one added afterwards is stored and redacted from output, but may not reach the running agent.
              </p>
              <SecretsPanel basePath={`/workspaces/${encodeURIComponent(w.id)}/secrets`} emptyHint="This workspace has no secrets of its own; global secrets still reach it." />
            </Card>
          )}
        </div>
      </div>
      <ConfirmDialog
        open={confirm}
        title="Delete workspace"
        message={
          <>
            Delete <strong>{w.name}</strong>? Its sandbox, its secrets, its prompts and their output are removed. This cannot be undone.
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

export default function WorkspaceDetailPage() {
  const id = useIdParam();
  if (!id) return <EmptyState title="No workspace selected" action={<Link href="/workspaces/" className="text-primary underline">All workspaces</Link>} />;
  return <WorkspaceDetail key={id} id={id} />;
}
