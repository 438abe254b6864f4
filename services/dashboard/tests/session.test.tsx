import { afterEach, describe, expect, it, vi } from "vitest";
import { act, fireEvent, render, screen, waitFor } from "@testing-library/react";
import { SessionProvider, roleAtLeast, useSession } from "@/lib/session";

afterEach(() => vi.unstubAllGlobals());

function json(status: number, body: unknown) {
  return new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json" } });
}

function Probe() {
  const { session, loginWithKey, loginWithPassword, logout, api, endedReason } = useSession();
  return (
    <div>
      <span data-testid="who">{session === null ? "reading" : session ? `${session.name}/${session.role}/${session.kind}` : "none"}</span>
      <span data-testid="ended">{endedReason ?? ""}</span>
      <button onClick={() => loginWithKey("", "ak_good").catch(() => undefined)}>key</button>
      <button onClick={() => loginWithPassword("http://gw:1/", "ada", "pw").catch(() => undefined)}>password</button>
      <button onClick={() => void api.get("/vms").catch(() => undefined)}>call</button>
      <button onClick={() => void logout()}>logout</button>
    </div>
  );
}

describe("session", () => {
  it("logs in with an API key after checking it with /auth/me, keeps it across a remount, and forgets it on logout", async () => {
    const fetchMock = vi.fn().mockResolvedValue(json(200, { principal: { id: "k1", name: "ci", kind: "api_key", role: "operator" }, expires_at: null }));
    vi.stubGlobal("fetch", fetchMock);
    const view = render(<SessionProvider><Probe /></SessionProvider>);
    await waitFor(() => expect(screen.getByTestId("who").textContent).toBe("none"));
    fireEvent.click(screen.getByText("key"));
    await waitFor(() => expect(screen.getByTestId("who").textContent).toBe("ci/operator/api_key"));
    expect(fetchMock.mock.calls[0][0]).toBe("/api/v1/auth/me");
    expect(fetchMock.mock.calls[0][1].headers.Authorization).toBe("Bearer ak_good");

    view.unmount();
    render(<SessionProvider><Probe /></SessionProvider>);
    await waitFor(() => expect(screen.getByTestId("who").textContent).toBe("ci/operator/api_key"));

    fireEvent.click(screen.getByText("logout"));
    await waitFor(() => expect(screen.getByTestId("who").textContent).toBe("none"));
    // An API key is only forgotten locally: no /auth/logout call.
    expect(fetchMock.mock.calls.map((c) => c[0])).not.toContain("/api/v1/auth/logout");
    expect(window.localStorage.getItem("aetherium.session")).toBeNull();
  });

  it("logs in with a password against another gateway and ends the session when the API answers 401", async () => {
    const fetchMock = vi
      .fn()
      .mockResolvedValueOnce(json(200, { token: "as_1", expires_at: "2999-01-01T00:00:00Z", user: { id: "u1", username: "ada", role: "viewer" } }))
      .mockResolvedValueOnce(json(401, { error: "Unauthorized", message: "the session has expired", code: 401 }));
    vi.stubGlobal("fetch", fetchMock);
    render(<SessionProvider><Probe /></SessionProvider>);
    await waitFor(() => expect(screen.getByTestId("who").textContent).toBe("none"));
    fireEvent.click(screen.getByText("password"));
    await waitFor(() => expect(screen.getByTestId("who").textContent).toBe("ada/viewer/session"));
    expect(fetchMock.mock.calls[0][0]).toBe("http://gw:1/api/v1/auth/login");
    expect(JSON.parse(fetchMock.mock.calls[0][1].body)).toEqual({ username: "ada", password: "pw" });

    await act(async () => fireEvent.click(screen.getByText("call")));
    await waitFor(() => expect(screen.getByTestId("who").textContent).toBe("none"));
    expect(screen.getByTestId("ended").textContent).toContain("the session has expired");
  });

  it("ignores an expired stored session", async () => {
    window.localStorage.setItem("aetherium.session", JSON.stringify({ baseUrl: "", token: "as_old", kind: "session", name: "ada", role: "admin", expiresAt: "2000-01-01T00:00:00Z" }));
    render(<SessionProvider><Probe /></SessionProvider>);
    await waitFor(() => expect(screen.getByTestId("who").textContent).toBe("none"));
  });

  it("orders roles", () => {
    expect(roleAtLeast("admin", "operator")).toBe(true);
    expect(roleAtLeast("viewer", "operator")).toBe(false);
    expect(roleAtLeast(undefined, "viewer")).toBe(false);
  });
});
