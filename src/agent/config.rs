//! The agent's TOML config, validated once into [`AgentSettings`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::files::read_config;
use crate::protocol::device_info::check_labels;
use crate::protocol::limits::AGENT_DEAD_RELAY_TIMEOUT;
use crate::protocol::{AllowList, Name, RelayAddress};
use crate::ssh::keys::{self, PrivateKey};

/// The file as written. Unknown fields are refused, so a typo never passes
/// silently.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFile {
    /// `HOST:PORT` of the relay (port 2222 if omitted), `tls://HOST:443`
    /// (SSH inside TLS) or `wss://HOST/ssh` (inside a WebSocket).
    pub relay: String,
    /// A CA (PEM) that signs the relay's TLS certificate, instead of the
    /// system's roots (relative to the config file).
    #[serde(default)]
    pub relay_ca: Option<PathBuf>,
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
    /// On demand: asleep on an MQTT broker until a `connect` command.
    #[serde(default)]
    pub on_demand: Option<super::on_demand::OnDemandFile>,
    /// Direct paths with controllers (default true); `false`: always relayed.
    #[serde(default)]
    pub p2p: Option<bool>,
}

/// A validated agent configuration.
#[derive(Clone)]
pub struct AgentSettings {
    pub relay: String,
    pub system: Name,
    pub name: Name,
    pub key: Arc<PrivateKey>,
    pub relay_host_key: String,
    /// CA of the relay's TLS certificate (`relay_ca`); `None`: system roots.
    pub relay_ca: Option<PathBuf>,
    pub allow: AllowList,
    pub dead_after: Duration,
    pub labels: BTreeMap<String, String>,
    /// Scope, ports, permit and listen forwards (empty for a plain device).
    pub gateway: super::gateway::GatewayConfig,
    /// Asleep on an MQTT broker until woken (`[on_demand]`); `None`: always connected.
    pub on_demand: Option<super::on_demand::OnDemand>,
    /// Accept direct paths (`p2p`, default true).
    pub p2p: bool,
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
            .field("relay_ca", &self.relay_ca)
            .field("allow", &self.allow)
            .field("dead_after", &self.dead_after)
            .field("labels", &self.labels)
            .field("gateway", &self.gateway)
            .field("on_demand", &self.on_demand)
            .field("p2p", &self.p2p)
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
        let on_demand = match &file.on_demand {
            Some(od) => Some(super::on_demand::OnDemand::from_file(od, base).context("on_demand")?),
            None => None,
        };
        Ok(AgentSettings {
            on_demand,
            relay: relay_list(&file.relay)?,
            system,
            name,
            key: Arc::new(key),
            relay_host_key: keys::parse_fingerprints(&file.relay_host_key)?,
            relay_ca: file.relay_ca.map(|ca| base.join(ca)),
            allow,
            dead_after,
            labels,
            gateway,
            p2p: file.p2p.unwrap_or(true),
        })
    }
}

impl AgentSettings {
    /// How the agent reaches the relay (its CA; the proxy from the
    /// environment).
    pub fn dial_options(&self) -> crate::transport::DialOptions {
        crate::transport::DialOptions {
            ca: self.relay_ca.clone(),
            ..Default::default()
        }
    }
}

/// `relay` as written: one address, or the relays of a cluster separated
/// by commas, tried in turn (each may also be a name with several addresses).
fn relay_list(s: &str) -> Result<String> {
    let list = s
        .split(',')
        .map(|a| RelayAddress::parse(a.trim()).map(RelayAddress::into_string))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(list.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(s.on_demand.is_none());
        std::fs::write(dir.path().join("mqtt.pass"), "pw\n").unwrap();
        let s = write(
            "[on_demand]\nbroker = \"mqtt://broker:1999\"\nusername = \"dev1\"\npassword_file = \"mqtt.pass\"\nidle_timeout = \"2s\"\n",
        )
        .unwrap();
        let od = s.on_demand.as_ref().unwrap();
        assert_eq!(od.idle_timeout, Duration::from_secs(2));
        assert_eq!(od.broker.password.as_deref(), Some("pw"));
        assert_eq!(od.broker.url.port, 1999);
        assert!(!format!("{s:?}").contains("\"pw\""));
        for bad in [
            "colour = \"red\"\n",
            "allow = [\"nohost\"]\n",
            "keepalive_timeout = \"soon\"\n",
            "allow = []\n",
            "labels = { site = \"has space\" }\n",
            "[on_demand]\nbroker = \"tcp://h\"\n",
            "[on_demand]\nbroker = \"mqtt://h\"\nidle_timeout = \"0s\"\n",
            "[on_demand]\nbroker = \"mqtt://h\"\npassword = \"x\"\n",
            "[on_demand]\nbroker = \"mqtt://h\"\nusername = \"u\"\npassword_file = \"missing\"\n",
            "[on_demand]\nbroker = \"mqtt://h\"\ncert = \"c.pem\"\n",
        ] {
            let err = write(bad).err().map(|e| format!("{e:#}"));
            assert!(err.is_some(), "{bad:?} should be refused");
        }
    }
}
