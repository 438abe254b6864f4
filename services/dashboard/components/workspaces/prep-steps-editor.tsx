"use client";

// The preparation steps of a new workspace: run in order as the agent user after the
// tools are installed. Each type has its own config (see PrepStep in the API):
// git_clone {url, branch?, directory?, ssh_key_secret?}, script {script,
// timeout_seconds?}, env_var {name, value}.

import type { PrepStep, PrepStepType } from "@/lib/types";
import { Button, Field, Input, Select, Textarea } from "@/components/ui";

export interface StepDraft {
  key: number;
  type: PrepStepType;
  url: string;
  branch: string;
  directory: string;
  ssh_key_secret: string;
  script: string;
  timeout_seconds: string;
  name: string;
  value: string;
}

let nextKey = 1;

export function newStep(type: PrepStepType = "script"): StepDraft {
  return { key: nextKey++, type, url: "", branch: "", directory: "", ssh_key_secret: "", script: "", timeout_seconds: "", name: "", value: "" };
}

const TYPE_LABEL: Record<PrepStepType, string> = {
  git_clone: "Git clone",
  script: "Script",
  env_var: "Environment variable",
};

/** The API's steps; optional fields left out when empty. Order is the list's. */
export function toPrepSteps(drafts: StepDraft[]): PrepStep[] {
  return drafts.map((d, order) => {
    const config: Record<string, unknown> = {};
    const opt = (k: string, v: string) => {
      if (v.trim()) config[k] = v.trim();
    };
    if (d.type === "git_clone") {
      config.url = d.url.trim();
      opt("branch", d.branch);
      opt("directory", d.directory);
      opt("ssh_key_secret", d.ssh_key_secret);
    } else if (d.type === "script") {
      config.script = d.script;
      if (d.timeout_seconds.trim()) config.timeout_seconds = Number(d.timeout_seconds);
    } else {
      config.name = d.name.trim();
      config.value = d.value;
    }
    return { type: d.type, order, config: config as PrepStep["config"] };
  });
}

/** A one-line summary of a step, for the review. */
export function describeStep(d: StepDraft): string {
  if (d.type === "git_clone") return `git clone ${d.url}${d.branch ? ` (${d.branch})` : ""}${d.directory ? ` → ${d.directory}` : ""}`;
  if (d.type === "script") return d.script.split("\n")[0] + (d.script.includes("\n") ? " …" : "");
  return `${d.name}=${d.value}`;
}

export function PrepStepsEditor({ steps, onChange }: { steps: StepDraft[]; onChange: (steps: StepDraft[]) => void }) {
  const update = (key: number, patch: Partial<StepDraft>) => onChange(steps.map((s) => (s.key === key ? { ...s, ...patch } : s)));
  const move = (index: number, by: number) => {
    const next = [...steps];
    const [item] = next.splice(index, 1);
    next.splice(index + by, 0, item);
    onChange(next);
  };
  return (
    <div className="flex flex-col gap-3">
      {steps.length === 0 && <p className="text-sm text-muted-fg">No extra steps. The environment&apos;s repository (if any) is cloned first anyway.</p>}
      {steps.map((s, i) => (
        <fieldset key={s.key} className="flex flex-col gap-3 rounded-md border border-border p-3" aria-label={`Step ${i + 1}`}>
          <div className="flex flex-wrap items-end justify-between gap-2">
            <div className="flex items-end gap-2">
              <span className="pb-2 text-sm font-medium">{i + 1}.</span>
              <Field label="Type">
                {(id) => (
                  <Select id={id} className="w-48" value={s.type} onChange={(e) => update(s.key, { type: e.target.value as PrepStepType })}>
                    {(Object.keys(TYPE_LABEL) as PrepStepType[]).map((t) => (
                      <option key={t} value={t}>
                        {TYPE_LABEL[t]}
                      </option>
                    ))}
                  </Select>
                )}
              </Field>
            </div>
            <div className="flex gap-1">
              <Button type="button" size="sm" variant="ghost" disabled={i === 0} onClick={() => move(i, -1)} aria-label={`Move step ${i + 1} up`}>
                ↑
              </Button>
              <Button type="button" size="sm" variant="ghost" disabled={i === steps.length - 1} onClick={() => move(i, 1)} aria-label={`Move step ${i + 1} down`}>
                ↓
              </Button>
              <Button type="button" size="sm" variant="ghost" onClick={() => onChange(steps.filter((x) => x.key !== s.key))} aria-label={`Remove step ${i + 1}`}>
                Remove
              </Button>
            </div>
          </div>
          {s.type === "git_clone" && (
            <div className="grid gap-3 sm:grid-cols-2">
              <Field label="Repository URL">{(id) => <Input id={id} value={s.url} onChange={(e) => update(s.key, { url: e.target.value })} placeholder="https://git.example.com/acme/lib.git" />}</Field>
              <Field label="Branch (optional)">{(id) => <Input id={id} value={s.branch} onChange={(e) => update(s.key, { branch: e.target.value })} placeholder="main" />}</Field>
              <Field label="Directory (optional)" hint="Relative to the working directory; default the repository's name.">
                {(id) => <Input id={id} value={s.directory} onChange={(e) => update(s.key, { directory: e.target.value })} />}
              </Field>
              <Field label="SSH key secret (optional)" hint="Name of an ssh_key secret, for ssh:// or git@ URLs.">
                {(id) => <Input id={id} value={s.ssh_key_secret} onChange={(e) => update(s.key, { ssh_key_secret: e.target.value })} />}
              </Field>
            </div>
          )}
          {s.type === "script" && (
            <div className="grid gap-3 sm:grid-cols-[1fr_10rem]">
              <Field label="Script" hint="Run by sh in the working directory.">
                {(id) => <Textarea id={id} rows={3} value={s.script} onChange={(e) => update(s.key, { script: e.target.value })} placeholder="npm ci" />}
              </Field>
              <Field label="Timeout (s, optional)">{(id) => <Input id={id} inputMode="numeric" value={s.timeout_seconds} onChange={(e) => update(s.key, { timeout_seconds: e.target.value })} />}</Field>
            </div>
          )}
          {s.type === "env_var" && (
            <div className="grid gap-3 sm:grid-cols-2">
              <Field label="Name">{(id) => <Input id={id} value={s.name} onChange={(e) => update(s.key, { name: e.target.value })} placeholder="NODE_ENV" />}</Field>
              <Field label="Value" hint="Stored in clear: use a secret for credentials.">
                {(id) => <Input id={id} value={s.value} onChange={(e) => update(s.key, { value: e.target.value })} />}
              </Field>
            </div>
          )}
        </fieldset>
      ))}
      <div>
        <Button type="button" size="sm" onClick={() => onChange([...steps, newStep()])}>
          Add step
        </Button>
      </div>
    </div>
  );
}
