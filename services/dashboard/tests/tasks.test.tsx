import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { act, fireEvent, render, screen, waitFor } from "@testing-library/react";
import { SessionProvider } from "@/lib/session";
import TasksPage from "@/app/tasks/page";

const router = { push: vi.fn(), replace: vi.fn() };
let search = new URLSearchParams();
vi.mock("next/navigation", () => ({
  useRouter: () => router,
  useSearchParams: () => search,
  usePathname: () => "/tasks/",
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
const task = (id: string, extra: Record<string, unknown> = {}) => ({
  id,
  type: "vm:execute",
  status: "failed",
  payload: {},
  priority: 0,
  retry_count: 2,
  max_retries: 2,
  timeout_seconds: 600,
  created_at: now,
  scheduled_at: now,
  vm_id: "vm-1",
  worker_id: "w1",
  ...extra,
});

let fetchMock: ReturnType<typeof vi.fn>;
let byId: Record<string, unknown>;

beforeEach(() => {
  window.localStorage.setItem("aetherium.session", JSON.stringify({ baseUrl: "", token: "ak_test", kind: "api_key", name: "t", role: "viewer" }));
  FakeSocket.instances = [];
  router.replace.mockReset();
  byId = {};
  vi.stubGlobal("WebSocket", FakeSocket);
  fetchMock = vi.fn(async (url: string) => {
    const u = new URL(url, "http://x");
    if (u.pathname === "/api/v1/tasks") {
      const status = u.searchParams.get("status");
      const tasks = u.searchParams.get("cursor") ? [task("t-old")] : [task("t-1", { status: status ?? "failed" })];
      return Response.json({ tasks, total: 2, next_cursor: u.searchParams.get("cursor") ? null : "c1" });
    }
    const id = u.pathname.replace("/api/v1/tasks/", "");
    if (byId[id]) return Response.json(byId[id]);
    return Response.json({ error: "Not Found", message: "no such task", code: 404 }, { status: 404 });
  });
  vi.stubGlobal("fetch", fetchMock);
});

afterEach(() => vi.unstubAllGlobals());

function calls(): string[] {
  return fetchMock.mock.calls.map((c) => String(c[0]));
}

function page() {
  return render(
    <SessionProvider>
      <TasksPage />
    </SessionProvider>,
  );
}

describe("tasks page", () => {
  it("sends the URL's filters and a changed filter to the API, and keeps them in the URL", async () => {
    search = new URLSearchParams("status=failed&worker_id=w1");
    page();
    expect(screen.getByRole("heading", { name: "Tasks" })).toBeTruthy();
    await screen.findAllByTestId("task-row");
    expect(calls()).toContain("/api/v1/tasks?status=failed&worker_id=w1&limit=50");

    fireEvent.change(screen.getByLabelText("Type"), { target: { value: "vm:create" } });
    await waitFor(() => expect(calls()).toContain("/api/v1/tasks?type=vm%3Acreate&status=failed&worker_id=w1&limit=50"));
    expect(router.replace).toHaveBeenLastCalledWith("/tasks/?type=vm%3Acreate&status=failed&worker_id=w1", { scroll: false });

    fireEvent.change(screen.getByLabelText("Sandbox ID"), { target: { value: " vm-9 " } });
    fireEvent.submit(screen.getByRole("form", { name: "Filter tasks" }));
    await waitFor(() => expect(calls()).toContain("/api/v1/tasks?type=vm%3Acreate&status=failed&vm_id=vm-9&worker_id=w1&limit=50"));
  });

  it("pages with the cursor on Load more", async () => {
    search = new URLSearchParams();
    page();
    fireEvent.click(await screen.findByRole("button", { name: "Load more" }));
    await waitFor(() => expect(screen.getAllByTestId("task-row")).toHaveLength(2));
    expect(calls()).toContain("/api/v1/tasks?limit=50&cursor=c1");
    expect(screen.queryByRole("button", { name: "Load more" })).toBeNull();
  });

  it("applies live task events: updates a shown row, adds a new matching task on top, skips one that does not match", async () => {
    search = new URLSearchParams("status=running");
    page();
    await screen.findAllByTestId("task-row");
    const socket = FakeSocket.instances[0];
    expect(decodeURIComponent(socket.url)).toContain("types=task.*");

    // A shown task changes status.
    byId["t-1"] = task("t-1", { status: "completed" });
    await act(async () => socket.emit({ seq: 1, id: "e1", type: "task.completed", resource_id: "t-1", timestamp: now, data: {} }));
    await waitFor(() => expect(document.querySelector('[data-task-id="t-1"] [data-status]')?.textContent).toBe("completed"));

    // A new task that matches the filter goes on top.
    byId["t-new"] = task("t-new", { status: "running", type: "vm:create" });
    await act(async () => socket.emit({ seq: 2, id: "e2", type: "task.started", resource_id: "t-new", timestamp: now, data: {} }));
    await waitFor(() => expect(screen.getAllByTestId("task-row")[0].getAttribute("data-task-id")).toBe("t-new"));

    // One that does not match stays out.
    byId["t-other"] = task("t-other", { status: "pending" });
    await act(async () => socket.emit({ seq: 3, id: "e3", type: "task.created", resource_id: "t-other", timestamp: now, data: {} }));
    await waitFor(() => expect(calls()).toContain("/api/v1/tasks/t-other"));
    expect(screen.getAllByTestId("task-row").map((r) => r.getAttribute("data-task-id"))).toEqual(["t-new", "t-1"]);

    // A deleted archived task leaves the list.
    await act(async () => socket.emit({ seq: 4, id: "e4", type: "task.deleted", resource_id: "t-1", timestamp: now, data: {} }));
    expect(screen.getAllByTestId("task-row").map((r) => r.getAttribute("data-task-id"))).toEqual(["t-new"]);
  });
});
