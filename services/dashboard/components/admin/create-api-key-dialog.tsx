"use client";

// Creating an API key: the form, then the key itself — shown this once (the gateway
// keeps only its hash). Closing the dialog forgets it.

import { useState } from "react";
import { errorMessage } from "@/lib/api";
import { useSession } from "@/lib/session";
import type { CreateApiKeyRequest, CreateApiKeyResponse, Role } from "@/lib/types";
import { Button, Dialog, ErrorBanner, Field, Input, Select } from "@/components/ui";

const ROLES: Role[] = ["viewer", "operator", "admin"];

export function CreateApiKeyDialog({ open, onClose, onCreated }: { open: boolean; onClose: () => void; onCreated: () => void }) {
  const { api } = useSession();
  const [name, setName] = useState("");
  const [role, setRole] = useState<Role>("operator");
  const [days, setDays] = useState("");
  const [rate, setRate] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const [created, setCreated] = useState<CreateApiKeyResponse | null>(null);
  const [copied, setCopied] = useState(false);

  const close = () => {
    // The key leaves memory with the dialog: it cannot be shown again.
    setCreated(null);
    setCopied(false);
    setName("");
    setDays("");
    setRate("");
    setError(null);
    onClose();
  };

  const submit = async (e: React.FormEvent) => {
    e.preventDefault();
    setError(null);
    const body: CreateApiKeyRequest = { name: name.trim(), role };
    if (days.trim()) {
      const d = Number(days);
      if (!Number.isFinite(d) || d <= 0) {
        setError("Expires in: a number of days greater than 0, or empty for a key that does not expire.");
        return;
      }
      body.expires_in_seconds = Math.round(d * 86400);
    }
    if (rate.trim()) {
      const r = Number(rate);
      if (!Number.isInteger(r) || r < 1) {
        setError("Rate limit: a whole number of requests per second (1 or more), or empty for the server's default.");
        return;
      }
      body.rate_limit_per_second = r;
    }
    setBusy(true);
    try {
      setCreated(await api.post<CreateApiKeyResponse>("/api-keys", body));
      onCreated();
    } catch (err) {
      setError(errorMessage(err));
    } finally {
      setBusy(false);
    }
  };

  const copy = async () => {
    if (!created) return;
    try {
      await navigator.clipboard.writeText(created.key);
      setCopied(true);
    } catch {
      setError("Copying failed: select the key and copy it by hand.");
    }
  };

  if (created) {
    return (
      <Dialog open={open} onClose={close} title="API key created" footer={<Button variant="primary" onClick={close}>I have stored the key</Button>}>
        <div className="flex flex-col gap-3">
          <div role="alert" className="rounded-md border border-amber-500/40 bg-amber-500/10 px-3 py-2 text-sm text-amber-800 dark:text-amber-300">
            Copy this key now. It is shown only this once: the gateway keeps its hash, and closing this dialog forgets it.
          </div>
          <ErrorBanner error={error} />
          <Field label={`Key "${created.api_key.name}" (${created.api_key.role})`}>
            {(id) => (
              <div className="flex gap-2">
                <Input id={id} data-testid="new-api-key" readOnly value={created.key} className="font-mono" onFocus={(e) => e.currentTarget.select()} />
                <Button onClick={() => void copy()}>{copied ? "Copied" : "Copy"}</Button>
              </div>
            )}
          </Field>
          <p className="text-xs text-muted-fg">Use it as `Authorization: Bearer &lt;key&gt;`, or paste it into the CLI's config or this dashboard's login.</p>
        </div>
      </Dialog>
    );
  }

  return (
    <Dialog
      open={open}
      onClose={close}
      title="Create API key"
      footer={
        <>
          <Button onClick={close}>Cancel</Button>
          <Button type="submit" form="create-api-key" variant="primary" busy={busy}>
            Create key
          </Button>
        </>
      }
    >
      <form id="create-api-key" onSubmit={submit} className="flex flex-col gap-3" autoComplete="off">
        <ErrorBanner error={error} />
        <Field label="Name" hint="1–64 of letters, digits, '.', '_', '@', '-'; e.g. ci-deploy.">
          {(id) => <Input id={id} name="name" value={name} onChange={(e) => setName(e.target.value)} required autoFocus />}
        </Field>
        <Field label="Role" hint="viewer reads; operator also creates and runs; admin also manages keys and users.">
          {(id) => (
            <Select id={id} name="role" value={role} onChange={(e) => setRole(e.target.value as Role)}>
              {ROLES.map((r) => (
                <option key={r} value={r}>
                  {r}
                </option>
              ))}
            </Select>
          )}
        </Field>
        <div className="grid gap-3 sm:grid-cols-2">
          <Field label="Expires in (days, optional)" hint="Empty: never expires.">
            {(id) => <Input id={id} name="expires_days" inputMode="decimal" value={days} onChange={(e) => setDays(e.target.value)} placeholder="90" />}
          </Field>
          <Field label="Rate limit (req/s, optional)" hint="Empty: the server's default.">
            {(id) => <Input id={id} name="rate_limit" inputMode="numeric" value={rate} onChange={(e) => setRate(e.target.value)} placeholder="50" />}
          </Field>
        </div>
      </form>
    </Dialog>
  );
}
