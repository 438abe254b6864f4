//! The harness of the store conformance suites (`store_conformance*.rs`): a store
//! under test on SQLite or on a real PostgreSQL of its own, and `conformance!`, which
//! runs each case on both.
#![allow(dead_code, clippy::unwrap_used)]

use aetherium_core::store::Database;
use aetherium_testkit::postgres::TempPostgres;

/// A store under test and what keeps it alive (its temp dir or server).
pub struct Subject {
    pub db: Database,
    pub sqlite_dir: Option<tempfile::TempDir>,
    pub pg: Option<TempPostgres>,
}

impl Subject {
    pub async fn sqlite() -> Subject {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("conformance.db").display());
        let db = aetherium_core::store::connect(&url).await.unwrap();
        assert!(matches!(db, Database::Sqlite(_)));
        Subject {
            db,
            sqlite_dir: Some(dir),
            pg: None,
        }
    }

    pub async fn postgres() -> Subject {
        let pg = tokio::task::spawn_blocking(TempPostgres::start)
            .await
            .unwrap()
            .unwrap();
        let db = aetherium_core::store::connect(&pg.url()).await.unwrap();
        assert!(matches!(db, Database::Postgres(_)));
        Subject {
            db,
            sqlite_dir: None,
            pg: Some(pg),
        }
    }
}

/// Runs `$name(subject)` once per store, as `$name::sqlite` and `$name::postgres`.
#[macro_export]
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::conformance::Subject::sqlite().await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name($crate::conformance::Subject::postgres().await).await;
            }
        }
    )*};
}
