//! Host networking for microVMs: a bridge (`aetherium0`, the guests' gateway) with
//! NAT for egress, one TAP device per VM on it, guest addresses leased in the store
//! (never shared by two VMs, also across restarts) and a MAC derived from the VM id.
//!
//! Devices are made with `ip`, rules with `iptables` (on Debian 12 the nf_tables
//! backend); every rule carries the comment `aetherium:<bridge>`, every TAP device
//! is named `aeth-…` and has the VM id as its alias, so that what a crashed worker
//! left behind is found again ([`HostNetwork::reconcile`], [`HostNetwork::teardown`]).

mod cmd;
mod firewall;
pub mod guard;
mod links;
pub mod plan;

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::sync::Arc;

use crate::error::CoreError;
use crate::store::IpLeases;
use crate::vmm::GuestNetwork;

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
}

impl Default for HostNetworkConfig {
    /// `aetherium0` at 172.16.0.1/24 with NAT.
    fn default() -> Self {
        HostNetworkConfig {
            bridge: "aetherium0".into(),
            gateway: Ipv4Addr::new(172, 16, 0, 1),
            prefix_len: 24,
            nat: true,
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

/// This worker's guest network.
pub struct HostNetwork {
    config: HostNetworkConfig,
    leases: Arc<dyn IpLeases>,
    network_key: String,
    range: RangeInclusive<Ipv4Addr>,
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

    /// Creates the bridge, its address and the NAT rules if missing (idempotent).
    pub async fn ensure(&self) -> Result<(), NetError> {
        let c = &self.config;
        links::ensure_bridge(&c.bridge).await?;
        links::ensure_address(&c.bridge, c.gateway, c.prefix_len).await?;
        links::set_up(&c.bridge).await?;
        if c.nat {
            firewall::enable_forwarding().await?;
            for rule in plan::nat_rules(c) {
                firewall::ensure_rule(&rule).await?;
            }
        }
        Ok(())
    }

    /// Leases an address and makes the VM's TAP device. Leaves nothing on error.
    /// Attaching a VM again gives the same address and TAP device.
    pub async fn attach(&self, vm_id: &str) -> Result<GuestNetwork, NetError> {
        if vm_id.is_empty() || vm_id.len() > 256 || vm_id.chars().any(char::is_control) {
            return Err(NetError::Config(format!("VM id {vm_id:?} is not usable")));
        }
        let ip = self.lease(vm_id).await?;
        let tap = tap_name(vm_id);
        if let Err(e) = self.make_tap(&tap, vm_id).await {
            if let Err(release) = self.leases.release_ip(&self.network_key, vm_id).await {
                tracing::warn!(vm_id, error = %release, "cannot release the address of a failed attach");
            }
            return Err(e);
        }
        Ok(GuestNetwork {
            tap,
            mac: guest_mac(vm_id),
            ip,
            gateway: self.config.gateway,
            prefix_len: self.config.prefix_len,
        })
    }

    /// Removes the VM's TAP device and releases its lease. Absent is fine.
    pub async fn detach(&self, vm_id: &str) -> Result<(), NetError> {
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
            return links::join_bridge(tap, bridge, vm_id).await;
        }
        links::add_tap(tap).await?;
        if let Err(e) = links::join_bridge(tap, bridge, vm_id).await {
            if let Err(undo) = links::delete(tap).await {
                tracing::warn!(tap, error = %undo, "cannot remove the TAP device of a failed attach");
            }
            return Err(e);
        }
        Ok(())
    }
}
