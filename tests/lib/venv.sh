# shellcheck shell=bash
# A cached Python venv per suite, rebuilt only when its requirements file (or the
# Python version) changes, under a lock so parallel runs do not race.
#
#   . tests/lib/venv.sh
#   venv_setup NAME REQUIREMENTS_FILE 'import check'   # sets VENV
#
# Needs log/die functions. The venv lives in ${XDG_CACHE_HOME:-~/.cache}/aetherium/NAME-venv.

# `python3 -m venv` needs ensurepip, which Debian ships in python3-venv.
venv_ensure_module() {
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

venv_setup() {
	local name=$1 req=$2 check=$3
	local cache="${XDG_CACHE_HOME:-$HOME/.cache}/aetherium"
	VENV="$cache/$name-venv"
	local stamp="$VENV/.requirements.sha256" want
	export PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
	mkdir -p "$cache"
	exec 9>"$cache/$name-venv.lock"
	flock 9
	want=$({ cat "$req"; python3 -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1)
	if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] &&
		"$VENV/bin/python" -c "$check" 2>/dev/null; then
		flock -u 9
		return 0
	fi
	venv_ensure_module
	log "creating $VENV"
	rm -rf "$VENV"
	python3 -m venv "$VENV"
	"$VENV/bin/python" -m pip install -q -r "$req" </dev/null
	echo "$want" >"$stamp"
	flock -u 9
}
