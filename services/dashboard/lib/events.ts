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

/**
 * A WebSocket of JSON messages that resumes where it left off: on a drop it
 * reconnects (backing off from 0.5 s to 10 s) to `url(last position)`, and the
 * server replays what was missed. `position` reads a message's place in its log
 * (an event's seq, a log record's id); messages at or before the last one seen are
 * dropped, so nothing is delivered twice.
 */
export function openResumableSocket<T>(options: {
  url: (after: number | undefined) => string;
  position: (message: T) => number | undefined;
  after?: number;
  onMessage: (message: T) => void;
  onState: (state: ConnectionState) => void;
}): { close(): void } {
  let last = options.after;
  let socket: WebSocket | null = null;
  let closed = false;
  let retryMs = 500;
  let timer: ReturnType<typeof setTimeout> | undefined;

  const connect = () => {
    if (closed) return;
    socket = new WebSocket(options.url(last));
    socket.onopen = () => {
      retryMs = 500;
      options.onState("live");
    };
    socket.onmessage = (frame) => {
      if (closed || typeof frame.data !== "string") return;
      let message: T;
      try {
        message = JSON.parse(frame.data) as T;
      } catch {
        // Not JSON: ignore it rather than break the stream.
        return;
      }
      const at = options.position(message);
      if (at !== undefined) {
        if (last !== undefined && at <= last) return;
        last = at;
      }
      options.onMessage(message);
    };
    socket.onclose = () => {
      socket = null;
      if (closed) return;
      options.onState("reconnecting");
      timer = setTimeout(connect, retryMs);
      retryMs = Math.min(retryMs * 2, 10_000);
    };
  };

  options.onState("connecting");
  connect();
  return {
    close() {
      closed = true;
      if (timer) clearTimeout(timer);
      socket?.close();
    },
  };
}

/** Opens the events stream and calls `onEvent` for each event until `close()`. */
export function openEventStream(
  api: ApiClient,
  options: EventStreamOptions,
  onEvent: (event: Event) => void,
  onState: (state: ConnectionState) => void,
): { close(): void } {
  return openResumableSocket<Event>({
    url: (after) =>
      api.wsUrl("/events", {
        types: options.types?.length ? options.types.join(",") : undefined,
        resource_id: options.resourceId,
        after,
      }),
    position: (event) => (typeof event.seq === "number" ? event.seq : undefined),
    after: options.after,
    onMessage: onEvent,
    onState,
  });
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
