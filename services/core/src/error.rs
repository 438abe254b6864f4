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
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                CoreError::Unavailable(format!("database unavailable: {e}"))
            }
            other => CoreError::Internal(anyhow::Error::new(other).context("database error")),
        }
    }
}

pub type CoreResult<T> = Result<T, CoreError>;
