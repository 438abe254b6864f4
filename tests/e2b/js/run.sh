#!/usr/bin/env bash
# E2B's JavaScript SDK (e2b 2.51.0, normal mode) against a running Aetherium
# gateway's E2B control plane. See tests/e2b/js/README.md.
#
#   bash tests/e2b/js/run.sh [node --test args...]
#
# The caller starts the server and passes, in the environment:
#   E2B_API_KEY, E2B_API_URL, E2B_SANDBOX_URL   (the SDK reads these itself)
#   AETHERIUM_URL, AETHERIUM_TOKEN              (Aetherium's own API, for cross-checks)
#
# Installs the pinned dependencies into tests/e2b/js/node_modules with `npm ci`,
# again only when package-lock.json changed (a sha256 stamp, under a lock so
# parallel runs don't race); exits with node's test runner's status. Works
# unattended (CI=true, no stdin, as root).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
LOCKFILE="$HERE/package-lock.json"
STAMP="$HERE/node_modules/.package-lock.sha256"

log() { echo "e2b-js-tests: $*" >&2; }
die() { log "error: $*"; exit 1; }

# --- node ----------------------------------------------------------------------
command -v node >/dev/null 2>&1 || die "node is missing (Node.js >= 20.18.1 is needed: apt-get install nodejs)"
command -v npm >/dev/null 2>&1 || die "npm is missing (apt-get install npm)"
# The floor is 18 for node:test, but e2b 2.51.0 itself declares
# "node": ">=20.18.1 <21 || >=22": check that, it is the real requirement.
node -e '
	const [maj, min, pat] = process.versions.node.split(".").map(Number);
	const ok = maj >= 22 || (maj === 20 && (min > 18 || (min === 18 && pat >= 1)));
	process.exit(ok ? 0 : 1);
' || die "node $(node --version) is too old: e2b 2.51.0 needs >= 20.18.1 (20.x) or >= 22"

# --- environment ---------------------------------------------------------------
missing=()
for name in E2B_API_KEY E2B_API_URL E2B_SANDBOX_URL AETHERIUM_URL AETHERIUM_TOKEN; do
	[ -n "${!name:-}" ] || missing+=("$name")
done
if [ "${#missing[@]}" -gt 0 ]; then
	die "missing environment: ${missing[*]}. Start the gateway and set E2B_API_KEY (an operator key), E2B_API_URL and E2B_SANDBOX_URL (http://127.0.0.1:PORT/e2b), AETHERIUM_URL (http://127.0.0.1:PORT) and AETHERIUM_TOKEN (an admin token)"
fi
case "${E2B_DEBUG:-}" in
	[Tt][Rr][Uu][Ee]) die "E2B_DEBUG=true makes the SDK skip the control plane: unset it" ;;
esac

# --- dependencies --------------------------------------------------------------
want_hash() { sha256sum "$LOCKFILE" | cut -d' ' -f1; }

install_deps() {
	exec 9>"$HERE/.npm-install.lock"
	flock 9
	local want
	want=$(want_hash)
	if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -f "$HERE/node_modules/e2b/package.json" ]; then
		flock -u 9
		return 0
	fi
	log "installing dependencies (npm ci) into $HERE/node_modules"
	(cd "$HERE" && CI=true npm ci --no-audit --no-fund --no-update-notifier --loglevel=error </dev/null)
	local got
	got=$(node -p 'require(process.argv[1]).version' "$HERE/node_modules/e2b/package.json")
	[ "$got" = "2.51.0" ] || die "npm ci installed e2b $got, expected exactly 2.51.0"
	echo "$want" >"$STAMP"
	flock -u 9
}
install_deps

# --- run -----------------------------------------------------------------------
args=(--test)
# --test-concurrency: files in parallel; --test-force-exit: a leaked stream
# after a failed test must not keep a file's process alive.
node_help=$(node --help)
[[ $node_help == *--test-concurrency* ]] && args+=(--test-concurrency=2)
[[ $node_help == *--test-force-exit* ]] && args+=(--test-force-exit)

cd "$ROOT"
status=0
node "${args[@]}" "$@" tests/e2b/js/*.test.mjs </dev/null || status=$?
exit "$status"
