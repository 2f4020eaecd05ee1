//! OpenSSH keys: loading, generating, fingerprints.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, Result, bail};
use ssh_key::private::{Ed25519Keypair, KeypairData};
use ssh_key::{Algorithm, HashAlg};

use crate::protocol::limits::MAX_CONFIG_FILE;

pub use ssh_key::{PrivateKey, PublicKey};

/// A key's `SHA256:…` fingerprint, as `ssh-keygen -l` prints it. Made only
/// from a key, from text whose form was checked, or from the store (which
/// holds only fingerprints made here); it reads as a `&str` everywhere else.
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(into = "String", try_from = "String")]
pub struct Fingerprint(String);

impl From<Fingerprint> for String {
    fn from(f: Fingerprint) -> String {
        f.0
    }
}

impl TryFrom<String> for Fingerprint {
    type Error = anyhow::Error;
    fn try_from(s: String) -> Result<Self> {
        parse_fingerprint(&s)
    }
}

impl Fingerprint {
    /// A fingerprint read back from the store, which only ever holds ones
    /// made by [`fingerprint`] or [`parse_fingerprint`].
    pub fn from_stored(text: String) -> Self {
        Fingerprint(text)
    }

    /// What a console session or an API token acts under where a key would
    /// give its fingerprint: `web:` and the credential's id.
    pub fn web_credential(id: &str) -> Self {
        Fingerprint(format!("web:{id}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
impl From<&str> for Fingerprint {
    fn from(s: &str) -> Self {
        Fingerprint(s.to_string())
    }
}

impl std::ops::Deref for Fingerprint {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Fingerprint {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for Fingerprint {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for Fingerprint {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for Fingerprint {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl std::str::FromStr for Fingerprint {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        parse_fingerprint(s)
    }
}

pub fn fingerprint(key: &PublicKey) -> Fingerprint {
    Fingerprint(key.fingerprint(HashAlg::Sha256).to_string())
}

/// A comma-separated list of fingerprints (the relays of a cluster, any of
/// which an agent accepts), checked and joined again with commas.
pub fn parse_fingerprints(s: &str) -> Result<String> {
    let keys = s
        .split(',')
        .map(|one| parse_fingerprint(one).map(|f| f.0))
        .collect::<Result<Vec<_>>>()?;
    Ok(keys.join(","))
}

/// Whether `seen` is one of the comma-separated pinned fingerprints.
pub fn pinned(pins: &str, seen: &str) -> bool {
    pins.split(',').any(|p| p == seen)
}

/// Checks a `SHA256:` fingerprint's form (43 base64 characters), as a
/// config or an invite gives it.
pub fn parse_fingerprint(s: &str) -> Result<Fingerprint> {
    let s = s.trim();
    let ok = s.strip_prefix("SHA256:").is_some_and(|b| {
        b.len() == 43
            && b.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '/')
    });
    if !ok {
        bail!(
            "relay host key {s:?} is not a SHA256 fingerprint (expected SHA256: and 43 characters, as `warren admin host-key` prints)"
        );
    }
    Ok(Fingerprint(s.to_string()))
}

/// Parses one OpenSSH public key line (`ssh-ed25519 AAAA… comment`).
/// Accepts ed25519, ecdsa (nistp256/384/521) and rsa keys.
pub fn parse_public(text: &str) -> Result<PublicKey> {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .context("no public key found (expected a line like 'ssh-ed25519 AAAA… comment')")?;
    let key = PublicKey::from_openssh(line)
        .map_err(|e| anyhow::anyhow!("not an OpenSSH public key: {e}"))?;
    match key.algorithm() {
        Algorithm::Ed25519 | Algorithm::Ecdsa { .. } | Algorithm::Rsa { .. } => Ok(key),
        other => bail!("unsupported key type {other} (use ed25519, ecdsa or rsa)"),
    }
}

pub fn read_public(path: &Path) -> Result<PublicKey> {
    let text = read_small(path)?;
    parse_public(&text).with_context(|| format!("reading public key {}", path.display()))
}

/// Loads an unencrypted OpenSSH private key.
pub fn read_private(path: &Path) -> Result<PrivateKey> {
    let text = read_small(path)?;
    let hint = "Warren needs an unencrypted OpenSSH key; `warren keygen PATH` makes one";
    let key = PrivateKey::from_openssh(text.trim())
        .map_err(|e| anyhow::anyhow!("cannot use private key {}: {e} ({hint})", path.display()))?;
    if key.is_encrypted() {
        bail!(
            "cannot use private key {}: it is encrypted ({hint})",
            path.display()
        );
    }
    Ok(key)
}

fn read_small(path: &Path) -> Result<String> {
    let meta = fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if meta.len() > MAX_CONFIG_FILE {
        bail!(
            "{} is {} bytes; too big to be a key or config",
            path.display(),
            meta.len()
        );
    }
    fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

pub fn generate_ed25519() -> Result<PrivateKey> {
    let mut seed = zeroize::Zeroizing::new([0u8; 32]);
    aws_lc_rs::rand::fill(&mut seed[..])
        .map_err(|_| anyhow::anyhow!("generating an ed25519 key: no system randomness"))?;
    let pair = Ed25519Keypair::from_seed(&seed);
    PrivateKey::new(KeypairData::Ed25519(pair), "")
        .map_err(|e| anyhow::anyhow!("generating an ed25519 key: {e}"))
}

/// Writes `key` to `path` (mode 0600) and its public half to `path.pub`.
/// Refuses to overwrite an existing file.
pub fn write_pair(key: &PrivateKey, path: &Path, comment: &str) -> Result<()> {
    let mut key = key.clone();
    key.set_comment(comment);
    let private = key
        .to_openssh(ssh_key::LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("encoding private key: {e}"))?;
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|e| anyhow::anyhow!("encoding public key: {e}"))?;
    let pub_path = path.with_extension(match path.extension() {
        Some(ext) => format!("{}.pub", ext.to_string_lossy()),
        None => "pub".to_string(),
    });
    for p in [path, pub_path.as_path()] {
        if p.exists() {
            bail!("{} already exists; not overwriting a key", p.display());
        }
    }
    write_new(path, private.as_bytes(), 0o600)?;
    write_new(&pub_path, format!("{public}\n").as_bytes(), 0o644)?;
    Ok(())
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Loads the relay's host key from `path`, creating an ed25519 key on first use.
pub fn load_or_create_host_key(path: &Path) -> Result<PrivateKey> {
    if path.exists() {
        return read_private(path);
    }
    let key = generate_ed25519()?;
    write_pair(&key, path, "warren-relay")?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_checked() {
        let good = format!("SHA256:{}", "a".repeat(43));
        assert!(parse_fingerprint(&good).is_ok());
        assert!(parse_fingerprint("SHA256:short").is_err());
        assert!(parse_fingerprint(&format!("MD5:{}", "a".repeat(43))).is_err());
    }

    #[test]
    fn generated_pair_round_trips_with_matching_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id_ed25519");
        let key = generate_ed25519().unwrap();
        write_pair(&key, &path, "test").unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let back = read_private(&path).unwrap();
        let public = read_public(&dir.path().join("id_ed25519.pub")).unwrap();
        assert_eq!(fingerprint(back.public_key()), fingerprint(&public));
        assert!(fingerprint(&public).starts_with("SHA256:"));
        assert!(
            write_pair(&key, &path, "again").is_err(),
            "must not overwrite"
        );
    }

    #[test]
    fn rejects_garbage_public_keys() {
        assert!(parse_public("").is_err());
        assert!(parse_public("ssh-ed25519 notbase64!!").is_err());
        assert!(parse_public(&"A".repeat(10_000)).is_err());
    }

    #[test]
    fn accepts_keys_made_by_ssh_keygen() {
        let dir = tempfile::tempdir().unwrap();
        for (kind, bits) in [
            ("ed25519", None),
            ("ecdsa", Some("384")),
            ("rsa", Some("2048")),
        ] {
            let path = dir.path().join(kind);
            let mut cmd = std::process::Command::new("ssh-keygen");
            cmd.args(["-q", "-N", "", "-t", kind, "-f"]).arg(&path);
            if let Some(b) = bits {
                cmd.args(["-b", b]);
            }
            assert!(cmd.status().unwrap().success(), "ssh-keygen -t {kind}");
            let public = read_public(&path.with_extension("pub")).unwrap();
            let private = read_private(&path).unwrap();
            assert_eq!(fingerprint(&public), fingerprint(private.public_key()));
        }
    }
}
