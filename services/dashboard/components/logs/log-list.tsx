"use client";

// The records, oldest at the top and newest at the bottom like a terminal. It keeps
// to the bottom while the reader is there (new records scroll into view) and stays
// put when they have scrolled up to read, or when older records are loaded above.

import { useLayoutEffect, useRef, useState } from "react";
import { Button, ErrorBanner } from "@/components/ui";
import type { LogRecord } from "@/lib/types";
import { LogLine } from "./log-line";

/** Within this many pixels of the end counts as "at the bottom". */
const BOTTOM_SLACK = 24;

export function LogList({
  records,
  older,
  onLoadOlder,
  loadingOlder,
  olderError,
}: {
  records: LogRecord[];
  /** "more": Load older is possible; "capped": older ones exist but the view is full; "none": the start of the log. */
  older: "more" | "capped" | "none";
  onLoadOlder: () => void;
  loadingOlder: boolean;
  olderError: string | null;
}) {
  const box = useRef<HTMLDivElement>(null);
  const atBottomRef = useRef(true);
  const [atBottom, setAtBottom] = useState(true);
  const shape = useRef({ first: -1, height: 0 });

  useLayoutEffect(() => {
    const el = box.current;
    if (!el) return;
    const first = records[0]?.id ?? -1;
    const prev = shape.current;
    if (atBottomRef.current) {
      el.scrollTop = el.scrollHeight;
    } else if (prev.first !== -1 && first < prev.first) {
      // Older records went in above what is being read: keep it where it was.
      el.scrollTop += el.scrollHeight - prev.height;
    }
    shape.current = { first, height: el.scrollHeight };
  }, [records]);

  const onScroll = () => {
    const el = box.current;
    if (!el) return;
    const bottom = el.scrollHeight - el.scrollTop - el.clientHeight <= BOTTOM_SLACK;
    atBottomRef.current = bottom;
    setAtBottom(bottom);
    shape.current.height = el.scrollHeight;
  };

  const toBottom = () => {
    const el = box.current;
    if (!el) return;
    el.scrollTop = el.scrollHeight;
    atBottomRef.current = true;
    setAtBottom(true);
  };

  return (
    <div className="relative">
      <div
        ref={box}
        onScroll={onScroll}
        data-testid="log-list"
        // Scroll anchoring would move the view a second time on top of ours.
        style={{ overflowAnchor: "none" }}
        className="max-h-[70vh] min-h-48 overflow-y-auto rounded-lg border border-border bg-card font-mono text-xs"
      >
        <div className="flex flex-wrap items-center justify-center gap-2 border-b border-border px-2 py-2 font-sans text-muted-fg">
          {older === "more" && (
            <Button size="sm" busy={loadingOlder} onClick={onLoadOlder}>
              Load older
            </Button>
          )}
          {older === "capped" && <span>This view keeps the newest {records.length} records. Narrow the filters to see older ones.</span>}
          {older === "none" && <span>Start of the retained log for these filters.</span>}
        </div>
        {olderError && (
          <div className="px-2 pt-2 font-sans">
            <ErrorBanner error={olderError} onRetry={onLoadOlder} />
          </div>
        )}
        <ol aria-label="Log records" className="divide-y divide-border/60">
          {records.map((record) => (
            <LogLine key={record.id} record={record} />
          ))}
        </ol>
      </div>
      {!atBottom && (
        <Button size="sm" variant="primary" className="absolute bottom-3 right-5 shadow" onClick={toBottom}>
          ↓ Newest
        </Button>
      )}
    </div>
  );
}
