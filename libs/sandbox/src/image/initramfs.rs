//! The initramfs: busybox, the guest's kernel modules and an `/init` script that
//! loads them, mounts the root filesystem (`/dev/vda`, ext4), configures `eth0` from
//! the kernel's `ip=` parameter (and the guest's resolver from its `dns0` field)
//! and hands over to the agent as PID 1.

use std::io::BufWriter;
use std::path::Path;

use super::cpio::CpioWriter;
use super::modules::KernelModule;
use super::{AGENT_IN_GUEST, AGENT_VSOCK_PORT, ImageError};

/// The busybox applets `/init` uses, linked to `/bin/busybox`.
const APPLETS: &[&str] = &[
    "sh",
    "mount",
    "umount",
    "insmod",
    "mkdir",
    "cat",
    "echo",
    "sleep",
    "usleep",
    "ip",
    "switch_root",
    "reboot",
    "poweroff",
    "sync",
    "ls",
    "rm",
    "dmesg",
    "env",
];

/// The script, with the module list and the agent's command filled in.
fn init_script(modules: &[KernelModule]) -> String {
    let names: Vec<&str> = modules.iter().map(|m| m.name.as_str()).collect();
    INIT_TEMPLATE
        .replace("@MODULES@", &names.join(" "))
        .replace("@AGENT@", AGENT_IN_GUEST)
        .replace("@PORT@", &AGENT_VSOCK_PORT.to_string())
}

const INIT_TEMPLATE: &str = r#"#!/bin/sh
# Aetherium guest init (initramfs). On any failure: one clear line on the console,
# then an immediate reboot, which ends the VM (QEMU runs with -no-reboot, the
# kernel's reboot=k makes Firecracker exit).
export PATH=/bin
fail() {
    echo "aetherium-init: FAILED: $*"
    echo "aetherium-init: powering off"
    sync
    reboot -f
    sleep 10
    exit 1
}
mount -t proc proc /proc || fail "cannot mount /proc"
mount -t sysfs sysfs /sys || fail "cannot mount /sys"
mount -t devtmpfs devtmpfs /dev || fail "cannot mount /dev"

ip_arg=""
mmio_devices=""
for word in $(cat /proc/cmdline); do
    case "$word" in
        ip=*) ip_arg="${word#ip=}" ;;
        virtio_mmio.device=*) mmio_devices="$mmio_devices device=${word#virtio_mmio.device=}" ;;
    esac
done

# A module whose device is absent still loads (it only registers its driver); a
# failure is reported and skipped: the checks below say what is really missing.
for module in @MODULES@; do
    args=""
    [ "$module" = virtio_mmio ] && args="$mmio_devices"
    insmod "/lib/modules/$module.ko" $args || echo "aetherium-init: insmod $module failed (ignored)"
done

tries=0
while [ ! -b /dev/vda ]; do
    tries=$((tries + 1))
    [ "$tries" -gt 100 ] && fail "no root disk /dev/vda after 10 s"
    usleep 100000
done
mkdir -p /newroot
mount -t ext4 -o rw /dev/vda /newroot || fail "cannot mount /dev/vda (ext4) on /newroot"
[ -x "/newroot@AGENT@" ] || fail "the root filesystem has no @AGENT@"

ip link set lo up || echo "aetherium-init: cannot bring lo up"
if [ -n "$ip_arg" ]; then
    # client::gateway:netmask::device:autoconf[:dns0]
    old_ifs="$IFS"; IFS=:
    set -- $ip_arg
    IFS="$old_ifs"
    address="$1"; gateway="$3"; netmask="$4"; device="${6:-eth0}"; dns0="$8"
    prefix=0
    old_ifs="$IFS"; IFS=.
    for octet in $netmask; do
        case "$octet" in
            255) prefix=$((prefix + 8)) ;; 254) prefix=$((prefix + 7)) ;;
            252) prefix=$((prefix + 6)) ;; 248) prefix=$((prefix + 5)) ;;
            240) prefix=$((prefix + 4)) ;; 224) prefix=$((prefix + 3)) ;;
            192) prefix=$((prefix + 2)) ;; 128) prefix=$((prefix + 1)) ;;
        esac
    done
    IFS="$old_ifs"
    tries=0
    while [ ! -e "/sys/class/net/$device" ]; do
        tries=$((tries + 1))
        [ "$tries" -gt 50 ] && fail "no network device $device after 5 s"
        usleep 100000
    done
    ip link set "$device" up || fail "cannot bring $device up"
    ip addr add "$address/$prefix" dev "$device" || fail "cannot set $address/$prefix on $device"
    if [ -n "$gateway" ]; then
        ip route add default via "$gateway" dev "$device" || fail "cannot route via $gateway"
    fi
    if [ -n "$dns0" ]; then
        # In place of what the image had (often a link to a resolver it lacks).
        mkdir -p /newroot/etc
        rm -f /newroot/etc/resolv.conf
        echo "nameserver $dns0" > /newroot/etc/resolv.conf || fail "cannot write /etc/resolv.conf"
    fi
fi

for dir in proc sys dev; do
    mkdir -p "/newroot/$dir"
    mount --move "/$dir" "/newroot/$dir" || fail "cannot move /$dir into the root filesystem"
done
echo "aetherium-init: starting the agent"
exec env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=linux \
    /bin/switch_root /newroot @AGENT@ init -- --listen vsock:@PORT@
fail "switch_root failed"
"#;

/// Writes the initramfs (an uncompressed newc cpio) to `out`; returns its size.
pub fn write_initramfs(
    out: &Path,
    busybox: &Path,
    modules: &[KernelModule],
) -> Result<u64, ImageError> {
    let busybox_bytes = std::fs::read(busybox).map_err(|e| {
        ImageError::io(
            format!(
                "cannot read busybox {} (a static busybox is needed for the initramfs; install busybox-static)",
                busybox.display()
            ),
            e,
        )
    })?;
    let file = std::fs::File::create(out)
        .map_err(|e| ImageError::io(format!("cannot create {}", out.display()), e))?;
    let write = || -> std::io::Result<u64> {
        let mut cpio = CpioWriter::new(BufWriter::new(file));
        for dir in ["bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules"] {
            cpio.dir(dir, 0o755)?;
        }
        cpio.char_device("dev/console", 0o600, 5, 1)?;
        cpio.file("bin/busybox", 0o755, &busybox_bytes)?;
        for applet in APPLETS {
            cpio.symlink(&format!("bin/{applet}"), "busybox")?;
        }
        for module in modules {
            let data = module
                .read()
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            cpio.file(&format!("lib/modules/{}.ko", module.name), 0o644, &data)?;
        }
        cpio.file("init", 0o755, init_script(modules).as_bytes())?;
        let (writer, size) = cpio.finish()?;
        writer
            .into_inner()
            .map_err(|e| e.into_error())?
            .sync_all()?;
        Ok(size)
    };
    write().map_err(|e| ImageError::io(format!("cannot write {}", out.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_names_modules_in_order_and_the_agent() {
        let modules = [
            KernelModule {
                name: "virtio".into(),
                path: "/x/virtio.ko".into(),
            },
            KernelModule {
                name: "virtio_blk".into(),
                path: "/x/virtio_blk.ko".into(),
            },
        ];
        let script = init_script(&modules);
        assert!(script.contains("for module in virtio virtio_blk; do"));
        assert!(script.contains("/.aetherium/bin/aetherium-agent init -- --listen vsock:49983"));
        assert!(!script.contains('@'), "every placeholder filled");
    }

    #[test]
    fn script_is_valid_shell() {
        // `sh -n` parses without running: catches quoting mistakes.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("init");
        std::fs::write(&path, init_script(&[])).expect("write");
        let status = std::process::Command::new("sh")
            .arg("-n")
            .arg(&path)
            .status()
            .expect("sh");
        assert!(status.success());
    }
}
