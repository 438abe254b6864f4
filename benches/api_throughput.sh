#!/usr/bin/env bash
# HTTP throughput: authenticated `GET /api/v1/vms` next to `GET /health`, with wrk,
# so what authentication and the store cost per request shows as a ratio.
#
#   benches/api_throughput.sh [-d SECONDS] [-c CONNECTIONS] [-t THREADS] [--vms N]
#                                                    (make bench-http, BENCH_HTTP_ARGS=...)
#
# Builds the release CLI (incrementally; BENCH_BIN=path uses that binary instead),
# starts its own `aetherium up` on a free port with a throw-away data dir, its own
# worker id and rate limiting off (a benchmark is not abuse), creates --vms sandboxes
# (default 3) so the list is not empty, runs `wrk --latency` against both routes
# (default 10 s, 2 threads, 32 connections each) and prints requests/s, p50 and
# p99. At the end it deletes the sandboxes, stops the server and removes, by id,
# every container labelled with its worker id, also on Ctrl-C.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"

DURATION=10
CONNECTIONS=32
THREADS=2
VMS=3
usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
	case "$1" in
	-d | --duration) DURATION=${2:?}; shift ;;
	-c | --connections) CONNECTIONS=${2:?}; shift ;;
	-t | --threads) THREADS=${2:?}; shift ;;
	--vms) VMS=${2:?}; shift ;;
	-h | --help)
		usage
		exit 0
		;;
	*) die "unknown argument: $1 (see --help)" ;;
	esac
	shift
done
for v in "$DURATION" "$CONNECTIONS" "$THREADS"; do
	[[ "$v" =~ ^[1-9][0-9]*$ ]] || die "durations, connections and threads are positive integers, got '$v'"
done
[[ "$VMS" =~ ^[0-9]+$ ]] || die "--vms wants a number, got '$VMS'"

command -v wrk >/dev/null 2>&1 || die "wrk is needed: apt-get install wrk (scripts/setup.sh installs it)"
command -v curl >/dev/null 2>&1 || die "curl is needed (apt-get install curl)"
command -v python3 >/dev/null 2>&1 || die "python3 is needed (apt-get install python3)"
docker info >/dev/null 2>&1 || die "docker is not reachable ('docker info' fails): run scripts/setup.sh --no-start first"
docker image inspect "$AETHERIUM_IMAGE" >/dev/null 2>&1 ||
	die "image $AETHERIUM_IMAGE is missing: run scripts/setup.sh --no-start first"

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$(default_cargo_target_dir)}
AGENT_BIN=${AETHERIUM_AGENT_BIN:-$CARGO_TARGET_DIR/agent/aetherium-agent}
if [ -n "${BENCH_BIN:-}" ]; then
	BIN=$BENCH_BIN
else
	echo "bench-http: building the release CLI (incremental)" >&2
	(cd "$ROOT" && cargo build -q --release -p aetherium-cli --bin aetherium </dev/null)
	BIN=$CARGO_TARGET_DIR/release/aetherium
fi
[ -x "$BIN" ] || die "no aetherium binary at $BIN"
if [ ! -x "$AGENT_BIN" ]; then
	make -C "$ROOT" agent </dev/null
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/aetherium-bench-http.XXXXXX")
DATA=$TMP/data
WORKER_ID="bench-http-$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')"
SERVER_PID=''
URL=''
TOKEN=''
VM_IDS=()

# The one place that knows where the server keeps the bootstrap admin credential.
api_token() {
	[ -s "$DATA/admin-token" ] || return 1
	tr -d '[:space:]' <"$DATA/admin-token"
}

api() { # METHOD PATH [JSON]
	local args=(-sS --max-time 120 -X "$1" -H "Authorization: Bearer $TOKEN")
	[ $# -ge 3 ] && args+=(-H 'Content-Type: application/json' -d "$3")
	curl "${args[@]}" "$URL$2"
}

cleanup() {
	local status=$?
	trap - EXIT INT TERM
	if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
		local id
		for id in "${VM_IDS[@]}"; do
			api DELETE "/api/v1/vms/$id?wait=60s" >/dev/null 2>&1 || true
		done
		kill -TERM "$SERVER_PID" 2>/dev/null || true
		local i
		for ((i = 0; i < 150; i++)); do
			kill -0 "$SERVER_PID" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$SERVER_PID" 2>/dev/null || true
	fi
	local cid
	for cid in $(docker ps -aq --no-trunc --filter "label=io.aetherium.worker_id=$WORKER_ID"); do
		docker rm -f "$cid" >/dev/null 2>&1 || true
	done
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

echo "bench-http: starting $BIN up (worker $WORKER_ID)" >&2
env -u AETHERIUM_API_TOKEN AETHERIUM_AGENT_PATH="$AGENT_BIN" \
	setsid "$BIN" up --config "$TMP/config.yaml" --host 127.0.0.1 --port 0 --data-dir "$DATA" \
	>"$TMP/server.log" 2>&1 </dev/null &
SERVER_PID=$!
for ((i = 0; i < 600; i++)); do
	kill -0 "$SERVER_PID" 2>/dev/null || die "the server exited at start (log below)"
	[ -z "$URL" ] && URL=$(sed -n 's/^aetherium is up at \(http:[^ ]*\).*/\1/p' "$TMP/server.log" | head -n 1 || true)
	[ -n "$URL" ] && curl -fsS -o /dev/null --max-time 3 "$URL/health" 2>/dev/null && break
	sleep 0.1
done
curl -fsS -o /dev/null --max-time 3 "$URL/health" || die "the server did not become healthy within 60 s"
TOKEN=$(api_token) || die "no admin credential in $DATA/admin-token"

for ((i = 1; i <= VMS; i++)); do
	out=$(api POST '/api/v1/vms?wait=60s' "{\"name\": \"bench-http-$i\"}")
	id=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["vm_id"])' <<<"$out" 2>/dev/null) ||
		die "creating a VM failed: $out"
	VM_IDS+=("$id")
done
listed=$(api GET /api/v1/vms | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["vms"]))')
[ "$listed" = "$VMS" ] || die "GET /api/v1/vms lists $listed VMs, expected $VMS"

# run_wrk NAME PATH [auth]: wrk's report in $TMP/NAME.txt.
run_wrk() {
	local args=(--latency -t "$THREADS" -c "$CONNECTIONS" -d "${DURATION}s")
	[ "${3:-}" = auth ] && args+=(-H "Authorization: Bearer $TOKEN")
	echo "bench-http: wrk ${args[*]//$TOKEN/<token>} $URL$2" >&2
	wrk "${args[@]}" "$URL$2" >"$TMP/$1.txt"
	if grep -q 'Non-2xx or 3xx responses' "$TMP/$1.txt"; then
		cat "$TMP/$1.txt" >&2
		die "$2 answered errors under load (above)"
	fi
}
run_wrk vms /api/v1/vms auth
run_wrk health /health

echo
echo "bench-http: $THREADS threads, $CONNECTIONS connections, ${DURATION}s per route, $VMS VMs listed, $(nproc) CPU(s), $BIN"
python3 - "$TMP/vms.txt" "$TMP/health.txt" <<'PY'
import re
import sys


def ms(text):
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def parse(path):
    text = open(path).read()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    p50 = ms(re.search(r"^\s+50%\s+(\S+)", text, re.M).group(1))
    p99 = ms(re.search(r"^\s+99%\s+(\S+)", text, re.M).group(1))
    return rps, p50, p99


rows = [("GET /api/v1/vms (bearer)", *parse(sys.argv[1])), ("GET /health", *parse(sys.argv[2]))]
head = f"{'route':<26} | {'requests/s':>10} | {'p50 ms':>8} | {'p99 ms':>8}"
print(head)
print("-" * len(head))
for name, rps, p50, p99 in rows:
    print(f"{name:<26} | {rps:10.0f} | {p50:8.2f} | {p99:8.2f}")
(_, v_rps, v_p50, v_p99), (_, h_rps, h_p50, h_p99) = rows
print(
    f"\nratio /api/v1/vms : /health = {v_rps / h_rps:.2f}x throughput, "
    f"{v_p99 / h_p99:.1f}x p99 (the cost of authentication, the store and the JSON list)"
)
PY
