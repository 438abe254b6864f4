//! A thin client for Firecracker's HTTP API on its unix socket: typed bodies for
//! exactly the calls we make, named as in Firecracker's swagger (v1.12). One HTTP/1.1
//! connection per call — the API socket is local and calls are few.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE, HOST};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Deadline of an ordinary call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of snapshot calls, which write or read the whole guest memory.
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound on response bodies (the largest we read is `GET /vm/config`).
const MAX_RESPONSE_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Firecracker refused the request; `fault_message` is its own words.
    #[error("firecracker refused {method} {path} ({status}): {fault_message}")]
    Fault {
        method: Method,
        path: String,
        status: StatusCode,
        fault_message: String,
    },
    /// The socket is missing, refuses connections, or the call timed out.
    #[error("firecracker API unavailable ({method} {path}): {reason}")]
    Unavailable {
        method: Method,
        path: String,
        reason: String,
    },
    /// An answer we cannot read.
    #[error("firecracker API {method} {path}: {reason}")]
    Protocol {
        method: Method,
        path: String,
        reason: String,
    },
}

impl ApiError {
    /// Firecracker's own message for a refused request.
    pub fn fault_message(&self) -> Option<&str> {
        match self {
            ApiError::Fault { fault_message, .. } => Some(fault_message),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootSource {
    pub kernel_image_path: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineConfiguration {
    pub vcpu_count: u32,
    pub mem_size_mib: u64,
    pub smt: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drive {
    pub drive_id: String,
    pub path_on_host: PathBuf,
    pub is_root_device: bool,
    pub is_read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInterface {
    pub iface_id: String,
    pub host_dev_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vsock {
    pub guest_cid: u32,
    pub uds_path: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogLevel {
    Error,
    Warning,
    Info,
    Debug,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Logger {
    pub log_path: PathBuf,
    pub level: LogLevel,
    pub show_level: bool,
    pub show_log_origin: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metrics {
    pub metrics_path: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionType {
    InstanceStart,
    SendCtrlAltDel,
    FlushMetrics,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceActionInfo {
    pub action_type: ActionType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    Paused,
    Resumed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vm {
    pub state: VmState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotType {
    Full,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotCreateParams {
    pub snapshot_type: SnapshotType,
    pub snapshot_path: PathBuf,
    pub mem_file_path: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemoryBackendType {
    File,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryBackend {
    pub backend_type: MemoryBackendType,
    pub backend_path: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotLoadParams {
    pub snapshot_path: PathBuf,
    pub mem_backend: MemoryBackend,
    pub resume_vm: bool,
}

/// The instance's state as `GET /` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstanceState {
    #[serde(rename = "Not started")]
    NotStarted,
    Running,
    Paused,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    pub id: String,
    pub state: InstanceState,
    pub vmm_version: String,
}

/// The part of `GET /vm/config` (swagger: FullVmConfiguration) we configure; lets
/// callers check what Firecracker really took.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FullVmConfiguration {
    #[serde(rename = "boot-source")]
    pub boot_source: Option<BootSource>,
    #[serde(rename = "machine-config")]
    pub machine_config: Option<MachineConfiguration>,
    #[serde(default)]
    pub drives: Vec<Drive>,
    #[serde(rename = "network-interfaces", default)]
    pub network_interfaces: Vec<NetworkInterface>,
    pub vsock: Option<Vsock>,
}

#[derive(Debug, Deserialize)]
struct Fault {
    fault_message: String,
}

/// The API of one Firecracker process.
#[derive(Debug, Clone)]
pub struct FirecrackerApi {
    socket: PathBuf,
}

impl FirecrackerApi {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        FirecrackerApi {
            socket: socket.into(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub async fn put_boot_source(&self, body: &BootSource) -> Result<(), ApiError> {
        self.put("/boot-source", body).await
    }

    pub async fn put_machine_config(&self, body: &MachineConfiguration) -> Result<(), ApiError> {
        self.put("/machine-config", body).await
    }

    pub async fn put_drive(&self, body: &Drive) -> Result<(), ApiError> {
        self.put(&format!("/drives/{}", body.drive_id), body).await
    }

    pub async fn put_network_interface(&self, body: &NetworkInterface) -> Result<(), ApiError> {
        self.put(&format!("/network-interfaces/{}", body.iface_id), body)
            .await
    }

    pub async fn put_vsock(&self, body: &Vsock) -> Result<(), ApiError> {
        self.put("/vsock", body).await
    }

    pub async fn put_logger(&self, body: &Logger) -> Result<(), ApiError> {
        self.put("/logger", body).await
    }

    pub async fn put_metrics(&self, body: &Metrics) -> Result<(), ApiError> {
        self.put("/metrics", body).await
    }

    pub async fn action(&self, action_type: ActionType) -> Result<(), ApiError> {
        self.put("/actions", &InstanceActionInfo { action_type })
            .await
    }

    pub async fn patch_vm(&self, state: VmState) -> Result<(), ApiError> {
        self.call(Method::PATCH, "/vm", Some(&Vm { state }), CALL_TIMEOUT)
            .await
            .map(drop)
    }

    pub async fn create_snapshot(&self, body: &SnapshotCreateParams) -> Result<(), ApiError> {
        self.call(
            Method::PUT,
            "/snapshot/create",
            Some(body),
            SNAPSHOT_TIMEOUT,
        )
        .await
        .map(drop)
    }

    pub async fn load_snapshot(&self, body: &SnapshotLoadParams) -> Result<(), ApiError> {
        self.call(Method::PUT, "/snapshot/load", Some(body), SNAPSHOT_TIMEOUT)
            .await
            .map(drop)
    }

    pub async fn instance_info(&self) -> Result<InstanceInfo, ApiError> {
        self.get("/").await
    }

    pub async fn vm_config(&self) -> Result<FullVmConfiguration, ApiError> {
        self.get("/vm/config").await
    }

    async fn put<T: Serialize>(&self, path: &str, body: &T) -> Result<(), ApiError> {
        self.call(Method::PUT, path, Some(body), CALL_TIMEOUT)
            .await
            .map(drop)
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiError> {
        let body = self
            .call::<()>(Method::GET, path, None, CALL_TIMEOUT)
            .await?;
        serde_json::from_slice(&body).map_err(|e| ApiError::Protocol {
            method: Method::GET,
            path: path.to_string(),
            reason: format!("unreadable answer: {e}"),
        })
    }

    /// One request on a fresh connection; the answer's body on success.
    async fn call<T: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&T>,
        timeout: Duration,
    ) -> Result<Bytes, ApiError> {
        let unavailable = |reason: String| ApiError::Unavailable {
            method: method.clone(),
            path: path.to_string(),
            reason,
        };
        match tokio::time::timeout(timeout, self.exchange(&method, path, body)).await {
            Ok(result) => result,
            Err(_) => Err(unavailable(format!("no answer within {timeout:?}"))),
        }
    }

    async fn exchange<T: Serialize>(
        &self,
        method: &Method,
        path: &str,
        body: Option<&T>,
    ) -> Result<Bytes, ApiError> {
        let unavailable = |reason: String| ApiError::Unavailable {
            method: method.clone(),
            path: path.to_string(),
            reason,
        };
        let protocol = |reason: String| ApiError::Protocol {
            method: method.clone(),
            path: path.to_string(),
            reason,
        };
        let payload = match body {
            Some(body) => serde_json::to_vec(body)
                .map_err(|e| protocol(format!("encoding the request: {e}")))?,
            None => Vec::new(),
        };
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|e| unavailable(format!("{}: {e}", self.socket.display())))?;
        let (mut sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let driver = tokio::spawn(async move {
            // Errors surface through the request below.
            let _ = conn.await;
        });
        let mut request = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(HOST, "localhost")
            .header(ACCEPT, "application/json");
        if body.is_some() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(payload)))
            .map_err(|e| protocol(format!("building the request: {e}")))?;
        let result = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| unavailable(e.to_string()))?;
            let status = response.status();
            let bytes = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| protocol(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok((status, bytes))
        }
        .await;
        driver.abort();
        let (status, bytes) = result?;
        if status.is_success() {
            return Ok(bytes);
        }
        let fault_message = serde_json::from_slice::<Fault>(&bytes)
            .map(|f| f.fault_message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).trim().to_string());
        Err(ApiError::Fault {
            method: method.clone(),
            path: path.to_string(),
            status,
            fault_message,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_use_the_swagger_names() {
        let load = SnapshotLoadParams {
            snapshot_path: "/s/vmstate".into(),
            mem_backend: MemoryBackend {
                backend_type: MemoryBackendType::File,
                backend_path: "/s/mem".into(),
            },
            resume_vm: false,
        };
        assert_eq!(
            serde_json::to_value(&load).unwrap(),
            serde_json::json!({"snapshot_path": "/s/vmstate",
                "mem_backend": {"backend_type": "File", "backend_path": "/s/mem"},
                "resume_vm": false})
        );
        let info: InstanceInfo = serde_json::from_str(
            r#"{"id":"a","state":"Not started","vmm_version":"1.12.1","app_name":"Firecracker"}"#,
        )
        .unwrap();
        assert_eq!(info.state, InstanceState::NotStarted);
    }

    #[tokio::test]
    async fn a_missing_socket_is_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let api = FirecrackerApi::new(dir.path().join("api.sock"));
        let err = api.instance_info().await.unwrap_err();
        assert!(matches!(err, ApiError::Unavailable { .. }), "{err}");
    }
}
