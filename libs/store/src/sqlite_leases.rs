//! [`IpLeases`] for SQLite (table from `migrations/sqlite/0006_ip_leases.sql`).
//! Each step is one statement, and a writing statement holds SQLite's write lock
//! from its start, so the address an INSERT picks is free when it is written.

use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

use async_trait::async_trait;
use chrono::Utc;
use sqlx::Row;

use super::leases::{IpLease, IpLeases, checked_bounds, exhausted, ip_from_db};
use super::sqlite::{SqliteStore, from_ms, to_ms};
use crate::error::CoreResult;

impl SqliteStore {
    async fn held_lease(&self, network: &str, vm_id: &str) -> CoreResult<Option<i64>> {
        Ok(
            sqlx::query_scalar("SELECT ip FROM ip_leases WHERE network = ?1 AND vm_id = ?2")
                .bind(network)
                .bind(vm_id)
                .fetch_optional(self.pool())
                .await?,
        )
    }
}

#[async_trait]
impl IpLeases for SqliteStore {
    async fn lease_ip(
        &self,
        network: &str,
        vm_id: &str,
        range: RangeInclusive<Ipv4Addr>,
    ) -> CoreResult<Ipv4Addr> {
        let (first, last) = checked_bounds(network, vm_id, &range)?;
        sqlx::query(
            "DELETE FROM ip_leases WHERE network = ?1 AND vm_id = ?2 AND (ip < ?3 OR ip > ?4)",
        )
        .bind(network)
        .bind(vm_id)
        .bind(first)
        .bind(last)
        .execute(self.pool())
        .await?;
        if let Some(ip) = self.held_lease(network, vm_id).await? {
            return ip_from_db(ip);
        }
        // The lowest free address is `first` or one right after a leased one. (The
        // `WHERE true` keeps SQLite from reading ON CONFLICT as a join constraint.)
        let inserted: Option<i64> = sqlx::query_scalar(
            "INSERT INTO ip_leases (network, vm_id, ip, leased_at)
             SELECT ?1, ?2, candidate, ?5 FROM (
                 SELECT ?3 AS candidate
                  WHERE NOT EXISTS (SELECT 1 FROM ip_leases WHERE network = ?1 AND ip = ?3)
                 UNION ALL
                 SELECT l.ip + 1 FROM ip_leases l
                  WHERE l.network = ?1 AND l.ip >= ?3 AND l.ip < ?4
                    AND NOT EXISTS (SELECT 1 FROM ip_leases n
                                     WHERE n.network = ?1 AND n.ip = l.ip + 1)
                 ORDER BY candidate LIMIT 1
             ) WHERE true
             ON CONFLICT (network, vm_id) DO NOTHING
             RETURNING ip",
        )
        .bind(network)
        .bind(vm_id)
        .bind(first)
        .bind(last)
        .bind(to_ms(Utc::now()))
        .fetch_optional(self.pool())
        .await?;
        // Nothing inserted: either a concurrent call for the same VM won, or the
        // range is full.
        match inserted {
            Some(ip) => ip_from_db(ip),
            None => match self.held_lease(network, vm_id).await? {
                Some(ip) => ip_from_db(ip),
                None => Err(exhausted(network, &range)),
            },
        }
    }

    async fn release_ip(&self, network: &str, vm_id: &str) -> CoreResult<bool> {
        let done = sqlx::query("DELETE FROM ip_leases WHERE network = ?1 AND vm_id = ?2")
            .bind(network)
            .bind(vm_id)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn list_leases(&self, network: &str) -> CoreResult<Vec<IpLease>> {
        let rows = sqlx::query(
            "SELECT network, vm_id, ip, leased_at FROM ip_leases WHERE network = ?1 ORDER BY ip",
        )
        .bind(network)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(IpLease {
                    network: row.try_get("network")?,
                    vm_id: row.try_get("vm_id")?,
                    ip: ip_from_db(row.try_get("ip")?)?,
                    leased_at: from_ms(row.try_get("leased_at")?),
                })
            })
            .collect()
    }
}
