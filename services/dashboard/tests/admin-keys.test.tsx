import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { fireEvent, render, screen, waitFor } from "@testing-library/react";
import { SessionProvider } from "@/lib/session";
import ApiKeysPage from "@/app/admin/keys/page";

vi.mock("next/navigation", () => ({
  useRouter: () => ({ push: vi.fn(), replace: vi.fn() }),
  useSearchParams: () => new URLSearchParams(),
  usePathname: () => "/admin/keys/",
}));

const SECRET_KEY = "ak_0123456789abcdef0123456789abcdef";
/** Whether the key is anywhere on the page: in text or in a field's value. */
function keyOnPage(): boolean {
  const inField = [...document.querySelectorAll("input, textarea")].some((el) => (el as HTMLInputElement).value.includes(SECRET_KEY));
  return inField || (document.body.textContent ?? "").includes(SECRET_KEY);
}

const apiKey = { id: "k1", name: "ci", prefix: "ak_01234567", role: "operator", created_by: "admin", created_at: "2026-11-27T09:00:00Z", expires_at: null, revoked_at: null, last_used_at: null, rate_limit_per_second: null };

function json(status: number, body: unknown) {
  return new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json" } });
}

function login(role: string) {
  window.localStorage.setItem("aetherium.session", JSON.stringify({ baseUrl: "", token: "ak_test", kind: "api_key", name: "t", role }));
}

let fetchMock: ReturnType<typeof vi.fn>;
beforeEach(() => {
  fetchMock = vi.fn(async (url: string, init: RequestInit) => {
    if (url.endsWith("/api/v1/api-keys") && init.method === "POST") return json(201, { key: SECRET_KEY, api_key: apiKey });
    if (url.endsWith("/api/v1/api-keys")) return json(200, { api_keys: [], total: 0 });
    return json(404, { error: "Not Found", message: url, code: 404 });
  });
  vi.stubGlobal("fetch", fetchMock);
});
afterEach(() => vi.unstubAllGlobals());

describe("API keys page", () => {
  it("shows a new key once and forgets it when the dialog closes", async () => {
    login("admin");
    render(<SessionProvider><ApiKeysPage /></SessionProvider>);
    await screen.findByText("No API keys");

    fireEvent.click(screen.getByRole("button", { name: "Create API key" }));
    fireEvent.change(screen.getByLabelText("Name"), { target: { value: "ci" } });
    fireEvent.change(screen.getByLabelText("Expires in (days, optional)"), { target: { value: "30" } });
    fireEvent.click(screen.getByRole("button", { name: "Create key" }));

    const revealed = (await screen.findByTestId("new-api-key")) as HTMLInputElement;
    expect(revealed.value).toBe(SECRET_KEY);
    expect(keyOnPage()).toBe(true);
    expect(screen.getByText(/shown only this once/)).toBeTruthy();
    const [, init] = fetchMock.mock.calls.find(([, i]) => i.method === "POST")!;
    expect(JSON.parse(init.body as string)).toEqual({ name: "ci", role: "operator", expires_in_seconds: 30 * 86400 });

    fireEvent.click(screen.getByRole("button", { name: "I have stored the key" }));
    await waitFor(() => expect(screen.queryByTestId("new-api-key")).toBeNull());
    expect(keyOnPage()).toBe(false);

    // Opening the dialog again starts a new key: the old one is gone for good.
    fireEvent.click(screen.getByRole("button", { name: "Create API key" }));
    expect(screen.queryByTestId("new-api-key")).toBeNull();
    expect(keyOnPage()).toBe(false);
  });

  it("tells a non-admin what is needed instead of calling the API", async () => {
    login("operator");
    render(<SessionProvider><ApiKeysPage /></SessionProvider>);
    expect(await screen.findByText("Managing API keys needs the admin role")).toBeTruthy();
    expect(fetchMock).not.toHaveBeenCalled();
  });
});
