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
agent_env=()
if [ "$BIN" != "$(command -v aetherium 2>/dev/null || true)" ] && [ -z "${AETHERIUM_AGENT_PATH:-}" ]; then
	a="${CARGO_TARGET_DIR:-$(default_cargo_target_dir)}/agent/aetherium-agent"
	[ -x "$a" ] && agent_env=(AETHERIUM_AGENT_PATH="$a")
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/aetherium-bench-e2b.XXXXXX")
DATA=$TMP/data
WORKER_ID="bench-e2b-$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')"
SERVER_PID=''
URL=''
TOKEN=''

api() { # METHOD PATH
	curl -sS --max-time 120 -X "$1" -H "Authorization: Bearer $TOKEN" "$URL$2"
}

cleanup() {
	local status=$?
	trap - EXIT INT TERM
	if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
		if [ -n "$TOKEN" ]; then
			local ids id
			ids=$(api GET '/api/v1/vms?limit=1000' 2>/dev/null | python3 -c 'import json,sys
try: print("\n".join(v["id"] for v in json.load(sys.stdin).get("vms", [])))
except Exception: pass' || true)
			for id in $ids; do
				echo "bench-e2b: deleting sandbox $id" >&2
				api DELETE "/api/v1/vms/$id?wait=60s" >/dev/null 2>&1 || true
			done
		fi
		kill -TERM "$SERVER_PID" 2>/dev/null || true
		local i
		for ((i = 0; i < 150; i++)); do
			kill -0 "$SERVER_PID" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$SERVER_PID" 2>/dev/null || true
	fi
	local left cid
	left=$(docker ps -aq --no-trunc --filter "label=io.aetherium.worker_id=$WORKER_ID")
	if [ -n "$left" ]; then
		echo "bench-e2b: warning: containers of worker $WORKER_ID were left; removing them" >&2
		for cid in $left; do
			docker rm -f "$cid" >/dev/null 2>&1 || true
		done
	fi
	if [ -n "$(docker ps -aq --filter "label=io.aetherium.worker_id=$WORKER_ID")" ]; then
		echo "bench-e2b: error: containers of worker $WORKER_ID are still there" >&2
		[ "$status" -ne 0 ] || status=1
	else
		echo "bench-e2b: clean: no container labelled io.aetherium.worker_id=$WORKER_ID is left" >&2
	fi
	if [ "$status" -ne 0 ] && [ -f "$TMP/server.log" ]; then
		tail -n 30 "$TMP/server.log" >&2 || true
	fi
	rm -rf "$TMP"
	exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

cat >"$TMP/config.yaml" <<EOF
server:
  max_wait_seconds: 600
  request_timeout_seconds: 660
auth:
  rate_limit_per_second: 0
worker:
  id: $WORKER_ID
vmm:
  docker:
    default_image: $AETHERIUM_IMAGE
logging:
  level: warn
EOF

echo "bench-e2b: starting $BIN up (worker $WORKER_ID, data in $DATA)" >&2
# setsid: Ctrl-C must not reach the server before the sandboxes are deleted through it.
env -u AETHERIUM_API_TOKEN "${agent_env[@]}" AETHERIUM_WORKER_ID="$WORKER_ID" \
	setsid "$BIN" up --config "$TMP/config.yaml" --host 127.0.0.1 --port 0 --data-dir "$DATA" \
	>"$TMP/server.log" 2>&1 </dev/null &
SERVER_PID=$!
for ((i = 0; i < 600; i++)); do
	kill -0 "$SERVER_PID" 2>/dev/null || die "the server exited at start (log below)"
	[ -z "$URL" ] && URL=$(sed -n 's/^aetherium is up at \(http:[^ ]*\).*/\1/p' "$TMP/server.log" | head -n 1 || true)
	[ -n "$URL" ] && curl -fsS -o /dev/null --max-time 3 "$URL/api/v1/health" 2>/dev/null && break
	sleep 0.1
done
curl -fsS -o /dev/null --max-time 3 "$URL/api/v1/health" || die "the server did not become healthy within 60 s"
[ -s "$DATA/admin-token" ] || die "no admin credential in $DATA/admin-token"
TOKEN=$(tr -d '[:space:]' <"$DATA/admin-token")
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 "$URL/e2b/v2/sandboxes")
[ "$code" = 401 ] || die "$BIN does not serve E2B's API (GET /e2b/v2/sandboxes without a key answered $code, not 401):
       it predates /e2b; point AETHERIUM_BIN at a newer build (and AETHERIUM_AGENT_PATH at its agent)"
echo "bench-e2b: server up at $URL (pid $SERVER_PID)" >&2

echo
echo "bench-e2b: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), $("$BIN" --version) ($BIN), e2b $("$PY" -c 'import importlib.metadata as m; print(m.version("e2b"))') (python $("$PY" -c 'import platform; print(platform.python_version())')), $(nproc) CPU(s), image $AETHERIUM_IMAGE"
echo "bench-e2b: absolute figures drift with the load of a shared machine; the A/B ratio is the figure"

BENCH_URL=$URL BENCH_TOKEN=$TOKEN BENCH_DATA=$DATA BENCH_N=$N BENCH_CALLS=$CALLS BENCH_MIB=$MIB \
	BENCH_WARMUP=$WARMUP PYTHONDONTWRITEBYTECODE=1 "$PY" "$ROOT/benches/e2b_bench.py"
