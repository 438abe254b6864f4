//! Use cases for environments (reusable workspace templates) and secrets (encrypted
//! at rest, never returned): what the gateway's `/environments` and `/secrets`
//! routes call. Workspaces (issue 7's next part) build on both.

use std::sync::Arc;

use aetherium_types::{
    AddSecretRequest, CreateEnvironmentRequest, Environment, Secret, SecretScope,
    UpdateEnvironmentRequest, new_id,
};
use chrono::Utc;

use crate::error::{CoreError, CoreResult};
use crate::secrets::{Keyring, secret_aad};
use crate::services::Platform;
use crate::store::{EnvironmentStore, Page, SecretStore};

/// The stores and key behind environments and secrets.
#[derive(Clone)]
pub struct WorkspaceData {
    pub environments: Arc<dyn EnvironmentStore>,
    pub secrets: Arc<dyn SecretStore>,
    pub workspaces: Arc<dyn crate::store::WorkspaceStore>,
    pub prompts: Arc<dyn crate::store::PromptStore>,
    /// `None` where no key is configured (a gateway without
    /// `workspaces.encryption_key`): secret writes answer 503 saying so.
    pub keyring: Option<Keyring>,
    /// The tool catalog and mirrors, to refuse unknown tools before anything is made.
    pub tools: Arc<ToolCatalog>,
}

/// The tool catalog this platform installs from, with its configured mirrors.
pub struct ToolCatalog {
    pub catalog: crate::tools::Catalog,
    pub sources: crate::tools::ToolSources,
}

impl ToolCatalog {
    /// The built-in recipes plus `workspaces.tool_catalog_dir`, checked with the
    /// configured mirrors: a bad recipe or mirror stops the start with its reason.
    pub fn from_config(config: &aetherium_common::Config) -> CoreResult<ToolCatalog> {
        let catalog = crate::tools::Catalog::load(config.workspaces.tool_catalog_dir.as_deref())?;
        let sources = crate::tools::ToolSources::try_from(config.workspaces.tool_mirrors.clone())?;
        catalog.check_sources(&sources)?;
        Ok(ToolCatalog { catalog, sources })
    }

    /// The install plan of `specs` on this host's architecture; refuses specs the
    /// catalog cannot install (unknown tool, bad version text, a requirement
    /// cycle), naming the known tools.
    pub fn check(&self, specs: &[String]) -> CoreResult<crate::tools::InstallPlan> {
        let specs = specs
            .iter()
            .map(|s| crate::tools::ToolSpec::parse(s))
            .collect::<Result<Vec<_>, _>>()?;
        let arch = crate::tools::Arch::host().unwrap_or(crate::tools::Arch::X86_64);
        Ok(self.catalog.plan(&specs, &self.sources, arch)?)
    }
}

impl WorkspaceData {
    pub(crate) fn keyring(&self) -> CoreResult<&Keyring> {
        self.keyring.as_ref().ok_or_else(|| {
            CoreError::Unavailable(
                "secrets are disabled: no encryption key is configured (workspaces.encryption_key / WORKSPACE_ENCRYPTION_KEY, 64 hex characters)"
                    .into(),
            )
        })
    }
}

impl Platform {
    // ---- environments ------------------------------------------------------------

    pub async fn create_environment(
        &self,
        req: CreateEnvironmentRequest,
    ) -> CoreResult<Environment> {
        req.validate().map_err(CoreError::InvalidInput)?;
        let environment = req.into_environment(new_id(), Utc::now());
        self.workspace_data
            .environments
            .insert_environment(&environment)
            .await?;
        Ok(environment)
    }

    /// By id, else by name.
    pub async fn get_environment(&self, id_or_name: &str) -> CoreResult<Environment> {
        let store = &self.workspace_data.environments;
        if let Some(environment) = store.get_environment(id_or_name).await? {
            return Ok(environment);
        }
        store
            .get_environment_by_name(id_or_name)
            .await?
            .ok_or_else(|| CoreError::NotFound(format!("environment {id_or_name} not found")))
    }

    pub async fn list_environments(&self, page: &Page) -> CoreResult<(Vec<Environment>, u64)> {
        self.workspace_data
            .environments
            .list_environments(page)
            .await
    }

    pub async fn update_environment(
        &self,
        id_or_name: &str,
        req: UpdateEnvironmentRequest,
    ) -> CoreResult<Environment> {
        req.validate().map_err(CoreError::InvalidInput)?;
        let mut environment = self.get_environment(id_or_name).await?;
        req.apply_to(&mut environment, Utc::now());
        if !self
            .workspace_data
            .environments
            .update_environment(&environment)
            .await?
        {
            return Err(CoreError::NotFound(format!(
                "environment {id_or_name} not found"
            )));
        }
        Ok(environment)
    }

    pub async fn delete_environment(&self, id_or_name: &str) -> CoreResult<()> {
        let environment = self.get_environment(id_or_name).await?;
        self.workspace_data
            .environments
            .delete_environment(&environment.id)
            .await?;
        Ok(())
    }

    // ---- secrets -------------------------------------------------------------------

    /// Stores (or replaces, by name) a secret of `scope`: encrypted with the current
    /// key, bound to its scope, workspace and name. Returns its metadata only.
    pub async fn put_secret(
        &self,
        workspace_id: Option<&str>,
        req: &AddSecretRequest,
    ) -> CoreResult<Secret> {
        req.validate().map_err(CoreError::InvalidInput)?;
        let scope = match (workspace_id, req.scope) {
            (None, Some(SecretScope::Workspace)) => {
                return Err(CoreError::InvalidInput(
                    "scope `workspace` needs a workspace: POST /api/v1/workspaces/{id}/secrets"
                        .into(),
                ));
            }
            (None, _) => SecretScope::Global,
            (Some(_), scope) => scope.unwrap_or(SecretScope::Workspace),
        };
        // A workspace's route may store a global secret (the original's `scope`);
        // the global route only global ones.
        let workspace_id = match scope {
            SecretScope::Global => None,
            SecretScope::Workspace => workspace_id,
        };
        let keyring = self.workspace_data.keyring()?;
        let sealed = keyring.encrypt(
            req.value.as_bytes(),
            &secret_aad(scope, workspace_id, &req.name),
        )?;
        let now = Utc::now();
        let meta = Secret {
            id: new_id(),
            name: req.name.clone(),
            secret_type: req.secret_type,
            description: req.description.clone(),
            scope,
            workspace_id: workspace_id.map(str::to_string),
            key_id: sealed.key_id.clone(),
            created_at: now,
            updated_at: now,
        };
        self.workspace_data.secrets.put_secret(&meta, &sealed).await
    }

    pub async fn list_secrets(
        &self,
        scope: SecretScope,
        workspace_id: Option<&str>,
    ) -> CoreResult<Vec<Secret>> {
        self.workspace_data
            .secrets
            .list_secrets(scope, workspace_id)
            .await
    }

    /// Deletes a secret of this scope (and workspace): another scope's id is a 404.
    pub async fn delete_secret(&self, workspace_id: Option<&str>, id: &str) -> CoreResult<()> {
        let store = &self.workspace_data.secrets;
        let found = store.get_secret(id).await?.map(|(meta, _)| meta);
        match found {
            Some(meta) if meta.workspace_id.as_deref() == workspace_id => {
                store.delete_secret(id).await?;
                Ok(())
            }
            _ => Err(CoreError::NotFound(format!("secret {id} not found"))),
        }
    }
}
