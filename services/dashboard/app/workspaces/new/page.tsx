"use client";

// Creating a workspace in three steps: the environment it starts from, its own
// settings (name, assistant, secrets, extra tools and prep steps), then a review.
// Secret values are typed into password fields, shown nowhere (the review lists
// names only) and sent once, in the POST body.

import Link from "next/link";
import { useRouter, useSearchParams } from "next/navigation";
import { useState } from "react";
import { errorMessage } from "@/lib/api";
import { useSession } from "@/lib/session";
import { useResource } from "@/lib/hooks";
import type { AiAssistant, CreateWorkspaceRequest, Environment, EnvironmentList, Workspace, WorkspaceSecretType } from "@/lib/types";
import { Button, Card, EmptyState, ErrorBanner, Field, Input, Loading, PageHeader, Select, Textarea, cx } from "@/components/ui";
import { idleLabel, parseLines } from "@/components/workspaces/form-utils";
import { PrepStepsEditor, describeStep, toPrepSteps, type StepDraft } from "@/components/workspaces/prep-steps-editor";
import { SECRET_TYPES } from "@/components/workspaces/secrets-panel";

const ASSISTANTS: AiAssistant[] = ["claude-code", "ampcode"];
const NAME_RE = /^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$/;
// A secret becomes an environment variable of the agent: its name must be one.
const SECRET_NAME_RE = /^[A-Za-z_][A-Za-z0-9_]{0,127}$/;

interface SecretDraft {
  key: number;
  name: string;
  type: WorkspaceSecretType;
  value: string;
}

let secretKey = 1;

function StepIndicator({ step }: { step: number }) {
  const labels = ["Environment", "Settings", "Review"];
  return (
    <ol className="mb-4 flex flex-wrap gap-2 text-sm" aria-label="Steps">
      {labels.map((label, i) => (
        <li
          key={label}
          aria-current={step === i + 1 ? "step" : undefined}
          className={cx("rounded-full border px-3 py-1", step === i + 1 ? "border-primary bg-primary text-primary-fg" : step > i + 1 ? "border-border bg-muted" : "border-border text-muted-fg")}
        >
          {i + 1}. {label}
        </li>
      ))}
    </ol>
  );
}

function Wizard() {
  const { api } = useSession();
  const router = useRouter();
  const params = useSearchParams();
  const envs = useResource((a, signal) => a.get<EnvironmentList>("/environments", { limit: 1000 }, signal), []);
  const [step, setStep] = useState(1);
  // "" is "no environment": a blank workspace with the gateway's defaults; null
  // (nothing picked yet) means the first environment, or the one in `?environment=`.
  const [picked, setEnvId] = useState<string | null>(params.get("environment"));
  const [name, setName] = useState("");
  const [description, setDescription] = useState("");
  const [assistant, setAssistant] = useState<AiAssistant>("claude-code");
  const [workingDir, setWorkingDir] = useState("");
  const [tools, setTools] = useState("");
  const [secrets, setSecrets] = useState<SecretDraft[]>([]);
  const [steps, setSteps] = useState<StepDraft[]>([]);
  const [problem, setProblem] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);

  const environments = envs.data?.environments ?? [];
  const envId = picked ?? environments[0]?.id ?? "";
  const env: Environment | undefined = environments.find((e) => e.id === envId);

  const updateSecret = (key: number, patch: Partial<SecretDraft>) => setSecrets((list) => list.map((s) => (s.key === key ? { ...s, ...patch } : s)));

  /** What is wrong with step 2, said before the gateway has to. */
  const check = (): string | null => {
    if (!NAME_RE.test(name.trim())) return "Name: 1–63 letters, digits, '-', '_' and '.', starting with a letter or digit.";
    if (workingDir.trim() && !workingDir.trim().startsWith("/")) return "Working directory must be an absolute path.";
    const names = new Set<string>();
    for (const s of secrets) {
      if (!SECRET_NAME_RE.test(s.name.trim())) return `Secret name "${s.name}" must be an environment variable name: letters, digits and '_', not starting with a digit.`;
      if (!s.value) return `Secret ${s.name}: enter its value.`;
      if (names.has(s.name.trim())) return `Secret ${s.name} is given twice.`;
      names.add(s.name.trim());
    }
    return null;
  };

  const request = (): CreateWorkspaceRequest => {
    const body: CreateWorkspaceRequest = { name: name.trim(), ai_assistant: assistant };
    if (envId) body.environment_id = envId;
    if (description.trim()) body.description = description.trim();
    // The environment's working directory applies unless one is given here.
    const dir = workingDir.trim() || env?.working_directory;
    if (dir) body.working_directory = dir;
    const extra = parseLines(tools);
    if (extra.length) body.additional_tools = extra;
    if (secrets.length) body.secrets = secrets.map((s) => ({ name: s.name.trim(), type: s.type, value: s.value }));
    if (steps.length) body.prep_steps = toPrepSteps(steps);
    return body;
  };

  const create = async () => {
    setBusy(true);
    setError(null);
    try {
      const ws = await api.post<Workspace>("/workspaces", request());
      setSecrets([]);
      router.push(`/workspaces/detail/?id=${encodeURIComponent(ws.id)}`);
    } catch (e) {
      setError(errorMessage(e));
    } finally {
      setBusy(false);
    }
  };

  return (
    <div>
      <PageHeader title="Create workspace" subtitle="A sandbox prepared for a coding agent." />
      <StepIndicator step={step} />
      {step === 1 && (
        <Card title="1. Pick an environment">
          <ErrorBanner error={envs.error} onRetry={envs.reload} />
          {envs.loading && !envs.data ? (
            <Loading />
          ) : (
            <div className="flex flex-col gap-2" role="radiogroup" aria-label="Environment">
              {environments.length === 0 && !envs.error && (
                <EmptyState
                  title="No environments yet"
                  hint="An environment says what the workspace starts with: image, repository, tools, variables. Create one first, or go on with a blank workspace."
                  action={
                    <Link href="/environments/new/" className="text-sm text-primary underline">
                      Create an environment
                    </Link>
                  }
                />
              )}
              {environments.map((e) => (
                <label key={e.id} className={cx("flex cursor-pointer items-start gap-3 rounded-md border p-3", envId === e.id ? "border-primary bg-muted" : "border-border hover:bg-muted/50")}>
                  <input type="radio" name="environment" value={e.id} checked={envId === e.id} onChange={() => setEnvId(e.id)} className="mt-1" />
                  <span className="min-w-0">
                    <span className="block font-medium">{e.name}</span>
                    {e.description && <span className="block text-sm text-muted-fg">{e.description}</span>}
                    <span className="block break-words text-xs text-muted-fg">
                      {[e.image || "default image", e.git_repo_url, e.tools.length ? e.tools.join(", ") : null, `idle ${idleLabel(e.idle_timeout_seconds)}`].filter(Boolean).join(" · ")}
                    </span>
                  </span>
                </label>
              ))}
              <label className={cx("flex cursor-pointer items-start gap-3 rounded-md border p-3", envId === "" ? "border-primary bg-muted" : "border-border hover:bg-muted/50")}>
                <input type="radio" name="environment" value="" checked={envId === ""} onChange={() => setEnvId("")} className="mt-1" />
                <span>
                  <span className="block font-medium">No environment</span>
                  <span className="block text-sm text-muted-fg">A blank workspace: the default image, no repository, only the tools and steps you add.</span>
                </span>
              </label>
              {environments.length > 0 && (
                <Link href="/environments/new/" className="self-start text-sm text-primary underline">
                  Or create a new environment
                </Link>
              )}
            </div>
          )}
          <div className="mt-4 flex justify-end">
            <Button variant="primary" onClick={() => setStep(2)} disabled={envs.loading && !envs.data}>
              Next
            </Button>
          </div>
        </Card>
      )}

      {step === 2 && (
        <Card title="2. Settings">
          <form
            className="flex flex-col gap-4"
            autoComplete="off"
            onSubmit={(e) => {
              e.preventDefault();
              const p = check();
              setProblem(p);
              if (!p) setStep(3);
            }}
          >
            <ErrorBanner error={problem} onDismiss={() => setProblem(null)} />
            <div className="grid gap-4 md:grid-cols-2">
              <Field label="Name" hint="Unique; letters, digits, '-', '_' and '.'.">
                {(id) => <Input id={id} name="name" value={name} onChange={(e) => setName(e.target.value)} required placeholder="ws1" autoFocus />}
              </Field>
              <Field label="AI assistant">
                {(id) => (
                  <Select id={id} name="ai_assistant" value={assistant} onChange={(e) => setAssistant(e.target.value as AiAssistant)}>
                    {ASSISTANTS.map((a) => (
                      <option key={a} value={a}>
                        {a}
                      </option>
                    ))}
                  </Select>
                )}
              </Field>
            </div>
            <Field label="Description (optional)">{(id) => <Input id={id} name="description" value={description} onChange={(e) => setDescription(e.target.value)} />}</Field>
            <div className="grid gap-4 md:grid-cols-2">
              <Field label="Working directory (optional)" hint={`Default: ${env?.working_directory ?? "/workspace"}.`}>
                {(id) => <Input id={id} name="working_directory" value={workingDir} onChange={(e) => setWorkingDir(e.target.value)} placeholder={env?.working_directory ?? "/workspace"} />}
              </Field>
              <Field label="Additional tools (optional)" hint={`One per line, e.g. python@3.12.${env?.tools.length ? ` The environment brings ${env.tools.join(", ")}.` : ""}`}>
                {(id) => <Textarea id={id} name="additional_tools" rows={2} value={tools} onChange={(e) => setTools(e.target.value)} />}
              </Field>
            </div>

            <fieldset className="flex flex-col gap-2">
              <legend className="mb-1 text-sm font-medium">Workspace secrets</legend>
              <p className="text-xs text-muted-fg">
                Given to the agent as environment variables (e.g. ANTHROPIC_API_KEY); they win over global secrets of the same name. Values are write-only: stored encrypted, never shown again.
              </p>
              {secrets.map((s, i) => (
                <div key={s.key} className="grid items-end gap-2 rounded-md border border-border p-2 sm:grid-cols-[1fr_9rem_1fr_auto]" data-testid="wizard-secret">
                  <Field label={`Secret ${i + 1} name`}>{(id) => <Input id={id} value={s.name} onChange={(e) => updateSecret(s.key, { name: e.target.value })} placeholder="ANTHROPIC_API_KEY" autoComplete="off" />}</Field>
                  <Field label="Type">
                    {(id) => (
                      <Select id={id} value={s.type} onChange={(e) => updateSecret(s.key, { type: e.target.value as WorkspaceSecretType })}>
                        {SECRET_TYPES.map((t) => (
                          <option key={t} value={t}>
                            {t}
                          </option>
                        ))}
                      </Select>
                    )}
                  </Field>
                  <Field label="Value">{(id) => <Input id={id} type="password" value={s.value} onChange={(e) => updateSecret(s.key, { value: e.target.value })} autoComplete="new-password" />}</Field>
                  <Button type="button" variant="ghost" onClick={() => setSecrets((list) => list.filter((x) => x.key !== s.key))} aria-label={`Remove secret ${i + 1}`}>
                    Remove
                  </Button>
                </div>
              ))}
              <div>
                <Button type="button" size="sm" onClick={() => setSecrets((list) => [...list, { key: secretKey++, name: "", type: "api_key", value: "" }])}>
                  Add secret
                </Button>
              </div>
            </fieldset>

            <fieldset className="flex flex-col gap-2">
              <legend className="mb-1 text-sm font-medium">Preparation steps (optional)</legend>
              <p className="text-xs text-muted-fg">Run in order as the agent user after the tools are installed; a failing step fails the workspace.</p>
              <PrepStepsEditor steps={steps} onChange={setSteps} />
            </fieldset>

            <div className="flex justify-between gap-2">
              <Button type="button" onClick={() => setStep(1)}>
                Back
              </Button>
              <Button type="submit" variant="primary">
                Review
              </Button>
            </div>
          </form>
        </Card>
      )}

      {step === 3 && (
        <Card title="3. Review">
          <ErrorBanner error={error} onDismiss={() => setError(null)} />
          <dl className="grid gap-x-4 gap-y-2 text-sm sm:grid-cols-[10rem_1fr]">
            <dt className="text-muted-fg">Name</dt>
            <dd className="break-words font-medium">{name.trim()}</dd>
            <dt className="text-muted-fg">Environment</dt>
            <dd>{env ? env.name : "none (blank workspace)"}</dd>
            <dt className="text-muted-fg">AI assistant</dt>
            <dd>{assistant}</dd>
            <dt className="text-muted-fg">Working directory</dt>
            <dd className="font-mono text-xs">{workingDir.trim() || env?.working_directory || "/workspace"}</dd>
            <dt className="text-muted-fg">Tools</dt>
            <dd className="break-words">{[...(env?.tools ?? []), ...parseLines(tools)].join(", ") || "—"}</dd>
            <dt className="text-muted-fg">Secrets</dt>
            <dd>{secrets.length ? secrets.map((s) => `${s.name.trim()} (${s.type})`).join(", ") : "none of its own"}</dd>
            <dt className="text-muted-fg">Prep steps</dt>
            <dd>
              {steps.length ? (
                <ol className="list-decimal pl-5">
                  {steps.map((s) => (
                    <li key={s.key} className="break-words">
                      <span className="text-muted-fg">{s.type}:</span> {describeStep(s)}
                    </li>
                  ))}
                </ol>
              ) : env?.git_repo_url ? (
                "clone of the environment's repository"
              ) : (
                "none"
              )}
            </dd>
          </dl>
          <div className="mt-4 flex justify-between gap-2">
            <Button onClick={() => setStep(2)}>Back</Button>
            <Button variant="primary" busy={busy} onClick={() => void create()}>
              Create workspace
            </Button>
          </div>
        </Card>
      )}
    </div>
  );
}

export default function NewWorkspacePage() {
  const { can } = useSession();
  if (!can("operator")) {
    return <EmptyState title="Creating workspaces needs the operator role" hint="Ask an admin for an operator account or key." />;
  }
  return <Wizard />;
}
