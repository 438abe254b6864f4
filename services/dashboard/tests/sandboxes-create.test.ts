import { describe, expect, it } from "vitest";
import { createRequest, parseTools, validateCreate } from "@/components/sandboxes/create-dialog";

const blank = { name: "", orchestrator: "", image: "", vcpus: "", memoryMb: "", network: "", tools: "" } as const;

describe("the create dialog's request", () => {
  it("leaves empty fields out so the platform's defaults apply", () => {
    expect(createRequest({ ...blank })).toEqual({});
  });

  it("sends tools as additional_tools, split on spaces and commas", () => {
    expect(parseTools(" git, nodejs@20  python@3.12,")).toEqual(["git", "nodejs@20", "python@3.12"]);
    expect(createRequest({ ...blank, name: "box", tools: "git nodejs@20" })).toEqual({ name: "box", additional_tools: ["git", "nodejs@20"] });
  });

  it("sends the network only for microVM backends", () => {
    expect(createRequest({ ...blank, orchestrator: "docker", network: "none" })).toEqual({ orchestrator: "docker" });
    expect(createRequest({ ...blank, orchestrator: "qemu", network: "none" })).toEqual({ orchestrator: "qemu", network: "none" });
  });

  it("catches what the API would refuse, in its words", () => {
    expect(validateCreate({ ...blank, tools: "git bad/tool" }).tools).toMatch(/tool "bad\/tool" must be name or name@version/);
    expect(validateCreate({ ...blank, vcpus: "0" }).vcpus).toBe("vcpus must be at least 1");
    expect(validateCreate({ ...blank, memoryMb: "64" }).memoryMb).toBe("memory_mb must be at least 128");
    expect(validateCreate({ ...blank, name: "-x" }).name).toMatch(/must start with a letter or digit/);
    expect(validateCreate({ ...blank, name: "ok-1", tools: "git nodejs@20" })).toEqual({});
  });
});
