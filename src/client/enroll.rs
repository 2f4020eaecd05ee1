//! `warren enroll TOKEN` on a new machine: make an ed25519 key here (the
//! private key never leaves), log in to the relay named by the token as user
//! `enroll` with that key (pinning the token's host key), run `enroll TOKEN`,
//! and only once the relay confirmed, write the key and a complete agent
//! config (device) or client config (controller, admin).

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::protocol::device_info::check_labels;
use crate::protocol::token::{ENROLL_USER, Invite};
use crate::protocol::{Name, Role};
use crate::ssh::client::{self, ConnectOptions, NoForwards};
use crate::ssh::keys::{self, Fingerprint};

/// What to enroll and where to write the result.
#[derive(Debug, Clone)]
pub struct EnrollRequest {
    pub token: String,
    /// Config file to write; the key goes beside it (`NAME.key`).
    pub config: PathBuf,
    /// Labels for a device's agent config.
    pub labels: BTreeMap<String, String>,
    /// The CA (PEM) that signs a `tls://` or `wss://` relay's certificate,
    /// when the system's roots do not; written into the config as
    /// `relay_ca` (an absolute path).
    pub ca: Option<PathBuf>,
}

/// The relay's answer (JSON on stdout of `enroll`).
#[derive(Debug, Deserialize)]
struct Answer {
    system: String,
    role: Role,
    name: String,
    fingerprint: Fingerprint,
}

/// What was written.
#[derive(Debug, Clone, Serialize)]
pub struct Enrolled {
    pub system: String,
    pub role: Role,
    pub name: String,
    pub fingerprint: Fingerprint,
    pub config: PathBuf,
    pub key: PathBuf,
}

#[derive(Serialize)]
struct AgentToml<'a> {
    relay: &'a str,
    system: &'a str,
    name: &'a str,
    key: &'a str,
    relay_host_key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    relay_ca: Option<&'a str>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: &'a BTreeMap<String, String>,
}

#[derive(Serialize)]
struct ClientToml<'a> {
    relay: &'a str,
    system: &'a str,
    key: &'a str,
    relay_host_key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    relay_ca: Option<&'a str>,
}

/// Where the key goes for a config path: `agent.toml` → `agent.key`.
pub fn key_path_for(config: &Path) -> PathBuf {
    config.with_extension("key")
}

pub async fn enroll(req: &EnrollRequest) -> Result<Enrolled> {
    let invite = Invite::decode(&req.token)?;
    check_labels(&req.labels).map_err(anyhow::Error::msg)?;
    if invite.role != Role::Device && !req.labels.is_empty() {
        bail!(
            "labels are for devices; this token enrolls a {}",
            invite.role
        );
    }
    let key_path = key_path_for(&req.config);
    let pub_path = key_path.with_extension("key.pub");
    // Refuse before contacting the relay, so a refusal writes nothing anywhere.
    for p in [&req.config, &key_path, &pub_path] {
        if p.exists() {
            bail!(
                "{} already exists; not overwriting (choose another --config)",
                p.display()
            );
        }
    }
    let ca = match &req.ca {
        Some(ca) => {
            Some(std::path::absolute(ca).with_context(|| format!("--ca {}", ca.display()))?)
        }
        None => None,
    };
    let key = Arc::new(keys::generate_ed25519()?);
    // A cluster's token lists every relay: enroll at the first.
    let first = invite.relay.split(',').next().unwrap_or_default();
    let dial = crate::transport::DialOptions {
        ca: ca.clone(),
        ..Default::default()
    };
    let tcp = crate::transport::dial(first, &dial).await?;
    let opts = ConnectOptions {
        user: ENROLL_USER.into(),
        key: key.clone(),
        host_key: invite.host_key.clone(),
        dead_after: Duration::from_secs(30),
    };
    let conn = client::connect(tcp, &opts, NoForwards)
        .await
        .with_context(|| format!("enrolling at relay {first}"))?;
    let out = conn.exec(&format!("enroll {}", req.token.trim())).await;
    conn.disconnect().await;
    let out = out?;
    if out.status != 0 {
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let answer: Answer = serde_json::from_slice(&out.stdout)
        .context("the relay's answer to enroll does not parse")?;
    if answer.fingerprint != keys::fingerprint(key.public_key()) {
        bail!("the relay registered another key than ours; not writing a config");
    }
    write_files(req, &invite, &answer, &key, &key_path, ca.as_deref()).with_context(|| {
        format!(
            "the relay enrolled key {} but writing the files failed; ask an admin to revoke that key and make a new invite",
            answer.fingerprint
        )
    })?;
    Ok(Enrolled {
        system: answer.system,
        role: answer.role,
        name: answer.name,
        fingerprint: answer.fingerprint,
        config: req.config.clone(),
        key: key_path,
    })
}

fn write_files(
    req: &EnrollRequest,
    invite: &Invite,
    answer: &Answer,
    key: &keys::PrivateKey,
    key_path: &Path,
    ca: Option<&Path>,
) -> Result<()> {
    let ca = ca.map(|p| p.to_string_lossy());
    if let Some(dir) = req.config.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let comment = format!("warren {} {} {}", answer.role, answer.system, answer.name);
    keys::write_pair(key, key_path, &comment)?;
    let key_file = key_path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let system = Name::parse(&answer.system)?;
    let body = match answer.role {
        Role::Device => toml::to_string(&AgentToml {
            relay: &invite.relay,
            system: system.as_str(),
            name: &answer.name,
            key: &key_file,
            relay_host_key: &invite.host_key,
            relay_ca: ca.as_deref(),
            labels: &req.labels,
        })?,
        Role::Controller | Role::Admin => toml::to_string(&ClientToml {
            // A controller dials one relay (any relay reaches every device).
            relay: invite.relay.split(',').next().unwrap_or_default(),
            system: system.as_str(),
            key: &key_file,
            relay_host_key: &invite.host_key,
            relay_ca: ca.as_deref(),
        })?,
    };
    let text = format!(
        "# Written by `warren enroll` ({} {} in system {}).\n{body}",
        answer.role, answer.name, answer.system
    );
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&req.config)
        .with_context(|| format!("cannot create {}", req.config.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::set_permissions(&req.config, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}
