//! Who is calling: roles and the authenticated principal.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What a caller may do. Ordered: every role can do what the roles below it can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read-only: list and inspect everything but keys, users and the audit log.
    Viewer,
    /// Create, run and delete sandboxes; submit and cancel tasks.
    Operator,
    /// Everything, including API keys, users and the audit log.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// Whether this role includes everything `required` may do.
    pub fn allows(self, required: Role) -> bool {
        self >= required
    }
}

wire_names!(Role, "role");

/// How a principal proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum PrincipalKind {
    ApiKey,
    Session,
}

/// The authenticated caller of a request (put into the request's extensions by the
/// gateway's auth middleware; recorded in the audit log).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Principal {
    /// The API key's id or the user's id.
    pub id: String,
    /// The key's name or the user's name, for people reading the audit log.
    pub name: String,
    pub kind: PrincipalKind,
    pub role: Role,
    /// An API key's or user's quota (what the sandboxes it creates may take at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<KeyQuota>,
}

impl Principal {
    /// Whose quota it is, as refusals name it: "this API key" or "this user".
    pub fn quota_holder(&self) -> &'static str {
        match self.kind {
            PrincipalKind::ApiKey => "this API key",
            PrincipalKind::Session => "this user",
        }
    }
}

/// What the live sandboxes (not STOPPED or FAILED) an API key, or a user's
/// sessions, created may take at once, and what they may reach; each limit left
/// out is not limited. A create over one is a 429 naming it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct KeyQuota {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 100000))]
    pub max_vms: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 1000000))]
    pub max_vcpus: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 1073741824))]
    pub max_memory_mb: Option<u64>,
    /// Commands (queued, streamed or interactive) the key may have unfinished at
    /// once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 100000))]
    pub max_concurrent_executions: Option<u32>,
    /// The network policy of every sandbox the key creates. The key can neither ask
    /// for another (403) nor change it on a running sandbox; an environment's
    /// policy gives way to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy: Option<crate::NetworkPolicy>,
}

impl KeyQuota {
    pub fn validate(&self) -> Result<(), String> {
        self.normalized().map(drop)
    }

    /// The quota as stored: every limit in range, its network policy checked and in
    /// CIDR form.
    pub fn normalized(&self) -> Result<KeyQuota, String> {
        let checks: [(&str, Option<u64>, u64); 4] = [
            ("max_vms", self.max_vms.map(u64::from), 100_000),
            (
                "max_concurrent_executions",
                self.max_concurrent_executions.map(u64::from),
                100_000,
            ),
            ("max_vcpus", self.max_vcpus.map(u64::from), 1_000_000),
            ("max_memory_mb", self.max_memory_mb, 1024 * 1024 * 1024),
        ];
        for (name, value, max) in checks {
            if value.is_some_and(|v| v > max) {
                return Err(format!("quota.{name} must be at most {max}"));
            }
        }
        let network_policy = match &self.network_policy {
            Some(policy) => Some(policy.normalized().map_err(|e| format!("quota.{e}"))?),
            None => None,
        };
        Ok(KeyQuota {
            network_policy,
            ..self.clone()
        })
    }

    /// The first limit that live usage `(vms, vcpus, memory_mb)` passes, as a
    /// sentence for the caller (`holder`: whose quota, [`Principal::quota_holder`]);
    /// `None` when within every limit.
    pub fn exceeded_by(
        &self,
        holder: &str,
        vms: u32,
        vcpus: u64,
        memory_mb: u64,
    ) -> Option<String> {
        let checks = [
            (
                "max_vms",
                "sandboxes",
                self.max_vms.map(u64::from),
                u64::from(vms),
            ),
            ("max_vcpus", "vCPUs", self.max_vcpus.map(u64::from), vcpus),
            (
                "max_memory_mb",
                "MiB of memory",
                self.max_memory_mb,
                memory_mb,
            ),
        ];
        checks.into_iter().find_map(|(name, what, limit, used)| {
            let limit = limit?;
            (used > limit).then(|| {
                format!(
                    "{holder}'s quota is {limit} {what} at once ({name}); this sandbox would make {used}: delete a sandbox or ask an admin to raise the quota"
                )
            })
        })
    }

    /// Why `unfinished` executions (the new one included) pass the quota, as a
    /// sentence for the caller; `None` when within it.
    pub fn executions_exceeded_by(&self, holder: &str, unfinished: u64) -> Option<String> {
        let limit = self.max_concurrent_executions?;
        (unfinished > u64::from(limit)).then(|| {
            format!(
                "{holder}'s quota is {limit} commands running at once (max_concurrent_executions); this one would make {unfinished}: wait for one to end or ask an admin to raise the quota"
            )
        })
    }
}

/// An API key as the API shows it: never the key itself, nor its hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    /// The key's first characters, to tell keys apart (`ak_1a2b3c4d…`).
    pub prefix: String,
    pub role: Role,
    /// Who created it (a principal's name).
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// Updated at most once a minute.
    pub last_used_at: Option<DateTime<Utc>>,
    /// Requests per second this key may make; `None`: the server's default.
    pub rate_limit_per_second: Option<u32>,
    /// What its sandboxes may take at once; `None`: not limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<KeyQuota>,
}

/// `PATCH /api-keys/{id}`: sets (or with `null` removes) a key's quota.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UpdateApiKeyRequest {
    /// The new quota; `null` removes it. Required: a change that names nothing is
    /// refused rather than read as "remove".
    #[serde(deserialize_with = "crate::api::object_only")]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub quota: Option<KeyQuota>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateApiKeyRequest {
    #[cfg_attr(feature = "openapi", schema(pattern = r"^[A-Za-z0-9._@-]{1,64}$"))]
    pub name: String,
    pub role: Role,
    /// Lifetime in seconds; none: the key does not expire.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 60, maximum = 315360000))]
    pub expires_in_seconds: Option<u64>,
    /// Requests per second; none: the server's default.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 100000))]
    pub rate_limit_per_second: Option<u32>,
    /// What the sandboxes this key creates may take at once; none: not limited.
    #[serde(default, deserialize_with = "crate::api::object_only")]
    pub quota: Option<KeyQuota>,
}

/// Longest key lifetime one may ask for: ten years.
pub const MAX_API_KEY_LIFETIME_SECONDS: u64 = 10 * 365 * 24 * 3600;
/// Highest per-key rate limit one may ask for.
pub const MAX_RATE_LIMIT_PER_SECOND: u32 = 100_000;

impl CreateApiKeyRequest {
    pub fn validate(&self) -> Result<(), String> {
        validate_label("name", &self.name)?;
        if let Some(s) = self.expires_in_seconds
            && !(60..=MAX_API_KEY_LIFETIME_SECONDS).contains(&s)
        {
            return Err(format!(
                "expires_in_seconds must be between 60 and {MAX_API_KEY_LIFETIME_SECONDS}"
            ));
        }
        if let Some(r) = self.rate_limit_per_second
            && !(1..=MAX_RATE_LIMIT_PER_SECOND).contains(&r)
        {
            return Err(format!(
                "rate_limit_per_second must be between 1 and {MAX_RATE_LIMIT_PER_SECOND}"
            ));
        }
        if let Some(quota) = &self.quota {
            quota.validate()?;
        }
        Ok(())
    }
}

/// The answer to a key's creation: the only time the key itself is shown.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateApiKeyResponse {
    /// The secret to send as `Authorization: Bearer <key>`. Not stored: keep it now.
    pub key: String,
    pub api_key: ApiKey,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiKeyList {
    pub api_keys: Vec<ApiKey>,
    pub total: u64,
}

/// A user account (dashboard logins). Never carries the password hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct User {
    pub id: String,
    pub username: String,
    pub role: Role,
    pub disabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_login_at: Option<DateTime<Utc>>,
    /// What the sandboxes and commands of the user's sessions may take (as an API
    /// key's quota); `None`: not limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<KeyQuota>,
}

pub const MIN_PASSWORD_CHARS: usize = 12;
pub const MAX_PASSWORD_BYTES: usize = 1024;

fn validate_password(password: &str) -> Result<(), String> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(format!(
            "password must have at least {MIN_PASSWORD_CHARS} characters"
        ));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(format!(
            "password must be at most {MAX_PASSWORD_BYTES} bytes"
        ));
    }
    Ok(())
}

/// Names of keys and users: 1–64 characters of `[A-Za-z0-9._@-]`.
fn validate_label(what: &str, value: &str) -> Result<(), String> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} must be 1-64 characters of letters, digits, '.', '_', '-' or '@'"
        ))
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateUserRequest {
    #[cfg_attr(feature = "openapi", schema(pattern = r"^[A-Za-z0-9._@-]{1,64}$"))]
    pub username: String,
    #[cfg_attr(feature = "openapi", schema(min_length = 12, max_length = 1024))]
    pub password: String,
    pub role: Role,
    /// What the sandboxes and commands of the user's sessions may take; none: not
    /// limited.
    #[serde(default, deserialize_with = "crate::api::object_only")]
    pub quota: Option<KeyQuota>,
}

impl CreateUserRequest {
    pub fn validate(&self) -> Result<(), String> {
        validate_label("username", &self.username)?;
        validate_password(&self.password)?;
        match &self.quota {
            Some(quota) => quota.validate(),
            None => Ok(()),
        }
    }
}

/// Changes to a user; absent fields stay as they are.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UpdateUserRequest {
    #[serde(default)]
    pub role: Option<Role>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(min_length = 12, max_length = 1024))]
    pub password: Option<String>,
    #[serde(default)]
    pub disabled: Option<bool>,
    /// A new quota for the user's sessions, in place of the old one; `{}`: not
    /// limited.
    #[serde(default, deserialize_with = "crate::api::object_only")]
    pub quota: Option<KeyQuota>,
}

impl UpdateUserRequest {
    pub fn validate(&self) -> Result<(), String> {
        if let Some(p) = &self.password {
            validate_password(p)?;
        }
        if let Some(quota) = &self.quota {
            quota.validate()?;
        }
        if self.role.is_none()
            && self.password.is_none()
            && self.disabled.is_none()
            && self.quota.is_none()
        {
            return Err("nothing to change: give role, password, disabled or quota".into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UserList {
    pub users: Vec<User>,
    pub total: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub username: String,
    #[cfg_attr(feature = "openapi", schema(max_length = 1024))]
    pub password: String,
}

/// A session token for the dashboard: short-lived, revoked by logout.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LoginResponse {
    pub token: String,
    pub expires_at: DateTime<Utc>,
    pub user: User,
}

/// `GET /auth/me`: who the presented credential belongs to.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WhoAmI {
    pub principal: Principal,
    /// When the credential stops working, if it expires.
    pub expires_at: Option<DateTime<Utc>>,
}

/// One line of the audit log: who did what to which resource, and how it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditEntry {
    /// Increasing; pass it as `before` to page backwards.
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub actor_id: Option<String>,
    pub actor_name: Option<String>,
    /// e.g. `vm.create`, `vm.execute`, `vm.delete`, `apikey.create`, `auth.login`.
    pub action: String,
    pub method: String,
    /// The route template (`/api/v1/vms/{id}`).
    pub route: String,
    pub resource_id: Option<String>,
    /// The HTTP status the request ended with.
    pub status: u16,
    pub remote_addr: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditList {
    pub entries: Vec<AuditEntry>,
    /// Pass as `before` for the next (older) page; `None` at the end.
    pub next_cursor: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_by_power() {
        assert!(Role::Admin.allows(Role::Operator));
        assert!(Role::Operator.allows(Role::Viewer));
        assert!(Role::Viewer.allows(Role::Viewer));
        assert!(!Role::Viewer.allows(Role::Operator));
        assert!(!Role::Operator.allows(Role::Admin));
        assert_eq!("OPERATOR".parse::<Role>(), Ok(Role::Operator));
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn a_quota_keeps_its_network_policy_in_cidr_form() {
        let quota: KeyQuota = serde_json::from_value(serde_json::json!({
            "max_vms": 2,
            "network_policy": {"egress": "deny", "allow": ["203.0.113.9/24", "198.51.100.7"]}
        }))
        .unwrap();
        let stored = quota.normalized().unwrap();
        assert_eq!(
            stored.network_policy.unwrap().allow,
            ["203.0.113.0/24", "198.51.100.7/32"]
        );
        assert_eq!(stored.max_vms, Some(2));
        let bad = KeyQuota {
            network_policy: Some(crate::NetworkPolicy {
                deny: vec!["example..com".into()],
                ..Default::default()
            }),
            ..Default::default()
        };
        let err = bad.normalized().unwrap_err();
        assert!(err.starts_with("quota.network_policy.deny: "), "{err}");
    }
}
