// Task choices for filters, and names the task pages share.
import type { QueueHistory, QueueHistoryBucket, Task, TaskStatus, TaskType } from "@/lib/types";

export type { QueueHistory, QueueHistoryBucket };

/** A task; `archived_at` is set while it is dead in the archive (retriable, deletable). */
export type ArchivableTask = Task;

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
