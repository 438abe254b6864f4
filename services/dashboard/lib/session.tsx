"use client";

// Who is logged in, kept in localStorage so a reload keeps the session. A user
// logs in with a username and password (a 12 h session token, `as_…`) or pastes an
// API key (`ak_…`); either is then sent as a bearer token. The gateway URL is
// stored too: empty means "the origin that served this page" (the dashboard served
// by `aetherium up`), a URL points a separately deployed dashboard at a gateway.

import { createContext, useCallback, useContext, useEffect, useMemo, useState } from "react";
import { ApiClient, ApiError, normalizeBaseUrl } from "./api";
import type { LoginResponse, Role, WhoAmI } from "./types";

const STORAGE_KEY = "aetherium.session";

export interface StoredSession {
  baseUrl: string;
  token: string;
  kind: "session" | "api_key";
  /** Display name: the username, or the key's name. */
  name: string;
  role: Role;
  expiresAt?: string | null;
}

export function loadSession(): StoredSession | null {
  if (typeof window === "undefined") return null;
  try {
    const raw = window.localStorage.getItem(STORAGE_KEY);
    if (!raw) return null;
    const parsed = JSON.parse(raw) as StoredSession;
    if (!parsed.token) return null;
    if (parsed.expiresAt && Date.parse(parsed.expiresAt) < Date.now()) return null;
    return parsed;
  } catch {
    return null;
  }
}

function storeSession(session: StoredSession | null) {
  if (session) window.localStorage.setItem(STORAGE_KEY, JSON.stringify(session));
  else window.localStorage.removeItem(STORAGE_KEY);
}

const ROLE_RANK: Record<Role, number> = { viewer: 0, operator: 1, admin: 2 };

/** Whether `role` may do what `needed` may (viewer < operator < admin). */
export function roleAtLeast(role: Role | undefined, needed: Role): boolean {
  return role !== undefined && ROLE_RANK[role] >= ROLE_RANK[needed];
}

export interface SessionContextValue {
  /** null until read from storage (first render), then the session or undefined. */
  session: StoredSession | null | undefined;
  api: ApiClient;
  /** Set when the last session ended by itself (expired, revoked). */
  endedReason: string | null;
  loginWithPassword(baseUrl: string, username: string, password: string): Promise<void>;
  loginWithKey(baseUrl: string, key: string): Promise<void>;
  logout(): Promise<void>;
  can(needed: Role): boolean;
}

const SessionContext = createContext<SessionContextValue | null>(null);

export function SessionProvider({ children }: { children: React.ReactNode }) {
  const [session, setSession] = useState<StoredSession | null | undefined>(null);
  const [endedReason, setEndedReason] = useState<string | null>(null);

  useEffect(() => {
    setSession(loadSession() ?? undefined);
  }, []);

  const end = useCallback((reason: string | null) => {
    storeSession(null);
    setSession(undefined);
    setEndedReason(reason);
  }, []);

  const api = useMemo(
    () =>
      new ApiClient(session?.baseUrl ?? "", session?.token ?? null, (error: ApiError) =>
        end(`Signed out: ${error.message}`),
      ),
    [session, end],
  );

  const loginWithPassword = useCallback(async (baseUrl: string, username: string, password: string) => {
    const base = normalizeBaseUrl(baseUrl);
    const client = new ApiClient(base, null);
    const answer = await client.post<LoginResponse>("/auth/login", { username, password });
    const next: StoredSession = {
      baseUrl: base,
      token: answer.token,
      kind: "session",
      name: answer.user.username,
      role: answer.user.role,
      expiresAt: answer.expires_at,
    };
    storeSession(next);
    setEndedReason(null);
    setSession(next);
  }, []);

  const loginWithKey = useCallback(async (baseUrl: string, key: string) => {
    const base = normalizeBaseUrl(baseUrl);
    const token = key.trim();
    if (!token) throw new ApiError(400, "Bad Request", "Paste an API key.");
    const client = new ApiClient(base, token);
    const me = await client.get<WhoAmI>("/auth/me");
    const next: StoredSession = {
      baseUrl: base,
      token,
      kind: me.principal.kind === "session" ? "session" : "api_key",
      name: me.principal.name,
      role: me.principal.role,
      expiresAt: me.expires_at,
    };
    storeSession(next);
    setEndedReason(null);
    setSession(next);
  }, []);

  const logout = useCallback(async () => {
    if (session?.kind === "session") {
      // Ends the session on the server too; an API key is only forgotten here.
      await api.post("/auth/logout").catch(() => undefined);
    }
    end(null);
  }, [api, session, end]);

  const value = useMemo<SessionContextValue>(
    () => ({
      session,
      api,
      endedReason,
      loginWithPassword,
      loginWithKey,
      logout,
      can: (needed: Role) => roleAtLeast(session?.role, needed),
    }),
    [session, api, endedReason, loginWithPassword, loginWithKey, logout],
  );

  return <SessionContext.Provider value={value}>{children}</SessionContext.Provider>;
}

export function useSession(): SessionContextValue {
  const value = useContext(SessionContext);
  if (!value) throw new Error("useSession outside SessionProvider");
  return value;
}

/** The API client of the logged-in session. */
export function useApi(): ApiClient {
  return useSession().api;
}
