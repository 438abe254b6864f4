//! Guest IPv4 address leases of microVMs. A `network` is one address space (one
//! host's bridge, keyed `"<worker id>/<bridge>"`); within it no two VMs ever hold the
//! same address, also with concurrent callers in several processes (the table's
//! UNIQUE (network, ip) and UNIQUE (network, vm_id) keys make sure of it), and leases
//! outlive restarts. Behaviour is tested on SQLite and PostgreSQL alike by
//! `tests/store_conformance.rs`.

use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::error::{CoreError, CoreResult};

/// One VM's address in one network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpLease {
    pub network: String,
    pub vm_id: String,
    pub ip: Ipv4Addr,
    pub leased_at: DateTime<Utc>,
}

#[async_trait]
pub trait IpLeases: Send + Sync + 'static {
    /// The VM's address in `network`: the one it holds if that lies in `range`
    /// (asking again is idempotent), else the lowest address of `range` that nobody
    /// holds (a lease it held outside `range` is dropped). `Conflict` when every
    /// address of `range` is taken; `InvalidInput` for an empty range or ids.
    async fn lease_ip(
        &self,
        network: &str,
        vm_id: &str,
        range: RangeInclusive<Ipv4Addr>,
    ) -> CoreResult<Ipv4Addr>;

    /// Drops the VM's lease in `network`; returns whether it had one.
    async fn release_ip(&self, network: &str, vm_id: &str) -> CoreResult<bool>;

    /// The leases of `network`, lowest address first.
    async fn list_leases(&self, network: &str) -> CoreResult<Vec<IpLease>>;
}

/// The range's bounds as stored (integers), or `InvalidInput` if the request is
/// malformed.
pub(crate) fn checked_bounds(
    network: &str,
    vm_id: &str,
    range: &RangeInclusive<Ipv4Addr>,
) -> CoreResult<(i64, i64)> {
    if network.is_empty() || vm_id.is_empty() {
        return Err(CoreError::InvalidInput(
            "an address lease needs a network and a VM id".into(),
        ));
    }
    let (first, last) = (u32::from(*range.start()), u32::from(*range.end()));
    if first > last {
        return Err(CoreError::InvalidInput(format!(
            "empty address range {}..={} for network {network:?}",
            range.start(),
            range.end()
        )));
    }
    Ok((i64::from(first), i64::from(last)))
}

/// The error for a network without a free address in `range`.
pub(crate) fn exhausted(network: &str, range: &RangeInclusive<Ipv4Addr>) -> CoreError {
    CoreError::Conflict(format!(
        "no free guest address left in network {network:?} ({}..={} all leased)",
        range.start(),
        range.end()
    ))
}

/// A stored address back as an IPv4 address.
pub(crate) fn ip_from_db(value: i64) -> CoreResult<Ipv4Addr> {
    u32::try_from(value)
        .map(Ipv4Addr::from)
        .map_err(|_| CoreError::Internal(anyhow::anyhow!("corrupt lease row: ip {value}")))
}
