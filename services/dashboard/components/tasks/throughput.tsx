"use client";

import { BarChart, Sparkline } from "@/components/charts";
import type { QueueHistory } from "@/lib/types";

function minuteLabel(iso: string): string {
  const t = new Date(iso);
  return Number.isNaN(t.getTime()) ? iso : t.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

/** Completed vs failed per minute as bars, created as a line (the queue page). */
export function ThroughputChart({ history }: { history: QueueHistory }) {
  const b = history.buckets;
  return (
    <BarChart
      label="Tasks per minute"
      slotLabels={b.map((x) => minuteLabel(x.start))}
      series={[
        { name: "completed", tone: "green", values: b.map((x) => x.completed) },
        { name: "failed", tone: "red", values: b.map((x) => x.failed) },
      ]}
      line={{ name: "created", tone: "primary", values: b.map((x) => x.created) }}
    />
  );
}

/** Three small lines with their totals (the overview). */
export function ThroughputSparklines({ history }: { history: QueueHistory }) {
  const b = history.buckets;
  const rows = [
    { name: "created", tone: "primary" as const, values: b.map((x) => x.created) },
    { name: "completed", tone: "green" as const, values: b.map((x) => x.completed) },
    { name: "failed", tone: "red" as const, values: b.map((x) => x.failed) },
  ];
  return (
    <div className="flex flex-col gap-2">
      {rows.map((r) => (
        <div key={r.name} className="grid grid-cols-[5.5rem_1fr_2.5rem] items-center gap-2 text-xs">
          <span className="text-muted-fg">{r.name}</span>
          <Sparkline values={r.values} tone={r.tone} label={`Tasks ${r.name} per minute`} />
          <span className="text-right font-medium tabular-nums">{r.values.reduce((a, v) => a + v, 0)}</span>
        </div>
      ))}
    </div>
  );
}
