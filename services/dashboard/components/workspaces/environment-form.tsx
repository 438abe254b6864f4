"use client";

// The create/edit form of an environment. Free-text fields (tools, env vars, MCP
// servers) are parsed here so a typo is caught before the request; everything else
// is checked by the gateway, whose 400 message is shown under the field it names
// while the form keeps what was typed.

import { useState } from "react";
import { ApiError, errorMessage } from "@/lib/api";
import type { CreateEnvironmentRequest, Environment, McpServer, UpdateEnvironmentRequest } from "@/lib/types";
import { Button, ErrorBanner, Field, Input, Textarea } from "@/components/ui";
import { fieldOfMessage, formatKeyValues, idleLabel, parseKeyValues, parseLines } from "./form-utils";

type FieldName =
  | "name"
  | "description"
  | "image"
  | "vcpus"
  | "memory_mb"
  | "git_repo_url"
  | "git_branch"
  | "tools"
  | "env_vars"
  | "working_directory"
  | "idle_timeout_seconds"
  | "mcp_servers";

// Order matters: "mcp server \"x\": …" also contains "name"-like words.
const FIELD_PATTERNS: [RegExp, FieldName][] = [
  [/mcp server/i, "mcp_servers"],
  [/git_repo_url/i, "git_repo_url"],
  [/git_branch/i, "git_branch"],
  [/working_directory/i, "working_directory"],
  [/idle_timeout/i, "idle_timeout_seconds"],
  [/memory_mb/i, "memory_mb"],
  [/vcpus/i, "vcpus"],
  [/environment variable/i, "env_vars"],
  [/\btools?\b/i, "tools"],
  [/\bimage\b/i, "image"],
  [/description/i, "description"],
  [/\bname\b|already exists|is taken/i, "name"],
];

interface Values {
  name: string;
  description: string;
  image: string;
  vcpus: string;
  memory_mb: string;
  git_repo_url: string;
  git_branch: string;
  tools: string;
  env_vars: string;
  working_directory: string;
  idle_timeout_seconds: string;
  mcp_servers: string;
}

function initialValues(env?: Environment): Values {
  return {
    name: env?.name ?? "",
    description: env?.description ?? "",
    image: env?.image ?? "",
    vcpus: env ? String(env.vcpus) : "",
    memory_mb: env ? String(env.memory_mb) : "",
    git_repo_url: env?.git_repo_url ?? "",
    git_branch: env?.git_branch ?? "",
    tools: (env?.tools ?? []).join("\n"),
    env_vars: formatKeyValues(env?.env_vars),
    working_directory: env?.working_directory ?? "",
    idle_timeout_seconds: env ? String(env.idle_timeout_seconds) : "",
    mcp_servers: env?.mcp_servers?.length ? JSON.stringify(env.mcp_servers, null, 2) : "",
  };
}

type Parsed = { ok: true; body: CreateEnvironmentRequest } | { ok: false; field: FieldName; message: string };

function optionalInt(text: string, field: FieldName): number | undefined {
  const t = text.trim();
  if (!t) return undefined;
  const n = Number(t);
  if (!Number.isInteger(n)) throw Object.assign(new Error(`${field} must be a whole number`), { field });
  return n;
}

function parse(values: Values): Parsed {
  let env_vars: Record<string, string>;
  try {
    env_vars = parseKeyValues(values.env_vars);
  } catch (e) {
    return { ok: false, field: "env_vars", message: `Environment variables: ${(e as Error).message}` };
  }
  let mcp_servers: McpServer[] = [];
  if (values.mcp_servers.trim()) {
    try {
      const parsed: unknown = JSON.parse(values.mcp_servers);
      if (!Array.isArray(parsed)) throw new Error("expected a JSON array of servers");
      mcp_servers = parsed as McpServer[];
    } catch (e) {
      return { ok: false, field: "mcp_servers", message: `MCP servers: ${(e as Error).message}` };
    }
  }
  try {
    const body: CreateEnvironmentRequest = {
      name: values.name.trim(),
      description: values.description,
      image: values.image.trim() || null,
      git_repo_url: values.git_repo_url.trim() || null,
      git_branch: values.git_branch.trim() || null,
      tools: parseLines(values.tools),
      env_vars,
      mcp_servers,
      vcpus: optionalInt(values.vcpus, "vcpus"),
      memory_mb: optionalInt(values.memory_mb, "memory_mb"),
      idle_timeout_seconds: optionalInt(values.idle_timeout_seconds, "idle_timeout_seconds"),
    };
    if (values.working_directory.trim()) body.working_directory = values.working_directory.trim();
    // Absent numbers take the gateway's defaults.
    for (const key of ["vcpus", "memory_mb", "idle_timeout_seconds"] as const) {
      if (body[key] === undefined) delete body[key];
    }
    return { ok: true, body };
  } catch (e) {
    return { ok: false, field: (e as { field: FieldName }).field, message: (e as Error).message };
  }
}

/** The PUT body: every field, with "" clearing image, repository and branch. */
function toUpdate(body: CreateEnvironmentRequest): UpdateEnvironmentRequest {
  return {
    ...body,
    image: body.image ?? "",
    git_repo_url: body.git_repo_url ?? "",
    git_branch: body.git_branch ?? "",
  };
}

export function EnvironmentForm({
  environment,
  submitLabel,
  onSubmit,
  onCancel,
}: {
  /** Editing this one; absent: creating. */
  environment?: Environment;
  submitLabel: string;
  /** Sends the request; throws the API's error. */
  onSubmit: (body: CreateEnvironmentRequest | UpdateEnvironmentRequest) => Promise<void>;
  onCancel?: () => void;
}) {
  const [values, setValues] = useState<Values>(() => initialValues(environment));
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const [fieldError, setFieldError] = useState<{ field: FieldName; message: string } | null>(null);

  const set = (key: keyof Values) => (e: React.ChangeEvent<HTMLInputElement | HTMLTextAreaElement>) => {
    const value = e.target.value;
    setValues((v) => ({ ...v, [key]: value }));
  };
  const errorFor = (field: FieldName) => (fieldError?.field === field ? fieldError.message : null);

  const submit = async (e: React.FormEvent) => {
    e.preventDefault();
    setError(null);
    setFieldError(null);
    const parsed = parse(values);
    if (!parsed.ok) {
      setFieldError({ field: parsed.field, message: parsed.message });
      setError(parsed.message);
      return;
    }
    setBusy(true);
    try {
      await onSubmit(environment ? toUpdate(parsed.body) : parsed.body);
    } catch (err) {
      const message = errorMessage(err);
      setError(message);
      if (err instanceof ApiError && (err.status === 400 || err.status === 409)) {
        const field = fieldOfMessage(err.message, FIELD_PATTERNS);
        if (field) setFieldError({ field, message: err.message });
      }
    } finally {
      setBusy(false);
    }
  };

  const idle = values.idle_timeout_seconds.trim();
  return (
    <form onSubmit={submit} className="flex flex-col gap-4" aria-label={environment ? "Edit environment" : "Create environment"} noValidate>
      <ErrorBanner error={error} onDismiss={() => setError(null)} />
      <div className="grid gap-4 md:grid-cols-2">
        <Field label="Name" hint="Letters, digits, '-', '_' and '.'; unique." error={errorFor("name")}>
          {(id) => <Input id={id} name="name" value={values.name} onChange={set("name")} required placeholder="node-app" autoComplete="off" />}
        </Field>
        <Field label="Image" hint="Sandbox image; empty: the gateway's default." error={errorFor("image")}>
          {(id) => <Input id={id} name="image" value={values.image} onChange={set("image")} placeholder="ubuntu:24.04" autoComplete="off" />}
        </Field>
      </div>
      <Field label="Description" error={errorFor("description")}>
        {(id) => <Input id={id} name="description" value={values.description} onChange={set("description")} placeholder="What this environment is for" />}
      </Field>
      <div className="grid gap-4 md:grid-cols-2">
        <Field label="Git repository URL" hint="https://, ssh://, file:// or git@host:path — no credentials; use an ssh_key or token secret." error={errorFor("git_repo_url")}>
          {(id) => <Input id={id} name="git_repo_url" value={values.git_repo_url} onChange={set("git_repo_url")} placeholder="https://git.example.com/acme/app.git" autoComplete="off" />}
        </Field>
        <Field label="Branch" hint="Empty: the repository's default branch." error={errorFor("git_branch")}>
          {(id) => <Input id={id} name="git_branch" value={values.git_branch} onChange={set("git_branch")} placeholder="main" autoComplete="off" />}
        </Field>
      </div>
      <div className="grid gap-4 md:grid-cols-2">
        <Field label="Tools" hint="One per line: name or name@version, e.g. nodejs@20." error={errorFor("tools")}>
          {(id) => <Textarea id={id} name="tools" rows={4} value={values.tools} onChange={set("tools")} placeholder={"git\nnodejs@20"} />}
        </Field>
        <Field label="Environment variables" hint="KEY=VALUE, one per line. Stored in clear: put credentials in secrets." error={errorFor("env_vars")}>
          {(id) => <Textarea id={id} name="env_vars" rows={4} value={values.env_vars} onChange={set("env_vars")} placeholder={"NODE_ENV=development"} />}
        </Field>
      </div>
      <div className="grid gap-4 sm:grid-cols-2 lg:grid-cols-4">
        <Field label="Working directory" hint="Absolute; default /workspace." error={errorFor("working_directory")}>
          {(id) => <Input id={id} name="working_directory" value={values.working_directory} onChange={set("working_directory")} placeholder="/workspace" />}
        </Field>
        <Field
          label="Idle timeout (seconds)"
          hint={idle ? `= ${idleLabel(Number(idle))}; 0 never, else 60–604800.` : "Default 1800 (30 min); 0 never."}
          error={errorFor("idle_timeout_seconds")}
        >
          {(id) => <Input id={id} name="idle_timeout_seconds" inputMode="numeric" value={values.idle_timeout_seconds} onChange={set("idle_timeout_seconds")} placeholder="1800" />}
        </Field>
        <Field label="vCPUs" hint="1–64; default 1." error={errorFor("vcpus")}>
          {(id) => <Input id={id} name="vcpus" inputMode="numeric" value={values.vcpus} onChange={set("vcpus")} placeholder="1" />}
        </Field>
        <Field label="Memory (MiB)" hint="128–1048576." error={errorFor("memory_mb")}>
          {(id) => <Input id={id} name="memory_mb" inputMode="numeric" value={values.memory_mb} onChange={set("memory_mb")} placeholder="256" />}
        </Field>
      </div>
      <Field
        label="MCP servers (optional, JSON)"
        hint={'A JSON array: [{"name":"fs","type":"stdio","command":"mcp-fs","args":[]}] or {"name":"x","type":"http","url":"https://…"}. Headers and env are stored in clear.'}
        error={errorFor("mcp_servers")}
      >
        {(id) => <Textarea id={id} name="mcp_servers" rows={4} value={values.mcp_servers} onChange={set("mcp_servers")} placeholder="[]" />}
      </Field>
      <div className="flex flex-wrap justify-end gap-2">
        {onCancel && (
          <Button type="button" onClick={onCancel}>
            Cancel
          </Button>
        )}
        <Button type="submit" variant="primary" busy={busy}>
          {submitLabel}
        </Button>
      </div>
    </form>
  );
}
