"use client";

// Secrets of one scope: the global ones (`/secrets`) or a workspace's own
// (`/workspaces/{id}/secrets`). Values are write-only: they are typed into a
// password field, sent once in the POST body and dropped from memory right after;
// the API never returns them and this panel never shows one.

import { useState } from "react";
import { ApiError, errorMessage } from "@/lib/api";
import { useSession } from "@/lib/session";
import { useResource } from "@/lib/hooks";
import { fullTime, timeAgo } from "@/lib/format";
import type { AddSecretRequest, Secret, SecretList, SecretType } from "@/lib/types";
import { Badge, Button, ConfirmDialog, EmptyState, ErrorBanner, Field, Input, Loading, Select, Table, Td } from "@/components/ui";

export const SECRET_TYPES: SecretType[] = ["api_key", "token", "password", "ssh_key", "other"];

/** The 503 of a gateway without an encryption key, said plainly. */
function explain(e: unknown): string {
  if (e instanceof ApiError && e.status === 503) {
    return `Secrets are unavailable on this gateway: ${e.message}`;
  }
  return errorMessage(e);
}

export function SecretsPanel({ basePath, emptyHint }: { basePath: string; emptyHint: string }) {
  const { api, can } = useSession();
  const list = useResource((a, signal) => a.get<SecretList>(basePath, undefined, signal).catch((e: unknown) => Promise.reject(new Error(explain(e)))), [basePath]);
  const [name, setName] = useState("");
  const [type, setType] = useState<SecretType>("api_key");
  const [description, setDescription] = useState("");
  const [value, setValue] = useState("");
  const [adding, setAdding] = useState(false);
  const [addError, setAddError] = useState<string | null>(null);
  const [added, setAdded] = useState<string | null>(null);
  const [toDelete, setToDelete] = useState<Secret | null>(null);
  const [deleting, setDeleting] = useState(false);
  const [deleteError, setDeleteError] = useState<string | null>(null);

  const add = async (e: React.FormEvent) => {
    e.preventDefault();
    setAddError(null);
    setAdded(null);
    if (!value) {
      setAddError("Enter the secret's value.");
      return;
    }
    setAdding(true);
    try {
      const body: AddSecretRequest = { name: name.trim(), value, type };
      if (description.trim()) body.description = description.trim();
      const secret = await api.post<Secret>(basePath, body);
      // The value is gone from the page now: it cannot be read back.
      setValue("");
      setName("");
      setDescription("");
      setAdded(`Saved ${secret.name}. Its value is stored encrypted and will not be shown again.`);
      list.reload();
    } catch (err) {
      setAddError(explain(err));
    } finally {
      setAdding(false);
    }
  };

  const remove = async () => {
    if (!toDelete) return;
    setDeleting(true);
    setDeleteError(null);
    try {
      await api.delete(`${basePath}/${encodeURIComponent(toDelete.id)}`);
      setToDelete(null);
      list.reload();
    } catch (err) {
      setDeleteError(explain(err));
    } finally {
      setDeleting(false);
    }
  };

  const secrets = list.data?.secrets ?? [];
  return (
    <div className="flex flex-col gap-4">
      <ErrorBanner error={list.error} onRetry={list.reload} />
      {list.loading && !list.data ? (
        <Loading />
      ) : secrets.length === 0 && !list.error ? (
        <EmptyState title="No secrets" hint={emptyHint} />
      ) : (
        secrets.length > 0 && (
          <Table head={["Name", "Type", "Description", "Created", "Updated", ""]} label="Secrets">
            {secrets.map((s) => (
              <tr key={s.id}>
                <Td className="font-mono text-xs font-medium">{s.name}</Td>
                <Td>
                  <Badge>{s.type}</Badge>
                </Td>
                <Td className="max-w-xs truncate text-muted-fg">{s.description || "—"}</Td>
                <Td title={fullTime(s.created_at)}>{timeAgo(s.created_at)}</Td>
                <Td title={fullTime(s.updated_at)}>{timeAgo(s.updated_at)}</Td>
                <Td className="text-right">
                  {can("operator") && (
                    <Button size="sm" variant="ghost" onClick={() => setToDelete(s)} aria-label={`Delete secret ${s.name}`}>
                      Delete
                    </Button>
                  )}
                </Td>
              </tr>
            ))}
          </Table>
        )
      )}
      {can("operator") && (
        <form onSubmit={add} className="flex flex-col gap-3 rounded-lg border border-border p-3" aria-label="Add secret" autoComplete="off">
          <h3 className="text-sm font-semibold">Add a secret</h3>
          <p className="text-xs text-muted-fg">
            The name is the environment variable the agent sees. Adding a name that exists replaces its value. Values are write-only: they are never shown again.
          </p>
          <ErrorBanner error={addError} onDismiss={() => setAddError(null)} />
          {added && (
            <p role="status" className="text-sm text-green-700 dark:text-green-400">
              {added}
            </p>
          )}
          <div className="grid gap-3 sm:grid-cols-2">
            <Field label="Name">
              {(id) => <Input id={id} name="secret_name" value={name} onChange={(e) => setName(e.target.value)} required placeholder="ANTHROPIC_API_KEY" autoComplete="off" />}
            </Field>
            <Field label="Type">
              {(id) => (
                <Select id={id} name="secret_type" value={type} onChange={(e) => setType(e.target.value as SecretType)}>
                  {SECRET_TYPES.map((t) => (
                    <option key={t} value={t}>
                      {t}
                    </option>
                  ))}
                </Select>
              )}
            </Field>
            <Field label="Value">
              {(id) => <Input id={id} name="secret_value" type="password" value={value} onChange={(e) => setValue(e.target.value)} required autoComplete="new-password" />}
            </Field>
            <Field label="Description (optional)">
              {(id) => <Input id={id} name="secret_description" value={description} onChange={(e) => setDescription(e.target.value)} />}
            </Field>
          </div>
          <div>
            <Button type="submit" variant="primary" busy={adding}>
              Add secret
            </Button>
          </div>
        </form>
      )}
      <ConfirmDialog
        open={toDelete !== null}
        title="Delete secret"
        message={
          <>
            Delete <strong className="font-mono">{toDelete?.name}</strong>? Workspaces that use it lose the variable the next time they start; its value cannot be recovered.
          </>
        }
        busy={deleting}
        error={deleteError}
        onConfirm={() => void remove()}
        onClose={() => {
          setToDelete(null);
          setDeleteError(null);
        }}
      />
    </div>
  );
}
