"use client";

// Live platform log records over `GET /logs/stream` (a WebSocket, one JSON record
// per text message), as lib/events.ts does for events: the token rides in `?token=`,
// and a dropped connection reconnects with `?after=<last id seen>` so the server
// replays what was missed — no gaps, no duplicates, no polling.

import { useEffect, useRef, useState } from "react";
import type { ApiClient } from "@/lib/api";
import { openResumableSocket, type ConnectionState } from "@/lib/events";
import type { LogLevel, LogRecord } from "@/lib/types";
import { useApi } from "@/lib/session";

export const LOG_LEVELS: LogLevel[] = ["trace", "debug", "info", "warn", "error"];

/** The filters shared by the query and the stream (empty strings: no filter). */
export interface LogFilters {
  level: LogLevel | "";
  task_id: string;
  vm_id: string;
  worker_id: string;
  execution_id: string;
  contains: string;
}

export const NO_FILTERS: LogFilters = { level: "", task_id: "", vm_id: "", worker_id: "", execution_id: "", contains: "" };

/** Only the filters that are set: `POST /logs/query` refuses unknown keys, so empty ones are left out. */
export function activeFilters(filters: LogFilters): Partial<Record<keyof LogFilters, string>> {
  const out: Partial<Record<keyof LogFilters, string>> = {};
  for (const [key, value] of Object.entries(filters) as [keyof LogFilters, string][]) {
    if (value) out[key] = value;
  }
  return out;
}

/** Opens the stream and calls `onRecord` for each record until `close()`. */
export function openLogStream(
  api: ApiClient,
  filters: LogFilters,
  after: number,
  onRecord: (record: LogRecord) => void,
  onState: (state: ConnectionState) => void,
): { close(): void } {
  return openResumableSocket<LogRecord>({
    url: (last) => api.wsUrl("/logs/stream", { ...activeFilters(filters), after: last ?? after }),
    // A record without an id is not one: skipped by returning a position never newer.
    position: (record) => (typeof record.id === "number" ? record.id : Number.NEGATIVE_INFINITY),
    after,
    onMessage: (record) => {
      if (typeof record.id === "number") onRecord(record);
    },
    onState,
  });
}

/** Records arriving within this many ms go on screen together (one render per batch). */
const BATCH_MS = 100;

/**
 * Follows the log while `enabled`, starting after `after()` (read when the stream
 * opens, so a new `key` — other filters, a fresh first page — reopens it from the
 * newest record shown). Records are handed over in batches: a busy platform, or the
 * replay after a long pause, sends hundreds a second. Returns the connection state,
 * or "off" when not following.
 */
export function useLogStream(
  enabled: boolean,
  key: string,
  filters: LogFilters,
  after: () => number,
  onRecords: (records: LogRecord[]) => void,
): ConnectionState | "off" {
  const api = useApi();
  const [state, setState] = useState<ConnectionState>("connecting");
  const latest = useRef({ filters, after, onRecords });
  latest.current = { filters, after, onRecords };

  useEffect(() => {
    if (!enabled || !api.token) return;
    const { filters: f, after: start } = latest.current;
    let batch: LogRecord[] = [];
    let timer: ReturnType<typeof setTimeout> | undefined;
    const flush = () => {
      timer = undefined;
      const records = batch;
      batch = [];
      latest.current.onRecords(records);
    };
    const stream = openLogStream(
      api,
      f,
      start(),
      (record) => {
        batch.push(record);
        timer ??= setTimeout(flush, BATCH_MS);
      },
      setState,
    );
    return () => {
      // A batch not shown yet is replayed by the next stream, which starts after the newest record shown.
      if (timer) clearTimeout(timer);
      stream.close();
    };
  }, [api, enabled, key]);

  return enabled ? state : "off";
}
