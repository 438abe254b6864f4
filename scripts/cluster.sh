#!/usr/bin/env bash
# A local distributed cluster on one machine: PostgreSQL, Redis, one gateway and two
# workers, each a plain process with its own pid file under the state dir.
#
#   scripts/cluster.sh up      # (make cluster-up)   start everything, print the URL and key file
#   scripts/cluster.sh down    # (make cluster-down) stop everything, by pid
#   scripts/cluster.sh status  # what runs
#   scripts/cluster.sh destroy # down, then remove the state dir and PostgreSQL's files
#
# Environment:
#   AETHERIUM_CLUSTER_DIR   state dir (default ${XDG_STATE_HOME:-~/.local/state}/aetherium-cluster)
#   AETHERIUM_BIN           the aetherium binary (default: $CARGO_TARGET_DIR/debug/aetherium, built if missing)
#   AETHERIUM_AGENT_PATH    the sandbox agent (default: $CARGO_TARGET_DIR/agent/aetherium-agent)
#   CLUSTER_PORT            the gateway's port (default 8090); PostgreSQL and Redis get
#                           CLUSTER_PORT+1 and +2 on 127.0.0.1
#   CLUSTER_WORKERS         the workers' ids, space-separated (default: local-worker-1 local-worker-2)
# Needs: PostgreSQL server binaries (apt: postgresql), redis-server, Docker (for the workers).
# Docs: docs/distributed.md.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib.sh disable=SC1091
. "$ROOT/scripts/lib.sh"

STATE="${AETHERIUM_CLUSTER_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/aetherium-cluster}"
TARGET="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/aetherium/target}"
BIN="${AETHERIUM_BIN:-$TARGET/debug/aetherium}"
AGENT="${AETHERIUM_AGENT_PATH:-$TARGET/agent/aetherium-agent}"
PORT="${CLUSTER_PORT:-8090}"
PG_PORT=$((PORT + 1))
# PostgreSQL's files: the `postgres` user must reach them, which a root home (0700)
# does not allow; as root they live under /var/lib instead, one dir per cluster dir.
if [ "$(id -u)" = 0 ]; then
	PG_DIR="/var/lib/aetherium-cluster/pg-$(printf %s "$STATE" | sha256sum | cut -c1-12)"
else
	PG_DIR="$STATE/pg"
fi
REDIS_PORT=$((PORT + 2))
read -r -a WORKERS <<<"${CLUSTER_WORKERS:-local-worker-1 local-worker-2}"

pg_bindir() {
	if command -v pg_config >/dev/null && [ -x "$(pg_config --bindir)/initdb" ]; then
		pg_config --bindir
		return
	fi
	local d
	d="$(find /usr/lib/postgresql -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n1)"
	if [ -z "$d" ] || [ ! -x "$d/initdb" ]; then
		die "PostgreSQL server binaries not found (apt-get install postgresql)"
	fi
	echo "$d"
}

# As root, PostgreSQL runs as the `postgres` user (it refuses root). `exec`: run in
# the background, the subshell becomes the program, so `$!` is its pid.
as_pg() {
	if [ "$(id -u)" = 0 ]; then
		exec setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"
	else
		exec "$@"
	fi
}

# port_free PORT: nothing listens on 127.0.0.1:PORT (else another cluster's server
# would be used in silence).
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# wait_for NAME SECONDS COMMAND...: polls COMMAND until it succeeds.
wait_for() {
	local name="$1" secs="$2"
	shift 2
	local i
	for ((i = 0; i < secs * 10; i++)); do
		if "$@" >/dev/null 2>&1; then return 0; fi
		sleep 0.1
	done
	die "$name did not come up in ${secs}s (logs: $STATE/*.log)"
}

redis_ping() { [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; }

# stop_pid FILE: SIGTERM, then SIGKILL after 20 s.
stop_pid() {
	local file="$1" pid i
	[ -f "$file" ] || return 0
	pid="$(cat "$file")"
	if kill -0 "$pid" 2>/dev/null; then
		kill -TERM "$pid" 2>/dev/null || true
		for ((i = 0; i < 200; i++)); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		if kill -0 "$pid" 2>/dev/null; then
			kill -KILL "$pid" 2>/dev/null || true
		fi
	fi
	rm -f "$file"
}

up() {
	mkdir -p "$STATE"
	[ -x "$BIN" ] || (cd "$ROOT" && cargo build -p aetherium-cli) || die "cannot build the aetherium binary"
	[ -x "$AGENT" ] || (cd "$ROOT" && make agent) || die "cannot build the agent"
	command -v redis-server >/dev/null || die "redis-server not found (apt-get install redis-server)"
	local bindir
	bindir="$(pg_bindir)"

	step "PostgreSQL on 127.0.0.1:$PG_PORT ($PG_DIR)"
	if ! alive "$STATE/postgres.pid"; then
		if [ ! -f "$PG_DIR/data/PG_VERSION" ]; then
			mkdir -p "$PG_DIR/data" "$PG_DIR/sock"
			chmod 700 "$PG_DIR/data"
			if [ "$(id -u)" = 0 ]; then chown -R postgres:postgres "$PG_DIR"; fi
			(as_pg "$bindir/initdb" -A trust -U postgres -E UTF8 --locale=C --no-instructions \
				-D "$PG_DIR/data") >"$STATE/postgres-init.log" 2>&1 ||
				die "initdb failed: $STATE/postgres-init.log"
		fi
		port_free "$PG_PORT" ||
			die "127.0.0.1:$PG_PORT is in use (another cluster's PostgreSQL? run make cluster-down there, or set its port)"
		as_pg "$bindir/postgres" -D "$PG_DIR/data" -p "$PG_PORT" -c listen_addresses=127.0.0.1 \
			-k "$PG_DIR/sock" -c max_connections=200 >>"$STATE/postgres.log" 2>&1 &
		echo $! >"$STATE/postgres.pid"
		wait_for PostgreSQL 30 "$bindir/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"
		"$bindir/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -tAc \
			"SELECT 1 FROM pg_database WHERE datname = 'aetherium'" | grep -q 1 ||
			"$bindir/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres aetherium
	fi
	ok "pid $(cat "$STATE/postgres.pid")"

	step "Redis on 127.0.0.1:$REDIS_PORT ($STATE/redis)"
	if ! alive "$STATE/redis.pid"; then
		mkdir -p "$STATE/redis"
		redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$STATE/redis" \
			--appendonly yes --appendfsync everysec --save '' --daemonize no \
			>>"$STATE/redis.log" 2>&1 &
		echo $! >"$STATE/redis.pid"
		wait_for Redis 15 redis_ping
	fi
	ok "pid $(cat "$STATE/redis.pid")"

	[ -f "$STATE/cluster-secret" ] || (umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$STATE/cluster-secret")
	export AETHERIUM_DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/aetherium"
	export AETHERIUM_QUEUE_BACKEND=redis
	export AETHERIUM_REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
	AETHERIUM_CLUSTER_SECRET="$(cat "$STATE/cluster-secret")"
	export AETHERIUM_CLUSTER_SECRET
	export AETHERIUM_AGENT_PATH="$AGENT"
	export AETHERIUM_LOG_FORMAT=json
	# The tunnel runs over TLS: a cluster CA and one certificate per process.
	local pki="$STATE/pki"
	[ -f "$pki/ca.pem" ] || "$BIN" cluster init --dir "$pki" >/dev/null || die "cannot make the cluster CA"
	[ -f "$pki/gateway-gateway.pem" ] || "$BIN" cluster issue --dir "$pki" --gateway gateway >/dev/null ||
		die "cannot issue the gateway's certificate"
	export AETHERIUM_CLUSTER_TLS_CA="$pki/ca.pem"

	local w
	for w in "${WORKERS[@]}"; do
		step "worker $w"
		if ! alive "$STATE/$w.pid"; then
			mkdir -p "$STATE/$w"
			# Its tunnel endpoint (streams, terminals, files through the gateway) on a
			# free loopback port, advertised in its heartbeats.
			[ -f "$pki/worker-$w.pem" ] || "$BIN" cluster issue --dir "$pki" --worker "$w" >/dev/null ||
				die "cannot issue the certificate of worker $w"
			AETHERIUM_WORKER_ADDRESS=127.0.0.1:0 \
				AETHERIUM_CLUSTER_TLS_CERT="$pki/worker-$w.pem" AETHERIUM_CLUSTER_TLS_KEY="$pki/worker-$w.key" \
				"$BIN" worker run --id "$w" --data-dir "$STATE/$w" >>"$STATE/$w.log" 2>&1 &
			echo $! >"$STATE/$w.pid"
		fi
	done
	for w in "${WORKERS[@]}"; do
		wait_for "worker $w" 60 grep -q "aetherium worker $w is up" "$STATE/$w.log"
		ok "pid $(cat "$STATE/$w.pid")"
	done

	step "gateway on 127.0.0.1:$PORT"
	if ! alive "$STATE/gateway.pid"; then
		mkdir -p "$STATE/gateway"
		AETHERIUM_CLUSTER_TLS_CERT="$pki/gateway-gateway.pem" AETHERIUM_CLUSTER_TLS_KEY="$pki/gateway-gateway.key" \
			"$BIN" gateway --host 127.0.0.1 --port "$PORT" --data-dir "$STATE/gateway" \
			>>"$STATE/gateway.log" 2>&1 &
		echo $! >"$STATE/gateway.pid"
	fi
	wait_for gateway 60 curl -fsS "http://127.0.0.1:$PORT/health"
	ok "pid $(cat "$STATE/gateway.pid")"

	echo
	ok "cluster is up: http://127.0.0.1:$PORT"
	info "admin key file: $STATE/gateway/admin-token"
	info "try: AETHERIUM_URL=http://127.0.0.1:$PORT AETHERIUM_TOKEN=\$(cat $STATE/gateway/admin-token) $BIN worker ls"
	info "logs: $STATE/*.log; stop: make cluster-down"
}

down() {
	[ -d "$STATE" ] || { info "nothing to stop ($STATE does not exist)"; return 0; }
	local f
	for f in gateway "${WORKERS[@]}" redis postgres; do
		if [ -f "$STATE/$f.pid" ]; then
			stop_pid "$STATE/$f.pid"
			ok "stopped $f"
		fi
	done
	info "state kept in $STATE (remove it for a fresh cluster; the workers' sandboxes are removed when they are deleted through the API)"
}

destroy() {
	down
	rm -rf "$STATE"
	if [ "$PG_DIR" != "$STATE/pg" ]; then rm -rf "$PG_DIR"; fi
	ok "removed $STATE and $PG_DIR"
}

status() {
	local f
	for f in postgres redis "${WORKERS[@]}" gateway; do
		if alive "$STATE/$f.pid"; then
			ok "$f: running (pid $(cat "$STATE/$f.pid"))"
		else
			info "$f: stopped"
		fi
	done
}

case "${1:-}" in
up) up ;;
down) down ;;
status) status ;;
destroy) destroy ;;
*)
	echo "usage: $0 up|down|status|destroy" >&2
	exit 2
	;;
esac
