import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { act, render, screen, waitFor, within } from "@testing-library/react";
import { SessionProvider } from "@/lib/session";
import OverviewPage from "@/app/page";

vi.mock("next/navigation", () => ({
  useRouter: () => ({ push: vi.fn(), replace: vi.fn() }),
  useSearchParams: () => new URLSearchParams(),
  usePathname: () => "/",
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
}

const now = new Date().toISOString();

const task = (id: string, extra: Record<string, unknown> = {}) => ({
  id,
  type: "vm:create",
  status: "completed",
  payload: {},
  priority: 0,
  retry_count: 0,
  max_retries: 3,
  timeout_seconds: 1500,
  created_at: now,
  scheduled_at: now,
  vm_id: "vm-1",
  worker_id: "w1",
  ...extra,
});

const answers: Record<string, [number, unknown]> = {
  "/api/v1/cluster/stats": [
    200,
    {
      workers: { total: 1, active: 1, draining: 0, unhealthy: 0, offline: 0 },
      cpu_cores_total: 8,
      cpu_cores_used: 2,
      memory_mb_total: 8192,
      memory_mb_used: 512,
      vms: { RUNNING: 2, FAILED: 1 },
      vms_total: 3,
      slots_total: 10,
      slots_used: 2,
      slots_free: 8,
      zones: ["eu-1"],
      timestamp: now,
    },
  ],
  "/api/v1/workers": [
    200,
    {
      total: 1,
      workers: [
        {
          id: "w1",
          hostname: "host-one",
          address: "10.0.0.1",
          zone: "eu-1",
          status: "active",
          capabilities: ["docker"],
          labels: {},
          cpu_cores: 8,
          memory_mb: 8192,
          max_vms: 10,
          vm_count: 3,
          used: { vms: 2, vcpus: 2, memory_mb: 512 },
          free_slots: 8,
          live: true,
          started_at: now,
          last_seen: now,
        },
      ],
    },
  ],
  "/api/v1/queue/stats": [
    200,
    {
      pending: 4,
      scheduled: 0,
      running: 1,
      completed: 9,
      failed: 1,
      cancelled: 0,
      queues: ["critical", "high", "default", "low"].map((queue, i) => ({ queue, pending: i, active: 0, scheduled: 0, retry: 0, archived: 0, processed: 0, failed: 0, cancelled: 0 })),
    },
  ],
  "/api/v1/queue/history?minutes=30": [500, { error: "Internal Server Error", message: "the queue history is unavailable", code: 500 }],
  "/api/v1/tasks?limit=10": [200, { tasks: [task("t-recent")], total: 1, next_cursor: null }],
  "/api/v1/tasks?status=failed&limit=5": [200, { tasks: [task("t-bad", { status: "failed", error: "image not found: ubuntu:99" })], total: 1, next_cursor: null }],
};

beforeEach(() => {
  window.localStorage.setItem("aetherium.session", JSON.stringify({ baseUrl: "", token: "ak_test", kind: "api_key", name: "t", role: "admin" }));
  FakeSocket.instances = [];
  vi.stubGlobal("WebSocket", FakeSocket);
  vi.stubGlobal(
    "fetch",
    vi.fn(async (url: string) => {
      const path = url.replace(window.location.origin, "");
      const [status, body] = answers[path] ?? [404, { error: "Not Found", message: `no mock for ${path}`, code: 404 }];
      return new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json" } });
    }),
  );
});

afterEach(() => vi.unstubAllGlobals());

describe("overview", () => {
  it("renders every section and shows a failing call's error in its own section only", async () => {
    render(
      <SessionProvider>
        <OverviewPage />
      </SessionProvider>,
    );
    expect(screen.getByRole("heading", { name: "Overview" })).toBeTruthy();

    // The failing history call shows its message in the throughput section...
    const throughput = await screen.findByTestId("overview-throughput");
    expect((await within(throughput).findByRole("alert")).textContent).toContain("Internal Server Error: the queue history is unavailable");

    // ...while every other section shows its data.
    expect(await screen.findByText("host-one")).toBeTruthy();
    expect(screen.getByRole("img", { name: "Sandboxes by state: 2 RUNNING, 1 FAILED" })).toBeTruthy();
    const queue = screen.getByTestId("overview-queue");
    expect(within(queue).getByText("critical")).toBeTruthy();
    expect(within(screen.getByTestId("overview-recent-tasks")).getAllByTestId("task-row")).toHaveLength(1);
    expect(await screen.findByText("image not found: ubuntu:99")).toBeTruthy();
    expect(screen.getAllByRole("alert")).toHaveLength(1);

    // One event stream for the whole page, filtered to what the sections show.
    expect(FakeSocket.instances).toHaveLength(1);
    expect(decodeURIComponent(FakeSocket.instances[0].url)).toContain("types=vm.*,task.*,worker.*");
  });

  it("refreshes only the affected sections on live events, once for a burst", async () => {
    render(
      <SessionProvider>
        <OverviewPage />
      </SessionProvider>,
    );
    await screen.findByText("host-one");
    const fetchMock = fetch as unknown as ReturnType<typeof vi.fn>;
    const count = (path: string) => fetchMock.mock.calls.filter((c) => c[0] === path).length;
    expect(count("/api/v1/cluster/stats")).toBe(1);
    const socket = FakeSocket.instances[0];
    await act(async () => {
      for (const [seq, type] of [[1, "vm.created"], [2, "vm.started"], [3, "vm.stopped"]] as const) {
        socket.onmessage?.({ data: JSON.stringify({ seq, id: `e${seq}`, type, resource_id: "vm-1", timestamp: now, data: {} }) });
      }
    });
    await waitFor(() => expect(count("/api/v1/cluster/stats")).toBe(2), { timeout: 2500 });
    expect(count("/api/v1/workers")).toBe(2);
    // Task sections did not hear about it.
    expect(count("/api/v1/tasks?limit=10")).toBe(1);
    await new Promise((r) => setTimeout(r, 1200));
    expect(count("/api/v1/cluster/stats")).toBe(2);
  });

  it("says how to add a worker when none is registered", async () => {
    answers["/api/v1/workers"] = [200, { total: 0, workers: [] }];
    render(
      <SessionProvider>
        <OverviewPage />
      </SessionProvider>,
    );
    expect(await screen.findByText("No workers are registered")).toBeTruthy();
  });
});
