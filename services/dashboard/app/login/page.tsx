"use client";

import { useRouter, useSearchParams } from "next/navigation";
import { useEffect, useState } from "react";
import { errorMessage } from "@/lib/api";
import { useSession } from "@/lib/session";
import { ThemeToggle } from "@/components/shell";
import { Button, ErrorBanner, Field, Input, cx } from "@/components/ui";

/** Only a path on this site: never send the browser elsewhere after login. */
function safeNext(next: string | null): string {
  return next && next.startsWith("/") && !next.startsWith("//") ? next : "/";
}

export default function LoginPage() {
  const { session, loginWithPassword, loginWithKey, endedReason } = useSession();
  const router = useRouter();
  const params = useSearchParams();
  const next = safeNext(params.get("next"));
  const [mode, setMode] = useState<"password" | "key">("password");
  const [username, setUsername] = useState("");
  const [password, setPassword] = useState("");
  const [apiKey, setApiKey] = useState("");
  const [gateway, setGateway] = useState("");
  const [showGateway, setShowGateway] = useState(false);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);

  useEffect(() => {
    if (session) router.replace(next);
  }, [session, next, router]);

  const submit = async (e: React.FormEvent) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      if (mode === "password") await loginWithPassword(gateway, username, password);
      else await loginWithKey(gateway, apiKey);
    } catch (err) {
      setError(errorMessage(err));
    } finally {
      setBusy(false);
    }
  };

  return (
    <div className="flex min-h-screen items-center justify-center p-4">
      <div className="w-full max-w-sm">
        <div className="mb-4 flex items-center justify-between">
          <h1 className="text-2xl font-semibold">Aetherium</h1>
          <ThemeToggle />
        </div>
        <form onSubmit={submit} className="flex flex-col gap-3 rounded-lg border border-border bg-card p-5 shadow-sm" aria-label="Log in">
          <div role="tablist" className="grid grid-cols-2 gap-1 rounded-md bg-muted p-1 text-sm">
            {(["password", "key"] as const).map((m) => (
              <button
                key={m}
                type="button"
                role="tab"
                aria-selected={mode === m}
                onClick={() => setMode(m)}
                className={cx("rounded px-2 py-1", mode === m ? "bg-card font-medium shadow-sm" : "text-muted-fg")}
              >
                {m === "password" ? "User account" : "API key"}
              </button>
            ))}
          </div>
          {endedReason && !error && <p className="text-sm text-muted-fg">{endedReason}</p>}
          <ErrorBanner error={error} />
          {mode === "password" ? (
            <>
              <Field label="Username">{(id) => <Input id={id} name="username" autoComplete="username" value={username} onChange={(e) => setUsername(e.target.value)} required autoFocus />}</Field>
              <Field label="Password">{(id) => <Input id={id} name="password" type="password" autoComplete="current-password" value={password} onChange={(e) => setPassword(e.target.value)} required />}</Field>
            </>
          ) : (
            <Field label="API key" hint="An ak_… key; `aetherium apikey create` makes one.">
              {(id) => <Input id={id} name="api_key" type="password" autoComplete="off" value={apiKey} onChange={(e) => setApiKey(e.target.value)} required autoFocus />}
            </Field>
          )}
          {showGateway ? (
            <Field label="Gateway URL" hint="Empty: the server that served this page.">
              {(id) => <Input id={id} name="gateway" placeholder="https://aetherium.example.com" value={gateway} onChange={(e) => setGateway(e.target.value)} />}
            </Field>
          ) : (
            <button type="button" className="self-start text-xs text-muted-fg underline" onClick={() => setShowGateway(true)}>
              Another gateway…
            </button>
          )}
          <Button type="submit" variant="primary" busy={busy}>
            Log in
          </Button>
        </form>
      </div>
    </div>
  );
}
