"use client";

import { useCallback, useEffect, useRef } from "react";

/**
 * Coalesces bursts of live events into at most one call of `fn` per `ms`: a VM
 * creation publishes several events within a second, and each section should
 * refetch once for them, not once per event.
 */
export function useCoalesced(fn: () => void, ms = 1000): () => void {
  const fnRef = useRef(fn);
  fnRef.current = fn;
  const timer = useRef<ReturnType<typeof setTimeout> | null>(null);
  useEffect(
    () => () => {
      if (timer.current) clearTimeout(timer.current);
    },
    [],
  );
  return useCallback(() => {
    if (timer.current) return;
    timer.current = setTimeout(() => {
      timer.current = null;
      fnRef.current();
    }, ms);
  }, [ms]);
}
