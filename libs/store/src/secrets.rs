//! Workspace secrets (table `workspace_secrets`): metadata in clear, the value
//! sealed by the core's `secrets::Keyring` (ciphertext, nonce and key id). A secret is
//! unique by (scope, workspace, name); global secrets have no workspace (NULL), and
//! the unique index uses `COALESCE(workspace_id, '')` so that this holds for them on
//! both databases. Behaviour is tested on both by
//! `tests/store_conformance_workspaces.rs`.

use aetherium_types::{Secret, SecretScope};
use async_trait::async_trait;

use crate::error::{CoreError, CoreResult};

#[async_trait]
pub trait SecretStore: Send + Sync + 'static {
    /// Stores a secret, or replaces the value, type and description of the one with
    /// the same (scope, workspace, name): that one keeps its id and `created_at`.
    /// Returns the secret as stored. `InvalidInput` when the scope and
    /// `workspace_id` disagree (a workspace secret needs one, a global one has none).
    async fn put_secret(&self, meta: &Secret, sealed: &Sealed) -> CoreResult<Secret>;
    async fn get_secret(&self, id: &str) -> CoreResult<Option<(Secret, Sealed)>>;
    /// The secrets of one scope (of `workspace_id` for the workspace scope), by name.
    async fn list_secrets(
        &self,
        scope: SecretScope,
        workspace_id: Option<&str>,
    ) -> CoreResult<Vec<Secret>>;
    /// What a workspace's commands get: its own secrets plus the global ones whose
    /// name it does not use itself (its own win), by name.
    async fn secrets_for_injection(&self, workspace_id: &str) -> CoreResult<Vec<(Secret, Sealed)>>;
    /// Returns whether it existed.
    async fn delete_secret(&self, id: &str) -> CoreResult<bool>;
    /// Deletes every secret of a workspace (when it is deleted); returns how many.
    async fn delete_workspace_secrets(&self, workspace_id: &str) -> CoreResult<u64>;
    /// Every secret with its sealed value (for key rotation).
    async fn list_all_sealed(&self) -> CoreResult<Vec<(Secret, Sealed)>>;
    /// Replaces a secret's sealed value if it still is `previous` (a compare-and-set,
    /// so that a rotation never overwrites a value set meanwhile); returns whether it
    /// changed.
    async fn update_sealed(&self, id: &str, previous: &Sealed, sealed: &Sealed)
    -> CoreResult<bool>;
}

/// Checks that scope and workspace agree, and returns the workspace id to store.
pub(crate) fn checked_owner(meta: &Secret) -> CoreResult<Option<&str>> {
    match (meta.scope, meta.workspace_id.as_deref()) {
        (SecretScope::Workspace, Some(ws)) if !ws.is_empty() => Ok(Some(ws)),
        (SecretScope::Global, None) => Ok(None),
        (SecretScope::Workspace, _) => Err(CoreError::InvalidInput(format!(
            "secret {:?}: a workspace secret needs a workspace id",
            meta.name
        ))),
        (SecretScope::Global, Some(_)) => Err(CoreError::InvalidInput(format!(
            "secret {:?}: a global secret belongs to no workspace",
            meta.name
        ))),
    }
}

/// The workspace to filter a list by, checked like [`checked_owner`].
pub(crate) fn list_owner(scope: SecretScope, workspace_id: Option<&str>) -> CoreResult<&str> {
    match (scope, workspace_id) {
        (SecretScope::Workspace, Some(ws)) => Ok(ws),
        (SecretScope::Global, _) => Ok(""),
        (SecretScope::Workspace, None) => Err(CoreError::InvalidInput(
            "listing workspace secrets needs a workspace id".into(),
        )),
    }
}

/// A sealed value as stored: which key, which nonce, and the ciphertext (with the
/// GCM tag appended).
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    pub key_id: String,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealed")
            .field("key_id", &self.key_id)
            .field("nonce_len", &self.nonce.len())
            .field("ciphertext_len", &self.ciphertext.len())
            .finish()
    }
}
