//! `warren admin gateway …`: gateways' scopes, associated networks and
//! forwarding rules, written straight into the relay's database. A running
//! relay applies them at once (it notices the write within its store poll)
//! and pushes changed associations to the gateway.

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde::Serialize;

use super::{Format, GatewayRef, GatewayRequest, Outcome, Reply};
use crate::audit::{self, Event};
use crate::protocol::gateway::{GatewayScope, ListenSpec};
use crate::protocol::{Cidr, DeviceId, Name, Target};
use crate::store::{GatewayRecord, Store};

#[derive(Debug, Subcommand)]
pub enum GatewayCommand {
    /// List gateways: scope, associations, rules.
    Ls {
        /// Only this system.
        #[arg(long)]
        system: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Everything about one gateway: status, address, scope, associations
    /// (flagged when its permit refuses them), listen forwards and rules.
    Show {
        #[command(flatten)]
        gw: Which,
        #[arg(long)]
        json: bool,
    },
    /// Let the gateway's listen forwards reach TARGET (`NAME:PORT`).
    Allow {
        #[command(flatten)]
        gw: Which,
        target: String,
    },
    /// Remove a rule added with `allow`.
    Deny {
        #[command(flatten)]
        gw: Which,
        target: String,
    },
    /// The targets the gateway's listen forwards may reach.
    Rules {
        #[command(flatten)]
        gw: Which,
        #[arg(long)]
        json: bool,
    },
    /// Forget a gateway: its record, associations and rules. Refused while
    /// it has rules, unless --force.
    Delete {
        #[command(flatten)]
        gw: Which,
        /// Delete even if it still has forwarding rules.
        #[arg(long)]
        force: bool,
    },
    /// Route another network (CIDR) to the gateway, effective at once. The
    /// gateway's own `permit` still has the last word.
    Associate {
        #[command(flatten)]
        gw: Which,
        network: String,
    },
    /// Stop routing a network associated with `associate`.
    Dissociate {
        #[command(flatten)]
        gw: Which,
        network: String,
    },
}

/// A gateway: its name and, when the name exists in several systems, which.
#[derive(Debug, Args)]
pub struct Which {
    /// The gateway's device name.
    pub name: String,
    /// Its system (needed only when the name exists in several).
    #[arg(long)]
    pub system: Option<String>,
}

/// One gateway as `gateway show` prints it.
#[derive(Debug, Serialize)]
pub struct GatewayView {
    pub id: i64,
    pub name: String,
    pub system: String,
    pub online: bool,
    /// Unix seconds: online since, or offline since.
    pub since: Option<u64>,
    /// Address the gateway connected from (last known when offline).
    pub address: Option<String>,
    pub scope: Vec<String>,
    pub ports: Vec<u16>,
    pub permit: Option<Vec<String>>,
    pub associations: Vec<AssociationView>,
    pub listens: Vec<ListenView>,
    pub rules: Vec<String>,
    pub created: u64,
    pub updated: u64,
}

#[derive(Debug, Serialize)]
pub struct AssociationView {
    pub network: String,
    /// False when the gateway's permit refuses it.
    pub served: bool,
}

#[derive(Debug, Serialize)]
pub struct ListenView {
    pub bind: String,
    pub to: String,
    /// Whether a rule lets it reach `to`.
    pub allowed: bool,
}

fn view(store: &Store, g: GatewayRecord) -> Result<GatewayView> {
    let device = store
        .devices(Some(&g.system))?
        .into_iter()
        .find(|d| d.name == g.name);
    let parse = |l: &[String]| -> Vec<Cidr> { l.iter().filter_map(|c| c.parse().ok()).collect() };
    let scope = GatewayScope {
        scope: parse(&g.scope),
        ports: g.ports.clone(),
        permit: g.permit.as_deref().map(parse),
        associations: parse(&g.associations),
    };
    let associations = scope
        .associations
        .iter()
        .map(|a| AssociationView {
            network: a.to_string(),
            served: scope.permits(a),
        })
        .collect();
    let listens = g
        .listens
        .iter()
        .map(|ListenSpec { bind, to }| ListenView {
            bind: bind.clone(),
            to: to.clone(),
            allowed: g.rules.contains(to),
        })
        .collect();
    Ok(GatewayView {
        id: g.id,
        online: device.as_ref().is_some_and(|d| d.online),
        since: device.as_ref().and_then(|d| d.since),
        address: device.and_then(|d| d.address),
        scope: g.scope,
        ports: g.ports,
        permit: g.permit,
        associations,
        listens,
        rules: g.rules,
        created: g.created,
        updated: g.updated,
        name: g.name,
        system: g.system,
    })
}

pub(super) fn render(v: &GatewayView) -> String {
    let none = |l: &[String]| {
        if l.is_empty() {
            "-".to_string()
        } else {
            l.join(", ")
        }
    };
    let assoc: Vec<String> = v
        .associations
        .iter()
        .map(|a| {
            if a.served {
                a.network.clone()
            } else {
                format!("{} (REFUSED: outside the gateway's permit)", a.network)
            }
        })
        .collect();
    let listens: Vec<String> = v
        .listens
        .iter()
        .map(|l| {
            let state = if l.allowed {
                "allowed"
            } else {
                "NOT ALLOWED: no rule"
            };
            format!("{} -> {} ({state})", l.bind, l.to)
        })
        .collect();
    let ports: Vec<String> = v.ports.iter().map(u16::to_string).collect();
    let rows = [
        ("id", v.id.to_string()),
        ("name", v.name.clone()),
        ("system", v.system.clone()),
        (
            "status",
            format!(
                "{} since {}",
                if v.online { "online" } else { "offline" },
                crate::render::when(v.since)
            ),
        ),
        ("address", v.address.clone().unwrap_or_else(|| "-".into())),
        ("scope", none(&v.scope)),
        ("ports", none(&ports)),
        (
            "permit",
            match &v.permit {
                Some(p) => none(p),
                None => "(no limit)".into(),
            },
        ),
        ("associations", none(&assoc)),
        ("listens", none(&listens)),
        ("rules", none(&v.rules)),
        ("created", crate::render::when(Some(v.created))),
        ("updated", crate::render::when(Some(v.updated))),
    ];
    rows.iter()
        .map(|(k, v)| format!("{:<13} {v}\n", format!("{k}:")))
        .collect()
}

fn find(store: &Store, system: &Name, name: &Name) -> Result<GatewayRecord> {
    store
        .gateways(Some(system.as_str()))?
        .into_iter()
        .find(|g| g.name == name.as_str())
        .ok_or_else(|| anyhow::anyhow!("no gateway {name} in system {system}"))
}

/// Runs a gateway request; the reply and audit events go back to the
/// caller (`warren admin` locally, or the relay for an admin key over SSH).
pub fn run(store: &Store, req: GatewayRequest) -> Result<Outcome> {
    let change = req.writes().then_some(super::Change::Gateways);
    let (reply, event) = match req {
        GatewayRequest::List { system } => (Reply::Gateways(list(store, system)?), None),
        GatewayRequest::Show(gw) => {
            let DeviceId { system, name } = resolve(store, gw)?;
            (
                Reply::Gateway(view(store, find(store, &system, &name)?)?),
                None,
            )
        }
        GatewayRequest::Rules(gw) => {
            let DeviceId { system, name } = resolve(store, gw)?;
            (Reply::Rules(find(store, &system, &name)?.rules), None)
        }
        GatewayRequest::Allow(gw, target) => rule(store, gw, target, true)?,
        GatewayRequest::Deny(gw, target) => rule(store, gw, target, false)?,
        GatewayRequest::Delete { gw, force } => {
            let DeviceId { system, name } = resolve(store, gw)?;
            store.gateway_delete(&system, &name, force)?;
            let event = Event::new("gateway_delete", audit::OK)
                .system(system.as_str())
                .detail(format!(
                    "{system} {name}{}",
                    if force { " --force" } else { "" }
                ));
            let reply = Reply::GatewayDeleted {
                system: system.to_string(),
                gateway: name.to_string(),
            };
            (reply, Some(event))
        }
        GatewayRequest::Associate(gw, net) => associate(store, gw, net)?,
        GatewayRequest::Dissociate(gw, net) => {
            let DeviceId { system, name } = resolve(store, gw)?;
            store.gateway_dissociate(&system, &name, &net)?;
            let event = Event::new("gateway_dissociate", audit::OK)
                .system(system.as_str())
                .detail(format!("{system} {name} {net}"));
            let reply = Reply::Dissociated {
                system: system.to_string(),
                gateway: name.to_string(),
                network: net.to_string(),
            };
            (reply, Some(event))
        }
    };
    Ok(Outcome {
        reply,
        events: event.into_iter().collect(),
        change,
    })
}

/// A reply and, for a write, its audit event.
type Done = (Reply, Option<Event>);

/// `gateway ls`: every gateway (of `system`).
fn list(store: &Store, system: Option<String>) -> Result<Vec<GatewayView>> {
    store
        .gateways(system.as_deref())?
        .into_iter()
        .map(|g| view(store, g))
        .collect()
}

/// `gateway ls` as a table.
pub(super) fn render_list(views: &[GatewayView]) -> String {
    let mut rows = vec![
        ["SYSTEM", "NAME", "STATUS", "SCOPE", "ASSOCIATIONS", "RULES"]
            .map(String::from)
            .to_vec(),
    ];
    for v in views {
        rows.push(vec![
            v.system.clone(),
            v.name.clone(),
            if v.online { "online" } else { "offline" }.into(),
            v.scope.join(","),
            v.associations
                .iter()
                .map(|a| a.network.clone())
                .collect::<Vec<_>>()
                .join(","),
            v.rules.join(","),
        ]);
    }
    crate::render::table(&rows)
}

/// `gateway allow` (`allow`) or `gateway deny`.
fn rule(store: &Store, gw: GatewayRef, target: Target, allow: bool) -> Result<Done> {
    let DeviceId { system, name } = resolve(store, gw)?;
    let kind = if allow {
        store.gateway_allow(&system, &name, &target)?;
        "gateway_allow"
    } else {
        store.gateway_deny(&system, &name, &target)?;
        "gateway_deny"
    };
    let event = Event::new(kind, audit::OK)
        .system(system.as_str())
        .detail(format!("{system} {name} {target}"));
    let reply = Reply::RuleChanged {
        system: system.to_string(),
        gateway: name.to_string(),
        target: target.to_string(),
        allowed: allow,
    };
    Ok((reply, Some(event)))
}

/// `gateway associate`, with a warning when the gateway's permit refuses
/// the network.
fn associate(store: &Store, gw: GatewayRef, net: Cidr) -> Result<Done> {
    let DeviceId { system, name } = resolve(store, gw)?;
    store.gateway_associate(&system, &name, &net)?;
    let event = Event::new("gateway_associate", audit::OK)
        .system(system.as_str())
        .detail(format!("{system} {name} {net}"));
    let g = find(store, &system, &name)?;
    let outside_permit = g.permit.filter(|permit| {
        !permit
            .iter()
            .filter_map(|p| p.parse::<Cidr>().ok())
            .any(|p| p.covers(&net))
    });
    let reply = Reply::Associated {
        system: system.to_string(),
        gateway: name.to_string(),
        network: net.to_string(),
        outside_permit,
    };
    Ok((reply, Some(event)))
}

/// The gateway's device: its system as given, or the one system with a
/// gateway of that name.
fn resolve(store: &Store, gw: GatewayRef) -> Result<DeviceId> {
    let system = match gw.system {
        Some(s) => s,
        None => store.gateway_system(&gw.name)?,
    };
    Ok(DeviceId::new(system, gw.name))
}

impl Which {
    fn into_ref(self) -> Result<GatewayRef> {
        Ok(GatewayRef {
            name: Name::parse(&self.name).context("gateway name")?,
            system: self
                .system
                .as_deref()
                .map(Name::parse)
                .transpose()
                .context("system name")?,
        })
    }
}

impl GatewayCommand {
    /// The typed request, and how its reply is printed.
    pub fn into_request(self) -> Result<(GatewayRequest, Format)> {
        let text = Format::Text;
        Ok(match self {
            GatewayCommand::Ls { system, json } => {
                (GatewayRequest::List { system }, Format::json_if(json))
            }
            GatewayCommand::Show { gw, json } => {
                (GatewayRequest::Show(gw.into_ref()?), Format::json_if(json))
            }
            GatewayCommand::Rules { gw, json } => {
                (GatewayRequest::Rules(gw.into_ref()?), Format::json_if(json))
            }
            GatewayCommand::Allow { gw, target } => (
                GatewayRequest::Allow(gw.into_ref()?, parse_target(&target)?),
                text,
            ),
            GatewayCommand::Deny { gw, target } => (
                GatewayRequest::Deny(gw.into_ref()?, parse_target(&target)?),
                text,
            ),
            GatewayCommand::Delete { gw, force } => (
                GatewayRequest::Delete {
                    gw: gw.into_ref()?,
                    force,
                },
                text,
            ),
            GatewayCommand::Associate { gw, network } => (
                GatewayRequest::Associate(gw.into_ref()?, parse_cidr(&network)?),
                text,
            ),
            GatewayCommand::Dissociate { gw, network } => (
                GatewayRequest::Dissociate(gw.into_ref()?, parse_cidr(&network)?),
                text,
            ),
        })
    }
}

pub(crate) fn parse_cidr(s: &str) -> Result<Cidr> {
    Cidr::parse(s).map_err(anyhow::Error::msg)
}

pub(crate) fn parse_target(s: &str) -> Result<Target> {
    let t = Target::parse(s).map_err(anyhow::Error::msg)?;
    if s.trim().parse::<u16>().is_ok() {
        bail!("{s:?}: a rule names a service as NAME:PORT (e.g. collector:9100)");
    }
    Ok(t)
}
