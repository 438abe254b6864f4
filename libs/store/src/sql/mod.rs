//! The store in SQL: one implementation, [`SqlStore`], generic over the database
//! ([`Dialect`]: SQLite or PostgreSQL). Both databases hold the same tables
//! (`migrations/sqlite`, `migrations/postgres`): timestamps are i64 milliseconds,
//! JSON is TEXT on SQLite and JSONB on PostgreSQL, and every statement uses `$n`
//! parameters. What really differs is in [`dialect`].
//!
//! - SQLite (embedded mode) runs in WAL mode, so readers never wait for the writer.
//! - PostgreSQL (distributed mode): sqlx's migrator holds an advisory lock while it
//!   runs, so many processes starting at once on a fresh database migrate it exactly
//!   once. A server that is down or restarting is `CoreError::Unavailable` (HTTP
//!   503): the pool retries a refused connection until its acquire timeout, and tests
//!   each pooled connection before handing it out, so after a restart it reconnects
//!   by itself.

mod auth;
pub mod dialect;
mod environments;
mod events;
mod leases;
mod rows;
mod secrets;
mod store;
mod tasks;
mod workers;
mod workspaces;

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Pool, Postgres, Sqlite};

pub use dialect::Dialect;
pub use rows::task_from_row;

use self::dialect::Query;
use super::Page;
use crate::error::{CoreError, CoreResult};

/// The store on database `DB`.
pub struct SqlStore<DB: Dialect> {
    pub(crate) pool: Pool<DB>,
}

// By hand: a derive would ask `DB: Clone`.
impl<DB: Dialect> Clone for SqlStore<DB> {
    fn clone(&self) -> Self {
        SqlStore {
            pool: self.pool.clone(),
        }
    }
}

/// The SQLite store (embedded mode).
pub type SqliteStore = SqlStore<Sqlite>;
/// The PostgreSQL store (distributed mode).
pub type PgStore = SqlStore<Postgres>;

impl<DB: Dialect> SqlStore<DB> {
    pub fn pool(&self) -> &Pool<DB> {
        &self.pool
    }

    /// A statement on this store's database.
    fn query(&self, sql: impl sqlx::SqlSafeStr) -> Query<DB> {
        dialect::query(sql)
    }
}

pub fn to_ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub fn from_ms(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

pub(crate) fn parse_enum<T: FromStr<Err = String>>(text: &str) -> CoreResult<T> {
    T::from_str(text).map_err(|e| CoreError::Internal(anyhow::anyhow!("corrupt row: {e}")))
}

pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// A value bound as JSON (TEXT on SQLite, JSONB on PostgreSQL).
pub(crate) fn json<T: serde::Serialize>(value: &T) -> sqlx::types::Json<&T> {
    sqlx::types::Json(value)
}

/// Keyset condition for lists ordered `created_at DESC, id DESC`: rows strictly after
/// the cursor, whose created_at is bound as `$n` and id as `$n+1` (both NULL on the
/// first page). The casts type the parameters for PostgreSQL.
fn keyset_sql(n: u32) -> String {
    let m = n + 1;
    format!(
        "(CAST(${n} AS BIGINT) IS NULL OR created_at < ${n}
          OR (created_at = ${n} AND id < CAST(${m} AS TEXT)))"
    )
}

fn keyset(page: &Page) -> (Option<i64>, Option<&str>) {
    match &page.cursor {
        Some(c) => (Some(c.created_at_ms), Some(c.id.as_str())),
        None => (None, None),
    }
}

impl SqlStore<Sqlite> {
    /// Opens (creating if needed) the database at `url` (`sqlite://path`) and runs
    /// the migrations.
    pub async fn connect(url: &str) -> CoreResult<SqliteStore> {
        if super::DatabaseKind::of(url) != Some(super::DatabaseKind::Sqlite) {
            return Err(CoreError::InvalidInput(format!(
                "database url {:?} is not a SQLite URL: embedded mode (`aetherium up`) keeps \
                 its state in SQLite (sqlite://<path>); PostgreSQL is for distributed mode",
                super::redact_url(url)
            )));
        }
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| CoreError::InvalidInput(format!("bad database url {url:?}: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let file = options.get_filename().to_path_buf();
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .map_err(|e| CoreError::Unavailable(format!("cannot open database {url}: {e}")))?;
        restrict_to_owner(&file)?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&pool)
            .await
            .map_err(|e| CoreError::Internal(anyhow::Error::new(e).context("migrations")))?;
        Ok(SqlStore { pool })
    }
}

/// The database holds key hashes, sealed secrets and every command's output: mode
/// 0600 for it and its WAL files, whatever the umask made them.
fn restrict_to_owner(db: &std::path::Path) -> CoreResult<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if db.as_os_str().is_empty() || db.to_string_lossy().starts_with(':') {
        return Ok(()); // in memory
    }
    for suffix in ["", "-wal", "-shm"] {
        let mut path = db.as_os_str().to_owned();
        path.push(suffix);
        match std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(CoreError::Unavailable(format!(
                    "cannot restrict {} to its owner: {e}",
                    std::path::Path::new(&path).display()
                )));
            }
        }
    }
    Ok(())
}

/// How long a query waits for a connection before answering `Unavailable`.
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// Connection settings of a [`PgStore`].
#[derive(Debug, Clone)]
pub struct PgStoreOptions {
    pub max_connections: u32,
    /// How long a query waits for a connection (including reconnecting to a server
    /// that is down) before failing with `Unavailable`.
    pub acquire_timeout: Duration,
}

impl Default for PgStoreOptions {
    fn default() -> Self {
        PgStoreOptions {
            max_connections: 16,
            acquire_timeout: DEFAULT_ACQUIRE_TIMEOUT,
        }
    }
}

impl SqlStore<Postgres> {
    /// Connects to `url` (`postgres://user:password@host:port/database`) and runs the
    /// migrations. The server must be reachable within the acquire timeout.
    pub async fn connect(url: &str) -> CoreResult<PgStore> {
        PgStore::connect_with(url, PgStoreOptions::default()).await
    }

    pub async fn connect_with(url: &str, options: PgStoreOptions) -> CoreResult<PgStore> {
        let connect: PgConnectOptions = url
            .parse()
            .map_err(|e| CoreError::InvalidInput(format!("bad database url: {e}")))?;
        let connect = connect.application_name("aetherium");
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            // A connection left over from before a server restart fails this check and
            // is replaced, so callers never see it.
            .test_before_acquire(true)
            .connect_with(connect)
            .await
            .map_err(|e| CoreError::Unavailable(format!("cannot connect to the database: {e}")))?;
        PgStore::migrate(&pool).await?;
        Ok(SqlStore { pool })
    }

    /// Runs the PostgreSQL migrations (safe to run from many processes at once).
    pub async fn migrate(pool: &sqlx::PgPool) -> CoreResult<()> {
        sqlx::migrate!("./migrations/postgres")
            .run(pool)
            .await
            .map_err(|e| match e {
                sqlx::migrate::MigrateError::Execute(inner) => CoreError::from(inner),
                other => CoreError::Internal(anyhow::Error::new(other).context("migrations")),
            })
    }
}
