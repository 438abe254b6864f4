import { act, fireEvent, screen, waitFor } from "@testing-library/react";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { Terminal } from "@/components/terminal";
import { FakeSocket, json, renderSignedIn, stubFetch, stubWebSocket, vm } from "./sandboxes-helpers";

// xterm needs a real layout (canvas measurements) that jsdom lacks: a stand-in with
// the same surface records what the component writes and lets the test type.
const terms = vi.hoisted(() => [] as FakeTerm[]);
interface FakeTerm {
  cols: number;
  rows: number;
  written: (string | Uint8Array)[];
  type(data: string): void;
  resize(cols: number, rows: number): void;
}
vi.mock("@xterm/xterm", () => {
  class Term {
    cols = 80;
    rows = 24;
    options: Record<string, unknown> = {};
    written: (string | Uint8Array)[] = [];
    private data: ((d: string) => void)[] = [];
    private resizes: ((s: { cols: number; rows: number }) => void)[] = [];
    constructor() {
      terms.push(this as unknown as FakeTerm);
    }
    open() {}
    loadAddon() {}
    focus() {}
    reset() {
      this.written = [];
    }
    dispose() {}
    write(d: string | Uint8Array) {
      this.written.push(d);
    }
    onData(cb: (d: string) => void) {
      this.data.push(cb);
      return { dispose: () => (this.data = this.data.filter((x) => x !== cb)) };
    }
    onBinary() {
      return { dispose() {} };
    }
    onResize(cb: (s: { cols: number; rows: number }) => void) {
      this.resizes.push(cb);
      return { dispose() {} };
    }
    type(d: string) {
      this.data.forEach((cb) => cb(d));
    }
    resize(cols: number, rows: number) {
      this.cols = cols;
      this.rows = rows;
      this.resizes.forEach((cb) => cb({ cols, rows }));
    }
  }
  return { Terminal: Term };
});
vi.mock("@xterm/addon-fit", () => ({ FitAddon: class { fit() {} } }));

beforeEach(() => {
  terms.length = 0;
  stubWebSocket();
  vi.stubGlobal(
    "ResizeObserver",
    class {
      observe() {}
      disconnect() {}
    },
  );
});
afterEach(() => vi.unstubAllGlobals());

async function terminalSocket(index = 0): Promise<FakeSocket> {
  await waitFor(() => expect(FakeSocket.instances.filter((s) => s.url.includes("/exec/ws")).length).toBeGreaterThan(index));
  return FakeSocket.instances.filter((s) => s.url.includes("/exec/ws"))[index];
}

const bytes = (s: string) => Array.from(new TextEncoder().encode(s));

describe("terminal", () => {
  it("runs a login shell in a tty, relays keystrokes and output as bytes, and resizes", async () => {
    stubFetch(() => json(200, vm()));
    renderSignedIn(<Terminal vmId="vm-1" />);
    const ws = await terminalSocket();
    const url = new URL(ws.url);
    expect(url.pathname).toBe("/api/v1/vms/vm-1/exec/ws");
    expect(url.searchParams.get("cmd")).toBe("sh");
    expect(url.searchParams.getAll("arg")).toEqual(["-c", "command -v bash >/dev/null 2>&1 && exec bash -l || exec sh -l"]);
    expect(url.searchParams.get("tty")).toBe("true");
    expect(url.searchParams.get("cols")).toBe("80");
    expect(url.searchParams.get("rows")).toBe("24");
    expect(url.searchParams.getAll("env")).toEqual(["TERM=xterm-256color"]);
    expect(url.searchParams.get("token")).toBe("ak_test");
    expect(ws.binaryType).toBe("arraybuffer");

    act(() => ws.open());
    act(() => ws.receive({ type: "start", execution_id: "ex1", pid: 7, tty: true }));
    expect(screen.getByTestId("terminal-status").textContent).toContain("Connected");

    const term = terms[0];
    act(() => ws.receive(new TextEncoder().encode("$ ").buffer as ArrayBuffer));
    expect(term.written.map((w) => (typeof w === "string" ? w : new TextDecoder().decode(w))).join("")).toBe("$ ");

    ws.sent = [];
    act(() => term.type("ls\r"));
    act(() => term.type("\x03"));
    expect(ws.sent.map((s) => Array.from(s as Uint8Array))).toEqual([bytes("ls\r"), [3]]);

    act(() => term.resize(120, 40));
    expect(ws.sent.at(-1)).toBe(JSON.stringify({ type: "resize", cols: 120, rows: 40 }));

    act(() => ws.receive({ type: "error", message: "signal SIGHUP is not allowed" }));
    expect(screen.getByRole("alert").textContent).toContain("signal SIGHUP is not allowed");
  });

  it("shows the exit code and starts a new shell on Reconnect", async () => {
    stubFetch(() => json(200, vm()));
    renderSignedIn(<Terminal vmId="vm-1" />);
    const first = await terminalSocket();
    act(() => first.open());
    act(() => first.receive({ type: "start", execution_id: "ex1", pid: 7, tty: true }));
    act(() => first.receive({ type: "exit", execution_id: "ex1", exit_code: 130, status: "completed" }));
    act(() => first.serverClose(1000));
    expect(screen.getByText("[process exited with code 130]")).toBeTruthy();

    fireEvent.click(screen.getByRole("button", { name: "Reconnect" }));
    const second = await terminalSocket(1);
    act(() => second.open());
    act(() => second.receive({ type: "start", execution_id: "ex2", pid: 8, tty: true }));
    expect(screen.queryByText(/process exited/)).toBeNull();
    expect(screen.getByTestId("terminal-status").getAttribute("data-phase")).toBe("open");
  });

  it("explains a refused connection by the sandbox's state", async () => {
    const calls = stubFetch(() => json(200, vm({ status: "PAUSED" })));
    renderSignedIn(<Terminal vmId="vm-1" />);
    const ws = await terminalSocket();
    act(() => ws.serverClose(1006));
    expect(await screen.findByText("The sandbox is PAUSED: a terminal can only be opened in a RUNNING sandbox.")).toBeTruthy();
    expect(calls.map((c) => c.path)).toEqual(["/vms/vm-1"]);
    expect(screen.getByRole("button", { name: "Reconnect" })).toBeTruthy();
  });
});
