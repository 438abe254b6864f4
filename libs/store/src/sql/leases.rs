//! [`IpLeases`] (table `ip_leases`). A lease is taken in one transaction, so
//! concurrent callers (in any process) pick addresses one after the other and never
//! both pick the same free one: on PostgreSQL the transaction first takes an advisory
//! lock for its network ([`Dialect::LEASE_LOCK`]); SQLite holds its write lock from
//! the transaction's first statement, a DELETE. The table's unique keys stay the
//! last word.

use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

use async_trait::async_trait;
use chrono::Utc;

use super::dialect::{Dialect, query};
use super::{SqlStore, from_ms, to_ms};
use crate::error::CoreResult;
use crate::leases::{IpLease, IpLeases, checked_bounds, exhausted, ip_from_db};

#[async_trait]
impl<DB: Dialect> IpLeases for SqlStore<DB> {
    async fn lease_ip(
        &self,
        network: &str,
        vm_id: &str,
        range: RangeInclusive<Ipv4Addr>,
    ) -> CoreResult<Ipv4Addr> {
        let (first, last) = checked_bounds(network, vm_id, &range)?;
        let mut tx = self.pool().begin().await?;
        if let Some(lock) = DB::LEASE_LOCK {
            query::<DB>(lock).bind(network).execute(&mut *tx).await?;
        }
        self.query(
            "DELETE FROM ip_leases WHERE network = $1 AND vm_id = $2 AND (ip < $3 OR ip > $4)",
        )
        .bind(network)
        .bind(vm_id)
        .bind(first)
        .bind(last)
        .execute(&mut *tx)
        .await?;
        let held: Option<i64> = self
            .query("SELECT ip FROM ip_leases WHERE network = $1 AND vm_id = $2")
            .bind(network)
            .bind(vm_id)
            .optional_scalar(&mut *tx)
            .await?;
        let ip = match held {
            Some(ip) => ip,
            // The lowest free address is `first` or one right after a leased one.
            None => self
                .query(
                    "INSERT INTO ip_leases (network, vm_id, ip, leased_at)
                 SELECT $1, $2, c.candidate, $5 FROM (
                     SELECT CAST($3 AS BIGINT) AS candidate
                      WHERE NOT EXISTS (SELECT 1 FROM ip_leases WHERE network = $1 AND ip = $3)
                     UNION ALL
                     SELECT l.ip + 1 FROM ip_leases l
                      WHERE l.network = $1 AND l.ip >= $3 AND l.ip < $4
                        AND NOT EXISTS (SELECT 1 FROM ip_leases n
                                         WHERE n.network = $1 AND n.ip = l.ip + 1)
                 ) c ORDER BY c.candidate LIMIT 1
                 RETURNING ip",
                )
                .bind(network)
                .bind(vm_id)
                .bind(first)
                .bind(last)
                .bind(to_ms(Utc::now()))
                .optional_scalar(&mut *tx)
                .await?
                .ok_or_else(|| exhausted(network, &range))?,
        };
        tx.commit().await?;
        ip_from_db(ip)
    }

    async fn release_ip(&self, network: &str, vm_id: &str) -> CoreResult<bool> {
        let done = self
            .query("DELETE FROM ip_leases WHERE network = $1 AND vm_id = $2")
            .bind(network)
            .bind(vm_id)
            .execute(self.pool())
            .await?;
        Ok(done > 0)
    }

    async fn list_leases(&self, network: &str) -> CoreResult<Vec<IpLease>> {
        let rows: Vec<(String, String, i64, i64)> = self
            .query(
                "SELECT network, vm_id, ip, leased_at FROM ip_leases
                 WHERE network = $1 ORDER BY ip",
            )
            .bind(network)
            .fetch_all(self.pool())
            .await?;
        rows.into_iter()
            .map(|(network, vm_id, ip, leased_at)| {
                Ok(IpLease {
                    network,
                    vm_id,
                    ip: ip_from_db(ip)?,
                    leased_at: from_ms(leased_at),
                })
            })
            .collect()
    }
}
