"use client";

// A live terminal in a sandbox: xterm.js over the interactive-exec WebSocket
// (GET /vms/{id}/exec/ws, tty=true). Binary frames carry the terminal's bytes both
// ways; text frames are JSON controls (resize from us; start, stderr, error and exit
// from the server). xterm is imported when a terminal opens, so it stays out of the
// page's first-load JavaScript. Its default DOM renderer is kept (no WebGL): the
// screen is plain text in `.xterm-rows`, which end-to-end tests read.

import "@xterm/xterm/css/xterm.css";
import { useCallback, useEffect, useRef, useState } from "react";
import type { ITheme, Terminal as XTerm } from "@xterm/xterm";
import { errorMessage } from "@/lib/api";
import { useApi } from "@/lib/session";
import type { Vm } from "@/lib/types";
import { Button, ErrorBanner, Spinner } from "./ui";

/** A login shell: bash when the image has it, else sh. */
export const SHELL_COMMAND = ["sh", "-c", "command -v bash >/dev/null 2>&1 && exec bash -l || exec sh -l"] as const;

const LIGHT: ITheme = {
  background: "#ffffff",
  foreground: "#0f172a",
  cursor: "#4f46e5",
  cursorAccent: "#ffffff",
  selectionBackground: "#c7d2fe",
};
const DARK: ITheme = {
  background: "#0b1020",
  foreground: "#e2e8f0",
  cursor: "#818cf8",
  cursorAccent: "#0b1020",
  selectionBackground: "#334155",
};

function isDark(): boolean {
  return document.documentElement.classList.contains("dark");
}

type Phase =
  | { kind: "loading" }
  | { kind: "connecting" }
  | { kind: "open" }
  | { kind: "exited"; exitCode: number | null; status: string; error?: string | null }
  | { kind: "failed"; message: string };

type ServerMessage =
  | { type: "start"; execution_id: string; pid: number; tty?: boolean }
  | { type: "stderr"; data?: string | null; data_b64?: string | null }
  | { type: "error"; message: string }
  | { type: "exit"; execution_id: string; exit_code: number | null; status: string; error?: string | null };

function base64Bytes(b64: string): Uint8Array {
  const raw = atob(b64);
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return bytes;
}

/** The session's URL: the token rides in the query (browsers cannot set headers here). */
export function terminalUrl(wsUrl: (path: string, query: Record<string, string | number | boolean>) => string, vmId: string, cols: number, rows: number): string {
  const url = new URL(wsUrl(`/vms/${encodeURIComponent(vmId)}/exec/ws`, { cmd: SHELL_COMMAND[0], tty: true, cols, rows }));
  // `arg` repeats, in order; 256 colours for programs that look at TERM.
  for (const arg of SHELL_COMMAND.slice(1)) url.searchParams.append("arg", arg);
  url.searchParams.append("env", "TERM=xterm-256color");
  return url.toString();
}

export function Terminal({ vmId }: { vmId: string }) {
  const api = useApi();
  const container = useRef<HTMLDivElement>(null);
  const term = useRef<XTerm | null>(null);
  const socket = useRef<WebSocket | null>(null);
  const [ready, setReady] = useState(false);
  const [phase, setPhase] = useState<Phase>({ kind: "loading" });
  const [notice, setNotice] = useState<string | null>(null);
  const [session, setSession] = useState(0);
  // Mounted only in the browser (when a person opens a terminal): the document is there.
  const [dark, setDark] = useState(() => typeof document !== "undefined" && isDark());

  // The terminal itself: made once, kept across reconnects.
  useEffect(() => {
    let cancelled = false;
    let cleanup: (() => void) | undefined;
    (async () => {
      let mods: [typeof import("@xterm/xterm"), typeof import("@xterm/addon-fit")];
      try {
        mods = await Promise.all([import("@xterm/xterm"), import("@xterm/addon-fit")]);
      } catch (e) {
        if (!cancelled) setPhase({ kind: "failed", message: `The terminal could not be loaded: ${errorMessage(e)}` });
        return;
      }
      const el = container.current;
      if (cancelled || !el) return;
      const [{ Terminal: XTermClass }, { FitAddon: FitAddonClass }] = mods;
      const t = new XTermClass({
        cursorBlink: true,
        fontFamily: 'ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace',
        fontSize: 13,
        scrollback: 5000,
        theme: isDark() ? DARK : LIGHT,
      });
      const f = new FitAddonClass();
      t.loadAddon(f);
      t.open(el);
      const refit = () => {
        // Hidden (another tab is showing): nothing to measure.
        if (!el.clientWidth || !el.clientHeight) return;
        try {
          f.fit();
        } catch {
          // Not laid out yet: the next resize fits it.
        }
      };
      refit();
      const observer = new ResizeObserver(refit);
      observer.observe(el);
      // The theme follows the page's dark/light switch.
      const themeWatch = new MutationObserver(() => {
        t.options.theme = isDark() ? DARK : LIGHT;
        setDark(isDark());
      });
      themeWatch.observe(document.documentElement, { attributes: true, attributeFilter: ["class"] });
      setDark(isDark());
      const resizes = t.onResize(({ cols, rows }) => {
        const ws = socket.current;
        if (ws?.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "resize", cols, rows }));
      });
      term.current = t;
      cleanup = () => {
        resizes.dispose();
        observer.disconnect();
        themeWatch.disconnect();
        t.dispose();
        term.current = null;
      };
      setReady(true);
    })();
    return () => {
      cancelled = true;
      cleanup?.();
      setReady(false);
    };
  }, []);

  // Tells why a connection closed before the shell started: the upgrade's HTTP
  // answer (409 not running, 404 gone) is hidden from a browser's WebSocket.
  const explainRefusal = useCallback(
    async (code: number): Promise<string> => {
      try {
        const vm = await api.get<Vm>(`/vms/${encodeURIComponent(vmId)}`);
        if (vm.status !== "RUNNING") return `The sandbox is ${vm.status}: a terminal can only be opened in a RUNNING sandbox.`;
        return `The gateway refused the terminal (connection closed with code ${code}). Check that your role is operator and that the sandbox's worker is online.`;
      } catch (e) {
        return errorMessage(e);
      }
    },
    [api, vmId],
  );

  // One session per Reconnect: a new shell in the same terminal.
  useEffect(() => {
    const t = term.current;
    if (!ready || !t) return;
    let done = false;
    let started = false;
    t.reset();
    setNotice(null);
    setPhase({ kind: "connecting" });
    const ws = new WebSocket(terminalUrl(api.wsUrl.bind(api), vmId, t.cols, t.rows));
    ws.binaryType = "arraybuffer";
    socket.current = ws;
    const encoder = new TextEncoder();
    const stderrDecoder = new TextDecoder();

    const send = (bytes: Uint8Array) => {
      if (ws.readyState === WebSocket.OPEN) ws.send(bytes);
    };
    // Keystrokes as the tty's bytes: Ctrl-C is 0x03, which the tty turns into SIGINT.
    const typing = t.onData((data) => send(encoder.encode(data)));
    // Mouse reports in legacy modes: one byte per character, not UTF-8.
    const binary = t.onBinary((data) => send(Uint8Array.from(data, (c) => c.charCodeAt(0) & 0xff)));

    ws.onopen = () => {
      // The size may have changed while connecting.
      ws.send(JSON.stringify({ type: "resize", cols: t.cols, rows: t.rows }));
    };
    ws.onmessage = (message) => {
      // Not text: output bytes (binaryType is arraybuffer).
      if (typeof message.data !== "string") {
        t.write(new Uint8Array(message.data as ArrayBuffer));
        return;
      }
      let control: ServerMessage;
      try {
        control = JSON.parse(message.data) as ServerMessage;
      } catch {
        return;
      }
      switch (control.type) {
        case "start":
          started = true;
          setPhase({ kind: "open" });
          t.focus();
          break;
        case "stderr": {
          const bytes = control.data_b64 ? base64Bytes(control.data_b64) : encoder.encode(control.data ?? "");
          t.write(`\x1b[31m${stderrDecoder.decode(bytes, { stream: true })}\x1b[0m`);
          break;
        }
        case "error":
          setNotice(control.message);
          break;
        case "exit":
          done = true;
          setPhase({ kind: "exited", exitCode: control.exit_code, status: control.status, error: control.error });
          break;
      }
    };
    ws.onclose = (event) => {
      if (socket.current === ws) socket.current = null;
      if (done) return;
      done = true;
      if (!started) {
        void explainRefusal(event.code).then((message) => setPhase({ kind: "failed", message }));
      } else {
        setPhase({
          kind: "failed",
          message: `The connection to the sandbox was lost (code ${event.code}${event.reason ? `: ${event.reason}` : ""}); the shell ended with it.`,
        });
      }
    };
    return () => {
      done = true;
      typing.dispose();
      binary.dispose();
      ws.onclose = null;
      ws.close();
      if (socket.current === ws) socket.current = null;
    };
  }, [ready, session, api, vmId, explainRefusal]);

  const reconnect = () => setSession((s) => s + 1);

  return (
    <div className="flex flex-col gap-2">
      <ErrorBanner error={notice} onDismiss={() => setNotice(null)} />
      <div className="rounded-md border border-border p-2" style={{ background: (dark ? DARK : LIGHT).background }}>
        <div ref={container} data-testid="terminal" className="h-[60vh] min-h-64 w-full overflow-hidden" />
      </div>
      <div data-testid="terminal-status" data-phase={phase.kind} className="flex min-h-9 flex-wrap items-center gap-2 text-sm">
        {(phase.kind === "loading" || phase.kind === "connecting") && (
          <span className="inline-flex items-center gap-2 text-muted-fg">
            <Spinner className="h-3.5 w-3.5" /> {phase.kind === "loading" ? "Loading the terminal…" : "Connecting…"}
          </span>
        )}
        {phase.kind === "open" && <span className="text-muted-fg">Connected. Ctrl-C interrupts; type exit to end the shell.</span>}
        {phase.kind === "exited" && (
          <>
            <span className="font-mono">
              {phase.exitCode === null ? `[process ended: ${phase.status}]` : `[process exited with code ${phase.exitCode}]`}
            </span>
            {phase.error && <span className="text-muted-fg">{phase.error}</span>}
          </>
        )}
        {phase.kind === "failed" && (
          <span role="alert" className="text-red-700 dark:text-red-400">
            {phase.message}
          </span>
        )}
        {(phase.kind === "exited" || (phase.kind === "failed" && ready)) && (
          <Button size="sm" onClick={reconnect}>
            Reconnect
          </Button>
        )}
      </div>
    </div>
  );
}
