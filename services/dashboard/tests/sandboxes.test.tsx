import { act, fireEvent, screen, waitFor, within } from "@testing-library/react";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import SandboxesPage from "@/app/sandboxes/page";
import SandboxDetailPage from "@/app/sandboxes/detail/page";
import { eventSocket, json, renderSignedIn, stubFetch, stubWebSocket, vm } from "./sandboxes-helpers";

const push = vi.fn();
let search = new URLSearchParams();
vi.mock("next/navigation", () => ({
  useRouter: () => ({ push, replace: vi.fn(), back: vi.fn() }),
  useSearchParams: () => search,
  usePathname: () => "/sandboxes/",
}));

beforeEach(() => {
  stubWebSocket();
  push.mockReset();
  search = new URLSearchParams();
});
afterEach(() => vi.unstubAllGlobals());

/** The table row of the VM with this name. */
function row(name: string): HTMLElement {
  return screen.getByRole("link", { name }).closest("tr") as HTMLElement;
}

describe("sandboxes list", () => {
  it("shows each VM from GET /vms with its status, backend, size and the total", async () => {
    const calls = stubFetch(({ path }) =>
      path === "/vms"
        ? json(200, { vms: [vm(), vm({ id: "vm-2", name: "beta", status: "FAILED", orchestrator: "firecracker", image: "rootfs.ext4", vcpu_count: 1, memory_mb: 256 })], total: 2, next_cursor: null })
        : json(404, {}),
    );
    renderSignedIn(<SandboxesPage />);

    const alpha = await screen.findByRole("link", { name: "alpha" });
    // next/link adds the trailing slash only in the build (trailingSlash: true).
    expect(alpha.getAttribute("href")).toMatch(/^\/sandboxes\/detail\/?\?id=vm-0001-aaaa-bbbb-cccc$/);
    expect(within(row("alpha")).getByText("running").getAttribute("data-status")).toBe("running");
    expect(within(row("beta")).getByText("failed")).toBeTruthy();
    expect(within(row("beta")).getByText("firecracker")).toBeTruthy();
    expect(within(row("alpha")).getByText("512 MiB")).toBeTruthy();
    expect(screen.getByTestId("sandbox-total").textContent).toBe("2 sandboxes");
    expect(calls[0].query.get("limit")).toBe("1000");

    // The search narrows the rows without asking the server again.
    fireEvent.change(screen.getByRole("searchbox", { name: "Search sandboxes" }), { target: { value: "rootfs" } });
    expect(screen.queryByRole("link", { name: "alpha" })).toBeNull();
    expect(screen.getByRole("link", { name: "beta" })).toBeTruthy();
    expect(calls).toHaveLength(1);
  });

  it("changes a row's status from a vm.* event by fetching that VM only", async () => {
    let current = vm();
    const calls = stubFetch(({ path }) => {
      if (path === "/vms") return json(200, { vms: [current], total: 1, next_cursor: null });
      if (path === `/vms/${current.id}`) return json(200, current);
      return json(404, { error: "Not Found", message: "no such route", code: 404 });
    });
    renderSignedIn(<SandboxesPage />);
    await screen.findByRole("link", { name: "alpha" });

    const socket = eventSocket("vm.*");
    expect(socket).toBeDefined();
    act(() => socket!.open());
    expect(screen.getByTestId("live-state").textContent).toBe("live");

    current = { ...current, status: "PAUSED" };
    act(() => socket!.receive({ seq: 7, id: "e7", type: "vm.paused", resource_id: current.id, timestamp: new Date().toISOString(), data: {} }));
    await waitFor(() => expect(within(row("alpha")).getByText("paused").getAttribute("data-status")).toBe("paused"));
    expect(calls.filter((c) => c.path === "/vms")).toHaveLength(1);
    expect(calls.map((c) => c.path)).toContain(`/vms/${current.id}`);

    // Deleted: the VM answers 404 and its row goes.
    stubFetch(() => json(404, { error: "Not Found", message: "vm not found", code: 404 }));
    act(() => socket!.receive({ seq: 8, id: "e8", type: "vm.deleted", resource_id: current.id, timestamp: new Date().toISOString(), data: {} }));
    await waitFor(() => expect(screen.queryByRole("link", { name: "alpha" })).toBeNull());
    expect(screen.getByText("No sandboxes yet")).toBeTruthy();
  });

  it("shows the API's 400 in the create dialog, keeps the values, and lists the VM once created", async () => {
    let answer400 = true;
    const created = vm({ id: "vm-new", name: "demo", status: "CREATED", vcpu_count: 2, worker_id: "worker-2" });
    const calls = stubFetch(({ method, path }) => {
      if (method === "GET" && path === "/vms") return json(200, { vms: [], total: 0, next_cursor: null });
      if (method === "POST" && path === "/vms") {
        if (answer400) return json(400, { error: "Bad Request", message: "image must be a non-empty reference without spaces", code: 400 });
        return json(202, { task_id: "t1", vm_id: "vm-new", status: "pending" });
      }
      if (method === "GET" && path === "/vms/vm-new") return json(200, created);
      return json(404, {});
    });
    renderSignedIn(<SandboxesPage />);
    expect(await screen.findByText("No sandboxes yet")).toBeTruthy();

    fireEvent.click(screen.getByTestId("create-sandbox"));
    const dialog = screen.getByRole("dialog", { name: "New sandbox" });
    fireEvent.change(within(dialog).getByLabelText("Name"), { target: { value: "demo" } });
    fireEvent.change(within(dialog).getByLabelText("vCPUs"), { target: { value: "2" } });
    fireEvent.change(within(dialog).getByLabelText("Backend"), { target: { value: "firecracker" } });
    fireEvent.change(within(dialog).getByLabelText("Network"), { target: { value: "none" } });
    fireEvent.click(within(dialog).getByRole("button", { name: "Create" }));

    expect((await within(dialog).findByRole("alert")).textContent).toContain("Bad Request: image must be a non-empty reference without spaces");
    expect((within(dialog).getByLabelText("Name") as HTMLInputElement).value).toBe("demo");
    expect((within(dialog).getByLabelText("vCPUs") as HTMLInputElement).value).toBe("2");
    const post = calls.find((c) => c.method === "POST");
    expect(post?.body).toEqual({ name: "demo", vcpus: 2, orchestrator: "firecracker", network: "none" });

    answer400 = false;
    fireEvent.click(within(dialog).getByRole("button", { name: "Create" }));
    const link = await screen.findByRole("link", { name: "demo" });
    expect(within(link.closest("tr") as HTMLElement).getByText("created")).toBeTruthy();
    expect(screen.queryByRole("dialog", { name: "New sandbox" })).toBeNull();
    expect(calls.filter((c) => c.method === "GET" && c.path === "/vms")).toHaveLength(1);
  });

  it("catches a bad name before asking the API", async () => {
    const calls = stubFetch(() => json(200, { vms: [], total: 0, next_cursor: null }));
    renderSignedIn(<SandboxesPage />);
    fireEvent.click(await screen.findByTestId("create-sandbox"));
    const dialog = screen.getByRole("dialog", { name: "New sandbox" });
    fireEvent.change(within(dialog).getByLabelText("Name"), { target: { value: "-bad name" } });
    fireEvent.change(within(dialog).getByLabelText("Memory (MB)"), { target: { value: "64" } });
    fireEvent.click(within(dialog).getByRole("button", { name: "Create" }));
    expect(within(dialog).getByText(/name must start with a letter or digit/)).toBeTruthy();
    expect(within(dialog).getByText("memory_mb must be at least 128")).toBeTruthy();
    expect(calls.some((c) => c.method === "POST")).toBe(false);
  });

  it("hides creating from a viewer", async () => {
    stubFetch(() => json(200, { vms: [], total: 0, next_cursor: null }));
    renderSignedIn(<SandboxesPage />, "viewer");
    expect(await screen.findByText("No sandboxes yet")).toBeTruthy();
    expect(screen.queryByTestId("create-sandbox")).toBeNull();
    expect(screen.queryByRole("button", { name: /create/i })).toBeNull();
  });
});

describe("sandbox detail", () => {
  it("sends DELETE only once the deletion is confirmed, then goes back to the list", async () => {
    search = new URLSearchParams("id=alpha");
    const v = vm();
    const calls = stubFetch(({ method, path }) => {
      if (method === "GET" && (path === "/vms/alpha" || path === `/vms/${v.id}`)) return json(200, v);
      if (method === "GET" && path === `/vms/${v.id}/executions`) return json(200, { executions: [], total: 0, next_cursor: null });
      if (method === "DELETE") return json(202, { id: "t9", task_id: "t9", vm_id: v.id, type: "vm:delete", status: "pending" });
      return json(404, {});
    });
    renderSignedIn(<SandboxDetailPage />);
    expect(await screen.findByRole("heading", { name: /alpha/ })).toBeTruthy();

    fireEvent.click(screen.getByRole("button", { name: "Delete" }));
    const dialog = screen.getByRole("dialog", { name: "Delete alpha?" });
    fireEvent.click(within(dialog).getByRole("button", { name: "Cancel" }));
    expect(calls.some((c) => c.method === "DELETE")).toBe(false);
    expect(screen.queryByRole("dialog", { name: "Delete alpha?" })).toBeNull();

    fireEvent.click(screen.getByRole("button", { name: "Delete" }));
    expect(calls.some((c) => c.method === "DELETE")).toBe(false);
    fireEvent.click(within(screen.getByRole("dialog", { name: "Delete alpha?" })).getByRole("button", { name: "Delete" }));
    await waitFor(() => expect(push).toHaveBeenCalledWith("/sandboxes/"));
    expect(calls.filter((c) => c.method === "DELETE").map((c) => c.path)).toEqual(["/vms/alpha"]);
  });

  it("shows a refused action's message and offers only what the state allows", async () => {
    search = new URLSearchParams("id=vm-p");
    const v = vm({ id: "vm-p", name: "paused-one", status: "PAUSED", orchestrator: "docker" });
    stubFetch(({ method, path }) => {
      if (method === "GET" && path === "/vms/vm-p") return json(200, v);
      if (method === "GET" && path === "/vms/vm-p/executions") return json(200, { executions: [], total: 0, next_cursor: null });
      if (method === "POST" && path === "/vms/vm-p/snapshot")
        return json(409, { error: "Conflict", message: "docker VMs cannot be snapshotted: the docker backend does not support it", code: 409 });
      return json(404, {});
    });
    renderSignedIn(<SandboxDetailPage />);
    await screen.findByRole("heading", { name: /paused-one/ });
    expect(screen.queryByRole("button", { name: "Pause" })).toBeNull();
    expect(screen.getByRole("button", { name: "Resume" })).toBeTruthy();
    fireEvent.click(screen.getByRole("button", { name: "Snapshot" }));
    expect((await screen.findByRole("alert")).textContent).toContain("Conflict: docker VMs cannot be snapshotted: the docker backend does not support it");
  });

  it("puts a failed sandbox's error up front and offers no terminal", async () => {
    search = new URLSearchParams("id=vm-f");
    const v = vm({ id: "vm-f", name: "broken", status: "FAILED", error: "image aetherium/nope:latest not found" });
    stubFetch(({ path }) => {
      if (path === "/vms/vm-f") return json(200, v);
      if (path === "/vms/vm-f/executions") return json(200, { executions: [], total: 0, next_cursor: null });
      return json(404, {});
    });
    renderSignedIn(<SandboxDetailPage />);
    expect((await screen.findByTestId("vm-error")).textContent).toContain("image aetherium/nope:latest not found");
    expect((screen.getByTestId("open-terminal") as HTMLButtonElement).disabled).toBe(true);
    expect(screen.queryByRole("button", { name: "Pause" })).toBeNull();
    expect(screen.getByRole("button", { name: "Delete" })).toBeTruthy();
  });

  it("streams a command's output as NDJSON and shows its exit code; the execution appears from its event", async () => {
    search = new URLSearchParams("id=vm-r");
    const v = vm({ id: "vm-r", name: "runner" });
    const lines = [
      { type: "start", execution_id: "ex1", pid: 42 },
      { type: "stdout", data: "hello\n" },
      { type: "stderr", data_b64: btoa("oops\n") },
      { type: "end", execution_id: "ex1", exit_code: 3, status: "completed" },
    ];
    const execution = {
      id: "ex1", vm_id: "vm-r", command: "sh", args: ["-c", "echo hello; echo oops >&2; exit 3"], status: "completed", exit_code: 3,
      stdout: "hello\n", stderr: "oops\n", created_at: new Date().toISOString(), started_at: new Date().toISOString(), duration_ms: 12, metadata: { mode: "stream" },
    };
    const calls = stubFetch(({ method, path }) => {
      if (method === "GET" && path === "/vms/vm-r") return json(200, v);
      if (method === "GET" && path === "/vms/vm-r/executions") return json(200, { executions: [], total: 0, next_cursor: null });
      if (method === "GET" && path === "/executions/ex1") return json(200, execution);
      if (method === "POST" && path === "/vms/vm-r/exec/stream") {
        // Split mid-line, as a network would.
        const text = lines.map((l) => JSON.stringify(l)).join("\n") + "\n";
        const bytes = new TextEncoder().encode(text);
        const body = new ReadableStream<Uint8Array>({
          start(controller) {
            controller.enqueue(bytes.slice(0, 50));
            controller.enqueue(bytes.slice(50));
            controller.close();
          },
        });
        return new Response(body, { status: 200, headers: { "Content-Type": "application/x-ndjson" } });
      }
      return json(404, {});
    });
    renderSignedIn(<SandboxDetailPage />);
    await screen.findByRole("heading", { name: /runner/ });
    fireEvent.click(screen.getByRole("tab", { name: "Run a command" }));
    fireEvent.change(screen.getByLabelText("Command"), { target: { value: "echo hello; echo oops >&2; exit 3" } });
    fireEvent.click(screen.getByRole("button", { name: "Run" }));

    await waitFor(() => expect(screen.getByTestId("run-exit").textContent).toBe("Exit code 3"));
    expect(screen.getByTestId("run-output").textContent).toBe("hello\noops\n");
    expect(calls.find((c) => c.method === "POST")?.body).toEqual({ command: "sh", args: ["-c", "echo hello; echo oops >&2; exit 3"] });

    // execution.* events name the execution; only this VM's are fetched.
    const socket = eventSocket("execution.*")!;
    act(() => socket.open());
    act(() => socket.receive({ seq: 3, id: "e3", type: "execution.completed", resource_id: "other", timestamp: "", data: { vm_id: "vm-zzz" } }));
    act(() => socket.receive({ seq: 4, id: "e4", type: "execution.completed", resource_id: "ex1", timestamp: "", data: { vm_id: "vm-r", exit_code: 3 } }));
    fireEvent.click(screen.getByRole("tab", { name: "Executions" }));
    const command = await screen.findByRole("button", { name: /echo hello/ });
    expect(calls.some((c) => c.path === "/executions/other")).toBe(false);
    fireEvent.click(command);
    expect(screen.getByText("mode: stream")).toBeTruthy();
  });
});
