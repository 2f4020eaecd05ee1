//! The MQTT side of on-demand devices, shared by the agent and the relay:
//! broker addresses, topics, the JSON messages, and an MQTT 5 session
//! (rumqttc) over TCP or TLS (rustls on aws-lc-rs).
//!
//! Topics, under a prefix (`warren` unless configured):
//!
//! ```text
//! warren/<system>/<device>/cmd    {"op": "connect" | "disconnect", "id": "…"}
//! warren/<system>/<device>/state  {"state": "asleep", "reason": …, "at": RFC 3339, "version": "…"}
//! ```
//!
//! Nothing secret travels here: a forged `connect` can only make a device
//! dial its own pinned relay with its own key.

pub mod tls;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use rumqttc::Transport;
use rumqttc::v5::MqttOptions;
use rumqttc::v5::mqttbytes::v5::{LastWill, PublishProperties};
use serde::{Deserialize, Serialize};

use crate::protocol::Name;

pub use rumqttc::v5::mqttbytes::QoS;
pub use rumqttc::v5::{AsyncClient, Event, EventLoop};

/// The topic prefix unless a config names another.
pub const DEFAULT_TOPIC_PREFIX: &str = "warren";

/// How long a command stays deliverable (MQTT 5 message expiry): a
/// `connect` queued while a device was cut off must not fire hours later.
pub const COMMAND_EXPIRY: Duration = Duration::from_secs(60);

/// Largest command or state message read; anything bigger is malformed.
pub const MAX_MESSAGE: usize = 4096;

/// Longest command id kept (ids only correlate log lines).
pub const MAX_COMMAND_ID: usize = 128;

/// MQTT keepalive: a dead broker connection is noticed within about 1.5×.
pub const KEEP_ALIVE: Duration = Duration::from_secs(30);

/// How long a broker keeps a disconnected session (and the commands queued
/// for it, each until its own expiry).
pub const SESSION_EXPIRY: Duration = Duration::from_secs(3600);

/// A broker address: `mqtt://HOST[:PORT]` (1883) or `mqtts://HOST[:PORT]` (8883).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl BrokerUrl {
    pub fn parse(s: &str) -> Result<BrokerUrl> {
        let (tls, rest) = if let Some(r) = s.strip_prefix("mqtt://") {
            (false, r)
        } else if let Some(r) = s.strip_prefix("mqtts://") {
            (true, r)
        } else {
            bail!("broker {s:?}: write it as mqtt://HOST[:PORT] or mqtts://HOST[:PORT]");
        };
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() || rest.contains('/') || rest.contains('@') {
            bail!("broker {s:?}: expected only HOST[:PORT] after the scheme");
        }
        let default = if tls { 8883 } else { 1883 };
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, _)) if !h.ends_with(']') && h.contains(':') => (rest, default),
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .with_context(|| format!("broker {s:?}: bad port {p:?}"))?,
            ),
            None => (rest, default),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            bail!("broker {s:?}: no host");
        }
        Ok(BrokerUrl {
            tls,
            host: host.to_string(),
            port,
        })
    }
}

impl std::fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// The topics of one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
}

impl Default for Topics {
    fn default() -> Self {
        Topics {
            prefix: DEFAULT_TOPIC_PREFIX.to_string(),
        }
    }
}

impl Topics {
    /// A prefix of topic levels without wildcards, e.g. `warren` or `sites/eu/warren`.
    pub fn new(prefix: &str) -> Result<Topics> {
        let p = prefix.trim_matches('/');
        if p.is_empty()
            || p.contains(['+', '#', '\0'])
            || p.split('/').any(str::is_empty)
            || p.len() > 200
        {
            bail!("topic_prefix {prefix:?}: use topic levels without wildcards, like \"warren\"");
        }
        Ok(Topics {
            prefix: p.to_string(),
        })
    }

    pub fn cmd(&self, system: &Name, device: &Name) -> String {
        format!("{}/{system}/{device}/cmd", self.prefix)
    }

    pub fn state(&self, system: &Name, device: &Name) -> String {
        format!("{}/{system}/{device}/state", self.prefix)
    }

    /// Every device's state topic, for the relay's subscription.
    pub fn all_states(&self) -> String {
        format!("{}/+/+/state", self.prefix)
    }

    /// The (system, device) of a state topic under this prefix.
    pub fn parse_state(&self, topic: &str) -> Option<(Name, Name)> {
        let rest = topic.strip_prefix(&self.prefix)?.strip_prefix('/')?;
        let mut parts = rest.split('/');
        let (s, d, last) = (parts.next()?, parts.next()?, parts.next()?);
        if last != "state" || parts.next().is_some() {
            return None;
        }
        Some((Name::parse(s).ok()?, Name::parse(d).ok()?))
    }
}

/// What a command asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Connect,
    Disconnect,
}

/// A command on a device's `cmd` topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Command {
    pub op: Op,
    #[serde(default)]
    pub id: String,
}

impl Command {
    /// Parses a command payload; anything else is an error to log, never a crash.
    pub fn parse(payload: &[u8]) -> Result<Command, String> {
        if payload.len() > MAX_MESSAGE {
            return Err(format!("{} bytes, more than {MAX_MESSAGE}", payload.len()));
        }
        let c: Command = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
        if c.id.len() > MAX_COMMAND_ID || c.id.chars().any(char::is_control) {
            return Err(format!(
                "id must be at most {MAX_COMMAND_ID} printable characters"
            ));
        }
        Ok(c)
    }

    pub fn to_json(&self) -> String {
        // A struct of a unit enum and a string always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A device's state as it reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Asleep,
    Connecting,
    Online,
    Error,
    /// The agent's last will: its MQTT session ended without a goodbye.
    Offline,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Asleep => "asleep",
            State::Connecting => "connecting",
            State::Online => "online",
            State::Error => "error",
            State::Offline => "offline",
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The retained message on a device's `state` topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub state: State,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// RFC 3339, UTC.
    pub at: String,
    #[serde(default)]
    pub version: String,
}

impl Report {
    /// A report made now by this build.
    pub fn now(state: State, reason: Option<String>) -> Report {
        Report {
            state,
            reason,
            at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    pub fn parse(payload: &[u8]) -> Result<Report, String> {
        if payload.len() > MAX_MESSAGE {
            return Err(format!("{} bytes, more than {MAX_MESSAGE}", payload.len()));
        }
        serde_json::from_slice(payload).map_err(|e| e.to_string())
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// How to reach and log in to a broker. The password never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerSettings {
    pub url: BrokerUrl,
    pub username: Option<String>,
    pub password: Option<String>,
    /// A private CA (PEM) instead of the system's roots, for `mqtts://`.
    pub ca: Option<PathBuf>,
    /// A TLS client certificate and its key (PEM), as AWS IoT Core requires.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

impl std::fmt::Debug for BrokerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerSettings")
            .field("url", &self.url.to_string())
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("ca", &self.ca)
            .field("client_cert", &self.client_cert)
            .finish()
    }
}

/// Reads a password file: its first line, without the newline.
pub fn read_password(path: &Path) -> Result<String> {
    let text = crate::files::read_config(path)
        .with_context(|| format!("reading password file {}", path.display()))?;
    let line = text.lines().next().unwrap_or("").to_string();
    if line.is_empty() {
        bail!("password file {} is empty", path.display());
    }
    Ok(line)
}

/// A session's identity and last will.
pub struct SessionOptions {
    pub client_id: String,
    /// Keep the session (and commands queued for it) across reconnects.
    pub persistent: bool,
    /// Published by the broker, retained, if the session dies.
    pub will: Option<(String, Vec<u8>)>,
}

/// An MQTT client ready to poll, and the TLS bridge it needs (kept alive
/// as long as the client).
pub struct Session {
    pub client: AsyncClient,
    pub eventloop: EventLoop,
    pub bridge: Option<tls::Bridge>,
}

impl BrokerSettings {
    /// Checks the settings now (certificates and keys read), so that a bad
    /// path is a config error rather than a failure at the first wake.
    pub fn check(&self) -> Result<()> {
        if self.url.tls {
            tls::client_config(self)?;
        } else if self.ca.is_some() || self.client_cert.is_some() {
            bail!(
                "broker {}: a CA or client certificate needs mqtts://",
                self.url
            );
        }
        Ok(())
    }

    /// A client for this broker. TLS runs in this crate (rustls on
    /// aws-lc-rs), bridged to the MQTT client over a private unix socket,
    /// so no second crypto provider comes in; must run inside a tokio runtime.
    pub fn session(&self, session: SessionOptions, cap: usize) -> Result<Session> {
        self.check()?;
        let bridge = match self.url.tls {
            true => Some(tls::Bridge::start(self)?),
            false => None,
        };
        let mut o = match &bridge {
            Some(b) => {
                let mut o = MqttOptions::new(
                    session.client_id,
                    b.path().to_string_lossy().into_owned(),
                    0,
                );
                o.set_transport(Transport::Unix);
                o
            }
            None => MqttOptions::new(session.client_id, self.url.host.clone(), self.url.port),
        };
        o.set_keep_alive(KEEP_ALIVE);
        o.set_max_packet_size(Some(64 * 1024));
        if session.persistent {
            o.set_clean_start(false);
            o.set_session_expiry_interval(Some(SESSION_EXPIRY.as_secs() as u32));
        }
        if let Some(user) = &self.username {
            o.set_credentials(user.clone(), self.password.clone().unwrap_or_default());
        }
        if let Some((topic, payload)) = session.will {
            o.set_last_will(LastWill::new(topic, payload, QoS::AtLeastOnce, true, None));
        }
        let (client, eventloop) = AsyncClient::new(o, cap);
        Ok(Session {
            client,
            eventloop,
            bridge,
        })
    }
}

/// Publish properties that let a command expire after `expiry`.
pub fn expiring(expiry: Duration) -> PublishProperties {
    PublishProperties {
        message_expiry_interval: Some(expiry.as_secs().clamp(1, u64::from(u32::MAX)) as u32),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_parse_or_say_why_not() {
        let u = BrokerUrl::parse("mqtt://broker.example").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port),
            (false, "broker.example", 1883)
        );
        let u = BrokerUrl::parse("mqtts://broker.example:8884/").unwrap();
        assert_eq!((u.tls, u.port), (true, 8884));
        assert_eq!(u.to_string(), "mqtts://broker.example:8884");
        let u = BrokerUrl::parse("mqtt://[::1]:1999").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 1999));
        assert_eq!(BrokerUrl::parse("mqtts://h").unwrap().port, 8883);
        for bad in [
            "broker:1883",
            "http://h",
            "mqtt://",
            "mqtt://h:0",
            "mqtt://h:x",
            "mqtt://u@h",
            "mqtt://h/t",
        ] {
            assert!(BrokerUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn topics_round_trip() {
        let t = Topics::new("warren").unwrap();
        let (s, d) = (Name::parse("tau").unwrap(), Name::parse("dev1").unwrap());
        assert_eq!(t.cmd(&s, &d), "warren/tau/dev1/cmd");
        assert_eq!(t.state(&s, &d), "warren/tau/dev1/state");
        assert_eq!(t.parse_state("warren/tau/dev1/state"), Some((s, d)));
        assert_eq!(t.parse_state("warren/tau/dev1/cmd"), None);
        assert_eq!(t.parse_state("other/tau/dev1/state"), None);
        assert_eq!(t.parse_state("warren/tau/dev1/state/x"), None);
        assert_eq!(t.all_states(), "warren/+/+/state");
        assert!(Topics::new("a/+/b").is_err());
        assert!(Topics::new("").is_err());
        assert!(Topics::new("a//b").is_err());
        assert_eq!(
            Topics::new("/sites/eu/").unwrap().all_states(),
            "sites/eu/+/+/state"
        );
    }

    #[test]
    fn commands_parse_and_refuse_junk() {
        let c = Command::parse(br#"{"op":"connect","id":"abc"}"#).unwrap();
        assert_eq!((c.op, c.id.as_str()), (Op::Connect, "abc"));
        assert_eq!(Command::parse(c.to_json().as_bytes()).unwrap(), c);
        assert_eq!(
            Command::parse(br#"{"op":"disconnect"}"#).unwrap().op,
            Op::Disconnect
        );
        for bad in [
            &b"not json"[..],
            br#"{"op":"reboot","id":"1"}"#,
            br#"{"op":"connect","id":"1","x":2}"#,
            br#"{"id":"1"}"#,
            br#"[]"#,
            &[0xff, 0xfe][..],
        ] {
            assert!(Command::parse(bad).is_err(), "{bad:?}");
        }
        let long = format!(r#"{{"op":"connect","id":"{}"}}"#, "x".repeat(200));
        assert!(Command::parse(long.as_bytes()).is_err());
        assert!(Command::parse(&vec![b' '; MAX_MESSAGE + 1]).is_err());
    }

    #[test]
    fn reports_carry_state_reason_time_and_version() {
        let r = Report::now(State::Error, Some("relay unreachable".into()));
        let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(json["state"], "error");
        assert_eq!(json["reason"], "relay unreachable");
        assert_eq!(json["version"], env!("CARGO_PKG_VERSION"));
        humantime::parse_rfc3339(json["at"].as_str().unwrap()).unwrap();
        assert_eq!(Report::parse(r.to_json().as_bytes()).unwrap(), r);
        let asleep = Report::now(State::Asleep, None).to_json();
        assert!(!asleep.contains("reason"), "{asleep}");
        assert!(Report::parse(br#"{"state":"dancing","at":"x"}"#).is_err());
    }

    #[test]
    fn passwords_never_print() {
        let s = BrokerSettings {
            url: BrokerUrl::parse("mqtt://h").unwrap(),
            username: Some("dev1".into()),
            password: Some("s3cret".into()),
            ca: None,
            client_cert: None,
        };
        assert!(!format!("{s:?}").contains("s3cret"));
    }
}
