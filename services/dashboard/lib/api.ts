// The gateway's public API, as the dashboard uses it. Every call goes through
// `ApiClient.request`, which adds the bearer token and turns the API's error shape
// (`{error, message, code}`) into an `ApiError` whose message is fit to show.

export const API_PREFIX = "/api/v1";

/** An error answered by the API (or a network failure, with `status` 0). */
export class ApiError extends Error {
  readonly status: number;
  readonly error: string;
  /** Seconds to wait, from `Retry-After` on a 429. */
  readonly retryAfter?: number;

  constructor(status: number, error: string, message: string, retryAfter?: number) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.error = error;
    this.retryAfter = retryAfter;
  }

  /** "Conflict: vm demo is not running" — what a person should read. */
  get display(): string {
    if (this.status === 0) return this.message;
    return this.error && this.error !== this.message ? `${this.error}: ${this.message}` : this.message;
  }
}

export type Query = Record<string, string | number | boolean | undefined | null>;

export interface RequestOptions {
  method?: string;
  query?: Query;
  /** JSON-encoded unless it is a Blob/File/ArrayBuffer (sent as is). */
  body?: unknown;
  signal?: AbortSignal;
  /** Return the raw Response (downloads). */
  raw?: boolean;
}

/** Builds `?a=1&b=x`, leaving out empty values. */
export function queryString(query?: Query): string {
  if (!query) return "";
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query)) {
    if (value === undefined || value === null || value === "") continue;
    params.append(key, String(value));
  }
  const s = params.toString();
  return s ? `?${s}` : "";
}

/** The gateway's origin with no trailing slash; "" means the page's own origin. */
export function normalizeBaseUrl(url: string): string {
  const trimmed = url.trim().replace(/\/+$/, "");
  if (!trimmed) return "";
  if (!/^https?:\/\//i.test(trimmed)) {
    throw new Error("The gateway URL must start with http:// or https://");
  }
  return trimmed;
}

export class ApiClient {
  constructor(
    readonly baseUrl: string,
    readonly token: string | null,
    /** Called on a 401 for an authenticated call (the session ended or the key was revoked). */
    private readonly onUnauthorized?: (error: ApiError) => void,
  ) {}

  url(path: string, query?: Query): string {
    return `${this.baseUrl}${API_PREFIX}${path}${queryString(query)}`;
  }

  /** A WebSocket URL for `path`: browsers cannot send headers there, so the token rides in `?token=`. */
  wsUrl(path: string, query?: Query): string {
    const origin = this.baseUrl || (typeof window !== "undefined" ? window.location.origin : "");
    const ws = origin.replace(/^http/i, "ws");
    return `${ws}${API_PREFIX}${path}${queryString({ ...query, token: this.token ?? undefined })}`;
  }

  async request<T>(path: string, options: RequestOptions = {}): Promise<T> {
    const response = await this.fetchResponse(path, options);
    if (options.raw) return response as unknown as T;
    if (response.status === 204) return undefined as T;
    const text = await response.text();
    if (!text) return undefined as T;
    try {
      return JSON.parse(text) as T;
    } catch {
      throw new ApiError(response.status, "Bad response", "The gateway answered with something that is not JSON.");
    }
  }

  async fetchResponse(path: string, options: RequestOptions = {}): Promise<Response> {
    const headers: Record<string, string> = {};
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    let body: BodyInit | undefined;
    if (options.body instanceof Blob || options.body instanceof ArrayBuffer) {
      body = options.body;
      headers["Content-Type"] = "application/octet-stream";
    } else if (options.body !== undefined) {
      body = JSON.stringify(options.body);
      headers["Content-Type"] = "application/json";
    }
    let response: Response;
    try {
      response = await fetch(this.url(path, options.query), {
        method: options.method ?? (body !== undefined ? "POST" : "GET"),
        headers,
        body,
        signal: options.signal,
      });
    } catch (e) {
      if (e instanceof DOMException && e.name === "AbortError") throw e;
      throw new ApiError(0, "Network error", `Cannot reach the gateway at ${this.baseUrl || "this address"}: ${(e as Error).message}`);
    }
    if (!response.ok) {
      const error = await errorFromResponse(response);
      if (error.status === 401 && this.token) this.onUnauthorized?.(error);
      throw error;
    }
    return response;
  }

  get<T>(path: string, query?: Query, signal?: AbortSignal): Promise<T> {
    return this.request<T>(path, { query, signal });
  }

  post<T>(path: string, body?: unknown, query?: Query): Promise<T> {
    return this.request<T>(path, { method: "POST", body, query });
  }

  put<T>(path: string, body?: unknown, query?: Query): Promise<T> {
    return this.request<T>(path, { method: "PUT", body, query });
  }

  patch<T>(path: string, body?: unknown): Promise<T> {
    return this.request<T>(path, { method: "PATCH", body });
  }

  delete<T>(path: string, query?: Query): Promise<T> {
    return this.request<T>(path, { method: "DELETE", query });
  }
}

/** Reads the API's `{error, message, code}`; falls back to the status text. */
export async function errorFromResponse(response: Response): Promise<ApiError> {
  const retry = response.headers.get("Retry-After");
  const retryAfter = retry ? Number(retry) : undefined;
  let error = response.statusText || `HTTP ${response.status}`;
  let message = `The gateway answered ${response.status}.`;
  try {
    const body = (await response.json()) as { error?: string; message?: string };
    if (body.error) error = body.error;
    if (body.message) message = body.message;
  } catch {
    // Not our error shape (a proxy's page, say): keep the status text.
  }
  return new ApiError(response.status, error, message, Number.isFinite(retryAfter) ? retryAfter : undefined);
}

/** A message for anything thrown by a call. */
export function errorMessage(e: unknown): string {
  if (e instanceof ApiError) return e.display;
  if (e instanceof Error) return e.message;
  return String(e);
}
