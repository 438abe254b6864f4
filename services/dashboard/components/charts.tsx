"use client";

// Tiny SVG charts for the overview and the queue page. No chart library: these are a
// few dozen lines each, and a library would weigh more than the pages themselves.
// Colours are Tailwind fill/stroke classes (theme variables), so they follow the
// light and dark themes; every chart is role="img" with its numbers in aria-label.

import { cx } from "./ui";

/** A fill class per tone (also used for legends as bg-*). */
export const TONES = {
  primary: { fill: "fill-primary", stroke: "stroke-primary", bg: "bg-primary" },
  green: { fill: "fill-green-500", stroke: "stroke-green-500", bg: "bg-green-500" },
  amber: { fill: "fill-amber-500", stroke: "stroke-amber-500", bg: "bg-amber-500" },
  red: { fill: "fill-red-500", stroke: "stroke-red-500", bg: "bg-red-500" },
  sky: { fill: "fill-sky-500", stroke: "stroke-sky-500", bg: "bg-sky-500" },
  zinc: { fill: "fill-zinc-400", stroke: "stroke-zinc-400", bg: "bg-zinc-400" },
} as const;

export type Tone = keyof typeof TONES;

/** A line over `values` (oldest first), scaled to its own maximum. */
export function Sparkline({ values, label, tone = "primary", className }: { values: number[]; label: string; tone?: Tone; className?: string }) {
  const width = 120;
  const height = 32;
  const max = Math.max(1, ...values);
  const step = values.length > 1 ? width / (values.length - 1) : 0;
  const points = values.map((v, i) => `${(i * step).toFixed(1)},${(height - 2 - (v / max) * (height - 4)).toFixed(1)}`).join(" ");
  const total = values.reduce((a, b) => a + b, 0);
  return (
    <svg
      role="img"
      aria-label={`${label}: ${total} in total over ${values.length} points, at most ${Math.max(0, ...values)}`}
      viewBox={`0 0 ${width} ${height}`}
      preserveAspectRatio="none"
      className={cx("h-8 w-full", className)}
    >
      {values.length > 1 ? (
        <polyline points={points} fill="none" strokeWidth={1.5} vectorEffect="non-scaling-stroke" className={TONES[tone].stroke} />
      ) : (
        <line x1={0} x2={width} y1={height - 2} y2={height - 2} strokeWidth={1} className="stroke-border" />
      )}
    </svg>
  );
}

export interface Segment {
  label: string;
  value: number;
  tone: Tone;
}

/** One horizontal bar split into segments by value, with a legend under it. */
export function StackedBar({ segments, label }: { segments: Segment[]; label: string }) {
  const shown = segments.filter((s) => s.value > 0);
  const total = shown.reduce((a, s) => a + s.value, 0);
  let x = 0;
  return (
    <div className="flex flex-col gap-2">
      <svg
        role="img"
        aria-label={`${label}: ${total ? shown.map((s) => `${s.value} ${s.label}`).join(", ") : "none"}`}
        viewBox="0 0 100 6"
        preserveAspectRatio="none"
        className="h-3 w-full overflow-hidden rounded-full"
      >
        <rect x={0} y={0} width={100} height={6} className="fill-muted" />
        {shown.map((s) => {
          const w = (s.value / total) * 100;
          const rect = <rect key={s.label} data-segment={s.label} x={x} y={0} width={w} height={6} className={TONES[s.tone].fill} />;
          x += w;
          return rect;
        })}
      </svg>
      <ul className="flex flex-wrap gap-x-3 gap-y-1 text-xs text-muted-fg">
        {shown.map((s) => (
          <li key={s.label} className="flex items-center gap-1">
            <span className={cx("inline-block h-2 w-2 rounded-sm", TONES[s.tone].bg)} aria-hidden />
            {s.label} <span className="font-medium tabular-nums text-fg">{s.value}</span>
          </li>
        ))}
      </ul>
    </div>
  );
}

export interface Series {
  name: string;
  values: number[];
  tone: Tone;
}

/**
 * Grouped bars: one group per slot (a minute), one bar per series; `line` is drawn
 * over the bars (e.g. tasks created per minute). All series have the same length.
 */
export function BarChart({ series, line, label, slotLabels }: { series: Series[]; line?: Series; label: string; slotLabels?: string[] }) {
  const slots = Math.max(0, ...series.map((s) => s.values.length), line?.values.length ?? 0);
  const width = Math.max(120, slots * 8);
  const height = 60;
  const max = Math.max(1, ...series.flatMap((s) => s.values), ...(line?.values ?? []));
  const slotWidth = slots ? width / slots : width;
  const barWidth = Math.max(1, (slotWidth * 0.8) / Math.max(1, series.length));
  const y = (v: number) => height - (v / max) * (height - 2);
  const summary = [...series, ...(line ? [line] : [])].map((s) => `${s.values.reduce((a, b) => a + b, 0)} ${s.name}`).join(", ");
  return (
    <div className="flex flex-col gap-2">
      <svg role="img" aria-label={`${label}: ${summary} over ${slots} minutes`} viewBox={`0 0 ${width} ${height}`} preserveAspectRatio="none" className="h-24 w-full">
        <line x1={0} x2={width} y1={height - 0.5} y2={height - 0.5} strokeWidth={1} className="stroke-border" />
        {series.map((s, si) =>
          s.values.map((v, i) => (
            <rect
              key={`${s.name}-${i}`}
              data-bar={s.name}
              x={i * slotWidth + slotWidth * 0.1 + si * barWidth}
              y={y(v)}
              width={barWidth}
              height={height - y(v)}
              className={TONES[s.tone].fill}
            >
              <title>{`${slotLabels?.[i] ?? `#${i + 1}`}: ${v} ${s.name}`}</title>
            </rect>
          )),
        )}
        {line && line.values.length > 1 && (
          <polyline
            points={line.values.map((v, i) => `${(i * slotWidth + slotWidth / 2).toFixed(1)},${y(v).toFixed(1)}`).join(" ")}
            fill="none"
            strokeWidth={1.5}
            vectorEffect="non-scaling-stroke"
            className={TONES[line.tone].stroke}
          />
        )}
      </svg>
      <ul className="flex flex-wrap gap-x-3 gap-y-1 text-xs text-muted-fg">
        {[...series, ...(line ? [line] : [])].map((s) => (
          <li key={s.name} className="flex items-center gap-1">
            <span className={cx("inline-block h-2 w-2 rounded-sm", TONES[s.tone].bg)} aria-hidden />
            {s.name} <span className="font-medium tabular-nums text-fg">{s.values.reduce((a, b) => a + b, 0)}</span>
          </li>
        ))}
      </ul>
    </div>
  );
}
