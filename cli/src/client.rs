//! The CLI's API client: where it connects, with which token, and how API errors
//! read.

use aetherium_types::ErrorResponse;
use anyhow::{Context as _, anyhow};
use serde::de::DeserializeOwned;

use crate::ClientOpts;

pub(crate) struct Client {
    pub(crate) http: reqwest::Client,
    pub(crate) base: String,
    pub(crate) token: String,
}

/// The URL used when neither `--url`, `AETHERIUM_URL` nor `aetherium login` gave one.
pub(crate) const DEFAULT_URL: &str = "http://127.0.0.1:8080";

/// The bootstrap admin key `aetherium up` keeps in its data dir, for the CLI on the
/// same host.
fn local_admin_key() -> Option<String> {
    let path = aetherium_common::config::default_data_dir().join("admin-token");
    std::fs::read_to_string(path)
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

impl Client {
    /// URL: `--url`/`AETHERIUM_URL`, else the one `aetherium login` saved, else
    /// [`DEFAULT_URL`]. Key: `--token`/`AETHERIUM_TOKEN`, else the saved login (for
    /// its URL), else the local bootstrap admin key.
    pub(crate) fn new(opts: &ClientOpts) -> anyhow::Result<Client> {
        let saved = crate::credentials::Credentials::load()?;
        let base = opts
            .url
            .clone()
            .or_else(|| saved.as_ref().map(|c| c.url.clone()))
            .unwrap_or_else(|| DEFAULT_URL.to_string())
            .trim_end_matches('/')
            .to_string();
        let token = opts
            .token
            .clone()
            .or_else(|| {
                saved
                    .filter(|c| c.url.trim_end_matches('/') == base)
                    .map(|c| c.token)
            })
            .or_else(local_admin_key)
            .ok_or_else(|| {
                anyhow!(
                    "no API key for {base}: run `aetherium login`, or set AETHERIUM_TOKEN / --token"
                )
            })?;
        Client::with(base, token)
    }

    pub(crate) fn with(base: String, token: String) -> anyhow::Result<Client> {
        Ok(Client {
            http: reqwest::Client::builder()
                .build()
                .context("cannot build the HTTP client")?,
            base,
            token,
        })
    }

    pub(crate) async fn send<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<T> {
        let url = format!("{}/api/v1{path}", self.base);
        let mut request = self.request(method, path);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = self.execute(request).await?;
        let bytes = response.bytes().await.context("reading the response")?;
        serde_json::from_slice(&bytes).with_context(|| format!("unexpected response from {url}"))
    }

    /// A request to `/api/v1{path}` with the token.
    pub(crate) fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}/api/v1{path}", self.base))
            .bearer_auth(&self.token)
    }

    /// Sends a request; a non-2xx answer becomes an error carrying the API's message.
    pub(crate) async fn execute(
        &self,
        request: reqwest::RequestBuilder,
    ) -> anyhow::Result<reqwest::Response> {
        let response = request.send().await.map_err(|e| {
            anyhow!(
                "cannot reach aetherium at {}: {e} (is `aetherium up` running?)",
                self.base
            )
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let bytes = response.bytes().await.context("reading the response")?;
        Err(api_error(status, &bytes))
    }

    pub(crate) async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(reqwest::Method::GET, path, None).await
    }
}

/// The API's `{error, message, code}` as an error, or the raw body if it is not one.
pub(crate) fn api_error(status: reqwest::StatusCode, body: &[u8]) -> anyhow::Error {
    match serde_json::from_slice::<ErrorResponse>(body) {
        Ok(e) => anyhow!("{} ({} {})", e.message, e.code, e.error),
        Err(_) => anyhow!("HTTP {status}: {}", String::from_utf8_lossy(body)),
    }
}

/// Percent-encodes a path segment or query value (ids and names are plain, but be safe).
pub(crate) fn seg(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
