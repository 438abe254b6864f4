//! Network devices through `ip`: the bridge, its address, TAP devices.

use std::net::Ipv4Addr;

use super::NetError;
use super::cmd::{self, failed, run};
use super::plan::{Link, parse_links};

/// Whether a device of this name exists (in our network namespace).
pub(crate) async fn exists(name: &str) -> bool {
    tokio::fs::try_exists(format!("/sys/class/net/{name}"))
        .await
        .unwrap_or(false)
}

/// The device as `ip -j -d addr show` describes it, `None` if absent.
pub(crate) async fn show(name: &str) -> Result<Option<Link>, NetError> {
    if !exists(name).await {
        return Ok(None);
    }
    let args = ["-j", "-d", "addr", "show", "dev", name];
    let out = cmd::output("ip", &args).await?;
    if !out.success {
        // Gone since the check.
        return if exists(name).await {
            Err(failed("ip", &args, &out))
        } else {
            Ok(None)
        };
    }
    Ok(parse_links(&out.stdout)?.into_iter().next())
}

/// The devices whose master is `bridge` (none if the bridge is absent).
pub(crate) async fn ports(bridge: &str) -> Result<Vec<Link>, NetError> {
    if !exists(bridge).await {
        return Ok(Vec::new());
    }
    let args = ["-j", "link", "show", "master", bridge];
    let out = cmd::output("ip", &args).await?;
    if !out.success {
        return if exists(bridge).await {
            Err(failed("ip", &args, &out))
        } else {
            Ok(Vec::new())
        };
    }
    parse_links(&out.stdout)
}

/// Makes `name` a bridge if no device has that name; an existing device must be one.
pub(crate) async fn ensure_bridge(name: &str) -> Result<(), NetError> {
    if show(name).await?.is_none() {
        let args = ["link", "add", "name", name, "type", "bridge"];
        let out = cmd::output("ip", &args).await?;
        // Another process may have just made it; the check below decides.
        if !out.success && !exists(name).await {
            return Err(failed("ip", &args, &out));
        }
    }
    match show(name).await? {
        Some(link) if link.is_bridge() => Ok(()),
        Some(_) => Err(NetError::Config(format!(
            "device {name} exists and is not a bridge; pick another bridge name or remove it"
        ))),
        None => Err(NetError::Command(format!(
            "bridge {name} vanished while being set up"
        ))),
    }
}

/// Gives the bridge `address/prefix_len` unless it has it; the same address with
/// another prefix is a configuration error.
pub(crate) async fn ensure_address(
    name: &str,
    address: Ipv4Addr,
    prefix_len: u8,
) -> Result<(), NetError> {
    let have = show(name).await?.map(|l| l.ipv4()).unwrap_or_default();
    if let Some((_, other)) = have.iter().find(|(ip, _)| *ip == address) {
        return if *other == prefix_len {
            Ok(())
        } else {
            Err(NetError::Config(format!(
                "{name} already has {address}/{other}, not /{prefix_len}"
            )))
        };
    }
    let cidr = format!("{address}/{prefix_len}");
    let args = ["addr", "add", cidr.as_str(), "dev", name];
    let out = cmd::output("ip", &args).await?;
    let now_has = || async {
        show(name)
            .await
            .ok()
            .flatten()
            .is_some_and(|l| l.ipv4().contains(&(address, prefix_len)))
    };
    if out.success || now_has().await {
        Ok(())
    } else {
        Err(failed("ip", &args, &out))
    }
}

pub(crate) async fn set_up(name: &str) -> Result<(), NetError> {
    run("ip", &["link", "set", "dev", name, "up"])
        .await
        .map(drop)
}

/// A persistent TAP device (not yet on a bridge, down).
pub(crate) async fn add_tap(name: &str) -> Result<(), NetError> {
    run("ip", &["tuntap", "add", "dev", name, "mode", "tap"])
        .await
        .map(drop)
}

/// Puts a device on `bridge`, marks it with `alias` and brings it up.
pub(crate) async fn join_bridge(
    name: &str,
    bridge: &str,
    alias: &str,
    isolated: bool,
) -> Result<(), NetError> {
    run(
        "ip",
        &[
            "link", "set", "dev", name, "master", bridge, "alias", alias, "up",
        ],
    )
    .await?;
    if isolated {
        // An isolated port forwards to the bridge (the host) only, never to another
        // isolated port: guests do not reach each other, not even by ARP.
        let isolate = [
            "link",
            "set",
            "dev",
            name,
            "type",
            "bridge_slave",
            "isolated",
            "on",
        ];
        run("ip", &isolate).await?;
    }
    Ok(())
}

/// Deletes a device; one that is not there is fine.
pub(crate) async fn delete(name: &str) -> Result<(), NetError> {
    if !exists(name).await {
        return Ok(());
    }
    let args = ["link", "del", "dev", name];
    let out = cmd::output("ip", &args).await?;
    if out.success || !exists(name).await {
        Ok(())
    } else {
        Err(failed("ip", &args, &out))
    }
}
