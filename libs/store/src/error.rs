//! The errors the use cases return. The gateway maps each kind onto one HTTP status.

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// 400: the request is malformed or asks for something impossible.
    #[error("{0}")]
    InvalidInput(String),
    /// 401: no valid credential.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: a valid credential without the right to do this.
    #[error("{0}")]
    Forbidden(String),
    /// 404
    #[error("{0}")]
    NotFound(String),
    /// 409: the resource is in a state that does not allow this.
    #[error("{0}")]
    Conflict(String),
    /// 409 as well: this VM's backend cannot do that at all (e.g. snapshots of a
    /// container). Not a 5xx: nothing is wrong with the server.
    #[error("{0}")]
    Unsupported(String),
    /// 429: a limit on this client, or on work the server bounds, was reached; try
    /// again later.
    #[error("{0}")]
    TooManyRequests(String),
    /// 503: a dependency (backend, database) is down; try again later.
    #[error("{0}")]
    Unavailable(String),
    /// 500
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for CoreError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => {
                CoreError::Unavailable(format!("database unavailable: {e}"))
            }
            sqlx::Error::Database(ref db)
                if db.code().as_deref().is_some_and(is_unavailable_code) =>
            {
                CoreError::Unavailable(format!("database unavailable: {e}"))
            }
            other => CoreError::Internal(anyhow::Error::new(other).context("database error")),
        }
    }
}

/// PostgreSQL's SQLSTATEs that mean "the server is going away or not there yet", not
/// "this query is wrong": connection exceptions (class 08), shutdowns and start-up
/// (57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot connect now), and too
/// many connections (53300). SQLite never reports these codes.
fn is_unavailable_code(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300")
}

pub type CoreResult<T> = Result<T, CoreError>;
