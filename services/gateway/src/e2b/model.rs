//! E2B's control-plane wire shapes, as the SDKs' generated clients read and write
//! them (Python `e2b/api/client/models`, JS `src/api/schema.gen.ts`). Field names
//! are E2B's, not ours; unknown request fields are ignored, as E2B's API does, so
//! newer SDKs keep working.

use std::collections::BTreeMap;

use aetherium_types::{Vm, VmStatus};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

/// A sandbox's timeout when the create asks for none (E2B's default).
pub const DEFAULT_TIMEOUT_SECONDS: u64 = 300;

/// What `endAt` says of a sandbox without a time to live (made through `/api/v1`).
pub const NO_END: &str = "9999-12-31T23:59:59Z";

/// The key of our VM metadata under which the E2B view of a sandbox is kept.
pub const METADATA_KEY: &str = "e2b";

/// `NewSandboxV2` (`POST /v2/sandboxes`) and `NewSandbox` (`POST /sandboxes`, which
/// adds `secure`; every sandbox here is secured).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewSandbox {
    #[serde(rename = "templateID")]
    pub template_id: String,
    /// Seconds to live from now.
    #[serde(default)]
    pub timeout: Option<u64>,
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub env_vars: Option<BTreeMap<String, String>>,
    /// Pause instead of kill at the timeout: not offered (refused, not ignored).
    #[serde(default)]
    pub auto_pause: Option<bool>,
    #[serde(default, rename = "allow_internet_access")]
    pub allow_internet_access: Option<bool>,
    #[serde(default)]
    pub network: Option<NetworkConfig>,
    #[serde(default)]
    pub secure: Option<bool>,
}

/// `SandboxNetworkConfig`: the parts that map onto a network policy.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkConfig {
    #[serde(default)]
    pub allow_out: Option<Vec<String>>,
    #[serde(default)]
    pub deny_out: Option<Vec<String>>,
}

/// `ConnectSandboxV2` / `ConnectSandbox`.
#[derive(Debug, Default, Deserialize)]
pub struct ConnectSandbox {
    #[serde(default)]
    pub timeout: Option<u64>,
}

/// `SandboxTimeoutRequest`.
#[derive(Debug, Deserialize)]
pub struct TimeoutRequest {
    pub timeout: u64,
}

/// `Sandbox`: the answer to create and connect.
#[derive(Debug, Serialize)]
pub struct Sandbox {
    #[serde(rename = "templateID")]
    pub template_id: String,
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    /// Deprecated by E2B, still required by the SDKs' parsers.
    #[serde(rename = "clientID")]
    pub client_id: String,
    #[serde(rename = "envdVersion")]
    pub envd_version: String,
    #[serde(rename = "envdAccessToken", skip_serializing_if = "Option::is_none")]
    pub envd_access_token: Option<String>,
    pub domain: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
}

/// `ListedSandbox`, and with the detail fields `SandboxDetail` (`GET /sandboxes/{id}`).
#[derive(Debug, Serialize)]
pub struct ListedSandbox {
    #[serde(rename = "templateID")]
    pub template_id: String,
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    #[serde(rename = "clientID")]
    pub client_id: String,
    pub alias: String,
    #[serde(rename = "startedAt")]
    pub started_at: String,
    #[serde(rename = "endAt")]
    pub end_at: String,
    #[serde(rename = "cpuCount")]
    pub cpu_count: u32,
    #[serde(rename = "memoryMB")]
    pub memory_mb: u64,
    #[serde(rename = "diskSizeMB")]
    pub disk_size_mb: u64,
    #[serde(rename = "envdVersion")]
    pub envd_version: String,
    /// `running` or `paused`, nothing else (the SDKs refuse other values).
    pub state: &'static str,
    pub metadata: BTreeMap<String, String>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub detail: Option<Detail>,
}

/// What `SandboxDetail` adds to `ListedSandbox`.
#[derive(Debug, Serialize)]
pub struct Detail {
    #[serde(rename = "envdAccessToken", skip_serializing_if = "Option::is_none")]
    pub envd_access_token: Option<String>,
    pub domain: Option<String>,
    #[serde(rename = "allowInternetAccess")]
    pub allow_internet_access: bool,
    pub lifecycle: Lifecycle,
}

#[derive(Debug, Serialize)]
pub struct Lifecycle {
    #[serde(rename = "autoResume")]
    pub auto_resume: bool,
    /// Always `kill`: a sandbox whose time runs out is deleted.
    #[serde(rename = "onTimeout")]
    pub on_timeout: &'static str,
}

/// `SandboxMetric`.
#[derive(Debug, Serialize)]
pub struct SandboxMetric {
    pub timestamp: String,
    #[serde(rename = "timestampUnix")]
    pub timestamp_unix: i64,
    #[serde(rename = "cpuCount")]
    pub cpu_count: u32,
    #[serde(rename = "cpuUsedPct")]
    pub cpu_used_pct: f64,
    #[serde(rename = "memUsed")]
    pub mem_used: u64,
    #[serde(rename = "memTotal")]
    pub mem_total: u64,
    #[serde(rename = "memCache")]
    pub mem_cache: u64,
    #[serde(rename = "diskUsed")]
    pub disk_used: u64,
    #[serde(rename = "diskTotal")]
    pub disk_total: u64,
}

/// Whether E2B's API shows the VM: from the moment it is recorded until a delete
/// starts (a stopped or failed VM is "killed" to an SDK).
pub fn is_visible(vm: &Vm) -> bool {
    matches!(
        vm.status,
        VmStatus::Created | VmStatus::Starting | VmStatus::Running | VmStatus::Paused
    )
}

/// `running` or `paused`.
pub fn state_of(vm: &Vm) -> &'static str {
    if vm.status == VmStatus::Paused {
        "paused"
    } else {
        "running"
    }
}

/// The template a sandbox was made from: the one its E2B create named, else its
/// image (VMs made through `/api/v1`).
pub fn template_of(vm: &Vm) -> String {
    vm.metadata
        .get(METADATA_KEY)
        .and_then(|e| e.get("template"))
        .and_then(|t| t.as_str())
        .map_or_else(|| vm.image.clone(), str::to_string)
}

/// E2B's metadata of a sandbox (string to string): what its E2B create gave, else
/// the string entries of its metadata.
pub fn metadata_of(vm: &Vm) -> BTreeMap<String, String> {
    let from_e2b = vm
        .metadata
        .get(METADATA_KEY)
        .and_then(|e| e.get("metadata"))
        .and_then(|m| m.as_object());
    let source = from_e2b.unwrap_or(&vm.metadata);
    source
        .iter()
        .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
        .collect()
}

/// RFC 3339 with milliseconds and `Z`, as E2B writes times.
pub fn time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The listing of `vm`, without the detail fields.
pub fn listed(vm: &Vm) -> ListedSandbox {
    ListedSandbox {
        template_id: template_of(vm),
        sandbox_id: vm.id.clone(),
        client_id: client_id(vm),
        alias: vm.name.clone(),
        started_at: time(vm.started_at.unwrap_or(vm.created_at)),
        end_at: vm.expires_at.map_or_else(|| NO_END.to_string(), time),
        cpu_count: vm.vcpu_count,
        memory_mb: vm.memory_mb,
        disk_size_mb: vm.disk_mb.unwrap_or(0),
        envd_version: aetherium_types::agent::ENVD_COMPAT_VERSION.to_string(),
        state: state_of(vm),
        metadata: metadata_of(vm),
        detail: None,
    }
}

/// E2B's `clientID` names the node a sandbox runs on: our worker.
pub fn client_id(vm: &Vm) -> String {
    vm.worker_id.clone().unwrap_or_else(|| "aetherium".into())
}

/// `?metadata=` of the list routes: one value holding `k=v&k2=v2`, each key and
/// value percent-encoded (the SDKs encode them, then the query string once more).
pub fn parse_metadata_filter(text: &str) -> Result<BTreeMap<String, String>, String> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(text)
        .map_err(|e| format!("metadata {text:?} is not k=v&k2=v2: {e}"))?;
    let decode = |part: &str| {
        percent_encoding::percent_decode_str(part)
            .decode_utf8()
            .map(|d| d.into_owned())
            .map_err(|e| format!("metadata {text:?}: {e}"))
    };
    let mut filter = BTreeMap::new();
    for (k, v) in pairs {
        let key = decode(&k)?;
        if key.is_empty() {
            return Err(format!("metadata {text:?} has an empty key"));
        }
        filter.insert(key, decode(&v)?);
    }
    Ok(filter)
}

/// `?state=running,paused` (absent: both).
pub fn parse_states(text: Option<&str>) -> Result<Vec<&'static str>, String> {
    let Some(text) = text.filter(|t| !t.is_empty()) else {
        return Ok(vec!["running", "paused"]);
    };
    text.split(',')
        .map(|s| match s.trim() {
            "running" => Ok("running"),
            "paused" => Ok("paused"),
            other => Err(format!("state {other:?} is neither running nor paused")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metadata_filter_is_decoded_once_more_per_key_and_value() {
        // {"a": "1", "b/c": "x&y=z w"}: each key and value percent-encoded, the pairs
        // form-encoded (the query layer has taken off the outermost encoding).
        let filter = parse_metadata_filter("a=1&b%252Fc=x%2526y%253Dz%2520w").unwrap();
        assert_eq!(filter["a"], "1");
        assert_eq!(filter["b/c"], "x&y=z w");
        // A `+` the SDK encoded stays a plus.
        assert_eq!(parse_metadata_filter("k=1%252B1").unwrap()["k"], "1+1");
        assert!(parse_metadata_filter("=1").is_err());
    }

    #[test]
    fn states_are_running_or_paused_only() {
        assert_eq!(parse_states(None).unwrap(), ["running", "paused"]);
        assert_eq!(parse_states(Some("paused")).unwrap(), ["paused"]);
        assert!(parse_states(Some("RUNNING")).is_err());
    }
}
