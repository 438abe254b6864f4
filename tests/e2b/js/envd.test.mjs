// The envd half (commands, pty, files, watches) through Aetherium: each test
// creates a sandbox with Sandbox.create() in normal mode (E2B_API_KEY,
// E2B_API_URL, E2B_SANDBOX_URL from the environment) and kills it afterwards.
// The cases themselves are in lib/envd-cases.mjs.

import { defineEnvdTests } from './lib/envd-cases.mjs'
import { preflight, withSandbox } from './lib/control-plane.mjs'

defineEnvdTests({
  label: 'envd through the E2B control plane (normal mode)',
  setup: preflight,
  withSandbox: (name, fn) => withSandbox({ metadata: { 'e2b-js-test': name } }, fn),
})
