import { afterEach, describe, expect, it, vi } from "vitest";
import { ApiClient, ApiError, normalizeBaseUrl, queryString } from "@/lib/api";

afterEach(() => vi.unstubAllGlobals());

/** The error a call fails with; the test fails if it succeeds. */
async function failure(call: Promise<unknown>): Promise<ApiError> {
  try {
    await call;
  } catch (e) {
    return e as ApiError;
  }
  throw new Error("expected the call to fail");
}

function answer(status: number, body: unknown, headers: Record<string, string> = {}) {
  return new Response(typeof body === "string" ? body : JSON.stringify(body), { status, headers: { "Content-Type": "application/json", ...headers } });
}

describe("ApiClient", () => {
  it("sends the bearer token and parses JSON", async () => {
    const fetchMock = vi.fn().mockResolvedValue(answer(200, { vms: [], total: 0 }));
    vi.stubGlobal("fetch", fetchMock);
    const api = new ApiClient("http://gw:8080", "ak_x");
    await expect(api.get("/vms", { status: "running", limit: 5, cursor: undefined })).resolves.toEqual({ vms: [], total: 0 });
    const [url, init] = fetchMock.mock.calls[0];
    expect(url).toBe("http://gw:8080/api/v1/vms?status=running&limit=5");
    expect(init.headers.Authorization).toBe("Bearer ak_x");
  });

  it("turns the API's error shape into a readable ApiError and reports a 401", async () => {
    vi.stubGlobal("fetch", vi.fn().mockResolvedValue(answer(409, { error: "Conflict", message: "vm demo is not running", code: 409 })));
    const api = new ApiClient("", "ak_x");
    const err = await failure(api.post("/vms/demo/execute", { command: "ls" }));
    expect(err).toBeInstanceOf(ApiError);
    expect(err.status).toBe(409);
    expect(err.display).toBe("Conflict: vm demo is not running");

    const onUnauthorized = vi.fn();
    vi.stubGlobal("fetch", vi.fn().mockResolvedValue(answer(401, { error: "Unauthorized", message: "the API key was revoked", code: 401 })));
    await new ApiClient("", "ak_x", onUnauthorized).get("/vms").catch(() => undefined);
    expect(onUnauthorized).toHaveBeenCalledOnce();
  });

  it("explains a gateway that cannot be reached and a non-JSON error page", async () => {
    vi.stubGlobal("fetch", vi.fn().mockRejectedValue(new TypeError("Failed to fetch")));
    const err = await failure(new ApiClient("http://nowhere:1", "t").get("/vms"));
    expect(err.status).toBe(0);
    expect(err.display).toContain("Cannot reach the gateway at http://nowhere:1");

    vi.stubGlobal("fetch", vi.fn().mockResolvedValue(new Response("<html>bad gateway</html>", { status: 502, statusText: "Bad Gateway" })));
    const err2 = await failure(new ApiClient("", "t").get("/vms"));
    expect(err2.status).toBe(502);
    expect(err2.display).toContain("Bad Gateway");
  });

  it("puts the token in the query of a WebSocket URL only", () => {
    const api = new ApiClient("https://gw.example", "as_tok");
    expect(api.wsUrl("/events", { types: "vm.*" })).toBe("wss://gw.example/api/v1/events?types=vm.*&token=as_tok".replace("vm.*", encodeURIComponent("vm.*")));
    expect(api.url("/events")).not.toContain("token");
  });

  it("validates a gateway URL", () => {
    expect(normalizeBaseUrl(" http://a:1/ ")).toBe("http://a:1");
    expect(normalizeBaseUrl("")).toBe("");
    expect(() => normalizeBaseUrl("a:1")).toThrow(/http/);
    expect(queryString({ a: 1, b: "", c: undefined })).toBe("?a=1");
  });
});
