// What the end-to-end tests run against: a real `aetherium up` (embedded mode, the
// Docker backend) serving the built dashboard, and Debian's Chromium driven by
// playwright-core. Everything is per run: a free port, a temp data dir, a unique
// worker id whose containers are removed by label at the end.

import { spawn, execFileSync } from "node:child_process";
import { createServer } from "node:http";
import { mkdtempSync, mkdirSync, readFileSync, rmSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { randomBytes } from "node:crypto";
import { chromium } from "playwright-core";

const here = new URL(".", import.meta.url).pathname;
export const dashboardDir = resolve(here, "..");

function required(name, fallback) {
  const value = process.env[name] ?? fallback;
  if (!value) throw new Error(`${name} is not set (make test-dashboard sets it)`);
  return value;
}

/** Where screenshots and logs go (printed at the end so a reviewer can find them). */
export const outputDir = resolve(process.env.E2E_OUTPUT ?? join(dashboardDir, "test-results"));

/**
 * Serves the export from a second origin, as a dashboard deployed on its own (a
 * plain static file server: no API behind it). Resolves to `{url, close()}`.
 */
export async function serveStandalone(out) {
  const types = { ".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".txt": "text/plain", ".json": "application/json", ".svg": "image/svg+xml", ".ico": "image/x-icon" };
  const server = createServer((request, response) => {
    const path = decodeURIComponent(new URL(request.url, "http://x").pathname);
    let file = resolve(out, `.${path}`);
    if (!file.startsWith(out)) {
      response.writeHead(403).end();
      return;
    }
    if (existsSync(join(file, "index.html"))) file = join(file, "index.html");
    if (!existsSync(file) || !file.includes(".")) {
      response.writeHead(404, { "Content-Type": "text/html" }).end(readFileSync(join(out, "404.html")));
      return;
    }
    const ext = file.slice(file.lastIndexOf("."));
    response.writeHead(200, { "Content-Type": types[ext] ?? "application/octet-stream" }).end(readFileSync(file));
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    close: () => new Promise((r) => server.close(r)),
  };
}

/** Starts `aetherium up`; resolves once it printed its URL. */
export async function startPlatform({ corsOrigins = [] } = {}) {
  const bin = required("AETHERIUM_BIN");
  const out = resolve(required("DASHBOARD_OUT", join(dashboardDir, "out")));
  if (!existsSync(join(out, "index.html"))) {
    throw new Error(`${out}/index.html is missing: build the dashboard first (make dashboard)`);
  }
  const dataDir = mkdtempSync(join(tmpdir(), "aetherium-e2e-"));
  const workerId = `e2e-${randomBytes(4).toString("hex")}`;
  mkdirSync(outputDir, { recursive: true });
  const child = spawn(bin, ["up", "--port", "0", "--host", "127.0.0.1", "--data-dir", dataDir], {
    env: {
      ...process.env,
      AETHERIUM_BACKENDS: "docker",
      AETHERIUM_WORKER_ID: workerId,
      AETHERIUM_HEARTBEAT_INTERVAL_SECONDS: "1",
      AETHERIUM_DASHBOARD_DIR: out,
      AETHERIUM_AGENT_PATH: required("AETHERIUM_AGENT_BIN"),
      AETHERIUM_DEFAULT_IMAGE: process.env.AETHERIUM_TEST_IMAGE ?? "aetherium/base:latest",
      AETHERIUM_API_TOKEN: "",
      AETHERIUM_CORS_ALLOWED_ORIGINS: corsOrigins.join(","),
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const logLines = [];
  createInterface({ input: child.stderr }).on("line", (line) => logLines.push(line));
  const lines = createInterface({ input: child.stdout });
  const url = await new Promise((resolveUrl, reject) => {
    const timer = setTimeout(() => reject(new Error(`aetherium up did not start within 60 s:\n${logLines.slice(-20).join("\n")}`)), 60_000);
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`aetherium up exited (${code}) before it was up:\n${logLines.slice(-20).join("\n")}`));
    });
    lines.on("line", (line) => {
      logLines.push(line);
      const m = /^aetherium is up at (\S+)/.exec(line);
      if (m) {
        clearTimeout(timer);
        resolveUrl(m[1].replace(/\/+$/, ""));
      }
    });
  });
  const token = readFileSync(join(dataDir, "admin-token"), "utf8").trim();

  return {
    url,
    out,
    token,
    workerId,
    logLines,
    /** An API call as the bootstrap admin. */
    async api(method, path, body) {
      const response = await fetch(`${url}/api/v1${path}`, {
        method,
        headers: { Authorization: `Bearer ${token}`, ...(body ? { "Content-Type": "application/json" } : {}) },
        body: body ? JSON.stringify(body) : undefined,
      });
      const text = await response.text();
      if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${text}`);
      return text ? JSON.parse(text) : undefined;
    },
    async stop() {
      if (child.exitCode === null) {
        child.kill("SIGTERM");
        await new Promise((r) => {
          const t = setTimeout(() => {
            child.kill("SIGKILL");
            r();
          }, 20_000);
          child.once("exit", () => {
            clearTimeout(t);
            r();
          });
        });
      }
      // Containers of this run only, by its worker id label.
      try {
        const ids = execFileSync("docker", ["ps", "-aq", "--filter", `label=io.aetherium.worker_id=${workerId}`], { encoding: "utf8" })
          .split("\n")
          .filter(Boolean);
        if (ids.length) execFileSync("docker", ["rm", "-f", ...ids], { stdio: "ignore" });
      } catch {
        // No docker CLI: the server's own shutdown removed what it could.
      }
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** Debian's Chromium (never a downloaded browser), headless, in a fresh profile. */
export async function launchBrowser() {
  const executablePath = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
  if (!existsSync(executablePath)) {
    throw new Error(`${executablePath} is missing: install Debian's chromium package (scripts/setup.sh does)`);
  }
  // A plain launch runs in a new empty profile of Playwright's own (a temp dir).
  const browser = await chromium.launch({
    executablePath,
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  return {
    browser,
    async close() {
      await browser.close();
    },
  };
}
