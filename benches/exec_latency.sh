#!/usr/bin/env bash
# Exec latency: Aetherium's API next to the plain docker CLI, in one run.
#
#   (a) cold: create a sandbox and get the first command's output
#       aetherium: POST /api/v1/smart-execute?wait=60s (new VM each time, deleted after, untimed)
#       docker:    docker run --rm IMAGE echo hi
#   (b) warm: one command in a sandbox that is already running
#       aetherium: POST /api/v1/vms/{id}/execute?wait=30s
#       docker:    docker exec CONTAINER echo hi
#
# Usage: benches/exec_latency.sh [-n ITERATIONS] [--no-warmup]
#
# Talks to the server at $AETHERIUM_URL (default http://127.0.0.1:8080) with the token
# in $AETHERIUM_TOKEN or the file $AETHERIUM_TOKEN_FILE (default
# ${XDG_DATA_HOME:-~/.local/share}/aetherium/admin-token). If nothing answers there it
# starts its own `aetherium up` on a free port with a throw-away data dir, and stops it
# at the end. Every sandbox and container it creates is removed by id, also on Ctrl-C.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"

N=10
WARMUP=1
usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
	case "$1" in
	-n | --iterations)
		[ $# -ge 2 ] || die "$1 needs a number"
		N=$2
		shift
		;;
	-n[0-9]*) N=${1#-n} ;;
	--no-warmup) WARMUP=0 ;;
	-h | --help)
		usage
		exit 0
		;;
	*) die "unknown argument: $1 (see --help)" ;;
	esac
	shift
done
[[ "$N" =~ ^[1-9][0-9]*$ ]] || die "-n wants a positive integer, got '$N'"

command -v python3 >/dev/null 2>&1 || die "python3 is needed (apt-get install python3)"
command -v curl >/dev/null 2>&1 || die "curl is needed (apt-get install curl)"
docker info >/dev/null 2>&1 || die "docker is not reachable ('docker info' fails): run scripts/setup.sh --no-start first"
docker image inspect "$AETHERIUM_IMAGE" >/dev/null 2>&1 ||
	die "image $AETHERIUM_IMAGE is missing: run scripts/setup.sh --no-start first"

URL=${AETHERIUM_URL:-http://127.0.0.1:8080}
URL=${URL%/}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/aetherium-bench.XXXXXX")
SERVER_PID=''

cleanup() {
	if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
		echo "bench: stopping the server it started (pid $SERVER_PID)" >&2
		kill -TERM "$SERVER_PID" 2>/dev/null || true
		local i
		for ((i = 0; i < 150; i++)); do
			kill -0 "$SERVER_PID" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$SERVER_PID" 2>/dev/null || true
	fi
	SERVER_PID=''
	rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

healthy() { curl -fsS -o /dev/null --max-time 3 "$1/api/v1/health" 2>/dev/null; }

# find_aetherium: the installed CLI, else one from the cargo target dir.
find_aetherium() {
	local t=${CARGO_TARGET_DIR:-$(default_cargo_target_dir)} c
	for c in "$(command -v aetherium 2>/dev/null || true)" "$t/release/aetherium" "$t/debug/aetherium"; do
		if [ -n "$c" ] && [ -x "$c" ]; then
			printf '%s\n' "$c"
			return 0
		fi
	done
	return 1
}

if healthy "$URL"; then
	if [ -n "${AETHERIUM_TOKEN:-}" ]; then
		TOKEN=$AETHERIUM_TOKEN
	else
		TOKEN_FILE=${AETHERIUM_TOKEN_FILE:-$(aetherium_data_dir)/admin-token}
		[ -r "$TOKEN_FILE" ] || die "server at $URL answers, but there is no token: set AETHERIUM_TOKEN or AETHERIUM_TOKEN_FILE (looked in $TOKEN_FILE)"
		TOKEN=$(tr -d '[:space:]' <"$TOKEN_FILE")
	fi
	echo "bench: using the server at $URL"
else
	BIN=$(find_aetherium) || die "no Aetherium server answers at $URL/api/v1/health and no 'aetherium' binary was found
       (not on PATH, not in \${CARGO_TARGET_DIR:-~/.cache/aetherium/target}/{release,debug}).
       Run scripts/setup.sh (it builds, installs and starts the server), or point AETHERIUM_URL at one."
	echo "bench: no server at $URL; starting $BIN up on a free port (data in $TMP/data)"
	TOKEN=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
	agent_env=()
	if [ "$BIN" != "$(command -v aetherium 2>/dev/null || true)" ] && [ -z "${AETHERIUM_AGENT_PATH:-}" ]; then
		a="${CARGO_TARGET_DIR:-$(default_cargo_target_dir)}/agent/aetherium-agent"
		[ -x "$a" ] && agent_env=(AETHERIUM_AGENT_PATH="$a")
	fi
	: >"$TMP/server.log"
	# setsid: Ctrl-C must not reach the server before the sandboxes are deleted through it.
	env "${agent_env[@]}" AETHERIUM_API_TOKEN="$TOKEN" \
		setsid "$BIN" up --host 127.0.0.1 --port 0 --data-dir "$TMP/data" \
		>"$TMP/server.log" 2>&1 </dev/null &
	SERVER_PID=$!
	URL=''
	for ((i = 0; i < 600; i++)); do
		if ! kill -0 "$SERVER_PID" 2>/dev/null; then
			tail -n 30 "$TMP/server.log" >&2 || true
			die "the server it started exited (log above)"
		fi
		if [ -z "$URL" ]; then
			URL=$(sed -n 's/^aetherium is up at \(http:[^ ]*\).*/\1/p' "$TMP/server.log" | head -n 1 || true)
		fi
		[ -n "$URL" ] && healthy "$URL" && break
		sleep 0.1
	done
	if [ -z "$URL" ] || ! healthy "$URL"; then
		tail -n 30 "$TMP/server.log" >&2 || true
		die "the server it started did not become healthy within 60 s (log above)"
	fi
	echo "bench: server up at $URL (pid $SERVER_PID)"
fi

export BENCH_URL=$URL BENCH_TOKEN=$TOKEN BENCH_N=$N BENCH_WARMUP=$WARMUP BENCH_IMAGE=$AETHERIUM_IMAGE BENCH_TMP=$TMP
# The measuring part: python3 stdlib only.
python3 - <<'PY'
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request

URL = os.environ["BENCH_URL"]
TOKEN = os.environ["BENCH_TOKEN"]
N = int(os.environ["BENCH_N"])
WARMUP = int(os.environ["BENCH_WARMUP"])
IMAGE = os.environ["BENCH_IMAGE"]
TMP = os.environ["BENCH_TMP"]
RID = secrets.token_hex(3)

vms = {}  # vm_id -> name, still to delete
names_pending = set()  # smart-execute names whose vm_id we have not seen (interrupted calls)
containers = []  # docker container ids still to remove


class Abort(Exception):
    pass


def _term(signum, frame):
    raise KeyboardInterrupt


signal.signal(signal.SIGTERM, _term)


def api(method, path, body=None, timeout=120):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(URL + path, data=data, method=method)
    req.add_header("Authorization", "Bearer " + TOKEN)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


def docker(*args, timeout=120):
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return (time.perf_counter() - t0) * 1000.0, out


def expect_hi(what, status, body, execution):
    if status != 200 or not isinstance(execution, dict) or execution.get("stdout") != "hi\n":
        raise Abort(f"{what}: expected HTTP 200 with execution.stdout == 'hi\\n', got HTTP {status}: "
                    + json.dumps(body)[:800])


def delete_vm(vm_id):
    status, body = api("DELETE", f"/api/v1/vms/{vm_id}?wait=60s")
    if status in (200, 202, 404):
        vms.pop(vm_id, None)
    else:
        print(f"bench: warning: DELETE vm {vm_id}: HTTP {status} {body}", file=sys.stderr)


# ---- (a) cold start ---------------------------------------------------------
def aeth_cold(i):
    name = f"bench-{RID}-{i}"
    names_pending.add(name)
    body = {"command": "echo", "args": ["hi"], "prefer_existing": False, "vm_name": name}
    ms, (status, resp) = timed(lambda: api("POST", "/api/v1/smart-execute?wait=60s", body))
    if isinstance(resp, dict) and resp.get("vm_id"):
        vms[resp["vm_id"]] = name
        names_pending.discard(name)
    expect_hi("smart-execute", status, resp, resp.get("execution") if isinstance(resp, dict) else None)
    if not resp.get("vm_created", True):
        raise Abort(f"smart-execute reused a VM instead of creating one: {resp}")
    delete_vm(resp["vm_id"])
    return ms


def docker_cold(i):
    cidfile = os.path.join(TMP, f"cold-{i}.cid")
    ms, p = timed(lambda: docker("run", "--rm", "--cidfile", cidfile, IMAGE, "echo", "hi"))
    try:
        with open(cidfile) as f:
            cid = f.read().strip()
        if cid:
            containers.append(cid)  # --rm removes it; checked again at cleanup
    except OSError:
        pass
    if p.returncode != 0 or p.stdout != "hi\n":
        raise Abort(f"docker run: exit {p.returncode}, stdout {p.stdout!r}, stderr {p.stderr.strip()!r}")
    return ms


# ---- (b) exec in a running sandbox ---------------------------------------------
def setup_warm():
    name = f"bench-{RID}"
    status, resp = api("POST", "/api/v1/vms?wait=60s", {"name": name})
    if isinstance(resp, dict) and resp.get("vm_id"):
        vms[resp["vm_id"]] = name
    vm = resp.get("vm") if isinstance(resp, dict) else None
    if status != 200 or not isinstance(vm, dict) or vm.get("status") != "RUNNING":
        raise Abort(f"create VM: expected HTTP 200 with vm.status RUNNING, got HTTP {status}: {json.dumps(resp)[:800]}")
    p = docker("run", "-d", "--rm", IMAGE, "sleep", "600")
    if p.returncode != 0:
        raise Abort(f"docker run -d: {p.stderr.strip()}")
    cid = p.stdout.strip()
    containers.append(cid)
    return resp["vm_id"], cid


def aeth_warm(vm_id):
    ms, (status, resp) = timed(
        lambda: api("POST", f"/api/v1/vms/{vm_id}/execute?wait=30s", {"command": "echo", "args": ["hi"]}))
    expect_hi("execute", status, resp, resp.get("execution") if isinstance(resp, dict) else None)
    return ms


def docker_warm(cid):
    ms, p = timed(lambda: docker("exec", cid, "echo", "hi"))
    if p.returncode != 0 or p.stdout != "hi\n":
        raise Abort(f"docker exec: exit {p.returncode}, stdout {p.stdout!r}, stderr {p.stderr.strip()!r}")
    return ms


def cleanup():
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Sandboxes from interrupted smart-execute calls: we only know their names.
    for name in sorted(names_pending):
        try:
            status, resp = api("GET", f"/api/v1/vms?name={name}", timeout=10)
            if status == 200 and isinstance(resp, dict):
                for vm in resp.get("vms") or []:
                    if vm.get("name") == name and vm.get("id"):
                        vms[vm["id"]] = name
        except Exception as e:  # noqa: BLE001 - best effort
            print(f"bench: warning: listing VM {name}: {e}", file=sys.stderr)
    for vm_id in list(vms):
        try:
            delete_vm(vm_id)
        except Exception as e:  # noqa: BLE001
            print(f"bench: warning: deleting VM {vm_id}: {e}", file=sys.stderr)
    for cid in containers:
        p = docker("rm", "-f", cid, timeout=60)
        if p.returncode != 0 and "No such container" not in p.stderr:
            print(f"bench: warning: docker rm -f {cid}: {p.stderr.strip()}", file=sys.stderr)
    if vms:
        print(f"bench: warning: VMs left: {sorted(vms)}", file=sys.stderr)


def pct(xs, q):
    xs = sorted(xs)
    if len(xs) == 1:
        return xs[0]
    return statistics.quantiles(xs, n=100, method="inclusive")[q - 1]


def run(label, fn, arg_of_i):
    out = []
    for i in range(-WARMUP, N):
        ms = fn(arg_of_i(i))
        if i >= 0:
            out.append(ms)
        tag = "warm-up" if i < 0 else f"{i + 1}/{N}"
        print(f"  {label:<34} {tag:>8}  {ms:8.1f} ms", file=sys.stderr, flush=True)
    return out


def main():
    print(f"bench: {N} iteration(s) per measurement, {WARMUP} warm-up, image {IMAGE}, server {URL}")
    results = []
    print("(a) create -> first exec output", file=sys.stderr)
    a_ae = run("aetherium smart-execute (new VM)", aeth_cold, lambda i: f"w{-i}" if i < 0 else i)
    a_dk = run("docker run --rm", docker_cold, lambda i: f"w{-i}" if i < 0 else i)
    results.append(("create -> first output", a_ae, a_dk))

    print("(b) exec in a running sandbox", file=sys.stderr)
    vm_id, cid = setup_warm()
    b_ae = run("aetherium execute", aeth_warm, lambda i: vm_id)
    b_dk = run("docker exec", docker_warm, lambda i: cid)
    results.append(("exec in running sandbox", b_ae, b_dk))

    head = f"{'scenario':<26} | {'aetherium median ms':>19} | {'(p90)':>8} | {'docker median ms':>16} | {'(p90)':>8} | {'ratio':>6}"
    print()
    print(head)
    print("-" * len(head))
    for name, ae, dk in results:
        ma, md = statistics.median(ae), statistics.median(dk)
        print(f"{name:<26} | {ma:19.1f} | {pct(ae, 90):8.1f} | {md:16.1f} | {pct(dk, 90):8.1f} | {ma / md:5.2f}x")
    print("\nratio = aetherium median / docker median (lower is better; docker CLI times include its process start)")


rc = 0
try:
    main()
except Abort as e:
    print(f"bench: error: {e}", file=sys.stderr)
    rc = 1
except KeyboardInterrupt:
    print("\nbench: interrupted; cleaning up", file=sys.stderr)
    rc = 130
except (urllib.error.URLError, OSError, subprocess.TimeoutExpired) as e:
    print(f"bench: error: {e}", file=sys.stderr)
    rc = 1
finally:
    cleanup()
sys.exit(rc)
PY
