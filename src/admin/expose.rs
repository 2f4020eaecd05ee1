//! `warren admin … expose`: public ports on the relay. Admin only (it
//! writes the relay's database); a running relay opens or closes the port
//! within a moment, if the port is inside its `public_ports`.

use std::net::IpAddr;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use ipnet::IpNet;

use super::Reply;
use crate::audit::{self, Event, kind};
use crate::protocol::Name;
use crate::render::json_text;
use crate::store::{Exposure, Store};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ExposeArgs {
    #[command(subcommand)]
    pub command: Option<ExposeCommand>,
    #[command(flatten)]
    pub add: AddArgs,
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// DEVICE:PORT to expose, e.g. dev1:22.
    pub target: Option<String>,
    /// The device's system.
    #[arg(long)]
    pub system: Option<String>,
    /// Relay port that listens publicly (must be in the relay's public_ports).
    #[arg(long)]
    pub port: Option<u16>,
    /// Only peers from these CIDRs may connect (repeatable); anyone if none.
    #[arg(long = "allow-from")]
    pub allow_from: Vec<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum ExposeCommand {
    /// List public ports.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Remove the public port on relay port PORT (its connections close).
    Rm { port: u16 },
}

pub fn run(store: &Store, a: ExposeArgs) -> Result<Reply> {
    match a.command {
        Some(ExposeCommand::Ls { json }) => {
            let list = store.exposures()?;
            Ok(Reply::text(if json {
                json_text(&list)?
            } else {
                render(&list)
            }))
        }
        Some(ExposeCommand::Rm { port }) => {
            let e = store.remove_exposure(port)?;
            Ok(Reply {
                out: format!(
                    "removed public port {port} ({}/{}:{})\n",
                    e.system, e.device, e.device_port
                ),
                events: vec![event(kind::EXPOSE_RM, &e)],
                change: Some(super::Change::Exposures),
                err: String::new(),
            })
        }
        None => add(store, a.add),
    }
}

fn event(kind: &str, e: &Exposure) -> Event {
    Event::new(kind, audit::OK)
        .system(e.system.as_str())
        .device(e.device.as_str())
        .target(format!("{}:{}", e.device, e.device_port))
        .detail(describe(e))
}

fn add(store: &Store, a: AddArgs) -> Result<Reply> {
    let usage = "usage: expose DEVICE:PORT --system SYSTEM --port RELAY_PORT [--allow-from CIDR]…";
    let Some(target) = a.target else {
        bail!("{usage}")
    };
    let (Some(system), Some(port)) = (a.system, a.port) else {
        bail!("{usage}")
    };
    let Some((device, device_port)) = target.rsplit_once(':') else {
        bail!("{target:?} is not DEVICE:PORT; {usage}");
    };
    let device = Name::parse(device).with_context(|| format!("device name {device:?}"))?;
    let device_port: u16 = device_port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .with_context(|| format!("{device_port:?} is not a device port (1-65535)"))?;
    let system = Name::parse(&system).context("system name")?;
    parse_allow_from(&a.allow_from).context("--allow-from")?;
    let e = store.add_exposure(port, &system, &device, device_port, &a.allow_from)?;
    let out = if a.json {
        json_text(&e)?
    } else {
        format!(
            "relay port {port} now carries to {system}/{device}:{device_port} (from {}); the relay's public_ports must include {port}\n",
            if e.allow_from.is_empty() {
                "anywhere".to_string()
            } else {
                e.allow_from.join(", ")
            }
        )
    };
    Ok(Reply {
        out,
        events: vec![event(kind::EXPOSE_ADD, &e)],
        change: Some(super::Change::Exposures),
        err: String::new(),
    })
}

fn describe(e: &Exposure) -> String {
    format!(
        "port {} -> {}/{}:{} allow_from={}",
        e.port,
        e.system,
        e.device,
        e.device_port,
        if e.allow_from.is_empty() {
            "any".into()
        } else {
            e.allow_from.join(",")
        }
    )
}

fn render(list: &[Exposure]) -> String {
    let mut rows = vec![
        [
            "PORT",
            "SYSTEM",
            "DEVICE",
            "DEVICE PORT",
            "ALLOW FROM",
            "CREATED",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for e in list {
        rows.push(vec![
            e.port.to_string(),
            e.system.clone(),
            e.device.clone(),
            e.device_port.to_string(),
            if e.allow_from.is_empty() {
                "any".into()
            } else {
                e.allow_from.join(",")
            },
            crate::render::when(Some(e.created)),
        ]);
    }
    crate::render::table(&rows)
}

/// Parses `--allow-from` values; each must be a CIDR (`10.0.0.0/8`) or a
/// single address.
pub fn parse_allow_from(items: &[String]) -> anyhow::Result<Vec<IpNet>> {
    items
        .iter()
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    anyhow::anyhow!("{s:?} is not a CIDR like 203.0.113.0/24 or an address")
                })
        })
        .collect()
}
