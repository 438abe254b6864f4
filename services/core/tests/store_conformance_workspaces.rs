//! Conformance of the environment and secret stores: each test runs against a SQLite
//! file and against a real PostgreSQL server (a `TempPostgres` of its own), so both
//! implementations of `EnvironmentStore` and `SecretStore` keep the same semantics.
#![allow(clippy::unwrap_used)]

#[macro_use]
mod conformance;

use std::collections::BTreeMap;
use std::sync::Arc;

use aetherium_core::CoreError;
use aetherium_core::secrets::{Keyring, Sealed, aad_of, rotate_secrets};
use aetherium_core::store::{Cursor, Database, EnvironmentStore, Page, SecretStore};
use aetherium_types::{Environment, McpServer, McpServerType, Secret, SecretScope, SecretType};
use chrono::{DateTime, TimeZone, Utc};

use conformance::Subject;

impl Subject {
    fn environments(&self) -> Arc<dyn EnvironmentStore> {
        self.db.environments()
    }

    fn secrets(&self) -> Arc<dyn SecretStore> {
        self.db.secrets()
    }

    /// Every byte the `workspace_secrets` table holds for a row, read with plain SQL
    /// (what someone with a copy of the database would see).
    async fn raw_secret_row(&self, id: &str) -> Vec<u8> {
        let (ciphertext, nonce, rest): (Vec<u8>, Vec<u8>, String) = match &self.db {
            Database::Sqlite(s) => sqlx::query_as(
                "SELECT encrypted_value, nonce,
                        id || name || type || description || scope || key_id
                   FROM workspace_secrets WHERE id = ?1",
            )
            .bind(id)
            .fetch_one(s.pool())
            .await
            .unwrap(),
            Database::Postgres(s) => sqlx::query_as(
                "SELECT encrypted_value, nonce,
                        id || name || type || description || scope || key_id
                   FROM workspace_secrets WHERE id = $1",
            )
            .bind(id)
            .fetch_one(s.pool())
            .await
            .unwrap(),
        };
        assert_eq!(nonce.len(), 12);
        [ciphertext, nonce, rest.into_bytes()].concat()
    }
}

conformance!(
    environments_insert_get_update_delete,
    environment_names_are_unique,
    environment_lists_page_newest_first,
    secrets_are_put_replaced_and_listed_by_scope,
    injection_prefers_the_workspace_own_secrets,
    secrets_are_deleted_one_by_one_or_by_workspace,
    stored_secrets_hold_no_plaintext,
    rotation_reseals_under_the_current_key,
);

/// A time with millisecond precision (what the stores keep), `offset_ms` after a
/// fixed instant.
fn at(offset_ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(1_750_000_000_000 + offset_ms)
        .single()
        .unwrap()
}

fn environment(name: &str, created: DateTime<Utc>) -> Environment {
    Environment {
        id: format!("env-{name}"),
        name: name.to_string(),
        description: format!("{name} for agents"),
        image: Some("aetherium/base:latest".into()),
        vcpus: 2,
        memory_mb: 2048,
        git_repo_url: Some("file:///srv/git/repo.git".into()),
        git_branch: Some("main".into()),
        working_directory: "/workspace".into(),
        tools: vec!["git".into(), "nodejs@20".into()],
        env_vars: BTreeMap::from([("CI".to_string(), "1".to_string())]),
        mcp_servers: vec![
            McpServer {
                name: "fs".into(),
                server_type: McpServerType::Stdio,
                command: Some("mcp-fs".into()),
                args: vec!["/workspace".into()],
                url: None,
                headers: BTreeMap::new(),
                env: BTreeMap::from([("ROOT".to_string(), "/".to_string())]),
            },
            McpServer {
                name: "web".into(),
                server_type: McpServerType::Http,
                command: None,
                args: vec![],
                url: Some("http://127.0.0.1:9/mcp".into()),
                headers: BTreeMap::from([("X-Team".to_string(), "a".to_string())]),
                env: BTreeMap::new(),
            },
        ],
        idle_timeout_seconds: 1800,
        network_policy: Some(aetherium_types::NetworkPolicy {
            egress: aetherium_types::Egress::Deny,
            allow: vec!["140.82.112.0/20".into()],
            deny: Vec::new(),
        }),
        created_at: created,
        updated_at: created,
    }
}

async fn environments_insert_get_update_delete(s: Subject) {
    let store = s.environments();
    let env = environment("py", at(0));
    store.insert_environment(&env).await.unwrap();
    assert_eq!(
        store.get_environment(&env.id).await.unwrap(),
        Some(env.clone())
    );
    assert_eq!(
        store.get_environment_by_name("py").await.unwrap(),
        Some(env.clone())
    );
    assert_eq!(store.get_environment("nope").await.unwrap(), None);
    assert_eq!(store.get_environment_by_name("nope").await.unwrap(), None);

    // Optional fields absent, collections empty: all round-trip as such.
    let mut bare = environment("bare", at(1));
    bare.image = None;
    bare.git_repo_url = None;
    bare.git_branch = None;
    bare.tools.clear();
    bare.network_policy = None;
    bare.env_vars.clear();
    bare.mcp_servers.clear();
    bare.idle_timeout_seconds = 0;
    store.insert_environment(&bare).await.unwrap();
    assert_eq!(store.get_environment(&bare.id).await.unwrap(), Some(bare));

    let mut changed = env.clone();
    changed.name = "py-renamed".into();
    changed.tools = vec!["python@3.11".into()];
    changed
        .env_vars
        .insert("TOKEN_NAME".into(), "GITHUB_TOKEN".into());
    changed.mcp_servers.truncate(1);
    changed.git_branch = None;
    changed.vcpus = 4;
    changed.network_policy = None;
    changed.updated_at = at(5000);
    // created_at is not updatable: the stored one stays.
    changed.created_at = at(9999);
    assert!(store.update_environment(&changed).await.unwrap());
    let stored = store.get_environment(&env.id).await.unwrap().unwrap();
    assert_eq!(
        stored,
        Environment {
            created_at: env.created_at,
            ..changed.clone()
        }
    );
    assert_eq!(store.get_environment_by_name("py").await.unwrap(), None);

    let mut ghost = changed.clone();
    ghost.id = "env-ghost".into();
    ghost.name = "ghost".into();
    assert!(!store.update_environment(&ghost).await.unwrap());
    assert_eq!(store.get_environment("env-ghost").await.unwrap(), None);

    assert!(store.delete_environment(&env.id).await.unwrap());
    assert!(!store.delete_environment(&env.id).await.unwrap());
    assert_eq!(store.get_environment(&env.id).await.unwrap(), None);
}

async fn environment_names_are_unique(s: Subject) {
    let store = s.environments();
    let first = environment("shared", at(0));
    store.insert_environment(&first).await.unwrap();
    let mut second = environment("shared", at(1));
    second.id = "env-other".into();
    match store.insert_environment(&second).await {
        Err(CoreError::Conflict(m)) => assert!(m.contains("\"shared\""), "{m}"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(store.get_environment("env-other").await.unwrap(), None);

    // Renaming onto a taken name is a conflict too, and changes nothing.
    second.name = "second".into();
    store.insert_environment(&second).await.unwrap();
    let mut renamed = second.clone();
    renamed.name = "shared".into();
    renamed.vcpus = 8;
    match store.update_environment(&renamed).await {
        Err(CoreError::Conflict(m)) => assert!(m.contains("\"shared\""), "{m}"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(
        store.get_environment("env-other").await.unwrap(),
        Some(second.clone())
    );
    // The name is free again once its holder is gone.
    assert!(store.delete_environment(&first.id).await.unwrap());
    assert!(store.update_environment(&renamed).await.unwrap());
}

async fn environment_lists_page_newest_first(s: Subject) {
    let store = s.environments();
    let (none, total) = store
        .list_environments(&Page::new(None, None))
        .await
        .unwrap();
    assert!(none.is_empty());
    assert_eq!(total, 0);
    // Two share a created_at: the id breaks the tie.
    for (name, t) in [("a", 0), ("b", 10), ("c", 10), ("d", 20), ("e", 30)] {
        store
            .insert_environment(&environment(name, at(t)))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut page = Page::new(Some(2), None);
    loop {
        let (rows, total) = store.list_environments(&page).await.unwrap();
        assert_eq!(total, 5);
        assert!(rows.len() <= 2);
        seen.extend(rows.iter().map(|e| e.name.clone()));
        match rows.last() {
            Some(last) if rows.len() == 2 => {
                page.cursor = Some(Cursor::after(last.created_at, &last.id));
            }
            _ => break,
        }
    }
    assert_eq!(seen, ["e", "d", "c", "b", "a"]);
}

/// The store keeps the sealed value's key id, not the one in `meta`.
fn secret(id: &str, scope: SecretScope, workspace: Option<&str>, name: &str) -> Secret {
    Secret {
        id: id.to_string(),
        name: name.to_string(),
        secret_type: SecretType::Token,
        description: format!("{name} of {workspace:?}"),
        scope,
        workspace_id: workspace.map(str::to_string),
        key_id: String::new(),
        created_at: at(0),
        updated_at: at(0),
    }
}

const KEY_A: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const KEY_B: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

fn keyring() -> Keyring {
    Keyring::from_hex(KEY_A, &[]).unwrap()
}

/// Seals `value` for `meta`'s row and stores it.
async fn put(store: &dyn SecretStore, ring: &Keyring, meta: &Secret, value: &str) -> Secret {
    let sealed = ring.encrypt(value.as_bytes(), &aad_of(meta)).unwrap();
    store.put_secret(meta, &sealed).await.unwrap()
}

fn open(ring: &Keyring, secret: &Secret, sealed: &Sealed) -> String {
    ring.decrypt_string(sealed, &aad_of(secret)).unwrap()
}

fn names(secrets: &[Secret]) -> Vec<&str> {
    secrets.iter().map(|s| s.name.as_str()).collect()
}

async fn secrets_are_put_replaced_and_listed_by_scope(s: Subject) {
    let store = s.secrets();
    let ring = keyring();
    let first = secret("s1", SecretScope::Workspace, Some("ws1"), "GITHUB_TOKEN");
    let stored = put(store.as_ref(), &ring, &first, "ghp-first-value").await;
    assert_eq!(
        stored,
        Secret {
            key_id: ring.current_key_id().to_string(),
            ..first.clone()
        }
    );

    // Same (scope, workspace, name): the value, type and description are replaced,
    // the id and created_at stay.
    let mut again = secret(
        "s1-new",
        SecretScope::Workspace,
        Some("ws1"),
        "GITHUB_TOKEN",
    );
    again.secret_type = SecretType::ApiKey;
    again.description = "rotated".into();
    again.created_at = at(500);
    again.updated_at = at(500);
    let replaced = put(store.as_ref(), &ring, &again, "ghp-second-value").await;
    assert_eq!(replaced.id, "s1");
    assert_eq!(replaced.created_at, at(0));
    assert_eq!(replaced.updated_at, at(500));
    assert_eq!(replaced.secret_type, SecretType::ApiKey);
    assert_eq!(replaced.description, "rotated");
    assert_eq!(store.get_secret("s1-new").await.unwrap(), None);
    let (meta, sealed) = store.get_secret("s1").await.unwrap().unwrap();
    assert_eq!(meta, replaced);
    assert_eq!(open(&ring, &meta, &sealed), "ghp-second-value");
    assert_eq!(store.get_secret("nope").await.unwrap(), None);

    // The same name elsewhere is another secret.
    let other_ws = secret("s2", SecretScope::Workspace, Some("ws2"), "GITHUB_TOKEN");
    put(store.as_ref(), &ring, &other_ws, "ws2-value").await;
    let global = secret("g1", SecretScope::Global, None, "GITHUB_TOKEN");
    put(store.as_ref(), &ring, &global, "global-value").await;
    let global_b = secret("g2", SecretScope::Global, None, "ANTHROPIC_API_KEY");
    put(store.as_ref(), &ring, &global_b, "sk-ant-global").await;
    // Two global secrets cannot share a name either (NULL workspace): replaced.
    let global_again = secret("g3", SecretScope::Global, None, "GITHUB_TOKEN");
    assert_eq!(
        put(store.as_ref(), &ring, &global_again, "global-value-2")
            .await
            .id,
        "g1"
    );

    let ws1 = store
        .list_secrets(SecretScope::Workspace, Some("ws1"))
        .await
        .unwrap();
    assert_eq!(ws1, vec![replaced.clone()]);
    let ws2 = store
        .list_secrets(SecretScope::Workspace, Some("ws2"))
        .await
        .unwrap();
    assert_eq!(ids(&ws2), ["s2"]);
    let globals = store.list_secrets(SecretScope::Global, None).await.unwrap();
    assert_eq!(names(&globals), ["ANTHROPIC_API_KEY", "GITHUB_TOKEN"]);
    assert!(
        store
            .list_secrets(SecretScope::Workspace, Some("ws-none"))
            .await
            .unwrap()
            .is_empty()
    );

    // Scope and workspace must agree.
    for bad in [
        secret("b1", SecretScope::Workspace, None, "X_TOKEN"),
        secret("b2", SecretScope::Workspace, Some(""), "X_TOKEN"),
        secret("b3", SecretScope::Global, Some("ws1"), "X_TOKEN"),
    ] {
        let sealed = ring.encrypt(b"value", &aad_of(&bad)).unwrap();
        assert!(
            matches!(
                store.put_secret(&bad, &sealed).await,
                Err(CoreError::InvalidInput(_))
            ),
            "{bad:?}"
        );
    }
    assert!(matches!(
        store.list_secrets(SecretScope::Workspace, None).await,
        Err(CoreError::InvalidInput(_))
    ));
}

fn ids(secrets: &[Secret]) -> Vec<&str> {
    secrets.iter().map(|s| s.id.as_str()).collect()
}

async fn injection_prefers_the_workspace_own_secrets(s: Subject) {
    let store = s.secrets();
    let ring = keyring();
    for (meta, value) in [
        (
            secret("g-token", SecretScope::Global, None, "GITHUB_TOKEN"),
            "global-token",
        ),
        (
            secret("g-api", SecretScope::Global, None, "ANTHROPIC_API_KEY"),
            "global-api",
        ),
        (
            secret(
                "w1-token",
                SecretScope::Workspace,
                Some("ws1"),
                "GITHUB_TOKEN",
            ),
            "ws1-token",
        ),
        (
            secret("w1-db", SecretScope::Workspace, Some("ws1"), "DB_PASSWORD"),
            "ws1-db",
        ),
        (
            secret("w2-db", SecretScope::Workspace, Some("ws2"), "DB_PASSWORD"),
            "ws2-db",
        ),
    ] {
        put(store.as_ref(), &ring, &meta, value).await;
    }
    let values = |rows: Vec<(Secret, Sealed)>| -> Vec<(String, String)> {
        rows.iter()
            .map(|(meta, sealed)| (meta.name.clone(), open(&ring, meta, sealed)))
            .collect()
    };
    let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    };
    assert_eq!(
        values(store.secrets_for_injection("ws1").await.unwrap()),
        pairs(&[
            ("ANTHROPIC_API_KEY", "global-api"),
            ("DB_PASSWORD", "ws1-db"),
            ("GITHUB_TOKEN", "ws1-token"),
        ])
    );
    assert_eq!(
        values(store.secrets_for_injection("ws2").await.unwrap()),
        pairs(&[
            ("ANTHROPIC_API_KEY", "global-api"),
            ("DB_PASSWORD", "ws2-db"),
            ("GITHUB_TOKEN", "global-token"),
        ])
    );
    assert_eq!(
        values(store.secrets_for_injection("ws-empty").await.unwrap()),
        pairs(&[
            ("ANTHROPIC_API_KEY", "global-api"),
            ("GITHUB_TOKEN", "global-token"),
        ])
    );
}

async fn secrets_are_deleted_one_by_one_or_by_workspace(s: Subject) {
    let store = s.secrets();
    let ring = keyring();
    for meta in [
        secret("g", SecretScope::Global, None, "SHARED"),
        secret("a1", SecretScope::Workspace, Some("ws1"), "A"),
        secret("a2", SecretScope::Workspace, Some("ws1"), "B"),
        secret("a3", SecretScope::Workspace, Some("ws1"), "C"),
        secret("b1", SecretScope::Workspace, Some("ws2"), "A"),
    ] {
        put(store.as_ref(), &ring, &meta, "some-value").await;
    }
    assert!(store.delete_secret("a1").await.unwrap());
    assert!(!store.delete_secret("a1").await.unwrap());
    assert_eq!(store.get_secret("a1").await.unwrap(), None);
    assert_eq!(store.delete_workspace_secrets("ws1").await.unwrap(), 2);
    assert_eq!(store.delete_workspace_secrets("ws1").await.unwrap(), 0);
    assert!(
        store
            .list_secrets(SecretScope::Workspace, Some("ws1"))
            .await
            .unwrap()
            .is_empty()
    );
    let left: Vec<String> = store
        .list_all_sealed()
        .await
        .unwrap()
        .into_iter()
        .map(|(m, _)| m.id)
        .collect();
    assert_eq!(left.len(), 2);
    assert!(left.contains(&"g".to_string()) && left.contains(&"b1".to_string()));
    // A deleted name can be set again.
    let again = put(
        store.as_ref(),
        &ring,
        &secret("a1-again", SecretScope::Workspace, Some("ws1"), "A"),
        "new",
    )
    .await;
    assert_eq!(again.id, "a1-again");
}

async fn stored_secrets_hold_no_plaintext(s: Subject) {
    let store = s.secrets();
    let ring = keyring();
    let value = "sk-live-0123456789-very-secret-value";
    let meta = secret(
        "plain-check",
        SecretScope::Workspace,
        Some("ws1"),
        "API_KEY",
    );
    put(store.as_ref(), &ring, &meta, value).await;
    let raw = s.raw_secret_row("plain-check").await;
    for needle in [value, &value[..12], &value[value.len() - 12..]] {
        assert!(
            !raw.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "{needle:?} found in the stored row"
        );
    }
    // And what is stored opens to the value again.
    let (meta, sealed) = store.get_secret("plain-check").await.unwrap().unwrap();
    assert_eq!(open(&ring, &meta, &sealed), value);
    // Moved to another row, the ciphertext does not open (it is bound to its row).
    let elsewhere = secret("moved", SecretScope::Workspace, Some("ws2"), "API_KEY");
    store.put_secret(&elsewhere, &sealed).await.unwrap();
    let (moved, moved_sealed) = store.get_secret("moved").await.unwrap().unwrap();
    assert!(ring.decrypt(&moved_sealed, &aad_of(&moved)).is_err());
}

async fn rotation_reseals_under_the_current_key(s: Subject) {
    let store = s.secrets();
    let old = Keyring::from_hex(KEY_A, &[]).unwrap();
    let metas = [
        secret("r1", SecretScope::Workspace, Some("ws1"), "ONE"),
        secret("r2", SecretScope::Global, None, "TWO"),
    ];
    for meta in &metas {
        put(
            store.as_ref(),
            &old,
            meta,
            &format!("value-of-{}", meta.name),
        )
        .await;
    }
    let new = Keyring::from_hex(KEY_B, &[KEY_A]).unwrap();
    let report = rotate_secrets(store.as_ref(), &new).await.unwrap();
    assert_eq!((report.rotated, report.current, report.skipped), (2, 0, 0));
    let only_new = Keyring::from_hex(KEY_B, &[]).unwrap();
    for meta in &metas {
        let (stored, sealed) = store.get_secret(&meta.id).await.unwrap().unwrap();
        assert_eq!(stored.key_id, new.current_key_id());
        assert_eq!(sealed.key_id, new.current_key_id());
        assert_eq!(
            open(&only_new, &stored, &sealed),
            format!("value-of-{}", meta.name)
        );
    }
    let report = rotate_secrets(store.as_ref(), &new).await.unwrap();
    assert_eq!((report.rotated, report.current), (0, 2));

    // A re-seal based on a stale read changes nothing (the value was set meanwhile).
    let (stored, before) = store.get_secret("r1").await.unwrap().unwrap();
    put(store.as_ref(), &new, &metas[0], "set-meanwhile").await;
    let stale = new.encrypt(b"value-of-ONE", &aad_of(&stored)).unwrap();
    assert!(!store.update_sealed("r1", &before, &stale).await.unwrap());
    let (stored, now) = store.get_secret("r1").await.unwrap().unwrap();
    assert_eq!(open(&new, &stored, &now), "set-meanwhile");
    assert!(store.update_sealed("r1", &now, &stale).await.unwrap());
    assert!(!store.update_sealed("nope", &now, &stale).await.unwrap());
}
