#!/usr/bin/env bash
# E2B compatibility cost: what E2B's SDK and the /e2b envd relay cost next to
# Aetherium's own API and a straight line to the sandbox's agent, in one table.
#
#   benches/e2b.sh [-n N] [--calls C] [--mib M] [--no-warmup]        (make bench-e2b,
#                                                                     BENCH_E2B_ARGS=...)
#
#   1. create -> first command output, A: E2B's Python SDK (Sandbox.create(), then
#      commands.run("echo hi"), timed to its first stdout callback) vs B: /api/v1
#      (POST /api/v1/vms?wait=60s, then POST /api/v1/vms/{id}/exec/stream, timed to
#      the first stdout event). Each deletes its sandbox after the timer stops.
#   2. one unary Connect call (POST /process.Process/List, body {}), A: through the
#      relay (<server>/e2b + E2b-Sandbox-Id) vs B: straight to the agent's unix
#      socket; both on kept-alive HTTP/1.1 connections, C calls (default 50) per
#      iteration, alternating. Target: the relay adds <= 1.5 ms (p90).
#   3. GET /files (download) and POST /files (raw upload) of M MiB (default 256),
#      relay vs socket, in MiB/s. Target: the relay keeps >= 0.7x of the socket's rate.
#
# N iterations (default 20) of each, A and B interleaved (which goes first
# alternates), after one untimed warm-up round. Figures: median and p90 (for MiB/s,
# p90 is the slow end: the p90 of the transfer time); A/B is median over median.
# Absolute figures drift with the machine's load; the A/B ratio is the figure to read.
#
# Starts its own `aetherium up` ($AETHERIUM_BIN, else `command -v aetherium`) on a
# free port with a throw-away data dir and worker id; at the end (also on Ctrl-C) it
# deletes its sandboxes, stops the server by pid, removes the data dir and checks that
# no container with its worker id is left. Needs the e2b venv of tests/e2b/run.sh
# ($E2B_PYTHON, default ~/.cache/aetherium/e2b-venv/bin/python) and a binary that
# serves /e2b.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"

N=20
CALLS=50
MIB=256
WARMUP=1
usage() { sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
	case "$1" in
	-n | --iterations)
		[ $# -ge 2 ] || die "$1 needs a number"
		N=$2
		shift
		;;
	-n[0-9]*) N=${1#-n} ;;
	--calls)
		CALLS=${2:?--calls needs a number}
		shift
		;;
	--mib)
		MIB=${2:?--mib needs a number}
		shift
		;;
	--no-warmup) WARMUP=0 ;;
	-h | --help)
		usage
		exit 0
		;;
	*) die "unknown argument: $1 (see --help)" ;;
	esac
	shift
done
for v in "$N" "$CALLS" "$MIB"; do
	[[ "$v" =~ ^[1-9][0-9]*$ ]] || die "-n, --calls and --mib want positive integers, got '$v'"
done

CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/aetherium"
PY=${E2B_PYTHON:-$CACHE/e2b-venv/bin/python}
command -v curl >/dev/null 2>&1 || die "curl is needed (apt-get install curl)"
command -v python3 >/dev/null 2>&1 || die "python3 is needed (apt-get install python3)"
"$PY" -c 'import e2b' 2>/dev/null ||
	die "no python with E2B's SDK at $PY: run 'make test-e2b' once (it makes the venv), or set E2B_PYTHON"
docker info >/dev/null 2>&1 || die "docker is not reachable ('docker info' fails): run scripts/setup.sh --no-start first"
docker image inspect "$AETHERIUM_IMAGE" >/dev/null 2>&1 ||
	die "image $AETHERIUM_IMAGE is missing: run scripts/setup.sh --no-start first"

BIN=${AETHERIUM_BIN:-$(command -v aetherium 2>/dev/null || true)}
[ -n "$BIN" ] && [ -x "$BIN" ] || die "no aetherium binary: put one on PATH (scripts/setup.sh) or set AETHERIUM_BIN"
# The agent: what the server finds by itself for the installed CLI, the cargo
# target's for any other binary (as benches/exec_latency.sh does).
AGENT_BIN=${AETHERIUM_AGENT_PATH:-}
if [ "$BIN" != "$(command -v aetherium 2>/dev/null || true)" ] && [ -z "$AGENT_BIN" ]; then
	a="${CARGO_TARGET_DIR:-$(default_cargo_target_dir)}/agent/aetherium-agent"
	[ -x "$a" ] && AGENT_BIN=$a
fi
IMAGE=$AETHERIUM_IMAGE
log() { echo "bench-e2b: $*" >&2; }

# The server: its own data dir, worker id and port; its sandboxes deleted and
# checked gone on exit (tests/lib/server.sh).
. "$ROOT/tests/lib/server.sh"
cleanup() {
	local status=$?
	trap - EXIT INT TERM
	local worker=$SERVER_WORKER_ID
	server_stop "$status"
	if [ -n "$worker" ] && [ -n "$(docker ps -aq --filter "label=io.aetherium.worker_id=$worker")" ]; then
		log "error: containers of worker $worker are still there"
		[ "$status" -ne 0 ] || status=1
	elif [ -n "$worker" ]; then
		log "clean: no container labelled io.aetherium.worker_id=$worker is left"
	fi
	exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
server_start bench-e2b
URL=$SERVER_URL
TOKEN=$SERVER_TOKEN
DATA=$SERVER_TMP/data
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 "$URL/e2b/v2/sandboxes")
[ "$code" = 401 ] || die "$BIN does not serve E2B's API (GET /e2b/v2/sandboxes without a key answered $code, not 401):
       it predates /e2b; point AETHERIUM_BIN at a newer build (and AETHERIUM_AGENT_PATH at its agent)"

echo
echo "bench-e2b: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), $("$BIN" --version) ($BIN), e2b $("$PY" -c 'import importlib.metadata as m; print(m.version("e2b"))') (python $("$PY" -c 'import platform; print(platform.python_version())')), $(nproc) CPU(s), image $AETHERIUM_IMAGE"
echo "bench-e2b: absolute figures drift with the load of a shared machine; the A/B ratio is the figure"

BENCH_URL=$URL BENCH_TOKEN=$TOKEN BENCH_DATA=$DATA BENCH_N=$N BENCH_CALLS=$CALLS BENCH_MIB=$MIB \
	BENCH_WARMUP=$WARMUP PYTHONDONTWRITEBYTECODE=1 "$PY" "$ROOT/benches/e2b_bench.py"
