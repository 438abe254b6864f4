//! The API's contract: an OpenAPI 3.1 document generated from the handlers'
//! `#[utoipa::path]` annotations and the types' `ToSchema` derives, served at
//! `GET /api/v1/openapi.json`, browsable at `GET /api/v1/docs` (Swagger UI, served
//! from the binary: no CDN).
//!
//! What every route shares is added here rather than on each handler, from the
//! same tables the server uses: the bearer security requirement, the least role
//! (`x-required-role`, from [`crate::access::ROUTE_ROLES`]) with the 401 and 403 it
//! implies, and the 400/413/415 of query, path and JSON-body parsing. A test checks
//! that the spec's operations are exactly the access table's plus the public routes.

use std::sync::OnceLock;

use aetherium_types::ErrorResponse;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, Method, header};
use utoipa::OpenApi;
use utoipa::openapi::extensions::ExtensionsBuilder;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};

use crate::access::ROUTE_ROLES;
use crate::routes;

/// Where the spec and the docs page are served (public, like `/health`).
pub const SPEC_PATH: &str = "/api/v1/openapi.json";
pub const DOCS_PATH: &str = "/api/v1/docs";

/// The routes that need no token, as `(method, path)`; everything else is in
/// [`ROUTE_ROLES`].
pub const PUBLIC_ROUTES: &[(Method, &str)] = &[
    (Method::GET, "/health"),
    (Method::GET, "/api/v1/health"),
    (Method::GET, "/ready"),
    (Method::GET, "/api/v1/ready"),
    (Method::POST, "/api/v1/auth/login"),
    (Method::GET, SPEC_PATH),
    (Method::GET, DOCS_PATH),
];

/// Routes served at the root too, as `(root path, API path)`: the same handler, so
/// the same operation.
const ROOT_ALIASES: &[(&str, &str)] = &[
    ("/health", "/api/v1/health"),
    ("/ready", "/api/v1/ready"),
    ("/metrics", "/api/v1/metrics"),
];

/// Name of the bearer security scheme in `components.securitySchemes`.
const BEARER: &str = "bearer";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Aetherium API",
        description = "Disposable, isolated sandboxes on your own hardware. Every route but the health, spec and docs routes needs `Authorization: Bearer <token>` (an API key or a session token). Errors are always `{error, message, code}` (`ErrorResponse`). Request bodies are `application/json`, at most 1 MiB, without unknown fields (file uploads excepted). Calls that queue work answer 202 at once; `?wait=30s` blocks until the work is done (200) or the wait runs out (202).",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        routes::health,
        routes::create_vm,
        routes::list_vms,
        routes::get_vm,
        routes::delete_vm,
        routes::pause_vm,
        routes::resume_vm,
        routes::snapshot_vm,
        routes::set_network_policy,
        routes::execute,
        routes::list_executions,
        routes::get_execution,
        routes::stream::exec_stream,
        routes::ws::exec_ws,
        routes::files::upload,
        routes::files::download,
        routes::files::stat,
        routes::smart_execute,
        routes::list_tasks,
        routes::get_task,
        routes::queue_stats,
        routes::ops::cancel_task,
        routes::ops::retry_task,
        routes::ops::delete_task,
        routes::ops::queue_history,
        routes::ops::ready,
        crate::metrics::render,
        routes::events::stream_events,
        routes::logs::query_logs,
        routes::logs::stream_logs,
        routes::admin::login,
        routes::admin::logout,
        routes::admin::me,
        routes::admin::create_api_key,
        routes::admin::list_api_keys,
        routes::admin::get_api_key,
        routes::admin::update_api_key,
        routes::admin::revoke_api_key,
        routes::admin::create_user,
        routes::admin::list_users,
        routes::admin::get_user,
        routes::admin::update_user,
        routes::admin::delete_user,
        routes::admin::list_audit,
        routes::environments::create_environment,
        routes::environments::list_environments,
        routes::environments::get_environment,
        routes::environments::update_environment,
        routes::environments::delete_environment,
        routes::environments::put_global_secret,
        routes::environments::list_global_secrets,
        routes::environments::delete_global_secret,
        routes::workspaces::create_workspace,
        routes::workspaces::list_workspaces,
        routes::workspaces::get_workspace,
        routes::workspaces::delete_workspace,
        routes::workspaces::list_steps,
        routes::workspaces::submit_prompt,
        routes::workspaces::list_prompts,
        routes::workspaces::get_prompt,
        routes::workspaces::cancel_prompt,
        routes::workspaces::put_secret,
        routes::workspaces::list_secrets,
        routes::workspaces::delete_secret,
        routes::workspaces::session,
        routes::workers::list_workers,
        routes::workers::get_worker,
        routes::workers::list_worker_vms,
        routes::workers::drain_worker,
        routes::workers::activate_worker,
        routes::workers::cluster_stats,
        routes::workers::cluster_distribution,
    ),
    components(schemas(ErrorResponse, aetherium_types::Role)),
    tags(
        (name = "vms", description = "Sandboxes"),
        (name = "executions", description = "Commands in sandboxes: queued, streamed, interactive"),
        (name = "files", description = "Files in and out of sandboxes"),
        (name = "tasks", description = "The persisted task queue"),
        (name = "health", description = "Liveness, the spec and its docs (no auth)"),
        (name = "operations", description = "Readiness and metrics"),
        (name = "events", description = "Live platform events"),
        (name = "logs", description = "The platform's own logs"),
        (name = "auth", description = "Sessions, API keys, users and the audit log"),
        (name = "workers", description = "Workers, placement and the cluster's capacity"),
        (name = "environments", description = "Workspace templates and secrets (values are write-only)"),
        (name = "workspaces", description = "Workspaces for coding agents: preparation, prompts, their secrets and the live session"),
    ),
)]
struct ApiDoc;

/// The spec, built once.
pub fn spec() -> &'static utoipa::openapi::OpenApi {
    static SPEC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    SPEC.get_or_init(build)
}

/// The spec as served (JSON text), built once.
pub fn spec_json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        serde_json::to_string(spec()).unwrap_or_else(|e| {
            // Serializing plain data does not fail; if it ever does, say so in the body.
            format!(r#"{{"error":"cannot serialize the OpenAPI document: {e}"}}"#)
        })
    })
}

/// `GET /api/v1/openapi.json`.
pub async fn openapi_json() -> Response {
    let mut response = spec_json().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// `GET /api/v1/docs`: Swagger UI from the binary, reading [`SPEC_PATH`].
pub fn docs_router<S: Clone + Send + Sync + 'static>() -> axum::Router<S> {
    let config = utoipa_swagger_ui::Config::from(SPEC_PATH)
        .try_it_out_enabled(true)
        .persist_authorization(true);
    utoipa_swagger_ui::SwaggerUi::new(DOCS_PATH)
        .config(config)
        .into()
}

fn error_response(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorResponse")))
                .build(),
        )
        .build()
}

/// Adds `status` to the operation's responses unless it declares its own.
fn add_error(op: &mut Operation, status: u16, description: &str) {
    op.responses
        .responses
        .entry(status.to_string())
        .or_insert_with(|| error_response(description).into());
}

fn operations_mut(item: &mut PathItem) -> Vec<(Method, &mut Operation)> {
    let mut ops = Vec::new();
    if let Some(op) = item.get.as_mut() {
        ops.push((Method::GET, op));
    }
    if let Some(op) = item.put.as_mut() {
        ops.push((Method::PUT, op));
    }
    if let Some(op) = item.post.as_mut() {
        ops.push((Method::POST, op));
    }
    if let Some(op) = item.delete.as_mut() {
        ops.push((Method::DELETE, op));
    }
    if let Some(op) = item.patch.as_mut() {
        ops.push((Method::PATCH, op));
    }
    ops
}

/// Every `(method, path)` the spec documents.
pub fn operations(spec: &utoipa::openapi::OpenApi) -> Vec<(Method, String)> {
    let mut out = Vec::new();
    for (path, item) in &spec.paths.paths {
        let mut item = item.clone();
        for (method, _) in operations_mut(&mut item) {
            out.push((method, path.clone()));
        }
    }
    out
}

fn build() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();

    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        BEARER,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "An API key or a session token, as `Authorization: Bearer <token>`.",
                ))
                .build(),
        ),
    );

    for (path, item) in doc.paths.paths.iter_mut() {
        for (method, op) in operations_mut(item) {
            let role = ROUTE_ROLES
                .iter()
                .find(|(m, p, _)| *m == method && p == path)
                .map(|(_, _, role)| *role);
            let has_query = op.parameters.iter().flatten().any(|p| match p {
                utoipa::openapi::RefOr::T(p) => {
                    !matches!(p.parameter_in, utoipa::openapi::path::ParameterIn::Header)
                }
                utoipa::openapi::RefOr::Ref(_) => true,
            });
            if has_query {
                add_error(op, 400, "A malformed or invalid parameter");
            }
            let json_body = op.request_body.as_ref().is_some_and(|b| match b {
                utoipa::openapi::RefOr::T(b) => b.content.contains_key("application/json"),
                utoipa::openapi::RefOr::Ref(_) => true,
            });
            if json_body {
                add_error(
                    op,
                    400,
                    "Malformed JSON, an unknown or mistyped field, or an invalid value",
                );
                add_error(op, 413, "The body is over 1 MiB");
                add_error(op, 415, "The body is not `application/json`");
            }
            match role {
                Some(role) => {
                    op.security =
                        Some(vec![SecurityRequirement::new(BEARER, Vec::<String>::new())]);
                    add_error(op, 401, "Missing, invalid, expired or revoked token");
                    add_too_many_requests(op);
                    if !crate::timeout::is_streaming(path) {
                        add_error(
                            op,
                            504,
                            "The request took longer than `server.request_timeout_seconds`",
                        );
                    }
                    add_error(
                        op,
                        403,
                        &format!("The caller's role is below `{role}`, the least this route needs"),
                    );
                    let ext = ExtensionsBuilder::new()
                        .add("x-required-role", role.as_str())
                        .build();
                    op.extensions
                        .get_or_insert_with(Default::default)
                        .merge(ext);
                }
                None => {
                    // Public: an empty requirement says no authentication.
                    op.security = Some(vec![SecurityRequirement::default()]);
                }
            }
        }
    }
    // The WebSocket routes: marked, so fuzzers and clients can tell them apart.
    for ws_path in [
        "/api/v1/vms/{id}/exec/ws",
        "/api/v1/workspaces/{id}/session",
    ] {
        if let Some(op) = doc
            .paths
            .paths
            .get_mut(ws_path)
            .and_then(|item| item.get.as_mut())
        {
            let ext = ExtensionsBuilder::new().add("x-websocket", true).build();
            op.extensions
                .get_or_insert_with(Default::default)
                .merge(ext);
        }
    }

    for (root, api) in ROOT_ALIASES {
        if let Some(mut item) = doc.paths.paths.get(*api).cloned() {
            for (_, op) in operations_mut(&mut item) {
                op.operation_id = op.operation_id.take().map(|id| format!("{id}_root"));
            }
            doc.paths.paths.insert((*root).into(), item);
        }
    }
    restrict_request_strings(&mut doc);
    doc.paths.paths.insert(SPEC_PATH.into(), spec_path_item());
    doc.paths.paths.insert(DOCS_PATH.into(), docs_path_item());
    doc
}

/// 429 with `Retry-After`: every authenticated route is rate limited per key.
fn add_too_many_requests(op: &mut Operation) {
    let mut response =
        error_response("Over the caller's request rate; retry after `Retry-After` seconds");
    response.headers.insert(
        "Retry-After".into(),
        utoipa::openapi::HeaderBuilder::new()
            .schema(Some(
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::Integer)
                    .minimum(Some(1)),
            ))
            .description(Some("Seconds until a request is allowed again"))
            .build()
            .into(),
    );
    op.responses
        .responses
        .entry("429".into())
        .or_insert_with(|| response.into());
}

/// What the server refuses in requests and that derives cannot say: environment
/// variable names must be non-empty without `=` or NUL, arguments without NUL; and
/// one narrowing for fuzzers, a new VM's backend (see below).
fn restrict_request_strings(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::schema::{ArrayItems, Schema, Type};
    use utoipa::openapi::{ObjectBuilder, RefOr};
    let Some(components) = doc.components.as_mut() else {
        return;
    };
    // Fuzzers get `docker` only: on their Docker-only hosts a microVM backend is a
    // 503 (no live worker offers it), not a client error (a VM's `orchestrator` in
    // answers keeps the full enum).
    if let Some(RefOr::T(Schema::Object(request))) = components.schemas.get_mut("CreateVmRequest") {
        request.properties.insert(
            "orchestrator".into(),
            ObjectBuilder::new()
                .schema_type(utoipa::openapi::schema::SchemaType::from_iter([
                    Type::String,
                    Type::Null,
                ]))
                .enum_values(Some([serde_json::json!("docker"), serde_json::Value::Null]))
                .description(Some(
                    "Backend (`docker`, `qemu` or `firecracker`); the configured default when omitted. Listed here as `docker` only: schema-driven fuzzing runs on Docker-only hosts, where a microVM backend is a 503 (docs/api.md).",
                ))
                .into(),
        );
    }
    // Placement labels: bounded count, keys without spaces or `=`, short values.
    if let Some(RefOr::T(Schema::Object(placement))) = components.schemas.get_mut("Placement") {
        placement.properties.insert(
            "labels".into(),
            ObjectBuilder::new()
                .schema_type(Type::Object)
                .max_properties(Some(aetherium_types::worker::MAX_PLACEMENT_LABELS))
                .property_names(Some(
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .max_length(Some(128))
                        .pattern(Some(aetherium_types::worker::LABEL_KEY_PATTERN))
                        .build(),
                ))
                .additional_properties(Some(utoipa::openapi::schema::AdditionalProperties::RefOr(
                    RefOr::T(Schema::Object(
                        ObjectBuilder::new()
                            .schema_type(Type::String)
                            .max_length(Some(256))
                            .build(),
                    )),
                )))
                .description(Some(
                    "Only workers carrying every one of these labels with these values.",
                ))
                .into(),
        );
    }
    for name in ["ExecuteCommandRequest", "SmartExecuteRequest"] {
        let Some(RefOr::T(Schema::Object(request))) = components.schemas.get_mut(name) else {
            continue;
        };
        if let Some(RefOr::T(Schema::Object(env))) = request.properties.get_mut("env") {
            env.property_names = Some(Box::new(Schema::Object(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(r"^[^=\x00]+$"))
                    .build(),
            )));
        }
        if let Some(RefOr::T(Schema::Array(args))) = request.properties.get_mut("args")
            && let ArrayItems::RefOrSchema(item) = &mut args.items
            && let RefOr::T(Schema::Object(item)) = item.as_mut()
        {
            item.pattern = Some(r"^[^\x00]*$".into());
        }
    }
    // Network policy entries: IPv4 addresses, CIDRs or domain names, as the validator reads them.
    if let Some(RefOr::T(Schema::Object(policy))) = components.schemas.get_mut("NetworkPolicy") {
        for list in ["allow", "deny"] {
            if let Some(RefOr::T(Schema::Array(entries))) = policy.properties.get_mut(list)
                && let ArrayItems::RefOrSchema(item) = &mut entries.items
                && let RefOr::T(Schema::Object(item)) = item.as_mut()
            {
                item.pattern = Some(aetherium_types::vm::ENTRY_PATTERN.into());
                item.max_length = Some(aetherium_types::vm::MAX_NAME_LEN);
            }
        }
    }
}

fn public_get(summary: &str, description: &str, content_type: &str, schema: bool) -> PathItem {
    let mut content = ContentBuilder::new();
    if schema {
        content = content.schema(Some(
            utoipa::openapi::ObjectBuilder::new()
                .schema_type(utoipa::openapi::schema::Type::Object)
                .build(),
        ));
    }
    let mut op = Operation::new();
    op.tags = Some(vec!["health".into()]);
    op.summary = Some(summary.into());
    op.description = Some(description.into());
    op.security = Some(vec![SecurityRequirement::default()]);
    op.responses.responses.insert(
        "200".into(),
        ResponseBuilder::new()
            .description(summary)
            .content(content_type, content.build())
            .build()
            .into(),
    );
    let mut item = PathItem::default();
    item.get = Some(op);
    item
}

fn spec_path_item() -> PathItem {
    let mut item = public_get(
        "This OpenAPI 3.1 document",
        "The API's contract, generated from the code (no auth).",
        "application/json",
        true,
    );
    if let Some(op) = item.get.as_mut() {
        op.operation_id = Some("openapi_json".into());
    }
    item
}

fn docs_path_item() -> PathItem {
    let mut item = public_get(
        "The API's docs page",
        "Swagger UI for this document, served from the binary (no CDN, works offline). `/api/v1/docs` redirects to `/api/v1/docs/`.",
        "text/html",
        false,
    );
    if let Some(op) = item.get.as_mut() {
        op.operation_id = Some("docs".into());
        op.responses.responses.insert(
            "303".into(),
            ResponseBuilder::new()
                .description("Redirect to `/api/v1/docs/`")
                .build()
                .into(),
        );
    }
    item
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_builds_and_names_every_route_once() {
        let ops = operations(spec());
        for (m, p, _) in ROUTE_ROLES {
            assert!(
                ops.iter().any(|(om, op)| om == m && op == p),
                "{m} {p} is missing from the spec"
            );
        }
        assert!(spec_json().starts_with('{'));
    }
}
