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

use aetherium_core::net::guard;
use aetherium_core::net::plan::{self, TAP_PREFIX};
use aetherium_core::net::{HostNetwork, HostNetworkConfig, NetError, guest_mac, tap_name};
use aetherium_core::store::{IpLeases, SqliteStore};
use aetherium_core::vmm::GuestNetwork;
use aetherium_types::{Egress, NetworkPolicy};
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
    vms: Mutex<Vec<String>>,
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
            let _ = std::fs::remove_dir_all(format!("/etc/netns/{ns}"));
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
        // Every filter rule naming this test's bridge (the fence and the guests'
        // rules), then the guests' policy chains.
        for (table, chain) in [
            ("filter", "INPUT"),
            ("filter", "FORWARD"),
            ("filter", guard::MICROVM_FORWARD),
            ("nat", "PREROUTING"),
        ] {
            let listed = Command::new("iptables")
                .args(["-w", "-t", table, "-S", chain])
                .output();
            if let Ok(out) = listed {
                let listing = String::from_utf8_lossy(&out.stdout);
                let deletions = plan::rule_deletions(&listing, |words| {
                    words
                        .windows(2)
                        .any(|w| w[0] == "-i" && w[1] == self.bridge)
                });
                for del in deletions {
                    let _ = Command::new("iptables")
                        .args(["-w", "-t", table])
                        .args(&del)
                        .output();
                }
            }
        }
        for vm_id in self.vms.lock().unwrap().iter() {
            let chain = guard::policy_chain(vm_id);
            let _ = Command::new("iptables").args(["-w", "-F", &chain]).output();
            let _ = Command::new("iptables").args(["-w", "-X", &chain]).output();
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
        Fixture::with(prefix_len, nat, false).await
    }

    /// A fenced network (`isolated`), with NAT.
    async fn isolated() -> Fixture {
        Fixture::with(24, true, true).await
    }

    /// A fenced network whose guests' DNS goes to `upstream` (through its resolver).
    async fn isolated_with_dns(upstream: std::net::SocketAddr) -> Fixture {
        let mut f = Fixture::with(24, true, true).await;
        f.config.dns_upstream = vec![upstream];
        f.net = HostNetwork::new(f.config.clone(), f.leases.clone(), f.key.clone()).unwrap();
        f
    }

    async fn with(prefix_len: u8, nat: bool, isolated: bool) -> Fixture {
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
            isolated,
            egress_allow: Vec::new(),
            dns_upstream: Vec::new(),
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
                vms: Mutex::new(Vec::new()),
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

    /// A network namespace and a veth pair, one end (the second name) in the
    /// namespace, the other (the first) on the host; all removed with the fixture.
    fn namespace_with_veth(&self, prefix: &str) -> (String, String, String) {
        let suffix = random_hex(6);
        let (ns, host_end, far_end) = (
            format!("{prefix}n{suffix}"),
            format!("{prefix}h{suffix}"),
            format!("{prefix}f{suffix}"),
        );
        self.cleanup.netns(&ns);
        self.cleanup.link(&host_end);
        must("ip", &["netns", "add", &ns]);
        must(
            "ip",
            &[
                "link", "add", &host_end, "type", "veth", "peer", "name", &far_end,
            ],
        );
        must("ip", &["link", "set", "dev", &far_end, "netns", &ns]);
        (ns, host_end, far_end)
    }

    /// A "guest": a TAP without a reader carries no traffic, so a veth pair, one end
    /// on the bridge (an isolated port on a fenced network, as attach makes TAPs),
    /// the other in a namespace of its own with a leased address and a default
    /// route via the gateway. Its VM id and namespace.
    async fn veth_guest(&self) -> (String, String, Ipv4Addr) {
        let (ns, host_end, guest_end) = self.namespace_with_veth("aeg");
        let guest = vm_id();
        self.cleanup.vms.lock().unwrap().push(guest.clone());
        let ip = self
            .leases
            .lease_ip(&self.key, &guest, self.net.guest_range())
            .await
            .unwrap();
        // As attach joins TAPs: on a fenced network, an isolated port (set once it
        // is a port).
        let dev = ["link", "set", "dev", host_end.as_str()];
        must("ip", &[&dev[..], &["master", self.bridge(), "up"]].concat());
        if self.config.isolated {
            must(
                "ip",
                &[&dev[..], &["type", "bridge_slave", "isolated", "on"]].concat(),
            );
        }
        let cidr = format!("{ip}/{}", self.config.prefix_len);
        let gateway = self.config.gateway.to_string();
        in_netns(&ns, &["ip", "addr", "add", &cidr, "dev", &guest_end]);
        in_netns(&ns, &["ip", "link", "set", "dev", &guest_end, "up"]);
        in_netns(&ns, &["ip", "link", "set", "dev", "lo", "up"]);
        in_netns(&ns, &["ip", "route", "add", "default", "via", &gateway]);
        (guest, ns, ip)
    }

    async fn attach(&self, vm_id: &str) -> GuestNetwork {
        self.cleanup.link(&tap_name(vm_id));
        self.net.attach(vm_id, None).await.unwrap()
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
    assert_eq!(f.net.attach(&a, None).await.unwrap(), net_a);
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
    let net_c = again.attach(&c, None).await.unwrap();
    assert!(
        ![net_a.ip, net_b.ip].contains(&net_c.ip),
        "{net_c:?} reuses a leased address"
    );
    // The VMs that were running keep theirs (and their TAP devices).
    assert_eq!(again.attach(&a, None).await.unwrap(), net_a);
    assert_eq!(again.attach(&b, None).await.unwrap(), net_b);
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
    match f.net.attach(&extra, None).await {
        Err(NetError::Exhausted(m)) => assert!(m.contains(&f.key), "{m}"),
        other => panic!("expected exhaustion, got {other:?}"),
    }
    assert!(!link_exists(&tap_name(&extra)));
    assert_eq!(f.leased().await.len(), 5);

    f.net.detach(&ids[2]).await.unwrap();
    let net = f.net.attach(&extra, None).await.unwrap();
    assert_eq!(net.ip, Ipv4Addr::from(base + 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_attach_leaves_nothing_behind() {
    let f = Fixture::new(24, false).await;
    // No ensure(): the bridge is missing, so the TAP cannot join it.
    let a = vm_id();
    f.cleanup.link(&tap_name(&a));
    match f.net.attach(&a, None).await {
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
    assert!(matches!(
        f.net.attach(&a, None).await,
        Err(NetError::InUse(_))
    ));
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
    let (_, ns, ip) = f.veth_guest().await;
    let gateway = f.config.gateway.to_string();
    assert!(
        pings(&ns, &gateway).await,
        "{ip} in {ns} cannot reach the gateway {gateway}"
    );
}

/// Runs `ip netns exec <ns> <args>`, which must succeed; its stdout.
fn in_netns(ns: &str, args: &[&str]) -> String {
    let mut v = vec!["netns", "exec", ns];
    v.extend_from_slice(args);
    must("ip", &v)
}

/// Whether a ping from namespace `ns` to `target` is answered (a few tries: a new
/// port may take a moment to forward).
async fn pings(ns: &str, target: &str) -> bool {
    let mut ping: Vec<&str> = vec!["netns", "exec", ns];
    let program = ping_command();
    ping.extend(program.iter().map(String::as_str));
    ping.extend(["-c", "1", "-W", "1", target]);
    for _ in 0..3 {
        let (ok, stdout, _) = sh("ip", &ping);
        if ok && (stdout.contains("1 packets received") || stdout.contains("1 received")) {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    false
}

/// A namespace standing for hosts beyond the bridge, reached from the host by a
/// veth pair: the host end is `<net>.<x>.1/29`, the namespace answers on `.2` and
/// `.3`. Its namespace and its two addresses.
fn outside_host(f: &Fixture, net: &str) -> (String, String, String) {
    let x: u8 = rand::random();
    let host_end: Ipv4Addr = format!("{net}.{x}.1").parse().unwrap();
    let (ns, first, second) = outside_namespace(f, host_end);
    (ns, first.to_string(), second.to_string())
}

/// [`outside_host`] with the host end at `host_end` (a /29's first address): the
/// namespace's two addresses.
fn outside_host_at(f: &Fixture, host_end: Ipv4Addr) -> (Ipv4Addr, Ipv4Addr) {
    let (_, first, second) = outside_namespace(f, host_end);
    (first, second)
}

fn outside_namespace(f: &Fixture, host_end_ip: Ipv4Addr) -> (String, Ipv4Addr, Ipv4Addr) {
    let (ns, host_end, far_end) = f.namespace_with_veth("aeo");
    must(
        "ip",
        &[
            "addr",
            "add",
            &format!("{host_end_ip}/29"),
            "dev",
            &host_end,
        ],
    );
    must("ip", &["link", "set", "dev", &host_end, "up"]);
    let base = u32::from(host_end_ip);
    let (first, second) = (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2));
    for ip in [first, second] {
        in_netns(
            &ns,
            &["ip", "addr", "add", &format!("{ip}/29"), "dev", &far_end],
        );
    }
    in_netns(&ns, &["ip", "link", "set", "dev", &far_end, "up"]);
    in_netns(&ns, &["ip", "link", "set", "dev", "lo", "up"]);
    in_netns(
        &ns,
        &[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &host_end_ip.to_string(),
        ],
    );
    (ns, first, second)
}

/// The fenced microVM bridge with real traffic: guests reach the outside world
/// (through NAT), never the host, each other or private ranges; a guest's policy
/// changes what it reaches at once; detach and teardown take every rule with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_bridge_fences_its_guests_and_applies_their_policies() {
    let f = Fixture::isolated().await;
    f.net.ensure().await.unwrap();
    let (a, a_ns, _) = f.veth_guest().await;
    let (b, b_ns, b_ip) = f.veth_guest().await;
    for guest in [&a, &b] {
        f.net.set_policy(guest, None).await.unwrap();
    }
    // 198.18.0.0/15 is set aside for network tests and is not a private range.
    let (_, outside, outside_too) = outside_host(&f, "198.18");
    let (_, private, _) = outside_host(&f, "10.252");
    assert!(pings(&a_ns, &outside).await, "a guest reaches the outside");
    assert!(pings(&b_ns, &outside_too).await);
    assert!(!pings(&a_ns, &private).await, "a private range is refused");
    assert!(
        !pings(&a_ns, &f.config.gateway.to_string()).await,
        "the host's own address is refused"
    );
    assert!(!pings(&a_ns, &b_ip.to_string()).await, "guests never meet");

    // A policy, then none again: at once, and only for that guest.
    let policy = NetworkPolicy {
        egress: Egress::Deny,
        allow: vec![format!("{outside}/32")],
        deny: vec![],
    };
    f.net.set_policy(&a, Some(&policy)).await.unwrap();
    assert!(pings(&a_ns, &outside).await);
    assert!(!pings(&a_ns, &outside_too).await, "egress deny");
    assert!(
        pings(&b_ns, &outside_too).await,
        "the other guest is unaffected"
    );
    // A policy never opens what the fence refuses.
    let open_private = NetworkPolicy {
        egress: Egress::Allow,
        allow: vec![format!("{private}/32")],
        deny: vec![],
    };
    f.net.set_policy(&a, Some(&open_private)).await.unwrap();
    assert!(!pings(&a_ns, &private).await);
    assert!(pings(&a_ns, &outside_too).await);

    // Rules leave with their guest; the fence with the bridge.
    let rules_naming = |needle: &str| {
        ["INPUT", "FORWARD", guard::MICROVM_FORWARD]
            .iter()
            .flat_map(|chain| {
                must("iptables", &["-w", "-S", chain])
                    .lines()
                    .filter(|l| l.contains(needle))
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
    };
    assert!(!rules_naming(&a).is_empty());
    f.net.detach(&a).await.unwrap();
    assert!(rules_naming(&a).is_empty(), "{:?}", rules_naming(&a));
    let chains = must("iptables", &["-w", "-S"]);
    assert!(!chains.contains(&guard::policy_chain(&a)), "{chains}");
    assert!(!rules_naming(&format!("aetherium-guard:{}", f.bridge())).is_empty());
    f.net.detach(&b).await.unwrap();
    f.net.teardown().await.unwrap();
    assert!(rules_naming(&format!("-i {} ", f.bridge())).is_empty());
}

/// What `getent hosts <name>` finds in namespace `ns` (whose resolv.conf names
/// `server`, as a guest's init writes it): the address, or empty.
fn resolve_in_netns(ns: &str, server: Ipv4Addr, name: &str) -> String {
    let dir = format!("/etc/netns/{ns}");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        format!("{dir}/resolv.conf"),
        format!("nameserver {server}\n"),
    )
    .unwrap();
    let (_, out, _) = sh("ip", &["netns", "exec", ns, "getent", "hosts", name]);
    out.split_whitespace().next().unwrap_or("").to_string()
}

/// MicroVM guests get DNS from the bridge's resolver, under their policies: an
/// allowed name resolves and opens its address, another never leaves the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guests_resolve_through_the_bridges_resolver_under_their_policies() {
    // The upstream answers addresses in a block of 198.19.0.0/16 (set aside for
    // network tests) the outside host then takes.
    let x: u8 = rand::random();
    let (allowed_ip, other_ip) = (Ipv4Addr::new(198, 19, x, 2), Ipv4Addr::new(198, 19, x, 3));
    let upstream = aetherium_testkit::dns::StandInDns::start(&[
        ("allowed.test", &[allowed_ip]),
        ("other.test", &[other_ip]),
    ]);
    let f = Fixture::isolated_with_dns(upstream.addr()).await;
    f.net.ensure().await.unwrap();
    let (a, a_ns, _) = f.veth_guest().await;
    let (outside, outside_too) = outside_host_at(&f, Ipv4Addr::new(198, 19, x, 1));
    assert_eq!((outside, outside_too), (allowed_ip, other_ip));
    let policy = NetworkPolicy {
        egress: Egress::Deny,
        allow: vec!["allowed.test".into()],
        deny: vec![],
    };
    f.net.set_policy(&a, Some(&policy)).await.unwrap();
    let gateway = f.config.gateway;
    assert!(!pings(&a_ns, &allowed_ip.to_string()).await, "egress deny");
    assert_eq!(
        resolve_in_netns(&a_ns, gateway, "allowed.test"),
        allowed_ip.to_string()
    );
    assert!(
        pings(&a_ns, &allowed_ip.to_string()).await,
        "opened by its name"
    );
    assert_eq!(resolve_in_netns(&a_ns, gateway, "other.test"), "");
    assert!(!pings(&a_ns, &other_ip.to_string()).await);
    assert!(
        !upstream.asked().iter().any(|n| n == "other.test"),
        "{:?}",
        upstream.asked()
    );
    // Without a policy every name resolves, through the same resolver.
    f.net.set_policy(&a, None).await.unwrap();
    assert_eq!(
        resolve_in_netns(&a_ns, gateway, "other.test"),
        other_ip.to_string()
    );

    f.net.detach(&a).await.unwrap();
    let nat = must("iptables", &["-w", "-t", "nat", "-S", "PREROUTING"]);
    assert!(!nat.contains(&a), "{nat}");
    f.net.teardown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_need_an_isolated_network() {
    let f = Fixture::new(24, true).await;
    f.net.ensure().await.unwrap();
    let a = vm_id();
    f.cleanup.link(&tap_name(&a));
    let policy = NetworkPolicy {
        egress: Egress::Deny,
        ..NetworkPolicy::default()
    };
    let err = f.net.attach(&a, Some(&policy)).await.unwrap_err();
    assert!(err.to_string().contains("network.isolated"), "{err}");
    assert!(!link_exists(&tap_name(&a)));
    assert!(f.leased().await.is_empty());
}
