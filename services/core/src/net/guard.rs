//! The firewall of the isolated container network (`vmm.docker.network_mode:
//! isolated`): sandboxes reach the outside world, and nothing of ours.
//!
//! Docker keeps sandboxes on that bridge apart itself (`enable_icc=false`). These
//! rules add, for every packet that comes in from the bridge:
//! - `INPUT`: the host's own services (any of its addresses) are refused, replies to
//!   connections the host opened excepted;
//! - `DOCKER-USER` (Docker's hook in `FORWARD`, before its own rules): private,
//!   shared, link-local (cloud metadata) and multicast destinations are refused —
//!   other hosts of the LAN, other Docker networks, the microVM bridge.
//!
//! Per sandbox, an operator's `egress_allow` CIDRs are opened above those refusals
//! for its address only, tagged with its VM id so that they leave with it. Above
//! them, a sandbox with a network policy jumps to a chain of its own
//! (`aeth-vm-…`): its `deny` entries are refused, its `allow` entries return to the
//! rules below (so they never open what the network refuses), and with `egress:
//! deny` everything else is refused.

use std::net::Ipv4Addr;

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
pub fn bridge_rules(bridge: &str) -> Vec<Rule> {
    let tag = tag_of_bridge(bridge);
    let established = ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED"];
    let mut rules = vec![
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
            DOCKER_USER,
            &[&["-i", bridge][..], &established].concat(),
            &tag,
            &["-j", "RETURN"],
        ),
    ];
    for range in DENIED_RANGES {
        rules.push(rule(
            DOCKER_USER,
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

/// One sandbox's rules: the jump to its policy chain (with a policy), then each
/// CIDR the operator allows, from its address, to the host and through the
/// forward chain.
pub fn sandbox_rules(
    bridge: &str,
    vm_id: &str,
    ip: Ipv4Addr,
    allow: &[String],
    policy: Option<&NetworkPolicy>,
) -> Vec<Rule> {
    let tag = tag_of_sandbox(vm_id);
    let source = format!("{ip}/32");
    let from_sandbox = ["-i", bridge, "-s", source.as_str()];
    let mut rules = Vec::new();
    if policy.is_some() {
        let chain = policy_chain(vm_id);
        rules.push(rule(DOCKER_USER, &from_sandbox, &tag, &["-j", &chain]));
    }
    rules.extend(allow.iter().flat_map(|cidr| {
        let parts = [&from_sandbox[..], &["-d", cidr.as_str()]].concat();
        [
            rule("INPUT", &parts, &tag, &["-j", "ACCEPT"]),
            rule(DOCKER_USER, &parts, &tag, &["-j", "RETURN"]),
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
/// sharing the bridge ensures the same rules).
pub async fn guard_bridge(bridge: &str) -> Result<(), NetError> {
    let rules = bridge_rules(bridge);
    let mut complete = true;
    for rule in &rules {
        complete &= firewall::has_rule(rule).await?;
    }
    if complete {
        return Ok(());
    }
    // Some are missing: lay them all anew, in order, in one transaction, so that
    // no packet ever passes a chain without them (other processes may be
    // starting sandboxes on this bridge right now).
    firewall::relay_tagged(&["INPUT", DOCKER_USER], &tag_of_bridge(bridge), &rules).await
}

/// Gives a sandbox its address's rules: its policy (none is fine) and the
/// operator's allowed CIDRs (none is fine), in place of whatever rules that address
/// still had -- this sandbox's older policy, or a dead sandbox's rules (one removed
/// outside the platform, or whose worker died: Docker hands an address to one live
/// container at a time), which must not pass to this one. One transaction: nothing
/// sees the address half-configured.
pub async fn open_for_sandbox(
    bridge: &str,
    vm_id: &str,
    ip: Ipv4Addr,
    allow: &[String],
    policy: Option<&NetworkPolicy>,
) -> Result<(), NetError> {
    let source = format!("{ip}/32");
    let stale = |words: &[String]| {
        let of_a_sandbox = words
            .windows(2)
            .any(|w| w[0] == "--comment" && w[1].starts_with(SANDBOX_TAG_PREFIX));
        of_a_sandbox && words.windows(2).any(|w| w[0] == "-s" && w[1] == source)
    };
    // Declaring the chain makes it, or empties it for its new rules.
    let chain = policy.map(|policy| {
        let name = policy_chain(vm_id);
        let rules = policy_rules(&name, policy);
        (name, rules)
    });
    firewall::relay_with_chain(
        &["INPUT", DOCKER_USER],
        stale,
        &sandbox_rules(bridge, vm_id, ip, allow, policy),
        chain
            .as_ref()
            .map(|(name, rules)| (name.as_str(), rules.as_slice())),
    )
    .await
}

/// Removes whatever was opened for the sandbox and its policy chain (none is fine).
pub async fn close_for_sandbox(vm_id: &str) -> Result<(), NetError> {
    let tag = tag_of_sandbox(vm_id);
    firewall::remove_tagged("filter", "INPUT", &tag).await?;
    firewall::remove_tagged("filter", DOCKER_USER, &tag).await?;
    firewall::remove_chain(&policy_chain(vm_id)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_pass_before_refusals_and_openings_name_their_sandbox() {
        let rules = bridge_rules("aeth-isolated");
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
            "aeth-isolated",
            "vm-1",
            Ipv4Addr::new(172, 30, 0, 5),
            &["172.17.0.1/32".into()],
            None,
        );
        assert_eq!(open.len(), 2);
        assert_eq!(
            open[1].spec.join(" "),
            "-i aeth-isolated -s 172.30.0.5/32 -d 172.17.0.1/32 -m comment --comment aetherium-vm:vm-1 -j RETURN"
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
            "aeth-isolated",
            vm_id,
            Ipv4Addr::new(172, 30, 0, 5),
            &["172.17.0.1/32".into()],
            Some(&policy),
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
}
