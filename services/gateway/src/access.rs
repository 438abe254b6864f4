//! Who may call what: the role each route needs, in one table. The auth middleware
//! looks the matched route up here; a route missing from the table is refused, so a
//! new route cannot go out unprotected by accident (a test checks the table against
//! the router).

use aetherium_types::Role;
use http::Method;

/// `(method, route template as axum matches it, least role)`.
pub const ROUTE_ROLES: &[(Method, &str, Role)] = &[
    // Sandboxes
    (Method::GET, "/api/v1/vms", Role::Viewer),
    (Method::POST, "/api/v1/vms", Role::Operator),
    (Method::GET, "/api/v1/vms/{id}", Role::Viewer),
    (Method::DELETE, "/api/v1/vms/{id}", Role::Operator),
    (Method::POST, "/api/v1/vms/{id}/pause", Role::Operator),
    (Method::POST, "/api/v1/vms/{id}/resume", Role::Operator),
    (Method::POST, "/api/v1/vms/{id}/snapshot", Role::Operator),
    (
        Method::PUT,
        "/api/v1/vms/{id}/network-policy",
        Role::Operator,
    ),
    (Method::POST, "/api/v1/vms/{id}/execute", Role::Operator),
    (Method::GET, "/api/v1/vms/{id}/executions", Role::Viewer),
    (Method::POST, "/api/v1/vms/{id}/exec/stream", Role::Operator),
    (Method::GET, "/api/v1/vms/{id}/exec/ws", Role::Operator),
    (Method::GET, "/api/v1/vms/{id}/files", Role::Operator),
    (Method::PUT, "/api/v1/vms/{id}/files", Role::Operator),
    (Method::GET, "/api/v1/vms/{id}/files/stat", Role::Viewer),
    (Method::GET, "/api/v1/executions/{id}", Role::Viewer),
    (Method::POST, "/api/v1/smart-execute", Role::Operator),
    // Tasks and queue
    (Method::GET, "/api/v1/tasks", Role::Viewer),
    (Method::GET, "/api/v1/tasks/{id}", Role::Viewer),
    (Method::GET, "/api/v1/queue/stats", Role::Viewer),
    (Method::GET, "/api/v1/queue/history", Role::Viewer),
    (Method::POST, "/api/v1/tasks/{id}/cancel", Role::Operator),
    // Archived (dead) tasks only
    (Method::POST, "/api/v1/tasks/{id}/retry", Role::Operator),
    (Method::DELETE, "/api/v1/tasks/{id}", Role::Operator),
    // Workers and the cluster: reading is viewing, drain/activate administration
    (Method::POST, "/api/v1/environments", Role::Operator),
    (Method::GET, "/api/v1/environments", Role::Viewer),
    (Method::GET, "/api/v1/environments/{id}", Role::Viewer),
    (Method::PUT, "/api/v1/environments/{id}", Role::Operator),
    (Method::DELETE, "/api/v1/environments/{id}", Role::Operator),
    // Secret metadata names what a team keeps secret: operators only.
    (Method::POST, "/api/v1/secrets", Role::Operator),
    (Method::GET, "/api/v1/secrets", Role::Operator),
    (Method::DELETE, "/api/v1/secrets/{id}", Role::Operator),
    // Workspaces: reading is viewing; prompts, secrets and the session operate
    (Method::POST, "/api/v1/workspaces", Role::Operator),
    (Method::GET, "/api/v1/workspaces", Role::Viewer),
    (Method::GET, "/api/v1/workspaces/{id}", Role::Viewer),
    (Method::DELETE, "/api/v1/workspaces/{id}", Role::Operator),
    (Method::GET, "/api/v1/workspaces/{id}/steps", Role::Viewer),
    (
        Method::POST,
        "/api/v1/workspaces/{id}/prompts",
        Role::Operator,
    ),
    (Method::GET, "/api/v1/workspaces/{id}/prompts", Role::Viewer),
    (
        Method::GET,
        "/api/v1/workspaces/{id}/prompts/{prompt_id}",
        Role::Viewer,
    ),
    (
        Method::POST,
        "/api/v1/workspaces/{id}/prompts/{prompt_id}/cancel",
        Role::Operator,
    ),
    (
        Method::POST,
        "/api/v1/workspaces/{id}/secrets",
        Role::Operator,
    ),
    (
        Method::GET,
        "/api/v1/workspaces/{id}/secrets",
        Role::Operator,
    ),
    (
        Method::DELETE,
        "/api/v1/workspaces/{id}/secrets/{secret_id}",
        Role::Operator,
    ),
    (
        Method::GET,
        "/api/v1/workspaces/{id}/session",
        Role::Operator,
    ),
    (Method::GET, "/api/v1/workers", Role::Viewer),
    (Method::GET, "/api/v1/workers/{id}", Role::Viewer),
    (Method::GET, "/api/v1/workers/{id}/vms", Role::Viewer),
    (Method::POST, "/api/v1/workers/{id}/drain", Role::Admin),
    (Method::POST, "/api/v1/workers/{id}/activate", Role::Admin),
    (Method::GET, "/api/v1/cluster/stats", Role::Viewer),
    (Method::GET, "/api/v1/cluster/distribution", Role::Viewer),
    // Live events and the platform's own logs
    (Method::GET, "/api/v1/events", Role::Viewer),
    (Method::POST, "/api/v1/logs/query", Role::Viewer),
    (Method::GET, "/api/v1/logs/stream", Role::Viewer),
    // Accounts and access (login itself needs no key)
    (Method::POST, "/api/v1/auth/logout", Role::Viewer),
    (Method::GET, "/api/v1/auth/me", Role::Viewer),
    (Method::GET, "/api/v1/api-keys", Role::Admin),
    (Method::POST, "/api/v1/api-keys", Role::Admin),
    (Method::GET, "/api/v1/api-keys/{id}", Role::Admin),
    (Method::PATCH, "/api/v1/api-keys/{id}", Role::Admin),
    (Method::POST, "/api/v1/api-keys/{id}/revoke", Role::Admin),
    (Method::GET, "/api/v1/users", Role::Admin),
    (Method::POST, "/api/v1/users", Role::Admin),
    (Method::GET, "/api/v1/users/{id}", Role::Admin),
    (Method::PATCH, "/api/v1/users/{id}", Role::Admin),
    (Method::DELETE, "/api/v1/users/{id}", Role::Admin),
    (Method::GET, "/api/v1/audit", Role::Admin),
    // Operations (health and readiness need no key)
    (Method::GET, "/metrics", Role::Viewer),
    (Method::GET, "/api/v1/metrics", Role::Viewer),
];

/// The E2B control plane's routes (`/e2b`, E2B's API rather than ours, so not in
/// `/api/v1`'s OpenAPI): the same roles as the VM routes they stand for. Connect
/// hands out the sandbox's access token, so it needs what running commands needs.
pub const E2B_ROUTE_ROLES: &[(Method, &str, Role)] = &[
    (Method::POST, "/e2b/v2/sandboxes", Role::Operator),
    (Method::GET, "/e2b/v2/sandboxes", Role::Viewer),
    (Method::POST, "/e2b/sandboxes", Role::Operator),
    (Method::GET, "/e2b/sandboxes", Role::Viewer),
    (Method::GET, "/e2b/sandboxes/{id}", Role::Viewer),
    (Method::DELETE, "/e2b/sandboxes/{id}", Role::Operator),
    (
        Method::POST,
        "/e2b/v2/sandboxes/{id}/connect",
        Role::Operator,
    ),
    (Method::POST, "/e2b/sandboxes/{id}/connect", Role::Operator),
    (Method::POST, "/e2b/sandboxes/{id}/timeout", Role::Operator),
    (Method::POST, "/e2b/sandboxes/{id}/pause", Role::Operator),
    (Method::GET, "/e2b/sandboxes/{id}/metrics", Role::Viewer),
];

/// The least role for `method` on the route template `path`; `None` when the route is
/// in neither table (refused).
pub fn required_role(method: &Method, path: &str) -> Option<Role> {
    // HEAD is answered by GET handlers and needs what GET needs.
    let method = if method == Method::HEAD {
        &Method::GET
    } else {
        method
    };
    ROUTE_ROLES
        .iter()
        .chain(E2B_ROUTE_ROLES)
        .find(|(m, p, _)| m == method && *p == path)
        .map(|(_, _, role)| *role)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_use_method_and_template() {
        assert_eq!(
            required_role(&Method::GET, "/api/v1/vms/{id}"),
            Some(Role::Viewer)
        );
        assert_eq!(
            required_role(&Method::DELETE, "/api/v1/vms/{id}"),
            Some(Role::Operator)
        );
        assert_eq!(
            required_role(&Method::HEAD, "/api/v1/vms"),
            Some(Role::Viewer)
        );
        assert_eq!(required_role(&Method::PATCH, "/api/v1/vms/{id}"), None);
        assert_eq!(required_role(&Method::GET, "/api/v1/nope"), None);
    }

    #[test]
    fn no_route_is_listed_twice() {
        for (i, (m, p, _)) in ROUTE_ROLES.iter().enumerate() {
            assert!(
                !ROUTE_ROLES[i + 1..]
                    .iter()
                    .any(|(m2, p2, _)| m2 == m && p2 == p),
                "{m} {p} listed twice"
            );
        }
    }
}
