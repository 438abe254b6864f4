use super::*;

#[test]
fn vm_ids_are_path_and_option_safe() {
    assert!(check_vm_id("a1b2-c3_d4").is_ok());
    for bad in ["", "a/b", "..", "a,b", "a b", &"x".repeat(65)] {
        assert!(check_vm_id(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn long_or_comma_run_dirs_are_refused() {
    let long = PathBuf::from(format!("/{}", "d".repeat(100)));
    let err = check_dir(&long).unwrap_err();
    assert!(err.contains("more than the 107"), "{err}");
    assert!(check_dir(Path::new("/run/a,b/vm")).is_err());
    assert!(check_dir(Path::new("/run/aetherium/qemu/vm-1")).is_ok());
}

#[test]
fn network_args_are_checked() {
    let mut network = GuestNetwork {
        tap: "ae-tap0".into(),
        mac: "52:54:00:12:34:56".into(),
        ip: "10.0.0.2".parse().unwrap(),
        gateway: "10.0.0.1".parse().unwrap(),
        prefix_len: 24,
        dns: None,
    };
    assert!(check_network(&network).is_ok());
    network.mac = "52:54:00:12:34".into();
    assert!(check_network(&network).is_err());
    network.mac = "52:54:00:12:34:56".into();
    network.tap = "tap,script=/x".into();
    assert!(check_network(&network).is_err());
}

#[test]
fn qemu_args_attach_a_nic_only_with_a_network() {
    let dir = Path::new("/run/q/vm1");
    let network = GuestNetwork {
        tap: "ae-tap0".into(),
        mac: "52:54:00:12:34:56".into(),
        ip: "10.0.0.2".parse().unwrap(),
        gateway: "10.0.0.1".parse().unwrap(),
        prefix_len: 24,
        dns: None,
    };
    let mut a = QemuArgs {
        vm_id: "vm1",
        dir,
        accel: QemuAccel::Tcg,
        vcpus: 1,
        memory_mb: 512,
        kernel: Path::new("/k"),
        initramfs: Path::new("/i"),
        cmdline: "console=ttyS0",
        network: None,
    };
    let joined = |args: Vec<OsString>| {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let plain = joined(qemu_args(&a));
    assert!(
        plain.contains("q35,accel=tcg,memory-backend=mem"),
        "{plain}"
    );
    assert!(plain.contains("-cpu max"), "{plain}");
    assert!(!plain.contains("-netdev"), "{plain}");
    a.network = Some(&network);
    a.accel = QemuAccel::Kvm;
    let networked = joined(qemu_args(&a));
    assert!(networked.contains("tap,id=n0,ifname=ae-tap0,script=no,downscript=no"));
    assert!(networked.contains("virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56"));
    assert!(networked.contains("-cpu host"), "{networked}");
}
