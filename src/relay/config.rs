//! The relay's optional config file (`warren relay --config FILE`): the
//! same settings as the flags, in TOML. SIGHUP re-reads it and applies what
//! can change without touching live connections (`public_ports`).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::files::read_config;
use crate::ssh::algorithms::{Ciphers, KexAlgorithms};

/// The file as written; unknown fields are refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayFile {
    /// Address of the SSH port, e.g. "0.0.0.0:2222".
    pub listen: Option<SocketAddr>,
    /// Data directory (relative to the config file).
    pub data: Option<PathBuf>,
    /// PostgreSQL database of a cluster of relays ("postgres://…").
    pub database: Option<String>,
    /// Relay ports an admin may expose publicly, e.g. ["4000-4100", "8443"].
    /// Empty (the default): no public ports at all.
    pub public_ports: Option<Vec<String>>,
    /// Address public ports listen on (default: the SSH port's address).
    pub public_bind: Option<IpAddr>,
    /// Ciphers offered, in order, as sshd's `Ciphers`:
    /// "aes128-gcm@openssh.com,aes256-gcm@openssh.com", or
    /// "-chacha20-poly1305@openssh.com" to drop one from the default.
    pub ciphers: Option<String>,
    /// Key exchanges offered, in order, as sshd's `KexAlgorithms`.
    pub kex_algorithms: Option<String>,
    /// Refuse clients that do not offer strict key exchange.
    pub require_strict_kex: Option<bool>,
    /// MQTT broker that wakes on-demand devices ("mqtt://broker:1883").
    pub mqtt: Option<String>,
    pub mqtt_username: Option<String>,
    /// File holding the broker password (relative to the config file).
    pub mqtt_password_file: Option<PathBuf>,
    /// A private CA, a client certificate and its key (PEM) for mqtts://.
    pub mqtt_ca: Option<PathBuf>,
    pub mqtt_cert: Option<PathBuf>,
    pub mqtt_key: Option<PathBuf>,
    pub mqtt_topic_prefix: Option<String>,
    /// How long a stream to an asleep device waits ("30s").
    pub wake_timeout: Option<String>,
    /// UDP discovery for direct paths: "IP:PORT" or "off" (default: `listen`).
    pub udp: Option<String>,
    /// Systems whose streams never take direct paths.
    pub forbid_direct: Option<Vec<String>>,
    /// Address of the HTTP API and web console, e.g. "127.0.0.1:8080"
    /// (off when unset).
    pub http: Option<SocketAddr>,
    /// The console's URL as browsers reach it (behind a proxy), which
    /// `console-login` prints [default: http://HTTP-ADDRESS/].
    pub console_url: Option<String>,
    /// Address of the Prometheus `/metrics` endpoint (off when unset).
    pub metrics: Option<SocketAddr>,
    /// Bandwidth limit of every system without one of its own ("100M").
    pub system_rate: Option<String>,
    /// Bandwidth limit of every device without one of its own ("10M").
    pub device_rate: Option<String>,
    /// Connections not yet logged in held at once (default 256), and of
    /// those, per address (default 32).
    pub max_unauthenticated: Option<usize>,
    pub max_unauthenticated_per_address: Option<usize>,
    /// The TLS port ("0.0.0.0:443"): SSH in TLS or a WebSocket, and HTTPS.
    pub tls: Option<SocketAddr>,
    /// Its certificate chain and key (PEM, relative to the config file);
    /// SIGHUP reloads them.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

impl RelayFile {
    pub fn load(path: &Path) -> Result<RelayFile> {
        let text = read_config(path)?;
        let mut file: RelayFile = toml::from_str(&text)
            .with_context(|| format!("invalid relay config {}", path.display()))?;
        if let Some(base) = path.parent() {
            for p in [
                &mut file.data,
                &mut file.mqtt_password_file,
                &mut file.mqtt_ca,
                &mut file.mqtt_cert,
                &mut file.mqtt_key,
                &mut file.tls_cert,
                &mut file.tls_key,
            ]
            .into_iter()
            .flatten()
            {
                *p = base.join(&*p);
            }
        }
        if let Some(c) = &file.ciphers {
            c.parse::<Ciphers>().map_err(|e| {
                anyhow::anyhow!("invalid relay config {}: ciphers: {e}", path.display())
            })?;
        }
        if let Some(k) = &file.kex_algorithms {
            k.parse::<KexAlgorithms>().map_err(|e| {
                anyhow::anyhow!(
                    "invalid relay config {}: kex_algorithms: {e}",
                    path.display()
                )
            })?;
        }
        for (field, value) in [
            ("system_rate", &file.system_rate),
            ("device_rate", &file.device_rate),
        ] {
            if let Some(v) = value {
                crate::protocol::rate::Rate::parse(v, None).map_err(|e| {
                    anyhow::anyhow!("invalid relay config {}: {field}: {e}", path.display())
                })?;
            }
        }
        if let Some(p) = &file.public_ports {
            PortRanges::parse(p).with_context(|| {
                format!("invalid relay config {}: public_ports", path.display())
            })?;
        }
        Ok(file)
    }
}

/// Sets of relay ports, like `4000-4100` or `8443`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortRanges(Vec<(u16, u16)>);

impl PortRanges {
    pub fn parse<S: AsRef<str>>(items: &[S]) -> Result<PortRanges> {
        let mut out = Vec::new();
        for item in items {
            let s = item.as_ref().trim();
            let (lo, hi) = s.split_once('-').unwrap_or((s, s));
            let port = |p: &str| -> Result<u16> {
                match p.trim().parse::<u16>() {
                    Ok(0) | Err(_) => bail!("{s:?} is not a port or LO-HI port range (1-65535)"),
                    Ok(n) => Ok(n),
                }
            };
            let (lo, hi) = (port(lo)?, port(hi)?);
            if lo > hi {
                bail!("port range {s:?} goes backwards");
            }
            out.push((lo, hi));
        }
        Ok(PortRanges(out))
    }

    pub fn contains(&self, port: u16) -> bool {
        self.0.iter().any(|(lo, hi)| (*lo..=*hi).contains(&port))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Display for PortRanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(lo, hi)| {
                if lo == hi {
                    lo.to_string()
                } else {
                    format!("{lo}-{hi}")
                }
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_parse_and_match() {
        let r = PortRanges::parse(&["4000-4100", "8443"]).unwrap();
        assert!(r.contains(4000) && r.contains(4100) && r.contains(8443));
        assert!(!r.contains(3999) && !r.contains(4101) && !r.contains(22));
        assert_eq!(r.to_string(), "4000-4100,8443");
        assert!(PortRanges::parse::<&str>(&[]).unwrap().is_empty());
        for bad in ["0", "http", "10-5", "1-70000", ""] {
            assert!(PortRanges::parse(&[bad]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tls_port_settings_resolve_against_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("relay.toml");
        std::fs::write(
            &p,
            "tls = \"0.0.0.0:443\"\ntls_cert = \"tls/fullchain.pem\"\ntls_key = \"/etc/k.pem\"\n",
        )
        .unwrap();
        let f = RelayFile::load(&p).unwrap();
        assert_eq!(f.tls, Some("0.0.0.0:443".parse().unwrap()));
        assert_eq!(f.tls_cert.unwrap(), dir.path().join("tls/fullchain.pem"));
        assert_eq!(f.tls_key.unwrap(), std::path::PathBuf::from("/etc/k.pem"));
        std::fs::write(&p, "tls = \"443\"\n").unwrap();
        assert!(RelayFile::load(&p).is_err(), "an address with its IP");
    }

    #[test]
    fn config_file_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("relay.toml");
        std::fs::write(
            &p,
            "listen = \"127.0.0.1:2222\"\ndata = \"state\"\npublic_ports = [\"4000-4010\"]\n\
             database = \"postgres://warren@db/warren\"\n",
        )
        .unwrap();
        let f = RelayFile::load(&p).unwrap();
        assert_eq!(f.data.unwrap(), dir.path().join("state"));
        assert_eq!(f.database.as_deref(), Some("postgres://warren@db/warren"));
        std::fs::write(
            &p,
            "mqtt = \"mqtts://broker:8883\"\nmqtt_username = \"relay\"\nmqtt_password_file = \"relay.pass\"\nmqtt_ca = \"ca.crt\"\nwake_timeout = \"45s\"\n",
        )
        .unwrap();
        let f = RelayFile::load(&p).unwrap();
        assert_eq!(f.mqtt.as_deref(), Some("mqtts://broker:8883"));
        assert_eq!(f.mqtt_password_file.unwrap(), dir.path().join("relay.pass"));
        assert_eq!(f.mqtt_ca.unwrap(), dir.path().join("ca.crt"));
        assert_eq!(f.wake_timeout.as_deref(), Some("45s"));
        std::fs::write(&p, "system_rate = \"100M\"\ndevice_rate = \"10Mi\"\n").unwrap();
        let f = RelayFile::load(&p).unwrap();
        assert_eq!(f.system_rate.as_deref(), Some("100M"));
        assert_eq!(f.device_rate.as_deref(), Some("10Mi"));
        for bad in [
            "colour = 1\n",
            "listen = \"nowhere\"\n",
            "public_ports = [\"99999\"]\n",
            "ciphers = \"aes128-cbc\"\n",
            "kex_algorithms = \"diffie-hellman-group1-sha1\"\n",
            "system_rate = \"fast\"\n",
            "device_rate = \"0\"\n",
        ] {
            std::fs::write(&p, bad).unwrap();
            assert!(RelayFile::load(&p).is_err(), "{bad:?}");
        }
    }
}
