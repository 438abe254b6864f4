//! The firewall of a sandbox bridge: Docker's isolated container network
//! (`vmm.docker.network_mode: isolated`) and the microVM bridge (`network.isolated`).
//! Sandboxes reach the outside world, and nothing of ours.
//!
//! On Docker's bridge Docker keeps sandboxes apart itself (`enable_icc=false`); on
//! the microVM bridge every TAP device is an isolated bridge port, which reaches the
//! host but no other port. These rules add, for every packet that comes in from
//! the bridge (a [`Fence`]):
//! - `INPUT`: the host's own services (any of its addresses) are refused, replies to
//!   connections the host opened excepted;
//! - the fence's forward chain (Docker's `DOCKER-USER`, its hook in `FORWARD`, or
//!   ours, `AETHERIUM-FWD`, jumped to first from `FORWARD` for the microVM bridge):
//!   private, shared, link-local (cloud metadata) and multicast destinations are
//!   refused — other hosts of the LAN, other Docker networks, the other bridge.
//!
//! Per sandbox, an operator's `egress_allow` CIDRs are opened above those refusals
//! for its address only, tagged with its VM id so that they leave with it. Above
//! them, a sandbox with a network policy jumps to a chain of its own
//! (`aeth-vm-…`): its `deny` entries are refused, its `allow` entries return to the
//! rules below (so they never open what the network refuses), and with `egress:
//! deny` everything else is refused. Every DNS query a sandbox sends (port 53, to
//! any server) is redirected to its bridge's resolver ([`super::dns`]), which the
//! sandbox may reach on the host.

use std::net::{Ipv4Addr, SocketAddrV4};

use aetherium_types::{Egress, NetworkPolicy};

use super::NetError;
use super::firewall;
use super::plan::Rule;

/// Destinations no isolated sandbox reaches unless allowed.
pub const DENIED_RANGES: [&str; 7] = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "127.0.0.0/8",
    "224.0.0.0/4",
];

/// Docker's chain for rules of its users, evaluated first in `FORWARD`.
const DOCKER_USER: &str = "DOCKER-USER";

/// Our chain for the microVM bridge's forwarded packets, jumped to first from
/// `FORWARD`; it ends by returning there (to the NAT rules' ACCEPT).
pub const MICROVM_FORWARD: &str = "AETHERIUM-FWD";

/// A sandbox bridge and the chain its forwarded packets pass first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence<'a> {
    pub bridge: &'a str,
    pub forward: &'static str,
}

impl<'a> Fence<'a> {
    /// Docker's isolated network: its bridge and `DOCKER-USER`.
    pub fn docker(bridge: &'a str) -> Fence<'a> {
        Fence {
            bridge,
            forward: DOCKER_USER,
        }
    }

    /// The microVM bridge: `AETHERIUM-FWD`.
    pub fn microvm(bridge: &'a str) -> Fence<'a> {
        Fence {
            bridge,
            forward: MICROVM_FORWARD,
        }
    }

    /// The chains its rules live in.
    fn chains(&self) -> Vec<&'static str> {
        if self.forward == DOCKER_USER {
            vec!["INPUT", DOCKER_USER]
        } else {
            vec!["INPUT", self.forward, "FORWARD"]
        }
    }
}

fn tag_of_bridge(bridge: &str) -> String {
    format!("aetherium-guard:{bridge}")
}

const SANDBOX_TAG_PREFIX: &str = "aetherium-vm:";

fn tag_of_sandbox(vm_id: &str) -> String {
    format!("{SANDBOX_TAG_PREFIX}{vm_id}")
}

fn rule(chain: &'static str, parts: &[&str], tag: &str, target: &[&str]) -> Rule {
    let mut spec: Vec<String> = parts.iter().map(|s| s.to_string()).collect();
    spec.extend(["-m", "comment", "--comment", tag].map(String::from));
    spec.extend(target.iter().map(|s| s.to_string()));
    Rule {
        table: "filter",
        chain,
        spec,
    }
}

/// The bridge's rules, in the order the kernel must see them.
pub fn bridge_rules(fence: Fence<'_>) -> Vec<Rule> {
    let Fence { bridge, forward } = fence;
    let tag = tag_of_bridge(bridge);
    let established = ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED"];
    let mut rules = Vec::new();
    if forward != DOCKER_USER {
        rules.push(rule("FORWARD", &["-i", bridge], &tag, &["-j", forward]));
    }
    rules.extend([
        rule(
            "INPUT",
            &[&["-i", bridge][..], &established].concat(),
            &tag,
            &["-j", "ACCEPT"],
        ),
        rule(
            "INPUT",
            &["-i", bridge],
            &tag,
            &["-j", "REJECT", "--reject-with", "icmp-admin-prohibited"],
        ),
        rule(
            forward,
            &[&["-i", bridge][..], &established].concat(),
            &tag,
            &["-j", "RETURN"],
        ),
    ]);
    for range in DENIED_RANGES {
        rules.push(rule(
            forward,
            &["-i", bridge, "-d", range],
            &tag,
            &["-j", "REJECT", "--reject-with", "icmp-admin-prohibited"],
        ));
    }
    rules
}

/// The chain of a sandbox's network policy (at most 28 characters, as iptables
/// wants: 16 hex digits of the VM id).
pub fn policy_chain(vm_id: &str) -> String {
    let digits: String = vm_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(16)
        .collect();
    format!("aeth-vm-{digits}")
}

/// One sandbox's rules: its DNS redirected to `dns` (the bridge's resolver) and
/// let in there, the jump to its policy chain (with a policy), then each CIDR the
/// operator allows, from its address, to the host and through the forward chain.
pub fn sandbox_rules(
    fence: Fence<'_>,
    vm_id: &str,
    ip: Ipv4Addr,
    allow: &[String],
    policy: Option<&NetworkPolicy>,
    dns: Option<SocketAddrV4>,
) -> Vec<Rule> {
    let tag = tag_of_sandbox(vm_id);
    let source = format!("{ip}/32");
    let from_sandbox = ["-i", fence.bridge, "-s", source.as_str()];
    let mut rules = Vec::new();
    if let Some(dns) = dns {
        let (resolver, port, to) = (
            format!("{}/32", dns.ip()),
            dns.port().to_string(),
            dns.to_string(),
        );
        for protocol in ["udp", "tcp"] {
            let mut redirect = rule(
                "PREROUTING",
                &[&from_sandbox[..], &["-p", protocol, "--dport", "53"]].concat(),
                &tag,
                &["-j", "DNAT", "--to-destination", &to],
            );
            redirect.table = "nat";
            rules.push(redirect);
            rules.push(rule(
                "INPUT",
                &[
                    &from_sandbox[..],
                    &["-d", &resolver, "-p", protocol, "--dport", &port],
                ]
                .concat(),
                &tag,
                &["-j", "ACCEPT"],
            ));
        }
    }
    if policy.is_some() {
        let chain = policy_chain(vm_id);
        rules.push(rule(fence.forward, &from_sandbox, &tag, &["-j", &chain]));
    }
    rules.extend(allow.iter().flat_map(|cidr| {
        let parts = [&from_sandbox[..], &["-d", cidr.as_str()]].concat();
        [
            rule("INPUT", &parts, &tag, &["-j", "ACCEPT"]),
            rule(fence.forward, &parts, &tag, &["-j", "RETURN"]),
        ]
    }));
    rules
}

/// The rules of a sandbox's policy chain, in order (entries are CIDRs already).
pub fn policy_rules(chain: &str, policy: &NetworkPolicy) -> Vec<String> {
    let reject = "-j REJECT --reject-with icmp-admin-prohibited";
    let mut rules: Vec<String> = policy
        .deny
        .iter()
        .map(|cidr| format!("-A {chain} -d {cidr} {reject}"))
        .collect();
    rules.extend(
        policy
            .allow
            .iter()
            .map(|cidr| format!("-A {chain} -d {cidr} -j RETURN")),
    );
    if policy.egress == Egress::Deny {
        rules.push(format!("-A {chain} {reject}"));
    }
    rules
}

/// Makes sure the bridge's refusals are in place (idempotent; another installation
/// sharing the bridge ensures the same rules). `relay` lays them anew even when all
/// are there: after rules were inserted above them (NAT's ACCEPT).
pub async fn guard_bridge(fence: Fence<'_>, relay: bool) -> Result<(), NetError> {
    if fence.forward != DOCKER_USER {
        firewall::ensure_chain(fence.forward).await?;
    }
    let rules = bridge_rules(fence);
    if !relay && firewall::has_rules(&rules).await? {
        return Ok(());
    }
    // Some are missing: lay them all anew, in order, in one transaction, so that
    // no packet ever passes a chain without them (other processes may be
    // starting sandboxes on this bridge right now).
    firewall::relay_tagged(&fence.chains(), &tag_of_bridge(fence.bridge), &rules).await
}

/// Removes the bridge's refusals (with its sandboxes' rules gone first).
pub async fn unguard_bridge(fence: Fence<'_>) -> Result<(), NetError> {
    let tag = tag_of_bridge(fence.bridge);
    for chain in fence.chains() {
        firewall::remove_tagged("filter", chain, &tag).await?;
    }
    Ok(())
}

/// Gives a sandbox its address's rules: its policy (none is fine; addresses only),
/// the operator's allowed CIDRs (none is fine) and its DNS redirected to `dns`, in
/// place of whatever rules that address
/// still had on this bridge -- this sandbox's older policy, or a dead sandbox's
/// rules (one removed outside the platform, or whose worker died: an address goes
/// to one live sandbox at a time), which must not pass to this one. One
/// transaction: nothing sees the address half-configured.
pub async fn open_for_sandbox(
    fence: Fence<'_>,
    vm_id: &str,
    ip: Ipv4Addr,
    allow: &[String],
    policy: Option<&NetworkPolicy>,
    dns: Option<SocketAddrV4>,
) -> Result<(), NetError> {
    let source = format!("{ip}/32");
    let stale = |words: &[String]| {
        let of_a_sandbox = words
            .windows(2)
            .any(|w| w[0] == "--comment" && w[1].starts_with(SANDBOX_TAG_PREFIX));
        let on_this_bridge = words
            .windows(2)
            .any(|w| w[0] == "-i" && w[1] == fence.bridge);
        of_a_sandbox && on_this_bridge && words.windows(2).any(|w| w[0] == "-s" && w[1] == source)
    };
    // Declaring the chain makes it, or empties it for its new rules.
    let chain = policy.map(|policy| {
        let name = policy_chain(vm_id);
        let rules = policy_rules(&name, policy);
        (name, rules)
    });
    firewall::relay_with_chain(
        &[
            ("filter", "INPUT"),
            ("filter", fence.forward),
            ("nat", "PREROUTING"),
        ],
        stale,
        &sandbox_rules(fence, vm_id, ip, allow, policy, dns),
        chain
            .as_ref()
            .map(|(name, rules)| (name.as_str(), rules.as_slice())),
    )
    .await
}

/// Removes whatever was opened for the sandbox and its policy chain (none is fine).
pub async fn close_for_sandbox(fence: Fence<'_>, vm_id: &str) -> Result<(), NetError> {
    let tag = tag_of_sandbox(vm_id);
    firewall::remove_tagged("filter", "INPUT", &tag).await?;
    firewall::remove_tagged("filter", fence.forward, &tag).await?;
    firewall::remove_tagged("nat", "PREROUTING", &tag).await?;
    firewall::remove_chain(&policy_chain(vm_id)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_pass_before_refusals_and_openings_name_their_sandbox() {
        let rules = bridge_rules(Fence::docker("aeth-isolated"));
        assert_eq!(rules[0].chain, "INPUT");
        assert!(rules[0].spec.join(" ").contains(
            "ESTABLISHED,RELATED -m comment --comment aetherium-guard:aeth-isolated -j ACCEPT"
        ));
        assert!(
            rules[1]
                .spec
                .join(" ")
                .ends_with("-j REJECT --reject-with icmp-admin-prohibited")
        );
        assert!(rules[2].spec.join(" ").ends_with("-j RETURN"));
        let refused: Vec<String> = rules[3..].iter().map(|r| r.spec[3].clone()).collect();
        assert_eq!(refused, DENIED_RANGES.map(String::from).to_vec());
        let open = sandbox_rules(
            Fence::docker("aeth-isolated"),
            "vm-1",
            Ipv4Addr::new(172, 30, 0, 5),
            &["172.17.0.1/32".into()],
            None,
            None,
        );
        assert_eq!(open.len(), 2);
        assert_eq!(
            open[1].spec.join(" "),
            "-i aeth-isolated -s 172.30.0.5/32 -d 172.17.0.1/32 -m comment --comment aetherium-vm:vm-1 -j RETURN"
        );
    }

    #[test]
    fn the_microvm_bridge_jumps_to_a_chain_of_ours_first() {
        let fence = Fence::microvm("aetherium0");
        let rules = bridge_rules(fence);
        assert_eq!(rules[0].chain, "FORWARD");
        assert_eq!(
            rules[0].spec.join(" "),
            "-i aetherium0 -m comment --comment aetherium-guard:aetherium0 -j AETHERIUM-FWD"
        );
        assert!(rules[1..].iter().all(|r| r.chain != "FORWARD"));
        assert!(
            rules
                .iter()
                .filter(|r| r.spec.iter().any(|w| w == "REJECT"))
                .all(|r| r.chain == "INPUT" || r.chain == MICROVM_FORWARD)
        );
        assert_eq!(fence.chains(), ["INPUT", MICROVM_FORWARD, "FORWARD"]);
        let open = sandbox_rules(
            fence,
            "vm-2",
            Ipv4Addr::new(172, 16, 0, 9),
            &[],
            Some(&NetworkPolicy::default()),
            None,
        );
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].chain, MICROVM_FORWARD);
        assert!(
            open[0]
                .spec
                .join(" ")
                .starts_with("-i aetherium0 -s 172.16.0.9/32 ")
        );
    }

    #[test]
    fn a_policy_filters_above_the_operators_openings_and_never_opens_more() {
        let policy = NetworkPolicy {
            egress: Egress::Deny,
            allow: vec!["198.18.0.0/24".into()],
            deny: vec!["198.18.0.7/32".into()],
        };
        let vm_id = "0b3c9a52-7d1e-4f60-9a1b-2c3d4e5f6a7b";
        let chain = policy_chain(vm_id);
        assert_eq!(chain, "aeth-vm-0b3c9a527d1e4f60");
        assert!(chain.len() <= 28);
        let rules = sandbox_rules(
            Fence::docker("aeth-isolated"),
            vm_id,
            Ipv4Addr::new(172, 30, 0, 5),
            &["172.17.0.1/32".into()],
            Some(&policy),
            None,
        );
        // The jump comes first, so a policy's refusals hold for the operator's
        // openings too.
        assert_eq!(
            rules[0].spec.join(" "),
            format!(
                "-i aeth-isolated -s 172.30.0.5/32 -m comment --comment aetherium-vm:{vm_id} -j {chain}"
            )
        );
        assert_eq!(rules.len(), 3);
        // deny before allow; allow returns to the bridge's refusals; then the rest.
        assert_eq!(
            policy_rules(&chain, &policy),
            vec![
                format!(
                    "-A {chain} -d 198.18.0.7/32 -j REJECT --reject-with icmp-admin-prohibited"
                ),
                format!("-A {chain} -d 198.18.0.0/24 -j RETURN"),
                format!("-A {chain} -j REJECT --reject-with icmp-admin-prohibited"),
            ]
        );
        let open = NetworkPolicy::default();
        assert!(policy_rules(&chain, &open).is_empty());
    }

    #[test]
    fn a_sandboxs_dns_goes_to_its_bridges_resolver_whatever_server_it_asks() {
        let resolver: SocketAddrV4 = "172.30.0.1:40053".parse().unwrap();
        let rules = sandbox_rules(
            Fence::docker("aeth-isolated"),
            "vm-3",
            Ipv4Addr::new(172, 30, 0, 7),
            &[],
            Some(&NetworkPolicy {
                egress: Egress::Deny,
                ..Default::default()
            }),
            Some(resolver),
        );
        let lines: Vec<String> = rules
            .iter()
            .map(|r| format!("{} {} {}", r.table, r.chain, r.spec.join(" ")))
            .collect();
        let tag = "-m comment --comment aetherium-vm:vm-3";
        for protocol in ["udp", "tcp"] {
            assert!(lines.contains(&format!(
                "nat PREROUTING -i aeth-isolated -s 172.30.0.7/32 -p {protocol} --dport 53 {tag} -j DNAT --to-destination 172.30.0.1:40053"
            )), "{lines:#?}");
            // Let in to the resolver alone (INPUT refuses the rest of the host).
            assert!(lines.contains(&format!(
                "filter INPUT -i aeth-isolated -s 172.30.0.7/32 -d 172.30.0.1/32 -p {protocol} --dport 40053 {tag} -j ACCEPT"
            )), "{lines:#?}");
        }
        assert_eq!(rules.len(), 5);
    }
}
