"use client";

// "Run a command": one line, run by `sh -c` through POST /vms/{id}/exec/stream, whose
// answer is NDJSON (one StreamEvent per line) written as the command produces output.
// The output is shown as it arrives and the exit code at the end.

import { useEffect, useRef, useState } from "react";
import { errorMessage } from "@/lib/api";
import { useApi } from "@/lib/session";
import { Button, ErrorBanner, Input, cx } from "@/components/ui";

/** What this view keeps of a stream; beyond it the execution's record has the output. */
const MAX_SHOWN_CHARS = 1_000_000;

type StreamName = "stdout" | "stderr";

interface Segment {
  stream: StreamName;
  text: string;
}

interface Outcome {
  exitCode: number | null;
  status: string;
  error?: string | null;
}

type StreamLine =
  | { type: "start"; execution_id: string; pid: number }
  | { type: StreamName; data?: string | null; data_b64?: string | null }
  | { type: "end"; execution_id: string; exit_code?: number | null; status: string; error?: string | null }
  | { type: "error"; message: string };

function base64Bytes(b64: string): Uint8Array {
  const raw = atob(b64);
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return bytes;
}

/**
 * Reads an NDJSON body line by line; a line split across reads is held until whole.
 * Lines that are not JSON are skipped (a proxy's keep-alive, say).
 */
export async function readNdjson(body: ReadableStream<Uint8Array>, onLine: (line: StreamLine) => void): Promise<void> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let pending = "";
  const flush = (text: string) => {
    if (!text.trim()) return;
    try {
      onLine(JSON.parse(text) as StreamLine);
    } catch {
      // Not a stream event: ignore it.
    }
  };
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    pending += decoder.decode(value, { stream: true });
    let nl = pending.indexOf("\n");
    while (nl !== -1) {
      flush(pending.slice(0, nl));
      pending = pending.slice(nl + 1);
      nl = pending.indexOf("\n");
    }
  }
  flush(pending + decoder.decode());
}

export function RunCommand({ vmId, vmRunning }: { vmId: string; vmRunning: boolean }) {
  const api = useApi();
  const [line, setLine] = useState("");
  const [ran, setRan] = useState<string | null>(null);
  const [segments, setSegments] = useState<Segment[]>([]);
  const [cut, setCut] = useState(false);
  const [executionId, setExecutionId] = useState<string | null>(null);
  const [outcome, setOutcome] = useState<Outcome | null>(null);
  const [running, setRunning] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const abort = useRef<AbortController | null>(null);

  // Leaving the page stops reading; the command itself runs on to its end (and is
  // recorded), as the API does for any client that goes away.
  useEffect(() => () => abort.current?.abort(), []);

  const run = async (e: React.FormEvent) => {
    e.preventDefault();
    const command = line.trim();
    if (!command || running) return;
    const controller = new AbortController();
    abort.current = controller;
    setRan(command);
    setSegments([]);
    setCut(false);
    setExecutionId(null);
    setOutcome(null);
    setError(null);
    setRunning(true);

    // One decoder per stream: a character split across chunks stays whole.
    const decoders: Record<StreamName, TextDecoder> = { stdout: new TextDecoder(), stderr: new TextDecoder() };
    let shown = 0;
    const append = (stream: StreamName, text: string) => {
      if (!text) return;
      if (shown >= MAX_SHOWN_CHARS) {
        setCut(true);
        return;
      }
      const piece = text.slice(0, MAX_SHOWN_CHARS - shown);
      shown += piece.length;
      if (piece.length < text.length) setCut(true);
      setSegments((prev) => {
        const last = prev[prev.length - 1];
        if (last && last.stream === stream) return [...prev.slice(0, -1), { stream, text: last.text + piece }];
        return [...prev, { stream, text: piece }];
      });
    };

    let ended = false;
    try {
      const response = await api.fetchResponse(`/vms/${encodeURIComponent(vmId)}/exec/stream`, {
        method: "POST",
        body: { command: "sh", args: ["-c", command] },
        signal: controller.signal,
      });
      if (!response.body) throw new Error("The gateway answered without a body to stream.");
      await readNdjson(response.body, (event) => {
        switch (event.type) {
          case "start":
            setExecutionId(event.execution_id);
            break;
          case "stdout":
          case "stderr":
            if (typeof event.data === "string") append(event.type, decoders[event.type].decode(new TextEncoder().encode(event.data), { stream: true }));
            else if (event.data_b64) append(event.type, decoders[event.type].decode(base64Bytes(event.data_b64), { stream: true }));
            break;
          case "end":
            ended = true;
            setOutcome({ exitCode: event.exit_code ?? null, status: event.status, error: event.error });
            break;
          case "error":
            setError(event.message);
            break;
        }
      });
      if (!ended && !controller.signal.aborted) {
        setError("The stream ended before the command did. It runs on in the sandbox; its result will show under Executions.");
      }
    } catch (err) {
      if (!controller.signal.aborted) setError(errorMessage(err));
    } finally {
      if (abort.current === controller) abort.current = null;
      setRunning(false);
    }
  };

  const statusText = (o: Outcome) => {
    if (o.status === "timed_out") return "Timed out (killed after the timeout)";
    if (o.exitCode === null) return `Ended: ${o.status}`;
    return `Exit code ${o.exitCode}`;
  };

  return (
    <div className="flex flex-col gap-3">
      <form onSubmit={run} className="flex flex-col gap-2 sm:flex-row" aria-label="Run a command">
        <Input
          aria-label="Command"
          data-testid="run-command-input"
          className="font-mono"
          placeholder={vmRunning ? "uname -a && ls /" : "The sandbox is not running"}
          value={line}
          onChange={(e) => setLine(e.target.value)}
          autoComplete="off"
          spellCheck={false}
          disabled={!vmRunning}
        />
        <Button type="submit" variant="primary" busy={running} disabled={!vmRunning || !line.trim()}>
          Run
        </Button>
      </form>
      <p className="text-xs text-muted-fg">
        Runs with <code>sh -c</code>, so pipes and <code>&amp;&amp;</code> work. Output streams in as it is written; every run is recorded under Executions.
      </p>
      <ErrorBanner error={error} onDismiss={() => setError(null)} />
      {ran !== null && (
        <div className="flex flex-col gap-1">
          <div className="flex flex-wrap items-center justify-between gap-2 text-xs text-muted-fg">
            <span className="font-mono">$ {ran}</span>
            {executionId && <span className="font-mono">execution {executionId}</span>}
          </div>
          <pre
            data-testid="run-output"
            aria-live="polite"
            className="max-h-[28rem] min-h-16 overflow-auto whitespace-pre-wrap break-all rounded-md bg-muted p-3 font-mono text-xs"
          >
            {segments.map((s, i) => (
              <span key={i} className={cx(s.stream === "stderr" && "text-red-700 dark:text-red-300")}>
                {s.text}
              </span>
            ))}
            {segments.length === 0 && !running && <span className="text-muted-fg">(no output)</span>}
          </pre>
          {cut && <p className="text-xs text-muted-fg">Only the first {MAX_SHOWN_CHARS.toLocaleString()} characters are shown here.</p>}
          <div className="text-sm" data-testid="run-exit">
            {running ? (
              <span className="text-muted-fg">Running…</span>
            ) : outcome ? (
              <span className={cx("font-medium", outcome.exitCode === 0 ? "text-green-700 dark:text-green-400" : "text-red-700 dark:text-red-400")}>
                {statusText(outcome)}
                {outcome.error ? ` — ${outcome.error}` : ""}
              </span>
            ) : null}
          </div>
        </div>
      )}
    </div>
  );
}
