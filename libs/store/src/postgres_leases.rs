//! [`IpLeases`] for PostgreSQL (table from `migrations/postgres/0005_ip_leases.sql`).
//! A lease is taken in a transaction holding an advisory lock for its network, so
//! concurrent callers (in any process) pick addresses one after the other and never
//! both pick the same free one; the table's unique keys stay the last word.

use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

use async_trait::async_trait;
use chrono::Utc;
use sqlx::Row;

use super::leases::{IpLease, IpLeases, checked_bounds, exhausted, ip_from_db};
use super::postgres::PgStore;
use super::sqlite::{from_ms, to_ms};
use crate::error::CoreResult;

#[async_trait]
impl IpLeases for PgStore {
    async fn lease_ip(
        &self,
        network: &str,
        vm_id: &str,
        range: RangeInclusive<Ipv4Addr>,
    ) -> CoreResult<Ipv4Addr> {
        let (first, last) = checked_bounds(network, vm_id, &range)?;
        let mut tx = self.pool().begin().await?;
        sqlx::query(
            "SELECT pg_advisory_xact_lock(hashtextextended('aetherium ip_leases ' || $1, 0))",
        )
        .bind(network)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM ip_leases WHERE network = $1 AND vm_id = $2 AND (ip < $3 OR ip > $4)",
        )
        .bind(network)
        .bind(vm_id)
        .bind(first)
        .bind(last)
        .execute(&mut *tx)
        .await?;
        let held: Option<i64> =
            sqlx::query_scalar("SELECT ip FROM ip_leases WHERE network = $1 AND vm_id = $2")
                .bind(network)
                .bind(vm_id)
                .fetch_optional(&mut *tx)
                .await?;
        let ip = match held {
            Some(ip) => ip,
            // The lowest free address is `first` or one right after a leased one.
            None => sqlx::query_scalar(
                "INSERT INTO ip_leases (network, vm_id, ip, leased_at)
                 SELECT $1, $2, c.candidate, $5 FROM (
                     SELECT $3::BIGINT AS candidate
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
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| exhausted(network, &range))?,
        };
        tx.commit().await?;
        ip_from_db(ip)
    }

    async fn release_ip(&self, network: &str, vm_id: &str) -> CoreResult<bool> {
        let done = sqlx::query("DELETE FROM ip_leases WHERE network = $1 AND vm_id = $2")
            .bind(network)
            .bind(vm_id)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn list_leases(&self, network: &str) -> CoreResult<Vec<IpLease>> {
        let rows = sqlx::query(
            "SELECT network, vm_id, ip, leased_at FROM ip_leases WHERE network = $1 ORDER BY ip",
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
