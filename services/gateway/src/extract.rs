//! Extractors whose rejections use the API's error shape instead of axum's plain text.

use std::time::Duration;

use axum::extract::{FromRequest, FromRequestParts};
use serde::Deserialize;

use crate::error::ApiError;

#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

impl<T: serde::Serialize> axum::response::IntoResponse for Json<T> {
    fn into_response(self) -> axum::response::Response {
        axum::Json(self.0).into_response()
    }
}

#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

/// `?wait=30s`: block until the work is done (or this long), instead of polling.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    pub wait: Option<String>,
}

/// Parses `30s`, `500ms`, `2m` or a bare number of seconds.
pub fn parse_wait(text: &str, max: Duration) -> Result<Duration, ApiError> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| ApiError::bad_request(format!("wait {text:?} is not a duration like 30s")))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        _ => {
            return Err(ApiError::bad_request(format!(
                "wait {text:?}: unit must be ms, s or m"
            )));
        }
    };
    if d > max {
        return Err(ApiError::bad_request(format!(
            "wait may be at most {}s",
            max.as_secs()
        )));
    }
    Ok(d)
}

impl WaitQuery {
    pub fn duration(&self, max: Duration) -> Result<Option<Duration>, ApiError> {
        self.wait.as_deref().map(|w| parse_wait(w, max)).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_durations() {
        let max = Duration::from_secs(600);
        assert_eq!(parse_wait("30s", max).ok(), Some(Duration::from_secs(30)));
        assert_eq!(
            parse_wait("250ms", max).ok(),
            Some(Duration::from_millis(250))
        );
        assert_eq!(parse_wait("2m", max).ok(), Some(Duration::from_secs(120)));
        assert_eq!(parse_wait("5", max).ok(), Some(Duration::from_secs(5)));
        assert!(parse_wait("soon", max).is_err());
        assert!(parse_wait("5h", max).is_err());
        assert!(parse_wait("11m", max).is_err());
    }
}
