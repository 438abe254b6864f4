import { act, screen, waitFor } from "@testing-library/react";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import WorkspacesPage from "@/app/workspaces/page";
import { eventSocket, json, renderSignedIn, stubFetch, stubWebSocket } from "./sandboxes-helpers";

vi.mock("next/navigation", () => ({
  useRouter: () => ({ push: vi.fn(), replace: vi.fn() }),
  useSearchParams: () => new URLSearchParams(""),
  usePathname: () => "/workspaces/",
}));

const T = "2026-11-27T09:00:00Z";
const ws = (id: string, name: string, status = "ready") => ({ id, name, description: "", status, ai_assistant: "claude-code", ai_assistant_config: {}, working_directory: "/workspace", tools: [], idle_timeout_seconds: 1800, last_activity_at: T, created_at: T, updated_at: T, environment_id: null, vm_id: null, worker_id: null, ready_at: null, status_message: null });

beforeEach(() => stubWebSocket());
afterEach(() => vi.unstubAllGlobals());

describe("workspaces list", () => {
  it("follows status changes and deletions from events without reading the list again", async () => {
    const calls = stubFetch((call) => {
      if (call.path === "/workspaces") return json(200, { workspaces: [ws("w1", "alpha", "preparing"), ws("w2", "beta")], total: 2 });
      if (call.path === "/environments") return json(200, { environments: [], total: 0 });
      return json(404, { error: "Not Found", message: call.path, code: 404 });
    });
    renderSignedIn(<WorkspacesPage />, "operator");
    await screen.findByText("alpha");
    const socket = eventSocket("workspace.*");
    expect(socket).toBeDefined();
    act(() => socket!.open());

    act(() => socket!.receive({ seq: 1, id: "e1", type: "workspace.status", resource_id: "w1", timestamp: T, data: { status: "ready", message: null } }));
    await waitFor(() => expect(screen.getAllByText("ready")).toHaveLength(2));

    act(() => socket!.receive({ seq: 2, id: "e2", type: "workspace.deleted", resource_id: "w2", timestamp: T, data: { name: "beta" } }));
    await waitFor(() => expect(screen.queryByText("beta")).toBeNull());
    expect(screen.getByText("alpha")).toBeTruthy();
    expect(calls.filter((c) => c.path === "/workspaces")).toHaveLength(1);
  });
});
