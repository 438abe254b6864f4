import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { render, screen } from "@testing-library/react";
import { SessionProvider } from "@/lib/session";
import QueuePage from "@/app/queue/page";

vi.mock("next/navigation", () => ({
  useRouter: () => ({ push: vi.fn(), replace: vi.fn() }),
  useSearchParams: () => new URLSearchParams(),
  usePathname: () => "/queue/",
}));

class FakeSocket {
  url: string;
  onopen = null;
  onmessage = null;
  onclose = null;
  constructor(url: string) {
    this.url = url;
  }
  close() {}
}

const now = Date.now();

beforeEach(() => {
  window.localStorage.setItem("aetherium.session", JSON.stringify({ baseUrl: "", token: "ak_test", kind: "api_key", name: "t", role: "viewer" }));
  vi.stubGlobal("WebSocket", FakeSocket);
  vi.stubGlobal(
    "fetch",
    vi.fn(async (url: string) => {
      if (url === "/api/v1/queue/stats")
        return Response.json({
          pending: 1,
          scheduled: 0,
          running: 0,
          completed: 5,
          failed: 2,
          cancelled: 0,
          queues: ["critical", "high", "default", "low"].map((queue) => ({ queue, pending: 0, active: 0, scheduled: 0, retry: 0, archived: queue === "default" ? 2 : 0, processed: 0, failed: 0, cancelled: 0 })),
        });
      if (url === "/api/v1/queue/history?minutes=30")
        return Response.json({
          interval_seconds: 60,
          buckets: [0, 1, 2].map((i) => ({ start: new Date(now - (3 - i) * 60_000).toISOString(), created: 2, completed: i, failed: 1 })),
        });
      return Response.json({ error: "Not Found", message: url, code: 404 }, { status: 404 });
    }),
  );
});

afterEach(() => vi.unstubAllGlobals());

describe("queue page", () => {
  it("shows the counts per queue, links archived tasks to the failed list, and charts throughput", async () => {
    render(
      <SessionProvider>
        <QueuePage />
      </SessionProvider>,
    );
    expect(screen.getByRole("heading", { name: "Queue" })).toBeTruthy();
    expect(await screen.findAllByTestId("queue-row")).toHaveLength(4);
    // (next/link drops the trailing slash outside a build with trailingSlash.)
    expect(screen.getByRole("link", { name: "2" }).getAttribute("href")).toMatch(/^\/tasks\/?\?status=failed$/);
    expect(await screen.findByRole("img", { name: "Tasks per minute: 3 completed, 3 failed, 6 created over 3 minutes" })).toBeTruthy();
  });
});
