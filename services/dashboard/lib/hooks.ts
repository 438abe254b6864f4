"use client";

import { useCallback, useEffect, useRef, useState } from "react";
import { useRouter, useSearchParams } from "next/navigation";
import type { ApiClient } from "./api";
import { errorMessage, queryString } from "./api";
import { useApi } from "./session";

export interface Resource<T> {
  data: T | undefined;
  /** A readable message when the last load failed. */
  error: string | null;
  loading: boolean;
  /** Loads again (after an action, or when an event says something changed). */
  reload(): void;
  /** Replaces the data locally (an event carried the new state). */
  setData: React.Dispatch<React.SetStateAction<T | undefined>>;
}

/**
 * Loads `fetcher(api)` when mounted and whenever `deps` change. Not a polling
 * loop: pages refresh from live events and call `reload` after their own actions.
 */
export function useResource<T>(
  fetcher: (api: ApiClient, signal: AbortSignal) => Promise<T>,
  deps: React.DependencyList,
): Resource<T> {
  const api = useApi();
  const [data, setData] = useState<T | undefined>(undefined);
  const [error, setError] = useState<string | null>(null);
  const [loading, setLoading] = useState(true);
  const [generation, setGeneration] = useState(0);
  const fetcherRef = useRef(fetcher);
  fetcherRef.current = fetcher;

  useEffect(() => {
    if (!api.token) return;
    const controller = new AbortController();
    setLoading(true);
    fetcherRef
      .current(api, controller.signal)
      .then((value) => {
        if (controller.signal.aborted) return;
        setData(value);
        setError(null);
      })
      .catch((e: unknown) => {
        if (controller.signal.aborted) return;
        setError(errorMessage(e));
      })
      .finally(() => {
        if (!controller.signal.aborted) setLoading(false);
      });
    return () => controller.abort();
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [api, generation, ...deps]);

  const reload = useCallback(() => setGeneration((g) => g + 1), []);
  return { data, error, loading, reload, setData };
}

/**
 * Runs an action (a button's click) and remembers its error and whether it is
 * running, so a button can show a spinner and the page the message.
 */
export function useAction<A extends unknown[], R>(action: (...args: A) => Promise<R>) {
  const [running, setRunning] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const run = useCallback(
    async (...args: A): Promise<R | undefined> => {
      setRunning(true);
      setError(null);
      try {
        return await action(...args);
      } catch (e) {
        setError(errorMessage(e));
        return undefined;
      } finally {
        setRunning(false);
      }
    },
    [action],
  );
  return { run, running, error, setError };
}

/** The `?id=` of a detail page (static export: ids are not in the path). */
export function useIdParam(name = "id"): string | null {
  const params = useSearchParams();
  return params.get(name);
}

/**
 * A list page's filters, kept in the URL's query string so a reload or a link keeps
 * them: `filters` are applied (what the list shows), `draft` is what is being typed.
 * `apply` normalises a draft (trims ids, say), applies it and rewrites the URL; a
 * URL changed under the page (a link, back/forward) is followed.
 */
export function useUrlFilters<F extends { [K in keyof F]: string }>(
  path: string,
  parse: (params: URLSearchParams) => F,
  normalize: (draft: F) => F,
) {
  const router = useRouter();
  const params = useSearchParams();
  const [filters, setFilters] = useState<F>(() => parse(new URLSearchParams(params?.toString() ?? "")));
  const [draft, setDraft] = useState<F>(filters);
  const filtersRef = useRef(filters);
  filtersRef.current = filters;
  const parseRef = useRef(parse);
  parseRef.current = parse;

  const paramsKey = params?.toString() ?? "";
  useEffect(() => {
    const next = parseRef.current(new URLSearchParams(paramsKey));
    if (sameValues(next, filtersRef.current)) return;
    setFilters(next);
    setDraft(next);
  }, [paramsKey]);

  const apply = (next: F) => {
    const normalized = normalize(next);
    setDraft(normalized);
    if (sameValues(normalized, filtersRef.current)) return;
    setFilters(normalized);
    router.replace(`${path}${queryString({ ...normalized })}`, { scroll: false });
  };

  const filtered = (Object.values(filters) as string[]).some(Boolean);
  // `filtersRef` reads the applied filters from async work (a late page of an old list).
  return { filters, filtersRef, draft, setDraft, apply, filtered };
}

function sameValues<F extends { [K in keyof F]: string }>(a: F, b: F): boolean {
  const keys = new Set([...Object.keys(a), ...Object.keys(b)] as (keyof F)[]);
  return [...keys].every((k) => a[k] === b[k]);
}
