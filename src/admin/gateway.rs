//! `warren admin gateway …`: gateways' scopes, associated networks and
//! forwarding rules, written straight into the relay's database. A running
//! relay applies them at once (it notices the write within its store poll)
//! and pushes changed associations to the gateway.

use std::fmt::Write as _;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde::Serialize;

use super::Reply;
use crate::audit::{self, Event};
use crate::protocol::gateway::{GatewayScope, ListenSpec};
use crate::protocol::{Cidr, DeviceId, Name, Target};
use crate::render::json_text;
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

impl Which {
    fn resolve(&self, store: &Store) -> Result<DeviceId> {
        let name = Name::parse(&self.name).context("gateway name")?;
        let system = match &self.system {
            Some(s) => Name::parse(s).context("system name")?,
            None => store.gateway_system(&name)?,
        };
        Ok(DeviceId::new(system, name))
    }
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

fn render(v: &GatewayView) -> String {
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

/// Runs a gateway command; the output and audit events go back to the
/// caller (`warren admin` locally, or the relay for an admin key over SSH).
pub fn run(store: &Store, cmd: GatewayCommand) -> Result<Reply> {
    let mut reply = Reply {
        change: cmd.writes().then_some(super::Change::Gateways),
        ..Reply::default()
    };
    match cmd {
        GatewayCommand::Ls { system, json } => reply.out.push_str(&list(store, system, json)?),
        GatewayCommand::Show { gw, json } => {
            let DeviceId { system, name } = gw.resolve(store)?;
            let v = view(store, find(store, &system, &name)?)?;
            if json {
                reply.out.push_str(&json_text(&v)?);
            } else {
                reply.out.push_str(&render(&v));
            }
        }
        GatewayCommand::Rules { gw, json } => {
            let DeviceId { system, name } = gw.resolve(store)?;
            let rules = find(store, &system, &name)?.rules;
            if json {
                reply.out.push_str(&json_text(&rules)?);
            } else {
                for r in rules {
                    let _ = writeln!(reply.out, "{r}");
                }
            }
        }
        GatewayCommand::Allow { gw, target } => rule(store, &mut reply, gw, &target, true)?,
        GatewayCommand::Deny { gw, target } => rule(store, &mut reply, gw, &target, false)?,
        GatewayCommand::Delete { gw, force } => {
            let DeviceId { system, name } = gw.resolve(store)?;
            store.gateway_delete(&system, &name, force)?;
            reply.events.push(
                Event::new("gateway_delete", audit::OK)
                    .system(system.as_str())
                    .detail(format!(
                        "{system} {name}{}",
                        if force { " --force" } else { "" }
                    )),
            );
            let _ = writeln!(reply.out, "deleted gateway {name} of system {system}");
        }
        GatewayCommand::Associate { gw, network } => associate(store, &mut reply, gw, &network)?,
        GatewayCommand::Dissociate { gw, network } => {
            let DeviceId { system, name } = gw.resolve(store)?;
            let net = Cidr::parse(&network).map_err(anyhow::Error::msg)?;
            store.gateway_dissociate(&system, &name, &net)?;
            reply.events.push(
                Event::new("gateway_dissociate", audit::OK)
                    .system(system.as_str())
                    .detail(format!("{system} {name} {net}")),
            );
            let _ = writeln!(
                reply.out,
                "dissociated {net} from gateway {name} (system {system})"
            );
        }
    }
    Ok(reply)
}

/// `gateway ls`: a table, or JSON.
fn list(store: &Store, system: Option<String>, json: bool) -> Result<String> {
    let views = store
        .gateways(system.as_deref())?
        .into_iter()
        .map(|g| view(store, g))
        .collect::<Result<Vec<_>>>()?;
    if json {
        return json_text(&views);
    }
    let mut rows = vec![
        ["SYSTEM", "NAME", "STATUS", "SCOPE", "ASSOCIATIONS", "RULES"]
            .map(String::from)
            .to_vec(),
    ];
    for v in &views {
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
    Ok(crate::render::table(&rows))
}

/// `gateway allow` (`allow`) or `gateway deny`.
fn rule(store: &Store, reply: &mut Reply, gw: Which, target: &str, allow: bool) -> Result<()> {
    let DeviceId { system, name } = gw.resolve(store)?;
    let target = parse_target(target)?;
    let (kind, verb) = if allow {
        store.gateway_allow(&system, &name, &target)?;
        ("gateway_allow", "may now reach")
    } else {
        store.gateway_deny(&system, &name, &target)?;
        ("gateway_deny", "may no longer reach")
    };
    reply.events.push(
        Event::new(kind, audit::OK)
            .system(system.as_str())
            .detail(format!("{system} {name} {target}")),
    );
    let _ = writeln!(
        reply.out,
        "gateway {name} (system {system}) {verb} {target}"
    );
    Ok(())
}

/// `gateway associate`, with a warning when the gateway's permit refuses
/// the network.
fn associate(store: &Store, reply: &mut Reply, gw: Which, network: &str) -> Result<()> {
    let DeviceId { system, name } = gw.resolve(store)?;
    let net = Cidr::parse(network).map_err(anyhow::Error::msg)?;
    store.gateway_associate(&system, &name, &net)?;
    reply.events.push(
        Event::new("gateway_associate", audit::OK)
            .system(system.as_str())
            .detail(format!("{system} {name} {net}")),
    );
    let _ = writeln!(
        reply.out,
        "associated {net} with gateway {name} (system {system})"
    );
    let g = find(store, &system, &name)?;
    if let Some(permit) = &g.permit {
        let covered = permit
            .iter()
            .filter_map(|p| p.parse::<Cidr>().ok())
            .any(|p| p.covers(&net));
        if !covered {
            let _ = writeln!(
                reply.err,
                "warning: {net} is outside gateway {name}'s permit ({}); the gateway will refuse it (flagged in `gateway show`)",
                permit.join(", ")
            );
        }
    }
    Ok(())
}

impl GatewayCommand {
    /// Whether the command changes the store (`ls`, `show` and `rules` only read).
    fn writes(&self) -> bool {
        !matches!(
            self,
            GatewayCommand::Ls { .. } | GatewayCommand::Show { .. } | GatewayCommand::Rules { .. }
        )
    }
}

fn parse_target(s: &str) -> Result<Target> {
    let t = Target::parse(s).map_err(anyhow::Error::msg)?;
    if s.trim().parse::<u16>().is_ok() {
        bail!("{s:?}: a rule names a service as NAME:PORT (e.g. collector:9100)");
    }
    Ok(t)
}
