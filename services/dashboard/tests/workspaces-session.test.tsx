import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { act, fireEvent, render, screen, waitFor } from "@testing-library/react";
import { SessionProvider } from "@/lib/session";
import WorkspaceDetailPage from "@/app/workspaces/detail/page";

vi.mock("next/navigation", () => ({
  useRouter: () => ({ push: vi.fn(), replace: vi.fn() }),
  useSearchParams: () => new URLSearchParams("id=w1"),
  usePathname: () => "/workspaces/detail/",
}));

/** A WebSocket the test drives: it records what the page sends. */
class FakeSocket {
  static instances: FakeSocket[] = [];
  onopen: (() => void) | null = null;
  onmessage: ((e: { data: unknown }) => void) | null = null;
  onclose: (() => void) | null = null;
  sent: string[] = [];
  constructor(readonly url: string) {
    FakeSocket.instances.push(this);
  }
  send(data: string) {
    this.sent.push(data);
  }
  close() {}
  open() {
    act(() => this.onopen?.());
  }
  receive(message: unknown) {
    act(() => this.onmessage?.({ data: JSON.stringify(message) }));
  }
  drop() {
    act(() => this.onclose?.());
  }
}

const T = "2026-11-27T09:00:00Z";
const workspace = { id: "w1", name: "ws1", description: "", status: "ready", ai_assistant: "claude-code", ai_assistant_config: {}, working_directory: "/workspace", tools: ["git"], idle_timeout_seconds: 1800, last_activity_at: T, created_at: T, updated_at: T, environment_id: null, vm_id: "vm1", worker_id: "wk1", ready_at: T, status_message: null };
const prompt = { id: "p1", workspace_id: "w1", prompt: "add a health check", environment: {}, priority: 7, status: "pending", output: "", created_at: T };

function json(status: number, body: unknown) {
  return new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json" } });
}

beforeEach(() => {
  FakeSocket.instances = [];
  window.localStorage.setItem("aetherium.session", JSON.stringify({ baseUrl: "", token: "ak_test", kind: "api_key", name: "t", role: "operator" }));
  vi.stubGlobal("WebSocket", FakeSocket);
  vi.stubGlobal(
    "fetch",
    vi.fn(async (url: string) => {
      const path = url.replace(/\?.*/, "");
      if (path === "/api/v1/workspaces/w1") return json(200, workspace);
      if (path === "/api/v1/workspaces/w1/steps") return json(200, { steps: [] });
      if (path === "/api/v1/workspaces/w1/prompts") return json(200, { prompts: [], total: 0 });
      if (path === "/api/v1/workspaces/w1/secrets") return json(200, { secrets: [] });
      return json(404, { error: "Not Found", message: url, code: 404 });
    }),
  );
});
afterEach(() => vi.unstubAllGlobals());

async function sessionSocket(): Promise<FakeSocket> {
  let socket: FakeSocket | undefined;
  await waitFor(() => {
    socket = FakeSocket.instances.filter((s) => s.url.includes("/api/v1/workspaces/w1/session")).at(-1);
    expect(socket).toBeTruthy();
  });
  return socket!;
}

describe("workspace detail: the session", () => {
  it("streams output messages into the prompt's answer and sends prompts as JSON", async () => {
    render(<SessionProvider><WorkspaceDetailPage /></SessionProvider>);
    await screen.findByText("ws1");
    const socket = await sessionSocket();
    expect(socket.url).toContain("token=ak_test");
    socket.open();
    socket.receive({ type: "status", workspace_status: "ready" });
    await waitFor(() => expect(screen.getByTestId("session-state").textContent).toContain("live"));

    fireEvent.change(screen.getByLabelText("Prompt"), { target: { value: "add a health check" } });
    fireEvent.change(screen.getByLabelText("Priority"), { target: { value: "7" } });
    fireEvent.click(screen.getByRole("button", { name: "Send" }));
    expect(socket.sent.map((m) => JSON.parse(m))).toEqual([{ type: "prompt", prompt: "add a health check", priority: 7 }]);
    expect((screen.getByLabelText("Prompt") as HTMLTextAreaElement).value).toBe("");

    socket.receive({ type: "prompt_queued", prompt });
    socket.receive({ type: "output", prompt_id: "p1", stream: "stdout", data: "Reading the code…\n" });
    socket.receive({ type: "output", prompt_id: "p1", stream: "stderr", data: "warning: no tests\n" });
    socket.receive({ type: "output", prompt_id: "p1", stream: "stdout", data: "Added GET /health." });

    const output = await screen.findByTestId("prompt-output");
    expect(output.textContent).toBe("Reading the code…\nwarning: no tests\nAdded GET /health.");
    expect(screen.getByTestId("prompt-item").textContent).toContain("running");

    // Cancelling a running prompt goes over the same socket.
    fireEvent.click(screen.getByRole("button", { name: "Cancel prompt" }));
    expect(JSON.parse(socket.sent.at(-1)!)).toEqual({ type: "cancel", prompt_id: "p1" });

    socket.receive({ type: "prompt_done", prompt: { ...prompt, status: "completed", exit_code: 0, output: "Reading the code…\nAdded GET /health." } });
    await waitFor(() => expect(screen.getByTestId("prompt-item").textContent).toContain("completed"));
    expect(screen.getByTestId("prompt-output").textContent).toContain("warning: no tests");
  });

  it("shows a dropped session and reconnects", async () => {
    vi.useFakeTimers({ shouldAdvanceTime: true });
    try {
      render(<SessionProvider><WorkspaceDetailPage /></SessionProvider>);
      await screen.findByText("ws1");
      const first = await sessionSocket();
      first.open();
      first.drop();
      expect(screen.getByTestId("session-state").textContent).toContain("reconnecting");
      expect((screen.getByLabelText("Prompt") as HTMLTextAreaElement).disabled).toBe(true);
      await act(async () => {
        vi.advanceTimersByTime(600);
      });
      const second = await sessionSocket();
      expect(second).not.toBe(first);
      second.open();
      expect(screen.getByTestId("session-state").textContent).toContain("live");
    } finally {
      vi.useRealTimers();
    }
  });

  it("disables the prompt box with the reason while the workspace is not ready", async () => {
    vi.stubGlobal(
      "fetch",
      vi.fn(async (url: string) => {
        const path = url.replace(/\?.*/, "");
        if (path === "/api/v1/workspaces/w1") return json(200, { ...workspace, status: "preparing" });
        if (path.endsWith("/steps")) return json(200, { steps: [{ workspace_id: "w1", order: 0, type: "script", status: "running", output: "npm ci\n" }] });
        if (path.endsWith("/prompts")) return json(200, { prompts: [], total: 0 });
        return json(200, { secrets: [] });
      }),
    );
    render(<SessionProvider><WorkspaceDetailPage /></SessionProvider>);
    await screen.findByText("ws1");
    expect((screen.getByLabelText("Prompt") as HTMLTextAreaElement).disabled).toBe(true);
    expect(screen.getByText("The workspace is preparing: prompts can be sent once it is ready.")).toBeTruthy();
    expect((await screen.findByTestId("prep-step")).getAttribute("data-status")).toBe("running");
  });
});
