// Types for API additions that the generated lib/api-schema.d.ts does not carry yet
// (task archive, retry/delete, queue history). Once `npm run gen:api` picks them up,
// these become aliases in lib/types.ts and this file goes.
import type { Task, TaskStatus, TaskType } from "@/lib/types";

/** A task; `archived_at` is set while it is dead in the archive (retriable, deletable). */
export type ArchivableTask = Task & { archived_at?: string | null };

export interface QueueHistoryBucket {
  /** RFC 3339 start of the minute. */
  start: string;
  created: number;
  completed: number;
  failed: number;
}

/** `GET /queue/history?minutes=N`: per-minute counts, oldest first. */
export interface QueueHistory {
  interval_seconds: number;
  buckets: QueueHistoryBucket[];
}

export const TASK_STATUSES: TaskStatus[] = ["pending", "running", "completed", "failed", "cancelled"];

export const TASK_TYPES: TaskType[] = [
  "vm:create",
  "vm:start",
  "vm:stop",
  "vm:delete",
  "vm:execute",
  "vm:pause",
  "vm:resume",
  "vm:snapshot",
  "job:execute",
  "integration:run",
  "workspace:create",
  "workspace:delete",
  "prompt:execute",
];
