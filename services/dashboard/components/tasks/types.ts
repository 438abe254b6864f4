// The task statuses and types offered by the filters.
import type { TaskStatus, TaskType } from "@/lib/types";

export const TASK_STATUSES: TaskStatus[] = ["pending", "running", "completed", "failed", "cancelled"];

export const TASK_TYPES: TaskType[] = [
  "vm:create",
  "vm:delete",
  "vm:execute",
  "vm:pause",
  "vm:resume",
  "vm:snapshot",
  "vm:network",
  "integration:run",
  "workspace:create",
  "prompt:execute",
];
