"use client";

// One platform log record, terminal style: time, level, target, message on one line
// on a wide screen (wrapping on a phone), then the ids it is tagged with as links
// and its structured fields folded away.

import Link from "next/link";
import { memo } from "react";
import { cx } from "@/components/ui";
import { fullTime, shortId } from "@/lib/format";
import type { LogLevel, LogRecord } from "@/lib/types";

const LEVEL_TONE: Record<LogLevel, string> = {
  trace: "bg-zinc-500/15 text-zinc-600 dark:text-zinc-400",
  debug: "bg-sky-500/15 text-sky-700 dark:text-sky-400",
  info: "bg-green-500/15 text-green-700 dark:text-green-400",
  warn: "bg-amber-500/15 text-amber-700 dark:text-amber-400",
  error: "bg-red-500/15 text-red-700 dark:text-red-400",
};

export function LevelBadge({ level }: { level: LogLevel }) {
  return (
    <span data-level={level} className={cx("inline-block w-12 shrink-0 rounded px-1 text-center font-semibold uppercase", LEVEL_TONE[level] ?? "bg-muted text-muted-fg")}>
      {level}
    </span>
  );
}

const pad = (n: number, width = 2) => String(n).padStart(width, "0");

/** "14:03:07.123", with the date in front when it is not today (the log keeps days). */
export function logTime(iso: string, now: Date = new Date()): string {
  const t = new Date(iso);
  if (Number.isNaN(t.getTime())) return iso;
  const time = `${pad(t.getHours())}:${pad(t.getMinutes())}:${pad(t.getSeconds())}.${pad(t.getMilliseconds(), 3)}`;
  const today = t.getFullYear() === now.getFullYear() && t.getMonth() === now.getMonth() && t.getDate() === now.getDate();
  return today ? time : `${t.getFullYear()}-${pad(t.getMonth() + 1)}-${pad(t.getDate())} ${time}`;
}

function IdLink({ label, id, href }: { label: string; id: string; href: string }) {
  return (
    <Link href={href} title={`${label} ${id}`} className="text-primary hover:underline">
      {label} {shortId(id)}
    </Link>
  );
}

/** Memoised: a follow appends to a list of up to 2000 and should render only the new lines. */
export const LogLine = memo(function LogLine({ record }: { record: LogRecord }) {
  const fields = record.fields && typeof record.fields === "object" ? record.fields : {};
  const fieldCount = Object.keys(fields).length;
  const tagged = record.task_id || record.vm_id || record.worker_id || record.execution_id;
  return (
    <li data-testid="log-record" data-log-id={record.id} className="px-2 py-1 hover:bg-muted/50">
      <div className="flex flex-wrap items-baseline gap-x-2">
        <time dateTime={record.timestamp} title={fullTime(record.timestamp)} className="shrink-0 text-muted-fg tabular-nums">
          {logTime(record.timestamp)}
        </time>
        <LevelBadge level={record.level} />
        <span className="max-w-full truncate text-muted-fg sm:max-w-64" title={record.target}>
          {record.target}
        </span>
        <span className="min-w-0 basis-full whitespace-pre-wrap break-words sm:flex-1 sm:basis-0">{record.message}</span>
      </div>
      {(tagged || fieldCount > 0) && (
        <div className="mt-0.5 flex flex-wrap items-baseline gap-x-3 pl-2 text-muted-fg">
          {record.task_id && <IdLink label="task" id={record.task_id} href={`/tasks/detail/?id=${encodeURIComponent(record.task_id)}`} />}
          {record.vm_id && <IdLink label="sandbox" id={record.vm_id} href={`/sandboxes/detail/?id=${encodeURIComponent(record.vm_id)}`} />}
          {record.worker_id && <IdLink label="worker" id={record.worker_id} href="/workers/" />}
          {/* Executions have no page of their own: the link narrows this log to one. */}
          {record.execution_id && <IdLink label="execution" id={record.execution_id} href={`/logs/?execution_id=${encodeURIComponent(record.execution_id)}`} />}
          {fieldCount > 0 && (
            <details className="basis-full">
              <summary className="cursor-pointer select-none">
                {fieldCount} field{fieldCount === 1 ? "" : "s"}
              </summary>
              <pre className="mt-1 max-h-64 overflow-auto whitespace-pre-wrap break-all rounded bg-muted p-2 text-fg">{JSON.stringify(fields, null, 2)}</pre>
            </details>
          )}
        </div>
      )}
    </li>
  );
});
