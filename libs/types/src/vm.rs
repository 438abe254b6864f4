use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Lifecycle of a sandbox. Names and spelling follow the Go original.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "UPPERCASE")]
pub enum VmStatus {
    Created,
    Starting,
    Running,
    /// vCPUs frozen (microVMs, containers); memory kept. Resume makes it RUNNING.
    Paused,
    Stopping,
    Stopped,
    Failed,
}

impl VmStatus {
    pub const ALL: [VmStatus; 7] = [
        VmStatus::Created,
        VmStatus::Starting,
        VmStatus::Running,
        VmStatus::Paused,
        VmStatus::Stopping,
        VmStatus::Stopped,
        VmStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            VmStatus::Created => "CREATED",
            VmStatus::Starting => "STARTING",
            VmStatus::Running => "RUNNING",
            VmStatus::Paused => "PAUSED",
            VmStatus::Stopping => "STOPPING",
            VmStatus::Stopped => "STOPPED",
            VmStatus::Failed => "FAILED",
        }
    }

    /// A VM in one of these states will not change again without a new request.
    pub fn is_settled(self) -> bool {
        matches!(
            self,
            VmStatus::Running | VmStatus::Paused | VmStatus::Stopped | VmStatus::Failed
        )
    }
}

wire_names!(VmStatus, "VM status");

/// Which backend runs a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Orchestrator {
    Docker,
    Firecracker,
    Qemu,
}

impl Orchestrator {
    pub const ALL: [Orchestrator; 3] = [
        Orchestrator::Docker,
        Orchestrator::Firecracker,
        Orchestrator::Qemu,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Orchestrator::Docker => "docker",
            Orchestrator::Firecracker => "firecracker",
            Orchestrator::Qemu => "qemu",
        }
    }
}

wire_names!(Orchestrator, "orchestrator");

/// A microVM's network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum VmNetwork {
    /// A TAP device on the host bridge; egress through NAT.
    Nat,
    /// No network device.
    None,
}

/// What a container reaches by default besides its `allow` list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Egress {
    /// The outside world, except `deny`.
    #[default]
    Allow,
    /// Only `allow`.
    Deny,
}

/// A sandbox's outbound traffic, on top of what its isolated network always refuses
/// (other sandboxes, the host, private, link-local and multicast ranges, unless the
/// operator's `vmm.docker.egress_allow` / `network.egress_allow` opens them):
/// nothing here can open those. Entries are IPv4 addresses, CIDRs or domain names
/// (`example.com`: that name; `*.example.com`: every name under it). Names are
/// enforced by the sandbox's resolver, which every DNS query of the sandbox goes
/// to: a denied name, and under `egress: deny` a name not allowed, does not
/// resolve; an allowed name's addresses are opened as it resolves them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NetworkPolicy {
    #[serde(default)]
    pub egress: Egress,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "openapi", schema(max_items = 64))]
    pub allow: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "openapi", schema(max_items = 64))]
    pub deny: Vec<String>,
}

/// What an entry of a [`NetworkPolicy`] list looks like: an IPv4 address in
/// dotted-quad form (no leading zeros) with an optional prefix length 0 to 32, or a
/// domain name, optionally `*.`-prefixed (labels of letters, digits and inner
/// hyphens, at most 63 characters; the last label starts with a letter; at most
/// [`MAX_NAME_LEN`] characters in all).
pub const ENTRY_PATTERN: &str = r"^(?:(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3}(/(3[0-2]|[12]?[0-9]))?|(\*\.)?([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)*[a-zA-Z]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)$";

/// Most characters a name entry may have (a DNS name's limit).
pub const MAX_NAME_LEN: usize = 253;

/// Most entries one list of a [`NetworkPolicy`] may have.
pub const MAX_POLICY_ENTRIES: usize = 64;

/// What a sandbox's resolver does with a name under a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameVerdict {
    /// Answered "no such name".
    Refused,
    /// Resolved; `open`: the addresses it resolves to are opened for the sandbox
    /// (an `allow` entry names it).
    Resolved { open: bool },
}

impl NetworkPolicy {
    /// Checks every entry and writes each in the form the firewall and the resolver
    /// get: addresses as CIDRs (`1.2.3.4` → `1.2.3.4/32`, host bits cleared), names
    /// in lower case.
    pub fn normalized(&self) -> Result<NetworkPolicy, String> {
        let list = |name: &str, entries: &[String]| -> Result<Vec<String>, String> {
            if entries.len() > MAX_POLICY_ENTRIES {
                return Err(format!(
                    "network_policy.{name} has {} entries; at most {MAX_POLICY_ENTRIES}",
                    entries.len()
                ));
            }
            entries
                .iter()
                .map(|entry| {
                    normalize_cidr(entry)
                        .or_else(|| normalize_name(entry))
                        .ok_or_else(|| {
                            format!(
                                "network_policy.{name}: {entry:?} is neither an IPv4 address or CIDR nor a domain name (e.g. 203.0.113.7, 203.0.113.0/24, example.com or *.example.com)"
                            )
                        })
                })
                .collect()
        };
        Ok(NetworkPolicy {
            egress: self.egress,
            allow: list("allow", &self.allow)?,
            deny: list("deny", &self.deny)?,
        })
    }

    /// Whether any entry is a domain name.
    pub fn has_names(&self) -> bool {
        self.allow.iter().chain(&self.deny).any(|e| is_name(e))
    }

    /// The policy's addresses alone (of a normalized policy), with `opened` (the
    /// addresses its allowed names resolved to) allowed too: what the firewall gets.
    pub fn addresses_with(
        &self,
        opened: impl IntoIterator<Item = std::net::Ipv4Addr>,
    ) -> NetworkPolicy {
        let cidrs = |list: &[String]| -> Vec<String> {
            list.iter().filter(|e| !is_name(e)).cloned().collect()
        };
        let mut allow = cidrs(&self.allow);
        allow.extend(opened.into_iter().map(|ip| format!("{ip}/32")));
        NetworkPolicy {
            egress: self.egress,
            allow,
            deny: cidrs(&self.deny),
        }
    }

    /// What the resolver does with `name` (any case, with or without the final
    /// dot): a denied name is refused, an allowed one resolved and opened, any other
    /// resolved only under `egress: allow`.
    pub fn name_verdict(&self, name: &str) -> NameVerdict {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let listed = |list: &[String]| list.iter().any(|entry| name_matches(entry, &name));
        if listed(&self.deny) {
            NameVerdict::Refused
        } else if listed(&self.allow) {
            NameVerdict::Resolved { open: true }
        } else if self.egress == Egress::Allow {
            NameVerdict::Resolved { open: false }
        } else {
            NameVerdict::Refused
        }
    }
}

/// Whether a (normalized) entry is a name rather than an address.
fn is_name(entry: &str) -> bool {
    entry.bytes().any(|b| b.is_ascii_alphabetic() || b == b'*')
}

/// `example.com` matches that name; `*.example.com` every name below it.
fn name_matches(entry: &str, name: &str) -> bool {
    match entry.strip_prefix("*.") {
        Some(parent) => name
            .strip_suffix(parent)
            .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        None => is_name(entry) && entry == name,
    }
}

/// A name entry in lower case, if `entry` is one (see [`ENTRY_PATTERN`]).
fn normalize_name(entry: &str) -> Option<String> {
    if entry.len() > MAX_NAME_LEN {
        return None;
    }
    let labels: Vec<&str> = entry
        .strip_prefix("*.")
        .unwrap_or(entry)
        .split('.')
        .collect();
    let label_ok = |label: &str| {
        let bytes = label.as_bytes();
        (1..=63).contains(&bytes.len())
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
            && bytes[0] != b'-'
            && bytes[bytes.len() - 1] != b'-'
    };
    let last = labels.last()?;
    (labels.iter().all(|l| label_ok(l)) && last.as_bytes()[0].is_ascii_alphabetic())
        .then(|| entry.to_ascii_lowercase())
}

fn normalize_cidr(entry: &str) -> Option<String> {
    let (address, prefix) = match entry.split_once('/') {
        Some((address, prefix)) => (address, prefix.parse::<u8>().ok().filter(|p| *p <= 32)?),
        None => (entry, 32),
    };
    // Only the dotted-quad form: Ipv4Addr's parser refuses leading zeros and the
    // like, which iptables would read differently.
    let address: std::net::Ipv4Addr = address.parse().ok()?;
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    let network = std::net::Ipv4Addr::from(u32::from(address) & mask);
    Some(format!("{network}/{prefix}"))
}

/// A sandbox, as stored and as returned by the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Vm {
    pub id: String,
    pub name: String,
    pub status: VmStatus,
    pub orchestrator: Orchestrator,
    pub image: String,
    pub vcpu_count: u32,
    pub memory_mb: u64,
    /// The container's disk quota in MiB (`None`: not limited, as for microVMs,
    /// whose disk is their image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mb: Option<u64>,
    /// What the sandbox may reach (containers on the isolated network, microVMs on
    /// an isolated bridge; `None`: the network's defaults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy: Option<NetworkPolicy>,
    /// Where it may run, as its create asked (a VM whose worker died before making
    /// it is placed again under it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<crate::Placement>,
    /// The id of the API key or user that created it (counts against a key's quota).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rootfs_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_path: Option<String>,
    /// The worker that owns this VM; VM-bound work is routed to it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
    /// Why the VM is FAILED (or how it stopped), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<DateTime<Utc>>,
    /// When the platform deletes it (its time to live ran out), if ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_policies_are_checked_and_written_as_cidrs() {
        let policy = NetworkPolicy {
            egress: Egress::Deny,
            allow: vec!["203.0.113.7".into(), "198.51.100.77/24".into()],
            deny: vec!["0.0.0.0/0".into()],
        };
        assert_eq!(
            policy.normalized().unwrap(),
            NetworkPolicy {
                egress: Egress::Deny,
                allow: vec!["203.0.113.7/32".into(), "198.51.100.0/24".into()],
                deny: vec!["0.0.0.0/0".into()],
            }
        );
        for bad in [
            "1.2.3.4/33",
            "exa_mple.com",
            "-example.com",
            "example.com.",
            "*example.com",
            "a.*.example.com",
            "example.123",
            "01.2.3.4",
            "1.2.3",
            "::1",
            "1.2.3.4/",
            "-j ACCEPT",
        ] {
            let policy = NetworkPolicy {
                deny: vec![bad.into()],
                ..Default::default()
            };
            let e = policy.normalized().expect_err(bad);
            assert!(e.contains("network_policy.deny"), "{e}");
        }
        let long = NetworkPolicy {
            allow: vec!["10.0.0.1".into(); MAX_POLICY_ENTRIES + 1],
            ..Default::default()
        };
        assert!(long.normalized().unwrap_err().contains("at most 64"));
        let too_long = format!("{}.com", "a.".repeat(125));
        assert!(too_long.len() > MAX_NAME_LEN);
        let policy = NetworkPolicy {
            allow: vec![too_long],
            ..Default::default()
        };
        assert!(policy.normalized().is_err());
        let parsed: NetworkPolicy = serde_json::from_str(r#"{"egress":"deny"}"#).unwrap();
        assert_eq!(parsed.egress, Egress::Deny);
        assert!(serde_json::from_str::<NetworkPolicy>(r#"{"egress":"block"}"#).is_err());
        assert!(serde_json::from_str::<NetworkPolicy>(r#"{"allowed":[]}"#).is_err());
    }

    #[test]
    fn names_are_kept_in_lower_case_and_judged_by_the_resolver() {
        let policy = NetworkPolicy {
            egress: Egress::Deny,
            allow: vec![
                "Example.COM".into(),
                "*.pkg.dev".into(),
                "203.0.113.7".into(),
            ],
            deny: vec!["*.bad.pkg.dev".into(), "localhost".into()],
        }
        .normalized()
        .unwrap();
        assert_eq!(policy.allow, ["example.com", "*.pkg.dev", "203.0.113.7/32"]);
        assert!(policy.has_names());
        let open = NameVerdict::Resolved { open: true };
        assert_eq!(policy.name_verdict("example.com."), open);
        assert_eq!(policy.name_verdict("EXAMPLE.com"), open);
        // An exact name covers no name below it; a wildcard no name above it.
        assert_eq!(policy.name_verdict("www.example.com"), NameVerdict::Refused);
        assert_eq!(policy.name_verdict("a.b.pkg.dev"), open);
        assert_eq!(policy.name_verdict("pkg.dev"), NameVerdict::Refused);
        assert_eq!(policy.name_verdict("xpkg.dev"), NameVerdict::Refused);
        // deny wins over allow.
        assert_eq!(policy.name_verdict("x.bad.pkg.dev"), NameVerdict::Refused);
        assert_eq!(policy.name_verdict("localhost"), NameVerdict::Refused);
        let open_world = NetworkPolicy {
            deny: vec!["*.bad.test".into()],
            ..Default::default()
        };
        assert_eq!(
            open_world.name_verdict("good.test"),
            NameVerdict::Resolved { open: false }
        );
        assert_eq!(open_world.name_verdict("a.bad.test"), NameVerdict::Refused);
        // The firewall gets the addresses, and what the names opened.
        assert_eq!(
            policy.addresses_with(["198.18.0.9".parse().unwrap()]),
            NetworkPolicy {
                egress: Egress::Deny,
                allow: vec!["203.0.113.7/32".into(), "198.18.0.9/32".into()],
                deny: vec![],
            }
        );
        assert!(!NetworkPolicy::default().has_names());
    }
}
