import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { fireEvent, render, screen } from "@testing-library/react";
import { SessionProvider } from "@/lib/session";
import NewEnvironmentPage from "@/app/environments/new/page";

const push = vi.fn();
vi.mock("next/navigation", () => ({
  useRouter: () => ({ push, replace: vi.fn() }),
  useSearchParams: () => new URLSearchParams(),
  usePathname: () => "/environments/new/",
}));

const MESSAGE = 'git_branch "bad..branch" is not a valid branch: it must not contain ".."';

function json(status: number, body: unknown) {
  return new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json" } });
}

let fetchMock: ReturnType<typeof vi.fn>;
beforeEach(() => {
  window.localStorage.setItem("aetherium.session", JSON.stringify({ baseUrl: "", token: "ak_test", kind: "api_key", name: "t", role: "operator" }));
  fetchMock = vi.fn(async () => json(400, { error: "Bad Request", message: MESSAGE, code: 400 }));
  vi.stubGlobal("fetch", fetchMock);
});
afterEach(() => {
  vi.unstubAllGlobals();
  push.mockReset();
});

describe("environment form", () => {
  it("shows the API's 400 under the field it names and keeps what was typed", async () => {
    render(<SessionProvider><NewEnvironmentPage /></SessionProvider>);
    const name = (await screen.findByLabelText("Name")) as HTMLInputElement;
    fireEvent.change(name, { target: { value: "node-app" } });
    fireEvent.change(screen.getByLabelText("Git repository URL"), { target: { value: "https://git.example.com/acme/app.git" } });
    fireEvent.change(screen.getByLabelText("Branch"), { target: { value: "bad..branch" } });
    fireEvent.change(screen.getByLabelText("Tools"), { target: { value: "git\nnodejs@20\n" } });
    fireEvent.change(screen.getByLabelText("Environment variables"), { target: { value: "NODE_ENV=development" } });
    fireEvent.click(screen.getByRole("button", { name: "Create environment" }));

    // Under the Branch field (and in the banner), not just somewhere.
    const branch = screen.getByLabelText("Branch") as HTMLInputElement;
    const fieldBox = branch.closest("div")!;
    expect(await screen.findAllByText(MESSAGE)).not.toHaveLength(0);
    expect(fieldBox.textContent).toContain(MESSAGE);
    expect(screen.getByRole("alert").textContent).toContain(MESSAGE);

    expect(branch.value).toBe("bad..branch");
    expect(name.value).toBe("node-app");
    expect((screen.getByLabelText("Tools") as HTMLTextAreaElement).value).toBe("git\nnodejs@20\n");
    expect(push).not.toHaveBeenCalled();

    const [url, init] = fetchMock.mock.calls[0];
    expect(url).toBe("/api/v1/environments");
    expect(JSON.parse(init.body as string)).toMatchObject({
      name: "node-app",
      git_branch: "bad..branch",
      tools: ["git", "nodejs@20"],
      env_vars: { NODE_ENV: "development" },
    });
  });

  it("catches a malformed KEY=VALUE line before sending", async () => {
    render(<SessionProvider><NewEnvironmentPage /></SessionProvider>);
    fireEvent.change(await screen.findByLabelText("Name"), { target: { value: "x" } });
    fireEvent.change(screen.getByLabelText("Environment variables"), { target: { value: "JUSTAKEY" } });
    fireEvent.click(screen.getByRole("button", { name: "Create environment" }));
    expect((await screen.findAllByText(/line 1 \("JUSTAKEY"\) is not KEY=VALUE/)).length).toBeGreaterThan(0);
    expect(fetchMock).not.toHaveBeenCalled();
  });
});
