"use client";

// Live events over the gateway's events WebSocket (`GET /events`, one JSON event per
// text message). A browser's EventSource cannot send the bearer token, so the
// WebSocket carries it as `?token=`. On a drop it reconnects with `?after=<last seq>`
// and the server replays what was missed: no polling, no gaps.

import { useEffect, useRef, useState } from "react";
import type { ApiClient } from "./api";
import type { Event } from "./types";
import { useApi } from "./session";

export type ConnectionState = "connecting" | "live" | "reconnecting";

export interface EventStreamOptions {
  /** Exact types and/or categories: ["vm.*", "task.failed"]. Empty: all. */
  types?: string[];
  resourceId?: string;
  /** Replay the stored events after this seq first (0: the whole retained log). */
  after?: number;
}

/** Opens the stream and calls `onEvent` for each event until `close()`. */
export function openEventStream(
  api: ApiClient,
  options: EventStreamOptions,
  onEvent: (event: Event) => void,
  onState: (state: ConnectionState) => void,
): { close(): void } {
  let lastSeq: number | undefined = options.after;
  let socket: WebSocket | null = null;
  let closed = false;
  let retryMs = 500;
  let timer: ReturnType<typeof setTimeout> | undefined;

  const connect = () => {
    if (closed) return;
    const url = api.wsUrl("/events", {
      types: options.types?.length ? options.types.join(",") : undefined,
      resource_id: options.resourceId,
      after: lastSeq,
    });
    socket = new WebSocket(url);
    socket.onopen = () => {
      retryMs = 500;
      onState("live");
    };
    socket.onmessage = (message) => {
      if (typeof message.data !== "string") return;
      try {
        const event = JSON.parse(message.data) as Event;
        if (typeof event.seq === "number") lastSeq = event.seq;
        onEvent(event);
      } catch {
        // Not an event: ignore it rather than break the stream.
      }
    };
    socket.onclose = () => {
      socket = null;
      if (closed) return;
      onState("reconnecting");
      timer = setTimeout(connect, retryMs);
      retryMs = Math.min(retryMs * 2, 10_000);
    };
  };

  onState("connecting");
  connect();
  return {
    close() {
      closed = true;
      if (timer) clearTimeout(timer);
      socket?.close();
    },
  };
}

/**
 * Calls `onEvent` for every live event matching `options` while the component is
 * mounted; returns the connection state (for a "live" indicator).
 */
export function useEvents(options: EventStreamOptions, onEvent: (event: Event) => void): ConnectionState {
  const api = useApi();
  const [state, setState] = useState<ConnectionState>("connecting");
  const handler = useRef(onEvent);
  handler.current = onEvent;
  const typesKey = (options.types ?? []).join(",");

  useEffect(() => {
    if (!api.token) return;
    const stream = openEventStream(
      api,
      { types: typesKey ? typesKey.split(",") : [], resourceId: options.resourceId, after: options.after },
      (event) => handler.current(event),
      setState,
    );
    return () => stream.close();
  }, [api, typesKey, options.resourceId, options.after]);

  return state;
}
