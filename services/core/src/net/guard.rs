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
//! for its address only, tagged with its VM id so that they leave with it.

use std::net::Ipv4Addr;

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

/// One sandbox's openings: each allowed CIDR from its address, to the host and
/// through the forward chain.
pub fn sandbox_rules(bridge: &str, vm_id: &str, ip: Ipv4Addr, allow: &[String]) -> Vec<Rule> {
    let tag = tag_of_sandbox(vm_id);
    let source = format!("{ip}/32");
    allow
        .iter()
        .flat_map(|cidr| {
            let parts = ["-i", bridge, "-s", source.as_str(), "-d", cidr.as_str()];
            [
                rule("INPUT", &parts, &tag, &["-j", "ACCEPT"]),
                rule(DOCKER_USER, &parts, &tag, &["-j", "RETURN"]),
            ]
        })
        .collect()
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

/// Gives a new sandbox its address's openings: the operator's allowed CIDRs (none
/// is fine), in place of whatever rules that address still had. Docker hands an
/// address to one live container at a time, so such rules are a dead sandbox's (one
/// removed outside the platform, or whose worker died) and must not pass to this
/// one. One transaction: nothing sees the address half-configured.
pub async fn open_for_sandbox(
    bridge: &str,
    vm_id: &str,
    ip: Ipv4Addr,
    allow: &[String],
) -> Result<(), NetError> {
    let source = format!("{ip}/32");
    let stale = |words: &[String]| {
        let of_a_sandbox = words
            .windows(2)
            .any(|w| w[0] == "--comment" && w[1].starts_with(SANDBOX_TAG_PREFIX));
        of_a_sandbox && words.windows(2).any(|w| w[0] == "-s" && w[1] == source)
    };
    firewall::relay(
        &["INPUT", DOCKER_USER],
        stale,
        &sandbox_rules(bridge, vm_id, ip, allow),
    )
    .await
}

/// Removes whatever was opened for the sandbox (none is fine).
pub async fn close_for_sandbox(vm_id: &str) -> Result<(), NetError> {
    let tag = tag_of_sandbox(vm_id);
    firewall::remove_tagged("filter", "INPUT", &tag).await?;
    firewall::remove_tagged("filter", DOCKER_USER, &tag).await
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
        );
        assert_eq!(open.len(), 2);
        assert_eq!(
            open[1].spec.join(" "),
            "-i aeth-isolated -s 172.30.0.5/32 -d 172.17.0.1/32 -m comment --comment aetherium-vm:vm-1 -j RETURN"
        );
    }
}
