"use client";

import { useState } from "react";
import { errorMessage } from "@/lib/api";
import { useSession } from "@/lib/session";
import { useResource } from "@/lib/hooks";
import { fullTime, timeAgo } from "@/lib/format";
import type { ApiKey, ApiKeyList } from "@/lib/types";
import { Badge, Button, ConfirmDialog, EmptyState, ErrorBanner, Loading, PageHeader, StatusBadge, Table, Td } from "@/components/ui";
import { RequireAdmin } from "@/components/admin/require-admin";
import { CreateApiKeyDialog } from "@/components/admin/create-api-key-dialog";

function When({ iso, never = "—" }: { iso: string | null | undefined; never?: string }) {
  if (!iso) return <span className="text-muted-fg">{never}</span>;
  const future = Date.parse(iso) > Date.now();
  return <span title={fullTime(iso)}>{future ? `on ${new Date(iso).toLocaleDateString()}` : timeAgo(iso)}</span>;
}

function ApiKeys() {
  const { api } = useSession();
  const keys = useResource((a, signal) => a.get<ApiKeyList>("/api-keys", undefined, signal), []);
  const [creating, setCreating] = useState(false);
  const [toRevoke, setToRevoke] = useState<ApiKey | null>(null);
  const [revoking, setRevoking] = useState(false);
  const [revokeError, setRevokeError] = useState<string | null>(null);

  const revoke = async () => {
    if (!toRevoke) return;
    setRevoking(true);
    setRevokeError(null);
    try {
      await api.post(`/api-keys/${encodeURIComponent(toRevoke.id)}/revoke`);
      setToRevoke(null);
      keys.reload();
    } catch (e) {
      setRevokeError(errorMessage(e));
    } finally {
      setRevoking(false);
    }
  };

  const rows = keys.data?.api_keys ?? [];
  return (
    <div>
      <PageHeader
        title="API keys"
        subtitle="Keys for scripts, CI and the CLI. A key is shown once when created; revoked keys stay listed for the audit log."
        actions={
          <Button variant="primary" onClick={() => setCreating(true)}>
            Create API key
          </Button>
        }
      />
      <ErrorBanner error={keys.error} onRetry={keys.reload} />
      {keys.loading && !keys.data ? (
        <Loading />
      ) : rows.length === 0 && !keys.error ? (
        <EmptyState title="No API keys" hint="Create one for a script or CI job; give it the lowest role that does the job." />
      ) : (
        <Table head={["Name", "Prefix", "Role", "Created", "Expires", "Last used", "Rate limit", "Status", ""]} label="API keys">
          {rows.map((k) => {
            const expired = k.expires_at ? Date.parse(k.expires_at) < Date.now() : false;
            return (
              <tr key={k.id} data-testid="api-key-row" className={k.revoked_at ? "opacity-60" : undefined}>
                <Td className="whitespace-nowrap font-medium">{k.name}</Td>
                <Td className="whitespace-nowrap font-mono text-xs">{k.prefix}…</Td>
                <Td>
                  <Badge>{k.role}</Badge>
                </Td>
                <Td>
                  <span title={fullTime(k.created_at)}>{timeAgo(k.created_at)}</span>
                  <div className="text-xs text-muted-fg">by {k.created_by}</div>
                </Td>
                <Td>
                  <When iso={k.expires_at} never="never" />
                </Td>
                <Td>
                  <When iso={k.last_used_at} never="never" />
                </Td>
                <Td>{k.rate_limit_per_second ? `${k.rate_limit_per_second}/s` : "default"}</Td>
                <Td>
                  {k.revoked_at ? (
                    <span title={fullTime(k.revoked_at)}>
                      <StatusBadge status="revoked" />
                    </span>
                  ) : expired ? (
                    <StatusBadge status="expired" />
                  ) : (
                    <StatusBadge status="active" />
                  )}
                </Td>
                <Td className="text-right">
                  {!k.revoked_at && (
                    <Button size="sm" variant="ghost" onClick={() => setToRevoke(k)} aria-label={`Revoke ${k.name}`}>
                      Revoke
                    </Button>
                  )}
                </Td>
              </tr>
            );
          })}
        </Table>
      )}
      <CreateApiKeyDialog open={creating} onClose={() => setCreating(false)} onCreated={keys.reload} />
      <ConfirmDialog
        open={toRevoke !== null}
        title="Revoke API key"
        confirmLabel="Revoke"
        message={
          <>
            Revoke <strong>{toRevoke?.name}</strong> ({toRevoke?.prefix}…)? Requests with it fail from the next one on. This cannot be undone.
          </>
        }
        busy={revoking}
        error={revokeError}
        onConfirm={() => void revoke()}
        onClose={() => {
          setToRevoke(null);
          setRevokeError(null);
        }}
      />
    </div>
  );
}

export default function ApiKeysPage() {
  return (
    <RequireAdmin what="Managing API keys">
      <ApiKeys />
    </RequireAdmin>
  );
}
