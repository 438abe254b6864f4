import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { fireEvent, render, screen, waitFor } from "@testing-library/react";
import { SessionProvider } from "@/lib/session";
import { SecretsPanel } from "@/components/workspaces/secrets-panel";

vi.mock("next/navigation", () => ({
  useRouter: () => ({ push: vi.fn(), replace: vi.fn() }),
  useSearchParams: () => new URLSearchParams(),
  usePathname: () => "/workspaces/detail/",
}));

const STORED = "stored-value-must-never-show";
const TYPED = "sk-ant-typed-value-1234";

function json(status: number, body: unknown) {
  return new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json" } });
}

function secret(name: string, extra: Record<string, unknown> = {}) {
  return { id: `id-${name}`, name, type: "api_key", description: "", scope: "workspace", key_id: "k1", workspace_id: "w1", created_at: "2026-11-27T09:00:00Z", updated_at: "2026-11-27T09:00:00Z", ...extra };
}

/** Whether `text` is anywhere on the page: in text or in a field's value. */
function onPage(text: string): boolean {
  const inField = [...document.querySelectorAll("input, textarea")].some((el) => (el as HTMLInputElement).value.includes(text));
  return inField || (document.body.textContent ?? "").includes(text);
}

let fetchMock: ReturnType<typeof vi.fn>;
let listed: Record<string, unknown>[];
beforeEach(() => {
  window.localStorage.setItem("aetherium.session", JSON.stringify({ baseUrl: "", token: "ak_test", kind: "api_key", name: "t", role: "admin" }));
  // Even if a (broken) server sent a value along, the panel must not render it.
  listed = [secret("EXISTING", { value: STORED })];
  fetchMock = vi.fn(async (url: string, init: RequestInit) => {
    if (url.endsWith("/api/v1/workspaces/w1/secrets") && init.method === "POST") {
      const body = JSON.parse(init.body as string);
      listed = [...listed, secret(body.name)];
      return json(201, secret(body.name));
    }
    if (url.endsWith("/api/v1/workspaces/w1/secrets")) return json(200, { secrets: listed });
    return json(404, { error: "Not Found", message: url, code: 404 });
  });
  vi.stubGlobal("fetch", fetchMock);
});
afterEach(() => vi.unstubAllGlobals());

describe("workspace secrets", () => {
  it("lists names only and sends a new value once, in the POST body", async () => {
    render(
      <SessionProvider>
        <SecretsPanel basePath="/workspaces/w1/secrets" emptyHint="none" />
      </SessionProvider>,
    );
    await screen.findByText("EXISTING");
    expect(onPage(STORED)).toBe(false);

    const value = screen.getByLabelText("Value") as HTMLInputElement;
    expect(value.type).toBe("password");
    fireEvent.change(screen.getByLabelText("Name"), { target: { value: "ANTHROPIC_API_KEY" } });
    fireEvent.change(value, { target: { value: TYPED } });
    fireEvent.click(screen.getByRole("button", { name: "Add secret" }));

    await screen.findByText("ANTHROPIC_API_KEY");
    await screen.findByText(/will not be shown again/);

    const posts = fetchMock.mock.calls.filter(([, init]) => init.method === "POST");
    expect(posts).toHaveLength(1);
    const [url, init] = posts[0];
    expect(url).toBe("/api/v1/workspaces/w1/secrets");
    expect(url).not.toContain(TYPED);
    expect(JSON.parse(init.body as string)).toEqual({ name: "ANTHROPIC_API_KEY", value: TYPED, type: "api_key" });
    // Only the POST carried it: no other request's URL or body.
    for (const [u, i] of fetchMock.mock.calls.filter(([, i]) => i.method !== "POST")) {
      expect(String(u)).not.toContain(TYPED);
      expect(String(i.body ?? "")).not.toContain(TYPED);
    }
    // The field is emptied and the value is nowhere on the page.
    await waitFor(() => expect((screen.getByLabelText("Value") as HTMLInputElement).value).toBe(""));
    expect(onPage(TYPED)).toBe(false);
  });

  it("says plainly when the gateway has no encryption key (503)", async () => {
    fetchMock.mockImplementation(async () => json(503, { error: "Service Unavailable", message: "secrets need workspaces.encryption_key in distributed mode", code: 503 }));
    render(
      <SessionProvider>
        <SecretsPanel basePath="/secrets" emptyHint="none" />
      </SessionProvider>,
    );
    expect(await screen.findByText(/Secrets are unavailable on this gateway: secrets need workspaces.encryption_key/)).toBeTruthy();
  });
});
