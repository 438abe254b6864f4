// What the control-plane tests need from their environment, and helpers for
// them: the E2B_* variables the SDK itself reads, Aetherium's own API for the
// cross-checks, and a preflight that turns "nobody is listening" into one clear
// failure instead of a pile of "fetch failed".
//
// The SDK is used exactly as a user would: it reads E2B_API_KEY, E2B_API_URL and
// E2B_SANDBOX_URL from the environment, in normal mode (E2B_DEBUG unset).

import { randomUUID } from 'node:crypto'
import { test } from 'node:test'
import { Sandbox } from 'e2b'

export const REQUIRED_ENV = [
  'E2B_API_KEY',
  'E2B_API_URL',
  'E2B_SANDBOX_URL',
  'AETHERIUM_URL',
  'AETHERIUM_TOKEN',
]

/** One id per test process: every sandbox this run makes carries it. */
export const RUN_ID = `e2b-js-${randomUUID()}`

/** Metadata key every sandbox of this suite carries (with RUN_ID as value). */
export const RUN_KEY = 'aetherium-e2b-js-run'

const PREFLIGHT_TIMEOUT_MS = 10_000

export function env(name) {
  const value = process.env[name]
  if (!value) {
    throw new Error(
      `${name} is not set: the control-plane tests need ${REQUIRED_ENV.join(', ')} ` +
        '(see tests/e2b/js/README.md)'
    )
  }
  return value
}

function missingEnv() {
  return REQUIRED_ENV.filter((name) => !process.env[name])
}

function describeFetchError(err) {
  const cause = err?.cause
  const code = cause?.code ?? err?.code ?? err?.name
  return [code, cause?.message ?? err?.message].filter(Boolean).join(': ')
}

let preflightResult
/**
 * Checks, once per test file, that the environment is complete and that an E2B
 * control plane answers at E2B_API_URL with E2B_API_KEY. Throws an error that
 * says what is wrong; never waits longer than PREFLIGHT_TIMEOUT_MS.
 */
export function preflight() {
  preflightResult ??= runPreflight()
  return preflightResult
}

async function runPreflight() {
  const missing = missingEnv()
  if (missing.length > 0) {
    throw new Error(
      `missing environment: ${missing.join(', ')}. The control-plane tests run against a ` +
        'started Aetherium gateway (see tests/e2b/js/README.md)'
    )
  }
  if ((process.env.E2B_DEBUG ?? '').toLowerCase() === 'true') {
    throw new Error('E2B_DEBUG=true would skip the control plane: unset it')
  }
  const apiUrl = env('E2B_API_URL').replace(/\/+$/, '')
  const url = `${apiUrl}/v2/sandboxes?limit=1`
  let res
  try {
    res = await fetch(url, {
      headers: { 'X-API-KEY': env('E2B_API_KEY') },
      signal: AbortSignal.timeout(PREFLIGHT_TIMEOUT_MS),
    })
  } catch (err) {
    throw new Error(
      `no E2B control plane answers at E2B_API_URL=${apiUrl} (GET ${url}: ` +
        `${describeFetchError(err)}). Start the gateway first.`
    )
  }
  const body = await res.text().catch(() => '')
  if (res.status === 401 || res.status === 403) {
    throw new Error(`E2B_API_KEY is refused by ${url}: ${res.status} ${body}`)
  }
  if (!res.ok) {
    throw new Error(
      `GET ${url} answered ${res.status} ${body.slice(0, 300)}: is the E2B control plane ` +
        'served under that prefix?'
    )
  }
}

/**
 * A node:test test that first runs the preflight, so that without a server each
 * test fails (not "cancelled") with the preflight's message.
 */
export function cpTest(name, options, fn) {
  return test(name, options, async (t) => {
    await preflight()
    return fn(t)
  })
}

/** Metadata for a sandbox of this run, plus the test's own keys. */
export function runMetadata(extra = {}) {
  return { [RUN_KEY]: RUN_ID, ...extra }
}

/** A fresh metadata tag, so a list query sees only one test's sandboxes. */
export function freshTag() {
  return { 'e2b-js-tag': randomUUID() }
}

/**
 * Kills a sandbox (by instance or id) without failing the test that calls it:
 * cleanup must not hide the test's own assertion error.
 */
export async function killQuietly(sandboxOrId) {
  if (!sandboxOrId) return
  const id = typeof sandboxOrId === 'string' ? sandboxOrId : sandboxOrId.sandboxId
  try {
    await Sandbox.kill(id, { requestTimeoutMs: 30_000 })
  } catch (err) {
    console.error(`cleanup: could not kill sandbox ${id}: ${err?.message ?? err}`)
  }
}

/**
 * Creates a sandbox through the control plane, runs fn with it and kills it
 * afterwards, whatever fn did.
 */
export async function withSandbox(opts, fn) {
  const sbx = await Sandbox.create({
    timeoutMs: 10 * 60_000,
    ...opts,
    metadata: runMetadata(opts?.metadata),
  })
  try {
    return await fn(sbx)
  } finally {
    await killQuietly(sbx)
  }
}

/** Collects every item of a Sandbox.list() paginator, page by page. */
export async function listAll(listOpts) {
  const paginator = Sandbox.list(listOpts)
  const items = []
  while (paginator.hasNext) items.push(...(await paginator.nextItems()))
  return items
}

/** Calls Aetherium's own API (/api/v1) as the admin from AETHERIUM_TOKEN. */
export async function aetherium(method, path, body) {
  const base = env('AETHERIUM_URL').replace(/\/+$/, '')
  const res = await fetch(`${base}/api/v1${path}`, {
    method,
    headers: {
      Authorization: `Bearer ${env('AETHERIUM_TOKEN')}`,
      ...(body === undefined ? {} : { 'Content-Type': 'application/json' }),
    },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(30_000),
  })
  const text = await res.text()
  let json
  try {
    json = text ? JSON.parse(text) : undefined
  } catch {
    json = undefined
  }
  return { status: res.status, json, text }
}

/** Seconds from now until date (negative when it is past). */
export function secondsFromNow(date) {
  return (date.getTime() - Date.now()) / 1000
}

export const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i
