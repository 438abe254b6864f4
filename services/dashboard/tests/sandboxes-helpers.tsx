// Shared by the sandbox page tests: a session, a fetch that answers by route, and a
// WebSocket stand-in the tests drive by hand.
import { render } from "@testing-library/react";
import { vi } from "vitest";
import { SessionProvider, useSession } from "@/lib/session";
import type { Vm } from "@/lib/types";

export function vm(overrides: Partial<Vm> = {}): Vm {
  return {
    id: "vm-0001-aaaa-bbbb-cccc",
    name: "alpha",
    status: "RUNNING",
    orchestrator: "docker",
    image: "ubuntu:24.04",
    vcpu_count: 2,
    memory_mb: 512,
    worker_id: "worker-1",
    created_at: new Date(Date.now() - 120_000).toISOString(),
    started_at: new Date(Date.now() - 100_000).toISOString(),
    metadata: {},
    ...overrides,
  };
}

export function json(status: number, body: unknown): Response {
  return new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json" } });
}

export interface Call {
  method: string;
  path: string;
  query: URLSearchParams;
  body: unknown;
}

/** Stubs fetch; `route` answers each call (by method and path under /api/v1). */
export function stubFetch(route: (call: Call) => Response | Promise<Response>) {
  const calls: Call[] = [];
  vi.stubGlobal(
    "fetch",
    vi.fn(async (input: string, init: RequestInit = {}) => {
      const url = new URL(input, "http://localhost");
      let body: unknown = init.body;
      if (typeof init.body === "string") body = JSON.parse(init.body);
      const call = { method: init.method ?? "GET", path: url.pathname.replace(/^\/api\/v1/, ""), query: url.searchParams, body };
      calls.push(call);
      return route(call);
    }),
  );
  return calls;
}

/** A WebSocket the test drives: every socket the code opens is in `instances`. */
export class FakeSocket {
  static CONNECTING = 0;
  static OPEN = 1;
  static CLOSING = 2;
  static CLOSED = 3;
  static instances: FakeSocket[] = [];
  url: string;
  readyState = FakeSocket.CONNECTING;
  binaryType = "blob";
  sent: unknown[] = [];
  onopen: ((e: unknown) => void) | null = null;
  onmessage: ((e: { data: unknown }) => void) | null = null;
  onclose: ((e: { code: number; reason: string }) => void) | null = null;
  onerror: ((e: unknown) => void) | null = null;

  constructor(url: string) {
    this.url = url;
    FakeSocket.instances.push(this);
  }
  send(data: unknown) {
    this.sent.push(data);
  }
  close() {
    this.readyState = FakeSocket.CLOSED;
  }
  // Test side:
  open() {
    this.readyState = FakeSocket.OPEN;
    this.onopen?.({});
  }
  receive(data: unknown) {
    // Text and binary frames as they are; an object is sent as its JSON. (No
    // `instanceof ArrayBuffer`: jsdom's and Node's buffers come from different realms.)
    const raw = typeof data === "string" || (typeof data === "object" && data !== null && "byteLength" in data);
    this.onmessage?.({ data: raw ? data : JSON.stringify(data) });
  }
  serverClose(code = 1000, reason = "") {
    this.readyState = FakeSocket.CLOSED;
    this.onclose?.({ code, reason });
  }
}

export function stubWebSocket() {
  FakeSocket.instances = [];
  vi.stubGlobal("WebSocket", FakeSocket);
}

/** The events socket (GET /events) the page opened, if any. */
export function eventSocket(types: string): FakeSocket | undefined {
  return FakeSocket.instances.find((s) => s.url.includes("/api/v1/events") && new URL(s.url).searchParams.get("types") === types);
}

/** Renders once the session is read from storage, as the app's shell does. */
function WhenSignedIn({ children }: { children: React.ReactNode }) {
  const { session } = useSession();
  return session ? <>{children}</> : null;
}

export function renderSignedIn(ui: React.ReactNode, role: "viewer" | "operator" | "admin" = "admin") {
  window.localStorage.setItem("aetherium.session", JSON.stringify({ baseUrl: "", token: "ak_test", kind: "api_key", name: "t", role }));
  return render(
    <SessionProvider>
      <WhenSignedIn>{ui}</WhenSignedIn>
    </SessionProvider>,
  );
}
