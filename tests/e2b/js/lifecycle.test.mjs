// Sandbox lifecycle through Aetherium's E2B control plane, driven by E2B's JS SDK
// in normal mode: create (metadata, envs), getInfo, setTimeout, list with
// filters and paging, connect, kill, pause and resume. Every test creates its
// own sandboxes (tagged with a fresh metadata value) and kills them in finally.
//
// Needs E2B_API_KEY, E2B_API_URL, E2B_SANDBOX_URL, AETHERIUM_URL, AETHERIUM_TOKEN.

import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import { describe } from 'node:test'
import { Sandbox, SandboxNotFoundError } from 'e2b'
import {
  aetherium,
  freshTag,
  killQuietly,
  listAll,
  cpTest as test,
  runMetadata,
  secondsFromNow,
  UUID_RE,
  withSandbox,
} from './lib/control-plane.mjs'

const T = { timeout: 180_000 }

/** How far endAt may be from "now + timeout" (clock steps, slow answers). */
const SLACK_S = 30

describe('E2B control plane: sandbox lifecycle', () => {
  test('Sandbox.create with metadata and envs; envs reach commands', T, async () => {
    const tag = freshTag()
    await withSandbox(
      { metadata: { ...tag, purpose: 'create' }, envs: { E2B_JS_X: 'hello from create' } },
      async (sbx) => {
        assert.match(sbx.sandboxId, UUID_RE, 'a sandbox id is an Aetherium VM id (a UUID)')

        const echo = await sbx.commands.run('echo "$E2B_JS_X"')
        assert.equal(echo.stdout, 'hello from create\n')
        // A command's own envs win over the sandbox's.
        const override = await sbx.commands.run('echo "$E2B_JS_X"', {
          envs: { E2B_JS_X: 'per command' },
        })
        assert.equal(override.stdout, 'per command\n')

        assert.equal(await sbx.isRunning(), true)

        // The same sandbox, seen through Aetherium's own API.
        const vm = await aetherium('GET', `/vms/${sbx.sandboxId}`)
        assert.equal(vm.status, 200, `GET /api/v1/vms/${sbx.sandboxId}: ${vm.text}`)
        assert.equal(vm.json.id, sbx.sandboxId)
      }
    )
  })

  test('getInfo: state running, metadata, startedAt and endAt', T, async () => {
    const tag = freshTag()
    const t0 = Date.now()
    await withSandbox({ metadata: { ...tag, purpose: 'info' }, timeoutMs: 300_000 }, async (sbx) => {
      const info = await sbx.getInfo()
      assert.equal(info.sandboxId, sbx.sandboxId)
      assert.equal(info.state, 'running')
      assert.deepEqual(info.metadata, runMetadata({ ...tag, purpose: 'info' }))
      assert.ok(info.templateId, 'templateId is set')
      assert.ok(info.cpuCount > 0, `cpuCount ${info.cpuCount}`)
      assert.ok(info.memoryMB > 0, `memoryMB ${info.memoryMB}`)
      assert.match(info.envdVersion, /^\d+\.\d+\.\d+$/)

      assert.ok(!Number.isNaN(info.startedAt.getTime()), 'startedAt is a date')
      assert.ok(info.startedAt.getTime() >= t0 - SLACK_S * 1000, `startedAt ${info.startedAt.toISOString()}`)
      assert.ok(info.startedAt.getTime() <= Date.now() + SLACK_S * 1000, `startedAt ${info.startedAt.toISOString()}`)
      const left = secondsFromNow(info.endAt)
      assert.ok(left > 300 - 2 * SLACK_S && left <= 300 + SLACK_S, `endAt is ${left}s away, want ~300`)

      // The static form answers the same.
      const again = await Sandbox.getInfo(sbx.sandboxId)
      assert.equal(again.sandboxId, sbx.sandboxId)
      assert.deepEqual(again.metadata, info.metadata)
    })
  })

  test('setTimeout moves endAt to now + timeout, both ways', T, async () => {
    await withSandbox({ metadata: { purpose: 'timeout' }, timeoutMs: 120_000 }, async (sbx) => {
      const first = await sbx.getInfo()
      assert.ok(secondsFromNow(first.endAt) <= 120 + SLACK_S, `endAt ${first.endAt.toISOString()}`)

      await sbx.setTimeout(900_000)
      const longer = secondsFromNow((await sbx.getInfo()).endAt)
      assert.ok(Math.abs(longer - 900) <= SLACK_S, `after setTimeout(900 s) endAt is ${longer}s away`)

      await Sandbox.setTimeout(sbx.sandboxId, 240_000)
      const shorter = secondsFromNow((await sbx.getInfo()).endAt)
      assert.ok(Math.abs(shorter - 240) <= SLACK_S, `after setTimeout(240 s) endAt is ${shorter}s away`)

      // Still running and usable.
      assert.equal((await sbx.commands.run('echo still-here')).stdout, 'still-here\n')
    })
  })

  test('Sandbox.list filters by metadata and pages with limit', T, async () => {
    const tag = freshTag()
    const made = []
    try {
      for (const result of await Promise.allSettled(
        [1, 2, 3].map((n) => Sandbox.create({ metadata: runMetadata({ ...tag, n: String(n) }), timeoutMs: 300_000 }))
      )) {
        if (result.status === 'fulfilled') made.push(result.value)
        else throw result.reason
      }
      const ids = made.map((s) => s.sandboxId).sort()

      const paginator = Sandbox.list({ query: { metadata: tag }, limit: 2 })
      assert.equal(paginator.hasNext, true, 'a new paginator has a first page')
      const page1 = await paginator.nextItems()
      assert.equal(page1.length, 2, `page 1: ${JSON.stringify(page1.map((s) => s.sandboxId))}`)
      assert.equal(paginator.hasNext, true, 'X-Next-Token after a full page of 2 out of 3')
      assert.ok(paginator.nextToken, 'nextToken is set')
      const page2 = await paginator.nextItems()
      assert.equal(page2.length, 1, `page 2: ${JSON.stringify(page2.map((s) => s.sandboxId))}`)
      assert.equal(paginator.hasNext, false, 'no X-Next-Token on the last page')
      await assert.rejects(paginator.nextItems(), /No more items/)

      const seen = [...page1, ...page2]
      assert.deepEqual(seen.map((s) => s.sandboxId).sort(), ids, 'each sandbox exactly once')
      for (const s of seen) {
        assert.equal(s.state, 'running')
        assert.equal(s.metadata['e2b-js-tag'], tag['e2b-js-tag'])
        assert.ok(['1', '2', '3'].includes(s.metadata.n))
        assert.ok(s.endAt > s.startedAt, `endAt after startedAt for ${s.sandboxId}`)
      }

      // Two filters are ANDed.
      const one = await listAll({ query: { metadata: { ...tag, n: '2' } } })
      assert.deepEqual(one.map((s) => s.sandboxId), [made[1].sandboxId])
      // No match is an empty last page.
      const none = Sandbox.list({ query: { metadata: { 'e2b-js-tag': randomUUID() } } })
      assert.deepEqual(await none.nextItems(), [])
      assert.equal(none.hasNext, false)
    } finally {
      await Promise.all(made.map(killQuietly))
    }
  })

  test('Sandbox.list metadata filter with characters that need encoding', T, async () => {
    const tag = freshTag()
    const odd = { 'e2b-js.odd/key': 'a&b=c d%e?f#g' }
    await withSandbox({ metadata: { ...tag, ...odd } }, async (sbx) => {
      const found = await listAll({ query: { metadata: { ...tag, ...odd } } })
      assert.deepEqual(found.map((s) => s.sandboxId), [sbx.sandboxId])
      assert.equal(found[0].metadata['e2b-js.odd/key'], odd['e2b-js.odd/key'])

      const other = await listAll({ query: { metadata: { ...tag, 'e2b-js.odd/key': 'a&b=c' } } })
      assert.deepEqual(other, [], 'a value that is only a prefix must not match')
    })
  })

  test('Sandbox.connect(id) to a running sandbox', T, async () => {
    await withSandbox({ metadata: { purpose: 'connect' }, timeoutMs: 120_000 }, async (sbx) => {
      await sbx.files.write('/tmp/e2b-js-connect.txt', 'written by the first handle')

      const again = await Sandbox.connect(sbx.sandboxId)
      assert.equal(again.sandboxId, sbx.sandboxId)
      assert.equal(await again.files.read('/tmp/e2b-js-connect.txt'), 'written by the first handle')
      assert.equal((await again.commands.run('echo via-connect')).stdout, 'via-connect\n')

      // connect with a longer timeout extends the sandbox; a shorter one does not cut it.
      await Sandbox.connect(sbx.sandboxId, { timeoutMs: 900_000 })
      const extended = secondsFromNow((await sbx.getInfo()).endAt)
      assert.ok(Math.abs(extended - 900) <= SLACK_S, `after connect(900 s) endAt is ${extended}s away`)
      await sbx.connect({ timeoutMs: 60_000 })
      const kept = secondsFromNow((await sbx.getInfo()).endAt)
      assert.ok(kept > 900 - 2 * SLACK_S, `connect(60 s) must not shorten a running sandbox: endAt is ${kept}s away`)
    })
  })

  test('kill: true, then Sandbox.kill again is false; the sandbox is gone', T, async () => {
    const tag = freshTag()
    const sbx = await Sandbox.create({ metadata: runMetadata(tag), timeoutMs: 120_000 })
    try {
      assert.equal(await sbx.kill(), true)
      assert.equal(await Sandbox.kill(sbx.sandboxId), false)

      await assert.rejects(sbx.getInfo(), SandboxNotFoundError)
      await assert.rejects(Sandbox.getInfo(sbx.sandboxId), SandboxNotFoundError)
      await assert.rejects(Sandbox.connect(sbx.sandboxId), SandboxNotFoundError)
      assert.deepEqual(await listAll({ query: { metadata: tag } }), [], 'a killed sandbox is not listed')

      // Its envd is gone too: /health answers 502, so isRunning() is false.
      assert.equal(await sbx.isRunning(), false)
      await assert.rejects(sbx.commands.run('true', { requestTimeoutMs: 30_000 }))
    } finally {
      await killQuietly(sbx)
    }
  })

  test('pause, then Sandbox.connect resumes it and commands work again', { timeout: 300_000 }, async () => {
    const tag = freshTag()
    await withSandbox({ metadata: { ...tag, purpose: 'pause' }, timeoutMs: 300_000 }, async (sbx) => {
      await sbx.files.write('/tmp/e2b-js-pause.txt', 'kept across pause')

      assert.equal(await sbx.pause(), true)
      assert.equal((await sbx.getInfo()).state, 'paused')
      // Pausing a paused sandbox answers 409, which the SDK reports as false.
      assert.equal(await Sandbox.pause(sbx.sandboxId), false)

      const paused = await listAll({ query: { metadata: tag, state: ['paused'] } })
      assert.deepEqual(paused.map((s) => [s.sandboxId, s.state]), [[sbx.sandboxId, 'paused']])
      assert.deepEqual(await listAll({ query: { metadata: tag, state: ['running'] } }), [])

      const resumed = await Sandbox.connect(sbx.sandboxId)
      assert.equal(resumed.sandboxId, sbx.sandboxId)
      assert.equal((await resumed.getInfo()).state, 'running')
      assert.equal((await resumed.commands.run('echo resumed')).stdout, 'resumed\n')
      assert.equal(await resumed.files.read('/tmp/e2b-js-pause.txt'), 'kept across pause')
      // The first handle works again too: same id, same envd.
      assert.equal((await sbx.commands.run('echo old-handle')).stdout, 'old-handle\n')
    })
  })
})
