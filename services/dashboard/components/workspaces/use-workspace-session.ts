"use client";

// A workspace's prompts, live: the history from `GET /workspaces/{id}/prompts`, then
// the session WebSocket (`GET /workspaces/{id}/session`), which sends `status`,
// `prompt_queued`, `output`, `prompt_done` and `error`, and takes `prompt` and
// `cancel`. On a drop it reconnects with a growing delay and reloads the history
// once connected again, so output sent while it was away is not lost.

import { useCallback, useEffect, useRef, useState } from "react";
import { errorMessage } from "@/lib/api";
import { useApi } from "@/lib/session";
import type { Prompt, PromptList, WorkspaceStatus } from "@/lib/types";

export type SessionState = "connecting" | "live" | "reconnecting" | "off";

export interface OutputChunk {
  stream: "stdout" | "stderr";
  data: string;
}

type ServerMessage =
  | { type: "status"; workspace_status: WorkspaceStatus }
  | { type: "prompt_queued"; prompt: Prompt }
  | { type: "output"; prompt_id: string; stream: "stdout" | "stderr"; data: string }
  | { type: "prompt_done"; prompt: Prompt }
  | { type: "error"; message: string };

interface PromptsState {
  prompts: Record<string, Prompt>;
  /** Output known when the prompt was loaded (stored, stdout only). */
  base: Record<string, string>;
  /** Output streamed since. */
  chunks: Record<string, OutputChunk[]>;
}

const EMPTY: PromptsState = { prompts: {}, base: {}, chunks: {} };

export interface WorkspaceSession {
  state: SessionState;
  /** Oldest first. */
  prompts: Prompt[];
  outputOf(promptId: string): OutputChunk[];
  historyError: string | null;
  /** The last `error` message from the server (or a send that could not go out). */
  error: string | null;
  clearError(): void;
  send(prompt: string, priority: number): boolean;
  cancel(promptId: string): Promise<void>;
}

export function useWorkspaceSession(
  workspaceId: string,
  /** Open the WebSocket (it needs the operator role); the history loads anyway. */
  connect: boolean,
  onStatus?: (status: WorkspaceStatus) => void,
): WorkspaceSession {
  const api = useApi();
  const [state, setState] = useState<SessionState>(connect ? "connecting" : "off");
  const [data, setData] = useState<PromptsState>(EMPTY);
  const [historyError, setHistoryError] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);
  const socketRef = useRef<WebSocket | null>(null);
  const openRef = useRef(false);
  const onStatusRef = useRef(onStatus);
  onStatusRef.current = onStatus;

  const loadHistory = useCallback(
    async (signal?: AbortSignal) => {
      try {
        const list = await api.get<PromptList>(`/workspaces/${encodeURIComponent(workspaceId)}/prompts`, undefined, signal);
        setHistoryError(null);
        setData((d) => {
          const prompts = { ...d.prompts };
          const base = { ...d.base };
          const chunks = { ...d.chunks };
          for (const p of list.prompts) {
            prompts[p.id] = p;
            // The stored output is the truth up to now; later chunks append to it.
            base[p.id] = p.output;
            chunks[p.id] = [];
          }
          return { prompts, base, chunks };
        });
      } catch (e) {
        if (!signal?.aborted) setHistoryError(errorMessage(e));
      }
    },
    [api, workspaceId],
  );

  useEffect(() => {
    if (!api.token) return;
    const controller = new AbortController();
    setData(EMPTY);
    void loadHistory(controller.signal);
    return () => controller.abort();
  }, [api, loadHistory]);

  const handle = useCallback((msg: ServerMessage) => {
    switch (msg.type) {
      case "status":
        onStatusRef.current?.(msg.workspace_status);
        break;
      case "prompt_queued":
        setData((d) => ({
          prompts: { ...d.prompts, [msg.prompt.id]: d.prompts[msg.prompt.id] ?? msg.prompt },
          base: { ...d.base, [msg.prompt.id]: d.base[msg.prompt.id] ?? msg.prompt.output },
          chunks: { ...d.chunks, [msg.prompt.id]: d.chunks[msg.prompt.id] ?? [] },
        }));
        break;
      case "output":
        setData((d) => {
          const prompt = d.prompts[msg.prompt_id];
          // The session does not announce a start: output means it runs.
          const prompts = prompt && prompt.status === "pending" ? { ...d.prompts, [prompt.id]: { ...prompt, status: "running" as const } } : d.prompts;
          return { prompts, base: d.base, chunks: { ...d.chunks, [msg.prompt_id]: [...(d.chunks[msg.prompt_id] ?? []), { stream: msg.stream, data: msg.data }] } };
        });
        break;
      case "prompt_done":
        setData((d) => {
          const streamed = (d.chunks[msg.prompt.id] ?? []).length > 0;
          return {
            prompts: { ...d.prompts, [msg.prompt.id]: msg.prompt },
            // Keep what streamed (stderr included); else show the stored output.
            base: streamed ? d.base : { ...d.base, [msg.prompt.id]: msg.prompt.output },
            chunks: d.chunks,
          };
        });
        break;
      case "error":
        setError(msg.message);
        break;
    }
  }, []);

  useEffect(() => {
    if (!connect || !api.token) {
      setState("off");
      return;
    }
    let closed = false;
    let retryMs = 500;
    let timer: ReturnType<typeof setTimeout> | undefined;
    let reconnecting = false;

    const open = () => {
      if (closed) return;
      const socket = new WebSocket(api.wsUrl(`/workspaces/${encodeURIComponent(workspaceId)}/session`));
      socketRef.current = socket;
      socket.onopen = () => {
        openRef.current = true;
        retryMs = 500;
        setState("live");
        if (reconnecting) void loadHistory();
      };
      socket.onmessage = (event: MessageEvent) => {
        if (typeof event.data !== "string") return;
        try {
          handle(JSON.parse(event.data) as ServerMessage);
        } catch {
          // Not a session message: ignore it rather than break the session.
        }
      };
      socket.onclose = () => {
        openRef.current = false;
        if (socketRef.current === socket) socketRef.current = null;
        if (closed) return;
        reconnecting = true;
        setState("reconnecting");
        timer = setTimeout(open, retryMs);
        retryMs = Math.min(retryMs * 2, 10_000);
      };
    };

    setState("connecting");
    open();
    return () => {
      closed = true;
      openRef.current = false;
      if (timer) clearTimeout(timer);
      socketRef.current?.close();
      socketRef.current = null;
    };
  }, [api, workspaceId, connect, handle, loadHistory]);

  const send = useCallback((prompt: string, priority: number): boolean => {
    const socket = socketRef.current;
    if (!socket || !openRef.current) {
      setError("Not connected to the workspace's session: wait for it to reconnect, then send again.");
      return false;
    }
    socket.send(JSON.stringify({ type: "prompt", prompt, priority }));
    return true;
  }, []);

  const cancel = useCallback(
    async (promptId: string) => {
      const socket = socketRef.current;
      if (socket && openRef.current) {
        socket.send(JSON.stringify({ type: "cancel", prompt_id: promptId }));
        return;
      }
      // Without the session, the REST route does the same.
      try {
        const prompt = await api.post<Prompt>(`/workspaces/${encodeURIComponent(workspaceId)}/prompts/${encodeURIComponent(promptId)}/cancel`);
        if (prompt?.id) handle({ type: "prompt_done", prompt });
      } catch (e) {
        setError(errorMessage(e));
      }
    },
    [api, workspaceId, handle],
  );

  const prompts = Object.values(data.prompts).sort((a, b) => a.created_at.localeCompare(b.created_at) || a.id.localeCompare(b.id));
  const outputOf = useCallback(
    (id: string): OutputChunk[] => {
      const base = data.base[id];
      const rest = data.chunks[id] ?? [];
      return base ? [{ stream: "stdout", data: base }, ...rest] : rest;
    },
    [data],
  );

  return { state, prompts, outputOf, historyError, error, clearError: () => setError(null), send, cancel };
}
