# shellcheck shell=bash
# A throwaway `aetherium up` for the suites that drive a real server (api-fuzz, e2b):
# its own data dir, worker id and free port, stopped and cleaned up by id.
#
#   . tests/lib/server.sh
#   server_binaries                       # builds the CLI (incremental), the agent if missing: sets BIN
#   server_start NAME CONFIG_EXTRA_YAML   # sets SERVER_URL, SERVER_TOKEN, SERVER_TMP
#   server_stop_on_exit                   # server_cleanup on EXIT (server_stop, then exit with the status)
#   ... ; server_stop                     # deletes its sandboxes, stops it, removes SERVER_TMP
#
# Needs: ROOT, CARGO_TARGET_DIR, AGENT_BIN (may be empty), IMAGE, and log/die functions.

SERVER_PID=''
SERVER_URL=''
SERVER_TOKEN=''
SERVER_TMP=''
SERVER_WORKER_ID=''

server_binaries() {
	log "building the CLI (incremental)"
	(cd "$ROOT" && cargo build -q -p aetherium-cli --bin aetherium </dev/null)
	BIN="$CARGO_TARGET_DIR/debug/aetherium"
	[ -x "$BIN" ] || die "no CLI binary at $BIN after cargo build"
	if [ ! -x "$AGENT_BIN" ]; then
		log "agent binary $AGENT_BIN is missing; building it"
		make -C "$ROOT" agent </dev/null
		[ -x "$AGENT_BIN" ] || die "still no agent binary at $AGENT_BIN after 'make agent'"
	fi
}

server_api() { # METHOD PATH -> body on stdout
	curl -sS --max-time 120 -X "$1" -H "Authorization: Bearer $SERVER_TOKEN" "$SERVER_URL$2"
}

# server_start NAME [EXTRA_YAML]: EXTRA_YAML is appended to the config.
server_start() {
	local name=$1 extra=${2:-}
	SERVER_TMP=$(mktemp -d "${TMPDIR:-/tmp}/aetherium-$name.XXXXXX")
	SERVER_WORKER_ID="$name-$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')"
	cat >"$SERVER_TMP/config.yaml" <<YAML
server:
  max_wait_seconds: 600
  request_timeout_seconds: 660
auth:
  rate_limit_per_second: 0
worker:
  id: $SERVER_WORKER_ID
  max_vms: 1000
  concurrency: 16
vmm:
  docker:
    default_image: $IMAGE
$extra
YAML
	log "starting $BIN up (worker $SERVER_WORKER_ID, data in $SERVER_TMP/data)"
	# Without AGENT_BIN the server finds its agent itself (an installed CLI's).
	local agent=()
	[ -z "${AGENT_BIN:-}" ] || agent=(AETHERIUM_AGENT_PATH="$AGENT_BIN")
	# setsid: a Ctrl-C must not reach the server before its sandboxes are deleted.
	env -u AETHERIUM_API_TOKEN "${agent[@]}" AETHERIUM_LOG_LEVEL="${AETHERIUM_LOG_LEVEL:-warn}" NO_COLOR=1 \
		setsid "$BIN" up --config "$SERVER_TMP/config.yaml" --host 127.0.0.1 --port 0 --data-dir "$SERVER_TMP/data" \
		>"$SERVER_TMP/server.log" 2>&1 </dev/null &
	SERVER_PID=$!
	local i
	for ((i = 0; i < 600; i++)); do
		kill -0 "$SERVER_PID" 2>/dev/null || die "the server exited at start (log: $SERVER_TMP/server.log)"
		if [ -z "$SERVER_URL" ]; then
			SERVER_URL=$(sed -n 's/^aetherium is up at \(http:[^ ]*\).*/\1/p' "$SERVER_TMP/server.log" | head -n 1 || true)
		fi
		if [ -n "$SERVER_URL" ] && curl -fsS -o /dev/null --max-time 3 "$SERVER_URL/api/v1/health" 2>/dev/null; then
			break
		fi
		sleep 0.1
	done
	curl -fsS -o /dev/null --max-time 3 "$SERVER_URL/api/v1/health" || die "the server did not become healthy within 60 s"
	[ -s "$SERVER_TMP/data/admin-token" ] || die "no admin credential found in $SERVER_TMP/data/admin-token"
	SERVER_TOKEN=$(tr -d '[:space:]' <"$SERVER_TMP/data/admin-token")
	log "server up at $SERVER_URL"
}

# server_stop STATUS: deletes what the run left, stops the server, removes its files
# (kept with KEEP_SERVER_TMP=1); on a failed STATUS shows the end of its log.
server_stop() {
	local status=${1:-0}
	[ -n "$SERVER_TMP" ] || return 0
	if [ -n "$SERVER_URL" ] && [ -n "$SERVER_TOKEN" ] && [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
		local ids id i
		ids=$(server_api GET '/api/v1/vms?limit=1000' 2>/dev/null |
			python3 -c 'import json,sys
try: print("\n".join(v["id"] for v in json.load(sys.stdin).get("vms", [])))
except Exception: pass' || true)
		if [ -n "$ids" ]; then
			log "deleting $(wc -l <<<"$ids") sandbox(es) the run left"
			for id in $ids; do
				server_api DELETE "/api/v1/vms/$id" >/dev/null 2>&1 || true
			done
			for ((i = 0; i < 60; i++)); do
				[ -z "$(docker ps -aq --filter "label=io.aetherium.worker_id=$SERVER_WORKER_ID")" ] && break
				sleep 1
			done
		fi
	fi
	if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
		kill -TERM "$SERVER_PID" 2>/dev/null || true
		local j
		for ((j = 0; j < 150; j++)); do
			kill -0 "$SERVER_PID" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$SERVER_PID" 2>/dev/null || true
	fi
	local cid
	for cid in $(docker ps -aq --no-trunc --filter "label=io.aetherium.worker_id=$SERVER_WORKER_ID"); do
		docker rm -f "$cid" >/dev/null 2>&1 || true
	done
	if [ "$status" -ne 0 ] && [ -f "$SERVER_TMP/server.log" ]; then
		log "server log (last 40 lines):"
		tail -n 40 "$SERVER_TMP/server.log" >&2 || true
	fi
	if [ -n "${KEEP_SERVER_TMP:-}" ]; then
		log "kept $SERVER_TMP"
	else
		rm -rf "$SERVER_TMP"
	fi
	SERVER_TMP=''
}

# The EXIT trap of a script that runs one server: stop it, keep the exit status.
server_cleanup() {
	local status=$?
	trap - EXIT INT TERM
	server_stop "$status"
	exit "$status"
}

server_stop_on_exit() {
	trap server_cleanup EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
}
