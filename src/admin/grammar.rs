//! The `warren admin` grammar (its doc comments are the `--help` text),
//! parsed by the CLI and by `ssh relay …`, and its turning into typed
//! requests ([`AdminCommand::into_request`]): names, durations and
//! addresses are checked here, before anything runs.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

use super::log::LogArgs;
use super::wake::{WakeArgs, WakeOp};
use super::{Format, KeySource, Request, access, expose, gateway};
use crate::protocol::device_info::parse_label;
use crate::protocol::limits::{INVITE_DEFAULT_TTL, INVITE_MAX_TTL};
use crate::protocol::rate::Rate;
use crate::protocol::{DeviceId, Name, RelayAddress, Role};
use crate::store::labels::LabelEdit;

#[derive(Debug, Args)]
pub struct AdminArgs {
    /// The relay's data directory.
    #[arg(long, env = "WARREN_DATA", required_unless_present = "database")]
    pub data: Option<PathBuf>,
    /// The PostgreSQL database of a cluster of relays (postgres://…),
    /// instead of the SQLite database in --data.
    #[arg(long, env = "WARREN_DATABASE")]
    pub database: Option<String>,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Print the relay's host-key fingerprint (agents and clients pin it).
    HostKey {
        #[arg(long)]
        json: bool,
    },
    /// Systems (tenants).
    #[command(subcommand)]
    System(SystemCommand),
    /// Keys bound to (system, role, name).
    #[command(subcommand)]
    Key(KeyCommand),
    /// Gateways into private networks: scope, associations, forwarding rules.
    #[command(subcommand)]
    Gateway(gateway::GatewayCommand),
    /// Public ports: `expose dev1:22 --system tau --port 4040 [--allow-from CIDR]`, `expose ls`, `expose rm PORT`.
    Expose(expose::ExposeArgs),
    /// Devices and their status.
    Ls(LsArgs),
    /// One-time invites: `invite --system S --role R --name N` prints a token
    /// for `warren enroll`; `invite ls`, `invite revoke ID`.
    Invite(InviteArgs),
    /// Disable or enable a device.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// The audit log, newest first.
    Log(LogArgs),
    /// Wake an on-demand device through the running relay's MQTT broker;
    /// answers once it is online or failed.
    Wake(WakeArgs),
    /// Put an on-demand device to sleep through the running relay.
    Sleep(WakeArgs),
    /// Copy this relay's SQLite state (--data) into a cluster's PostgreSQL
    /// database: `migrate --to postgres://…` (checked; safe to run again).
    Migrate(super::migrate::MigrateArgs),
    /// Print a one-time URL (valid 5 minutes) that logs a browser in to
    /// the web console; a controller's login sees its own system read-only.
    ConsoleLogin(access::ConsoleLoginArgs),
    /// End console sessions: `console-logout --all`.
    ConsoleLogout(access::ConsoleLogoutArgs),
    /// Bearer tokens for the HTTP API: `token create --system S --role R
    /// --ttl 30d`, `token ls`, `token revoke ID`.
    #[command(subcommand)]
    Token(access::TokenCommand),
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Only this system.
    #[arg(long)]
    pub system: Option<String>,
    /// Only devices with this label (KEY=VALUE; repeat to require several).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum SystemCommand {
    /// Add a system.
    Add { name: String },
    /// List systems.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Set a system's bandwidth limit, shared by all its streams:
    /// `system set tau --rate 10M` (bytes per second each way; `none`
    /// clears it). Live streams slow down or speed up at once.
    Set {
        name: String,
        #[command(flatten)]
        rate: RateArgs,
    },
}

/// `--rate` and `--burst` of `system set` and `device set`.
#[derive(Debug, Args)]
pub struct RateArgs {
    /// Bytes per second each way: 10M (10,000,000), 512K, 1G, 256Ki; `none`
    /// removes the limit (the relay's default, if any, applies again).
    #[arg(long)]
    pub rate: String,
    /// Bytes that may go at full speed after a pause [default: a tenth
    /// of a second of the rate, at least 64Ki].
    #[arg(long)]
    pub burst: Option<String>,
}

impl RateArgs {
    fn parse(&self) -> Result<Option<Rate>> {
        Rate::parse(&self.rate, self.burst.as_deref()).map_err(anyhow::Error::msg)
    }
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Register a public key (OpenSSH format; `-` reads standard input).
    Add {
        #[arg(long)]
        system: String,
        #[arg(long, value_enum)]
        role: Role,
        /// Device name (for device keys) or the person's or program's name.
        #[arg(long)]
        name: String,
        pubkey_file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// List keys, with how each was enrolled.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key; its live connections are closed at once.
    Revoke { fingerprint: String },
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct InviteArgs {
    #[command(subcommand)]
    pub command: Option<InviteCommand>,
    /// System the new key will belong to.
    #[arg(long)]
    pub system: Option<String>,
    #[arg(long, value_enum)]
    pub role: Option<Role>,
    /// Device name, or the person's or program's name.
    #[arg(long)]
    pub name: Option<String>,
    /// How long the token works ("30m", "1h", "2d"; at most 7d).
    #[arg(long)]
    pub ttl: Option<String>,
    /// Relay address (HOST:PORT) written into the token [default: the
    /// relay's --advertise].
    #[arg(long)]
    pub relay: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum InviteCommand {
    /// List invites: pending, used (by which key), expired, revoked.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a pending invite.
    Revoke { id: String },
}

#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Refuse new streams to a device and close its live ones.
    Disable {
        #[arg(long)]
        system: String,
        name: String,
    },
    /// Undo `disable`.
    Enable {
        #[arg(long)]
        system: String,
        name: String,
    },
    /// Set labels on a device, overriding the agent's labels of the same
    /// key: `device label --system tau dev1 site=lab9 --remove gpu`. The
    /// admin's word survives the agent's re-registration; `--reset KEY`
    /// forgets it.
    Label {
        #[arg(long)]
        system: String,
        name: String,
        /// KEY=VALUE labels to set.
        #[arg(value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// Hide the agent's label KEY (repeat for several).
        #[arg(long = "remove", value_name = "KEY")]
        remove: Vec<String>,
        /// Forget the admin's label or removal of KEY (repeat for several).
        #[arg(long = "reset", value_name = "KEY")]
        reset: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Set a device's own bandwidth limit, within its system's:
    /// `device set --system tau dev1 --rate 1M` (`--rate none` clears it).
    Set {
        #[arg(long)]
        system: String,
        name: String,
        #[command(flatten)]
        rate: RateArgs,
    },
}

impl AdminCommand {
    /// The command's first word, as a remote refusal names it.
    pub fn name(&self) -> &'static str {
        match self {
            AdminCommand::HostKey { .. } => "host-key",
            AdminCommand::System(_) => "system",
            AdminCommand::Key(_) => "key",
            AdminCommand::Gateway(_) => "gateway",
            AdminCommand::Expose(_) => "expose",
            AdminCommand::Ls(_) => "ls",
            AdminCommand::Invite(_) => "invite",
            AdminCommand::Device(_) => "device",
            AdminCommand::Log(_) => "log",
            AdminCommand::Wake(_) => "wake",
            AdminCommand::Sleep(_) => "sleep",
            AdminCommand::Migrate(_) => "migrate",
            AdminCommand::ConsoleLogin(_) => "console-login",
            AdminCommand::ConsoleLogout(_) => "console-logout",
            AdminCommand::Token(_) => "token",
        }
    }

    /// The typed request, with its values checked, and how its reply is
    /// printed. Error texts name the value at fault (`system name: …`).
    pub fn into_request(self) -> Result<(Request, Format)> {
        let text = Format::Text;
        Ok(match self {
            AdminCommand::HostKey { json } => (Request::HostKey, Format::json_if(json)),
            AdminCommand::System(SystemCommand::Add { name }) => (
                Request::AddSystem {
                    name: Name::parse(&name).context("system name")?,
                },
                text,
            ),
            AdminCommand::System(SystemCommand::Ls { json }) => {
                (Request::ListSystems, Format::json_if(json))
            }
            AdminCommand::System(SystemCommand::Set { name, rate }) => (
                Request::SetRate {
                    system: Name::parse(&name).context("system name")?,
                    device: None,
                    rate: rate.parse()?,
                },
                text,
            ),
            AdminCommand::Key(k) => k.into_request()?,
            AdminCommand::Gateway(g) => {
                let (g, format) = g.into_request()?;
                (Request::Gateway(g), format)
            }
            AdminCommand::Expose(e) => {
                let (e, format) = e.into_request()?;
                (Request::Expose(e), format)
            }
            AdminCommand::Ls(a) => {
                let labels = a
                    .labels
                    .iter()
                    .map(|l| parse_label(l).map_err(anyhow::Error::msg))
                    .collect::<Result<Vec<_>>>()?;
                let request = Request::ListDevices {
                    system: a.system,
                    labels,
                };
                (request, Format::json_if(a.json))
            }
            AdminCommand::Invite(a) => a.into_request()?,
            AdminCommand::Device(d) => {
                let format = match &d {
                    DeviceCommand::Label { json, .. } => Format::json_if(*json),
                    _ => text,
                };
                (d.into_request()?, format)
            }
            AdminCommand::Log(a) => a.into_request()?,
            AdminCommand::Wake(a) => a.into_request(WakeOp::Wake)?,
            AdminCommand::Sleep(a) => a.into_request(WakeOp::Sleep)?,
            AdminCommand::Migrate(_) => bail!(
                "migrate runs on the relay host: `warren admin --data DIR migrate --to postgres://…`"
            ),
            AdminCommand::ConsoleLogin(a) => a.into_request()?,
            AdminCommand::ConsoleLogout(_) => (Request::ConsoleLogout, text),
            AdminCommand::Token(t) => t.into_request()?,
        })
    }
}

impl KeyCommand {
    fn into_request(self) -> Result<(Request, Format)> {
        Ok(match self {
            KeyCommand::Add {
                system,
                role,
                name,
                pubkey_file,
                json,
            } => (
                Request::AddKey {
                    system: Name::parse(&system).context("system name")?,
                    role,
                    name: Name::parse(&name).context("key name")?,
                    key: KeySource::File(pubkey_file),
                },
                Format::json_if(json),
            ),
            KeyCommand::Ls { json } => (Request::ListKeys, Format::json_if(json)),
            KeyCommand::Revoke { fingerprint } => (
                Request::RevokeKey {
                    fingerprint: fingerprint.trim().to_string(),
                },
                Format::Text,
            ),
        })
    }
}

impl InviteArgs {
    fn into_request(self) -> Result<(Request, Format)> {
        match self.command {
            Some(InviteCommand::Ls { json }) => Ok((Request::ListInvites, Format::json_if(json))),
            Some(InviteCommand::Revoke { id }) => Ok((
                Request::RevokeInvite {
                    id: id.trim().to_string(),
                },
                Format::Text,
            )),
            None => {
                let (Some(system), Some(role), Some(name)) = (&self.system, self.role, &self.name)
                else {
                    bail!(
                        "invite needs --system, --role and --name (or `invite ls`, `invite revoke ID`)"
                    );
                };
                let request = Request::CreateInvite {
                    system: Name::parse(system).context("system name")?,
                    role,
                    name: Name::parse(name).context("name")?,
                    ttl: invite_ttl(self.ttl.as_deref())?,
                    relay: self
                        .relay
                        .as_deref()
                        .map(|r| RelayAddress::parse(r).map(RelayAddress::into_string))
                        .transpose()?,
                };
                Ok((request, Format::json_if(self.json)))
            }
        }
    }
}

/// `--ttl`: how long an invite works (default and bounds from `limits`).
pub(crate) fn invite_ttl(ttl: Option<&str>) -> Result<std::time::Duration> {
    let ttl = match ttl {
        Some(t) => humantime::parse_duration(t)
            .with_context(|| format!("--ttl {t:?} (write it like \"1h\" or \"2d\")"))?,
        None => INVITE_DEFAULT_TTL,
    };
    if ttl < std::time::Duration::from_secs(1) || ttl > INVITE_MAX_TTL {
        bail!(
            "--ttl must be between 1s and {}",
            humantime::format_duration(INVITE_MAX_TTL)
        );
    }
    Ok(ttl)
}

impl DeviceCommand {
    fn into_request(self) -> Result<Request> {
        let (system, name, disabled) = match self {
            DeviceCommand::Disable { system, name } => (system, name, true),
            DeviceCommand::Enable { system, name } => (system, name, false),
            DeviceCommand::Label {
                system,
                name,
                labels,
                remove,
                reset,
                json: _,
            } => {
                let set = labels
                    .iter()
                    .map(|l| parse_label(l))
                    .collect::<Result<_, _>>()
                    .map_err(anyhow::Error::msg)?;
                let edit = LabelEdit::new(set, remove, reset).map_err(anyhow::Error::msg)?;
                return Ok(Request::SetLabels {
                    device: DeviceId::new(
                        Name::parse(&system).context("system name")?,
                        Name::parse(&name).context("device name")?,
                    ),
                    edit,
                });
            }
            DeviceCommand::Set { system, name, rate } => {
                return Ok(Request::SetRate {
                    system: Name::parse(&system).context("system name")?,
                    device: Some(Name::parse(&name).context("device name")?),
                    rate: rate.parse()?,
                });
            }
        };
        let system = Name::parse(&system).context("system name")?;
        let name = Name::parse(&name).context("device name")?;
        Ok(Request::SetDisabled {
            device: DeviceId::new(system, name),
            disabled,
        })
    }
}

#[cfg(test)]
mod tests;
