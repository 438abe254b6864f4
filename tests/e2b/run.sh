#!/usr/bin/env bash
# E2B SDK compatibility tests: E2B's own Python SDK drives aetherium-agent directly
# (debug mode, test_e2b_sdk.py; see docs/e2b-compat.md), then E2B's Python and JS
# SDKs drive a real `aetherium up` in normal mode through its E2B control plane
# (test_control_plane.py, js/; see docs/e2b.md).
#
#   bash tests/e2b/run.sh [pytest args...]      (make test-e2b)
#
# Keeps a venv in ${XDG_CACHE_HOME:-$HOME/.cache}/aetherium/e2b-venv, rebuilt only
# when requirements.txt (or the Python version) changes; builds the agent if its
# binary is missing; exits with the first failing status (pytest's 5, "no tests
# collected", is a failure too). With pytest arguments only pytest runs. Works
# unattended (CI=true, no stdin, as root).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE="$ROOT/tests/e2b"
REQ="$HERE/requirements.txt"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/aetherium"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
export AETHERIUM_AGENT_BIN="${AETHERIUM_AGENT_BIN:-$CARGO_TARGET_DIR/agent/aetherium-agent}"

log() { echo "e2b-tests: $*" >&2; }
die() { log "error: $*"; exit 1; }

command -v python3 >/dev/null 2>&1 || die "python3 is missing (apt-get install python3)"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	|| die "the e2b SDK needs Python >= 3.11; python3 is $(python3 -V 2>&1)"

. "$ROOT/tests/lib/venv.sh"
venv_setup e2b "$REQ" 'import e2b, pytest'

# The debug-mode suite drives the agent; the normal-mode suites a server on Docker:
# E2B's SDKs (Python here, JS in tests/e2b/js) through its E2B control plane and
# envd relay (/e2b).
command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1 ||
	die "docker is not reachable ('docker info' fails): run scripts/setup.sh --no-start first"
IMAGE="${AETHERIUM_TEST_IMAGE:-aetherium/base:latest}"
docker image inspect "$IMAGE" >/dev/null 2>&1 || die "image $IMAGE is missing: run scripts/setup.sh --no-start first"
AGENT_BIN="$AETHERIUM_AGENT_BIN"
. "$ROOT/tests/lib/server.sh"
server_binaries
server_stop_on_exit
server_start e2b

# Exactly what a user sets to move a script from E2B's cloud here.
export E2B_API_KEY="$SERVER_TOKEN" E2B_API_URL="$SERVER_URL/e2b" E2B_SANDBOX_URL="$SERVER_URL/e2b"
unset E2B_DEBUG E2B_DOMAIN
# For the tests' own checks through Aetherium's API.
export AETHERIUM_URL="$SERVER_URL" AETHERIUM_TOKEN="$SERVER_TOKEN" AETHERIUM_TEST_IMAGE="$IMAGE"

cd "$ROOT"
status=0
"$VENV/bin/python" -m pytest -q tests/e2b "$@" </dev/null || status=$?
if [ "$status" -eq 5 ]; then
	log "error: pytest collected no tests"
fi
if [ "$#" -eq 0 ]; then
	bash tests/e2b/js/run.sh </dev/null || status=$((status ? status : $?))
fi

# The SDKs through a distributed cluster: PostgreSQL, Redis, a gateway and two workers
# (scripts/cluster.sh); the Python tests that reach sandboxes, and the whole JS suite.
# The gateway runs no sandbox, so every envd request crosses the TLS tunnel to the
# owning worker.
CLUSTER_TESTS='create_runs or list_filters or pause_then or commands_stream or pty or files_text or bad_keys or a_script_written'
cluster_state=''
cluster_stop() {
	[ -n "$cluster_state" ] || return 0
	AETHERIUM_CLUSTER_DIR="$cluster_state" bash scripts/cluster.sh destroy >/dev/null 2>&1 || true
	local w cid
	for w in $CLUSTER_WORKERS; do
		for cid in $(docker ps -aq --no-trunc --filter "label=io.aetherium.worker_id=$w"); do
			docker rm -f "$cid" >/dev/null 2>&1 || true
		done
	done
	cluster_state=''
}
free_port_triple() { # a port P with P, P+1 and P+2 free on 127.0.0.1
	python3 - <<'PY'
import random, socket
for _ in range(200):
    p = random.randint(20000, 59000)
    try:
        for q in (p, p + 1, p + 2):
            with socket.socket() as s:
                s.bind(("127.0.0.1", q))
        print(p)
        break
    except OSError:
        continue
PY
}
if [ "$#" -eq 0 ] && [ "${E2B_SKIP_CLUSTER:-}" != 1 ]; then
	cluster_state=$(mktemp -d "${TMPDIR:-/tmp}/aetherium-e2b-cluster.XXXXXX")
	id="e2b-$(head -c 4 /dev/urandom | od -An -tx1 | tr -d ' \n')"
	CLUSTER_WORKERS="$id-1 $id-2"
	CLUSTER_PORT=$(free_port_triple)
	export CLUSTER_WORKERS CLUSTER_PORT
	trap 'rc=$?; cluster_stop; (exit "$rc"); server_cleanup' EXIT
	log "starting a cluster (gateway on :$CLUSTER_PORT, workers $CLUSTER_WORKERS, state $cluster_state)"
	if AETHERIUM_CLUSTER_DIR="$cluster_state" AETHERIUM_BIN="$BIN" AETHERIUM_AGENT_PATH="$AGENT_BIN" \
		AETHERIUM_LOG_LEVEL=warn bash scripts/cluster.sh up </dev/null >"$cluster_state.log" 2>&1; then
		gateway="http://127.0.0.1:$CLUSTER_PORT"
		key=$(tr -d '[:space:]' <"$cluster_state/gateway/admin-token")
		E2B_API_KEY="$key" E2B_API_URL="$gateway/e2b" E2B_SANDBOX_URL="$gateway/e2b" \
			AETHERIUM_URL="$gateway" AETHERIUM_TOKEN="$key" \
			bash -c '"$1" -m pytest -q tests/e2b/test_control_plane.py -k "$2"; a=$?; bash tests/e2b/js/run.sh; b=$?; exit $((a ? a : b))' \
			cluster-suites "$VENV/bin/python" "$CLUSTER_TESTS" </dev/null || {
			status=$((status ? status : $?))
			for f in "$cluster_state"/gateway.log "$cluster_state"/e2b-*.log; do
				log "$f (last 20 lines):"
				tail -n 20 "$f" >&2 || true
			done
		}
	else
		log "error: the cluster did not start (log below)"
		tail -n 30 "$cluster_state.log" >&2 || true
		status=$((status ? status : 1))
	fi
	rm -f "$cluster_state.log"
	cluster_stop
fi
exit "$status"
