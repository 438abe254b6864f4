"use client";

import type { ConnectionState } from "@/lib/events";
import { cx } from "@/components/ui";

const LABEL: Record<ConnectionState, string> = {
  connecting: "connecting…",
  live: "live",
  reconnecting: "reconnecting…",
};

/** Whether the page's live events are flowing: a dot and a word. */
export function LiveIndicator({ state }: { state: ConnectionState }) {
  return (
    <span
      data-testid="live-state"
      data-state={state}
      title={state === "live" ? "Updates arrive as they happen" : "Live updates are paused until the connection is back"}
      className="inline-flex items-center gap-1.5 text-xs text-muted-fg"
    >
      <span className={cx("h-2 w-2 rounded-full", state === "live" ? "bg-green-500" : "animate-pulse bg-amber-500")} />
      {LABEL[state]}
    </span>
  );
}
