//! Secrets at rest and in output.
//!
//! - [`Keyring`]: AES-256-GCM with a fresh random 96-bit nonce per encryption. Each
//!   key has an id (derived from the key) stored next to the ciphertext, so keys can
//!   be rotated: the current key seals, retired keys still open what they sealed, and
//!   [`rotate_secrets`] re-seals everything under the current key. The associated
//!   data ([`secret_aad`]) binds a ciphertext to its row, so ciphertexts cannot be
//!   swapped between rows.
//! - [`Redactor`] / [`StreamRedactor`]: replace secret values in text and in streamed
//!   output (also when a value is split across chunks) with `[REDACTED:<name>]`.
//!
//! Neither keys nor values ever appear in `Debug` output or in error messages.

use std::path::Path;
use std::sync::Arc;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use aetherium_types::{Secret, SecretScope};
use sha2::{Digest, Sha256};

use crate::error::{CoreError, CoreResult};
use crate::store::SecretStore;
pub use crate::store::secrets::Sealed;

/// The original's setting: the current key, 64 hex characters.
pub const ENCRYPTION_KEY_ENV: &str = "WORKSPACE_ENCRYPTION_KEY";
/// Retired keys (comma-separated, 64 hex characters each), kept to open secrets
/// sealed before a rotation.
pub const RETIRED_KEYS_ENV: &str = "WORKSPACE_ENCRYPTION_KEYS_RETIRED";
pub const KEY_LEN: usize = 32;
pub const NONCE_LEN: usize = 12;

/// Why a secret could not be sealed or opened. Messages never hold key material or
/// plaintext.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    /// A configured key is malformed.
    #[error("{0}")]
    BadKey(String),
    /// The ciphertext names a key that is not in the keyring.
    #[error(
        "secret was sealed with encryption key {0:?}, which is not configured: set it as \
         the current key or add it to {RETIRED_KEYS_ENV}"
    )]
    UnknownKey(String),
    /// Authentication failed: the ciphertext, its nonce or its row binding changed.
    #[error("secret cannot be opened: its ciphertext was altered or belongs to another row")]
    Tampered,
}

impl From<CryptoError> for CoreError {
    fn from(e: CryptoError) -> Self {
        match e {
            CryptoError::BadKey(m) => CoreError::InvalidInput(m),
            other => CoreError::Internal(anyhow::Error::new(other)),
        }
    }
}

/// The associated data that binds a secret's ciphertext to its row: the row's unique
/// key (scope, workspace, name). Not the row id: re-setting a secret keeps its id but
/// is sealed before the store says which id it keeps, whereas the unique key is known
/// up front and no two rows share it.
pub fn secret_aad(scope: SecretScope, workspace_id: Option<&str>, name: &str) -> Vec<u8> {
    format!(
        "aetherium-secret/v1\0{}\0{}\0{name}",
        scope.as_str(),
        workspace_id.unwrap_or("")
    )
    .into_bytes()
}

/// [`secret_aad`] of a stored secret.
pub fn aad_of(secret: &Secret) -> Vec<u8> {
    secret_aad(secret.scope, secret.workspace_id.as_deref(), &secret.name)
}

struct Key {
    id: String,
    cipher: Aes256Gcm,
}

impl Key {
    fn new(bytes: &[u8; KEY_LEN], id: Option<&str>) -> Key {
        Key {
            id: id.map_or_else(|| key_id_of(bytes), str::to_string),
            cipher: Aes256Gcm::new(bytes.into()),
        }
    }
}

/// A key's id: the first 16 hex characters of SHA-256 over a label and the key.
/// Tells keys apart without revealing anything usable about them.
fn key_id_of(bytes: &[u8; KEY_LEN]) -> String {
    let digest = Sha256::new()
        .chain_update(b"aetherium key id\0")
        .chain_update(bytes)
        .finalize();
    hex(&digest[..8])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex_key(text: &str, what: &str) -> Result<[u8; KEY_LEN], CryptoError> {
    let text = text.trim();
    let bad = || {
        CryptoError::BadKey(format!(
            "{what} must be {} hex characters (a 256-bit key)",
            KEY_LEN * 2
        ))
    };
    if text.len() != KEY_LEN * 2 || !text.is_ascii() {
        return Err(bad());
    }
    let mut key = [0u8; KEY_LEN];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(key)
}

fn random_bytes(buf: &mut [u8]) -> CoreResult<()> {
    use rand::TryRngCore as _;
    rand::rngs::OsRng
        .try_fill_bytes(buf)
        .map_err(|e| CoreError::Internal(anyhow::anyhow!("no randomness: {e}")))
}

/// A freshly generated key, hex-encoded, to be persisted by the caller. `Debug`
/// hides it.
pub struct KeyHex(String);

impl KeyHex {
    /// The key itself (64 hex characters): only to store it somewhere safe.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for KeyHex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyHex(<redacted>)")
    }
}

/// The encryption keys: one current key that seals, and retired keys that only open.
/// Cheap to clone.
#[derive(Clone)]
pub struct Keyring {
    current: Arc<Key>,
    retired: Arc<Vec<Key>>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("current_key_id", &self.current.id)
            .field(
                "retired_key_ids",
                &self.retired.iter().map(|k| &k.id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Keyring {
    /// From hex keys (64 hex characters each): the current one and retired ones.
    pub fn from_hex(current: &str, retired: &[&str]) -> Result<Keyring, CryptoError> {
        let key = parse_hex_key(current, ENCRYPTION_KEY_ENV)?;
        let retired = retired
            .iter()
            .map(|r| parse_hex_key(r, RETIRED_KEYS_ENV).map(|k| Key::new(&k, None)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Keyring::build(Key::new(&key, None), retired))
    }

    /// From raw keys with explicit ids (ids must be unique and non-empty).
    pub fn from_keys(
        current: (&str, &[u8; KEY_LEN]),
        retired: &[(&str, &[u8; KEY_LEN])],
    ) -> Result<Keyring, CryptoError> {
        let mut ids = std::collections::BTreeSet::new();
        for id in std::iter::once(current.0).chain(retired.iter().map(|r| r.0)) {
            if id.is_empty() || id.len() > 64 || !ids.insert(id) {
                return Err(CryptoError::BadKey(format!(
                    "encryption key ids must be unique and 1 to 64 characters ({id:?})"
                )));
            }
        }
        let retired = retired
            .iter()
            .map(|(id, k)| Key::new(k, Some(id)))
            .collect();
        Ok(Keyring::build(
            Key::new(current.1, Some(current.0)),
            retired,
        ))
    }

    fn build(current: Key, retired: Vec<Key>) -> Keyring {
        // The current key may also be listed as retired (mid-rotation configs): keep one.
        let retired = retired.into_iter().filter(|k| k.id != current.id).collect();
        Keyring {
            current: Arc::new(current),
            retired: Arc::new(retired),
        }
    }

    /// From [`ENCRYPTION_KEY_ENV`] and [`RETIRED_KEYS_ENV`]; `None` when no key is set.
    pub fn from_env() -> Result<Option<Keyring>, CryptoError> {
        let Some(current) = std::env::var(ENCRYPTION_KEY_ENV)
            .ok()
            .filter(|v| !v.trim().is_empty())
        else {
            return Ok(None);
        };
        let retired = std::env::var(RETIRED_KEYS_ENV).unwrap_or_default();
        let retired: Vec<&str> = retired
            .split(',')
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .collect();
        Keyring::from_hex(&current, &retired).map(Some)
    }

    /// A keyring with a new random key, and that key to persist (first start).
    pub fn generate() -> CoreResult<(Keyring, KeyHex)> {
        let mut key = [0u8; KEY_LEN];
        random_bytes(&mut key)?;
        let hex = KeyHex(hex(&key));
        Ok((Keyring::build(Key::new(&key, None), Vec::new()), hex))
    }

    /// The key kept in `path` (64 hex characters), creating the file (mode 0600, not
    /// overwriting a concurrent creator's) with a new key when it does not exist.
    pub fn load_or_create(path: &Path, retired: &[&str]) -> CoreResult<Keyring> {
        let (_, fresh) = Keyring::generate()?;
        let text = crate::identity::read_or_create(path, 0o600, || fresh.expose().to_string())
            .map_err(|e| CoreError::Internal(anyhow::anyhow!("encryption key file: {e}")))?;
        Ok(Keyring::from_hex(&text, retired)?)
    }

    /// The id of the key that seals.
    pub fn current_key_id(&self) -> &str {
        &self.current.id
    }

    /// Every key id this keyring can open, current first.
    pub fn key_ids(&self) -> Vec<&str> {
        std::iter::once(self.current.id.as_str())
            .chain(self.retired.iter().map(|k| k.id.as_str()))
            .collect()
    }

    /// Seals `plaintext` under the current key, bound to `aad`.
    pub fn encrypt(&self, plaintext: &[u8], aad: &[u8]) -> CoreResult<Sealed> {
        let mut nonce = [0u8; NONCE_LEN];
        random_bytes(&mut nonce)?;
        let ciphertext = self
            .current
            .cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| CoreError::Internal(anyhow::anyhow!("encryption failed")))?;
        Ok(Sealed {
            key_id: self.current.id.clone(),
            nonce: nonce.to_vec(),
            ciphertext,
        })
    }

    /// Opens `sealed` with the key it names; `aad` must be what it was sealed with.
    pub fn decrypt(&self, sealed: &Sealed, aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let key = std::iter::once(self.current.as_ref())
            .chain(self.retired.iter())
            .find(|k| k.id == sealed.key_id)
            .ok_or_else(|| CryptoError::UnknownKey(sealed.key_id.clone()))?;
        let nonce: [u8; NONCE_LEN] = sealed
            .nonce
            .as_slice()
            .try_into()
            .map_err(|_| CryptoError::Tampered)?;
        key.cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad,
                },
            )
            .map_err(|_| CryptoError::Tampered)
    }

    /// [`Keyring::decrypt`] of a text value.
    pub fn decrypt_string(&self, sealed: &Sealed, aad: &[u8]) -> Result<String, CryptoError> {
        String::from_utf8(self.decrypt(sealed, aad)?).map_err(|_| CryptoError::Tampered)
    }

    /// Whether `sealed` was sealed by a key other than the current one.
    pub fn needs_rotation(&self, sealed: &Sealed) -> bool {
        sealed.key_id != self.current.id
    }
}

/// What [`rotate_secrets`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RotationReport {
    /// Secrets re-sealed under the current key.
    pub rotated: u64,
    /// Secrets already under the current key.
    pub current: u64,
    /// Secrets changed or deleted meanwhile (their new value is sealed by the
    /// current key anyway).
    pub skipped: u64,
}

/// Re-seals every stored secret that an older key sealed under the current key.
/// Fails (changing nothing more) at the first secret no configured key opens.
pub async fn rotate_secrets(
    store: &dyn SecretStore,
    keyring: &Keyring,
) -> CoreResult<RotationReport> {
    let mut report = RotationReport::default();
    for (secret, sealed) in store.list_all_sealed().await? {
        if !keyring.needs_rotation(&sealed) {
            report.current += 1;
            continue;
        }
        let aad = aad_of(&secret);
        let plaintext = keyring.decrypt(&sealed, &aad)?;
        let resealed = keyring.encrypt(&plaintext, &aad)?;
        if store.update_sealed(&secret.id, &sealed, &resealed).await? {
            report.rotated += 1;
        } else {
            report.skipped += 1;
        }
    }
    Ok(report)
}

// ---------------------------------------------------------------------------------
// Redaction

/// Values shorter than this are not redacted: replacing every `a` or `42` in the
/// output would mangle it beyond use (and each replacement would point at where the
/// short value occurs), while such a value is no credential worth hiding anyway.
pub const MIN_REDACTED_LEN: usize = 4;

struct Needle {
    value: Vec<u8>,
    replacement: Vec<u8>,
}

/// Replaces secret values with `[REDACTED:<name>]`. At each position the longest
/// value that matches wins, scanning left to right. `Debug` shows names only.
#[derive(Clone, Default)]
pub struct Redactor {
    /// Longest first, so that the first match at a position is the longest.
    needles: Arc<Vec<Needle>>,
    longest: usize,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self
            .needles
            .iter()
            .map(|n| String::from_utf8_lossy(&n.replacement).into_owned())
            .collect();
        f.debug_struct("Redactor").field("redacts", &names).finish()
    }
}

impl Redactor {
    /// A redactor for `(name, value)` pairs; values shorter than
    /// [`MIN_REDACTED_LEN`] bytes are left out.
    pub fn new<N, V>(secrets: impl IntoIterator<Item = (N, V)>) -> Redactor
    where
        N: AsRef<str>,
        V: AsRef<[u8]>,
    {
        let mut needles: Vec<Needle> = secrets
            .into_iter()
            .filter(|(_, v)| v.as_ref().len() >= MIN_REDACTED_LEN)
            .map(|(n, v)| Needle {
                value: v.as_ref().to_vec(),
                replacement: format!("[REDACTED:{}]", n.as_ref()).into_bytes(),
            })
            .collect();
        // Equal values end up adjacent (the first one given keeps its name).
        needles.sort_by(|a, b| {
            b.value
                .len()
                .cmp(&a.value.len())
                .then_with(|| a.value.cmp(&b.value))
        });
        needles.dedup_by(|a, b| a.value == b.value);
        let longest = needles.first().map_or(0, |n| n.value.len());
        Redactor {
            needles: Arc::new(needles),
            longest,
        }
    }

    /// Whether it redacts nothing.
    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }

    /// `text` with every secret value replaced.
    pub fn redact_str(&self, text: &str) -> String {
        if self.is_empty() {
            return text.to_string();
        }
        String::from_utf8_lossy(&self.redact_bytes(text.as_bytes())).into_owned()
    }

    /// `data` with every secret value replaced.
    pub fn redact_bytes(&self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len());
        let done = self.scan(data, true, &mut out);
        debug_assert_eq!(done, data.len());
        out
    }

    /// A redactor for one stream of chunks.
    pub fn stream(&self) -> StreamRedactor {
        StreamRedactor {
            redactor: self.clone(),
            tail: Vec::new(),
        }
    }

    /// Writes the redacted form of `data` to `out` and returns how many bytes of
    /// `data` it consumed. Unless `at_end`, it stops where a match could still depend
    /// on bytes not seen yet (fewer than the longest value's length remain), so that
    /// chunked input redacts exactly as the whole would.
    fn scan(&self, data: &[u8], at_end: bool, out: &mut Vec<u8>) -> usize {
        let mut i = 0;
        let mut plain_from = 0;
        while i < data.len() {
            if !at_end && data.len() - i < self.longest {
                break;
            }
            let rest = &data[i..];
            match self.needles.iter().find(|n| rest.starts_with(&n.value)) {
                Some(needle) => {
                    out.extend_from_slice(&data[plain_from..i]);
                    out.extend_from_slice(&needle.replacement);
                    i += needle.value.len();
                    plain_from = i;
                }
                None => i += 1,
            }
        }
        out.extend_from_slice(&data[plain_from..i]);
        i
    }
}

/// Redacts a stream chunk by chunk, also values split across chunks: it holds back
/// the last few bytes of each chunk (fewer than the longest value) until the next
/// chunk or [`StreamRedactor::finish`] decides them.
pub struct StreamRedactor {
    redactor: Redactor,
    tail: Vec<u8>,
}

impl std::fmt::Debug for StreamRedactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamRedactor")
            .field("redactor", &self.redactor)
            .field("held_back", &self.tail.len())
            .finish()
    }
}

impl StreamRedactor {
    /// The redacted output that `chunk` (after what came before) makes final.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        if self.redactor.is_empty() {
            return chunk.to_vec();
        }
        self.tail.extend_from_slice(chunk);
        let mut out = Vec::with_capacity(self.tail.len());
        let consumed = self.redactor.scan(&self.tail, false, &mut out);
        self.tail.drain(..consumed);
        out
    }

    /// The rest, at the end of the stream.
    pub fn finish(&mut self) -> Vec<u8> {
        let tail = std::mem::take(&mut self.tail);
        let mut out = Vec::with_capacity(tail.len());
        self.redactor.scan(&tail, true, &mut out);
        out
    }

    /// How many bytes are held back, waiting for more input.
    pub fn pending(&self) -> usize {
        self.tail.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    const KEY_A: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const KEY_B: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

    #[test]
    fn sealed_values_open_with_the_same_key_and_binding() {
        let ring = Keyring::from_hex(KEY_A, &[]).unwrap();
        let aad = secret_aad(SecretScope::Workspace, Some("ws1"), "TOKEN");
        let a = ring.encrypt(b"hunter2-secret", &aad).unwrap();
        let b = ring.encrypt(b"hunter2-secret", &aad).unwrap();
        assert_ne!(a.nonce, b.nonce, "a fresh nonce per encryption");
        assert_ne!(a.ciphertext, b.ciphertext);
        assert_eq!(a.nonce.len(), NONCE_LEN);
        assert_eq!(a.key_id, ring.current_key_id());
        assert_eq!(a.key_id.len(), 16);
        assert!(!a.ciphertext.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(ring.decrypt(&a, &aad).unwrap(), b"hunter2-secret");
        assert_eq!(ring.decrypt_string(&b, &aad).unwrap(), "hunter2-secret");
    }

    #[test]
    fn tampering_a_wrong_binding_and_a_wrong_key_are_refused() {
        let ring = Keyring::from_hex(KEY_A, &[]).unwrap();
        let aad = secret_aad(SecretScope::Workspace, Some("ws1"), "TOKEN");
        let sealed = ring.encrypt(b"value-1234", &aad).unwrap();

        let mut flipped = sealed.clone();
        flipped.ciphertext[0] ^= 1;
        assert_eq!(ring.decrypt(&flipped, &aad), Err(CryptoError::Tampered));
        let mut nonce = sealed.clone();
        nonce.nonce[3] ^= 0x80;
        assert_eq!(ring.decrypt(&nonce, &aad), Err(CryptoError::Tampered));
        let mut short = sealed.clone();
        short.nonce.pop();
        assert_eq!(ring.decrypt(&short, &aad), Err(CryptoError::Tampered));

        for other in [
            secret_aad(SecretScope::Workspace, Some("ws2"), "TOKEN"),
            secret_aad(SecretScope::Workspace, Some("ws1"), "TOKEN2"),
            secret_aad(SecretScope::Global, None, "TOKEN"),
        ] {
            assert_eq!(ring.decrypt(&sealed, &other), Err(CryptoError::Tampered));
        }

        // Another key under the same id (a misconfiguration) cannot open it either.
        let impostor = Keyring::from_keys((&sealed.key_id, &[7u8; KEY_LEN]), &[]).unwrap();
        assert_eq!(impostor.decrypt(&sealed, &aad), Err(CryptoError::Tampered));

        let stranger = Keyring::from_hex(KEY_B, &[]).unwrap();
        let err = stranger.decrypt(&sealed, &aad).unwrap_err();
        assert_eq!(err, CryptoError::UnknownKey(sealed.key_id.clone()));
        assert!(err.to_string().contains(&sealed.key_id));
        assert!(err.to_string().contains(RETIRED_KEYS_ENV));
    }

    #[test]
    fn rotation_keeps_old_keys_for_opening_only() {
        let old = Keyring::from_hex(KEY_A, &[]).unwrap();
        let aad = secret_aad(SecretScope::Global, None, "API_KEY");
        let sealed = old.encrypt(b"old-value", &aad).unwrap();

        let rotated = Keyring::from_hex(KEY_B, &[KEY_A, KEY_B]).unwrap();
        assert_eq!(
            rotated.key_ids().len(),
            2,
            "the current key is not repeated"
        );
        assert!(rotated.needs_rotation(&sealed));
        assert_eq!(rotated.decrypt(&sealed, &aad).unwrap(), b"old-value");
        let resealed = rotated.encrypt(b"old-value", &aad).unwrap();
        assert_eq!(resealed.key_id, rotated.current_key_id());
        assert_ne!(resealed.key_id, sealed.key_id);
        assert!(!rotated.needs_rotation(&resealed));
        assert_eq!(
            old.decrypt(&resealed, &aad),
            Err(CryptoError::UnknownKey(resealed.key_id.clone()))
        );
    }

    #[test]
    fn bad_keys_are_refused_without_echoing_them_and_keys_never_print() {
        for bad in ["", "abc", &KEY_A[..63], &format!("{}zz", &KEY_A[..62])] {
            let err = Keyring::from_hex(bad, &[]).unwrap_err();
            assert!(matches!(err, CryptoError::BadKey(_)), "{bad:?}");
            if !bad.is_empty() {
                assert!(!err.to_string().contains(bad), "{err}");
            }
        }
        let err = Keyring::from_hex(KEY_A, &["nope"]).unwrap_err();
        assert!(err.to_string().contains(RETIRED_KEYS_ENV));
        assert!(Keyring::from_keys(("a", &[1; KEY_LEN]), &[("a", &[2; KEY_LEN])]).is_err());

        let ring = Keyring::from_hex(KEY_A, &[KEY_B]).unwrap();
        let shown = format!("{ring:?} {ring:#?}");
        assert!(!shown.contains(KEY_A) && !shown.contains(KEY_B), "{shown}");
        assert!(!shown.to_lowercase().contains("0001020304"), "{shown}");
        let (generated, hex) = Keyring::generate().unwrap();
        assert_eq!(hex.expose().len(), 64);
        assert!(!format!("{hex:?} {generated:?}").contains(hex.expose()));
        let again = Keyring::from_hex(hex.expose(), &[]).unwrap();
        assert_eq!(again.current_key_id(), generated.current_key_id());
    }

    #[test]
    fn a_key_file_is_created_once_with_mode_0600_and_reused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/secret.key");
        let first = Keyring::load_or_create(&path, &[]).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let second = Keyring::load_or_create(&path, &[KEY_A]).unwrap();
        assert_eq!(first.current_key_id(), second.current_key_id());
        assert_eq!(second.key_ids().len(), 2);
        let aad = b"x";
        let sealed = first.encrypt(b"persisted", aad).unwrap();
        assert_eq!(second.decrypt(&sealed, aad).unwrap(), b"persisted");
        std::fs::write(&path, "garbage").unwrap();
        assert!(Keyring::load_or_create(&path, &[]).is_err());
    }

    #[test]
    fn redaction_replaces_every_value_longest_first() {
        let r = Redactor::new([
            ("TOKEN", "abcd1234"),
            ("PREFIX", "abcd"),
            ("SHORT", "xyz"),
            ("EMPTY", ""),
        ]);
        assert_eq!(
            r.redact_str("t=abcd1234 p=abcd s=xyz abcd12"),
            "t=[REDACTED:TOKEN] p=[REDACTED:PREFIX] s=xyz [REDACTED:PREFIX]12"
        );
        let shown = format!("{r:?}");
        assert!(
            !shown.contains("abcd1234") && shown.contains("TOKEN"),
            "{shown}"
        );
        assert_eq!(Redactor::default().redact_str("abc"), "abc");
        assert!(Redactor::new([("A", "abc")]).is_empty());
    }

    #[test]
    fn a_value_split_across_chunks_is_still_redacted() {
        let r = Redactor::new([("TOKEN", "s3cr3t-v4lue")]);
        let mut stream = r.stream();
        let mut out = stream.push(b"before s3cr");
        assert!(stream.pending() > 0);
        out.extend(stream.push(b"3t-v4"));
        out.extend(stream.push(b"lue after s3c"));
        out.extend(stream.finish());
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "before [REDACTED:TOKEN] after s3c"
        );
    }

    fn chunked(r: &Redactor, text: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (text.len() + 1)).collect();
        cuts.sort_unstable();
        let mut stream = r.stream();
        let mut out = Vec::new();
        let mut from = 0;
        for cut in cuts {
            out.extend(stream.push(&text[from..cut]));
            from = cut;
        }
        out.extend(stream.push(&text[from..]));
        out.extend(stream.finish());
        out
    }

    proptest! {
        #[test]
        fn any_chunking_redacts_like_the_whole_text(
            values in prop::collection::vec("[ab]{1,7}", 0..4),
            text in "[ab ]{0,80}",
            cuts in prop::collection::vec(0usize..100, 0..12),
        ) {
            let r = Redactor::new(values.iter().enumerate().map(|(i, v)| (format!("S{i}"), v.clone())));
            let whole = r.redact_bytes(text.as_bytes());
            prop_assert_eq!(chunked(&r, text.as_bytes(), &cuts), whole.clone());
            // No redacted value survives (replacements hold no 'a' or 'b').
            let whole = String::from_utf8(whole).unwrap();
            for v in values.iter().filter(|v| v.len() >= MIN_REDACTED_LEN) {
                prop_assert!(!whole.contains(v.as_str()), "{:?} left in {:?}", v, whole);
            }
        }
    }
}
