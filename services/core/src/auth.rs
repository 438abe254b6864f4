//! Authentication and accounts: API keys, user accounts with argon2id passwords,
//! short-lived dashboard sessions, and the audit log. The gateway asks this service
//! who a bearer token belongs to and enforces roles with the answer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aetherium_types::{
    ApiKey, AuditEntry, CreateApiKeyRequest, CreateUserRequest, KeyQuota, LoginResponse, Principal,
    PrincipalKind, Role, UpdateUserRequest, User, new_id,
};
use argon2::{Argon2, PasswordHasher as _, PasswordVerifier as _};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use sha2::{Digest as _, Sha256};

use crate::error::{CoreError, CoreResult};
use crate::store::{AuditFilter, AuthStore, Session};

/// API keys start with this, session tokens with [`SESSION_PREFIX`]; the prefix says
/// which table to look in and makes leaked keys easy to scan for.
pub const API_KEY_PREFIX: &str = "ak_";
pub const SESSION_PREFIX: &str = "as_";
/// Longer bearer tokens are refused before hashing.
const MAX_TOKEN_BYTES: usize = 512;
/// `last_used_at` is written at most this often per key (not on every request).
const TOUCH_INTERVAL_MS: i64 = 60_000;

#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub session_ttl: Duration,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            session_ttl: Duration::from_secs(12 * 3600),
        }
    }
}

/// What a valid bearer token resolves to.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub principal: Principal,
    /// The API key's or session's id (for logout).
    pub credential_id: String,
    pub expires_at: Option<DateTime<Utc>>,
    /// The key's own rate limit, if it has one.
    pub rate_limit_per_second: Option<u32>,
}

#[derive(Clone)]
pub struct Auth {
    store: Arc<dyn AuthStore>,
    settings: AuthSettings,
    /// Key id → last `last_used_at` write (ms), to throttle those writes.
    touched: Arc<Mutex<HashMap<String, i64>>>,
    /// A valid hash to verify against when the user does not exist, so that a login
    /// for an unknown name takes as long as one with a wrong password.
    dummy_hash: Arc<String>,
    password_work: PasswordWork,
}

/// SHA-256 of a token, hex. Keys and session tokens carry 256 random bits, so a fast
/// hash is enough (argon2 is for human-chosen passwords).
pub fn token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn random_token(prefix: &str) -> CoreResult<String> {
    let mut bytes = [0u8; 32];
    getrandom(&mut bytes)?;
    Ok(format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

fn getrandom(buf: &mut [u8]) -> CoreResult<()> {
    use rand::TryRngCore as _;
    rand::rngs::OsRng
        .try_fill_bytes(buf)
        .map_err(|e| CoreError::Internal(anyhow::anyhow!("no randomness: {e}")))
}

fn unauthorized(message: &str) -> CoreError {
    CoreError::Unauthorized(message.to_string())
}

/// Bounds argon2id work: each hash takes 19 MiB and tens of milliseconds of a core,
/// so unbounded parallel logins (for unknown users, before any key) could take the
/// server's memory. At most one hash per core runs; a few dozen wait; beyond that a
/// login is refused at once with 429.
#[derive(Clone)]
struct PasswordWork {
    running: Arc<tokio::sync::Semaphore>,
    admitted: Arc<std::sync::atomic::AtomicUsize>,
    max_admitted: usize,
}

/// Logins that may wait for a hashing slot (beyond those hashing).
const MAX_WAITING_HASHES: usize = 32;

impl PasswordWork {
    fn new() -> PasswordWork {
        let cores = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, 8);
        PasswordWork {
            running: Arc::new(tokio::sync::Semaphore::new(cores)),
            admitted: Arc::default(),
            max_admitted: cores + MAX_WAITING_HASHES,
        }
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> CoreResult<T> {
        use std::sync::atomic::Ordering;
        if self.admitted.fetch_add(1, Ordering::SeqCst) >= self.max_admitted {
            self.admitted.fetch_sub(1, Ordering::SeqCst);
            return Err(CoreError::TooManyRequests(
                "too many password checks in progress: try again in a moment".into(),
            ));
        }
        struct Admitted<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Admitted<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let _admitted = Admitted(&self.admitted);
        let _permit = self
            .running
            .acquire()
            .await
            .map_err(|e| CoreError::Internal(e.into()))?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| CoreError::Internal(e.into()))
    }
}

impl PasswordWork {
    /// An argon2id hash of a new password, within the bound on hashing work.
    async fn hash(&self, password: String) -> CoreResult<String> {
        self.run(move || {
            Argon2::default()
                .hash_password(password.as_bytes())
                .map(|h| h.to_string())
        })
        .await?
        .map_err(|e| CoreError::Internal(anyhow::anyhow!("password hashing failed: {e}")))
    }
}

fn verify_password(password: &str, hash: &str) -> bool {
    Argon2::default()
        .verify_password(password.as_bytes(), hash)
        .is_ok()
}

impl Auth {
    pub async fn new(store: Arc<dyn AuthStore>, settings: AuthSettings) -> CoreResult<Auth> {
        let password_work = PasswordWork::new();
        let dummy_hash = password_work.hash(random_token("dummy-")?).await?;
        Ok(Auth {
            store,
            settings,
            touched: Arc::default(),
            dummy_hash: Arc::new(dummy_hash),
            password_work,
        })
    }

    pub fn store(&self) -> &Arc<dyn AuthStore> {
        &self.store
    }

    /// Resolves a bearer token, or `Unauthorized` saying why not.
    pub async fn authenticate(&self, token: &str) -> CoreResult<Authenticated> {
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return Err(unauthorized("invalid API key"));
        }
        let hash = token_hash(token);
        let now = Utc::now();
        if token.starts_with(SESSION_PREFIX) {
            let session = self
                .store
                .session_by_hash(&hash)
                .await?
                .ok_or_else(|| unauthorized("invalid or expired session"))?;
            if session.expires_at <= now {
                return Err(unauthorized("session expired: log in again"));
            }
            let user = self
                .store
                .get_user(&session.user_id)
                .await?
                .ok_or_else(|| unauthorized("invalid or expired session"))?;
            if user.disabled {
                return Err(unauthorized("user account disabled"));
            }
            return Ok(Authenticated {
                principal: Principal {
                    id: user.id,
                    name: user.username,
                    kind: PrincipalKind::Session,
                    role: user.role,
                    quota: user.quota,
                },
                credential_id: session.id,
                expires_at: Some(session.expires_at),
                rate_limit_per_second: None,
            });
        }
        let key = self
            .store
            .api_key_by_hash(&hash)
            .await?
            .ok_or_else(|| unauthorized("invalid API key"))?;
        if key.revoked_at.is_some() {
            return Err(unauthorized("API key revoked"));
        }
        if key.expires_at.is_some_and(|at| at <= now) {
            return Err(unauthorized("API key expired"));
        }
        self.touch(&key.id, now);
        Ok(Authenticated {
            principal: Principal {
                id: key.id.clone(),
                name: key.name.clone(),
                kind: PrincipalKind::ApiKey,
                role: key.role,
                quota: key.quota,
            },
            credential_id: key.id,
            expires_at: key.expires_at,
            rate_limit_per_second: key.rate_limit_per_second,
        })
    }

    /// Records the key's use in the background, at most once a minute.
    fn touch(&self, id: &str, now: DateTime<Utc>) {
        let now_ms = now.timestamp_millis();
        {
            let mut touched = self.touched.lock().unwrap_or_else(|p| p.into_inner());
            match touched.get(id) {
                Some(last) if now_ms - last < TOUCH_INTERVAL_MS => return,
                _ => touched.insert(id.to_string(), now_ms),
            };
        }
        let store = self.store.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            if let Err(e) = store.touch_api_key(&id, now).await {
                tracing::warn!(key = %id, error = %e, "could not record the API key's last use");
            }
        });
    }

    /// On first start (no API key exists yet) creates the bootstrap admin key: the
    /// given one (from config, or a token file of an earlier version) or a new one,
    /// which is returned so that it can be shown once. Later starts change nothing.
    pub async fn bootstrap_admin_key(&self, given: Option<&str>) -> CoreResult<Option<String>> {
        if self.store.count_api_keys().await? > 0 {
            return Ok(None);
        }
        let (secret, generated) = match given {
            Some(s) => (s.to_string(), false),
            None => (random_token(API_KEY_PREFIX)?, true),
        };
        let key = new_key_record(
            "bootstrap-admin",
            Role::Admin,
            "aetherium",
            None,
            None,
            &secret,
        );
        self.store
            .insert_api_key(&key, &token_hash(&secret))
            .await?;
        tracing::info!(key = %key.id, "created the bootstrap admin API key");
        Ok(generated.then_some(secret))
    }

    // ---- API keys ----------------------------------------------------------------

    /// Creates a key no more powerful than its creator; returns it with its secret.
    pub async fn create_api_key(
        &self,
        by: &Principal,
        req: &CreateApiKeyRequest,
    ) -> CoreResult<(ApiKey, String)> {
        req.validate().map_err(CoreError::InvalidInput)?;
        if !by.role.allows(req.role) {
            return Err(CoreError::Forbidden(format!(
                "a {} cannot create a key with the {} role",
                by.role, req.role
            )));
        }
        let secret = random_token(API_KEY_PREFIX)?;
        let expires_at = req
            .expires_in_seconds
            .map(|s| Utc::now() + chrono::Duration::seconds(s as i64));
        let quota = stored_quota(req.quota.as_ref())?;
        let key = ApiKey {
            quota,
            ..new_key_record(
                &req.name,
                req.role,
                &by.name,
                expires_at,
                req.rate_limit_per_second,
                &secret,
            )
        };
        self.store
            .insert_api_key(&key, &token_hash(&secret))
            .await?;
        Ok((key, secret))
    }

    /// Sets or clears a key's quota (admins; it applies from the key's next request).
    pub async fn set_api_key_quota(
        &self,
        id: &str,
        quota: Option<&KeyQuota>,
    ) -> CoreResult<ApiKey> {
        let quota = stored_quota(quota)?;
        if !self.store.set_api_key_quota(id, quota.as_ref()).await? {
            return Err(CoreError::NotFound(format!("API key {id} not found")));
        }
        self.get_api_key(id).await
    }

    pub async fn list_api_keys(&self) -> CoreResult<Vec<ApiKey>> {
        self.store.list_api_keys().await
    }

    pub async fn get_api_key(&self, id: &str) -> CoreResult<ApiKey> {
        self.store
            .get_api_key(id)
            .await?
            .ok_or_else(|| CoreError::NotFound(format!("API key {id} not found")))
    }

    /// Revokes a key (idempotent); it stops working at once.
    pub async fn revoke_api_key(&self, id: &str) -> CoreResult<ApiKey> {
        self.get_api_key(id).await?;
        self.store.revoke_api_key(id, Utc::now()).await?;
        self.get_api_key(id).await
    }

    // ---- Users and sessions ----------------------------------------------------

    pub async fn create_user(&self, req: &CreateUserRequest) -> CoreResult<User> {
        req.validate().map_err(CoreError::InvalidInput)?;
        let now = Utc::now();
        let user = User {
            id: new_id(),
            username: req.username.clone(),
            role: req.role,
            disabled: false,
            created_at: now,
            updated_at: now,
            last_login_at: None,
            quota: stored_quota(req.quota.as_ref())?,
        };
        let hash = self.password_work.hash(req.password.clone()).await?;
        self.store.insert_user(&user, &hash).await?;
        Ok(user)
    }

    pub async fn list_users(&self) -> CoreResult<Vec<User>> {
        self.store.list_users().await
    }

    pub async fn get_user(&self, id: &str) -> CoreResult<User> {
        self.store
            .get_user(id)
            .await?
            .ok_or_else(|| CoreError::NotFound(format!("user {id} not found")))
    }

    /// Changes role, password, disabled or quota (the quota from the user's next
    /// request). A new password or disabling ends the user's sessions.
    pub async fn update_user(&self, id: &str, req: &UpdateUserRequest) -> CoreResult<User> {
        req.validate().map_err(CoreError::InvalidInput)?;
        let mut user = self.get_user(id).await?;
        if let Some(role) = req.role {
            user.role = role;
        }
        if let Some(disabled) = req.disabled {
            user.disabled = disabled;
        }
        if let Some(quota) = &req.quota {
            user.quota = stored_quota(Some(quota))?;
        }
        user.updated_at = Utc::now();
        let hash = match &req.password {
            Some(p) => Some(self.password_work.hash(p.clone()).await?),
            None => None,
        };
        self.store.update_user(&user, hash.as_deref()).await?;
        if hash.is_some() || user.disabled {
            self.store.delete_user_sessions(&user.id).await?;
        }
        Ok(user)
    }

    /// Deletes a user and ends its sessions. Nobody deletes their own account (that
    /// would lock out the last admin by a slip of the mouse).
    pub async fn delete_user(&self, by: &Principal, id: &str) -> CoreResult<()> {
        if by.kind == PrincipalKind::Session && by.id == id {
            return Err(CoreError::Conflict(
                "you cannot delete your own account".into(),
            ));
        }
        if !self.store.delete_user(id).await? {
            return Err(CoreError::NotFound(format!("user {id} not found")));
        }
        Ok(())
    }

    /// Checks a username and password and opens a session. Every failure says the
    /// same thing, after the same amount of work.
    pub async fn login(&self, username: &str, password: &str) -> CoreResult<LoginResponse> {
        const FAILED: &str = "invalid username or password";
        if password.len() > aetherium_types::auth::MAX_PASSWORD_BYTES {
            return Err(unauthorized(FAILED));
        }
        let found = self.store.user_credentials(username).await?;
        let hash = found
            .as_ref()
            .map(|(_, h)| h.clone())
            .unwrap_or_else(|| self.dummy_hash.to_string());
        let password = password.to_string();
        let valid = self
            .password_work
            .run(move || verify_password(&password, &hash))
            .await?;
        // A disabled account answers as a wrong password does: the answer must not
        // tell whoever tries that they found the right one.
        let Some((mut user, _)) = found.filter(|(user, _)| valid && !user.disabled) else {
            return Err(unauthorized(FAILED));
        };
        let now = Utc::now();
        let token = random_token(SESSION_PREFIX)?;
        let session = Session {
            id: new_id(),
            user_id: user.id.clone(),
            created_at: now,
            expires_at: now
                + chrono::Duration::from_std(self.settings.session_ttl)
                    .unwrap_or_else(|_| chrono::Duration::hours(12)),
        };
        self.store
            .insert_session(&session, &token_hash(&token))
            .await?;
        user.last_login_at = Some(now);
        self.store.update_user(&user, None).await?;
        // Expired sessions are swept here rather than by a timer of their own.
        self.store.delete_expired_sessions(now).await?;
        Ok(LoginResponse {
            token,
            expires_at: session.expires_at,
            user,
        })
    }

    /// Ends a session; API keys are revoked instead.
    pub async fn logout(&self, who: &Authenticated) -> CoreResult<()> {
        match who.principal.kind {
            PrincipalKind::Session => self.store.delete_session(&who.credential_id).await,
            PrincipalKind::ApiKey => Err(CoreError::InvalidInput(
                "API keys do not log out: revoke the key (POST /api/v1/api-keys/{id}/revoke)"
                    .into(),
            )),
        }
    }

    // ---- Audit -----------------------------------------------------------------

    pub async fn audit(&self, entry: &AuditEntry) {
        if let Err(e) = self.store.append_audit(entry).await {
            tracing::error!(action = %entry.action, error = %e, "could not write the audit log");
        }
    }

    pub async fn list_audit(&self, filter: &AuditFilter) -> CoreResult<Vec<AuditEntry>> {
        self.store.list_audit(filter).await
    }
}

fn new_key_record(
    name: &str,
    role: Role,
    created_by: &str,
    expires_at: Option<DateTime<Utc>>,
    rate_limit_per_second: Option<u32>,
    secret: &str,
) -> ApiKey {
    ApiKey {
        id: new_id(),
        name: name.to_string(),
        prefix: secret.chars().take(API_KEY_PREFIX.len() + 8).collect(),
        role,
        created_by: created_by.to_string(),
        created_at: Utc::now(),
        expires_at,
        revoked_at: None,
        last_used_at: None,
        rate_limit_per_second,
        quota: None,
    }
}

/// A quota as stored: checked, its network policy in CIDR form, and `None` for one
/// that limits nothing (`{}`).
fn stored_quota(quota: Option<&KeyQuota>) -> CoreResult<Option<KeyQuota>> {
    match quota {
        Some(quota) => {
            let quota = quota.normalized().map_err(CoreError::InvalidInput)?;
            Ok((quota != KeyQuota::default()).then_some(quota))
        }
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn password_work_runs_one_per_core_and_refuses_a_flood() {
        let work = PasswordWork::new();
        let cores = work.max_admitted - MAX_WAITING_HASHES;
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let mut all = tokio::task::JoinSet::new();
        for _ in 0..(work.max_admitted + 40) {
            let (work, running, most) = (work.clone(), running.clone(), most.clone());
            all.spawn(async move {
                work.run(move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(30));
                    running.fetch_sub(1, Ordering::SeqCst);
                })
                .await
            });
        }
        let (mut done, mut refused) = (0, 0);
        while let Some(result) = all.join_next().await {
            match result.expect("task") {
                Ok(()) => done += 1,
                Err(CoreError::TooManyRequests(_)) => refused += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(
            most.load(Ordering::SeqCst) <= cores,
            "more hashes at once than cores"
        );
        assert!(refused >= 40, "{refused} refused, {done} done");
        assert_eq!(done + refused, work.max_admitted + 40);
        // Slots come back: a later check runs.
        assert!(work.run(|| ()).await.is_ok());
    }
}
