"use client";

import Link from "next/link";
import { Table, Td, StatusBadge } from "@/components/ui";
import { duration, fullTime, shortId, timeAgo } from "@/lib/format";
import type { Task } from "@/lib/types";

/** How long the task ran: start to end, or to now while running. */
export function taskDuration(task: Task): string {
  if (!task.started_at) return "—";
  return duration(task.started_at, task.completed_at ?? undefined);
}

/** The task list used by the tasks page and the overview's recent tasks. */
export function TaskTable({ tasks, label = "Tasks" }: { tasks: Task[]; label?: string }) {
  return (
    <Table label={label} head={["Type", "Status", "Sandbox", "Worker", "Retries", "Created", "Duration"]}>
      {tasks.map((task) => (
        <tr key={task.id} data-testid="task-row" data-task-id={task.id}>
          <Td>
            <Link href={`/tasks/detail/?id=${encodeURIComponent(task.id)}`} className="font-mono text-xs font-medium text-primary hover:underline">
              {task.type}
            </Link>
            <div className="font-mono text-xs text-muted-fg" title={task.id}>
              {shortId(task.id)}
            </div>
          </Td>
          <Td>
            <span className="flex flex-wrap items-center gap-1">
              <StatusBadge status={task.status} />
              {task.archived_at && <span className="text-xs text-muted-fg">archived</span>}
            </span>
          </Td>
          <Td>
            {task.vm_id ? (
              <Link href={`/sandboxes/detail/?id=${encodeURIComponent(task.vm_id)}`} className="font-mono text-xs text-primary hover:underline" title={task.vm_id}>
                {shortId(task.vm_id)}
              </Link>
            ) : (
              <span className="text-muted-fg">—</span>
            )}
          </Td>
          <Td className="whitespace-nowrap font-mono text-xs">{task.worker_id ?? <span className="text-muted-fg">—</span>}</Td>
          <Td className="tabular-nums">
            {task.retry_count}/{task.max_retries}
          </Td>
          <Td title={fullTime(task.created_at)} className="whitespace-nowrap">
            {timeAgo(task.created_at)}
          </Td>
          <Td className="whitespace-nowrap tabular-nums">{taskDuration(task)}</Td>
        </tr>
      ))}
    </Table>
  );
}
