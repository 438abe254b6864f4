//! The pure part of host networking: names, addresses, MACs and rules derived from
//! the configuration and the VM id, and parsers for what `ip -j` and `iptables -S`
//! print.

use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{HostNetworkConfig, NetError};

/// Our TAP devices' names start with this (then 10 characters of the VM id).
pub const TAP_PREFIX: &str = "aeth-";
/// Linux interface names have at most 15 bytes (IFNAMSIZ - 1).
pub const MAX_IFNAME: usize = 15;

/// The VM's TAP device: `aeth-` and the first 10 hex digits of a UUID VM id (the
/// random part, so names stay unique and recognisable), or of the id's SHA-256 for
/// any other id (ids may hold characters an interface name cannot).
pub fn tap_name(vm_id: &str) -> String {
    let digits = match uuid::Uuid::try_parse(vm_id) {
        Ok(uuid) => uuid.simple().to_string(),
        Err(_) => hex(&Sha256::digest(vm_id.as_bytes())),
    };
    format!("{TAP_PREFIX}{}", &digits[..MAX_IFNAME - TAP_PREFIX.len()])
}

/// The guest NIC's MAC: QEMU's locally administered prefix `52:54:00` and three
/// bytes of the VM id's SHA-256, so a VM keeps its MAC across restarts.
pub fn guest_mac(vm_id: &str) -> String {
    let hash = Sha256::digest(vm_id.as_bytes());
    format!("52:54:00:{:02x}:{:02x}:{:02x}", hash[0], hash[1], hash[2])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The netmask of a prefix length (0..=32).
pub fn netmask(prefix_len: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(prefix_len))
        .unwrap_or(0)
}

/// The subnet's network address.
pub fn network_address(ip: Ipv4Addr, prefix_len: u8) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(ip) & netmask(prefix_len))
}

/// `10.0.0.0/24` for `10.0.0.1` and 24.
pub fn subnet_cidr(ip: Ipv4Addr, prefix_len: u8) -> String {
    format!("{}/{prefix_len}", network_address(ip, prefix_len))
}

/// The addresses guests get: those after the gateway, up to the one before the
/// broadcast address.
pub fn guest_range(gateway: Ipv4Addr, prefix_len: u8) -> RangeInclusive<Ipv4Addr> {
    let broadcast = u32::from(gateway) | !netmask(prefix_len);
    Ipv4Addr::from(u32::from(gateway).saturating_add(1))
        ..=Ipv4Addr::from(broadcast.saturating_sub(1))
}

/// Whether `name` can be a Linux interface name.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_IFNAME
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Checks a configuration: a valid bridge name, and a gateway inside a subnet that
/// leaves guests at least one address after it.
pub fn validate(config: &HostNetworkConfig) -> Result<(), NetError> {
    let bad = |why: String| Err(NetError::Config(why));
    if !valid_ifname(&config.bridge) {
        return bad(format!(
            "bridge name {:?} is not a valid interface name (1 to {MAX_IFNAME} of a-z, A-Z, 0-9, '-', '_', '.')",
            config.bridge
        ));
    }
    if config.bridge.starts_with(TAP_PREFIX) {
        return bad(format!(
            "bridge name {:?} must not start with {TAP_PREFIX:?} (the VMs' TAP devices do)",
            config.bridge
        ));
    }
    if !(1..=30).contains(&config.prefix_len) {
        return bad(format!(
            "prefix length /{} leaves no guest addresses (use /1 to /30, e.g. /24)",
            config.prefix_len
        ));
    }
    let gateway = config.gateway;
    let network = network_address(gateway, config.prefix_len);
    if gateway == network {
        return bad(format!(
            "gateway {gateway} is the network address of {}; use a host address such as {}",
            subnet_cidr(gateway, config.prefix_len),
            Ipv4Addr::from(u32::from(network) + 1)
        ));
    }
    let range = guest_range(gateway, config.prefix_len);
    if range.start() > range.end() {
        return bad(format!(
            "gateway {gateway} leaves no guest address after it in {} (guests get the addresses after the gateway)",
            subnet_cidr(gateway, config.prefix_len)
        ));
    }
    Ok(())
}

/// The comment that marks our firewall rules for a bridge.
pub fn rule_tag(bridge: &str) -> String {
    format!("aetherium:{bridge}")
}

/// One firewall rule: table, chain and the match/target arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub table: &'static str,
    pub chain: &'static str,
    pub spec: Vec<String>,
}

/// The rules NAT needs: masquerade the guests' traffic leaving by another device,
/// and let it (and its replies) through FORWARD, whose policy may be DROP (Docker
/// sets that).
pub fn nat_rules(config: &HostNetworkConfig) -> Vec<Rule> {
    let subnet = subnet_cidr(config.gateway, config.prefix_len);
    let tag = rule_tag(&config.bridge);
    let br = config.bridge.as_str();
    let spec = |parts: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = parts.iter().map(|s| s.to_string()).collect();
        let target = v.split_off(v.len() - 2);
        v.extend(["-m", "comment", "--comment", &tag].map(String::from));
        v.extend(target);
        v
    };
    vec![
        Rule {
            table: "nat",
            chain: "POSTROUTING",
            spec: spec(&["-s", &subnet, "!", "-o", br, "-j", "MASQUERADE"]),
        },
        Rule {
            table: "filter",
            chain: "FORWARD",
            spec: spec(&["-i", br, "!", "-o", br, "-j", "ACCEPT"]),
        },
        Rule {
            table: "filter",
            chain: "FORWARD",
            spec: spec(&[
                "-o",
                br,
                "-m",
                "conntrack",
                "--ctstate",
                "RELATED,ESTABLISHED",
                "-j",
                "ACCEPT",
            ]),
        },
    ]
}

/// The `-D` argument lists that delete every rule of an `iptables -S <chain>`
/// listing that carries `tag` as its comment.
pub fn tagged_rule_deletions(listing: &str, tag: &str) -> Vec<Vec<String>> {
    rule_deletions(listing, |words| {
        words.windows(2).any(|w| w[0] == "--comment" && w[1] == tag)
    })
}

/// The `-D` argument lists that delete every rule of an `iptables -S <chain>`
/// listing for which `select` holds (given the rule's words, quotes removed).
pub fn rule_deletions(listing: &str, select: impl Fn(&[String]) -> bool) -> Vec<Vec<String>> {
    listing
        .lines()
        .filter_map(|line| {
            let words: Vec<String> = line
                .split_whitespace()
                .map(|w| w.trim_matches('"').to_string())
                .collect();
            (words.first().map(String::as_str) == Some("-A") && select(&words)).then(|| {
                let mut delete = words;
                delete[0] = "-D".into();
                delete
            })
        })
        .collect()
}

/// A device as `ip -j link show` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Link {
    pub ifname: String,
    #[serde(default)]
    pub ifalias: Option<String>,
    #[serde(default)]
    pub master: Option<String>,
    #[serde(default)]
    pub linkinfo: Option<LinkInfo>,
    #[serde(default)]
    pub addr_info: Vec<AddrInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LinkInfo {
    #[serde(default)]
    pub info_kind: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AddrInfo {
    #[serde(default)]
    pub family: Option<String>,
    pub local: Option<String>,
    pub prefixlen: Option<u8>,
}

impl Link {
    /// `-d` output: whether the device is a bridge.
    pub fn is_bridge(&self) -> bool {
        self.linkinfo.as_ref().and_then(|i| i.info_kind.as_deref()) == Some("bridge")
    }

    /// `addr` output: the device's IPv4 addresses.
    pub fn ipv4(&self) -> Vec<(Ipv4Addr, u8)> {
        self.addr_info
            .iter()
            .filter(|a| a.family.as_deref().is_none_or(|f| f == "inet"))
            .filter_map(|a| Some((a.local.as_deref()?.parse().ok()?, a.prefixlen?)))
            .collect()
    }
}

/// Parses what `ip -j link show …` / `ip -j addr show …` print (nothing at all
/// counts as no devices).
pub fn parse_links(json: &str) -> Result<Vec<Link>, NetError> {
    if json.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(json)
        .map_err(|e| NetError::Command(format!("cannot read `ip -j` output ({e}): {json}")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn config(gateway: [u8; 4], prefix_len: u8) -> HostNetworkConfig {
        HostNetworkConfig {
            bridge: "aetherium0".into(),
            gateway: Ipv4Addr::from(gateway),
            prefix_len,
            nat: true,
            isolated: true,
            egress_allow: Vec::new(),
            dns_upstream: Vec::new(),
        }
    }

    #[test]
    fn tap_names_fit_and_stay_unique() {
        let id = "1a2b3c4d-5e6f-4a0b-8c9d-0e1f2a3b4c5d";
        assert_eq!(tap_name(id), "aeth-1a2b3c4d5e");
        assert_eq!(tap_name(&id.to_uppercase()), "aeth-1a2b3c4d5e");
        for id in [
            "vm-1",
            "vm-2",
            "a/b c",
            "",
            "sandbox-000000000001",
            "sandbox-000000000002",
        ] {
            let name = tap_name(id);
            assert_eq!(name.len(), MAX_IFNAME, "{name}");
            assert!(valid_ifname(&name), "{name}");
            assert!(name.starts_with(TAP_PREFIX));
        }
        assert_ne!(
            tap_name("sandbox-000000000001"),
            tap_name("sandbox-000000000002")
        );
        assert_eq!(tap_name("vm-1"), tap_name("vm-1"));
    }

    #[test]
    fn macs_are_stable_local_and_differ() {
        let a = guest_mac("vm-a");
        assert_eq!(a, guest_mac("vm-a"));
        assert_ne!(a, guest_mac("vm-b"));
        assert!(a.starts_with("52:54:00:"));
        assert_eq!(a.len(), 17);
        assert!(a.split(':').all(|b| u8::from_str_radix(b, 16).is_ok()));
    }

    #[test]
    fn subnet_math() {
        let gw = Ipv4Addr::new(10, 1, 2, 1);
        assert_eq!(subnet_cidr(gw, 24), "10.1.2.0/24");
        assert_eq!(subnet_cidr(Ipv4Addr::new(10, 1, 2, 77), 29), "10.1.2.72/29");
        assert_eq!(
            guest_range(gw, 24),
            Ipv4Addr::new(10, 1, 2, 2)..=Ipv4Addr::new(10, 1, 2, 254)
        );
        assert_eq!(
            guest_range(Ipv4Addr::new(10, 9, 9, 1), 29),
            Ipv4Addr::new(10, 9, 9, 2)..=Ipv4Addr::new(10, 9, 9, 6)
        );
        assert_eq!(netmask(0), 0);
        assert_eq!(netmask(32), u32::MAX);
    }

    #[test]
    fn configurations_are_checked() {
        assert!(validate(&config([10, 0, 0, 1], 24)).is_ok());
        assert!(validate(&config([10, 0, 0, 1], 30)).is_ok());
        for bad in [
            config([10, 0, 0, 1], 31),
            config([10, 0, 0, 1], 0),
            config([10, 0, 0, 0], 24),
            config([10, 0, 0, 254], 24),
            config([10, 0, 0, 255], 24),
        ] {
            assert!(
                matches!(validate(&bad), Err(NetError::Config(_))),
                "{bad:?}"
            );
        }
        for name in ["", "a-name-far-too-long", "br 0", "br/0", "aeth-br"] {
            let mut c = config([10, 0, 0, 1], 24);
            c.bridge = name.into();
            assert!(validate(&c).is_err(), "{name:?}");
        }
    }

    #[test]
    fn nat_rules_carry_the_tag_and_deletions_find_only_ours() {
        let rules = nat_rules(&config([10, 3, 4, 1], 24));
        assert_eq!(
            rules[0].spec.join(" "),
            "-s 10.3.4.0/24 ! -o aetherium0 -m comment --comment aetherium:aetherium0 -j MASQUERADE"
        );
        assert!(
            rules
                .iter()
                .all(|r| r.spec.contains(&rule_tag("aetherium0")))
        );
        let listing = "-P POSTROUTING ACCEPT\n\
            -A POSTROUTING -s 10.3.4.0/24 ! -o aetherium0 -m comment --comment \"aetherium:aetherium0\" -j MASQUERADE\n\
            -A POSTROUTING -s 10.3.5.0/24 ! -o aetherium01 -m comment --comment \"aetherium:aetherium01\" -j MASQUERADE\n\
            -A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE\n";
        let deletions = tagged_rule_deletions(listing, "aetherium:aetherium0");
        assert_eq!(deletions.len(), 1);
        assert_eq!(
            deletions[0].join(" "),
            "-D POSTROUTING -s 10.3.4.0/24 ! -o aetherium0 -m comment --comment aetherium:aetherium0 -j MASQUERADE"
        );
    }

    #[test]
    fn ip_json_is_read() {
        let ports = parse_links(
            r#"[{"ifindex":7,"ifname":"aeth-1a2b3c4d5e","flags":["UP"],"master":"aebr1","ifalias":"vm 1"},
                {"ifindex":8,"ifname":"veth0","master":"aebr1"}]"#,
        )
        .unwrap();
        assert_eq!(ports[0].ifalias.as_deref(), Some("vm 1"));
        assert_eq!(ports[1].ifalias, None);
        assert_eq!(parse_links("").unwrap(), vec![]);
        let bridge = parse_links(
            r#"[{"ifname":"aebr1","linkinfo":{"info_kind":"bridge","info_data":{"stp_state":0}},
                 "addr_info":[{"family":"inet","local":"10.1.2.1","prefixlen":24,"scope":"global"}]}]"#,
        )
        .unwrap();
        assert!(bridge[0].is_bridge());
        assert_eq!(bridge[0].ipv4(), vec![(Ipv4Addr::new(10, 1, 2, 1), 24)]);
        assert!(parse_links("not json").is_err());
    }
}
