"use client";

// The conversation with a workspace's agent: every prompt with its answer, streamed
// live over the session WebSocket, and a box to send the next one. Sending needs
// the operator role and a ready workspace; the box says why when it is disabled.

import { useEffect, useRef, useState } from "react";
import { useSession } from "@/lib/session";
import { duration, fullTime, timeAgo } from "@/lib/format";
import type { Prompt, WorkspaceStatus } from "@/lib/types";
import { Button, Card, ErrorBanner, Field, Select, StatusBadge, Textarea, cx } from "@/components/ui";
import { useWorkspaceSession, type OutputChunk, type SessionState } from "./use-workspace-session";

const STATE_LABEL: Record<SessionState, string> = {
  connecting: "connecting…",
  live: "live",
  reconnecting: "reconnecting…",
  off: "not connected",
};

/** A connection's state: the session's, or the live events' on the list. */
export function SessionIndicator({ state, testId = "session-state" }: { state: SessionState; testId?: string }) {
  return (
    <span data-testid={testId} data-state={state} className="inline-flex items-center gap-1.5 text-xs text-muted-fg">
      <span className={cx("h-2 w-2 rounded-full", state === "live" ? "bg-green-500" : state === "off" ? "bg-zinc-400" : "animate-pulse bg-amber-500")} />
      {STATE_LABEL[state]}
    </span>
  );
}

function Output({ chunks }: { chunks: OutputChunk[] }) {
  if (!chunks.length) return null;
  return (
    <pre data-testid="prompt-output" className="max-h-[28rem] overflow-auto whitespace-pre-wrap break-words rounded-md bg-muted p-3 font-mono text-xs">
      {chunks.map((c, i) => (
        <span key={i} className={c.stream === "stderr" ? "text-red-700 dark:text-red-400" : undefined}>
          {c.data}
        </span>
      ))}
    </pre>
  );
}

function PromptItem({ prompt, chunks, canCancel, onCancel }: { prompt: Prompt; chunks: OutputChunk[]; canCancel: boolean; onCancel: () => void }) {
  const active = prompt.status === "pending" || prompt.status === "running";
  return (
    <li data-testid="prompt-item" data-prompt-id={prompt.id} className="flex flex-col gap-2 rounded-md border border-border p-3">
      <div className="flex flex-wrap items-center justify-between gap-2 text-xs text-muted-fg">
        <span className="flex flex-wrap items-center gap-2">
          <StatusBadge status={prompt.status} />
          <span title={fullTime(prompt.created_at)}>{timeAgo(prompt.created_at)}</span>
          <span>priority {prompt.priority}</span>
          {prompt.started_at && <span>{duration(prompt.started_at, prompt.completed_at)}</span>}
          {prompt.exit_code !== null && prompt.exit_code !== undefined && <span>exit {prompt.exit_code}</span>}
        </span>
        {active && canCancel && (
          <Button size="sm" variant="ghost" onClick={onCancel} aria-label="Cancel prompt">
            Cancel
          </Button>
        )}
      </div>
      <p className="whitespace-pre-wrap break-words text-sm font-medium">{prompt.prompt}</p>
      <Output chunks={chunks} />
      {prompt.status === "running" && !chunks.length && <p className="text-xs text-muted-fg">Running; output appears here as it comes.</p>}
      {prompt.status === "pending" && <p className="text-xs text-muted-fg">Queued: runs after the prompts ahead of it.</p>}
      {prompt.error && <p className="whitespace-pre-wrap break-words text-xs text-red-700 dark:text-red-400">{prompt.error}</p>}
    </li>
  );
}

export function PromptPanel({ workspaceId, status, onStatus }: { workspaceId: string; status: WorkspaceStatus; onStatus?: (status: WorkspaceStatus) => void }) {
  const { can } = useSession();
  const operator = can("operator");
  const session = useWorkspaceSession(workspaceId, operator, onStatus);
  const [text, setText] = useState("");
  const [priority, setPriority] = useState(5);
  const listEnd = useRef<HTMLDivElement>(null);
  // Scrolls to a prompt this page just sent, not on load (the page would jump).
  const followNext = useRef(false);

  const count = session.prompts.length;
  useEffect(() => {
    if (!followNext.current) return;
    followNext.current = false;
    listEnd.current?.scrollIntoView?.({ block: "nearest" });
  }, [count]);

  const ready = status === "ready";
  const disabledReason = !operator
    ? "Sending prompts needs the operator role."
    : !ready
      ? status === "failed"
        ? "The workspace failed to prepare: it takes no prompts. Create a new one."
        : status === "stopped"
          ? "The workspace was stopped (idle timeout): it takes no more prompts. Create a new one."
          : `The workspace is ${status}: prompts can be sent once it is ready.`
      : session.state !== "live"
        ? "Waiting for the session to connect…"
        : null;

  const submit = (e: React.FormEvent) => {
    e.preventDefault();
    const prompt = text.trim();
    if (!prompt || disabledReason) return;
    if (session.send(prompt, priority)) {
      setText("");
      followNext.current = true;
    }
  };

  return (
    <Card title="Prompts" actions={<SessionIndicator state={session.state} />}>
      <ErrorBanner error={session.historyError} />
      <ErrorBanner error={session.error} onDismiss={session.clearError} />
      {count === 0 ? (
        <p className="mb-3 text-sm text-muted-fg">No prompts yet. {ready && operator ? "Ask the agent something below." : ""}</p>
      ) : (
        <ol className="mb-3 flex flex-col gap-3" aria-label="Conversation">
          {session.prompts.map((p) => (
            <PromptItem key={p.id} prompt={p} chunks={session.outputOf(p.id)} canCancel={operator} onCancel={() => void session.cancel(p.id)} />
          ))}
        </ol>
      )}
      <div ref={listEnd} />
      <form onSubmit={submit} className="flex flex-col gap-2" aria-label="Ask the agent">
        <Field label="Prompt" hint={disabledReason ?? "Ctrl+Enter sends. Higher priority runs first; one prompt runs at a time."}>
          {(id) => (
            <Textarea
              id={id}
              name="prompt"
              data-testid="prompt-input"
              rows={3}
              className="font-sans"
              value={text}
              disabled={!!disabledReason}
              placeholder="Add a health check endpoint"
              onChange={(e) => setText(e.target.value)}
              onKeyDown={(e) => {
                if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) submit(e);
              }}
            />
          )}
        </Field>
        <div className="flex flex-wrap items-end justify-between gap-2">
          <Field label="Priority">
            {(id) => (
              <Select id={id} name="priority" className="w-28" value={priority} disabled={!!disabledReason} onChange={(e) => setPriority(Number(e.target.value))}>
                {Array.from({ length: 11 }, (_, i) => (
                  <option key={i} value={i}>
                    {i}
                    {i === 5 ? " (default)" : i === 10 ? " (highest)" : i === 0 ? " (lowest)" : ""}
                  </option>
                ))}
              </Select>
            )}
          </Field>
          <Button type="submit" variant="primary" disabled={!!disabledReason || !text.trim()}>
            Send
          </Button>
        </div>
      </form>
    </Card>
  );
}
