//! Host networking for microVMs: a bridge (`aetherium0`, the guests' gateway) with
//! NAT for egress, one TAP device per VM on it, guest addresses leased in the store
//! (never shared by two VMs, also across restarts) and a MAC derived from the VM id.
//!
//! Devices are made with `ip`, rules with `iptables` (on Debian 12 the nf_tables
//! backend); every rule carries the comment `aetherium:<bridge>`, every TAP device
//! is named `aeth-…` and has the VM id as its alias, so that what a crashed worker
//! left behind is found again ([`HostNetwork::reconcile`], [`HostNetwork::teardown`]).

mod cmd;
pub mod dns;
mod firewall;
pub mod guard;
mod links;
pub mod plan;

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::Arc;

use aetherium_types::NetworkPolicy;

use crate::error::CoreError;
use crate::store::IpLeases;

pub use plan::{TAP_PREFIX, guest_mac, tap_name};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostNetworkConfig {
    /// Bridge device name (at most 15 bytes).
    pub bridge: String,
    /// The bridge's (gateway's) address; guests get the addresses after it in its
    /// subnet (up to the one before the broadcast address).
    pub gateway: Ipv4Addr,
    pub prefix_len: u8,
    /// Masquerade the guests' traffic to the outside.
    pub nat: bool,
    /// Fence the guests in ([`guard`]): no other guest, none of the host's services,
    /// no private, link-local or multicast range; a network policy per guest.
    pub isolated: bool,
    /// CIDRs isolated guests may reach although private or the host's (checked).
    pub egress_allow: Vec<String>,
    /// The DNS servers guests' queries go to (isolated: through the bridge's
    /// resolver, which applies their policies; else guests ask the first IPv4 one).
    pub dns_upstream: Vec<SocketAddr>,
}

impl Default for HostNetworkConfig {
    /// `aetherium0` at 172.16.0.1/24 with NAT, isolated.
    fn default() -> Self {
        HostNetworkConfig {
            bridge: "aetherium0".into(),
            gateway: Ipv4Addr::new(172, 16, 0, 1),
            prefix_len: 24,
            nat: true,
            isolated: true,
            egress_allow: Vec::new(),
            dns_upstream: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("no free guest address left in {0}")]
    Exhausted(String),
    /// The configuration cannot work (bad names or subnet, a device in the way).
    #[error("{0}")]
    Config(String),
    /// A TAP device of that name exists and belongs to another VM.
    #[error("{0}")]
    InUse(String),
    /// `ip`/`iptables` could not run or failed (the message has its stderr).
    #[error("{0}")]
    Command(String),
    #[error(transparent)]
    Store(#[from] crate::error::CoreError),
}

/// A microVM's network: a TAP device on the host bridge and the guest's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestNetwork {
    /// Host TAP device name (at most 15 bytes), already created and on the bridge.
    pub tap: String,
    /// Guest MAC, derived from the VM id (`52:54:00:…`).
    pub mac: String,
    pub ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub prefix_len: u8,
    /// The DNS server the guest asks (its `/etc/resolv.conf`).
    pub dns: Option<Ipv4Addr>,
}

impl GuestNetwork {
    /// The kernel command-line parameter the guest's init reads to configure `eth0`
    /// and its resolver (the classic `ip=` syntax:
    /// client::gateway:netmask::device:autoconf[:dns0]).
    pub fn kernel_ip_arg(&self) -> String {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len))
            .unwrap_or(0);
        let dns = self.dns.map(|ip| format!(":{ip}")).unwrap_or_default();
        format!(
            "ip={}::{}:{}::eth0:off{dns}",
            self.ip,
            self.gateway,
            Ipv4Addr::from(mask)
        )
    }
}

/// This worker's guest network.
pub struct HostNetwork {
    config: HostNetworkConfig,
    leases: Arc<dyn IpLeases>,
    network_key: String,
    range: RangeInclusive<Ipv4Addr>,
    /// The isolated bridge's resolver, started by [`HostNetwork::ensure`].
    resolver: tokio::sync::OnceCell<dns::SandboxResolver>,
}

impl HostNetwork {
    /// A network over `config`, leasing addresses in the store under `network_key`
    /// (one address space per host bridge, e.g. `"<worker id>/<bridge>"`). Checks
    /// the configuration; touches no device (see [`HostNetwork::ensure`]).
    pub fn new(
        config: HostNetworkConfig,
        leases: Arc<dyn IpLeases>,
        network_key: String,
    ) -> Result<HostNetwork, NetError> {
        plan::validate(&config)?;
        if network_key.is_empty() {
            return Err(NetError::Config("the network key must not be empty".into()));
        }
        let range = plan::guest_range(config.gateway, config.prefix_len);
        Ok(HostNetwork {
            config,
            leases,
            network_key,
            range,
            resolver: tokio::sync::OnceCell::new(),
        })
    }

    pub fn config(&self) -> &HostNetworkConfig {
        &self.config
    }

    /// The store key of this network's address space.
    pub fn network_key(&self) -> &str {
        &self.network_key
    }

    /// The addresses guests get.
    pub fn guest_range(&self) -> RangeInclusive<Ipv4Addr> {
        self.range.clone()
    }

    fn fence(&self) -> guard::Fence<'_> {
        guard::Fence::microvm(&self.config.bridge)
    }

    /// Creates the bridge, its address, the NAT rules, the fence and its resolver if
    /// missing (idempotent).
    pub async fn ensure(&self) -> Result<(), NetError> {
        let c = &self.config;
        links::ensure_bridge(&c.bridge).await?;
        links::ensure_address(&c.bridge, c.gateway, c.prefix_len).await?;
        links::set_up(&c.bridge).await?;
        let mut inserted = false;
        if c.nat {
            firewall::enable_forwarding().await?;
            for rule in plan::nat_rules(c) {
                if !firewall::has_rule(&rule).await? {
                    firewall::ensure_rule(&rule).await?;
                    inserted = true;
                }
            }
        }
        if c.isolated {
            // A NAT rule inserted now went above the fence's jump: lay it again.
            guard::guard_bridge(self.fence(), inserted).await?;
            self.resolver
                .get_or_try_init(|| {
                    dns::SandboxResolver::start(
                        self.fence(),
                        c.gateway,
                        c.egress_allow.clone(),
                        c.dns_upstream.clone(),
                    )
                })
                .await?;
        }
        Ok(())
    }

    fn resolver(&self) -> Result<&dns::SandboxResolver, NetError> {
        self.resolver.get().ok_or_else(|| {
            NetError::Config(format!(
                "bridge {} is not set up yet (HostNetwork::ensure)",
                self.config.bridge
            ))
        })
    }

    /// The DNS server guests are given: the gateway on an isolated bridge (its
    /// resolver answers there), else the first IPv4 upstream server that is not
    /// the host's loopback.
    fn guest_dns(&self) -> Option<Ipv4Addr> {
        if self.config.isolated {
            return Some(self.config.gateway);
        }
        self.config
            .dns_upstream
            .iter()
            .find_map(|server| match server.ip() {
                std::net::IpAddr::V4(ip) if !ip.is_loopback() && server.port() == 53 => Some(ip),
                _ => None,
            })
    }

    /// Removes a sandbox's rules and forgets it.
    async fn close(&self, vm_id: &str) -> Result<(), NetError> {
        dns::close_sandbox(self.resolver.get(), self.fence(), vm_id).await
    }

    /// Leases an address, makes the VM's TAP device and, on an isolated network,
    /// its firewall rules (`policy`: its network policy). Leaves nothing on error.
    /// Attaching a VM again gives the same address and TAP device.
    pub async fn attach(
        &self,
        vm_id: &str,
        policy: Option<&NetworkPolicy>,
    ) -> Result<GuestNetwork, NetError> {
        if vm_id.is_empty() || vm_id.len() > 256 || vm_id.chars().any(char::is_control) {
            return Err(NetError::Config(format!("VM id {vm_id:?} is not usable")));
        }
        if policy.is_some() && !self.config.isolated {
            return Err(self.no_policies());
        }
        let ip = self.lease(vm_id).await?;
        let tap = tap_name(vm_id);
        // make_tap leaves nothing of its own on error (and never touches a device
        // of another VM); the rules come once the device is ours.
        if let Err(e) = self.make_tap(&tap, vm_id).await {
            self.release(vm_id).await;
            return Err(e);
        }
        if self.config.isolated
            && let Err(e) = match self.resolver() {
                Ok(resolver) => resolver.open(vm_id, ip, policy).await,
                Err(e) => Err(e),
            }
        {
            if let Err(e) = self.close(vm_id).await {
                tracing::warn!(vm_id, error = %e, "cannot remove the rules of a failed attach");
            }
            if let Err(e) = links::delete(&tap).await {
                tracing::warn!(tap, error = %e, "cannot remove the TAP device of a failed attach");
            }
            self.release(vm_id).await;
            return Err(e);
        }
        Ok(GuestNetwork {
            tap,
            mac: guest_mac(vm_id),
            ip,
            gateway: self.config.gateway,
            prefix_len: self.config.prefix_len,
            dns: self.guest_dns(),
        })
    }

    /// Releases a failed attach's lease.
    async fn release(&self, vm_id: &str) {
        if let Err(e) = self.leases.release_ip(&self.network_key, vm_id).await {
            tracing::warn!(vm_id, error = %e, "cannot release the address of a failed attach");
        }
    }

    fn no_policies(&self) -> NetError {
        NetError::Config(format!(
            "network policies need an isolated microVM network (network.isolated); bridge {}'s is not",
            self.config.bridge
        ))
    }

    /// Puts `policy` (`None`: the network's defaults) in place of an attached VM's
    /// current one, at once, for new and open connections.
    pub async fn set_policy(
        &self,
        vm_id: &str,
        policy: Option<&NetworkPolicy>,
    ) -> Result<(), NetError> {
        if !self.config.isolated {
            return Err(self.no_policies());
        }
        let ip = self
            .leases
            .list_leases(&self.network_key)
            .await?
            .into_iter()
            .find(|lease| lease.vm_id == vm_id)
            .map(|lease| lease.ip)
            .ok_or_else(|| {
                NetError::Config(format!("VM {vm_id} has no address on this network"))
            })?;
        self.resolver()?.open(vm_id, ip, policy).await
    }

    /// Removes the VM's rules, its TAP device and releases its lease. Absent is
    /// fine.
    pub async fn detach(&self, vm_id: &str) -> Result<(), NetError> {
        if self.config.isolated {
            self.close(vm_id).await?;
        }
        let tap = tap_name(vm_id);
        if let Some(link) = links::show(&tap).await?
            && link.ifalias.as_deref().is_some_and(|a| a != vm_id)
        {
            // Not this VM's device (a name collision): leave it to its owner.
            tracing::warn!(vm_id, tap, owner = ?link.ifalias, "TAP device belongs to another VM; not removed");
        } else {
            links::delete(&tap).await?;
        }
        self.leases.release_ip(&self.network_key, vm_id).await?;
        Ok(())
    }

    /// Removes TAP devices and leases of VMs that are not in `live` (worker start).
    /// Ours are the `aeth-` devices on this bridge; a device's alias names its VM.
    pub async fn reconcile(&self, live: &HashSet<String>) -> Result<(), NetError> {
        let live_taps: HashSet<String> = live.iter().map(|id| tap_name(id)).collect();
        for port in links::ports(&self.config.bridge).await? {
            if !port.ifname.starts_with(TAP_PREFIX) {
                continue;
            }
            let alive = match port.ifalias.as_deref() {
                Some(vm_id) if !vm_id.is_empty() => live.contains(vm_id),
                _ => live_taps.contains(&port.ifname),
            };
            if !alive {
                tracing::info!(tap = port.ifname, vm_id = ?port.ifalias, "removing the TAP device of a VM that is gone");
                links::delete(&port.ifname).await?;
            }
        }
        for lease in self.leases.list_leases(&self.network_key).await? {
            if !live.contains(&lease.vm_id) {
                tracing::info!(vm_id = lease.vm_id, ip = %lease.ip, "releasing the address of a VM that is gone");
                if self.config.isolated {
                    self.close(&lease.vm_id).await?;
                }
                self.leases
                    .release_ip(&self.network_key, &lease.vm_id)
                    .await?;
            }
        }
        Ok(())
    }

    /// Removes the NAT rules, our TAP devices on the bridge and the bridge (for
    /// tests and hosts that stop running networked VMs). Leases stay: release them
    /// with [`HostNetwork::detach`] or [`HostNetwork::reconcile`].
    pub async fn teardown(&self) -> Result<(), NetError> {
        let bridge = &self.config.bridge;
        let tag = plan::rule_tag(bridge);
        firewall::remove_tagged("nat", "POSTROUTING", &tag).await?;
        firewall::remove_tagged("filter", "FORWARD", &tag).await?;
        guard::unguard_bridge(self.fence()).await?;
        for port in links::ports(bridge).await? {
            if port.ifname.starts_with(TAP_PREFIX) {
                links::delete(&port.ifname).await?;
            }
        }
        links::delete(bridge).await
    }

    async fn lease(&self, vm_id: &str) -> Result<Ipv4Addr, NetError> {
        match self
            .leases
            .lease_ip(&self.network_key, vm_id, self.range.clone())
            .await
        {
            Ok(ip) => Ok(ip),
            Err(CoreError::Conflict(_)) => Err(NetError::Exhausted(format!(
                "network {} ({}..={})",
                self.network_key,
                self.range.start(),
                self.range.end()
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// Makes (or takes back) the VM's TAP device on the bridge. A device this call
    /// made is removed again if a later step fails.
    async fn make_tap(&self, tap: &str, vm_id: &str) -> Result<(), NetError> {
        let bridge = &self.config.bridge;
        if let Some(link) = links::show(tap).await? {
            if link.ifalias.as_deref() != Some(vm_id) {
                return Err(NetError::InUse(format!(
                    "TAP device {tap} exists and is not VM {vm_id}'s (alias {:?}); remove it or reconcile",
                    link.ifalias
                )));
            }
            // A leftover of this VM (e.g. before a worker restart): take it back.
            return links::join_bridge(tap, bridge, vm_id, self.config.isolated).await;
        }
        links::add_tap(tap).await?;
        if let Err(e) = links::join_bridge(tap, bridge, vm_id, self.config.isolated).await {
            if let Err(undo) = links::delete(tap).await {
                tracing::warn!(tap, error = %undo, "cannot remove the TAP device of a failed attach");
            }
            return Err(e);
        }
        Ok(())
    }
}
