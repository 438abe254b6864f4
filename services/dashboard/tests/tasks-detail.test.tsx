import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { act, fireEvent, render, screen, waitFor, within } from "@testing-library/react";
import { SessionProvider } from "@/lib/session";
import TaskDetailPage from "@/app/tasks/detail/page";

const router = { push: vi.fn(), replace: vi.fn() };
vi.mock("next/navigation", () => ({
  useRouter: () => router,
  useSearchParams: () => new URLSearchParams("id=t1"),
  usePathname: () => "/tasks/detail/",
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
const failedTask = {
  id: "t1",
  type: "vm:create",
  status: "failed",
  payload: { vm_id: "vm-1", image: "ubuntu" },
  result: null,
  error: "image pull failed",
  priority: 5,
  retry_count: 3,
  max_retries: 3,
  timeout_seconds: 1500,
  created_at: now,
  scheduled_at: now,
  started_at: now,
  completed_at: now,
  vm_id: "vm-1",
  worker_id: "w1",
};

let fetchMock: ReturnType<typeof vi.fn>;

function serve(task: Record<string, unknown>, extra: (method: string, path: string) => Response | undefined = () => undefined) {
  fetchMock = vi.fn(async (url: string, init?: RequestInit) => {
    const method = init?.method ?? "GET";
    const answer = extra(method, url);
    if (answer) return answer;
    if (method === "GET" && url === "/api/v1/tasks/t1") return Response.json(task);
    return Response.json({ error: "Not Found", message: `no mock for ${method} ${url}`, code: 404 }, { status: 404 });
  });
  vi.stubGlobal("fetch", fetchMock);
}

function page(role = "operator") {
  window.localStorage.setItem("aetherium.session", JSON.stringify({ baseUrl: "", token: "ak_test", kind: "api_key", name: "t", role }));
  return render(
    <SessionProvider>
      <TaskDetailPage />
    </SessionProvider>,
  );
}

beforeEach(() => {
  FakeSocket.instances = [];
  router.push.mockReset();
  vi.stubGlobal("WebSocket", FakeSocket);
});

afterEach(() => vi.unstubAllGlobals());

describe("task detail", () => {
  it("offers no Retry or Delete for a failed task that is not archived", async () => {
    serve(failedTask);
    page();
    expect(await screen.findByText("image pull failed")).toBeTruthy();
    expect(screen.queryByRole("button", { name: "Retry" })).toBeNull();
    expect(screen.queryByRole("button", { name: "Delete" })).toBeNull();
    // Finished: nothing to cancel either.
    expect(screen.queryByRole("button", { name: "Cancel task" })).toBeNull();
  });

  it("retries an archived task with POST …/retry and shows it pending again", async () => {
    serve({ ...failedTask, archived_at: now }, (method, url) =>
      method === "POST" && url === "/api/v1/tasks/t1/retry"
        ? Response.json({ ...failedTask, status: "pending", error: null, retry_count: 0, started_at: null, completed_at: null, archived_at: null })
        : undefined,
    );
    page();
    fireEvent.click(await screen.findByRole("button", { name: "Retry" }));
    await waitFor(() => expect(screen.getByRole("heading", { level: 1 }).querySelector("[data-status]")?.textContent).toBe("pending"));
    expect(fetchMock.mock.calls.some(([url, init]) => url === "/api/v1/tasks/t1/retry" && init?.method === "POST")).toBe(true);
    expect(screen.getByText("The task is queued again.")).toBeTruthy();
    // No longer archived: Retry goes; pending: Cancel appears.
    expect(screen.queryByRole("button", { name: "Retry" })).toBeNull();
    expect(screen.getByRole("button", { name: "Cancel task" })).toBeTruthy();
  });

  it("hides the actions from a viewer", async () => {
    serve({ ...failedTask, archived_at: now });
    page("viewer");
    await screen.findByText("image pull failed");
    expect(screen.queryByRole("button", { name: "Retry" })).toBeNull();
  });

  it("shows a refused cancel readably", async () => {
    serve({ ...failedTask, status: "running", completed_at: null, error: null }, (method, url) =>
      method === "POST" && url === "/api/v1/tasks/t1/cancel"
        ? Response.json({ error: "Conflict", message: "task t1 is a vm:delete: a deletion runs to its end", code: 409 }, { status: 409 })
        : undefined,
    );
    page();
    fireEvent.click(await screen.findByRole("button", { name: "Cancel task" }));
    expect((await screen.findByRole("alert")).textContent).toContain("Conflict: task t1 is a vm:delete: a deletion runs to its end");
  });

  it("deletes an archived task after confirmation and goes back to the list", async () => {
    serve({ ...failedTask, archived_at: now }, (method, url) => (method === "DELETE" && url === "/api/v1/tasks/t1" ? new Response(null, { status: 204 }) : undefined));
    page();
    fireEvent.click(await screen.findByRole("button", { name: "Delete" }));
    const dialog = screen.getByRole("dialog", { hidden: true });
    fireEvent.click(within(dialog).getByRole("button", { name: "Delete", hidden: true }));
    await waitFor(() => expect(router.push).toHaveBeenCalledWith("/tasks/"));
  });

  it("replays the task's events into the timeline", async () => {
    serve(failedTask);
    page();
    await screen.findByText("image pull failed");
    const socket = FakeSocket.instances[0];
    const url = decodeURIComponent(socket.url);
    expect(url).toContain("resource_id=t1");
    expect(url).toContain("after=0");
    await act(async () => {
      socket.emit({ seq: 1, id: "e1", type: "task.started", resource_id: "t1", timestamp: now, data: { attempt: 1, worker_id: "w1" } });
      socket.emit({ seq: 2, id: "e2", type: "task.started", resource_id: "t1", timestamp: now, data: { attempt: 2, worker_id: "w2" } });
      socket.emit({ seq: 3, id: "e3", type: "task.failed", resource_id: "t1", timestamp: now, data: { error: "image pull failed" } });
    });
    const timeline = screen.getByTestId("task-timeline");
    expect(within(timeline).getByText("attempt 1 · on w1")).toBeTruthy();
    expect(within(timeline).getByText("attempt 2 · on w2")).toBeTruthy();
    expect(within(timeline).getByText("Failed for good")).toBeTruthy();
  });
});
