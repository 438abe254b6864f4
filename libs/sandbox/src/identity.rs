//! Who this installation is, and the keys its sandboxes' agents answer to.
//!
//! - The **installation id** tells this installation's host resources (containers,
//!   TAP devices) from another's on the same host: two `aetherium up` with the same
//!   worker id must never remove each other's sandboxes. Kept in the data directory.
//! - **Agent tokens**: every sandbox's agent requires its own access token
//!   (`X-Access-Token`), derived from a key and the VM id, so a process inside the
//!   sandbox that reaches the agent's socket (an unprivileged workspace user) cannot
//!   use it, and no sandbox's token opens another's agent.

use std::fmt;
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::sync::Arc;

use rand::RngCore as _;
use sha2::{Digest as _, Sha256};

/// The file in the data directory that holds the installation id.
pub const INSTALLATION_ID_FILE: &str = "installation-id";
/// The file in the data directory that holds the agent token key (mode 0600).
pub const AGENT_KEY_FILE: &str = "agent-token.key";

const TOKEN_LABEL: &[u8] = b"aetherium agent access token\0";
const KEY_LABEL: &[u8] = b"aetherium agent token key\0";

/// The installation id kept in `data_dir` (made on first use: `inst-` and 12 hex
/// digits). Safe when several processes start at once: the first to link its file
/// wins, the others read it.
pub fn installation_id(data_dir: &Path) -> io::Result<String> {
    let path = data_dir.join(INSTALLATION_ID_FILE);
    let id = read_or_create(&path, 0o644, || {
        let mut bytes = [0u8; 6];
        rand::rng().fill_bytes(&mut bytes);
        format!("inst-{}", hex(&bytes))
    })?;
    let valid = id.len() <= 64
        && !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} holds {id:?}: an installation id is 1-64 letters, digits, '-' or '_'",
                path.display()
            ),
        ));
    }
    Ok(id)
}

/// Reads the trimmed content of `path`, or creates it (with `mode`) holding `make()`
/// first. Concurrent creators agree on one content: the file appears whole (written
/// aside, then hard-linked into place, which fails if another got there first).
pub fn read_or_create(path: &Path, mode: u32, make: impl FnOnce() -> String) -> io::Result<String> {
    let context = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    match std::fs::read_to_string(path) {
        Ok(text) => return Ok(text.trim().to_string()),
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(context(e)),
        Err(_) => {}
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(context)?;
    let value = make();
    let tmp = dir.join(format!(
        ".{}.{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("new"),
        uuid::Uuid::new_v4().simple()
    ));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(format!("{value}\n").as_bytes())?;
        file.sync_all()?;
        // A hard link fails when the name exists: never replaces a racing writer's.
        std::fs::hard_link(&tmp, path)
    })();
    let _ = std::fs::remove_file(&tmp);
    match written {
        Ok(()) => Ok(value),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => std::fs::read_to_string(path)
            .map(|t| t.trim().to_string())
            .map_err(context),
        Err(e) => Err(context(e)),
    }
}

/// Derives each sandbox's agent access token from one key. Never printed. Cheap to
/// clone.
#[derive(Clone, PartialEq, Eq)]
pub struct AgentTokens(Arc<[u8; 32]>);

impl AgentTokens {
    pub fn new(key: [u8; 32]) -> AgentTokens {
        AgentTokens(Arc::new(key))
    }

    /// A key derived from a secret every process of a cluster shares (the tunnel
    /// secret), so a gateway can open the agents of every worker's sandboxes.
    pub fn derived_from(secret: &[u8]) -> AgentTokens {
        AgentTokens::new(hmac_sha256(secret, &[KEY_LABEL]))
    }

    /// The key kept in `data_dir` (made on first use, mode 0600): embedded mode's,
    /// and a worker's without a tunnel secret.
    pub fn load_or_create(data_dir: &Path) -> io::Result<AgentTokens> {
        let path = data_dir.join(AGENT_KEY_FILE);
        let text = read_or_create(&path, 0o600, || {
            let mut key = [0u8; 32];
            rand::rng().fill_bytes(&mut key);
            hex(&key)
        })?;
        let bytes = unhex(&text).filter(|b| b.len() == 32).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not 64 hex digits", path.display()),
            )
        })?;
        let mut key = [0u8; 32];
        key.copy_from_slice(&bytes);
        Ok(AgentTokens::new(key))
    }

    /// The access token of the agent in VM `vm_id`.
    pub fn for_vm(&self, vm_id: &str) -> String {
        hex(&hmac_sha256(
            self.0.as_slice(),
            &[TOKEN_LABEL, vm_id.as_bytes()],
        ))
    }
}

impl fmt::Debug for AgentTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AgentTokens(<redacted>)")
    }
}

/// HMAC-SHA256 (RFC 2104) of the concatenation of `parts`.
pub(crate) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block_key = [0u8; BLOCK];
    if key.len() > BLOCK {
        block_key[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block_key[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block_key.map(|b| b ^ 0x36));
    for part in parts {
        inner.update(part);
    }
    let mut outer = Sha256::new();
    outer.update(block_key.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installation_id_is_made_once_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = installation_id(dir.path()).expect("id");
        assert!(first.starts_with("inst-") && first.len() == 17, "{first}");
        assert_eq!(installation_id(dir.path()).expect("again"), first);
        let other = tempfile::tempdir().expect("tempdir");
        assert_ne!(installation_id(other.path()).expect("other"), first);
        std::fs::write(dir.path().join(INSTALLATION_ID_FILE), "bad id/..\n").expect("write");
        assert!(installation_id(dir.path()).is_err());
    }

    #[test]
    fn concurrent_first_starts_agree_on_one_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ids: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| installation_id(dir.path()).expect("id")))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("join"))
                .collect()
        });
        assert!(ids.iter().all(|id| id == &ids[0]), "{ids:?}");
        let leftovers = std::fs::read_dir(dir.path()).expect("ls").count();
        assert_eq!(leftovers, 1, "no temporary files left");
    }

    #[test]
    fn agent_tokens_differ_per_vm_and_key_and_survive_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tokens = AgentTokens::load_or_create(dir.path()).expect("key");
        let a = tokens.for_vm("vm-a");
        assert_eq!(a.len(), 64);
        assert_ne!(a, tokens.for_vm("vm-b"));
        let again = AgentTokens::load_or_create(dir.path()).expect("key again");
        assert_eq!(again.for_vm("vm-a"), a, "same key after a restart");
        let mode = std::fs::metadata(dir.path().join(AGENT_KEY_FILE))
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
            .expect("mode");
        assert_eq!(mode, 0o600);
        let other = tempfile::tempdir().expect("tempdir");
        assert_ne!(
            AgentTokens::load_or_create(other.path())
                .expect("k")
                .for_vm("vm-a"),
            a
        );
        assert_eq!(
            AgentTokens::derived_from(b"cluster secret 0123").for_vm("vm-a"),
            AgentTokens::derived_from(b"cluster secret 0123").for_vm("vm-a")
        );
        assert!(!format!("{tokens:?}").contains(&a[..8]));
    }

    #[test]
    fn hmac_matches_rfc_4231() {
        let unhex = |t: &str| unhex(t).expect("hex");
        assert_eq!(
            hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"]).to_vec(),
            unhex("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        );
        assert_eq!(
            hmac_sha256(
                &[0xaa; 131],
                &[b"Test Using Larger Than Block-Size Key - Hash Key First"]
            )
            .to_vec(),
            unhex("60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54")
        );
        assert_eq!(
            hmac_sha256(&[0x0b; 20], &[b"Hi There"]).to_vec(),
            unhex("b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7")
        );
    }
}
