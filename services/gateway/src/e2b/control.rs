//! E2B's control plane (`/e2b/...`): create, connect, list, inspect, kill, time
//! out, pause and measure sandboxes, translated to the core's VM use cases. An E2B
//! sandbox is an ordinary VM: its id is the VM's, its template an image or an
//! environment, its timeout the VM's time to live.

use std::collections::BTreeMap;
use std::time::Duration;

use aetherium_core::CoreError;
use aetherium_types::{CreateVmRequest, Egress, NetworkPolicy, Principal, Role, Vm, VmStatus};
use axum::Extension;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use http::{HeaderMap, HeaderValue, StatusCode};
use serde::Deserialize;

use super::model::{self, ConnectSandbox, NewSandbox, TimeoutRequest};
use crate::AppState;
use crate::error::ApiError;
use crate::extract::{Json, Path, Query};

type E2bResult = Result<Response, ApiError>;

/// The template every E2B SDK names when its caller names none: the configured
/// default image.
pub const BASE_TEMPLATE: &str = "base";

/// Largest page of `GET /v2/sandboxes` (E2B's limit).
const MAX_PAGE: usize = 100;

fn not_found(id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("sandbox {id} not found"))
}

/// The VM behind a sandbox id, if E2B's API may show it.
async fn visible_vm(state: &AppState, id: &str) -> Result<Vm, ApiError> {
    match state.platform.get_vm(id).await {
        Ok(vm) if model::is_visible(&vm) => Ok(vm),
        Ok(_) | Err(CoreError::NotFound(_)) => Err(not_found(id)),
        Err(e) => Err(e.into()),
    }
}

/// What a create asks of the platform: the template's image and sizes, the
/// request's variables, time to live and network, and the E2B view in metadata.
async fn vm_request(state: &AppState, new: &NewSandbox) -> Result<CreateVmRequest, ApiError> {
    if new.auto_pause == Some(true) {
        return Err(ApiError::bad_request(
            "autoPause is not supported: a sandbox is killed when its timeout ends",
        ));
    }
    let timeout = new.timeout.unwrap_or(model::DEFAULT_TIMEOUT_SECONDS);
    aetherium_types::validate_ttl_seconds(timeout)
        .map_err(|e| ApiError::bad_request(e.replace("ttl_seconds", "timeout")))?;
    let mut req = CreateVmRequest {
        ttl_seconds: Some(timeout),
        ..CreateVmRequest::default()
    };
    let template = new.template_id.trim();
    if template != BASE_TEMPLATE {
        // An environment stands for a template: its image, sizes, tools, variables
        // and network policy.
        let env = match state.platform.get_environment(template).await {
            Ok(env) => env,
            Err(CoreError::NotFound(_)) => {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!(
                        "template '{template}' not found: use '{BASE_TEMPLATE}' or the name of an environment"
                    ),
                ));
            }
            Err(e) => return Err(e.into()),
        };
        req.image = env.image.clone();
        req.vcpus = Some(env.vcpus);
        req.memory_mb = Some(env.memory_mb);
        req.additional_tools = env.tools.clone();
        req.env = env.env_vars.clone();
        req.network_policy = env.network_policy.clone();
    }
    req.env.extend(new.env_vars.clone().unwrap_or_default());
    if new.allow_internet_access == Some(false) {
        req.network_policy = Some(NetworkPolicy {
            egress: Egress::Deny,
            ..NetworkPolicy::default()
        });
    }
    if let Some(network) = &new.network {
        let policy = req
            .network_policy
            .get_or_insert_with(NetworkPolicy::default);
        if let Some(allow) = &network.allow_out {
            policy.allow.extend(allow.iter().cloned());
        }
        if let Some(deny) = &network.deny_out {
            policy.deny.extend(deny.iter().cloned());
        }
    }
    let metadata = new.metadata.clone().unwrap_or_default();
    let view = serde_json::json!({"template": template, "metadata": metadata});
    req.metadata.insert(model::METADATA_KEY.into(), view);
    Ok(req)
}

/// `POST /v2/sandboxes` and `POST /sandboxes`: makes the sandbox and answers once
/// its agent answers (201), as E2B does. A sandbox that fails to start is removed.
pub async fn create(
    State(state): State<AppState>,
    Extension(by): Extension<Principal>,
    Json(new): Json<NewSandbox>,
) -> E2bResult {
    let req = vm_request(&state, &new).await?;
    let (vm, _task) = state.platform.create_vm(&req, Some(&by)).await?;
    let settled = state
        .platform
        .wait_vm_status(&vm.id, &[VmStatus::Running], state.max_wait)
        .await;
    let failure = match settled {
        Ok(vm) if vm.status == VmStatus::Running => {
            let body = sandbox(&state, &vm).await?;
            return Ok((StatusCode::CREATED, axum::Json(body)).into_response());
        }
        Ok(vm) => match vm.error {
            Some(error) => format!("the sandbox failed to start: {error}"),
            None => format!(
                "the sandbox did not start within {} s",
                state.max_wait.as_secs()
            ),
        },
        Err(e) => format!("the sandbox did not start: {e}"),
    };
    // Nothing half-made stays behind.
    let _ = state.platform.delete_vm(&vm.id).await;
    Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, failure))
}

/// `Sandbox` for a running VM, with the token its agent takes.
async fn sandbox(state: &AppState, vm: &Vm) -> Result<model::Sandbox, ApiError> {
    Ok(model::Sandbox {
        template_id: model::template_of(vm),
        sandbox_id: vm.id.clone(),
        client_id: model::client_id(vm),
        envd_version: aetherium_types::agent::ENVD_COMPAT_VERSION.to_string(),
        envd_access_token: envd_token(state, vm).await?,
        domain: state.e2b_domain.clone(),
        alias: Some(vm.name.clone()),
    })
}

/// The `X-Access-Token` the sandbox's agent takes through the envd relay.
async fn envd_token(state: &AppState, vm: &Vm) -> Result<Option<String>, ApiError> {
    let (_, agent) = state.platform.open_sandbox(&vm.id).await?;
    Ok(agent.access_token().map(str::to_string))
}

/// `POST /v2/sandboxes/{id}/connect` and `POST /sandboxes/{id}/connect`: 200 for a
/// running sandbox (whose timeout only grows), 201 once a paused one runs again.
pub async fn connect(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> E2bResult {
    // The body is optional (older SDKs send none).
    let body: ConnectSandbox = if body.iter().all(u8::is_ascii_whitespace) {
        ConnectSandbox::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))?
    };
    let timeout = body.timeout.unwrap_or(model::DEFAULT_TIMEOUT_SECONDS);
    aetherium_types::validate_ttl_seconds(timeout)
        .map_err(|e| ApiError::bad_request(e.replace("ttl_seconds", "timeout")))?;
    let mut vm = visible_vm(&state, &id).await?;
    let mut status = StatusCode::OK;
    if vm.status == VmStatus::Paused {
        state.platform.resume_vm(&id).await?;
        vm = state
            .platform
            .wait_vm_status(&id, &[VmStatus::Running], state.max_wait)
            .await?;
        status = StatusCode::CREATED;
    } else if matches!(vm.status, VmStatus::Created | VmStatus::Starting) {
        vm = state
            .platform
            .wait_vm_status(&id, &[VmStatus::Running], state.max_wait)
            .await?;
    }
    if vm.status != VmStatus::Running {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("sandbox {id} is {}: it cannot be connected to", vm.status),
        ));
    }
    // A resumed sandbox gets the timeout afresh; a running one keeps the later end.
    let wanted = Utc::now() + chrono::Duration::seconds(timeout as i64);
    let extend = status == StatusCode::CREATED || vm.expires_at.is_some_and(|at| at < wanted);
    if extend {
        vm = state.platform.set_vm_ttl(&id, Some(timeout)).await?;
    }
    let body = sandbox(&state, &vm).await?;
    Ok((status, axum::Json(body)).into_response())
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    metadata: Option<String>,
    state: Option<String>,
    limit: Option<usize>,
    #[serde(rename = "nextToken")]
    next_token: Option<String>,
    order: Option<String>,
    template: Option<String>,
    #[serde(rename = "startedAfter")]
    started_after: Option<String>,
}

/// Every sandbox E2B's API shows, newest first, narrowed by `q`'s filters.
async fn listed(state: &AppState, q: &ListQuery, states: &[&str]) -> Result<Vec<Vm>, ApiError> {
    let started_after = match q.started_after.as_deref().filter(|t| !t.is_empty()) {
        Some(text) => Some(
            chrono::DateTime::parse_from_rfc3339(text)
                .map_err(|e| {
                    ApiError::bad_request(format!("startedAfter {text:?} is not RFC 3339: {e}"))
                })?
                .with_timezone(&Utc),
        ),
        None => None,
    };
    let template = q.template.as_deref().filter(|t| !t.is_empty());
    let filter = match q.metadata.as_deref() {
        Some(text) if !text.is_empty() => {
            model::parse_metadata_filter(text).map_err(ApiError::bad_request)?
        }
        _ => BTreeMap::new(),
    };
    let mut vms = state.platform.all_vms().await?;
    vms.retain(|vm| {
        model::is_visible(vm)
            && states.contains(&model::state_of(vm))
            && template.is_none_or(|t| model::template_of(vm) == t)
            && started_after.is_none_or(|after| vm.started_at.unwrap_or(vm.created_at) >= after)
            && {
                let have = model::metadata_of(vm);
                filter.iter().all(|(k, v)| have.get(k) == Some(v))
            }
    });
    vms.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
    Ok(vms)
}

/// `GET /v2/sandboxes`: a page (`limit`, 1 to 100) of sandboxes; `X-Next-Token`
/// names the next page when there is one.
pub async fn list_v2(State(state): State<AppState>, Query(q): Query<ListQuery>) -> E2bResult {
    let states = model::parse_states(q.state.as_deref()).map_err(ApiError::bad_request)?;
    let limit = q.limit.unwrap_or(MAX_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_PAGE}"
        )));
    }
    let mut vms = listed(&state, &q, &states).await?;
    match q.order.as_deref() {
        None | Some("desc") => {}
        Some("asc") => vms.reverse(),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "order {other:?} is neither asc nor desc"
            )));
        }
    }
    // The token is the id of the last sandbox of the page before.
    let start = match q.next_token.as_deref().filter(|t| !t.is_empty()) {
        None => 0,
        Some(token) => match vms.iter().position(|vm| vm.id == token) {
            Some(i) => i + 1,
            None => {
                return Err(ApiError::bad_request(format!(
                    "nextToken {token:?} names no listed sandbox (it was killed meanwhile, or the token is wrong): list from the start"
                )));
            }
        },
    };
    let page: Vec<_> = vms.iter().skip(start).take(limit).collect();
    let more = start + page.len() < vms.len();
    let mut headers = HeaderMap::new();
    if more && let Some(last) = page.last() {
        headers.insert(
            "x-next-token",
            HeaderValue::from_str(&last.id).map_err(|e| CoreError::Internal(e.into()))?,
        );
    }
    let body: Vec<_> = page.into_iter().map(model::listed).collect();
    Ok((headers, axum::Json(body)).into_response())
}

/// `GET /sandboxes` (older SDKs): every running sandbox, filtered by `metadata`.
pub async fn list_v1(State(state): State<AppState>, Query(q): Query<ListQuery>) -> E2bResult {
    let vms = listed(&state, &q, &["running", "paused"]).await?;
    let body: Vec<_> = vms.iter().map(model::listed).collect();
    Ok(axum::Json(body).into_response())
}

/// `GET /sandboxes/{id}`: `SandboxDetail`. The access token only for roles that
/// may run commands.
pub async fn get(
    State(state): State<AppState>,
    Extension(by): Extension<Principal>,
    Path(id): Path<String>,
) -> E2bResult {
    let vm = visible_vm(&state, &id).await?;
    let token = if by.role.allows(Role::Operator) && vm.status == VmStatus::Running {
        envd_token(&state, &vm).await.ok().flatten()
    } else {
        None
    };
    let mut body = model::listed(&vm);
    body.detail = Some(model::Detail {
        envd_access_token: token,
        domain: state.e2b_domain.clone(),
        allow_internet_access: vm
            .network_policy
            .as_ref()
            .is_none_or(|p| p.egress != Egress::Deny),
        lifecycle: model::Lifecycle {
            auto_resume: false,
            on_timeout: "kill",
        },
    });
    Ok(axum::Json(body).into_response())
}

/// `DELETE /sandboxes/{id}`: 204 once the sandbox is gone, 404 when it is unknown
/// or already being killed.
pub async fn kill(State(state): State<AppState>, Path(id): Path<String>) -> E2bResult {
    let task = match state.platform.delete_vm(&id).await {
        Ok(task) => task,
        Err(CoreError::NotFound(_) | CoreError::Conflict(_)) => return Err(not_found(&id)),
        Err(e) => return Err(e.into()),
    };
    // E2B's kill returns once the sandbox is gone; so does this one (or at the wait
    // limit, with the removal still under way).
    let _ = state
        .platform
        .wait_task_finished(&task.id, state.max_wait)
        .await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /sandboxes/{id}/timeout`: the sandbox ends `timeout` seconds from now.
pub async fn set_timeout(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(req): Json<TimeoutRequest>,
) -> E2bResult {
    aetherium_types::validate_ttl_seconds(req.timeout)
        .map_err(|e| ApiError::bad_request(e.replace("ttl_seconds", "timeout")))?;
    visible_vm(&state, &id).await?;
    state.platform.set_vm_ttl(&id, Some(req.timeout)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /sandboxes/{id}/pause`: 204 once paused, 409 when it already is. A paused
/// sandbox does not time out; connecting resumes it with a fresh timeout.
pub async fn pause(State(state): State<AppState>, Path(id): Path<String>) -> E2bResult {
    let vm = visible_vm(&state, &id).await?;
    if vm.status == VmStatus::Paused {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("sandbox {id} is already paused"),
        ));
    }
    state.platform.pause_vm(&id).await?;
    let vm = state
        .platform
        .wait_vm_status(&id, &[VmStatus::Paused], state.max_wait)
        .await?;
    if vm.status != VmStatus::Paused {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "sandbox {id} did not pause: it is {}{}",
                vm.status,
                vm.error.map(|e| format!(" ({e})")).unwrap_or_default()
            ),
        ));
    }
    state.platform.set_vm_ttl(&id, None).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize)]
pub struct MetricsQuery {
    start: Option<i64>,
    end: Option<i64>,
}

/// `GET /sandboxes/{id}/metrics`: what a running sandbox uses now, from its agent
/// (one sample within `start`..`end`, unix seconds); none while it is paused.
pub async fn metrics(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<MetricsQuery>,
) -> E2bResult {
    let vm = visible_vm(&state, &id).await?;
    if vm.status != VmStatus::Running {
        return Ok(axum::Json(Vec::<model::SandboxMetric>::new()).into_response());
    }
    let (_, agent) = state.platform.open_sandbox(&id).await?;
    let usage = tokio::time::timeout(Duration::from_secs(10), agent.usage())
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                format!("sandbox {id}'s agent did not report its usage within 10 s"),
            )
        })?
        .map_err(|e| CoreError::Unavailable(format!("sandbox {id}'s agent: {e}")))?;
    let inside = q.start.is_none_or(|s| usage.ts >= s) && q.end.is_none_or(|e| usage.ts <= e);
    let at = chrono::DateTime::from_timestamp(usage.ts, 0).unwrap_or_else(Utc::now);
    let samples: Vec<_> = inside
        .then(|| model::SandboxMetric {
            timestamp: model::time(at),
            timestamp_unix: usage.ts,
            cpu_count: usage.cpu_count,
            cpu_used_pct: usage.cpu_used_pct,
            mem_used: usage.mem_used,
            mem_total: usage.mem_total,
            mem_cache: 0,
            disk_used: usage.disk_used,
            disk_total: usage.disk_total,
        })
        .into_iter()
        .collect();
    Ok(axum::Json(samples).into_response())
}
