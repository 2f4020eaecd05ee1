//! Invite tokens: `warren1.` followed by base64url (no padding) of a small
//! JSON object. The token carries everything a new machine needs to reach and
//! pin the relay (address, host-key fingerprint) and what it will become
//! (system, role, name), plus the invite's id and a 256-bit secret. The relay
//! stores only the secret's SHA-256, so its database cannot be used to mint
//! enrollments.

use anyhow::{Context, Result, bail};
use data_encoding::BASE64URL_NOPAD;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use super::limits::MAX_TOKEN_LEN;
use super::{Name, Role};

pub const TOKEN_PREFIX: &str = "warren1.";

/// The SSH user a new machine logs in as to enroll, with its new key. It is
/// not a system name: `system add enroll` is refused.
pub const ENROLL_USER: &str = "enroll";

/// Bytes of randomness in an invite secret.
const SECRET_BYTES: usize = 32;

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Invite {
    /// `HOST:PORT` of the relay.
    pub relay: String,
    /// The relay's host-key fingerprint (`SHA256:…`), pinned from the start.
    pub host_key: String,
    pub system: Name,
    pub role: Role,
    pub name: Name,
    /// The invite's public id (for `invite ls` / `invite revoke`).
    pub id: String,
    /// Unix seconds after which the relay refuses the token.
    pub expires: u64,
    /// base64url of the secret.
    pub secret: String,
}

impl Invite {
    /// A fresh id and secret for a new invite.
    pub fn fresh_id_and_secret() -> Result<(String, String)> {
        let mut id = [0u8; 6];
        let mut secret = zeroize::Zeroizing::new([0u8; SECRET_BYTES]);
        aws_lc_rs::rand::fill(&mut id)
            .and_then(|()| aws_lc_rs::rand::fill(&mut secret[..]))
            .map_err(|_| anyhow::anyhow!("making an invite: no system randomness"))?;
        Ok((
            data_encoding::HEXLOWER.encode(&id),
            BASE64URL_NOPAD.encode(&secret[..]),
        ))
    }

    pub fn encode(&self) -> String {
        // Serializing plain strings and numbers cannot fail.
        let json = serde_json::to_vec(self).unwrap_or_default();
        format!("{TOKEN_PREFIX}{}", BASE64URL_NOPAD.encode(&json))
    }

    /// Parses a token; the message says what is wrong with it.
    pub fn decode(token: &str) -> Result<Invite> {
        let token = token.trim();
        if token.len() > MAX_TOKEN_LEN {
            bail!("malformed invite token: longer than {MAX_TOKEN_LEN} characters");
        }
        let Some(body) = token.strip_prefix(TOKEN_PREFIX) else {
            bail!("malformed invite token: it should start with {TOKEN_PREFIX:?}");
        };
        let json = BASE64URL_NOPAD
            .decode(body.as_bytes())
            .map_err(|e| anyhow::anyhow!("malformed invite token: not base64url ({e})"))?;
        let invite: Invite = serde_json::from_slice(&json)
            .context("malformed invite token: its fields do not parse")?;
        let secret = BASE64URL_NOPAD
            .decode(invite.secret.as_bytes())
            .ok()
            .filter(|s| s.len() == SECRET_BYTES);
        if secret.is_none() {
            bail!("malformed invite token: the secret is not {SECRET_BYTES} bytes");
        }
        if invite.id.len() != 12 || !invite.id.chars().all(|c| c.is_ascii_hexdigit()) {
            bail!("malformed invite token: bad invite id");
        }
        Ok(invite)
    }

    /// SHA-256 of the secret, hex: what the relay stores and compares.
    pub fn secret_hash(&self) -> String {
        hash_secret(&self.secret)
    }
}

pub fn hash_secret(secret: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, secret.as_bytes());
    data_encoding::HEXLOWER.encode(digest.as_ref())
}

/// Compares two hashes in time independent of where they differ.
pub fn same_hash(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Invite {
        let (id, secret) = Invite::fresh_id_and_secret().unwrap();
        Invite {
            relay: "relay.example:2222".into(),
            host_key: format!("SHA256:{}", "a".repeat(43)),
            system: Name::parse("tau").unwrap(),
            role: Role::Device,
            name: Name::parse("dev1").unwrap(),
            id,
            expires: 1_900_000_000,
            secret,
        }
    }

    #[test]
    fn round_trips_and_hashes() {
        let i = sample();
        let t = i.encode();
        assert!(t.starts_with("warren1."));
        assert!(!t.contains(['+', '/', '=', ' ']));
        assert_eq!(Invite::decode(&t).unwrap(), i);
        assert_eq!(i.secret_hash().len(), 64);
        assert!(same_hash(&i.secret_hash(), &i.secret_hash()));
        assert!(!same_hash(&i.secret_hash(), &sample().secret_hash()));
    }

    #[test]
    fn malformed_tokens_say_why() {
        let good = sample().encode();
        for (bad, says) in [
            ("", "start with"),
            ("warren2.abc", "start with"),
            ("warren1.!!!", "base64url"),
            (
                &format!("warren1.{}", BASE64URL_NOPAD.encode(b"{}")),
                "fields",
            ),
            (&good[..good.len() - 10], ""),
            (&"warren1.".repeat(400), "longer"),
        ] {
            let err = format!("{:#}", Invite::decode(bad).unwrap_err());
            assert!(err.contains("malformed invite token"), "{err}");
            assert!(err.contains(says), "{bad:?}: {err}");
        }
        let mut i = sample();
        i.name = Name::parse("x").unwrap();
        let json = serde_json::to_string(&i)
            .unwrap()
            .replace("\"x\"", "\"Not A Name\"");
        let t = format!("warren1.{}", BASE64URL_NOPAD.encode(json.as_bytes()));
        assert!(Invite::decode(&t).is_err());
    }
}
