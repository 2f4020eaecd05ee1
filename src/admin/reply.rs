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
use super::wake::WakeReply;
use super::{Change, Format, expose, gateway, log, status};
use crate::audit::Event;
use crate::protocol::Role;
use crate::protocol::rate::Rate;
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
    /// A device's admin labels after a change: those set, and the agent's
    /// labels hidden.
    LabelsSet {
        system: String,
        device: String,
        labels: BTreeMap<String, String>,
        hidden: Vec<String>,
    },
    /// A bandwidth limit set (`rate`) or cleared (`None`).
    RateSet {
        system: String,
        /// `None`: the system's limit.
        device: Option<String>,
        rate: Option<Rate>,
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
    /// How a wake or sleep ended.
    Woken(WakeReply),
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

/// What `--json` gives of a reply: the data alone for lists and records,
/// the typed reply (`{"kind","data"}`) for the rest.
#[derive(Serialize)]
#[serde(untagged)]
enum JsonForm<'a> {
    Map(BTreeMap<&'static str, &'a String>),
    Strings(&'a [String]),
    Key(&'a KeyRecord),
    Keys(&'a [KeyRecord]),
    Devices(&'a [DeviceStatus]),
    InviteMade(&'a InviteMade),
    Invites(&'a [InviteRecord]),
    Gateways(&'a [GatewayView]),
    Gateway(&'a GatewayView),
    Exposure(&'a Exposure),
    Exposures(&'a [Exposure]),
    Login(&'a LoginLink),
    TokenMade(&'a TokenMade),
    Tokens(&'a [Credential]),
    Woken(&'a WakeReply),
    Whole(&'a Reply),
}

fn json_form(reply: &Reply) -> JsonForm<'_> {
    match reply {
        Reply::HostKey { fingerprint } => {
            JsonForm::Map(BTreeMap::from([("fingerprint", fingerprint)]))
        }
        Reply::Systems(s) | Reply::Rules(s) => JsonForm::Strings(s),
        Reply::KeyAdded(k) => JsonForm::Key(k),
        Reply::Keys(k) => JsonForm::Keys(k),
        Reply::Devices { devices, .. } => JsonForm::Devices(devices),
        Reply::InviteMade(m) => JsonForm::InviteMade(m),
        Reply::Invites(i) => JsonForm::Invites(i),
        Reply::Gateways(g) => JsonForm::Gateways(g),
        Reply::Gateway(g) => JsonForm::Gateway(g),
        Reply::Exposed(e) => JsonForm::Exposure(e),
        Reply::Exposures(e) => JsonForm::Exposures(e),
        Reply::ConsoleLogin(l) => JsonForm::Login(l),
        Reply::TokenMade(t) => JsonForm::TokenMade(t),
        Reply::Tokens(t) => JsonForm::Tokens(t),
        Reply::Woken(w) => JsonForm::Woken(w),
        other => JsonForm::Whole(other),
    }
}

fn json(reply: &Reply) -> Result<String> {
    json_text(&json_form(reply))
}

/// A reply as `--json` prints it, as a JSON value (for the HTTP API: no
/// text to print and parse back). `log` is the typed reply here.
pub fn json_value(reply: &Reply) -> Result<serde_json::Value> {
    Ok(serde_json::to_value(json_form(reply))?)
}

fn rate_set_text(system: &str, device: Option<&str>, rate: Option<Rate>) -> String {
    let whom = match device {
        Some(d) => format!("device {d} in system {system}"),
        None => format!("system {system}"),
    };
    match rate {
        Some(r) => format!("{whom}: limited to {r} each way, live streams included\n"),
        None => format!("{whom}: limit cleared (the relay's default applies, if it has one)\n"),
    }
}

fn labels_set_text(
    system: &str,
    device: &str,
    labels: &BTreeMap<String, String>,
    hidden: &[String],
) -> String {
    let list = |l: Vec<String>| {
        if l.is_empty() {
            "none".to_string()
        } else {
            l.join(" ")
        }
    };
    let set = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!(
        "device {device} in system {system}: admin labels {}; agent labels hidden: {}\n",
        list(set),
        list(hidden.to_vec())
    )
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
        Reply::Woken(w) => w.text(),
        Reply::InviteRevoked(rec) => format!("revoked invite {}\n", rec.id),
        Reply::RateSet {
            system,
            device,
            rate,
        } => rate_set_text(system, device.as_deref(), *rate),
        Reply::LabelsSet {
            system,
            device,
            labels,
            hidden,
        } => labels_set_text(system, device, labels, hidden),
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
            k.fingerprint.to_string(),
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
