//! The controller side: settings (file, flags, environment), connecting to
//! the relay, and `warren proxy` (a stream on stdin/stdout for ssh's
//! `ProxyCommand`); [`socks`] and [`forward`] carry many streams over one
//! self-healing connection ([`tunnel`]); [`sshconfig`] writes ssh configs and
//! connect scripts.

pub mod direct;
pub mod forward;
pub mod hostlist;
pub mod socks;
pub mod sshconfig;
pub mod tunnel;

pub mod enroll;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::files::{CLIENT_CONFIG, config_path, read_config};
use crate::p2p;
use crate::protocol::limits::AGENT_DEAD_RELAY_TIMEOUT;
use crate::protocol::{Name, RelayAddress};
use crate::ssh::client::{self, ClientConnection, ConnectOptions, ForwardedHandler, NoForwards};
use crate::ssh::keys::{self, PrivateKey};

/// `~/.config/warren/client.toml` as written; every field may also come
/// from a flag or a `WARREN_*` variable, which win.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientFile {
    pub relay: Option<String>,
    pub system: Option<String>,
    pub key: Option<PathBuf>,
    pub relay_host_key: Option<String>,
    /// A CA (PEM) that signs the relay's TLS certificate (tls:// and
    /// wss:// relays), instead of the system's roots.
    pub relay_ca: Option<PathBuf>,
    /// `USER:PASSWORD` for `warren socks` listeners (required off loopback).
    pub socks_auth: Option<String>,
}

/// Values given on the command line or in the environment.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub relay: Option<String>,
    pub system: Option<String>,
    pub key: Option<PathBuf>,
    pub relay_host_key: Option<String>,
    pub relay_ca: Option<PathBuf>,
}

/// Validated controller settings.
#[derive(Clone)]
pub struct ClientSettings {
    pub relay: String,
    pub system: Name,
    pub key_path: PathBuf,
    pub key: Arc<PrivateKey>,
    pub relay_host_key: String,
    /// From `socks_auth` in client.toml; never printed.
    pub socks_auth: Option<socks::Credentials>,
    /// CA of the relay's TLS certificate (`--ca`, `relay_ca`).
    pub relay_ca: Option<PathBuf>,
}

impl ClientSettings {
    pub fn resolve(o: &Overrides) -> Result<ClientSettings> {
        let (file, base) = match o.config.clone().or_else(|| config_path(CLIENT_CONFIG)) {
            Some(path) if path.exists() => {
                let text = read_config(&path)?;
                let file: ClientFile = toml::from_str(&text)
                    .with_context(|| format!("invalid client config {}", path.display()))?;
                let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
                (file, base)
            }
            Some(path) if o.config.is_some() => {
                bail!("client config {} does not exist", path.display())
            }
            _ => (ClientFile::default(), PathBuf::new()),
        };
        let missing = |what: &str, flag: &str, env: &str| {
            anyhow::anyhow!("no {what}: set it in client.toml, with --{flag}, or with {env}")
        };
        let relay = o
            .relay
            .clone()
            .or(file.relay)
            .ok_or_else(|| missing("relay", "relay", "WARREN_RELAY"))?;
        let system = o
            .system
            .clone()
            .or(file.system)
            .ok_or_else(|| missing("system", "system", "WARREN_SYSTEM"))?;
        let key_path = match (&o.key, file.key) {
            (Some(k), _) => k.clone(),
            (None, Some(k)) => base.join(k),
            (None, None) => return Err(missing("key", "key", "WARREN_KEY")),
        };
        let fp = o
            .relay_host_key
            .clone()
            .or(file.relay_host_key)
            .ok_or_else(|| missing("relay host key", "relay-host-key", "WARREN_RELAY_HOST_KEY"))?;
        let relay_ca = o.relay_ca.clone().or(file.relay_ca.map(|ca| base.join(ca)));
        Ok(ClientSettings {
            relay_ca,
            relay: RelayAddress::parse(&relay)?.into_string(),
            system: Name::parse(&system).context("system")?,
            key: Arc::new(keys::read_private(&key_path)?),
            key_path,
            relay_host_key: keys::parse_fingerprints(&fp)?,
            socks_auth: file
                .socks_auth
                .as_deref()
                .map(socks::Credentials::parse)
                .transpose()
                .context("socks_auth in client.toml")?,
        })
    }
}

impl ClientSettings {
    /// How to reach the relay (its CA; the proxy from the environment).
    pub fn dial_options(&self) -> crate::transport::DialOptions {
        crate::transport::DialOptions {
            ca: self.relay_ca.clone(),
            ..Default::default()
        }
    }
}

/// Connects and authenticates to the relay as a controller.
pub async fn connect(s: &ClientSettings) -> Result<ClientConnection<NoForwards>> {
    connect_with(s, NoForwards).await
}

/// Connects as a controller, with `handler` for channels the relay opens
/// (its drop tells [`tunnel`] that the connection is gone).
pub async fn connect_with<H: ForwardedHandler>(
    s: &ClientSettings,
    handler: H,
) -> Result<ClientConnection<H>> {
    let tcp = crate::transport::dial(&s.relay, &s.dial_options()).await?;
    let opts = ConnectOptions {
        user: s.system.to_string(),
        key: s.key.clone(),
        host_key: s.relay_host_key.clone(),
        dead_after: AGENT_DEAD_RELAY_TIMEOUT,
    };
    client::connect(tcp, &opts, handler).await
}

/// Carries one stream to `host:port` on stdin/stdout (for `ProxyCommand`):
/// on a direct path if one comes up within [`p2p::PROXY_BUDGET`] (`prefer`)
/// or at all (`require`), else through the relay.
pub async fn proxy(s: &ClientSettings, host: &str, port: u16, mode: p2p::Mode) -> Result<()> {
    let conn = Arc::new(connect(s).await?);
    let mut direct = None;
    if mode != p2p::Mode::Off && Name::parse(host).is_ok() {
        let path = direct::DevicePath::new(host);
        path.claim_upgrade();
        tokio::spawn(path.clone().run(conn.clone(), s.relay.clone(), port));
        let budget = match mode {
            p2p::Mode::Require => p2p::SIGNAL_TIMEOUT + p2p::PUNCH_BUDGET * 2,
            _ => p2p::PROXY_BUDGET,
        };
        if let Some(link) = path.wait_up(budget).await {
            match link.open(host, port).await {
                Ok(d) => direct = Some(d),
                Err(tunnel::OpenError::Failed(why)) => {
                    tracing::info!("direct stream failed ({why}); relaying it")
                }
                Err(e) => bail!("{e}"),
            }
        }
        if direct.is_none() && mode == p2p::Mode::Require {
            let why = path.why_relayed().unwrap_or_default();
            bail!("no direct path to {host} (--p2p require): {why}");
        }
    }
    let stream = match direct {
        Some(d) => direct::Stream::Direct(d),
        None => direct::Stream::Relayed(conn.open(host, u32::from(port)).await?),
    };
    tracing::debug!(path = stream.path().as_str(), "stream open");
    stream
        .splice_io(tokio::io::stdin(), tokio::io::stdout())
        .await;
    conn.disconnect().await;
    Ok(())
}

/// Quotes a word for a POSIX shell (ssh runs `ProxyCommand` through one).
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_for_the_shell() {
        assert_eq!(shell_quote("/usr/bin/warren"), "/usr/bin/warren");
        assert_eq!(shell_quote("/a b/warren"), "'/a b/warren'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn settings_come_from_file_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let key = keys::generate_ed25519().unwrap();
        keys::write_pair(&key, &dir.path().join("id"), "t").unwrap();
        let fp = keys::fingerprint(key.public_key());
        let cfg = dir.path().join("client.toml");
        std::fs::write(
            &cfg,
            format!("relay = \"relay.example\"\nsystem = \"tau\"\nkey = \"id\"\nrelay_host_key = \"{fp}\"\n"),
        )
        .unwrap();
        let mut o = Overrides {
            config: Some(cfg.clone()),
            ..Default::default()
        };
        let s = ClientSettings::resolve(&o).unwrap();
        assert_eq!(
            (s.relay.as_str(), s.system.as_str()),
            ("relay.example:2222", "tau")
        );
        o.system = Some("other".into());
        o.relay = Some("10.9.9.9:2200".into());
        let s = ClientSettings::resolve(&o).unwrap();
        assert_eq!(
            (s.relay.as_str(), s.system.as_str()),
            ("10.9.9.9:2200", "other")
        );

        std::fs::write(&cfg, "relay = \"r\"\nsurprise = 1\n").unwrap();
        assert!(ClientSettings::resolve(&o).is_err());
        let none = Overrides {
            config: Some(dir.path().join("missing.toml")),
            ..Default::default()
        };
        assert!(ClientSettings::resolve(&none).is_err());
    }
}
