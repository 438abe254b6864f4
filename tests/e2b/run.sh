#!/usr/bin/env bash
# E2B SDK compatibility tests: E2B's own Python SDK (debug mode) drives
# aetherium-agent directly. See docs/e2b-compat.md.
#
#   bash tests/e2b/run.sh [pytest args...]      (make test-e2b)
#
# Keeps a venv in ${XDG_CACHE_HOME:-$HOME/.cache}/aetherium/e2b-venv, rebuilt only
# when requirements.txt (or the Python version) changes; builds the agent if its
# binary is missing; exits with pytest's status (5, "no tests collected", is a
# failure too). Works unattended (CI=true, no stdin, as root).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE="$ROOT/tests/e2b"
REQ="$HERE/requirements.txt"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/aetherium"
VENV="$CACHE/e2b-venv"
STAMP="$VENV/.requirements.sha256"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
export AETHERIUM_AGENT_BIN="${AETHERIUM_AGENT_BIN:-$CARGO_TARGET_DIR/agent/aetherium-agent}"
export PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1

log() { echo "e2b-tests: $*" >&2; }
die() { log "error: $*"; exit 1; }

command -v python3 >/dev/null 2>&1 || die "python3 is missing (apt-get install python3)"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	|| die "the e2b SDK needs Python >= 3.11; python3 is $(python3 -V 2>&1)"

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
	python3 -c 'import ensurepip, venv' 2>/dev/null \
		|| die "python3 still cannot create venvs (ensurepip missing) after installing python3-venv"
}

want_hash() {
	{ cat "$REQ"; python3 -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1
}

# Create or refresh the venv under a lock, so parallel runs don't race.
setup_venv() {
	mkdir -p "$CACHE"
	exec 9>"$CACHE/e2b-venv.lock"
	flock 9
	local want
	want=$(want_hash)
	if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] \
		&& "$VENV/bin/python" -c 'import e2b, pytest' 2>/dev/null; then
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

if [ ! -x "$AETHERIUM_AGENT_BIN" ]; then
	log "agent binary $AETHERIUM_AGENT_BIN is missing; building it"
	make -C "$ROOT" agent </dev/null
	[ -x "$AETHERIUM_AGENT_BIN" ] || die "still no agent binary at $AETHERIUM_AGENT_BIN after 'make agent'"
fi

cd "$ROOT"
status=0
"$VENV/bin/python" -m pytest -q tests/e2b "$@" </dev/null || status=$?
if [ "$status" -eq 5 ]; then
	log "error: pytest collected no tests"
fi
exit "$status"
