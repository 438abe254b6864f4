#!/usr/bin/env bash
# Aetherium one-command setup for a fresh Debian 12 machine:
#
#   sudo ./scripts/setup.sh            # install, build, start `aetherium up`
#   sudo ./scripts/setup.sh --no-start # everything except starting the server (CI)
#   ./scripts/setup.sh --stop          # stop the background server
#
# Safe to run again: every step checks first and only does what is missing.
# See docs/setup.md.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"

usage() {
	cat <<EOF
Usage: sudo $0 [--no-start] [--rebuild-image] | --stop | --help

Sets up Aetherium on this machine, step by step (each step is skipped when done):
  1. installs missing system packages (docker.io, debootstrap, build-essential,
     pkg-config, curl, python3, ca-certificates, file, and chromium for the
     dashboard's end-to-end tests); checks for Rust >= 1.94
  2. starts the Docker engine if it is not running
  3. builds the base sandbox image $AETHERIUM_IMAGE (debootstrap + docker import)
  4. builds the aetherium CLI and the static in-sandbox agent and installs both
     into \${PREFIX:-/usr/local}/bin
  5. microVMs: fetches the guest kernel (Debian's cloud kernel package, unpacked
     into \$AETHERIUM_KERNEL_DIR, not installed), installs firecracker + jailer
     (pinned, sha256-checked) and vhost-device-vsock (cargo), and builds the VM
     image of $AETHERIUM_IMAGE (\`aetherium image build\`)
  6. the web dashboard: Node.js >= 18.18 (Debian's nodejs + npm if missing or
     older), \`npm ci\` when package-lock.json changed, \`npm run build\` when its
     sources changed, installed into \$AETHERIUM_DASHBOARD_DIR
     (default /usr/local/share/aetherium/dashboard), served by the gateway at /
  7. starts \`aetherium up\` in the background and waits until it is healthy

Options:
  --no-start        stop after step 6 (do not start the server)
  --rebuild-image   rebuild the base image even if it exists
  --stop            stop the background server started by this script
  --help            this text

Environment:
  PREFIX                 install prefix (default /usr/local)
  CARGO_TARGET_DIR       cargo build dir (default \${XDG_CACHE_HOME:-\$HOME/.cache}/aetherium/target)
  AETHERIUM_PORT         server port (default 8080)
  AETHERIUM_DASHBOARD_DIR  where the dashboard is installed and served from
  AETHERIUM_DEBIAN_MIRROR  Debian mirror for debootstrap (default: from apt sources)
EOF
}

NO_START=0 STOP=0 REBUILD_IMAGE=0
while [ $# -gt 0 ]; do
	case "$1" in
	--no-start) NO_START=1 ;;
	--stop) STOP=1 ;;
	--rebuild-image) REBUILD_IMAGE=1 ;;
	-h | --help)
		usage
		exit 0
		;;
	*)
		usage >&2
		die "unknown option: $1"
		;;
	esac
	shift
done

PREFIX=${PREFIX:-/usr/local}
PORT=${AETHERIUM_PORT:-8080}
STATE_DIR=$(aetherium_state_dir)
LOG_FILE="$STATE_DIR/aetherium.log"
PID_FILE="$STATE_DIR/aetherium.pid"
TOKEN_FILE="$(aetherium_data_dir)/admin-token"
HEALTH_URL="http://127.0.0.1:$PORT/api/v1/health"

# server_pid: prints the pid from the pid file if that process is alive and is aetherium.
server_pid() {
	local pid
	[ -f "$PID_FILE" ] || return 1
	pid=$(tr -dc '0-9' <"$PID_FILE")
	[ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
	tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'aetherium' || return 1
	printf '%s\n' "$pid"
}
healthy() { curl -fsS -o /dev/null --max-time 2 "$HEALTH_URL" 2>/dev/null; }

stop_server() {
	local pid i
	if ! pid=$(server_pid); then
		rm -f "$PID_FILE"
		if healthy; then
			warn "something answers on $HEALTH_URL but it was not started by this script (no live pid in $PID_FILE); not touching it"
		else
			info "no background aetherium server is running"
		fi
		return 0
	fi
	info "stopping aetherium (pid $pid)"
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < 150; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	if kill -0 "$pid" 2>/dev/null; then
		warn "pid $pid did not exit within 15 s; sending SIGKILL"
		kill -KILL "$pid" 2>/dev/null || true
	fi
	rm -f "$PID_FILE"
	ok "stopped"
}

if [ "$STOP" = 1 ]; then
	step "Stopping the background aetherium server"
	stop_server
	exit 0
fi

T_ALL=$(now_s)

if [ "$(id -u)" -ne 0 ]; then
	die "setup installs packages, starts docker and builds an image as root: run it as: sudo $0 $*"
fi

# ---------------------------------------------------------------------------
step "1/7 System packages and Rust toolchain"
ensure_packages
ensure_rust

# ---------------------------------------------------------------------------
step "2/7 Docker engine"
ensure_dockerd

# ---------------------------------------------------------------------------
step "3/7 Base sandbox image $AETHERIUM_IMAGE"
ensure_base_image "$REBUILD_IMAGE"

# ---------------------------------------------------------------------------
step "4/7 Build and install aetherium + aetherium-agent"
if [ -z "${CARGO_TARGET_DIR:-}" ]; then
	if [ -n "${CARGO_USER:-}" ]; then
		# cargo runs as the sudo user: keep the build in their cache, not root's.
		CARGO_TARGET_DIR="$(getent passwd "$CARGO_USER" | cut -d: -f6)/.cache/aetherium/target"
	else
		CARGO_TARGET_DIR=$(default_cargo_target_dir)
	fi
fi
export CARGO_TARGET_DIR
info "CARGO_TARGET_DIR=$CARGO_TARGET_DIR"
if [ -n "${CARGO_USER:-}" ]; then
	mkdir -p "$CARGO_TARGET_DIR" && chown "$CARGO_USER": "$CARGO_TARGET_DIR"
fi
t0=$(now_s)
(cd "$ROOT" && run_cargo build --release -p aetherium-cli) ||
	die "cargo build of the CLI failed (output above)"
ok "aetherium built in $(elapsed "$t0")s"
t0=$(now_s)
(cd "$ROOT" && run_cargo rustc -p aetherium-agent --profile agent --bin aetherium-agent \
	-- -C target-feature=+crt-static) ||
	die "cargo build of the agent failed (output above)"
AGENT_BIN="$CARGO_TARGET_DIR/agent/aetherium-agent"
CLI_BIN="$CARGO_TARGET_DIR/release/aetherium"
[ -x "$AGENT_BIN" ] || die "agent binary not found at $AGENT_BIN"
[ -x "$CLI_BIN" ] || die "CLI binary not found at $CLI_BIN"
if file "$AGENT_BIN" | grep -q 'dynamically linked'; then
	die "$AGENT_BIN is dynamically linked; it must be static to run inside any sandbox image"
fi
ok "aetherium-agent built in $(elapsed "$t0")s ($(human_bytes "$(stat -c %s "$AGENT_BIN")"), static)"

mkdir -p "$PREFIX/bin"
# Only replace what changed. install writes a new file (new inode), so a running
# server keeps its old binary intact.
for pair in "$CLI_BIN:aetherium" "$AGENT_BIN:aetherium-agent"; do
	src=${pair%:*} dst="$PREFIX/bin/${pair##*:}"
	if cmp -s "$src" "$dst"; then
		ok "$dst is up to date"
	else
		install -m 0755 "$src" "$dst"
		ok "installed $dst"
	fi
done
# The distributed processes are the same program under their own names.
for alias in aetherium-gateway aetherium-worker; do
	if [ "$(readlink "$PREFIX/bin/$alias" 2>/dev/null)" != aetherium ]; then
		ln -sfn aetherium "$PREFIX/bin/$alias"
		ok "linked $PREFIX/bin/$alias -> aetherium"
	fi
done
case ":$PATH:" in
*":$PREFIX/bin:"*) ;;
*) warn "$PREFIX/bin is not on your PATH" ;;
esac

# ---------------------------------------------------------------------------
step "5/7 MicroVMs: guest kernel, firecracker, vhost-device-vsock, VM image"
export AETHERIUM_KERNEL_DIR
ensure_guest_kernel
ensure_firecracker "$PREFIX"
ensure_vhost_vsock "$PREFIX"
t0=$(now_s)
# Cached by content digest: a no-op (a second or so) when nothing changed.
"$PREFIX/bin/aetherium" image build "$AETHERIUM_IMAGE" ||
	die "building the VM image of $AETHERIUM_IMAGE failed (output above)"
ok "VM image of $AETHERIUM_IMAGE ready in $(elapsed "$t0")s"

# ---------------------------------------------------------------------------
step "6/7 Web dashboard (served at /)"
# Each part is skipped when done: node present, node_modules matching the lock
# file, a build of the current sources, that build installed.
ensure_dashboard

# ---------------------------------------------------------------------------
if [ "$NO_START" = 1 ]; then
	step "7/7 Start the server: skipped (--no-start)"
	info "start it later with: sudo $0   (or run: $PREFIX/bin/aetherium up)"
	ok "setup done in $(elapsed "$T_ALL")s"
	exit 0
fi

step "7/7 Start aetherium up (port $PORT)"
mkdir -p "$STATE_DIR"
if pid=$(server_pid); then
	if healthy; then
		ok "already running (pid $pid)"
		if [[ "$(readlink "/proc/$pid/exe" 2>/dev/null)" == *" (deleted)" ]]; then
			warn "the running server uses the binary from before this build; restart it: $0 --stop && $0"
		fi
	else
		info "running (pid $pid) but not healthy yet; waiting"
	fi
elif healthy; then
	warn "something already answers on $HEALTH_URL but it was not started by this script; not starting another"
	pid=''
else
	rm -f "$PID_FILE"
	info "starting in the background, log: $LOG_FILE"
	# setsid: own session, so it survives this shell; nohup for good measure.
	setsid nohup "$PREFIX/bin/aetherium" up --port "$PORT" >>"$LOG_FILE" 2>&1 </dev/null &
	pid=$!
	disown 2>/dev/null || true
	printf '%s\n' "$pid" >"$PID_FILE"
fi

for ((i = 0; i < 120; i++)); do
	healthy && break
	if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
		tail -n 30 "$LOG_FILE" >&2 || true
		rm -f "$PID_FILE"
		die "aetherium up exited during start-up (log above: $LOG_FILE)"
	fi
	sleep 0.5
done
healthy || die "aetherium did not answer on $HEALTH_URL within 60 s (log: $LOG_FILE)"

ok "Aetherium is running (setup took $(elapsed "$T_ALL")s)"
URL_HINT=''
[ "$PORT" = 8080 ] || URL_HINT=$'\n    export AETHERIUM_URL=http://127.0.0.1:'"$PORT"
cat <<EOF

  Dashboard:        http://127.0.0.1:$PORT/   (sign in with the admin API key)
  API:              http://127.0.0.1:$PORT   (health: $HEALTH_URL)
  Admin API key:    $TOKEN_FILE   (the bootstrap admin key; more: aetherium apikey create)
  Server log:       $LOG_FILE
  Stop it with:     $0 --stop

  Try it:${URL_HINT}
    aetherium vm create --name demo --wait
    aetherium vm exec demo -- uname -a
    aetherium vm rm demo
EOF
if [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ]; then
	cat <<EOF

  The server runs as root, so its admin key file is root's: run the commands above with sudo,
  or copy $TOKEN_FILE to your own ~/.local/share/aetherium/.
EOF
fi
