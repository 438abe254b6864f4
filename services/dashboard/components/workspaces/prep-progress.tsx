"use client";

// How a workspace's preparation goes: the tools being installed (known only from
// live `workspace.step` events with `phase: tools`) and the prep steps
// (`GET /workspaces/{id}/steps`, then updated by `workspace.step` events carrying
// the step run).

import { duration } from "@/lib/format";
import type { PrepStepRun } from "@/lib/types";
import { Pre, StatusBadge } from "@/components/ui";

export interface ToolProgress {
  tool: string;
  version?: string | null;
  status: string;
  elapsed_ms?: number;
  error?: string | null;
}

/** The last lines of a step's output: the part that explains a failure. */
function tail(output: string, lines = 40): string {
  const all = output.split("\n");
  return all.length > lines ? `… (${all.length - lines} earlier lines)\n${all.slice(-lines).join("\n")}` : output;
}

function stepLabel(step: PrepStepRun): string {
  return { git_clone: "Git clone", script: "Script", env_var: "Environment variable" }[step.type] ?? step.type;
}

export function PrepProgress({ steps, tools }: { steps: PrepStepRun[]; tools: ToolProgress[] }) {
  if (!steps.length && !tools.length) {
    return <p className="text-sm text-muted-fg">No preparation steps: the workspace needs none beyond its sandbox.</p>;
  }
  return (
    <ol className="flex flex-col gap-2" aria-label="Preparation steps">
      {tools.map((t) => (
        <li key={`tool-${t.tool}`} data-testid="tool-step" className="flex flex-wrap items-center gap-2 rounded-md border border-border px-3 py-2 text-sm">
          <StatusBadge status={t.status} />
          <span>
            Install <span className="font-mono">{t.tool}{t.version ? `@${t.version}` : ""}</span>
          </span>
          {t.elapsed_ms !== undefined && <span className="text-xs text-muted-fg">{(t.elapsed_ms / 1000).toFixed(1)} s</span>}
          {t.error && <span className="w-full break-words text-xs text-red-700 dark:text-red-400">{t.error}</span>}
        </li>
      ))}
      {steps.map((s) => (
        <li key={`step-${s.order}`} data-testid="prep-step" data-status={s.status} className="flex flex-col gap-1 rounded-md border border-border px-3 py-2 text-sm">
          <div className="flex flex-wrap items-center gap-2">
            <span className="text-xs text-muted-fg">#{s.order}</span>
            <StatusBadge status={s.status} />
            <span className="font-medium">{stepLabel(s)}</span>
            {s.exit_code !== null && s.exit_code !== undefined && <span className="text-xs text-muted-fg">exit {s.exit_code}</span>}
            {s.started_at && <span className="text-xs text-muted-fg">{duration(s.started_at, s.completed_at)}</span>}
          </div>
          {s.error && <p className="break-words text-xs text-red-700 dark:text-red-400">{s.error}</p>}
          {s.output && (
            <details open={s.status === "failed"}>
              <summary className="cursor-pointer text-xs text-muted-fg">Output</summary>
              <Pre className="mt-1">{tail(s.output)}</Pre>
            </details>
          )}
        </li>
      ))}
    </ol>
  );
}
