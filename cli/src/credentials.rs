//! The login `aetherium login` saves (URL and session token) and where it lives.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::PathBuf;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// What `aetherium login` saves: one server and the key for it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Credentials {
    pub url: String,
    pub token: String,
}

impl Credentials {
    /// `$AETHERIUM_CREDENTIALS`, else `$XDG_CONFIG_HOME/aetherium/credentials.json`,
    /// else `~/.config/aetherium/credentials.json`.
    pub fn path() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os("AETHERIUM_CREDENTIALS") {
            return Some(PathBuf::from(p));
        }
        let base = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
        Some(base.join("aetherium").join("credentials.json"))
    }

    pub fn load() -> anyhow::Result<Option<Credentials>> {
        let Some(path) = Self::path() else {
            return Ok(None);
        };
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .with_context(|| format!("{} is not a credentials file", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Writes the file readable by its owner only (0600, directory 0700).
    pub fn save(&self) -> anyhow::Result<PathBuf> {
        let path = Self::path().context("no HOME: cannot tell where to keep credentials")?;
        if let Some(dir) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        // Written beside and renamed, so a crash never leaves half a file.
        let tmp = path.with_extension("json.tmp");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        file.write_all(&serde_json::to_vec_pretty(self)?)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        Ok(path)
    }
}
