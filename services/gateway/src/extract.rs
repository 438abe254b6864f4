//! Extractors whose rejections use the API's error shape instead of axum's plain text.

use std::time::Duration;

use axum::extract::{FromRequest, FromRequestParts, Request};
use serde::Deserialize;

use crate::error::ApiError;

/// Path parameters, with the API's error shape for a segment that is not UTF-8 or
/// not the expected type (axum's own answers plain text).
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

/// A JSON request body (or response). Bodies must be JSON objects: serde would
/// otherwise take `[null, null]` as a struct's fields in order.
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        // Content type, size and syntax as axum checks them (415, 413, 400).
        let axum::Json(mut value) =
            axum::Json::<serde_json::Value>::from_request(request, state).await?;
        if !value.is_object() {
            return Err(ApiError::bad_request(format!(
                "the request body must be a JSON object, not {}",
                json_kind(&value)
            )));
        }
        integral_floats_to_integers(&mut value);
        serde_path_to_error::deserialize(value)
            .map(Json)
            .map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner();
                ApiError::bad_request(if path == "." {
                    format!("invalid request body: {inner}")
                } else {
                    format!("invalid request body: {path}: {inner}")
                })
            })
    }
}

/// `128.0` is an integer to JSON (and JSON Schema), though serde will not read it
/// into a `u64`: whole floats become integers before the body is read into its type.
fn integral_floats_to_integers(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Number(n) => {
            if let Some(f) = n.as_f64().filter(|_| n.is_f64())
                && f.fract() == 0.0
            {
                if f >= 0.0 && f < u64::MAX as f64 {
                    *n = serde_json::Number::from(f as u64);
                } else if f < 0.0 && f >= i64::MIN as f64 {
                    *n = serde_json::Number::from(f as i64);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(integral_floats_to_integers),
        serde_json::Value::Object(map) => map.values_mut().for_each(integral_floats_to_integers),
        _ => {}
    }
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

impl<T: serde::Serialize> axum::response::IntoResponse for Json<T> {
    fn into_response(self) -> axum::response::Response {
        axum::Json(self.0).into_response()
    }
}

/// Query parameters. A parameter whose percent-decoded bytes are not UTF-8 is a 400:
/// axum (as any form decoder) would replace them with U+FFFD and go on with another
/// value than the one sent — another file path, say.
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        if let Some(raw) = parts.uri.query() {
            query_is_utf8(raw).map_err(ApiError::bad_request)?;
        }
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| Query(value))
            .map_err(ApiError::from)
    }
}

/// Checks that every key and value of a raw query decodes (`%XX`, `+`) to UTF-8.
fn query_is_utf8(raw: &str) -> Result<(), String> {
    for part in raw.split('&').flat_map(|pair| pair.split('=')) {
        let bytes = part.as_bytes();
        let mut decoded = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            match bytes[i] {
                b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        decoded.push((h * 16 + l) as u8);
                        i += 3;
                        continue;
                    }
                    _ => decoded.push(b'%'),
                },
                b'+' => decoded.push(b' '),
                b => decoded.push(b),
            }
            i += 1;
        }
        if std::str::from_utf8(&decoded).is_err() {
            return Err(format!(
                "query parameter {part:?} does not decode to UTF-8: percent-encode UTF-8 bytes only"
            ));
        }
    }
    Ok(())
}

/// `?wait=30s`: block until the work is done (or this long), instead of polling.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// Block until the work is done, at most this long: `500ms`, `30s`, `2m` or bare
    /// seconds, at most the server's `max_wait_seconds` (600 by default, which the
    /// pattern spells out; longer is a 400). Without it the call answers 202 at once.
    #[param(
        pattern = r"^0*([0-9]{1,5}|[0-5][0-9]{5}|600000)ms$|^0*([0-9]{1,2}|[0-5][0-9]{2}|600)s?$|^0*([0-9]|10)m$"
    )]
    pub wait: Option<String>,
}

/// Parses `30s`, `500ms`, `2m` or a bare number of seconds.
pub fn parse_wait(text: &str, max: Duration) -> Result<Duration, ApiError> {
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
    fn queries_must_decode_to_utf8() {
        assert!(query_is_utf8("path=%2Ftmp%2Fa+b&wait=30s").is_ok());
        assert!(query_is_utf8("path=/tmp/%C3%A9t%C3%A9").is_ok());
        assert!(
            query_is_utf8("path=/100%").is_ok(),
            "a lone % stays as it is"
        );
        assert!(query_is_utf8("path=/tmp/%FF").is_err());
        assert!(query_is_utf8("path=/tmp/%C3").is_err());
        assert!(query_is_utf8("%FE=1").is_err());
    }

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
