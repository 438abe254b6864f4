use super::*;

#[test]
fn references_escape_to_safe_file_names_and_back() {
    for reference in [
        "aetherium/base:latest",
        "../etc",
        ".hidden",
        "/srv/rootfs",
        "a b%c",
    ] {
        let name = escape_reference(reference);
        assert!(!name.contains('/') && !name.starts_with('.'), "{name}");
        assert_eq!(unescape_reference(&name).as_deref(), Some(reference));
    }
    assert_eq!(
        escape_reference("aetherium/base:latest"),
        "aetherium%2Fbase%3Alatest"
    );
}

#[test]
fn cmdline_follows_the_boot_contract() {
    assert_eq!(
        kernel_cmdline(None),
        "console=ttyS0 reboot=k panic=1 root=/dev/vda rw"
    );
    let network = GuestNetwork {
        tap: "aeth0".into(),
        mac: "52:54:00:00:00:01".into(),
        ip: "10.200.0.2".parse().expect("ip"),
        gateway: "10.200.0.1".parse().expect("ip"),
        prefix_len: 24,
        dns: Some("10.200.0.1".parse().expect("ip")),
    };
    assert_eq!(
        kernel_cmdline(Some(&network)),
        "console=ttyS0 reboot=k panic=1 root=/dev/vda rw ip=10.200.0.2::10.200.0.1:255.255.255.0::eth0:off:10.200.0.1"
    );
}

#[test]
fn rootfs_size_leaves_room() {
    assert!(rootfs_size_mib(0, 10, 0) >= 32);
    let mib = rootfs_size_mib(200 << 20, 10_000, 512);
    assert!((750..900).contains(&mib), "{mib}");
}
