//! `warren admin … expose`: public ports on the relay. Admin only (it
//! writes the relay's database); a running relay opens or closes the port
//! within a moment, if the port is inside its `public_ports`.

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

use super::{ExposeRequest, Format, Outcome, Reply};
use crate::audit::{self, Event, kind};
use crate::protocol::{Cidr, DeviceId, Name};
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

impl ExposeArgs {
    /// The typed request, and how its reply is printed.
    pub fn into_request(self) -> Result<(ExposeRequest, Format)> {
        Ok(match self.command {
            Some(ExposeCommand::Ls { json }) => (ExposeRequest::List, Format::json_if(json)),
            Some(ExposeCommand::Rm { port }) => (ExposeRequest::Remove { port }, Format::Text),
            None => {
                let json = self.add.json;
                (self.add.into_request()?, Format::json_if(json))
            }
        })
    }
}

impl AddArgs {
    fn into_request(self) -> Result<ExposeRequest> {
        let usage =
            "usage: expose DEVICE:PORT --system SYSTEM --port RELAY_PORT [--allow-from CIDR]…";
        let Some(target) = self.target else {
            bail!("{usage}")
        };
        let (Some(system), Some(port)) = (self.system, self.port) else {
            bail!("{usage}")
        };
        if !target.contains(':') {
            bail!("{target:?} is not DEVICE:PORT; {usage}");
        }
        let system = Name::parse(&system).context("system name")?;
        add_request(system, &target, port, self.allow_from)
    }
}

/// `expose DEVICE:PORT --system SYSTEM --port PORT [--allow-from …]` as a
/// typed request, its values checked (the CLI and the HTTP API).
pub(crate) fn add_request(
    system: Name,
    target: &str,
    port: u16,
    allow_from: Vec<String>,
) -> Result<ExposeRequest> {
    let Some((device, device_port)) = target.rsplit_once(':') else {
        bail!("{target:?} is not DEVICE:PORT");
    };
    let device = Name::parse(device).with_context(|| format!("device name {device:?}"))?;
    let device_port: u16 = device_port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .with_context(|| format!("{device_port:?} is not a device port (1-65535)"))?;
    parse_allow_from(&allow_from).context("--allow-from")?;
    Ok(ExposeRequest::Add {
        device: DeviceId::new(system, device),
        device_port,
        port,
        allow_from,
    })
}

/// Runs an expose request against the store.
pub fn run(store: &Store, req: ExposeRequest) -> Result<Outcome> {
    let (reply, kind, e) = match req {
        ExposeRequest::List => return Ok(Outcome::read(Reply::Exposures(store.exposures()?))),
        ExposeRequest::Remove { port } => {
            let e = store.remove_exposure(port)?;
            (Reply::ExposureRemoved(e.clone()), kind::EXPOSE_RM, e)
        }
        ExposeRequest::Add {
            device,
            device_port,
            port,
            allow_from,
        } => {
            let e =
                store.add_exposure(port, &device.system, &device.name, device_port, &allow_from)?;
            (Reply::Exposed(e.clone()), kind::EXPOSE_ADD, e)
        }
    };
    Ok(Outcome {
        reply,
        events: vec![event(kind, &e)],
        change: Some(super::Change::Exposures),
    })
}

fn event(kind: &str, e: &Exposure) -> Event {
    Event::new(kind, audit::OK)
        .system(e.system.as_str())
        .device(e.device.as_str())
        .target(format!("{}:{}", e.device, e.device_port))
        .detail(describe(e))
}

/// `expose` done, as text.
pub(super) fn render_added(e: &Exposure) -> String {
    format!(
        "relay port {} now carries to {}/{}:{} (from {}); the relay's public_ports must include {}\n",
        e.port,
        e.system,
        e.device,
        e.device_port,
        if e.allow_from.is_empty() {
            "anywhere".to_string()
        } else {
            e.allow_from.join(", ")
        },
        e.port
    )
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

pub(super) fn render(list: &[Exposure]) -> String {
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
pub fn parse_allow_from(items: &[String]) -> anyhow::Result<Vec<Cidr>> {
    items
        .iter()
        .map(|s| {
            Cidr::parse(s).map_err(|e| {
                anyhow::anyhow!("{s:?} is not a CIDR like 203.0.113.0/24 or an address: {e}")
            })
        })
        .collect()
}
