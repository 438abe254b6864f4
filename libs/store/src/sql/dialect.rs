//! The seam between the one SQL implementation ([`super::SqlStore`]) and its two
//! databases: the few SQL fragments that differ, and how values are bound and
//! statements run.
//!
//! Why values go through [`Arg`] rather than sqlx's generic `bind`: code generic over
//! `DB: sqlx::Database` must restate sqlx's bounds (`for<'q> i64: Encode<'q, DB>`,
//! `&'c mut DB::Connection: Executor<'c>`, …) on every impl block, since Rust does not
//! imply them from a trait. Here the set of bound types is closed ([`Arg`]), rows are
//! read through row structs that decode on both databases ([`Record`]), and only the
//! two [`Dialect`] impls below touch sqlx's bounds, each on a concrete database.

use std::future::Future;

use sqlx::error::BoxDynError;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::types::Json;
use sqlx::{Arguments, Database, FromRow, Pool, Postgres, SqlSafeStr, SqlStr, Sqlite};

use crate::error::CoreResult;

/// A value bound to a statement parameter (`None`: SQL NULL of that type).
#[derive(Debug, Clone)]
pub enum Arg {
    Int(Option<i64>),
    Text(Option<String>),
    Bool(Option<bool>),
    Bytes(Option<Vec<u8>>),
    /// TEXT on SQLite, JSONB on PostgreSQL.
    Json(Option<serde_json::Value>),
    /// A list of texts matched with [`Dialect::any`].
    List(Vec<String>),
}

impl Arg {
    /// A list for [`Dialect::any`].
    pub fn list<'a>(items: impl IntoIterator<Item = &'a str>) -> Arg {
        Arg::List(items.into_iter().map(str::to_string).collect())
    }
}

macro_rules! arg_from {
    ($($ty:ty => |$v:ident| $e:expr;)*) => {
        $(impl From<$ty> for Arg {
            fn from($v: $ty) -> Arg {
                $e
            }
        })*
    };
}

// The Rust types the store binds, each as the one SQL type both databases store.
arg_from! {
    i64 => |v| Arg::Int(Some(v));
    Option<i64> => |v| Arg::Int(v);
    bool => |v| Arg::Bool(Some(v));
    &str => |v| Arg::Text(Some(v.to_string()));
    Option<&str> => |v| Arg::Text(v.map(str::to_string));
    String => |v| Arg::Text(Some(v));
    &String => |v| Arg::Text(Some(v.clone()));
    Option<String> => |v| Arg::Text(v);
    &Option<String> => |v| Arg::Text(v.clone());
    &Vec<u8> => |v| Arg::Bytes(Some(v.clone()));
    &serde_json::Value => |v| Arg::Json(Some(v.clone()));
    Option<&serde_json::Value> => |v| Arg::Json(v.cloned());
}

impl<T: serde::Serialize> From<Json<T>> for Arg {
    fn from(v: Json<T>) -> Arg {
        Arg::Json(Some(serde_json::to_value(&v.0).unwrap_or_default()))
    }
}

impl<T: serde::Serialize> From<Option<Json<T>>> for Arg {
    fn from(v: Option<Json<T>>) -> Arg {
        Arg::Json(v.map(|v| serde_json::to_value(&v.0).unwrap_or_default()))
    }
}

/// A row struct (`#[derive(sqlx::FromRow)]`) or tuple that decodes on both databases.
pub trait Record:
    for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin + 'static
{
}

impl<T> Record for T where
    T: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin + 'static
{
}

/// A domain type read through a row struct.
pub trait Model: Sized {
    type Row: Record;
    fn from_row(row: Self::Row) -> CoreResult<Self>;
}

/// Where a statement runs: the pool, or a connection (a transaction: `&mut *tx`).
pub enum On<'e, DB: Database> {
    Pool(&'e Pool<DB>),
    Conn(&'e mut DB::Connection),
}

impl<'e, DB: Database> From<&'e Pool<DB>> for On<'e, DB> {
    fn from(pool: &'e Pool<DB>) -> Self {
        On::Pool(pool)
    }
}

impl<'e, DB: Database> From<&'e mut DB::Connection> for On<'e, DB> {
    fn from(conn: &'e mut DB::Connection) -> Self {
        On::Conn(conn)
    }
}

/// What differs between SQLite and PostgreSQL, kept to SQL fragments and the two
/// ways of running a statement.
pub trait Dialect: Database + Sync {
    /// `column` matches one of the texts bound as `$n` ([`Arg::List`]).
    fn any(column: &str, n: u32) -> String;
    /// The greater of two integers (`MAX` is an aggregate on PostgreSQL).
    const GREATEST: &'static str;
    /// `(haystack, needle)` → position of the needle (0: absent), case-sensitive and
    /// without wildcards.
    const STRPOS: &'static str;
    /// Whether the JSON document in `column` has a non-null `key`.
    fn json_has(column: &str, key: &str) -> String;
    /// A statement taking a transaction-scoped lock on the i64 key `$1`, serialising
    /// appends across processes; `None` where writers are serialised anyway (SQLite
    /// holds its write lock from a transaction's first write).
    const XACT_LOCK: Option<&'static str>;
    /// As [`Dialect::XACT_LOCK`], keyed by the network name `$1`, for IP leases.
    const LEASE_LOCK: Option<&'static str>;

    fn push(args: &mut Self::Arguments, arg: Arg) -> Result<(), BoxDynError>;
    /// Rows affected.
    fn execute<'e>(
        on: On<'e, Self>,
        sql: SqlStr,
        args: Self::Arguments,
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send + 'e;
    fn fetch_all<'e, T: Record>(
        on: On<'e, Self>,
        sql: SqlStr,
        args: Self::Arguments,
    ) -> impl Future<Output = Result<Vec<T>, sqlx::Error>> + Send + 'e;
    fn fetch_optional<'e, T: Record>(
        on: On<'e, Self>,
        sql: SqlStr,
        args: Self::Arguments,
    ) -> impl Future<Output = Result<Option<T>, sqlx::Error>> + Send + 'e;
}

/// The statement runners of a [`Dialect`] impl, the same text on both databases but
/// type-checked against each one's concrete types, where sqlx's bounds hold without
/// being restated (a generic version would need them on every caller). The closure
/// binds an [`Arg::List`].
macro_rules! runners {
    (|$args:ident, $items:ident| $list:expr) => {
        fn push($args: &mut Self::Arguments, arg: Arg) -> Result<(), BoxDynError> {
            match arg {
                Arg::Int(v) => $args.add(v),
                Arg::Text(v) => $args.add(v),
                Arg::Bool(v) => $args.add(v),
                Arg::Bytes(v) => $args.add(v),
                Arg::Json(v) => $args.add(v.map(Json)),
                Arg::List($items) => $list,
            }
        }

        async fn execute<'e>(
            on: On<'e, Self>,
            sql: SqlStr,
            args: Self::Arguments,
        ) -> Result<u64, sqlx::Error> {
            let query = sqlx::query_with(sql, args);
            let done = match on {
                On::Pool(pool) => query.execute(pool).await?,
                On::Conn(conn) => query.execute(conn).await?,
            };
            Ok(done.rows_affected())
        }

        async fn fetch_all<'e, T: Record>(
            on: On<'e, Self>,
            sql: SqlStr,
            args: Self::Arguments,
        ) -> Result<Vec<T>, sqlx::Error> {
            let query = sqlx::query_as_with::<_, T, _>(sql, args);
            match on {
                On::Pool(pool) => query.fetch_all(pool).await,
                On::Conn(conn) => query.fetch_all(conn).await,
            }
        }

        async fn fetch_optional<'e, T: Record>(
            on: On<'e, Self>,
            sql: SqlStr,
            args: Self::Arguments,
        ) -> Result<Option<T>, sqlx::Error> {
            let query = sqlx::query_as_with::<_, T, _>(sql, args);
            match on {
                On::Pool(pool) => query.fetch_optional(pool).await,
                On::Conn(conn) => query.fetch_optional(conn).await,
            }
        }
    };
}

impl Dialect for Sqlite {
    fn any(column: &str, n: u32) -> String {
        format!("{column} IN (SELECT value FROM json_each(${n}))")
    }
    const GREATEST: &'static str = "MAX";
    const STRPOS: &'static str = "instr";
    fn json_has(column: &str, key: &str) -> String {
        // json_extract maps a JSON null to SQL NULL.
        format!("json_extract({column}, '$.{key}') IS NOT NULL")
    }
    const XACT_LOCK: Option<&'static str> = None;
    const LEASE_LOCK: Option<&'static str> = None;

    runners!(|args, list| args.add(Json(list)));
}

impl Dialect for Postgres {
    fn any(column: &str, n: u32) -> String {
        format!("{column} = ANY(${n})")
    }
    const GREATEST: &'static str = "GREATEST";
    const STRPOS: &'static str = "strpos";
    fn json_has(column: &str, key: &str) -> String {
        // `->` is SQL NULL when the key is absent; a JSON null is not SQL NULL, but
        // SQLite's json_extract maps it to NULL: match that.
        format!("{column}->'{key}' IS NOT NULL AND {column}->'{key}' <> 'null'::jsonb")
    }
    const XACT_LOCK: Option<&'static str> = Some("SELECT pg_advisory_xact_lock($1)");
    const LEASE_LOCK: Option<&'static str> =
        Some("SELECT pg_advisory_xact_lock(hashtextextended('aetherium ip_leases ' || $1, 0))");

    runners!(|args, list| args.add(list));
}

/// A statement being bound: `query(sql).bind(a).bind(b).execute(&pool)`, like sqlx's
/// own, over any [`Dialect`]. A value that fails to encode fails the statement.
pub struct Query<DB: Dialect> {
    sql: SqlStr,
    args: DB::Arguments,
    error: Option<BoxDynError>,
}

/// A statement on `DB`; `$1, $2, …` parameters on both databases.
pub fn query<DB: Dialect>(sql: impl SqlSafeStr) -> Query<DB> {
    Query {
        sql: sql.into_sql_str(),
        args: Default::default(),
        error: None,
    }
}

impl<DB: Dialect> Query<DB> {
    /// Binds `values` in order: a list's filters, shared by its rows and its count.
    pub fn binds(self, values: impl IntoIterator<Item = Arg>) -> Self {
        values.into_iter().fold(self, Query::bind)
    }

    pub fn bind(mut self, value: impl Into<Arg>) -> Self {
        if self.error.is_none()
            && let Err(e) = DB::push(&mut self.args, value.into())
        {
            self.error = Some(e);
        }
        self
    }

    fn parts(self) -> Result<(SqlStr, DB::Arguments), sqlx::Error> {
        match self.error {
            Some(e) => Err(sqlx::Error::Encode(e)),
            None => Ok((self.sql, self.args)),
        }
    }

    /// Runs the statement; returns the rows affected.
    pub async fn execute<'e>(self, on: impl Into<On<'e, DB>>) -> Result<u64, sqlx::Error> {
        let (sql, args) = self.parts()?;
        DB::execute(on.into(), sql, args).await
    }

    pub async fn fetch_all<'e, T: Record>(
        self,
        on: impl Into<On<'e, DB>>,
    ) -> Result<Vec<T>, sqlx::Error> {
        let (sql, args) = self.parts()?;
        DB::fetch_all(on.into(), sql, args).await
    }

    pub async fn fetch_optional<'e, T: Record>(
        self,
        on: impl Into<On<'e, DB>>,
    ) -> Result<Option<T>, sqlx::Error> {
        let (sql, args) = self.parts()?;
        DB::fetch_optional(on.into(), sql, args).await
    }

    pub async fn fetch_one<'e, T: Record>(
        self,
        on: impl Into<On<'e, DB>>,
    ) -> Result<T, sqlx::Error> {
        self.fetch_optional(on)
            .await?
            .ok_or(sqlx::Error::RowNotFound)
    }

    /// The first column of the one row.
    pub async fn scalar<'e, T>(self, on: impl Into<On<'e, DB>>) -> Result<T, sqlx::Error>
    where
        (T,): Record,
    {
        Ok(self.fetch_one::<(T,)>(on).await?.0)
    }

    /// The first column of the row, if there is one.
    pub async fn optional_scalar<'e, T>(
        self,
        on: impl Into<On<'e, DB>>,
    ) -> Result<Option<T>, sqlx::Error>
    where
        (T,): Record,
    {
        Ok(self.fetch_optional::<(T,)>(on).await?.map(|(v,)| v))
    }

    /// The first column of every row.
    pub async fn scalars<'e, T>(self, on: impl Into<On<'e, DB>>) -> Result<Vec<T>, sqlx::Error>
    where
        (T,): Record,
    {
        let rows = self.fetch_all::<(T,)>(on).await?;
        Ok(rows.into_iter().map(|(v,)| v).collect())
    }

    /// The one row as `M`.
    pub async fn one<'e, M: Model>(self, on: impl Into<On<'e, DB>>) -> CoreResult<M> {
        M::from_row(self.fetch_one(on).await?)
    }

    /// The row as `M`, if there is one.
    pub async fn optional<'e, M: Model>(self, on: impl Into<On<'e, DB>>) -> CoreResult<Option<M>> {
        self.fetch_optional(on).await?.map(M::from_row).transpose()
    }

    /// Every row as `M`.
    pub async fn all<'e, M: Model>(self, on: impl Into<On<'e, DB>>) -> CoreResult<Vec<M>> {
        let rows = self.fetch_all(on).await?;
        rows.into_iter().map(M::from_row).collect()
    }
}

#[cfg(test)]
mod tests {
    use sqlx::AssertSqlSafe;

    use super::*;

    /// sqlx's SQLite driver binds `$n` to the n-th value (SQLite alone would take
    /// `$name` parameters by name, in order of first use): reused and out of order,
    /// as the store's statements use them.
    #[tokio::test]
    async fn sqlite_binds_dollar_parameters_by_number() {
        let pool = sqlx::SqlitePool::connect("sqlite::memory:").await.unwrap();
        let row: (i64, String, i64) = query::<Sqlite>("SELECT $2, $1, $2 + 1")
            .bind("a")
            .bind(41)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(row, (41, "a".to_string(), 42));
        let listed: i64 = query::<Sqlite>(AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM (SELECT 'b' AS s UNION ALL SELECT 'z') WHERE {}",
            Sqlite::any("s", 1)
        )))
        .bind(Arg::list(["a", "b"]))
        .scalar(&pool)
        .await
        .unwrap();
        assert_eq!(listed, 1);
    }
}
