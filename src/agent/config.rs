//! The agent's TOML config, validated once into [`AgentSettings`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::protocol::device_info::check_labels;
use crate::protocol::limits::{AGENT_DEAD_RELAY_TIMEOUT, DEFAULT_RELAY_PORT, MAX_CONFIG_FILE};
use crate::protocol::{AllowList, Name};
use crate::ssh::keys::{self, PrivateKey};

/// The file as written. Unknown fields are refused, so a typo never passes
/// silently.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFile {
    /// `HOST:PORT` of the relay (port 2222 if omitted).
    pub relay: String,
    /// System (tenant) name.
    pub system: String,
    /// This device's name.
    pub name: String,
    /// Path of the OpenSSH private key (relative to the config file).
    pub key: PathBuf,
    /// The relay's host-key fingerprint, `SHA256:…`.
    pub relay_host_key: String,
    /// Local targets the agent may connect to; the port of each is the device port.
    #[serde(default)]
    pub allow: Option<Vec<String>>,
    /// Silence from the relay after which it is taken as gone (e.g. "30s").
    #[serde(default)]
    pub keepalive_timeout: Option<String>,
    /// Labels shown by `ls` and matched by `ls --label KEY=VALUE`.
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    /// Gateway: networks whose hosts this agent may also connect to.
    #[serde(default)]
    pub scope: Option<Vec<String>>,
    /// Gateway: ports served on hosts of the scope (default: 22).
    #[serde(default)]
    pub scope_ports: Option<Vec<u16>>,
    /// Gateway: the owner's hard limit for networks an admin associates.
    #[serde(default)]
    pub permit: Option<Vec<String>>,
    /// Gateway: listen inside the network, carry connections to a service.
    #[serde(default)]
    pub listen: Vec<super::gateway::ListenFile>,
}

/// A validated agent configuration.
#[derive(Clone)]
pub struct AgentSettings {
    pub relay: String,
    pub system: Name,
    pub name: Name,
    pub key: Arc<PrivateKey>,
    pub relay_host_key: String,
    pub allow: AllowList,
    pub dead_after: Duration,
    pub labels: BTreeMap<String, String>,
    /// Scope, ports, permit and listen forwards (empty for a plain device).
    pub gateway: super::gateway::GatewayConfig,
}

impl std::fmt::Debug for AgentSettings {
    // The private key never appears in logs or error messages.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentSettings")
            .field("relay", &self.relay)
            .field("system", &self.system)
            .field("name", &self.name)
            .field("key", &keys::fingerprint(self.key.public_key()))
            .field("relay_host_key", &self.relay_host_key)
            .field("allow", &self.allow)
            .field("dead_after", &self.dead_after)
            .field("labels", &self.labels)
            .field("gateway", &self.gateway)
            .finish()
    }
}

impl AgentSettings {
    pub fn load(path: &Path) -> Result<AgentSettings> {
        let text = read_config(path)?;
        let file: AgentFile = toml::from_str(&text)
            .with_context(|| format!("invalid agent config {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        AgentSettings::from_file(file, base)
            .with_context(|| format!("invalid agent config {}", path.display()))
    }

    pub fn from_file(file: AgentFile, base: &Path) -> Result<AgentSettings> {
        let system = Name::parse(&file.system).context("system")?;
        let name = Name::parse(&file.name).context("name")?;
        let key_path = base.join(&file.key);
        let key = keys::read_private(&key_path)?;
        let allow = match &file.allow {
            Some(list) => AllowList::parse(list)
                .map_err(anyhow::Error::msg)
                .context("allow")?,
            None => AllowList::default(),
        };
        let dead_after = match &file.keepalive_timeout {
            Some(s) => humantime::parse_duration(s)
                .with_context(|| format!("keepalive_timeout {s:?} (write it like \"30s\")"))?,
            None => AGENT_DEAD_RELAY_TIMEOUT,
        };
        if dead_after < Duration::from_secs(1) {
            bail!("keepalive_timeout must be at least 1s");
        }
        let labels = file.labels.unwrap_or_default();
        check_labels(&labels)
            .map_err(anyhow::Error::msg)
            .context("labels")?;
        let gateway = super::gateway::GatewayConfig::from_file(
            file.scope.as_deref(),
            file.scope_ports.as_deref(),
            file.permit.as_deref(),
            &file.listen,
        )?;
        Ok(AgentSettings {
            relay: relay_address(&file.relay)?,
            system,
            name,
            key: Arc::new(key),
            relay_host_key: check_fingerprint(&file.relay_host_key)?,
            allow,
            dead_after,
            labels,
            gateway,
        })
    }
}

/// Where the agent config lives when no path is given.
pub fn default_config_path() -> Option<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|x| !x.is_empty()) {
        return Some(PathBuf::from(x).join("warren/agent.toml"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/warren/agent.toml"))
}

/// Reads a config file with a size bound (a hostile file cannot make us
/// allocate much).
pub fn read_config(path: &Path) -> Result<String> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if meta.len() > MAX_CONFIG_FILE {
        bail!(
            "{} is {} bytes; a config is at most {MAX_CONFIG_FILE}",
            path.display(),
            meta.len()
        );
    }
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// `host` or `host:port`; the port defaults to 2222.
pub fn relay_address(s: &str) -> Result<String> {
    let s = s.trim();
    if s.is_empty() {
        bail!("relay address is empty (expected HOST:PORT)");
    }
    if s.starts_with('[') || s.rsplit_once(':').is_some_and(|(h, _)| !h.contains(':')) {
        let port = s.rsplit_once(':').map(|(_, p)| p).unwrap_or("");
        if port.parse::<u16>().map_or(true, |p| p == 0) {
            bail!("relay address {s:?}: bad port");
        }
        return Ok(s.to_string());
    }
    if s.contains(':') {
        // A bare IPv6 address.
        return Ok(format!("[{s}]:{DEFAULT_RELAY_PORT}"));
    }
    Ok(format!("{s}:{DEFAULT_RELAY_PORT}"))
}

/// Checks a `SHA256:` fingerprint's form (43 base64 characters).
pub fn check_fingerprint(s: &str) -> Result<String> {
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
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_addresses_get_a_default_port() {
        assert_eq!(
            relay_address("relay.example").unwrap(),
            "relay.example:2222"
        );
        assert_eq!(
            relay_address("relay.example:22").unwrap(),
            "relay.example:22"
        );
        assert_eq!(relay_address("::1").unwrap(), "[::1]:2222");
        assert_eq!(relay_address("[::1]:2200").unwrap(), "[::1]:2200");
        assert!(relay_address("").is_err());
        assert!(relay_address("relay:0").is_err());
        assert!(relay_address("relay:http").is_err());
    }

    #[test]
    fn fingerprints_are_checked() {
        let good = format!("SHA256:{}", "a".repeat(43));
        assert!(check_fingerprint(&good).is_ok());
        assert!(check_fingerprint("SHA256:short").is_err());
        assert!(check_fingerprint(&format!("MD5:{}", "a".repeat(43))).is_err());
    }

    #[test]
    fn config_rejects_unknown_fields_and_bad_values() {
        let dir = tempfile::tempdir().unwrap();
        let key = keys::generate_ed25519().unwrap();
        keys::write_pair(&key, &dir.path().join("k"), "t").unwrap();
        let fp = keys::fingerprint(key.public_key());
        let base = format!(
            "relay = \"127.0.0.1:2222\"\nsystem = \"tau\"\nname = \"dev1\"\nkey = \"k\"\nrelay_host_key = \"{fp}\"\n"
        );
        let write = |extra: &str| {
            let p = dir.path().join("agent.toml");
            std::fs::write(&p, format!("{base}{extra}")).unwrap();
            AgentSettings::load(&p)
        };
        let s = write("").unwrap();
        assert_eq!(s.allow.ports().collect::<Vec<_>>(), vec![22]);
        assert_eq!(s.dead_after, AGENT_DEAD_RELAY_TIMEOUT);
        assert!(!format!("{s:?}").contains("PRIVATE"));
        let s = write("labels = { site = \"lab3\", gpu = \"a100\" }\n").unwrap();
        assert_eq!(s.labels.get("gpu").map(String::as_str), Some("a100"));
        let s =
            write("allow = [\"127.0.0.1:22\", \"8080\"]\nkeepalive_timeout = \"5s\"\n").unwrap();
        assert_eq!(s.allow.ports().collect::<Vec<_>>(), vec![22, 8080]);
        assert_eq!(s.dead_after, Duration::from_secs(5));
        for bad in [
            "colour = \"red\"\n",
            "allow = [\"nohost\"]\n",
            "keepalive_timeout = \"soon\"\n",
            "allow = []\n",
            "labels = { site = \"has space\" }\n",
        ] {
            let err = write(bad).err().map(|e| format!("{e:#}"));
            assert!(err.is_some(), "{bad:?} should be refused");
        }
    }
}
