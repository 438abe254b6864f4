//! Signature checks of inbound requests from GitHub, Slack and Discord. Each takes
//! the raw body exactly as received (a re-serialised body would not verify) and the
//! headers' values, and says why it refuses. Secrets and signatures never appear in
//! a refusal's text.

use std::fmt;

use ring::{hmac, signature};

/// How far a Slack request's timestamp may be from now, either way (Slack: 5 min).
pub const SLACK_MAX_SKEW_SECONDS: i64 = 300;

/// Why a request was refused. Every one is a 401 to the sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A header the platform always sends is missing.
    Missing(&'static str),
    /// A header is there but not in the platform's format.
    Malformed(&'static str),
    /// The signature does not match the body (tampered, or another secret).
    BadSignature,
    /// The timestamp is too far from now: a replay, or a clock far off.
    Stale { skew_seconds: i64 },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Missing(header) => write!(f, "the {header} header is missing"),
            Refusal::Malformed(header) => write!(f, "the {header} header is malformed"),
            Refusal::BadSignature => f.write_str("the signature does not match the body"),
            Refusal::Stale { skew_seconds } => write!(
                f,
                "the request's timestamp is {skew_seconds} s from now (at most {SLACK_MAX_SKEW_SECONDS} s)"
            ),
        }
    }
}

impl std::error::Error for Refusal {}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

/// GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>`.
pub fn github(secret: &[u8], signature_header: Option<&str>, body: &[u8]) -> Result<(), Refusal> {
    const HEADER: &str = "X-Hub-Signature-256";
    let header = signature_header.ok_or(Refusal::Missing(HEADER))?;
    let tag = header
        .trim()
        .strip_prefix("sha256=")
        .and_then(hex_decode)
        .filter(|tag| tag.len() == 32)
        .ok_or(Refusal::Malformed(HEADER))?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    // Constant time: the comparison's duration says nothing of the expected tag.
    hmac::verify(&key, body, &tag).map_err(|_| Refusal::BadSignature)
}

/// Slack: `X-Slack-Signature: v0=<hex HMAC-SHA256(secret, "v0:" + ts + ":" + body)>`
/// with `X-Slack-Request-Timestamp: ts` (unix seconds) within
/// [`SLACK_MAX_SKEW_SECONDS`] of `now_unix`.
pub fn slack(
    signing_secret: &[u8],
    timestamp_header: Option<&str>,
    signature_header: Option<&str>,
    body: &[u8],
    now_unix: i64,
) -> Result<(), Refusal> {
    const TIMESTAMP: &str = "X-Slack-Request-Timestamp";
    const SIGNATURE: &str = "X-Slack-Signature";
    let timestamp = timestamp_header.ok_or(Refusal::Missing(TIMESTAMP))?.trim();
    let signature = signature_header.ok_or(Refusal::Missing(SIGNATURE))?;
    let seconds: i64 = timestamp
        .parse()
        .ok()
        .filter(|_| timestamp.bytes().all(|b| b.is_ascii_digit()))
        .ok_or(Refusal::Malformed(TIMESTAMP))?;
    let tag = signature
        .trim()
        .strip_prefix("v0=")
        .and_then(hex_decode)
        .filter(|tag| tag.len() == 32)
        .ok_or(Refusal::Malformed(SIGNATURE))?;
    // The window first: an old request is refused even with a valid signature.
    let skew = now_unix.saturating_sub(seconds);
    if skew.saturating_abs() > SLACK_MAX_SKEW_SECONDS {
        return Err(Refusal::Stale { skew_seconds: skew });
    }
    let key = hmac::Key::new(hmac::HMAC_SHA256, signing_secret);
    hmac::verify(&key, &signed(timestamp, body), &tag).map_err(|_| Refusal::BadSignature)
}

/// What Slack signs: `v0:<timestamp>:<body>`.
fn signed(timestamp: &str, body: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(4 + timestamp.len() + body.len());
    message.extend_from_slice(b"v0:");
    message.extend_from_slice(timestamp.as_bytes());
    message.push(b':');
    message.extend_from_slice(body);
    message
}

/// A Discord application's public key (64 hex digits, as its portal shows it).
#[derive(Clone, PartialEq, Eq)]
pub struct DiscordPublicKey([u8; 32]);

impl DiscordPublicKey {
    pub fn from_hex(text: &str) -> Result<DiscordPublicKey, String> {
        let bytes = hex_decode(text.trim())
            .filter(|b| b.len() == 32)
            .ok_or_else(|| "a Discord public key is 64 hex digits".to_string())?;
        let mut key = [0u8; 32];
        key.copy_from_slice(&bytes);
        Ok(DiscordPublicKey(key))
    }
}

impl fmt::Debug for DiscordPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DiscordPublicKey(..)")
    }
}

/// Discord: `X-Signature-Ed25519: <hex Ed25519(timestamp + body)>` with
/// `X-Signature-Timestamp`, under the application's public key.
pub fn discord(
    public_key: &DiscordPublicKey,
    signature_header: Option<&str>,
    timestamp_header: Option<&str>,
    body: &[u8],
) -> Result<(), Refusal> {
    const SIGNATURE: &str = "X-Signature-Ed25519";
    const TIMESTAMP: &str = "X-Signature-Timestamp";
    let signature = signature_header.ok_or(Refusal::Missing(SIGNATURE))?;
    let timestamp = timestamp_header.ok_or(Refusal::Missing(TIMESTAMP))?;
    if timestamp.is_empty() {
        return Err(Refusal::Malformed(TIMESTAMP));
    }
    let signature = hex_decode(signature.trim())
        .filter(|s| s.len() == 64)
        .ok_or(Refusal::Malformed(SIGNATURE))?;
    let mut message = Vec::with_capacity(timestamp.len() + body.len());
    message.extend_from_slice(timestamp.as_bytes());
    message.extend_from_slice(body);
    signature::UnparsedPublicKey::new(&signature::ED25519, public_key.0)
        .verify(&message, &signature)
        .map_err(|_| Refusal::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GitHub's documented example ("Validating webhook deliveries").
    #[test]
    fn github_accepts_its_published_example_and_nothing_else() {
        let secret = b"It's a Secret to Everybody";
        let good = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(github(secret, Some(good), b"Hello, World!"), Ok(()));
        assert_eq!(
            github(secret, Some(good), b"Hello, World?"),
            Err(Refusal::BadSignature)
        );
        assert_eq!(
            github(b"another secret", Some(good), b"Hello, World!"),
            Err(Refusal::BadSignature)
        );
        assert_eq!(
            github(secret, None, b"Hello, World!"),
            Err(Refusal::Missing("X-Hub-Signature-256"))
        );
        for bad in [
            "757107ea",
            "sha1=757107ea",
            "sha256=zz",
            "sha256=",
            "sha256=757107ea0e",
        ] {
            assert_eq!(
                github(secret, Some(bad), b"Hello, World!"),
                Err(Refusal::Malformed("X-Hub-Signature-256")),
                "{bad}"
            );
        }
    }

    const SLACK_SECRET: &[u8] = b"8f742231b10e8888abcd99yyyzzz85a5";
    const SLACK_TS: i64 = 1_531_420_618;
    const SLACK_BODY: &str = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    const SLACK_SIG: &str = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";

    /// Slack's documented example ("Verifying requests from Slack").
    #[test]
    fn slack_accepts_its_published_example_within_five_minutes() {
        let ts = SLACK_TS.to_string();
        let check = |ts: &str, sig: &str, body: &str, now: i64| {
            slack(SLACK_SECRET, Some(ts), Some(sig), body.as_bytes(), now)
        };
        assert_eq!(check(&ts, SLACK_SIG, SLACK_BODY, SLACK_TS), Ok(()));
        assert_eq!(check(&ts, SLACK_SIG, SLACK_BODY, SLACK_TS + 300), Ok(()));
        assert_eq!(check(&ts, SLACK_SIG, SLACK_BODY, SLACK_TS - 300), Ok(()));
        // Replayed later, or from the future: refused although the signature is right.
        assert_eq!(
            check(&ts, SLACK_SIG, SLACK_BODY, SLACK_TS + 301),
            Err(Refusal::Stale { skew_seconds: 301 })
        );
        assert_eq!(
            check(&ts, SLACK_SIG, SLACK_BODY, SLACK_TS - 301),
            Err(Refusal::Stale { skew_seconds: -301 })
        );
        // The timestamp is signed: moving it breaks the signature.
        let moved = (SLACK_TS + 1).to_string();
        assert_eq!(
            check(&moved, SLACK_SIG, SLACK_BODY, SLACK_TS),
            Err(Refusal::BadSignature)
        );
        let tampered = SLACK_BODY.replace("roadrunner", "coyote");
        assert_eq!(
            check(&ts, SLACK_SIG, &tampered, SLACK_TS),
            Err(Refusal::BadSignature)
        );
        assert_eq!(
            slack(SLACK_SECRET, None, Some(SLACK_SIG), b"", SLACK_TS),
            Err(Refusal::Missing("X-Slack-Request-Timestamp"))
        );
        assert_eq!(
            slack(SLACK_SECRET, Some(&ts), None, b"", SLACK_TS),
            Err(Refusal::Missing("X-Slack-Signature"))
        );
        for bad_ts in ["", "-1531420618", "+1531420618", "1531420618.5", "soon"] {
            assert_eq!(
                check(bad_ts, SLACK_SIG, SLACK_BODY, SLACK_TS),
                Err(Refusal::Malformed("X-Slack-Request-Timestamp")),
                "{bad_ts}"
            );
        }
        for bad_sig in ["a2114d57", "v1=a2114d57", "v0=", "v0=xyz"] {
            assert_eq!(
                check(&ts, bad_sig, SLACK_BODY, SLACK_TS),
                Err(Refusal::Malformed("X-Slack-Signature")),
                "{bad_sig}"
            );
        }
    }

    /// RFC 8032 §7.1, TEST 2 (message 0x72): Discord signs timestamp + body, so
    /// timestamp "r" with an empty body is that message.
    #[test]
    fn discord_accepts_an_rfc_8032_vector_and_refuses_changes() {
        let key = DiscordPublicKey::from_hex(
            "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        )
        .unwrap();
        let sig = "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00";
        assert_eq!(discord(&key, Some(sig), Some("r"), b""), Ok(()));
        // Anything added to the body, or another timestamp, breaks it.
        assert_eq!(
            discord(&key, Some(sig), Some("r"), b"x"),
            Err(Refusal::BadSignature)
        );
        assert_eq!(
            discord(&key, Some(sig), Some("s"), b""),
            Err(Refusal::BadSignature)
        );
        let mut flipped = sig.to_string();
        flipped.replace_range(0..1, "8");
        assert_eq!(
            discord(&key, Some(&flipped), Some("r"), b""),
            Err(Refusal::BadSignature)
        );
        assert_eq!(
            discord(&key, None, Some("r"), b""),
            Err(Refusal::Missing("X-Signature-Ed25519"))
        );
        assert_eq!(
            discord(&key, Some(sig), None, b""),
            Err(Refusal::Missing("X-Signature-Timestamp"))
        );
        assert_eq!(
            discord(&key, Some(&sig[..64]), Some("r"), b""),
            Err(Refusal::Malformed("X-Signature-Ed25519"))
        );
        assert!(DiscordPublicKey::from_hex("3d40").is_err());
        assert!(DiscordPublicKey::from_hex(&"g".repeat(64)).is_err());
    }

    /// A key pair of our own, signing what Discord signs: an interaction body.
    #[test]
    fn discord_verifies_what_its_key_pair_signed() {
        use ring::signature::{Ed25519KeyPair, KeyPair as _};
        let pair = Ed25519KeyPair::from_seed_unchecked(&[7; 32]).unwrap();
        let public: String = pair
            .public_key()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let key = DiscordPublicKey::from_hex(&public).unwrap();
        let (ts, body) = ("1733616000", br#"{"type":1}"#);
        let sig: String = pair
            .sign(&[ts.as_bytes(), body].concat())
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(discord(&key, Some(&sig), Some(ts), body), Ok(()));
        assert_eq!(
            discord(&key, Some(&sig.to_uppercase()), Some(ts), body),
            Ok(()),
            "hex is case-insensitive"
        );
        assert_eq!(
            discord(&key, Some(&sig), Some(ts), br#"{"type":2}"#),
            Err(Refusal::BadSignature)
        );
        assert!(
            !format!("{key:?}").contains(&public[..8]),
            "keys are not printed"
        );
    }

    proptest::proptest! {
        /// Whatever arrives, the checks answer (no panic) and refuse what was not
        /// signed with the secret.
        #[test]
        fn arbitrary_requests_are_refused_without_panicking(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            sig in "\\PC{0,140}",
            ts in "\\PC{0,24}",
        ) {
            proptest::prop_assert!(github(b"secret", Some(&sig), &body).is_err());
            proptest::prop_assert!(slack(b"secret", Some(&ts), Some(&sig), &body, SLACK_TS).is_err());
            let key = DiscordPublicKey::from_hex(
                "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
            ).unwrap();
            proptest::prop_assert!(discord(&key, Some(&sig), Some(&ts), &body).is_err());
        }
    }
}
