//! Host networking with real devices: bridges, TAP devices, iptables rules, a
//! network namespace. Needs root (as here and in CI). Each test makes its own bridge
//! (`aebr` + 6 random hex digits) on its own random 10.x.y.0 subnet and VM ids of its
//! own (so TAP names never clash), and a guard removes all of it by name, also when
//! the test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashSet};
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::{Arc, Mutex};

use aetherium_core::net::plan::{self, TAP_PREFIX};
use aetherium_core::net::{HostNetwork, HostNetworkConfig, NetError, guest_mac, tap_name};
use aetherium_core::store::{IpLeases, SqliteStore};
use aetherium_core::vmm::GuestNetwork;
use serde_json::Value;

/// Runs a command, returning (success, stdout, stderr).
fn sh(program: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn must(program: &str, args: &[&str]) -> String {
    let (ok, stdout, stderr) = sh(program, args);
    assert!(ok, "`{program} {}` failed: {stderr}", args.join(" "));
    stdout
}

fn link_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

fn ports(bridge: &str) -> Vec<String> {
    if !link_exists(bridge) {
        return Vec::new();
    }
    let json = must("ip", &["-j", "link", "show", "master", bridge]);
    let links: Vec<Value> =
        serde_json::from_str(if json.trim().is_empty() { "[]" } else { &json }).unwrap();
    links
        .iter()
        .map(|l| l["ifname"].as_str().unwrap().to_string())
        .collect()
}

fn tagged_rules(table: &str, chain: &str, bridge: &str) -> Vec<Vec<String>> {
    let listing = must("iptables", &["-w", "-t", table, "-S", chain]);
    plan::tagged_rule_deletions(&listing, &plan::rule_tag(bridge))
}

fn random_hex(len: usize) -> String {
    format!("{:016x}", rand::random::<u64>())[..len].to_string()
}

/// A 10.x.y.0/24 subnet that no address or route of this host uses.
fn free_subnet() -> (u8, u8) {
    let routes = must("ip", &["-4", "route", "show", "table", "all"]);
    let addrs = must("ip", &["-4", "addr"]);
    loop {
        let (x, y) = (rand::random_range(64..=250u8), rand::random::<u8>());
        let prefix = format!("10.{x}.{y}.");
        if !routes.contains(&prefix) && !addrs.contains(&prefix) {
            return (x, y);
        }
    }
}

/// Removes everything a test made, by name, when dropped.
struct Cleanup {
    bridge: String,
    links: Mutex<Vec<String>>,
    netns: Mutex<Vec<String>>,
}

impl Cleanup {
    fn link(&self, name: &str) {
        self.links.lock().unwrap().push(name.to_string());
    }
    fn netns(&self, name: &str) {
        self.netns.lock().unwrap().push(name.to_string());
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for ns in self.netns.lock().unwrap().iter() {
            let _ = sh("ip", &["netns", "del", ns]);
        }
        let mut links = self.links.lock().unwrap().clone();
        links.extend(
            ports(&self.bridge)
                .into_iter()
                .filter(|p| p.starts_with(TAP_PREFIX)),
        );
        links.push(self.bridge.clone());
        for link in links {
            if link_exists(&link) {
                let _ = sh("ip", &["link", "del", "dev", &link]);
            }
        }
        for (table, chain) in [("nat", "POSTROUTING"), ("filter", "FORWARD")] {
            if let Ok(out) = Command::new("iptables")
                .args(["-w", "-t", table, "-S", chain])
                .output()
            {
                let listing = String::from_utf8_lossy(&out.stdout);
                for del in plan::tagged_rule_deletions(&listing, &plan::rule_tag(&self.bridge)) {
                    let mut args = vec!["-w".to_string(), "-t".into(), table.into()];
                    args.extend(del);
                    let _ = Command::new("iptables").args(&args).output();
                }
            }
        }
    }
}

/// One test's network: its bridge, subnet, SQLite store file and cleanup guard.
struct Fixture {
    config: HostNetworkConfig,
    key: String,
    db_url: String,
    leases: Arc<SqliteStore>,
    net: HostNetwork,
    cleanup: Cleanup,
    _dir: tempfile::TempDir,
}

impl Fixture {
    async fn new(prefix_len: u8, nat: bool) -> Fixture {
        assert!(
            is_root(),
            "tests/net.rs makes bridges, TAP devices and iptables rules: run it as root"
        );
        let bridge = format!("aebr{}", random_hex(6));
        let (x, y) = free_subnet();
        let config = HostNetworkConfig {
            bridge: bridge.clone(),
            gateway: Ipv4Addr::new(10, x, y, 1),
            prefix_len,
            nat,
        };
        let dir = tempfile::tempdir().unwrap();
        let db_url = format!("sqlite://{}", dir.path().join("state.db").display());
        let leases = Arc::new(SqliteStore::connect(&db_url).await.unwrap());
        let key = format!("worker-test/{bridge}");
        let net = HostNetwork::new(config.clone(), leases.clone(), key.clone()).unwrap();
        Fixture {
            config,
            key,
            db_url,
            leases,
            net,
            cleanup: Cleanup {
                bridge,
                links: Mutex::new(Vec::new()),
                netns: Mutex::new(Vec::new()),
            },
            _dir: dir,
        }
    }

    fn bridge(&self) -> &str {
        &self.config.bridge
    }

    /// A new HostNetwork over the same store file, as after a worker restart.
    async fn restarted(&self) -> HostNetwork {
        let store = Arc::new(SqliteStore::connect(&self.db_url).await.unwrap());
        HostNetwork::new(self.config.clone(), store, self.key.clone()).unwrap()
    }

    async fn leased(&self) -> Vec<(String, Ipv4Addr)> {
        self.leases
            .list_leases(&self.key)
            .await
            .unwrap()
            .into_iter()
            .map(|l| (l.vm_id, l.ip))
            .collect()
    }

    async fn attach(&self, vm_id: &str) -> GuestNetwork {
        self.cleanup.link(&tap_name(vm_id));
        self.net.attach(vm_id).await.unwrap()
    }
}

fn is_root() -> bool {
    must("id", &["-u"]).trim() == "0"
}

fn vm_id() -> String {
    aetherium_types::new_id()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensure_is_idempotent_and_teardown_removes_everything() {
    let f = Fixture::new(24, true).await;
    f.net.ensure().await.unwrap();
    f.net.ensure().await.unwrap();

    let json = must("ip", &["-j", "-d", "addr", "show", "dev", f.bridge()]);
    let links: Vec<Value> = serde_json::from_str(&json).unwrap();
    assert_eq!(links.len(), 1);
    assert_eq!(links[0]["linkinfo"]["info_kind"], "bridge");
    let flags = links[0]["flags"].as_array().unwrap();
    assert!(flags.iter().any(|f| f == "UP"), "bridge is down: {flags:?}");
    let addrs: Vec<(String, u64)> = links[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["family"] == "inet")
        .map(|a| {
            (
                a["local"].as_str().unwrap().to_string(),
                a["prefixlen"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(addrs, vec![(f.config.gateway.to_string(), 24)]);

    let nat = tagged_rules("nat", "POSTROUTING", f.bridge());
    assert_eq!(nat.len(), 1, "{nat:?}");
    let subnet = plan::subnet_cidr(f.config.gateway, 24);
    assert!(nat[0].contains(&subnet) && nat[0].contains(&"MASQUERADE".to_string()));
    assert_eq!(tagged_rules("filter", "FORWARD", f.bridge()).len(), 2);
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
            .unwrap()
            .trim(),
        "1"
    );

    f.net.teardown().await.unwrap();
    assert!(!link_exists(f.bridge()));
    assert!(tagged_rules("nat", "POSTROUTING", f.bridge()).is_empty());
    assert!(tagged_rules("filter", "FORWARD", f.bridge()).is_empty());
    // Nothing left is fine too.
    f.net.teardown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_in_the_way_is_a_clear_error() {
    let f = Fixture::new(24, false).await;
    // A TAP device (not a bridge) under the bridge's name.
    f.cleanup.link(f.bridge());
    must("ip", &["tuntap", "add", "dev", f.bridge(), "mode", "tap"]);
    match f.net.ensure().await {
        Err(NetError::Config(m)) => assert!(m.contains("not a bridge"), "{m}"),
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attached_vms_get_distinct_addresses_and_taps_on_the_bridge() {
    let f = Fixture::new(24, false).await;
    f.net.ensure().await.unwrap();
    let (a, b) = (vm_id(), vm_id());
    let net_a = f.attach(&a).await;
    let net_b = f.attach(&b).await;

    assert_ne!(net_a.ip, net_b.ip);
    assert_ne!(net_a.tap, net_b.tap);
    let range = f.net.guest_range();
    assert_eq!(net_a.ip, *range.start());
    assert!(range.contains(&net_b.ip));
    for n in [&net_a, &net_b] {
        assert!(
            n.tap.starts_with(TAP_PREFIX) && n.tap.len() <= 15,
            "{}",
            n.tap
        );
        assert_eq!(n.gateway, f.config.gateway);
        assert_eq!(n.prefix_len, 24);
    }
    assert_eq!(net_a.tap, tap_name(&a));
    assert_eq!(net_a.mac, guest_mac(&a));
    assert_ne!(net_a.mac, net_b.mac);

    let on_bridge: BTreeSet<String> = ports(f.bridge()).into_iter().collect();
    assert_eq!(
        on_bridge,
        BTreeSet::from([net_a.tap.clone(), net_b.tap.clone()])
    );
    let json = must("ip", &["-j", "-d", "link", "show", "dev", &net_a.tap]);
    let tap: Vec<Value> = serde_json::from_str(&json).unwrap();
    assert_eq!(tap[0]["linkinfo"]["info_kind"], "tun");
    assert_eq!(tap[0]["ifalias"], a.as_str());

    // Attaching again (e.g. after a worker restart) gives the same network.
    assert_eq!(f.net.attach(&a).await.unwrap(), net_a);
    assert_eq!(f.leased().await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detach_removes_the_tap_and_frees_the_address() {
    let f = Fixture::new(24, false).await;
    f.net.ensure().await.unwrap();
    let (a, b, c) = (vm_id(), vm_id(), vm_id());
    let net_a = f.attach(&a).await;
    let net_b = f.attach(&b).await;

    f.net.detach(&a).await.unwrap();
    assert!(!link_exists(&net_a.tap));
    assert_eq!(f.leased().await, vec![(b.clone(), net_b.ip)]);
    // Absent is fine.
    f.net.detach(&a).await.unwrap();

    // The freed (lowest) address is handed out again.
    assert_eq!(f.attach(&c).await.ip, net_a.ip);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_removes_stale_taps_and_leases() {
    let f = Fixture::new(24, false).await;
    f.net.ensure().await.unwrap();
    let (a, b, c) = (vm_id(), vm_id(), vm_id());
    let _net_a = f.attach(&a).await;
    let net_b = f.attach(&b).await;
    let net_c = f.attach(&c).await;
    // A lease without a device, an `aeth-` device without an alias (an older
    // leftover) and a device that is not ours, all on the bridge.
    let ghost = vm_id();
    f.leases
        .lease_ip(&f.key, &ghost, f.net.guest_range())
        .await
        .unwrap();
    let orphan = format!("{TAP_PREFIX}{}", random_hex(10));
    let foreign = format!("aefo{}", random_hex(6));
    for dev in [&orphan, &foreign] {
        f.cleanup.link(dev);
        must("ip", &["tuntap", "add", "dev", dev, "mode", "tap"]);
        must("ip", &["link", "set", "dev", dev, "master", f.bridge()]);
    }

    let live: HashSet<String> = [b.clone(), c.clone()].into();
    f.net.reconcile(&live).await.unwrap();

    let on_bridge: BTreeSet<String> = ports(f.bridge()).into_iter().collect();
    assert_eq!(
        on_bridge,
        BTreeSet::from([net_b.tap.clone(), net_c.tap.clone(), foreign.clone()])
    );
    assert!(!link_exists(&tap_name(&a)) && !link_exists(&orphan));
    assert_eq!(f.leased().await, vec![(b, net_b.ip), (c, net_c.ip)]);

    // Nothing live: nothing of ours left.
    f.net.reconcile(&HashSet::new()).await.unwrap();
    assert_eq!(ports(f.bridge()), vec![foreign]);
    assert!(f.leased().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_worker_never_hands_out_a_leased_address() {
    let f = Fixture::new(24, false).await;
    f.net.ensure().await.unwrap();
    let (a, b, c) = (vm_id(), vm_id(), vm_id());
    let net_a = f.attach(&a).await;
    let net_b = f.attach(&b).await;

    let again = f.restarted().await;
    again.ensure().await.unwrap();
    f.cleanup.link(&tap_name(&c));
    let net_c = again.attach(&c).await.unwrap();
    assert!(
        ![net_a.ip, net_b.ip].contains(&net_c.ip),
        "{net_c:?} reuses a leased address"
    );
    // The VMs that were running keep theirs (and their TAP devices).
    assert_eq!(again.attach(&a).await.unwrap(), net_a);
    assert_eq!(again.attach(&b).await.unwrap(), net_b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_subnet_runs_out_with_a_clear_error_and_nothing_left_behind() {
    let f = Fixture::new(29, false).await;
    f.net.ensure().await.unwrap();
    // /29 with the gateway at .1: guests get .2 to .6.
    let ids: Vec<String> = (0..5).map(|_| vm_id()).collect();
    let mut ips = BTreeSet::new();
    for id in &ids {
        ips.insert(f.attach(id).await.ip);
    }
    let base = u32::from(f.config.gateway);
    assert_eq!(ips, (base + 1..=base + 5).map(Ipv4Addr::from).collect());

    let extra = vm_id();
    f.cleanup.link(&tap_name(&extra));
    match f.net.attach(&extra).await {
        Err(NetError::Exhausted(m)) => assert!(m.contains(&f.key), "{m}"),
        other => panic!("expected exhaustion, got {other:?}"),
    }
    assert!(!link_exists(&tap_name(&extra)));
    assert_eq!(f.leased().await.len(), 5);

    f.net.detach(&ids[2]).await.unwrap();
    let net = f.net.attach(&extra).await.unwrap();
    assert_eq!(net.ip, Ipv4Addr::from(base + 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_attach_leaves_nothing_behind() {
    let f = Fixture::new(24, false).await;
    // No ensure(): the bridge is missing, so the TAP cannot join it.
    let a = vm_id();
    f.cleanup.link(&tap_name(&a));
    match f.net.attach(&a).await {
        Err(NetError::Command(m)) => assert!(m.contains(f.bridge()), "{m}"),
        other => panic!("expected a command error, got {other:?}"),
    }
    assert!(!link_exists(&tap_name(&a)));
    assert!(f.leased().await.is_empty());

    // A device under the VM's TAP name that belongs to another VM is left alone.
    f.net.ensure().await.unwrap();
    must(
        "ip",
        &["tuntap", "add", "dev", &tap_name(&a), "mode", "tap"],
    );
    must(
        "ip",
        &["link", "set", "dev", &tap_name(&a), "alias", "another-vm"],
    );
    assert!(matches!(f.net.attach(&a).await, Err(NetError::InUse(_))));
    assert!(link_exists(&tap_name(&a)));
    assert!(f.leased().await.is_empty());
    // …and detach does not remove it either.
    f.net.detach(&a).await.unwrap();
    assert!(link_exists(&tap_name(&a)));
}

/// A program that can ping: `ping`, else busybox's.
fn ping_command() -> Vec<String> {
    if sh("sh", &["-c", "command -v ping"]).0 {
        return vec!["ping".into()];
    }
    for busybox in ["/bin/busybox", "/usr/bin/busybox"] {
        if std::path::Path::new(busybox).exists() {
            return vec![busybox.into(), "ping".into()];
        }
    }
    panic!("no ping program: install iputils-ping or busybox-static");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_on_the_bridge_reaches_the_gateway() {
    let f = Fixture::new(24, true).await;
    f.net.ensure().await.unwrap();
    // A TAP without a reader carries no traffic, so the "guest" is a veth pair: one
    // end on the bridge, the other in a namespace of its own with a leased address.
    let suffix = random_hex(6);
    let (ns, host_end, guest_end) = (
        format!("aens{suffix}"),
        format!("aevh{suffix}"),
        format!("aevg{suffix}"),
    );
    let guest = vm_id();
    let ip = f
        .leases
        .lease_ip(&f.key, &guest, f.net.guest_range())
        .await
        .unwrap();
    f.cleanup.netns(&ns);
    f.cleanup.link(&host_end);
    must("ip", &["netns", "add", &ns]);
    must(
        "ip",
        &[
            "link", "add", &host_end, "type", "veth", "peer", "name", &guest_end,
        ],
    );
    must("ip", &["link", "set", "dev", &guest_end, "netns", &ns]);
    must(
        "ip",
        &["link", "set", "dev", &host_end, "master", f.bridge(), "up"],
    );
    let cidr = format!("{ip}/{}", f.config.prefix_len);
    let in_ns = |args: &[&str]| {
        let mut v = vec!["netns", "exec", &ns];
        v.extend_from_slice(args);
        must("ip", &v)
    };
    in_ns(&["ip", "addr", "add", &cidr, "dev", &guest_end]);
    in_ns(&["ip", "link", "set", "dev", &guest_end, "up"]);
    in_ns(&["ip", "link", "set", "dev", "lo", "up"]);

    let gateway = f.config.gateway.to_string();
    let mut ping: Vec<&str> = vec!["netns", "exec", &ns];
    let program = ping_command();
    ping.extend(program.iter().map(String::as_str));
    ping.extend(["-c", "1", "-W", "2", &gateway]);
    // The port may take a moment to forward (no STP, but carrier comes up async).
    let mut last = String::new();
    for _ in 0..5 {
        let (ok, stdout, stderr) = sh("ip", &ping);
        if ok {
            assert!(
                stdout.contains("1 packets received") || stdout.contains("1 received"),
                "{stdout}"
            );
            return;
        }
        last = format!("{stdout}{stderr}");
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    panic!("{ip} in {ns} cannot reach the gateway {gateway}: {last}");
}
