import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { fireEvent, render, screen, waitFor, within } from "@testing-library/react";
import { SessionProvider } from "@/lib/session";
import AuditPage from "@/app/audit/page";

const router = { push: vi.fn(), replace: vi.fn() };
let search = new URLSearchParams();
vi.mock("next/navigation", () => ({
  useRouter: () => router,
  useSearchParams: () => search,
  usePathname: () => "/audit/",
}));

const entry = (seq: number, extra: Record<string, unknown> = {}) => ({
  seq,
  at: "2026-11-27T09:00:00Z",
  actor_id: "user-ada",
  actor_name: "ada",
  action: "vms.delete",
  method: "DELETE",
  route: "/api/v1/vms/{id}",
  resource_id: "vm-1",
  status: 204,
  remote_addr: "10.0.0.7",
  ...extra,
});

let fetchMock: ReturnType<typeof vi.fn>;

function signIn(role: string) {
  window.localStorage.setItem("aetherium.session", JSON.stringify({ baseUrl: "", token: "ak_test", kind: "api_key", name: "t", role }));
}

beforeEach(() => {
  router.replace.mockReset();
  fetchMock = vi.fn(async (url: string) => {
    const u = new URL(url, "http://x");
    if (u.pathname !== "/api/v1/audit") return Response.json({ error: "Not Found", message: "no route", code: 404 }, { status: 404 });
    if (u.searchParams.get("cursor") === "c1") return Response.json({ entries: [entry(1, { action: "auth.login", actor_id: null, actor_name: "mallory", method: "POST", route: "/api/v1/auth/login", resource_id: null, status: 401 })], next_cursor: null });
    return Response.json({ entries: [entry(3, { status: 500, action: "vms.execute", method: "POST", route: "/api/v1/vms/{id}/execute" }), entry(2)], next_cursor: "c1" });
  });
  vi.stubGlobal("fetch", fetchMock);
});

afterEach(() => vi.unstubAllGlobals());

const calls = () => fetchMock.mock.calls.map((c) => String(c[0]));

function page() {
  return render(
    <SessionProvider>
      <AuditPage />
    </SessionProvider>,
  );
}

describe("audit page", () => {
  it("shows an admin the entries for the URL's filters, newest first, and pages with Load more", async () => {
    signIn("admin");
    search = new URLSearchParams("action=vms.delete&actor_id=user-ada");
    page();
    expect(await screen.findByRole("heading", { name: "Audit log" })).toBeTruthy();
    const rows = await screen.findAllByTestId("audit-row");
    expect(calls()).toEqual(["/api/v1/audit?action=vms.delete&actor_id=user-ada&limit=100"]);
    expect(rows.map((r) => r.getAttribute("data-seq"))).toEqual(["3", "2"]);

    const first = rows[0];
    expect(within(first).getByText("vms.execute")).toBeTruthy();
    expect(within(first).getByText("ada")).toBeTruthy();
    expect(within(first).getByText("/vms/{id}/execute")).toBeTruthy();
    expect(within(first).getByText("POST")).toBeTruthy();
    expect(within(first).getByText("10.0.0.7")).toBeTruthy();
    expect(within(first).getByText("500").className).toContain("red");
    expect(within(rows[1]).getByText("204").className).toContain("green");
    expect((screen.getByLabelText("Action") as HTMLInputElement).value).toBe("vms.delete");

    fireEvent.click(screen.getByRole("button", { name: "Load more" }));
    await waitFor(() => expect(screen.getAllByTestId("audit-row")).toHaveLength(3));
    expect(calls()).toContain("/api/v1/audit?action=vms.delete&actor_id=user-ada&limit=100&cursor=c1");
    const login = screen.getAllByTestId("audit-row")[2];
    expect(within(login).getByText("mallory")).toBeTruthy();
    expect(within(login).getByText("401").className).toContain("amber");
    expect(screen.queryByRole("button", { name: "Load more" })).toBeNull();
  });

  it("applies a filter to the request and the URL, and Refresh asks again", async () => {
    signIn("admin");
    search = new URLSearchParams();
    page();
    await screen.findAllByTestId("audit-row");
    fireEvent.change(screen.getByLabelText("Resource ID"), { target: { value: " vm-1 " } });
    fireEvent.submit(screen.getByRole("form", { name: "Filter audit log" }));
    await waitFor(() => expect(calls()).toContain("/api/v1/audit?resource_id=vm-1&limit=100"));
    expect(router.replace).toHaveBeenLastCalledWith("/audit/?resource_id=vm-1", { scroll: false });

    // The filtered request may still be loading (the button is then "loading
    // Refresh" and disabled): wait until it is done.
    const refresh = await screen.findByRole("button", { name: "Refresh" });
    const before = calls().length;
    fireEvent.click(refresh);
    await waitFor(() => expect(calls().length).toBe(before + 1));
    expect(calls().at(-1)).toBe("/api/v1/audit?resource_id=vm-1&limit=100");
  });

  it("shows the API's error readably", async () => {
    signIn("admin");
    search = new URLSearchParams();
    fetchMock.mockImplementation(async () => Response.json({ error: "Bad Request", message: "limit must be between 1 and 1000", code: 400 }, { status: 400 }));
    page();
    expect((await screen.findByRole("alert")).textContent).toContain("limit must be between 1 and 1000");
  });

  it("tells a viewer the page needs the admin role and asks the API nothing", async () => {
    signIn("viewer");
    search = new URLSearchParams();
    page();
    expect(await screen.findByText("The audit log needs the admin role")).toBeTruthy();
    expect(screen.getByText(/with the viewer role/)).toBeTruthy();
    expect(fetchMock).not.toHaveBeenCalled();
  });
});
