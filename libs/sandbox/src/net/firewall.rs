//! IPv4 forwarding and our iptables rules, each tagged with a comment naming the
//! bridge so that it is added once and found again for removal.

use super::NetError;
use super::cmd::{self, failed, run};
use super::plan::{Rule, rule_deletions, tagged_rule_deletions};

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// Our changes read a chain, then delete what they found: two at once (two policy
/// changes of one sandbox) would both delete the same rule, and the second batch
/// fail ("Bad rule"). `iptables -w` only serialises single commands.
static CHANGES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Turns on IPv4 forwarding if it is off.
pub(crate) async fn enable_forwarding() -> Result<(), NetError> {
    let now = tokio::fs::read_to_string(IP_FORWARD)
        .await
        .map_err(|e| NetError::Command(format!("cannot read {IP_FORWARD}: {e}")))?;
    if now.trim() == "1" {
        return Ok(());
    }
    tokio::fs::write(IP_FORWARD, "1\n").await.map_err(|e| {
        NetError::Command(format!("cannot enable IPv4 forwarding ({IP_FORWARD}): {e}"))
    })
}

fn args<'a>(rule: &'a Rule, op: &'a str) -> Vec<&'a str> {
    let mut v = vec!["-w", "-t", rule.table, op, rule.chain];
    v.extend(rule.spec.iter().map(String::as_str));
    v
}

/// Inserts the rule at the top of its chain unless it is there already (so rules
/// appended later, such as a catch-all DROP, do not shadow it).
pub(crate) async fn ensure_rule(rule: &Rule) -> Result<(), NetError> {
    let check = args(rule, "-C");
    let out = cmd::output("iptables", &check).await?;
    match out.code {
        Some(0) => Ok(()),
        // 1: no such rule.
        Some(1) => run("iptables", &args(rule, "-I")).await.map(drop),
        _ => Err(failed("iptables", &check, &out)),
    }
}

/// Makes a chain of ours in the `filter` table unless it exists (left as it is if
/// it does: its rules are someone's).
pub(crate) async fn ensure_chain(chain: &str) -> Result<(), NetError> {
    let list = ["-w", "-t", "filter", "-S", chain];
    if cmd::output("iptables", &list).await?.success {
        return Ok(());
    }
    let make = ["-w", "-t", "filter", "-N", chain];
    let out = cmd::output("iptables", &make).await?;
    // Made by another process meanwhile is fine.
    if out.success || cmd::output("iptables", &list).await?.success {
        Ok(())
    } else {
        Err(failed("iptables", &make, &out))
    }
}

/// Whether every rule is in its chain.
pub(crate) async fn has_rules(rules: &[Rule]) -> Result<bool, NetError> {
    for rule in rules {
        if !has_rule(rule).await? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Whether the rule is in its chain.
pub(crate) async fn has_rule(rule: &Rule) -> Result<bool, NetError> {
    let check = args(rule, "-C");
    let out = cmd::output("iptables", &check).await?;
    match out.code {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        _ => Err(failed("iptables", &check, &out)),
    }
}

/// In one transaction of the `filter` table: deletes the rules of `chains` that
/// carry `tag`, then inserts `rules` at the top of their chains in the given order.
/// Nothing ever sees a chain without them (iptables-restore --noflush commits once).
pub(crate) async fn relay_tagged(
    chains: &[&str],
    tag: &str,
    rules: &[Rule],
) -> Result<(), NetError> {
    let chains: Vec<(&str, &str)> = chains.iter().map(|chain| ("filter", *chain)).collect();
    relay_with_chain(
        &chains,
        |words| words.windows(2).any(|w| w[0] == "--comment" && w[1] == tag),
        rules,
        None,
    )
    .await
}

/// In one `iptables-restore`: deletes the rules of `chains` (table, chain) that
/// `select` picks (given each rule's words), inserts `rules` at the top of their
/// chains in the given order, and makes (or empties) a `filter` chain of our own
/// with its rules (`-A <chain> …` lines).
pub(crate) async fn relay_with_chain(
    chains: &[(&str, &str)],
    select: impl Fn(&[String]) -> bool,
    rules: &[Rule],
    own_chain: Option<(&str, &[String])>,
) -> Result<(), NetError> {
    let _one_at_a_time = CHANGES.lock().await;
    let mut tables = vec!["filter"];
    for table in chains
        .iter()
        .map(|(t, _)| *t)
        .chain(rules.iter().map(|r| r.table))
    {
        if !tables.contains(&table) {
            tables.push(table);
        }
    }
    let mut batch = String::new();
    for table in tables {
        batch.push_str(&format!("*{table}\n"));
        if let Some((name, own_rules)) = own_chain.filter(|_| table == "filter") {
            batch.push_str(&format!(":{name} - [0:0]\n"));
            for line in own_rules {
                batch.push_str(line);
                batch.push('\n');
            }
        }
        for (_, chain) in chains.iter().filter(|(t, _)| *t == table) {
            let listing = run("iptables", &["-w", "-t", table, "-S", chain]).await?;
            for deletion in rule_deletions(&listing, &select) {
                batch.push_str(&deletion.join(" "));
                batch.push('\n');
            }
        }
        let mut position: std::collections::HashMap<&str, usize> = Default::default();
        for rule in rules.iter().filter(|r| r.table == table) {
            let n = position.entry(rule.chain).or_insert(0);
            *n += 1;
            batch.push_str(&format!(
                "-I {} {} {}\n",
                rule.chain,
                n,
                rule.spec.join(" ")
            ));
        }
        batch.push_str("COMMIT\n");
    }
    restore(&batch).await
}

/// Commits `batch` (`iptables-restore` input) in one transaction, leaving what it
/// does not name as it is.
async fn restore(batch: &str) -> Result<(), NetError> {
    let args = ["-w", "--noflush"];
    let out = cmd::output_with_input("iptables-restore", &args, Some(batch.as_bytes())).await?;
    if out.success {
        Ok(())
    } else {
        Err(failed("iptables-restore", &args, &out))
    }
}

/// Empties and deletes a chain of our own in the `filter` table (after whatever
/// jumped to it is gone); a missing chain is fine.
pub(crate) async fn remove_chain(chain: &str) -> Result<(), NetError> {
    restore(&format!("*filter\n:{chain} - [0:0]\n-X {chain}\nCOMMIT\n")).await
}

/// Deletes every rule of `table`/`chain` that carries `tag`.
pub(crate) async fn remove_tagged(table: &str, chain: &str, tag: &str) -> Result<(), NetError> {
    let _one_at_a_time = CHANGES.lock().await;
    let listing = run("iptables", &["-w", "-t", table, "-S", chain]).await?;
    for deletion in tagged_rule_deletions(&listing, tag) {
        let mut argv = vec!["-w", "-t", table];
        argv.extend(deletion.iter().map(String::as_str));
        run("iptables", &argv).await?;
    }
    Ok(())
}
