// The envd half of the suite: commands, pty, files and watches, as E2B's JS SDK
// drives them. Defined once and registered by a test file with a way to get a
// sandbox, so the same cases run through the control plane (envd.test.mjs, a new
// sandbox per test) and, for checking the agent alone, in the SDK's debug mode.
//
// Only sh/bash/coreutils are assumed inside the sandbox (no python3).

import assert from 'node:assert/strict'
import { createHash, randomBytes, randomUUID } from 'node:crypto'
import { describe, test } from 'node:test'
import {
  CommandExitError,
  FileNotFoundError,
  FileType,
  FilesystemEventType,
} from 'e2b'

const TEST_TIMEOUT_MS = 120_000

/** Polls cond every 50 ms until it is truthy; fails with what after timeoutMs. */
export async function waitFor(cond, what, timeoutMs = 15_000) {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    if (await cond()) return
    if (Date.now() > deadline) assert.fail(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

const sha256 = (bytes) => createHash('sha256').update(bytes).digest('hex')

/** A directory of its own for one test, inside the sandbox. */
async function scratchDir(sbx) {
  const dir = `/tmp/e2b-js-${randomUUID()}`
  assert.equal(await sbx.files.makeDir(dir), true)
  return dir
}

/**
 * Registers the envd tests.
 *
 * @param {object} o
 * @param {string} o.label        name of the describe block
 * @param {(name: string, fn: (sbx) => Promise<void>) => Promise<void>} o.withSandbox
 *        gives fn a sandbox of its own and disposes of it afterwards
 * @param {() => Promise<void>} [o.setup] awaited at the start of each test (a cached preflight)
 */
export function defineEnvdTests({ label, withSandbox, setup }) {
  describe(label, () => {
    // setup runs in every test (it caches itself), so that a missing server
    // fails each test with its message rather than cancelling them all.
    const it = (name, fn) =>
      test(name, { timeout: TEST_TIMEOUT_MS }, async () => {
        if (setup) await setup()
        await withSandbox(name, fn)
      })

    // --- commands ------------------------------------------------------------

    it('commands.run returns stdout, stderr and exit code', async (sbx) => {
      const result = await sbx.commands.run('echo hi; echo oops >&2')
      assert.equal(result.exitCode, 0)
      assert.equal(result.stdout, 'hi\n')
      assert.equal(result.stderr, 'oops\n')
    })

    it('commands.run with a non-zero exit throws CommandExitError', async (sbx) => {
      const err = await sbx.commands
        .run('echo before; echo broken >&2; exit 3')
        .then(() => assert.fail('a command that exits 3 must reject'), (e) => e)
      assert.ok(err instanceof CommandExitError, `expected CommandExitError, got ${err}`)
      assert.equal(err.exitCode, 3)
      assert.equal(err.stdout, 'before\n')
      assert.equal(err.stderr, 'broken\n')
    })

    it('commands.run with envs and cwd', async (sbx) => {
      const dir = await scratchDir(sbx)
      const result = await sbx.commands.run('echo "$GREETING"; pwd', {
        envs: { GREETING: 'hello there' },
        cwd: dir,
      })
      assert.equal(result.stdout, `hello there\n${dir}\n`)
    })

    it('commands.run streams stdout to onStdout as it is produced', async (sbx) => {
      const chunks = [] // [ms since start, chunk]
      const started = Date.now()
      const result = await sbx.commands.run(
        'for i in 1 2 3; do echo line$i; sleep 0.5; done',
        { onStdout: (chunk) => chunks.push([Date.now() - started, chunk]) }
      )
      const total = Date.now() - started
      assert.equal(result.stdout, 'line1\nline2\nline3\n')
      assert.equal(chunks.map(([, c]) => c).join(''), result.stdout)
      // Produced 0.5 s apart: they arrive as separate chunks, the first long
      // before the command ends (not buffered until exit by anything in between).
      assert.ok(chunks.length >= 2, `expected separate chunks, got ${JSON.stringify(chunks)}`)
      assert.ok(
        chunks[0][0] < total - 700,
        `first chunk after ${chunks[0][0]} ms of ${total} ms: output was not streamed`
      )
    })

    it('background command: pid, commands.list, wait()', async (sbx) => {
      const handle = await sbx.commands.run('sleep 2; echo bg-done', { background: true })
      try {
        assert.ok(Number.isInteger(handle.pid) && handle.pid > 0, `pid ${handle.pid}`)
        const listed = await sbx.commands.list()
        assert.ok(
          listed.some((p) => p.pid === handle.pid),
          `pid ${handle.pid} not in commands.list(): ${JSON.stringify(listed)}`
        )
        const result = await handle.wait()
        assert.equal(result.exitCode, 0)
        assert.equal(result.stdout, 'bg-done\n')
        assert.equal(handle.exitCode, 0)
      } finally {
        await handle.kill().catch(() => {})
      }
    })

    it('sendStdin reaches a background cat', async (sbx) => {
      let seen = ''
      const handle = await sbx.commands.run('cat', {
        background: true,
        stdin: true,
        onStdout: (chunk) => {
          seen += chunk
        },
      })
      try {
        await sbx.commands.sendStdin(handle.pid, 'hello\n')
        await handle.sendStdin('world\n')
        await waitFor(() => seen === 'hello\nworld\n', `cat to echo its input (seen ${JSON.stringify(seen)})`)
      } finally {
        await handle.kill().catch(() => {})
      }
    })

    it('kill stops a background command', async (sbx) => {
      const handle = await sbx.commands.run('sleep 60', { background: true })
      const started = Date.now()
      assert.equal(await handle.kill(), true)
      const err = await handle.wait().then(
        () => assert.fail('wait() of a killed command must reject'),
        (e) => e
      )
      assert.ok(err instanceof CommandExitError, `expected CommandExitError, got ${err}`)
      assert.notEqual(err.exitCode, 0)
      assert.ok(Date.now() - started < 10_000)
      // Gone: killing it again reports "not found" as false.
      assert.equal(await sbx.commands.kill(handle.pid), false)

      const other = await sbx.commands.run('sleep 60', { background: true })
      assert.equal(await sbx.commands.kill(other.pid), true)
      await assert.rejects(other.wait(), CommandExitError)
    })

    // --- pty -----------------------------------------------------------------

    it('pty.create, sendInput, output, resize, kill', async (sbx) => {
      const decoder = new TextDecoder()
      let output = ''
      const handle = await sbx.pty.create({
        cols: 80,
        rows: 24,
        onData: (data) => {
          output += decoder.decode(data, { stream: true })
        },
        timeoutMs: 60_000,
      })
      try {
        assert.ok(handle.pid > 0)
        const enc = new TextEncoder()
        // The echoed input says $((40+2)); only the shell's output says 42.
        await sbx.pty.sendInput(handle.pid, enc.encode('echo pty-$((40+2))\n'))
        await waitFor(() => output.includes('pty-42'), `pty output (got ${JSON.stringify(output)})`)

        await sbx.pty.resize(handle.pid, { cols: 101, rows: 33 })
        await sbx.pty.sendInput(handle.pid, enc.encode('stty size; echo size-$((1+1))\n'))
        await waitFor(() => output.includes('size-2'), `stty output (got ${JSON.stringify(output)})`)
        assert.match(output, /33 101/)

        assert.equal(await sbx.pty.kill(handle.pid), true)
        await handle.wait().catch(() => {})
      } finally {
        await sbx.pty.kill(handle.pid).catch(() => {})
      }
    })

    // --- files ---------------------------------------------------------------

    it('files.write and files.read text', async (sbx) => {
      const dir = await scratchDir(sbx)
      const path = `${dir}/hello.txt`
      const info = await sbx.files.write(path, 'hello file ✓\n')
      assert.equal(info.path, path)
      assert.equal(info.name, 'hello.txt')
      assert.equal(info.type, FileType.FILE)
      assert.equal(await sbx.files.read(path), 'hello file ✓\n')
      // And the sandbox sees the same bytes.
      const cat = await sbx.commands.run(`cat ${path}`)
      assert.equal(cat.stdout, 'hello file ✓\n')
    })

    it('files.write and files.read bytes (Uint8Array)', async (sbx) => {
      const dir = await scratchDir(sbx)
      const path = `${dir}/blob.bin`
      const data = new Uint8Array(256 * 4 + 20_000)
      for (let i = 0; i < 1024; i++) data[i] = i % 256
      data.set(randomBytes(20_000), 1024)
      await sbx.files.write(path, data)
      const back = await sbx.files.read(path, { format: 'bytes' })
      assert.ok(back instanceof Uint8Array, `read bytes gave ${back?.constructor?.name}`)
      assert.equal(back.length, data.length)
      assert.equal(sha256(back), sha256(data))
      const size = await sbx.commands.run(`stat -c %s ${path}`)
      assert.equal(size.stdout.trim(), String(data.length))
    })

    it('files.read of a missing file throws FileNotFoundError', async (sbx) => {
      const dir = await scratchDir(sbx)
      await assert.rejects(sbx.files.read(`${dir}/missing.txt`), FileNotFoundError)
    })

    it('files.makeDir, list, exists, remove', async (sbx) => {
      const dir = await scratchDir(sbx)
      assert.equal(await sbx.files.makeDir(`${dir}/sub/deeper`), true)
      // Already there: already_exists is false, not an error.
      assert.equal(await sbx.files.makeDir(`${dir}/sub/deeper`), false)
      await sbx.files.write(`${dir}/a.txt`, '0123456789')

      const entries = Object.fromEntries((await sbx.files.list(dir)).map((e) => [e.name, e]))
      assert.deepEqual(Object.keys(entries).sort(), ['a.txt', 'sub'])
      assert.equal(entries['a.txt'].type, FileType.FILE)
      assert.equal(entries['a.txt'].path, `${dir}/a.txt`)
      assert.equal(Number(entries['a.txt'].size), 10)
      assert.equal(entries.sub.type, FileType.DIR)
      assert.equal(entries.sub.path, `${dir}/sub`)

      assert.equal(await sbx.files.exists(`${dir}/a.txt`), true)
      assert.equal(await sbx.files.exists(`${dir}/sub`), true)
      assert.equal(await sbx.files.exists(`${dir}/nope`), false)

      await sbx.files.remove(`${dir}/a.txt`)
      assert.equal(await sbx.files.exists(`${dir}/a.txt`), false)
      await sbx.files.remove(`${dir}/sub`)
      assert.equal(await sbx.files.exists(`${dir}/sub`), false)
      assert.deepEqual(await sbx.files.list(dir), [])
    })

    it('files.watchDir reports a write', async (sbx) => {
      const dir = await scratchDir(sbx)
      const events = []
      const watcher = await sbx.files.watchDir(dir, (event) => {
        events.push(event)
      })
      try {
        await sbx.files.write(`${dir}/new.txt`, 'x')
        await waitFor(
          () => events.some((e) => e.name === 'new.txt'),
          `a watch event for new.txt (got ${JSON.stringify(events)})`
        )
        const kinds = new Set(events.filter((e) => e.name === 'new.txt').map((e) => e.type))
        assert.ok(
          kinds.has(FilesystemEventType.CREATE) || kinds.has(FilesystemEventType.WRITE),
          `events for new.txt: ${[...kinds]}`
        )
      } finally {
        await watcher.stop()
      }
    })

    it('a 5 MiB upload and download round trip', async (sbx) => {
      const dir = await scratchDir(sbx)
      const path = `${dir}/big.bin`
      const data = new Uint8Array(randomBytes(5 * 1024 * 1024))
      const digest = sha256(data)

      const info = await sbx.files.write(path, data)
      assert.equal(info.path, path)
      // What landed in the sandbox, checked by the sandbox itself.
      const inside = await sbx.commands.run(`stat -c %s ${path}; sha256sum ${path}`)
      const [size, sum] = inside.stdout.split('\n')
      assert.equal(size, String(data.length))
      assert.equal(sum.split(/\s+/)[0], digest)

      const back = await sbx.files.read(path, { format: 'bytes' })
      assert.equal(back.length, data.length)
      assert.equal(sha256(back), digest)
    })
  })
}
