import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { act, fireEvent, render, screen, waitFor, within } from "@testing-library/react";
import { SessionProvider } from "@/lib/session";
import WorkersPage from "@/app/workers/page";

vi.mock("next/navigation", () => ({
  useRouter: () => ({ push: vi.fn(), replace: vi.fn() }),
  useSearchParams: () => new URLSearchParams(),
  usePathname: () => "/workers/",
}));

class FakeSocket {
  static instances: FakeSocket[] = [];
  url: string;
  onopen: (() => void) | null = null;
  onmessage: ((m: { data: string }) => void) | null = null;
  onclose: (() => void) | null = null;
  constructor(url: string) {
    this.url = url;
    FakeSocket.instances.push(this);
  }
  close() {}
  emit(event: unknown) {
    this.onmessage?.({ data: JSON.stringify(event) });
  }
}

const now = new Date().toISOString();
const worker = (id: string, extra: Record<string, unknown> = {}) => ({
  id,
  hostname: `host-${id}`,
  address: "10.0.0.1",
  zone: "eu-1",
  status: "active",
  capabilities: ["docker"],
  labels: { gpu: "true" },
  cpu_cores: 8,
  memory_mb: 0,
  max_vms: 10,
  vm_count: 3,
  used: { vms: 3, vcpus: 4, memory_mb: 768 },
  free_slots: 7,
  live: true,
  started_at: now,
  last_seen: now,
  ...extra,
});

const stats = {
  workers: { total: 2, active: 1, draining: 0, unhealthy: 0, offline: 1 },
  cpu_cores_total: 8,
  cpu_cores_used: 4,
  memory_mb_total: 0,
  memory_mb_used: 768,
  vms: { RUNNING: 3 },
  vms_total: 3,
  slots_total: 10,
  slots_used: 3,
  slots_free: 7,
  zones: ["eu-1", "us-1"],
  timestamp: now,
};

let fetchMock: ReturnType<typeof vi.fn>;
let current: Record<string, unknown>;

beforeEach(() => {
  FakeSocket.instances = [];
  vi.stubGlobal("WebSocket", FakeSocket);
  current = { w1: worker("w1"), w2: worker("w2", { status: "offline", live: false }) };
  fetchMock = vi.fn(async (url: string, init?: RequestInit) => {
    const method = init?.method ?? "GET";
    if (url === "/api/v1/cluster/stats") return Response.json(stats);
    if (url.startsWith("/api/v1/workers?") || url === "/api/v1/workers") return Response.json({ workers: Object.values(current), total: 2 });
    if (method === "POST" && url === "/api/v1/workers/w1/drain") return Response.json({ ...(current.w1 as object), status: "draining" });
    if (method === "GET" && url.startsWith("/api/v1/workers/")) return Response.json(current[url.split("/").pop()!]);
    return Response.json({ error: "Not Found", message: url, code: 404 }, { status: 404 });
  });
  vi.stubGlobal("fetch", fetchMock);
});

afterEach(() => vi.unstubAllGlobals());

function page(role: string) {
  window.localStorage.setItem("aetherium.session", JSON.stringify({ baseUrl: "", token: "ak_test", kind: "api_key", name: "t", role }));
  return render(
    <SessionProvider>
      <WorkersPage />
    </SessionProvider>,
  );
}

function card(id: string): HTMLElement {
  return document.querySelector(`[data-worker-id="${id}"]`) as HTMLElement;
}

describe("workers page", () => {
  it("shows each worker's capacity, and lets an admin drain an active worker", async () => {
    page("admin");
    expect(screen.getByRole("heading", { name: "Workers" })).toBeTruthy();
    await screen.findByText("host-w1");
    expect(screen.getByTestId("cluster-totals").textContent).toContain("3/10");
    expect(within(card("w1")).getByText("gpu=true")).toBeTruthy();
    expect(within(card("w1")).getByLabelText("VM slots 3 of 10")).toBeTruthy();
    // Offline: nothing to drain.
    expect(within(card("w2")).queryByRole("button")).toBeNull();

    fireEvent.click(within(card("w1")).getByRole("button", { name: "Drain" }));
    await waitFor(() => expect(within(card("w1")).getByRole("button", { name: "Activate" })).toBeTruthy());
    expect(card("w1").querySelector("[data-status]")?.textContent).toBe("draining");
  });

  it("hides Drain from an operator", async () => {
    page("operator");
    await screen.findByText("host-w1");
    expect(screen.queryByRole("button", { name: "Drain" })).toBeNull();
  });

  it("filters by status on the server and refetches a worker on its event", async () => {
    page("viewer");
    await screen.findByText("host-w1");
    fireEvent.change(screen.getByLabelText("Status"), { target: { value: "active" } });
    await waitFor(() => expect(fetchMock.mock.calls.map((c) => c[0])).toContain("/api/v1/workers?status=active"));

    current.w1 = worker("w1", { status: "unhealthy", status_message: "docker does not answer" });
    await act(async () => FakeSocket.instances[0].emit({ seq: 5, id: "e5", type: "worker.unhealthy", resource_id: "w1", timestamp: now, data: {} }));
    // No longer matches the "active" filter: it leaves the list.
    await waitFor(() => expect(card("w1")).toBeNull());
  });
});
