#!/usr/bin/env bash
# API fuzzing: schemathesis against the OpenAPI document a real `aetherium up` serves
# (/api/v1/openapi.json), authenticated, with every check: no 5xx, every status,
# content type, header and body as the spec declares them, invalid input refused,
# valid input accepted. See docs/api.md.
#
#   bash tests/api-fuzz/run.sh [extra `st run` args...]     (make test-api-fuzz)
#
# Environment: FUZZ_MAX_EXAMPLES (default 30, per operation), FUZZ_WORKERS (2; 1 on
# Python 3.11),
# FUZZ_PHASES (examples,coverage,fuzzing,stateful), FUZZ_SEED, FUZZ_MAX_TIME
# (seconds, optional), FUZZ_CHECKS (all), FUZZ_SKIP_COVERAGE (set: do not fail
# when an operation never answered 2xx; see coverage.py).
#
# Keeps a venv in ${XDG_CACHE_HOME:-$HOME/.cache}/aetherium/api-fuzz-venv, rebuilt
# only when requirements.txt (or the Python version) changes. Builds the CLI and the
# agent (incrementally), starts the server on a free port with a throw-away data dir
# and its own worker id, and at the end deletes every sandbox through the API, stops
# the server and removes, by id, every container labelled with that worker id.
# Exits with schemathesis' status. Works unattended (CI=true, no stdin, as root).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE="$ROOT/tests/api-fuzz"
REQ="$HERE/requirements.txt"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/aetherium"
VENV="$CACHE/api-fuzz-venv"
STAMP="$VENV/.requirements.sha256"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
AGENT_BIN="${AETHERIUM_AGENT_BIN:-$CARGO_TARGET_DIR/agent/aetherium-agent}"
IMAGE="${AETHERIUM_TEST_IMAGE:-aetherium/base:latest}"
export PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1

MAX_EXAMPLES="${FUZZ_MAX_EXAMPLES:-30}"
# CPython 3.11 (Debian 12's) can fail `ast.parse` when threads parse at once
# ("AST constructor recursion depth mismatch", inside hypothesis): one worker there.
if python3 -c 'import sys; sys.exit(sys.version_info < (3, 12))'; then
	WORKERS="${FUZZ_WORKERS:-2}"
else
	WORKERS="${FUZZ_WORKERS:-1}"
fi
PHASES="${FUZZ_PHASES:-examples,coverage,fuzzing,stateful}"
CHECKS="${FUZZ_CHECKS:-all}"

log() { echo "api-fuzz: $*" >&2; }
die() {
	log "error: $*"
	exit 1
}

command -v python3 >/dev/null 2>&1 || die "python3 is missing (apt-get install python3)"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
	die "schemathesis needs Python >= 3.10; python3 is $(python3 -V 2>&1)"
command -v curl >/dev/null 2>&1 || die "curl is missing (apt-get install curl)"
docker info >/dev/null 2>&1 || die "docker is not reachable ('docker info' fails): run scripts/setup.sh --no-start first"
docker image inspect "$IMAGE" >/dev/null 2>&1 || die "image $IMAGE is missing: run scripts/setup.sh --no-start first"

# `python3 -m venv` needs ensurepip, which Debian ships in python3-venv.
ensure_venv_module() {
	python3 -c 'import ensurepip, venv' 2>/dev/null && return 0
	command -v dpkg >/dev/null 2>&1 || die "python3 cannot create venvs (no ensurepip) and this is not a Debian system"
	if ! dpkg -s python3-venv >/dev/null 2>&1; then
		[ "$(id -u)" -eq 0 ] || die "python3-venv is missing: run 'apt-get install python3-venv' as root"
		log "installing python3-venv"
		DEBIAN_FRONTEND=noninteractive apt-get update -qq </dev/null
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv </dev/null >/dev/null
	fi
	python3 -c 'import ensurepip, venv' 2>/dev/null ||
		die "python3 still cannot create venvs (ensurepip missing) after installing python3-venv"
}

want_hash() {
	{ cat "$REQ"; python3 -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1
}

# Create or refresh the venv under a lock, so parallel runs don't race.
setup_venv() {
	mkdir -p "$CACHE"
	exec 9>"$CACHE/api-fuzz-venv.lock"
	flock 9
	local want
	want=$(want_hash)
	if [ -x "$VENV/bin/st" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] &&
		"$VENV/bin/python" -c 'import schemathesis' 2>/dev/null; then
		flock -u 9
		return 0
	fi
	ensure_venv_module
	log "creating $VENV"
	rm -rf "$VENV"
	python3 -m venv "$VENV"
	"$VENV/bin/python" -m pip install -q -r "$REQ" </dev/null
	echo "$want" >"$STAMP"
	flock -u 9
}

setup_venv

# The binaries under test: incremental builds, cheap when up to date.
. "$ROOT/tests/lib/server.sh"
server_binaries

cleanup() {
	local status=$?
	trap - EXIT INT TERM
	server_stop "$status"
	exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Kept for the report with KEEP_FUZZ_TMP (the older name of KEEP_SERVER_TMP).
if [ -n "${KEEP_FUZZ_TMP:-}" ]; then export KEEP_SERVER_TMP=1; fi
server_start api-fuzz
URL=$SERVER_URL
TOKEN=$SERVER_TOKEN
TMP=$SERVER_TMP
api() { server_api "$@"; }

# Not request/response routes: the WebSockets (interactive exec, workspace sessions)
# and the endless SSE feeds.
# Nor draining a worker: the stateful phase finds this server's only worker in
# GET /workers, and once it drains, every later POST /vms is a 503 by design
# (services/gateway/tests/workers.rs tests drain and activate).
EXCLUDE='/exec/ws$|/session$|/events$|/logs/stream$|/drain$'

# State some operations need before they can succeed (a file to download, a paused
# sandbox, running and dead tasks, workspace secrets): made through the API, and
# their ids bound to those operations' parameters by dictionaries (seed.py). For
# these operations the fuzzer does not also reuse ids from earlier responses: those
# would crowd the seeded ones out (mostly finished tasks, 409s), and a delete fuzzed
# with them would use up what another operation was seeded with.
mkdir -p "$TMP/seeds"
python3 "$HERE/seed.py" "$URL" "$TOKEN" "$TMP/seeds" || die "could not seed the run"
{
	cat "$HERE/schemathesis.toml"
	echo
	echo "# Generated by run.sh: the seeded ids."
	for dict in "$TMP"/seeds/*.dict; do
		printf '[dictionaries.%s]\nfrom-file = "%s"\n' "$(basename "$dict" .dict)" "$dict"
	done
	seeded() { # METHOD PATH PROBABILITY PARAM=DICT...
		# include-name: include-method with include-path would match either.
		printf '[[operations]]\ninclude-name = "%s %s"\n' "$1" "$2"
		printf 'phases.fuzzing.extra-data-sources.responses = false\n'
		local probability=$3 binding
		shift 3
		printf 'parameters = { '
		for binding in "$@"; do
			printf '"%s" = { dictionary = "%s", probability = %s }, ' "${binding%%=*}" "${binding#*=}" "$probability"
		done | sed 's/, $//'
		printf ' }\n'
	}
	seeded GET /api/v1/vms/{id}/files 0.5 path.id=vm-ids query.path=file-paths
	seeded GET /api/v1/vms/{id}/files/stat 0.5 path.id=vm-ids query.path=file-paths
	# Left to ids from responses, a run may find none running (only 404s and 409s).
	seeded POST /api/v1/vms/{id}/exec/stream 0.5 path.id=vm-ids
	seeded POST /api/v1/vms/{id}/resume 0.5 path.id=paused-vm-ids
	seeded GET /api/v1/executions/{id} 0.5 path.id=execution-ids
	seeded POST /api/v1/tasks/{id}/cancel 0.5 path.id=live-task-ids
	seeded POST /api/v1/tasks/{id}/retry 0.5 path.id=retry-task-ids
	seeded DELETE /api/v1/tasks/{id} 0.5 path.id=delete-task-ids
	# Changes that would otherwise find the seeded sandboxes, workspace and secrets
	# in earlier responses, and pause or delete them first.
	seeded POST /api/v1/vms/{id}/pause 0.5 path.id=pausable-vm-ids
	seeded DELETE /api/v1/vms/{id} 0.5 path.id=deletable-vm-ids
	seeded DELETE /api/v1/secrets/{id} 0.5 path.id=global-secret-ids
	seeded DELETE /api/v1/workspaces/{id} 0.5 path.id=deletable-workspace-ids
	# Two ids that must match: drawn together often enough.
	seeded DELETE /api/v1/workspaces/{id}/secrets/{secret_id} 0.8 path.id=workspace-ids path.secret_id=workspace-secret-ids
} >"$TMP/schemathesis.toml"

args=(
	--no-color
	--config-file "$TMP/schemathesis.toml"
	run "$URL/api/v1/openapi.json"
	--url "$URL"
	-H "Authorization: Bearer $TOKEN"
	--checks "$CHECKS"
	--phases "$PHASES"
	--max-examples "$MAX_EXAMPLES"
	--workers "$WORKERS"
	--exclude-path-regex "$EXCLUDE"
	--request-timeout 120
	--suppress-health-check too_slow,filter_too_much
	--report junit
	--report-dir "$TMP/report"
)
[ -n "${FUZZ_SEED:-}" ] && args+=(--seed "$FUZZ_SEED")
[ -n "${FUZZ_MAX_TIME:-}" ] && args+=(--max-time "$FUZZ_MAX_TIME")

log "st ${args[*]//$TOKEN/<token>} $*"
status=0
(cd "$TMP" && "$VENV/bin/st" "${args[@]}" "$@" </dev/null) || status=$?
# A run in which an operation never succeeded checked nothing of what it does (e.g.
# only 401s after a revoked key): the server's request counts must show a 2xx for
# every operation fuzzed. Skipped when a caller narrows the run with extra args.
if [ "$status" -eq 0 ] && [ "$#" -eq 0 ] && [ -z "${FUZZ_SKIP_COVERAGE:-}" ]; then
	api GET /api/v1/openapi.json >"$TMP/openapi.json" || die "could not read the spec after the run"
	api GET /api/v1/metrics >"$TMP/metrics.txt" || die "could not read the metrics after the run"
	# Logging in needs a password the fuzzer cannot know, and logging out a session only
	# a login makes; services/gateway/tests/auth.rs and the dashboard e2e cover both.
	# Snapshots are Firecracker's alone (this server runs containers; a container's
	# snapshot is a 409 saying so; services/gateway/tests/microvm.rs covers both), and a
	# prompt to cancel needs a ready workspace whose agent CLI runs long
	# (services/core/tests/workspaces.rs cancels queued and running prompts).
	EXEMPT='^POST /api/v1/auth/(login|logout)$|^POST /api/v1/vms/\{id\}/snapshot$|^POST /api/v1/workspaces/\{id\}/prompts/\{prompt_id\}/cancel$'
	python3 "$HERE/coverage.py" "$TMP/openapi.json" "$TMP/metrics.txt" "$EXCLUDE" "$EXEMPT" || status=1
fi
if [ -n "${FUZZ_REPORT_DIR:-}" ]; then
	mkdir -p "$FUZZ_REPORT_DIR"
	cp -r "$TMP/report/." "$FUZZ_REPORT_DIR/" 2>/dev/null || true
fi
exit "$status"
