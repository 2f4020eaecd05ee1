//! Typed admin replies and their text: [`Reply`] is the data an operation
//! produced (serializable, for the HTTP API), [`render`] the text and JSON
//! the CLI and `ssh relay …` print.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Result, bail};
use serde::Serialize;

use super::access::{self, LoginLink, TokenMade};
use super::gateway::GatewayView;
use super::{Change, Format, expose, gateway, log, status};
use crate::audit::Event;
use crate::protocol::Role;
use crate::render::{json_text, table, when};
use crate::store::credentials::Credential;
use crate::store::{DeviceStatus, Exposure, InviteRecord, KeyRecord};

/// What an operation did: its reply, the audit events it caused, and what
/// it wrote (read-only operations leave `change` `None`).
#[derive(Debug)]
pub struct Outcome {
    pub reply: Reply,
    pub events: Vec<Event>,
    pub change: Option<Change>,
}

impl Outcome {
    /// A read-only reply: no events, no change.
    pub(crate) fn read(reply: Reply) -> Outcome {
        Outcome {
            reply,
            events: Vec::new(),
            change: None,
        }
    }
}

/// The data an admin operation gives back.
#[derive(Debug, Serialize)]
#[serde(tag = "kind", content = "data", rename_all = "snake_case")]
pub enum Reply {
    HostKey {
        fingerprint: String,
    },
    SystemAdded {
        name: String,
    },
    Systems(Vec<String>),
    KeyAdded(KeyRecord),
    Keys(Vec<KeyRecord>),
    KeyRevoked(KeyRecord),
    Devices {
        devices: Vec<DeviceStatus>,
        /// Whether every system was asked for (the table adds a column).
        all_systems: bool,
    },
    InviteMade(InviteMade),
    Invites(Vec<InviteRecord>),
    InviteRevoked(InviteRecord),
    Disabled {
        system: String,
        device: String,
        disabled: bool,
    },
    Gateways(Vec<GatewayView>),
    Gateway(GatewayView),
    Rules(Vec<String>),
    RuleChanged {
        system: String,
        gateway: String,
        target: String,
        allowed: bool,
    },
    GatewayDeleted {
        system: String,
        gateway: String,
    },
    Associated {
        system: String,
        gateway: String,
        network: String,
        /// The gateway's permit, when it does not cover `network` (a
        /// warning: the gateway will refuse it).
        outside_permit: Option<Vec<String>>,
    },
    Dissociated {
        system: String,
        gateway: String,
        network: String,
    },
    Exposed(Exposure),
    Exposures(Vec<Exposure>),
    ExposureRemoved(Exposure),
    /// One page of the audit log; `events` may hold one more than `limit`,
    /// which only says another page follows.
    Log {
        events: Vec<Event>,
        limit: usize,
    },
    /// A one-time console login link.
    ConsoleLogin(LoginLink),
    /// Console sessions and unused login links ended.
    SessionsEnded {
        count: u64,
    },
    /// A new API token, its secret shown this once.
    TokenMade(TokenMade),
    /// API tokens (never their secrets).
    Tokens(Vec<Credential>),
    TokenRevoked(Credential),
}

/// A new invite: the token and what it grants.
#[derive(Debug, Serialize)]
pub struct InviteMade {
    pub token: String,
    pub id: String,
    pub system: String,
    pub role: Role,
    pub name: String,
    pub relay: String,
    pub expires: u64,
}

/// A rendered reply: standard output and standard error (warnings).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Text {
    pub out: String,
    pub err: String,
}

impl Text {
    fn out(out: String) -> Text {
        Text {
            out,
            err: String::new(),
        }
    }
}

/// Renders a reply as the CLI and `ssh relay …` print it. Replies that
/// print a sentence as text give the typed reply itself as JSON; CSV is
/// only for `log`.
pub fn render(reply: &Reply, format: Format) -> Result<Text> {
    if let Reply::Log { events, limit } = reply {
        return Ok(Text::out(log::render_page(events, *limit, format)));
    }
    match format {
        Format::Text => text(reply),
        Format::Json => json(reply).map(Text::out),
        Format::Csv => bail!("only `log` has a CSV form"),
    }
}

fn json(reply: &Reply) -> Result<String> {
    match reply {
        Reply::HostKey { fingerprint } => {
            json_text(&BTreeMap::from([("fingerprint", fingerprint)]))
        }
        Reply::Systems(s) => json_text(s),
        Reply::KeyAdded(k) => json_text(k),
        Reply::Keys(k) => json_text(k),
        Reply::Devices { devices, .. } => json_text(devices),
        Reply::InviteMade(m) => json_text(m),
        Reply::Invites(i) => json_text(i),
        Reply::Gateways(g) => json_text(g),
        Reply::Gateway(g) => json_text(g),
        Reply::Rules(r) => json_text(r),
        Reply::Exposed(e) => json_text(e),
        Reply::Exposures(e) => json_text(e),
        Reply::ConsoleLogin(l) => json_text(l),
        Reply::TokenMade(t) => json_text(t),
        Reply::Tokens(t) => json_text(t),
        other => json_text(other),
    }
}

fn text(reply: &Reply) -> Result<Text> {
    let out = match reply {
        Reply::HostKey { fingerprint } => format!("{fingerprint}\n"),
        Reply::SystemAdded { name } => format!("added system {name}\n"),
        Reply::Systems(s) => s.iter().map(|s| format!("{s}\n")).collect(),
        Reply::KeyAdded(rec) => format!(
            "added {} key {} for {} in system {}\n",
            rec.role, rec.fingerprint, rec.name, rec.system
        ),
        Reply::Keys(k) => render_keys(k),
        Reply::KeyRevoked(rec) => format!(
            "revoked {} key {} ({} in system {}); its connections are being closed\n",
            rec.role, rec.fingerprint, rec.name, rec.system
        ),
        Reply::Devices {
            devices,
            all_systems,
        } => status::render(devices, *all_systems),
        Reply::InviteMade(m) => format!("{}\n", m.token),
        Reply::Invites(i) => render_invites(i),
        Reply::InviteRevoked(rec) => format!("revoked invite {}\n", rec.id),
        Reply::Disabled {
            system,
            device,
            disabled,
        } => format!(
            "{} device {device} in system {system}{}\n",
            if *disabled { "disabled" } else { "enabled" },
            if *disabled {
                "; its live streams are being closed"
            } else {
                ""
            }
        ),
        Reply::Associated {
            system,
            gateway,
            network,
            outside_permit,
        } => {
            return Ok(Text {
                out: format!("associated {network} with gateway {gateway} (system {system})\n"),
                err: outside_permit.as_ref().map_or(String::new(), |permit| {
                    format!(
                        "warning: {network} is outside gateway {gateway}'s permit ({}); the gateway will refuse it (flagged in `gateway show`)\n",
                        permit.join(", ")
                    )
                }),
            });
        }
        Reply::Exposed(e) => expose::render_added(e),
        Reply::Exposures(e) => expose::render(e),
        Reply::ExposureRemoved(e) => format!(
            "removed public port {} ({}/{}:{})\n",
            e.port, e.system, e.device, e.device_port
        ),
        Reply::ConsoleLogin(_)
        | Reply::SessionsEnded { .. }
        | Reply::TokenMade(_)
        | Reply::Tokens(_)
        | Reply::TokenRevoked(_) => access::render_text(reply),
        gw => gateway_text(gw),
    };
    Ok(Text::out(out))
}

/// The text of the gateway replies (and of none other).
fn gateway_text(reply: &Reply) -> String {
    match reply {
        Reply::Gateways(views) => gateway::render_list(views),
        Reply::Gateway(v) => gateway::render(v),
        Reply::Rules(rules) => rules.iter().fold(String::new(), |mut out, r| {
            let _ = writeln!(out, "{r}");
            out
        }),
        Reply::RuleChanged {
            system,
            gateway,
            target,
            allowed,
        } => {
            let verb = if *allowed {
                "may now reach"
            } else {
                "may no longer reach"
            };
            format!("gateway {gateway} (system {system}) {verb} {target}\n")
        }
        Reply::GatewayDeleted { system, gateway } => {
            format!("deleted gateway {gateway} of system {system}\n")
        }
        Reply::Dissociated {
            system,
            gateway,
            network,
        } => format!("dissociated {network} from gateway {gateway} (system {system})\n"),
        _ => String::new(),
    }
}

fn render_keys(keys: &[KeyRecord]) -> String {
    let mut rows = vec![
        [
            "SYSTEM",
            "ROLE",
            "NAME",
            "TYPE",
            "FINGERPRINT",
            "STATUS",
            "ENROLLED",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for k in keys {
        rows.push(vec![
            k.system.clone(),
            k.role.to_string(),
            k.name.clone(),
            k.algorithm.clone(),
            k.fingerprint.clone(),
            match k.revoked {
                Some(t) => format!("revoked {}", when(Some(t))),
                None => "active".into(),
            },
            match &k.enrolled_via {
                Some(id) => format!("invite {id}"),
                None => "key add".into(),
            },
        ]);
    }
    table(&rows)
}

fn render_invites(invites: &[InviteRecord]) -> String {
    let mut rows = vec![
        [
            "ID", "SYSTEM", "ROLE", "NAME", "STATUS", "EXPIRES", "USED BY",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for i in invites {
        rows.push(vec![
            i.id.clone(),
            i.system.clone(),
            i.role.to_string(),
            i.name.clone(),
            i.status.clone(),
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + Duration::from_secs(i.expires),
            )
            .to_string(),
            i.used_by.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    table(&rows)
}

#[cfg(test)]
mod tests;
