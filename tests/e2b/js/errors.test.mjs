// How Aetherium's E2B control plane refuses, as E2B's JS SDK (normal mode) sees
// it: a bad API key, unknown sandbox ids, and a viewer key that may not create.
//
// Needs E2B_API_KEY, E2B_API_URL, E2B_SANDBOX_URL, AETHERIUM_URL, AETHERIUM_TOKEN.

import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import { describe } from 'node:test'
import {
  AuthenticationError,
  NotFoundError,
  Sandbox,
  SandboxError,
  SandboxNotFoundError,
} from 'e2b'
import {
  aetherium,
  freshTag,
  killQuietly,
  listAll,
  cpTest as test,
  runMetadata,
} from './lib/control-plane.mjs'

const T = { timeout: 120_000 }

/** Settles p and returns what it rejected with; fails if it resolved. */
async function rejection(p, what) {
  const outcome = await p.then(
    (value) => ({ value }),
    (error) => ({ error })
  )
  if ('error' in outcome) return outcome.error
  if (outcome.value instanceof Sandbox) await killQuietly(outcome.value)
  assert.fail(`${what} must fail, but it succeeded`)
}

describe('E2B control plane: errors', () => {
  test('a bad API key is an AuthenticationError (401) and creates nothing', T, async () => {
    const tag = freshTag()
    const apiKey = `e2b_bad_${randomUUID().replaceAll('-', '')}`

    const created = await rejection(
      Sandbox.create({ apiKey, metadata: runMetadata(tag) }),
      'Sandbox.create with a bad key'
    )
    assert.ok(created instanceof AuthenticationError, `expected AuthenticationError, got ${created}`)

    const listed = await rejection(Sandbox.list({ apiKey }).nextItems(), 'Sandbox.list with a bad key')
    assert.ok(listed instanceof AuthenticationError, `expected AuthenticationError, got ${listed}`)

    const killed = await rejection(Sandbox.kill(randomUUID(), { apiKey }), 'Sandbox.kill with a bad key')
    assert.ok(killed instanceof AuthenticationError, `expected AuthenticationError, got ${killed}`)

    assert.deepEqual(await listAll({ query: { metadata: tag } }), [])
  })

  test('an unknown sandbox id is SandboxNotFoundError; kill of it is false', T, async () => {
    const id = randomUUID()

    const connected = await rejection(Sandbox.connect(id), 'Sandbox.connect(unknown id)')
    assert.ok(connected instanceof SandboxNotFoundError, `expected SandboxNotFoundError, got ${connected}`)
    // 2.51.0 still exports the deprecated NotFoundError as its base class.
    assert.ok(connected instanceof NotFoundError)

    await assert.rejects(Sandbox.getInfo(id), SandboxNotFoundError)
    await assert.rejects(Sandbox.setTimeout(id, 60_000), SandboxNotFoundError)
    await assert.rejects(Sandbox.pause(id), SandboxNotFoundError)
    assert.equal(await Sandbox.kill(id), false)
  })

  test('a viewer API key may not create a sandbox', T, async () => {
    const made = await aetherium('POST', '/api-keys', {
      name: `e2b-js-viewer-${randomUUID().slice(0, 8)}`,
      role: 'viewer',
    })
    assert.equal(made.status, 201, `POST /api/v1/api-keys: ${made.status} ${made.text}`)
    const viewerKey = made.json.key
    const keyId = made.json.api_key.id
    assert.ok(viewerKey && keyId, `key and api_key.id in ${made.text}`)

    try {
      const tag = freshTag()
      const err = await rejection(
        Sandbox.create({ apiKey: viewerKey, metadata: runMetadata(tag), timeoutMs: 60_000 }),
        'Sandbox.create with a viewer key'
      )
      // A 403 has no error class of its own: it is a SandboxError with statusCode.
      assert.ok(err instanceof SandboxError, `expected SandboxError, got ${err}`)
      assert.equal(err.statusCode, 403, `expected 403, got ${err.statusCode}: ${err.message}`)

      // Nothing was made: neither E2B's list nor Aetherium's own API shows one.
      assert.deepEqual(await listAll({ query: { metadata: tag } }), [])
      const vms = await aetherium('GET', `/vms?created_by=${encodeURIComponent(keyId)}`)
      assert.equal(vms.status, 200, `GET /api/v1/vms?created_by: ${vms.text}`)
      assert.deepEqual(vms.json.vms, [], 'no VM created by the viewer key')
    } finally {
      const revoked = await aetherium('POST', `/api-keys/${encodeURIComponent(keyId)}/revoke`)
      assert.equal(revoked.status, 200, `revoking the viewer key: ${revoked.status} ${revoked.text}`)
    }

    // Revoked keys stop working at once.
    const afterRevoke = await rejection(
      Sandbox.list({ apiKey: viewerKey }).nextItems(),
      'Sandbox.list with a revoked key'
    )
    assert.ok(afterRevoke instanceof AuthenticationError, `expected AuthenticationError, got ${afterRevoke}`)
  })
})
