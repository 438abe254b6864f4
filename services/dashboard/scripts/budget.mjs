// Prints the first-load JavaScript of every exported page (the scripts its HTML
// loads, gzipped) and fails the build when one is over the budget.
// Usage: node scripts/budget.mjs [outDir]   (JS_BUDGET_KB overrides 250)
import { readFileSync, readdirSync, statSync } from "node:fs";
import { join, relative } from "node:path";
import { gzipSync } from "node:zlib";

const outDir = process.argv[2] ?? "out";
const budgetKb = Number(process.env.JS_BUDGET_KB ?? 250);

function htmlFiles(dir) {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) return name === "_next" ? [] : htmlFiles(path);
    return name.endsWith(".html") ? [path] : [];
  });
}

const gzipCache = new Map();
function gzipSize(src) {
  if (!gzipCache.has(src)) {
    const file = join(outDir, src.replace(/^\//, "").split("?")[0]);
    gzipCache.set(src, gzipSync(readFileSync(file), { level: 9 }).length);
  }
  return gzipCache.get(src);
}

const rows = [];
for (const file of htmlFiles(outDir)) {
  const html = readFileSync(file, "utf8");
  // Modern browsers skip `noModule` scripts (the legacy polyfills): not counted.
  const tags = [...html.matchAll(/<script[^>]*>/g)].map((m) => m[0]).filter((tag) => !/nomodule/i.test(tag));
  const scripts = new Set(tags.map((tag) => /src="([^"]+\.js)"/.exec(tag)?.[1]).filter(Boolean));
  const bytes = [...scripts].reduce((sum, src) => sum + gzipSize(src), 0);
  const page = "/" + relative(outDir, file).replace(/index\.html$/, "").replace(/\.html$/, "");
  rows.push({ page, scripts: scripts.size, kb: bytes / 1024 });
}
rows.sort((a, b) => a.page.localeCompare(b.page));

const width = Math.max(...rows.map((r) => r.page.length), 4);
console.log(`\nFirst-load JavaScript per page (gzip -9), budget ${budgetKb} KB:`);
console.log(`  ${"page".padEnd(width)}  scripts  first-load`);
for (const r of rows) {
  const flag = r.kb > budgetKb ? "  OVER BUDGET" : "";
  console.log(`  ${r.page.padEnd(width)}  ${String(r.scripts).padStart(7)}  ${r.kb.toFixed(1).padStart(7)} KB${flag}`);
}
const over = rows.filter((r) => r.kb > budgetKb);
if (over.length) {
  console.error(`\n${over.length} page(s) over the ${budgetKb} KB budget: ${over.map((r) => r.page).join(", ")}`);
  process.exit(1);
}
console.log(`  largest: ${Math.max(...rows.map((r) => r.kb)).toFixed(1)} KB of ${budgetKb} KB`);
