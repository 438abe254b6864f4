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
/// nothing here can open those. Entries are IPv4 addresses or CIDRs. Containers:
/// DNS keeps working (the engine answers it).
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
/// dotted-quad form (no leading zeros), with an optional prefix length 0 to 32.
pub const CIDR_PATTERN: &str = r"^(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3}(/(3[0-2]|[12]?[0-9]))?$";

/// Most entries one list of a [`NetworkPolicy`] may have.
pub const MAX_POLICY_ENTRIES: usize = 64;

impl NetworkPolicy {
    /// Checks every entry and writes each as a CIDR (`1.2.3.4` → `1.2.3.4/32`,
    /// host bits cleared), the form the firewall gets.
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
                    normalize_cidr(entry).ok_or_else(|| {
                        format!(
                            "network_policy.{name}: {entry:?} is not an IPv4 address or CIDR (e.g. 203.0.113.7 or 203.0.113.0/24); domain names are not supported yet"
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
            "example.com",
            "1.2.3.4/33",
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
        let parsed: NetworkPolicy = serde_json::from_str(r#"{"egress":"deny"}"#).unwrap();
        assert_eq!(parsed.egress, Egress::Deny);
        assert!(serde_json::from_str::<NetworkPolicy>(r#"{"egress":"block"}"#).is_err());
        assert!(serde_json::from_str::<NetworkPolicy>(r#"{"allowed":[]}"#).is_err());
    }
}
