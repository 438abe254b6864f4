// The dashboard end to end: a person logs in, creates a sandbox, watches it turn
// running without reloading, types into its terminal, moves a file in and out,
// deletes it, and sees API errors as messages. Against a real `aetherium up` on
// the Docker engine, in Debian's Chromium. Screenshots of each main page land in
// <outputDir>/screenshots for a reviewer.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { dashboardDir, launchBrowser, outputDir, serveStandalone, startPlatform } from "./harness.mjs";

const LAPTOP = { width: 1366, height: 860 };
const PHONE = { width: 390, height: 844 };
const shotsDir = join(outputDir, "screenshots");

let platform;
/** The same export on a second origin: a dashboard deployed on its own. */
let standalone;
let chrome;
let context;
let page;
const password = `pw-${randomBytes(12).toString("hex")}`;
const username = `ada${randomBytes(3).toString("hex")}`;
/** Uncaught exceptions in the page: any is a failure. */
const pageErrors = [];

async function shot(name, target = page) {
  await target.screenshot({ path: join(shotsDir, `${name}.png`), fullPage: true });
}

async function login(target, user = username, pass = password) {
  await target.goto(`${platform.url}/login/`);
  await target.getByLabel("Username").fill(user);
  await target.getByLabel("Password").fill(pass);
  await target.getByRole("button", { name: "Log in" }).click();
}

before(async () => {
  mkdirSync(shotsDir, { recursive: true });
  standalone = await serveStandalone(join(process.env.DASHBOARD_OUT ?? join(dashboardDir, "out")));
  platform = await startPlatform({ corsOrigins: [standalone.url] });
  await platform.api("POST", "/users", { username, password, role: "admin" });
  chrome = await launchBrowser();
  context = await chrome.browser.newContext({ viewport: LAPTOP, acceptDownloads: true });
  context.setDefaultTimeout(20_000);
  page = await context.newPage();
  page.on("pageerror", (error) => pageErrors.push(error.message));
});

after(async () => {
  await chrome?.close();
  await standalone?.close();
  await platform?.stop();
  console.log(`e2e: screenshots in ${shotsDir}`);
});

describe("dashboard", { concurrency: false, timeout: 15 * 60_000 }, () => {
  test("the gateway serves the dashboard at / and sends the login page first", async () => {
    await page.goto(`${platform.url}/`);
    await page.waitForURL(/\/login\/\?next=/);
    await page.getByRole("button", { name: "Log in" }).waitFor();
    await shot("login");
  });

  test("a wrong password is shown as the API's message", async () => {
    await login(page, username, "not-the-password-at-all");
    // Scoped to the form: Next.js keeps a route announcer with role=alert too.
    const alert = page.getByRole("form", { name: "Log in" }).getByRole("alert");
    await alert.waitFor();
    assert.match(await alert.innerText(), /invalid username or password/i);
  });

  test("a user logs in, and the session survives a reload", async () => {
    await login(page);
    await page.getByRole("heading", { name: "Overview" }).waitFor();
    assert.match(await page.getByTestId("whoami").innerText(), new RegExp(username));
    await page.reload();
    await page.getByRole("heading", { name: "Overview" }).waitFor();
    assert.match(await page.getByTestId("whoami").innerText(), new RegExp(username));
  });

  const sandbox = `e2e-${randomBytes(3).toString("hex")}`;

  test("a new sandbox appears and turns running without a reload", async () => {
    await page.goto(`${platform.url}/sandboxes/`);
    await page.getByRole("heading", { name: "Sandboxes" }).waitFor();
    let navigations = 0;
    page.on("framenavigated", (frame) => {
      if (frame === page.mainFrame()) navigations += 1;
    });
    await page.getByTestId("create-sandbox").click();
    const dialog = page.getByRole("dialog");
    await dialog.getByLabel("Name").fill(sandbox);
    await dialog.getByRole("button", { name: "Create" }).click();
    const row = page.getByRole("row").filter({ hasText: sandbox });
    await row.waitFor();
    await row.locator('[data-status="running"]').waitFor({ timeout: 60_000 });
    assert.equal(navigations, 0, "the list changed state without a page load");
    await shot("sandboxes");
  });

  test("creating a sandbox with a taken name shows the API's 409 message", async () => {
    await page.getByTestId("create-sandbox").click();
    const dialog = page.getByRole("dialog");
    await dialog.getByLabel("Name").fill(sandbox);
    await dialog.getByRole("button", { name: "Create" }).click();
    const alert = dialog.getByRole("alert");
    await alert.waitFor();
    assert.match(await alert.innerText(), /Conflict/);
    assert.match(await alert.innerText(), new RegExp(sandbox));
    await shot("sandbox-create-error");
    await dialog.getByRole("button", { name: "Cancel" }).click();
    await dialog.waitFor({ state: "hidden" });
  });

  test("the terminal runs a command and shows its output", async () => {
    await page.getByRole("row").filter({ hasText: sandbox }).getByRole("link", { name: sandbox }).click();
    await page.waitForURL(/\/sandboxes\/detail\/\?id=/);
    await page.getByRole("tab", { name: "Terminal" }).click();
    await page.getByTestId("open-terminal").click();
    const terminal = page.getByTestId("terminal");
    await terminal.locator(".xterm-rows").waitFor();
    await terminal.click();
    // The product 6*7 only exists if the shell evaluated it: the echo of our typing says 6*7.
    await page.keyboard.type("echo result-$((6*7))");
    await page.keyboard.press("Enter");
    await terminal.locator(".xterm-rows", { hasText: "result-42" }).waitFor();
    // Ctrl-C interrupts a running command and the shell answers again.
    await page.keyboard.type("sleep 300");
    await page.keyboard.press("Enter");
    await page.keyboard.press("Control+C");
    await page.keyboard.type("echo after-$((2+3))");
    await page.keyboard.press("Enter");
    await terminal.locator(".xterm-rows", { hasText: "after-5" }).waitFor();
    await shot("sandbox-terminal");
  });

  test("a file goes in and comes back out", async () => {
    const content = `hello from the e2e test ${randomBytes(8).toString("hex")}\n`;
    const local = join(outputDir, "upload.txt");
    writeFileSync(local, content);
    const path = "/tmp/e2e-upload.txt";
    await page.getByRole("tab", { name: "Files" }).click();
    await page.getByTestId("upload-path").fill(path);
    await page.getByTestId("upload-input").setInputFiles(local);
    await page.getByText(`Uploaded ${path}`).waitFor();
    await page.getByTestId("download-path").fill(path);
    const [download] = await Promise.all([page.waitForEvent("download"), page.getByTestId("download-button").click()]);
    const saved = join(outputDir, "download.txt");
    await download.saveAs(saved);
    assert.equal(readFileSync(saved, "utf8"), content);

    // A file that does not exist: the API's 404 message, not a blank page.
    await page.getByTestId("download-path").fill("/no/such/file");
    await page.getByTestId("download-button").click();
    await page.getByRole("alert").filter({ hasText: /not found|no such file/i }).waitFor();
    await shot("sandbox-files");
  });

  test("the sandbox is deleted after a confirmation and leaves the list", async () => {
    await page.getByRole("button", { name: "Delete", exact: true }).click();
    const dialog = page.getByRole("dialog", { name: `Delete ${sandbox}?` });
    await dialog.getByRole("button", { name: "Delete" }).click();
    await page.waitForURL(/\/sandboxes\/$/);
    await page.getByRole("row").filter({ hasText: sandbox }).waitFor({ state: "detached", timeout: 60_000 });
    // The platform really removes it (the container goes with it).
    const deadline = Date.now() + 60_000;
    let vms;
    do {
      vms = (await platform.api("GET", `/vms?name=${sandbox}`)).vms;
      if (vms.every((vm) => vm.status === "DELETED")) break;
      await new Promise((r) => setTimeout(r, 250));
    } while (Date.now() < deadline);
    assert.ok(vms.every((vm) => vm.status === "DELETED"), JSON.stringify(vms));
  });

  test("an environment and a workspace made in the browser get prepared step by step", async () => {
    const envName = `e2e-env-${randomBytes(3).toString("hex")}`;
    await page.goto(`${platform.url}/environments/new/`);
    const envForm = page.getByRole("form", { name: "Create environment" });
    await envForm.getByLabel("Name", { exact: true }).fill(envName);
    await envForm.getByLabel("Environment variables").fill("GREETING=hello-from-env");
    await envForm.getByRole("button", { name: "Create environment" }).click();
    await page.waitForURL(/\/environments\/detail\/\?id=/);

    const wsName = `e2e-ws-${randomBytes(3).toString("hex")}`;
    await page.goto(`${platform.url}/workspaces/new/`);
    await page.getByRole("radio", { name: new RegExp(envName) }).check();
    await page.getByRole("button", { name: "Next" }).click();
    await page.getByLabel("Name", { exact: true }).first().fill(wsName);
    await page.getByRole("button", { name: "Add step" }).click();
    const step = page.getByRole("group", { name: "Step 1" });
    await step.getByLabel("Type").selectOption("script");
    // Both values only exist if the step ran in a shell with the environment's variables.
    await step.getByLabel("Script", { exact: true }).fill('echo "prepared-$((40+2)) $GREETING"');
    await page.getByRole("button", { name: "Review" }).click();
    await page.getByRole("button", { name: "Create workspace" }).click();
    await page.waitForURL(/\/workspaces\/detail\/\?id=/);

    // Preparation shows up live: the step completes and the workspace turns ready.
    const prepStep = page.getByTestId("prep-step").filter({ hasText: "prepared" });
    await prepStep.and(page.locator('[data-status="completed"]')).waitFor({ timeout: 120_000 });
    await page.getByRole("heading").locator('[data-status="ready"]').waitFor({ timeout: 60_000 });
    await prepStep.getByText("Output").click();
    await prepStep.getByText("prepared-42 hello-from-env").waitFor();
    await page.getByTestId("prompt-input").waitFor();
    await shot("workspace-detail");

    await page.getByRole("button", { name: "Delete workspace" }).click();
    await page.getByRole("dialog").getByRole("button", { name: "Delete" }).click();
    await page.waitForURL(/\/workspaces\/$/);
  });

  test("every main page renders (screenshots for review)", async () => {
    const pages = [
      ["overview", "/", "Overview"],
      ["tasks", "/tasks/", "Tasks"],
      ["workers", "/workers/", "Workers"],
      ["queue", "/queue/", "Queue"],
      ["workspaces", "/workspaces/", "Workspaces"],
      ["environments", "/environments/", "Environments"],
      ["secrets", "/secrets/", "Secrets"],
      ["admin-keys", "/admin/keys/", "API keys"],
      ["admin-users", "/admin/users/", "Users"],
    ];
    for (const [name, path, heading] of pages) {
      await page.goto(`${platform.url}${path}`);
      await page.getByRole("heading", { name: heading, exact: true }).first().waitFor();
      await page.waitForLoadState("networkidle").catch(() => undefined);
      await shot(name);
    }
    const tasks = await platform.api("GET", "/tasks?limit=1");
    await page.goto(`${platform.url}/tasks/detail/?id=${tasks.tasks[0].id}`);
    await page.getByText(tasks.tasks[0].id).first().waitFor();
    await shot("task-detail");
  });

  test("dark theme and phone width", async () => {
    await page.goto(`${platform.url}/`);
    await page.getByRole("button", { name: /Switch to (dark|light) theme/ }).click();
    const dark = await page.evaluate(() => document.documentElement.classList.contains("dark"));
    await page.reload();
    assert.equal(await page.evaluate(() => document.documentElement.classList.contains("dark")), dark, "the theme is remembered");
    await shot(dark ? "overview-dark" : "overview-light");

    const phone = await context.newPage();
    await phone.setViewportSize(PHONE);
    for (const [name, path] of [
      ["phone-overview", "/"],
      ["phone-sandboxes", "/sandboxes/"],
      ["phone-tasks", "/tasks/"],
    ]) {
      await phone.goto(`${platform.url}${path}`);
      await phone.getByRole("main").waitFor();
      await phone.waitForLoadState("networkidle").catch(() => undefined);
      const overflow = await phone.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
      assert.ok(overflow <= 1, `${path} is ${overflow}px wider than a phone`);
      await shot(name, phone);
    }
    await phone.getByRole("button", { name: "Menu" }).click();
    await phone.getByRole("link", { name: "Workers" }).click();
    await phone.getByRole("heading", { name: "Workers", exact: true }).first().waitFor();
    await phone.close();
  });

  test("an admin creates an API key, sees it once, and it works until revoked", async () => {
    await page.goto(`${platform.url}/admin/keys/`);
    await page.getByRole("button", { name: "Create API key" }).click();
    const dialog = page.getByRole("dialog");
    const keyName = `e2e-key-${randomBytes(3).toString("hex")}`;
    await dialog.getByLabel("Name", { exact: true }).fill(keyName);
    await dialog.getByRole("button", { name: "Create key" }).click();
    const key = await dialog.getByTestId("new-api-key").inputValue();
    assert.match(key, /^ak_/);
    await shot("admin-key-created");
    const me = await fetch(`${platform.url}/api/v1/auth/me`, { headers: { Authorization: `Bearer ${key}` } });
    assert.equal(me.status, 200);
    await dialog.getByRole("button", { name: "I have stored the key" }).click();
    assert.equal(await page.getByText(key).count(), 0, "the key is not shown again");
    const row = page.getByTestId("api-key-row").filter({ hasText: keyName });
    await row.getByRole("button", { name: "Revoke" }).click();
    await page.getByRole("dialog").getByRole("button", { name: "Revoke" }).click();
    await row.getByText(/revoked/i).first().waitFor();
    const after = await fetch(`${platform.url}/api/v1/auth/me`, { headers: { Authorization: `Bearer ${key}` } });
    assert.equal(after.status, 401);
  });

  test("a viewer sees the platform but not the buttons of operators and admins", async () => {
    const { key } = await platform.api("POST", "/api-keys", { name: "e2e-viewer", role: "viewer" });
    const viewer = await context.browser().newContext({ viewport: LAPTOP });
    const viewerPage = await viewer.newPage();
    viewerPage.on("pageerror", (error) => pageErrors.push(error.message));
    await viewerPage.goto(`${platform.url}/login/`);
    await viewerPage.getByRole("tab", { name: "API key" }).click();
    await viewerPage.getByLabel("API key").fill(key);
    await viewerPage.getByRole("button", { name: "Log in" }).click();
    await viewerPage.getByRole("heading", { name: "Overview" }).waitFor();
    await viewerPage.goto(`${platform.url}/sandboxes/`);
    await viewerPage.getByRole("heading", { name: "Sandboxes" }).waitFor();
    assert.equal(await viewerPage.getByTestId("create-sandbox").count(), 0);
    assert.equal(await viewerPage.getByRole("link", { name: "API keys" }).count(), 0, "no admin navigation");
    await viewerPage.goto(`${platform.url}/admin/keys/`);
    await viewerPage.getByText(/needs the admin role/).waitFor();
    await viewer.close();
  });

  test("the same build, served from another origin, logs in to this gateway", async () => {
    const remote = await context.browser().newContext({ viewport: LAPTOP });
    const remotePage = await remote.newPage();
    remotePage.on("pageerror", (error) => pageErrors.push(error.message));
    await remotePage.goto(`${standalone.url}/login/`);
    await remotePage.getByRole("button", { name: "Another gateway…" }).click();
    await remotePage.getByLabel("Gateway URL").fill(platform.url);
    await remotePage.getByLabel("Username").fill(username);
    await remotePage.getByLabel("Password").fill(password);
    await remotePage.getByRole("button", { name: "Log in" }).click();
    await remotePage.getByRole("heading", { name: "Overview" }).waitFor();
    // Data from the gateway, through CORS: the registered worker.
    await remotePage.goto(`${standalone.url}/workers/`);
    await remotePage.locator(`[data-testid="worker-card"][data-worker-id="${platform.workerId}"]`).waitFor();
    assert.ok(remotePage.url().startsWith(standalone.url));
    await remote.close();
  });

  test("logging out ends the session on the server too", async () => {
    const token = await page.evaluate(() => JSON.parse(localStorage.getItem("aetherium.session")).token);
    await page.getByRole("button", { name: "Log out" }).click();
    await page.waitForURL(/\/login\//);
    const response = await fetch(`${platform.url}/api/v1/auth/me`, { headers: { Authorization: `Bearer ${token}` } });
    assert.equal(response.status, 401);
  });

  test("no uncaught error happened in any page", () => {
    assert.deepEqual(pageErrors, []);
  });
});
