import { afterEach, describe, expect, it, vi } from "vitest";
import { ApiClient } from "@/lib/api";
import { openEventStream } from "@/lib/events";

/** A WebSocket stand-in that records URLs and lets the test drive it. */
class FakeSocket {
  static all: FakeSocket[] = [];
  onopen: (() => void) | null = null;
  onmessage: ((m: { data: unknown }) => void) | null = null;
  onclose: (() => void) | null = null;
  closed = false;
  constructor(readonly url: string) {
    FakeSocket.all.push(this);
  }
  close() {
    this.closed = true;
  }
}

afterEach(() => {
  vi.unstubAllGlobals();
  vi.useRealTimers();
  FakeSocket.all = [];
});

describe("openEventStream", () => {
  it("sends the token and filters, delivers events, and resumes after the last seq when the socket drops", async () => {
    vi.useFakeTimers();
    vi.stubGlobal("WebSocket", FakeSocket);
    const api = new ApiClient("http://gw:8080", "as_secret");
    const events: string[] = [];
    const states: string[] = [];
    const stream = openEventStream(api, { types: ["vm.*", "task.failed"], resourceId: "vm1" }, (e) => events.push(`${e.seq}:${e.type}`), (s) => states.push(s));

    const first = FakeSocket.all[0];
    const url = new URL(first.url);
    expect(url.protocol).toBe("ws:");
    expect(url.pathname).toBe("/api/v1/events");
    expect(url.searchParams.get("types")).toBe("vm.*,task.failed");
    expect(url.searchParams.get("resource_id")).toBe("vm1");
    expect(url.searchParams.get("token")).toBe("as_secret");
    expect(url.searchParams.has("after")).toBe(false);

    first.onopen?.();
    first.onmessage?.({ data: JSON.stringify({ seq: 7, type: "vm.created", id: "e", resource_id: "vm1", timestamp: "", data: {} }) });
    first.onmessage?.({ data: "not json" });
    first.onmessage?.({ data: JSON.stringify({ seq: 9, type: "vm.started", id: "f", resource_id: "vm1", timestamp: "", data: {} }) });
    first.onclose?.();
    expect(states).toEqual(["connecting", "live", "reconnecting"]);

    await vi.advanceTimersByTimeAsync(600);
    const second = FakeSocket.all[1];
    expect(new URL(second.url).searchParams.get("after")).toBe("9");
    expect(events).toEqual(["7:vm.created", "9:vm.started"]);

    stream.close();
    expect(second.closed).toBe(true);
    second.onclose?.();
    await vi.advanceTimersByTimeAsync(20_000);
    expect(FakeSocket.all).toHaveLength(2);
  });
});
