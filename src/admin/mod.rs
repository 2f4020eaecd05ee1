//! `warren admin`: systems, keys, invites, devices, status and the audit
//! log. The same commands run in two places:
//!
//! - locally, `warren admin --data DIR …`, written straight into the relay's
//!   database (a running relay sees the change without a restart);
//! - remotely, `ssh -p 2222 SYSTEM@relay …` with an admin key, run inside
//!   the relay ([`execute`] with [`Caller::Remote`]).
//!
//! Every change is audited; the audit record is durable before the command
//! reports success.

pub mod access;
pub mod expose;
mod gateway;
mod live;
pub mod log;
pub mod remote;
pub mod status;

pub use live::{BoxFuture, Change, LiveDevice, LiveRelay};
pub use remote::check_remote;

use std::collections::BTreeMap;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde::Serialize;

use self::log::LogArgs;
use crate::audit::{self, Event, kind};
use crate::protocol::device_info::parse_label;
use crate::protocol::limits::{INVITE_DEFAULT_TTL, INVITE_MAX_TTL};
use crate::protocol::token::Invite;
use crate::protocol::{Name, Role};
use crate::render::{json_text, print_json};
use crate::ssh::keys;
use crate::store::datadir::{ADVERTISE_SETTING, host_key_path};
use crate::store::{self, Identity, InviteRecord, KeyRecord, NewInvite, Store};

#[derive(Debug, Args)]
pub struct AdminArgs {
    /// The relay's data directory.
    #[arg(long, env = "WARREN_DATA")]
    pub data: PathBuf,
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
}

/// Who runs an admin command.
pub enum Caller<'a> {
    /// `warren admin --data DIR` on the relay host.
    Local { data: &'a Path },
    /// Over the relay's SSH port, inside the running relay.
    Remote {
        live: &'a dyn LiveRelay,
        who: &'a Identity,
        peer: SocketAddr,
    },
}

impl Caller<'_> {
    /// Fills in who acted, for the audit record.
    fn stamp(&self, e: Event) -> Event {
        match self {
            Caller::Local { .. } => e.key_name("(local admin)"),
            Caller::Remote { who, peer, .. } => e
                .key(who.name.as_str(), who.fingerprint.as_str())
                .peer(*peer),
        }
    }
}

/// What a command printed, and the audit events it caused.
#[derive(Default)]
pub struct Reply {
    pub out: String,
    /// Warnings, for standard error.
    pub err: String,
    pub events: Vec<Event>,
    /// What the command wrote, if anything: a running relay should act now.
    /// Read-only commands leave it `None`.
    pub change: Option<Change>,
}

impl Reply {
    pub(crate) fn text(out: String) -> Reply {
        Reply {
            out,
            ..Reply::default()
        }
    }
}

pub async fn run(a: AdminArgs) -> Result<ExitCode> {
    if !a.data.join(crate::store::DB_FILE).exists() {
        anyhow::bail!(
            "no Warren database in {} (start `warren relay --data {}` once, or check --data)",
            a.data.display(),
            a.data.display()
        );
    }
    if let AdminCommand::HostKey { json } = a.command {
        return host_key(&a.data, json);
    }
    let store = Store::open(&a.data)?;
    let caller = Caller::Local { data: &a.data };
    let reply = execute(&store, &caller, a.command).await?;
    commit(&store, &caller, &reply).await?;
    print!("{}", reply.out);
    eprint!("{}", reply.err);
    Ok(ExitCode::SUCCESS)
}

/// Makes a command's effects known: its audit events are on disk (locally
/// in the store; remotely through the relay's audit writer), and a running
/// relay hears of a write.
pub async fn commit(store: &Store, caller: &Caller<'_>, reply: &Reply) -> Result<()> {
    match caller {
        Caller::Local { .. } => {
            for e in &reply.events {
                e.log();
            }
            let events = reply.events.clone();
            store
                .call(move |s| s.append_audit(&events))
                .await
                .context("writing the audit log")?;
        }
        Caller::Remote { live, .. } => {
            live.record_durable(reply.events.clone())
                .await
                .context("done, but writing the audit log failed")?;
            if let Some(change) = reply.change {
                live.changed(change);
            }
        }
    }
    Ok(())
}

/// Runs one admin command against the store.
pub async fn execute(store: &Store, caller: &Caller<'_>, command: AdminCommand) -> Result<Reply> {
    match command {
        AdminCommand::HostKey { json } => match caller {
            Caller::Local { data } => {
                let key = local_host_key(data)?;
                host_key_text(&keys::fingerprint(key.public_key()), json)
            }
            Caller::Remote { live, .. } => host_key_text(live.host_key(), json),
        },
        AdminCommand::Gateway(g) => {
            let mut reply = store.call(move |s| gateway::run(s, g)).await?;
            reply.events = reply.events.into_iter().map(|e| caller.stamp(e)).collect();
            Ok(reply)
        }
        AdminCommand::System(SystemCommand::Add { name }) => {
            let name = Name::parse(&name).context("system name")?;
            let n = name.clone();
            store.call(move |s| s.add_system(&n)).await?;
            Ok(Reply {
                out: format!("added system {name}\n"),
                events: vec![
                    caller.stamp(Event::new(kind::SYSTEM_ADD, audit::OK).system(name.as_str())),
                ],
                change: None,
                err: String::new(),
            })
        }
        AdminCommand::System(SystemCommand::Ls { json }) => {
            let systems = store.call(|s| s.systems()).await?;
            if json {
                return Ok(Reply::text(json_text(&systems)?));
            }
            Ok(Reply::text(
                systems.iter().map(|s| format!("{s}\n")).collect(),
            ))
        }
        AdminCommand::Expose(e) => {
            let mut reply = store.call(move |s| expose::run(s, e)).await?;
            reply.events = reply.events.into_iter().map(|e| caller.stamp(e)).collect();
            Ok(reply)
        }
        AdminCommand::Key(k) => key_command(store, caller, k).await,
        AdminCommand::ConsoleLogin(_) | AdminCommand::ConsoleLogout(_) | AdminCommand::Token(_) => {
            access_command(store, caller, command).await
        }
        AdminCommand::Ls(a) => ls(store, caller, a).await,
        AdminCommand::Invite(a) => invite_command(store, caller, a).await,
        AdminCommand::Device(d) => device_command(store, caller, d).await,
        AdminCommand::Log(a) => {
            let q = a.query()?;
            if let Caller::Remote { live, .. } = caller {
                // Whatever happened before this command is in the page.
                live.flush_audit().await?;
            }
            let events = store.call(move |s| s.audit(&q)).await?;
            Ok(Reply::text(a.render(events)))
        }
    }
}

/// `console-login`, `console-logout`, `token`.
async fn access_command(
    store: &Store,
    caller: &Caller<'_>,
    command: AdminCommand,
) -> Result<Reply> {
    let (system, role, who) = match caller {
        Caller::Local { .. } => (None, Role::Admin, "local-admin".to_string()),
        Caller::Remote { who, .. } => (
            (who.role != Role::Admin).then(|| who.system.to_string()),
            who.role,
            who.name.to_string(),
        ),
    };
    let done = store
        .call(move |s| {
            let asker = access::Asker {
                system: system.as_deref(),
                role,
                who: &who,
            };
            match &command {
                AdminCommand::ConsoleLogin(a) => access::console_login(s, &asker, a),
                AdminCommand::ConsoleLogout(_) => access::console_logout(s),
                AdminCommand::Token(t) => access::token(s, t),
                _ => bail!("not an access command"),
            }
        })
        .await?;
    Ok(Reply {
        out: done.out,
        events: done.events.into_iter().map(|e| caller.stamp(e)).collect(),
        change: None,
        err: String::new(),
    })
}

async fn key_command(store: &Store, caller: &Caller<'_>, k: KeyCommand) -> Result<Reply> {
    match k {
        KeyCommand::Add {
            system,
            role,
            name,
            pubkey_file,
            json,
        } => {
            if matches!(caller, Caller::Remote { .. }) {
                bail!(
                    "`key add` reads a file on the relay host; remotely, make an invite instead (`invite --system {system} --role {role} --name {name}`)"
                );
            }
            let system = Name::parse(&system).context("system name")?;
            let name = Name::parse(&name).context("key name")?;
            let key = read_pubkey(&pubkey_file)?;
            let rec = store
                .call(move |s| s.add_key(&system, role, &name, &key))
                .await?;
            let event = caller.stamp(
                Event::new(kind::KEY_ADD, audit::OK)
                    .system(rec.system.as_str())
                    .detail(format!("{} {} {}", rec.role, rec.name, rec.fingerprint)),
            );
            let out = if json {
                json_text(&rec)?
            } else {
                format!(
                    "added {} key {} for {} in system {}\n",
                    rec.role, rec.fingerprint, rec.name, rec.system
                )
            };
            Ok(Reply {
                out,
                events: vec![event],
                change: Some(Change::Keys),
                err: String::new(),
            })
        }
        KeyCommand::Ls { json } => {
            let keys = store.call(|s| s.keys()).await?;
            Ok(Reply::text(if json {
                json_text(&keys)?
            } else {
                render_keys(&keys)
            }))
        }
        KeyCommand::Revoke { fingerprint } => {
            let fp = fingerprint.trim().to_string();
            let rec = store.call(move |s| s.revoke_key(&fp)).await?;
            let event = caller.stamp(
                Event::new(kind::KEY_REVOKE, audit::OK)
                    .system(rec.system.as_str())
                    .detail(format!("{} {} {}", rec.role, rec.name, rec.fingerprint)),
            );
            Ok(Reply {
                out: format!(
                    "revoked {} key {} ({} in system {}); its connections are being closed\n",
                    rec.role, rec.fingerprint, rec.name, rec.system
                ),
                events: vec![event],
                change: Some(Change::Keys),
                err: String::new(),
            })
        }
    }
}

async fn ls(store: &Store, caller: &Caller<'_>, a: LsArgs) -> Result<Reply> {
    let want = a
        .labels
        .iter()
        .map(|l| parse_label(l).map_err(anyhow::Error::msg))
        .collect::<Result<Vec<_>>>()?;
    let live = match caller {
        Caller::Remote { live, .. } => Some(*live),
        Caller::Local { .. } => None,
    };
    let devices = status::list(store, live, a.system.clone()).await?;
    let devices = status::filter_labels(devices, &want);
    Ok(Reply::text(if a.json {
        json_text(&devices)?
    } else {
        status::render(&devices, a.system.is_none())
    }))
}

async fn invite_command(store: &Store, caller: &Caller<'_>, a: InviteArgs) -> Result<Reply> {
    match a.command {
        Some(InviteCommand::Ls { json }) => {
            let invites = store.call(|s| s.invites()).await?;
            Ok(Reply::text(if json {
                json_text(&invites)?
            } else {
                render_invites(&invites)
            }))
        }
        Some(InviteCommand::Revoke { id }) => {
            let rec = store.call(move |s| s.revoke_invite(id.trim())).await?;
            let event = caller.stamp(
                Event::new(kind::INVITE_REVOKE, audit::OK)
                    .system(rec.system.as_str())
                    .detail(format!("invite {} for {} {}", rec.id, rec.role, rec.name)),
            );
            Ok(Reply {
                out: format!("revoked invite {}\n", rec.id),
                events: vec![event],
                change: None,
                err: String::new(),
            })
        }
        None => create_invite(store, caller, a).await,
    }
}

async fn create_invite(store: &Store, caller: &Caller<'_>, a: InviteArgs) -> Result<Reply> {
    let (Some(system), Some(role), Some(name)) = (&a.system, a.role, &a.name) else {
        bail!("invite needs --system, --role and --name (or `invite ls`, `invite revoke ID`)");
    };
    let system = Name::parse(system).context("system name")?;
    let name = Name::parse(name).context("name")?;
    let ttl = invite_ttl(a.ttl.as_deref())?;
    let host_key = match caller {
        Caller::Local { data } => {
            let key = local_host_key(data)?;
            keys::fingerprint(key.public_key())
        }
        Caller::Remote { live, .. } => live.host_key().to_string(),
    };
    let relay = match &a.relay {
        Some(r) => Some(r.clone()),
        None => store.call(|s| s.setting(ADVERTISE_SETTING)).await?,
    };
    let Some(relay) = relay else {
        bail!(
            "no relay address for the token: pass --relay HOST:PORT, or start the relay with --advertise HOST:PORT"
        );
    };
    let relay = crate::protocol::RelayAddress::parse(&relay)?.into_string();
    let (id, secret) = Invite::fresh_id_and_secret()?;
    let invite = Invite {
        relay,
        host_key,
        system,
        role,
        name,
        id,
        expires: store::now() + ttl.as_secs(),
        secret,
    };
    let inv = invite.clone();
    store
        .call(move |s| {
            s.create_invite(&NewInvite {
                id: &inv.id,
                secret_hash: &inv.secret_hash(),
                system: &inv.system,
                role: inv.role,
                name: &inv.name,
                expires: inv.expires,
            })
        })
        .await?;
    let event = caller.stamp(
        Event::new(kind::INVITE_CREATE, audit::OK)
            .system(invite.system.as_str())
            .detail(format!(
                "invite {} for {} {}, expires in {}",
                invite.id,
                invite.role,
                invite.name,
                humantime::format_duration(ttl)
            )),
    );
    let token = invite.encode();
    let out = if a.json {
        made_json(&token, &invite)?
    } else {
        format!("{token}\n")
    };
    Ok(Reply {
        out,
        events: vec![event],
        change: None,
        err: String::new(),
    })
}

/// `--ttl`: how long an invite works (default and bounds from `limits`).
fn invite_ttl(ttl: Option<&str>) -> Result<Duration> {
    let ttl = match ttl {
        Some(t) => humantime::parse_duration(t)
            .with_context(|| format!("--ttl {t:?} (write it like \"1h\" or \"2d\")"))?,
        None => INVITE_DEFAULT_TTL,
    };
    if ttl < Duration::from_secs(1) || ttl > INVITE_MAX_TTL {
        bail!(
            "--ttl must be between 1s and {}",
            humantime::format_duration(INVITE_MAX_TTL)
        );
    }
    Ok(ttl)
}

/// `invite --json`: the token and what it grants.
fn made_json(token: &str, invite: &Invite) -> Result<String> {
    #[derive(Serialize)]
    struct Made<'a> {
        token: &'a str,
        id: &'a str,
        system: &'a str,
        role: Role,
        name: &'a str,
        relay: &'a str,
        expires: u64,
    }
    json_text(&Made {
        token,
        id: &invite.id,
        system: invite.system.as_str(),
        role: invite.role,
        name: invite.name.as_str(),
        relay: &invite.relay,
        expires: invite.expires,
    })
}

async fn device_command(store: &Store, caller: &Caller<'_>, d: DeviceCommand) -> Result<Reply> {
    let (system, name, disable) = match d {
        DeviceCommand::Disable { system, name } => (system, name, true),
        DeviceCommand::Enable { system, name } => (system, name, false),
    };
    let system = Name::parse(&system).context("system name")?;
    let name = Name::parse(&name).context("device name")?;
    let (s2, n2) = (system.clone(), name.clone());
    store
        .call(move |s| s.set_device_disabled(&s2, &n2, disable))
        .await?;
    let (k, verb) = if disable {
        (kind::DEVICE_DISABLE, "disabled")
    } else {
        (kind::DEVICE_ENABLE, "enabled")
    };
    Ok(Reply {
        out: format!(
            "{verb} device {name} in system {system}{}\n",
            if disable {
                "; its live streams are being closed"
            } else {
                ""
            }
        ),
        events: vec![
            caller.stamp(
                Event::new(k, audit::OK)
                    .system(system.as_str())
                    .device(name.as_str()),
            ),
        ],
        change: Some(Change::Devices),
        err: String::new(),
    })
}

/// The relay's host key in `data`. Only the relay makes one: a fingerprint
/// printed for a mistyped `--data` would be pinned by agents and never match.
fn local_host_key(data: &Path) -> Result<keys::PrivateKey> {
    let path = host_key_path(data);
    if !path.exists() {
        bail!(
            "no relay host key in {} (start `warren relay --data {}` once: it makes the key; or check --data)",
            data.display(),
            data.display()
        );
    }
    keys::read_private(&path)
}

fn host_key(data: &Path, json: bool) -> Result<ExitCode> {
    let key = local_host_key(data)?;
    let fp = keys::fingerprint(key.public_key());
    if json {
        #[derive(Serialize)]
        struct HostKey {
            fingerprint: String,
            public_key: String,
        }
        let public_key = key
            .public_key()
            .to_openssh()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        print_json(&HostKey {
            fingerprint: fp,
            public_key,
        })?;
    } else {
        println!("{fp}");
    }
    Ok(ExitCode::SUCCESS)
}

fn host_key_text(fp: &str, json: bool) -> Result<Reply> {
    Ok(Reply::text(if json {
        json_text(&BTreeMap::from([("fingerprint", fp)]))?
    } else {
        format!("{fp}\n")
    }))
}

fn read_pubkey(path: &Path) -> Result<keys::PublicKey> {
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .take(crate::protocol::limits::MAX_CONFIG_FILE)
            .read_to_string(&mut text)?;
        return keys::parse_public(&text);
    }
    keys::read_public(path)
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
                Some(t) => format!("revoked {}", crate::render::when(Some(t))),
                None => "active".into(),
            },
            match &k.enrolled_via {
                Some(id) => format!("invite {id}"),
                None => "key add".into(),
            },
        ]);
    }
    crate::render::table(&rows)
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
    crate::render::table(&rows)
}
