import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { act, fireEvent, render, screen, waitFor, within } from "@testing-library/react";
import { SessionProvider } from "@/lib/session";
import LogsPage from "@/app/logs/page";

const router = { push: vi.fn(), replace: vi.fn() };
let search = new URLSearchParams();
vi.mock("next/navigation", () => ({
  useRouter: () => router,
  useSearchParams: () => search,
  usePathname: () => "/logs/",
}));

class FakeSocket {
  static instances: FakeSocket[] = [];
  url: string;
  closed = false;
  onopen: (() => void) | null = null;
  onmessage: ((m: { data: string }) => void) | null = null;
  onclose: (() => void) | null = null;
  constructor(url: string) {
    this.url = url;
    FakeSocket.instances.push(this);
  }
  close() {
    this.closed = true;
  }
  emit(record: unknown) {
    this.onmessage?.({ data: JSON.stringify(record) });
  }
}

const record = (id: number, extra: Record<string, unknown> = {}) => ({
  id,
  timestamp: new Date(Date.UTC(2026, 10, 27, 9, 0, id)).toISOString(),
  level: "info",
  target: "aetherium_core::worker",
  message: `message ${id}`,
  fields: {},
  ...extra,
});

let fetchMock: ReturnType<typeof vi.fn>;
/** The JSON bodies of the POST /logs/query calls, in order. */
let bodies: Record<string, unknown>[];
let answer: (body: Record<string, unknown>) => Response;

beforeEach(() => {
  window.localStorage.setItem("aetherium.session", JSON.stringify({ baseUrl: "", token: "ak_test", kind: "api_key", name: "t", role: "viewer" }));
  FakeSocket.instances = [];
  router.replace.mockReset();
  bodies = [];
  // Newest first, as the API answers `order: desc`.
  answer = (body) =>
    body.cursor
      ? Response.json({ logs: [record(9), record(8)], next_cursor: null })
      : Response.json({ logs: [record(12, { level: "warn", task_id: "task-1", vm_id: "vm-1", fields: { attempt: 2, exit_code: 1 } }), record(11), record(10)], next_cursor: "older" });
  vi.stubGlobal("WebSocket", FakeSocket);
  fetchMock = vi.fn(async (url: string, init: RequestInit) => {
    if (new URL(url, "http://x").pathname !== "/api/v1/logs/query" || init.method !== "POST") {
      return Response.json({ error: "Not Found", message: "no route", code: 404 }, { status: 404 });
    }
    const body = JSON.parse(String(init.body)) as Record<string, unknown>;
    bodies.push(body);
    return answer(body);
  });
  vi.stubGlobal("fetch", fetchMock);
});

afterEach(() => vi.unstubAllGlobals());

function page() {
  return render(
    <SessionProvider>
      <LogsPage />
    </SessionProvider>,
  );
}

const shownIds = () => screen.getAllByTestId("log-record").map((el) => el.getAttribute("data-log-id"));

describe("logs page", () => {
  it("queries with the URL's filters and shows the newest records oldest first, with their ids as links", async () => {
    search = new URLSearchParams("level=warn&vm_id=vm-1&contains=boom&bogus=1");
    page();
    expect(screen.getByRole("heading", { name: "Logs" })).toBeTruthy();
    await screen.findAllByTestId("log-record");
    expect(bodies[0]).toEqual({ level: "warn", vm_id: "vm-1", contains: "boom", order: "desc", limit: 200 });
    expect(shownIds()).toEqual(["10", "11", "12"]);

    const newest = screen.getAllByTestId("log-record")[2];
    expect(within(newest).getByText("message 12")).toBeTruthy();
    expect(newest.querySelector('[data-level="warn"]')).toBeTruthy();
    expect(within(newest).getByRole("link", { name: /task/ }).getAttribute("href")).toMatch(/^\/tasks\/detail\/?\?id=task-1$/);
    expect(within(newest).getByRole("link", { name: /sandbox/ }).getAttribute("href")).toMatch(/^\/sandboxes\/detail\/?\?id=vm-1$/);
    expect(within(newest).getByText("2 fields")).toBeTruthy();
    expect(newest.querySelector("pre")?.textContent).toContain('"exit_code": 1');
    expect((screen.getByLabelText("Minimum level") as HTMLSelectElement).value).toBe("warn");
  });

  it("follows: opens the stream after the newest record, appends pushed records, and resumes after the last id on a drop", async () => {
    search = new URLSearchParams("task_id=task-1");
    page();
    await screen.findAllByTestId("log-record");

    const first = FakeSocket.instances[0];
    const url = new URL(first.url);
    expect(url.pathname).toBe("/api/v1/logs/stream");
    expect(url.searchParams.get("task_id")).toBe("task-1");
    expect(url.searchParams.get("after")).toBe("12");
    expect(url.searchParams.get("token")).toBe("ak_test");

    await act(async () => first.onopen?.());
    expect(screen.getByTestId("live-state").getAttribute("data-state")).toBe("live");
    await act(async () => first.emit(record(13, { message: "pushed live", level: "error" })));
    await waitFor(() => expect(shownIds()).toEqual(["10", "11", "12", "13"]));
    expect(screen.getByText("pushed live")).toBeTruthy();

    await act(async () => first.onclose?.());
    expect(screen.getByTestId("live-state").getAttribute("data-state")).toBe("reconnecting");
    await waitFor(() => expect(FakeSocket.instances).toHaveLength(2), { timeout: 3000 });
    const second = FakeSocket.instances[1];
    expect(new URL(second.url).searchParams.get("after")).toBe("13");
    expect(new URL(second.url).searchParams.get("task_id")).toBe("task-1");

    // The replay after the resume point, once each.
    await act(async () => {
      second.onopen?.();
      second.emit(record(13));
      second.emit(record(14));
    });
    await waitFor(() => expect(shownIds()).toEqual(["10", "11", "12", "13", "14"]));
  }, 10_000);

  it("stops following when Follow is turned off and picks up after the newest record when turned on", async () => {
    search = new URLSearchParams();
    page();
    await screen.findAllByTestId("log-record");
    const follow = screen.getByTestId("logs-follow");
    expect(follow.getAttribute("aria-pressed")).toBe("true");

    fireEvent.click(follow);
    expect(FakeSocket.instances[0].closed).toBe(true);
    expect(screen.getByTestId("live-state").getAttribute("data-state")).toBe("paused");

    fireEvent.click(follow);
    expect(FakeSocket.instances).toHaveLength(2);
    expect(new URL(FakeSocket.instances[1].url).searchParams.get("after")).toBe("12");
  });

  it("loads older records above with the cursor, then says where the log starts", async () => {
    search = new URLSearchParams("worker_id=w1");
    page();
    fireEvent.click(await screen.findByRole("button", { name: "Load older" }));
    await waitFor(() => expect(shownIds()).toEqual(["8", "9", "10", "11", "12"]));
    expect(bodies[1]).toEqual({ worker_id: "w1", order: "desc", limit: 200, cursor: "older" });
    expect(screen.queryByRole("button", { name: "Load older" })).toBeNull();
    expect(screen.getByText(/Start of the retained log/)).toBeTruthy();
  });

  it("keeps at most 2000 records on a long follow, dropping the oldest", async () => {
    search = new URLSearchParams();
    page();
    await screen.findAllByTestId("log-record");
    const socket = FakeSocket.instances[0];
    await act(async () => {
      for (let id = 13; id < 13 + 2000; id++) socket.emit(record(id));
    });
    await waitFor(() => expect(shownIds()[0]).toBe("13"));
    const ids = shownIds();
    expect(ids).toHaveLength(2000);
    expect(ids[0]).toBe("13");
    expect(ids[1999]).toBe("2012");
    // The cursor pointed below the dropped records: paging back from here would skip some.
    expect(screen.queryByRole("button", { name: "Load older" })).toBeNull();
    expect(screen.getByText(/keeps the newest 2000 records/)).toBeTruthy();
  }, 15_000);

  it("applies a changed filter: new query, URL updated", async () => {
    search = new URLSearchParams();
    page();
    await screen.findAllByTestId("log-record");
    expect(bodies[0]).toEqual({ order: "desc", limit: 200 });

    fireEvent.change(screen.getByLabelText("Minimum level"), { target: { value: "error" } });
    await waitFor(() => expect(bodies).toHaveLength(2));
    expect(bodies[1]).toEqual({ level: "error", order: "desc", limit: 200 });
    expect(router.replace).toHaveBeenLastCalledWith("/logs/?level=error", { scroll: false });

    fireEvent.change(screen.getByLabelText("Execution ID"), { target: { value: " ex-1 " } });
    fireEvent.submit(screen.getByRole("form", { name: "Filter logs" }));
    await waitFor(() => expect(bodies).toHaveLength(3));
    expect(bodies[2]).toEqual({ level: "error", execution_id: "ex-1", order: "desc", limit: 200 });
  });

  it("shows the API's error and an empty state that says what the log holds", async () => {
    search = new URLSearchParams("contains=x");
    answer = () => Response.json({ error: "Bad Request", message: "contains must be 1 to 200 characters", code: 400 }, { status: 400 });
    page();
    expect((await screen.findByRole("alert")).textContent).toContain("contains must be 1 to 200 characters");
    expect(FakeSocket.instances).toHaveLength(0);

    answer = () => Response.json({ logs: [], next_cursor: null });
    fireEvent.click(screen.getByRole("button", { name: "Retry" }));
    expect(await screen.findByText("No log records match these filters")).toBeTruthy();
    fireEvent.click(screen.getByRole("button", { name: "Clear filters" }));
    expect(await screen.findByText("No log records yet")).toBeTruthy();
    expect(screen.getByText(/the platform's own log/)).toBeTruthy();
  });
});
